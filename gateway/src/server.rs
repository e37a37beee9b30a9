//! The SSH server: accepts on already-bound listeners, admits, runs one russh session per
//! connection with a [`ConnHandler`](crate::handler::ConnHandler), and drains on shutdown.
//!
//! Shared state that outlives one connection lives in [`Shared`]: config, backend, the auth
//! gate, per-server session counts and the drain tokens. Per-connection state lives in
//! [`Conn`] once the client has authenticated.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use russh::keys::{PrivateKey, PublicKey};
use russh::server::Handle;
use tenants::ServerId;
use tokio::net::TcpListener;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::backend::{Backend, BackendError, Target};
use crate::config::Config;
use crate::handler::ConnHandler;

/// Who logged in.
#[derive(Debug, Clone)]
pub struct Login {
    pub server: ServerId,
    pub owner: String,
}

/// Held from accept until authentication (admission accounting of the auth area).
pub trait Permit: Send {
    fn authenticated(self: Box<Self>);
    /// When the login grace time runs out (the connection is closed if still unauthenticated).
    fn grace_deadline(&self) -> Option<tokio::time::Instant> {
        None
    }
}

/// The session code's view of authentication (implemented over `auth::Authenticator`).
#[async_trait::async_trait]
pub trait Gate: Send + Sync + 'static {
    /// `None`: close the socket now.
    fn admit(&self, peer: IpAddr) -> Option<Box<dyn Permit>>;
    async fn password(&self, peer: IpAddr, user: &str, password: &str) -> Option<Login>;
    /// The answer to the keyboard-interactive password prompt.
    async fn keyboard_interactive(&self, peer: IpAddr, user: &str, answer: &[u8]) -> Option<Login> {
        let pw = std::str::from_utf8(answer).ok()?;
        self.password(peer, user, pw).await
    }
    async fn public_key(
        &self,
        peer: IpAddr,
        user: &str,
        key: &PublicKey,
        verified: bool,
    ) -> Option<Login>;
    /// Applies the gate's settings (methods, attempts, rejection timing) to russh's config.
    fn configure(&self, _config: &mut russh::server::Config) {}
}

/// The production gate: the auth area's [`crate::auth::Authenticator`].
#[async_trait::async_trait]
impl Gate for crate::auth::Authenticator {
    fn admit(&self, peer: IpAddr) -> Option<Box<dyn Permit>> {
        match crate::auth::Authenticator::admit(self, peer) {
            crate::auth::Admission::Accept(p) => Some(Box::new(p)),
            crate::auth::Admission::Reject(_) => None,
        }
    }
    async fn password(&self, peer: IpAddr, user: &str, password: &str) -> Option<Login> {
        login(crate::auth::Authenticator::password(self, peer, user, password).await)
    }
    async fn keyboard_interactive(&self, peer: IpAddr, user: &str, answer: &[u8]) -> Option<Login> {
        login(self.keyboard_interactive_answer(peer, user, answer).await)
    }
    async fn public_key(
        &self,
        peer: IpAddr,
        user: &str,
        key: &PublicKey,
        verified: bool,
    ) -> Option<Login> {
        login(crate::auth::Authenticator::public_key(self, peer, user, key, verified).await)
    }
    fn configure(&self, config: &mut russh::server::Config) {
        self.configure_russh(config);
    }
}

fn login(d: crate::auth::Decision) -> Option<Login> {
    match d {
        crate::auth::Decision::Accept { server, owner } => Some(Login { server, owner }),
        crate::auth::Decision::Reject => None,
    }
}

impl Permit for crate::auth::Permit {
    fn authenticated(self: Box<Self>) {
        crate::auth::Permit::authenticated(*self);
    }
    fn grace_deadline(&self) -> Option<tokio::time::Instant> {
        Some(crate::auth::Permit::grace_deadline(self))
    }
}

/// Per-gateway counters not covered by `crate::metrics` (kept for tests and future use).
#[derive(Debug, Default)]
pub struct Stats {
    pub sessions_total: AtomicU64,
    pub sessions_active: AtomicU64,
}

pub struct Shared {
    pub cfg: Config,
    pub backend: Arc<dyn Backend>,
    pub gate: Arc<dyn Gate>,
    pub russh: Arc<russh::server::Config>,
    pub stats: Arc<Stats>,
    per_server: Mutex<HashMap<ServerId, usize>>,
    /// Fires when shutdown starts: no new sessions, tell clients.
    pub draining: CancellationToken,
    /// Fires at the drain deadline: close everything.
    pub deadline: CancellationToken,
}

