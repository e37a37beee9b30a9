//! What outlives one callback: [`Shared`] (per gateway: config, backend, gate, russh config,
//! per-server session counts, drain tokens), [`Conn`] (per authenticated connection: who, its
//! container, activity, its budget of log lines and audit records) and [`Slot`] (one reserved
//! channel, released on drop).
//!
//! Its own file because the accept loop (`server.rs`), the russh handler (`handler.rs`) and the
//! channel tasks (`session.rs`, `forward.rs`, `pipe.rs`) all hold these; none of them owns them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use russh::keys::PrivateKey;
use russh::server::Handle;
use tenants::ServerId;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::audit::{Budget, Verdict};
use crate::backend::{AuditRecord, Backend, BackendError, Target};
use crate::config::Config;
use crate::gate::{Gate, Login};

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
    /// Running session channels, for `berth session list|kill`.
    pub live: Arc<crate::control::Registry>,
    /// Each limited server's bandwidth, shared by its channels (`crate::limits`).
    pub bandwidth: crate::limits::BandwidthPools,
    /// Gives freed heap memory back to the kernel after connections end (`crate::memory`).
    pub memory: Arc<crate::memory::Trimmer>,
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
            // output pumps of a channel keep the loop busy while it encrypts; each is up to a
            // packet of output held in the gateway, so 16 (≈ 512 KiB with OpenSSH's packets),
            // not 64, per busy connection (docs/BENCHMARKS.md, issue 25).
            event_buffer_size: 16,
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
            live: Arc::default(),
            bandwidth: crate::limits::BandwidthPools::default(),
            memory: Arc::default(),
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
        self.shared.memory.ended();
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
    /// Remote and unix-socket forwards and agent sockets of this connection.
    pub devflow: crate::devflow::State,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Log lines and audit records this connection may still cause (see [`crate::audit`]).
    budget: Mutex<Budget>,
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
            devflow: crate::devflow::State::default(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            budget: Mutex::new(Budget::new(Instant::now())),
        })
    }

    fn budget(&self) -> std::sync::MutexGuard<'_, Budget> {
        // A poisoned budget is still a budget: counts only.
        self.budget
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a log line this connection's client caused may be written now (within the
    /// connection's budget); says first how many were suppressed since the last one.
    pub fn log_allowed(&self) -> bool {
        let verdict = self.budget().log(Instant::now());
        match verdict {
            Verdict::Write { suppressed } => {
                if suppressed > 0 {
                    info!(server = %self.login.server.login_name(), peer = %self.peer, suppressed, "log lines of this connection suppressed (per-connection budget)");
                }
                true
            }
            Verdict::Suppress => false,
        }
    }

    /// Writes an audit record about this connection (server, owner and peer filled in), within
    /// its budget: beyond it the record is counted, and the count goes into the next record
    /// written (`suppressed_records`) or the connection's closing summary. Strings in `detail`
    /// are bounded and escaped ([`crate::audit::bound_detail`]).
    pub async fn audit(
        &self,
        kind: &'static str,
        method: &str,
        outcome: &str,
        mut detail: serde_json::Value,
    ) {
        let verdict = self.budget().audit(Instant::now());
        let Verdict::Write { suppressed } = verdict else {
            return;
        };
        crate::audit::bound_detail(&mut detail);
        if suppressed > 0
            && let Some(m) = detail.as_object_mut()
        {
            m.insert("suppressed_records".into(), suppressed.into());
        }
        self.shared
            .backend
            .audit(AuditRecord {
                kind,
                server: Some(self.login.server),
                account: Some(self.login.owner.clone()),
                peer: Some(self.login.client.unwrap_or(self.peer.ip())),
                method: Some(method.into()),
                outcome: outcome.into(),
                detail,
            })
            .await;
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
                let r = self
                    .shared
                    .backend
                    .ensure_running_for(self.login.server, &self.login.owner, self.peer.ip())
                    .await;
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

impl Drop for Conn {
    /// The closing summary: what the budget dropped since the last record and line written.
    fn drop(&mut self) {
        let (records, lines) = self.budget().take_suppressed();
        if records == 0 && lines == 0 {
            return;
        }
        let server = self.login.server;
        info!(server = %server.login_name(), peer = %self.peer, suppressed_records = records, suppressed_log_lines = lines, "connection closed with audit records or log lines suppressed (per-connection budget)");
        let record = AuditRecord {
            kind: "session",
            server: Some(server),
            account: Some(self.login.owner.clone()),
            peer: Some(self.login.client.unwrap_or(self.peer.ip())),
            method: Some("connection".into()),
            outcome: "suppressed".into(),
            detail: serde_json::json!({ "records": records, "log_lines": lines }),
        };
        let backend = self.shared.backend.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { backend.audit(record).await });
        }
    }
}