impl Shared {
    pub fn new(
        cfg: Config,
        backend: Arc<dyn Backend>,
        gate: Arc<dyn Gate>,
        keys: Vec<PrivateKey>,
        stats: Arc<Stats>,
    ) -> Arc<Self> {
        let mut russh = russh::server::Config {
            server_id: russh::SshId::Standard(cfg.server_id.clone().into()),
            methods: russh::MethodSet::from(
                &[
                    russh::MethodKind::PublicKey,
                    russh::MethodKind::Password,
                    russh::MethodKind::KeyboardInteractive,
                ][..],
            ),
            auth_rejection_time: Duration::from_millis(500),
            auth_rejection_time_initial: Some(Duration::ZERO),
            keys,
            window_size: cfg.window_size,
            maximum_packet_size: cfg.max_packet_size,
            // Idle handling is ours (activity = channel data), keepalives are russh's.
            inactivity_timeout: None,
            keepalive_interval: (cfg.keepalive_interval_secs > 0)
                .then(|| Duration::from_secs(cfg.keepalive_interval_secs)),
            keepalive_max: cfg.keepalive_max,
            nodelay: true,
            manual_window_adjust: cfg.consumption_window,
            // Messages queued from channel tasks to the session loop (default 10): more lets the
            // output pumps of a channel keep the loop busy while it encrypts.
            event_buffer_size: 64,
            ..Default::default()
        };
        gate.configure(&mut russh);
        Arc::new(Self {
            cfg,
            backend,
            gate,
            russh: Arc::new(russh),
            stats,
            per_server: Mutex::new(HashMap::new()),
            draining: CancellationToken::new(),
            deadline: CancellationToken::new(),
        })
    }

    /// Reserves a channel slot on `conn` (per connection and per server), or `None` when full.
    pub fn take_slot(self: &Arc<Self>, conn: &Arc<Conn>) -> Option<Slot> {
        if self.draining.is_cancelled() {
            return None;
        }
        let mut per_server = self.per_server.lock().ok()?;
        let mut per_conn = conn.channels.lock().ok()?;
        let n = per_server.entry(conn.login.server).or_insert(0);
        if *n >= self.cfg.max_sessions_per_server
            || *per_conn >= self.cfg.max_sessions_per_connection
        {
            return None;
        }
        *n += 1;
        *per_conn += 1;
        self.stats.sessions_total.fetch_add(1, Ordering::Relaxed);
        self.stats.sessions_active.fetch_add(1, Ordering::Relaxed);
        Some(Slot {
            shared: self.clone(),
            conn: conn.clone(),
        })
    }
}

/// One reserved channel; released on drop.
pub struct Slot {
    shared: Arc<Shared>,
    conn: Arc<Conn>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut m) = self.shared.per_server.lock()
            && let Some(n) = m.get_mut(&self.conn.login.server)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.conn.login.server);
            }
        }
        if let Ok(mut c) = self.conn.channels.lock() {
            *c = c.saturating_sub(1);
        }
        self.shared
            .stats
            .sessions_active
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// State of one authenticated connection.
pub struct Conn {
    pub shared: Arc<Shared>,
    pub login: Login,
    pub peer: SocketAddr,
    pub handle: Handle,
    target: OnceCell<Target>,
    start_noted: AtomicBool,
    channels: Mutex<usize>,
    started: Instant,
    last_activity_ms: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
}

impl Conn {
    pub fn new(shared: Arc<Shared>, login: Login, peer: SocketAddr, handle: Handle) -> Arc<Self> {
        Arc::new(Self {
            shared,
            login,
            peer,
            handle,
            target: OnceCell::new(),
            start_noted: AtomicBool::new(false),
            channels: Mutex::new(0),
            started: Instant::now(),
            last_activity_ms: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
        })
    }

    pub fn touch(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_activity_ms.store(ms, Ordering::Relaxed);
    }

    pub fn idle_for(&self) -> Duration {
        let now = self.started.elapsed();
        now.saturating_sub(Duration::from_millis(
            self.last_activity_ms.load(Ordering::Relaxed),
        ))
    }

    /// The running container, started on first use (once per connection).
    pub async fn target(&self) -> Result<Target, BackendError> {
        let t = self
            .target
            .get_or_try_init(|| async {
                let t0 = Instant::now();
                let r = self.shared.backend.ensure_running(self.login.server).await;
                crate::metrics::ensure_running(
                    t0.elapsed(),
                    r.as_ref().map(|t| t.started_now).map_err(|_| ()),
                );
                if let Ok(t) = &r
                    && t.started_now
                {
                    info!(server = %self.login.server.login_name(), elapsed_ms = t0.elapsed().as_millis() as u64, "started stopped server on login");
                }
                r
            })
            .await?;
        Ok(t.clone())
    }

    /// True exactly once when this connection's login started the server.
    pub fn take_start_note(&self) -> bool {
        self.target.get().is_some_and(|t| t.started_now)
            && !self.start_noted.swap(true, Ordering::Relaxed)
    }
}

/// Runs the accept loops until `shutdown`, then drains: stop accepting, tell sessions, wait up to
/// `drain_timeout_secs`, close what is left.
pub async fn serve(
    shared: Arc<Shared>,
    listeners: Vec<TcpListener>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let tracker = TaskTracker::new();
    let accept_stop = CancellationToken::new();
    let mut accepts = Vec::new();
    for listener in listeners {
        let shared = shared.clone();
        let tracker2 = tracker.clone();
        let stop = accept_stop.clone();
        accepts.push(tokio::spawn(async move {
            loop {
                let (sock, peer) = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = listener.accept() => match r {
                        Ok(x) => x,
                        Err(e) => {
                            // EMFILE and friends: back off instead of spinning.
                            warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let shared = shared.clone();
                tracker2.spawn(run_connection(shared, sock, peer));
            }
        }));
    }

    shutdown.cancelled().await;
    info!("gateway draining: no new connections");
    accept_stop.cancel();
    for a in accepts {
        let _ = a.await;
    }
    shared.draining.cancel();
    tracker.close();
    let drain = Duration::from_secs(shared.cfg.drain_timeout_secs);
    if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
        info!("drain deadline reached: closing remaining connections");
        shared.deadline.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
    }
    info!("gateway drained");
    Ok(())
}

async fn run_connection(shared: Arc<Shared>, sock: tokio::net::TcpStream, peer: SocketAddr) {
    let Some(permit) = shared.gate.admit(peer.ip()) else {
        debug!(%peer, "connection not admitted");
        return;
    };
    let _active = crate::metrics::connection_opened();
    let _ = sock.set_nodelay(true);
    // The pre-auth deadline is enforced from out here, not inside russh's state machine: a
    // stalled key exchange, a half-sent packet or a stream of SSH_MSG_IGNORE cannot extend it.
    // On expiry the socket is shut down through a duplicate of its descriptor (the session task
    // then sees EOF/EPIPE whatever it is waiting for) and the unauthenticated slot is released
    // here at once, without waiting for that task.
    let grace = permit.grace_deadline();
    let killer = sock.as_fd().try_clone_to_owned().ok();
    let permit = PermitCell::new(permit);
    let authed = CancellationToken::new();
    let login = Arc::new(std::sync::OnceLock::new());
    let handler = ConnHandler::new(
        shared.clone(),
        peer,
        permit.clone(),
        authed.clone(),
        login.clone(),
    );
    let cfg = shared.russh.clone();
    let deadline = shared.deadline.clone();
    let work = async move {
        let session = match russh::server::run_stream(cfg, sock, handler).await {
            Ok(s) => s,
            Err(e) => {
                crate::metrics::handshake(false);
                debug!(%peer, error = %e, "ssh handshake failed");
                return None;
            }
        };
        let handle = session.handle();
        tokio::pin!(session);
        tokio::select! {
            r = &mut session => r.err(),
            _ = deadline.cancelled() => {
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    handle.disconnect(
                        russh::Disconnect::ByApplication,
                        "berth gateway is shutting down".into(),
                        "en".into(),
                    ),
                )
                .await;
                let _ = tokio::time::timeout(Duration::from_secs(3), &mut session).await;
                None
            }
        }
    };
    let pre_auth_expired = async {
        match grace {
            Some(at) => tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                _ = authed.cancelled() => std::future::pending::<()>().await,
            },
            None => std::future::pending::<()>().await,
        }
    };
    let ended = tokio::select! {
        e = work => e,
        _ = pre_auth_expired => {
            crate::metrics::LOGIN_GRACE_EXPIRED.inc();
            debug!(%peer, "login grace time expired before authentication: closing");
            None
        }
    };
    // Whatever ended the connection, the socket is closed now: the session task may still be
    // unwinding (it owns the stream), but the peer sees the close immediately.
    if let Some(fd) = killer {
        let _ = std::net::TcpStream::from(fd).shutdown(std::net::Shutdown::Both);
    }
    permit.release();
    if let Some(e) = ended {
        match e {
            russh::Error::WindowExceeded => {
                crate::metrics::protocol_violation(crate::metrics::Violation::WindowExceeded);
                let who = login.get();
                warn!(%peer, server = who.map(|l| l.server.login_name()), "client sent more than the channel window allows: disconnected");
                shared
                    .backend
                    .audit(crate::backend::AuditRecord {
                        kind: "session",
                        server: who.map(|l| l.server),
                        account: who.map(|l| l.owner.clone()),
                        peer: Some(peer.ip()),
                        method: None,
                        outcome: "protocol_violation".into(),
                        detail: serde_json::json!({ "violation": "window_exceeded" }),
                    })
                    .await;
            }
            e => debug!(%peer, error = %e, "connection ended with error"),
        }
    }
}

/// The connection's unauthenticated slot, shared by the connection task (which drops it at
/// the pre-auth deadline) and the handler (which hands it back on successful auth).
#[derive(Clone)]
pub struct PermitCell(Arc<Mutex<Option<Box<dyn Permit>>>>);

impl PermitCell {
    fn new(p: Box<dyn Permit>) -> Self {
        Self(Arc::new(Mutex::new(Some(p))))
    }

    fn take(&self) -> Option<Box<dyn Permit>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// The connection authenticated: its slot no longer counts as unauthenticated.
    pub fn authenticated(&self) {
        if let Some(p) = self.take() {
            p.authenticated();
        }
    }

    /// Frees the slot (no-op after [`PermitCell::authenticated`]).
    pub fn release(&self) {
        drop(self.take());
    }
}
