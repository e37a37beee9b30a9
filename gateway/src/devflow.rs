//! What developers' tools ask of an SSH server beyond sessions and `-L`: remote forwards
//! (`tcpip-forward`, `ssh -R`), unix-socket forwards (`direct-streamlocal@openssh.com`,
//! `streamlocal-forward@openssh.com`) and agent forwarding (`auth-agent-req@openssh.com`).
//!
//! Everything lives in the tenant's container: the backend listens and connects from inside it
//! (the in-container agent binds the listener as the session user and hands the gateway the
//! listening socket), so a listener is never on the host's addresses and a socket path is opened
//! with the session user's permissions. A backend that cannot do that (the attach path) refuses
//! with a clear message ([`crate::backend::NEEDS_AGENT`]). A backend that relays to the
//! container's host hands over a [`Listening::Relayed`] listener instead of a socket; the accept
//! loops, limits and audit here are the same for both.
//!
//! Channels the gateway opens towards the client (`forwarded-tcpip`, `forwarded-streamlocal`,
//! `auth-agent`) are not in the handler's channel table: their task reads the channel itself and
//! returns the client's window only once the bytes are written into the container, like every
//! other channel ([`State::owns`] tells the handler to leave their window alone).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use russh::server::Msg;
use russh::{Channel, ChannelId, ChannelMsg};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{debug, info};

use crate::backend::{
    Accepted, BackendError, Bound, BoxRead, BoxWrite, ListenSpec, Listener, Listening, Stream,
    Target,
};
use crate::channel::Input;
use crate::config::RemoteForwardBind;
use crate::conn::Conn;
use crate::pipe;

/// How long the gateway waits for the container side of a listen or connect.
const BACKEND_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a channel the gateway opens may wait for the client's answer.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Agent sockets one connection may hold (one per session channel that asked).
const MAX_AGENT_SOCKETS: usize = 16;

/// A listener as the client named it (`cancel-*` requests name it the same way).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Tcp(String, u32),
    Unix(String),
}

#[derive(Default)]
struct Inner {
    /// The connection's listeners; dropping an entry stops its accept loop and removes it.
    listeners: HashMap<Key, DropGuard>,
    /// Channels opened towards the client whose task reads them itself.
    adopted: HashSet<ChannelId>,
    /// Channel opens towards the client not yet answered: data for a channel id the handler
    /// does not know may be theirs, so its window is left alone meanwhile.
    opening: usize,
    /// Session channels that asked for agent forwarding and have not started yet.
    agent_wanted: HashSet<ChannelId>,
    agent_sockets: usize,
}

/// Per-connection state of the developer forwards.
#[derive(Default)]
pub struct State {
    inner: Mutex<Inner>,
    /// Accepted connections waiting for the client to confirm their channel.
    pending: AtomicUsize,
}

impl State {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True when data for `id` belongs to a channel whose task returns its window itself (or
    /// may: a channel open towards the client is in flight).
    pub fn owns(&self, id: ChannelId) -> bool {
        let inner = self.lock();
        inner.opening > 0 || inner.adopted.contains(&id)
    }

    /// Remembers that session channel `id` asked for agent forwarding; false when refused.
    pub fn want_agent(&self, id: ChannelId) -> bool {
        let mut inner = self.lock();
        if inner.agent_wanted.len() >= MAX_AGENT_SOCKETS {
            return false;
        }
        inner.agent_wanted.insert(id);
        true
    }

    /// Session channel `id` is gone: its agent-forwarding request goes with it.
    pub fn forget(&self, id: ChannelId) {
        self.lock().agent_wanted.remove(&id);
    }

    /// Stops every listener of the connection (the connection is going away).
    pub fn clear(&self) {
        let listeners = std::mem::take(&mut self.lock().listeners);
        drop(listeners);
    }
}

/// Where a remote forward asked for `address` may listen inside the container, or why not.
/// `loopback`: the wildcard and `localhost` mean the container's loopback, a loopback address is
/// itself, anything else is refused. `container` also allows the wildcard and the container's own
/// address. No other address exists in the container's namespace, and the host's are never
/// reachable from it.
pub fn bind_address(
    address: &str,
    policy: RemoteForwardBind,
    container: IpAddr,
) -> Result<IpAddr, &'static str> {
    let wildcard = matches!(address, "" | "*" | "0.0.0.0" | "::" | "[::]");
    if address.eq_ignore_ascii_case("localhost") {
        return Ok(Ipv4Addr::LOCALHOST.into());
    }
    if wildcard {
        return Ok(match (policy, address) {
            (RemoteForwardBind::Loopback, "::" | "[::]") => Ipv6Addr::LOCALHOST.into(),
            (RemoteForwardBind::Loopback, _) => Ipv4Addr::LOCALHOST.into(),
            (RemoteForwardBind::Container, "::" | "[::]") => Ipv6Addr::UNSPECIFIED.into(),
            (RemoteForwardBind::Container, _) => Ipv4Addr::UNSPECIFIED.into(),
        });
    }
    let ip: IpAddr = address
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| "not an address or localhost")?;
    if ip.is_loopback() {
        return Ok(ip);
    }
    if policy == RemoteForwardBind::Container && ip.to_canonical() == container.to_canonical() {
        return Ok(ip);
    }
    Err(match policy {
        RemoteForwardBind::Loopback => "only the container's loopback may be bound",
        RemoteForwardBind::Container => "not the container's own address",
    })
}

/// A socket path a client may name: absolute, one line, no NUL, short enough for `sun_path`.
pub fn socket_path_ok(path: &str) -> bool {
    path.starts_with('/')
        && path.len() <= berth_agent::MAX_SOCKET_PATH
        && !path.chars().any(|c| c.is_control())
}

fn loggable(s: &str) -> String {
    crate::audit::loggable(s, crate::audit::MAX_FIELD_CHARS)
}

async fn target(conn: &Conn) -> Result<Target, String> {
    conn.target().await.map_err(|e| e.to_string())
}

/// The container side of a listener, bounded as a whole (starting the container and its agent
/// included) by [`BACKEND_TIMEOUT`].
async fn listen(conn: &Conn, spec: ListenSpec) -> Result<Listener, String> {
    let work = async {
        let target = target(conn).await?;
        let login = conn.login.server.login_name();
        conn.shared
            .backend
            .listen(&target, &login, spec)
            .await
            .map_err(backend_text)
    };
    match tokio::time::timeout(BACKEND_TIMEOUT, work).await {
        Ok(r) => r,
        Err(_) => Err("timeout".into()),
    }
}

fn backend_text(e: BackendError) -> String {
    match e {
        BackendError::ForClient(t) => t,
        other => other.to_string(),
    }
}

/// The accepting side of a [`Listening`], whichever kind the backend handed over.
enum Acceptor {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
    Relayed(mpsc::Receiver<Accepted>),
}

enum Next {
    Conn(BoxRead, BoxWrite, Option<SocketAddr>),
    /// A transient failure (out of fds and the like): try again in a moment.
    Retry,
    /// The listener is gone (a relayed one's backend let go of it).
    Ended,
}

impl Acceptor {
    fn new(listening: Listening) -> (Bound, Acceptor) {
        match listening {
            Listening::Tcp { listener, local } => (Bound::Tcp(local), Acceptor::Tcp(listener)),
            Listening::Unix { listener, path } => (Bound::Unix(path), Acceptor::Unix(listener)),
            Listening::Relayed { incoming, bound } => (bound, Acceptor::Relayed(incoming)),
        }
    }

    async fn next(&mut self) -> Next {
        match self {
            Acceptor::Tcp(l) => match l.accept().await {
                Ok((s, peer)) => {
                    let (rd, wr) = s.into_split();
                    Next::Conn(Box::new(rd), Box::new(wr), Some(peer))
                }
                Err(_) => Next::Retry,
            },
            Acceptor::Unix(l) => match l.accept().await {
                Ok((s, _)) => {
                    let (rd, wr) = s.into_split();
                    Next::Conn(Box::new(rd), Box::new(wr), None)
                }
                Err(_) => Next::Retry,
            },
            Acceptor::Relayed(rx) => match rx.recv().await {
                Some(a) => Next::Conn(a.stream.read, a.stream.write, a.peer),
                None => Next::Ended,
            },
        }
    }

    /// The next connection, or `None` once `closed` fires or the listener is gone.
    async fn accept(
        &mut self,
        closed: &CancellationToken,
    ) -> Option<(BoxRead, BoxWrite, Option<SocketAddr>)> {
        loop {
            let next = tokio::select! {
                n = self.next() => n,
                _ = closed.cancelled() => return None,
            };
            match next {
                Next::Conn(rd, wr, peer) => return Some((rd, wr, peer)),
                Next::Ended => return None,
                // Give the system a moment instead of spinning.
                Next::Retry => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

/// `tcpip-forward`: a listener in the container; `port` 0 is answered with the allocated one.
/// Awaited by the handler (the reply must say whether it worked), bounded by
/// [`BACKEND_TIMEOUT`]; only the asking connection waits, and requests beyond the listener limit
/// are refused without waiting.
pub async fn tcpip_forward(conn: &Arc<Conn>, address: &str, port: &mut u32) -> bool {
    let cfg = &conn.shared.cfg;
    let asked = *port;
    let detail = |extra: serde_json::Value| {
        let mut d = serde_json::json!({ "address": address, "port": asked });
        if let (Some(m), serde_json::Value::Object(x)) = (d.as_object_mut(), extra) {
            m.extend(x);
        }
        d
    };
    let refuse = |reason: &str| {
        let d = detail(serde_json::json!({ "reason": reason }));
        let conn = conn.clone();
        async move {
            if conn.log_allowed() {
                info!(server = %conn.login.server.login_name(), peer = %conn.peer, detail = %d, "tcpip-forward refused");
            }
            conn.audit("forward", "tcpip-forward", "rejected", d).await;
            false
        }
    };
    if !cfg.allow_remote_forwarding {
        return refuse("remote forwarding is disabled").await;
    }
    let Ok(want_port) = u16::try_from(asked) else {
        return refuse("port out of range").await;
    };
    if conn.devflow.lock().listeners.len() >= cfg.max_remote_listeners_per_connection {
        return refuse("too many listeners on this connection").await;
    }
    let target = match tokio::time::timeout(BACKEND_TIMEOUT, target(conn)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return refuse(&e).await,
        Err(_) => return refuse("timeout").await,
    };
    let ip = match bind_address(address, cfg.remote_forward_bind, target.address) {
        Ok(ip) => ip,
        Err(why) => return refuse(why).await,
    };
    let listener = match listen(conn, ListenSpec::Tcp(SocketAddr::new(ip, want_port))).await {
        Ok(l) => l,
        Err(e) => {
            let d = detail(serde_json::json!({ "error": e }));
            conn.audit("forward", "tcpip-forward", "failure", d).await;
            return false;
        }
    };
    let (bound, mut acceptor) = Acceptor::new(listener.listening);
    let Bound::Tcp(local) = bound else {
        return false;
    };
    let key = Key::Tcp(address.to_string(), u32::from(local.port()));
    let closed = CancellationToken::new();
    let refused = {
        let mut inner = conn.devflow.lock();
        let no = inner.listeners.len() >= cfg.max_remote_listeners_per_connection
            || inner.listeners.contains_key(&key);
        if !no {
            inner.listeners.insert(key, closed.clone().drop_guard());
        }
        no
    };
    if refused {
        return refuse("too many listeners on this connection, or a duplicate").await;
    }
    *port = u32::from(local.port());
    if conn.log_allowed() {
        info!(server = %conn.login.server.login_name(), peer = %conn.peer, address = %loggable(address), bound = %local, "remote forward listening");
    }
    conn.audit(
        "forward",
        "tcpip-forward",
        "listening",
        detail(serde_json::json!({ "bound": local.to_string() })),
    )
    .await;
    let conn = conn.clone();
    let address = address.to_string();
    let cleanup = listener.cleanup;
    tokio::spawn(async move {
        let _cleanup = cleanup;
        while let Some((rd, wr, peer)) = acceptor.accept(&closed).await {
            let peer = peer.unwrap_or_else(|| SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0));
            let conn2 = conn.clone();
            let address = address.clone();
            let port = local.port();
            spawn_forwarded(&conn, "forwarded-tcpip", rd, wr, async move {
                conn2
                    .handle
                    .channel_open_forwarded_tcpip(
                        address,
                        u32::from(port),
                        peer.ip().to_string(),
                        u32::from(peer.port()),
                    )
                    .await
            })
            .await;
        }
        conn.audit(
            "forward",
            "tcpip-forward",
            "closed",
            serde_json::json!({ "bound": local.to_string() }),
        )
        .await;
    });
    true
}

/// `cancel-tcpip-forward`: stops the listener named as it was asked for.
pub fn cancel_tcpip_forward(conn: &Conn, address: &str, port: u32) -> bool {
    conn.devflow
        .lock()
        .listeners
        .remove(&Key::Tcp(address.to_string(), port))
        .is_some()
}

/// `streamlocal-forward@openssh.com`: a unix listener at `path` in the container, bound as the
/// session user.
pub async fn streamlocal_forward(conn: &Arc<Conn>, path: &str) -> bool {
    let cfg = &conn.shared.cfg;
    let refuse = |reason: &str| {
        let d = serde_json::json!({ "path": path, "reason": reason });
        let conn = conn.clone();
        async move {
            conn.audit("forward", "streamlocal-forward", "rejected", d)
                .await;
            false
        }
    };
    if !cfg.allow_streamlocal_forwarding {
        return refuse("unix-socket forwarding is disabled").await;
    }
    if !socket_path_ok(path) {
        return refuse("not an absolute socket path").await;
    }
    if conn.devflow.lock().listeners.len() >= cfg.max_remote_listeners_per_connection {
        return refuse("too many listeners on this connection").await;
    }
    let listener = match listen(conn, ListenSpec::Unix(Some(path.to_string()))).await {
        Ok(l) => l,
        Err(e) => {
            conn.audit(
                "forward",
                "streamlocal-forward",
                "failure",
                serde_json::json!({ "path": path, "error": e }),
            )
            .await;
            return false;
        }
    };
    let (bound, mut acceptor) = Acceptor::new(listener.listening);
    let Bound::Unix(_) = bound else {
        return false;
    };
    let key = Key::Unix(path.to_string());
    let closed = CancellationToken::new();
    let duplicate = {
        let mut inner = conn.devflow.lock();
        let dup = inner.listeners.contains_key(&key);
        if !dup {
            inner.listeners.insert(key, closed.clone().drop_guard());
        }
        dup
    };
    if duplicate {
        return refuse("already forwarded").await;
    }
    conn.audit(
        "forward",
        "streamlocal-forward",
        "listening",
        serde_json::json!({ "path": path }),
    )
    .await;
    let conn = conn.clone();
    let path = path.to_string();
    let cleanup = listener.cleanup;
    tokio::spawn(async move {
        let _cleanup = cleanup;
        while let Some((rd, wr, _)) = acceptor.accept(&closed).await {
            let conn2 = conn.clone();
            let path2 = path.clone();
            spawn_forwarded(&conn, "forwarded-streamlocal", rd, wr, async move {
                conn2.handle.channel_open_forwarded_streamlocal(path2).await
            })
            .await;
        }
        conn.audit(
            "forward",
            "streamlocal-forward",
            "closed",
            serde_json::json!({ "path": path }),
        )
        .await;
    });
    true
}

/// `cancel-streamlocal-forward@openssh.com`.
pub fn cancel_streamlocal_forward(conn: &Conn, path: &str) -> bool {
    conn.devflow
        .lock()
        .listeners
        .remove(&Key::Unix(path.to_string()))
        .is_some()
}

/// Keeps an agent socket in the container for as long as its session runs.
pub struct AgentSocket {
    _stop: DropGuard,
}

/// Before a session starts: when its channel asked for agent forwarding, a socket in a fresh
/// private directory in the container (mode 0600, the session user's), `SSH_AUTH_SOCK` in `env`,
/// and each connection to it an `auth-agent@openssh.com` channel to the client. `Ok(None)` when
/// the channel did not ask; `Err` with a line for the client when it cannot be had.
pub async fn agent_socket(
    conn: &Arc<Conn>,
    id: ChannelId,
    env: &mut Vec<(String, String)>,
) -> Result<Option<AgentSocket>, String> {
    {
        let mut inner = conn.devflow.lock();
        if !inner.agent_wanted.remove(&id) {
            return Ok(None);
        }
        if inner.agent_sockets >= MAX_AGENT_SOCKETS {
            return Err("too many forwarded agents on this connection".into());
        }
        inner.agent_sockets += 1;
    }
    let r = listen(conn, ListenSpec::Unix(None)).await;
    let listener = match r {
        Ok(l) => l,
        Err(e) => {
            conn.devflow.lock().agent_sockets -= 1;
            conn.audit(
                "forward",
                "auth-agent",
                "failure",
                serde_json::json!({ "error": e }),
            )
            .await;
            return Err(e);
        }
    };
    let (bound, mut acceptor) = Acceptor::new(listener.listening);
    let Bound::Unix(sock_path) = bound else {
        conn.devflow.lock().agent_sockets -= 1;
        return Err("no unix listener".into());
    };
    env.retain(|(k, _)| k != "SSH_AUTH_SOCK");
    env.push(("SSH_AUTH_SOCK".into(), sock_path.clone()));
    conn.audit(
        "forward",
        "auth-agent",
        "listening",
        serde_json::json!({ "path": sock_path }),
    )
    .await;
    let closed = CancellationToken::new();
    let stop = closed.clone().drop_guard();
    let conn = conn.clone();
    let cleanup = listener.cleanup;
    tokio::spawn(async move {
        let _cleanup = cleanup;
        while let Some((rd, wr, _)) = acceptor.accept(&closed).await {
            let conn2 = conn.clone();
            spawn_forwarded(&conn, "auth-agent", rd, wr, async move {
                conn2.handle.channel_open_agent().await
            })
            .await;
        }
        conn.devflow.lock().agent_sockets -= 1;
    });
    Ok(Some(AgentSocket { _stop: stop }))
}

/// Marks a channel open towards the client as in flight until dropped (see [`State::owns`]).
struct Opening<'a>(&'a State);

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        let mut inner = self.0.lock();
        inner.opening = inner.opening.saturating_sub(1);
    }
}

/// One accepted connection in the container: a channel to the client (opened by `open`), then
/// bytes both ways. Over the pending limit or the channel limit, the connection is closed at once
/// and the refusal audited (awaited, so a flood of connections slows the accept loop down rather
/// than piling up work; the connection's audit budget bounds the records).
async fn spawn_forwarded<R, W, F>(conn: &Arc<Conn>, kind: &'static str, rd: R, wr: W, open: F)
where
    R: AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Send + Unpin + 'static,
    F: std::future::Future<Output = Result<Channel<Msg>, russh::Error>> + Send + 'static,
{
    let max = conn.shared.cfg.max_pending_forwarded_per_connection;
    let slot = if conn.devflow.pending.fetch_add(1, Ordering::SeqCst) >= max {
        conn.devflow.pending.fetch_sub(1, Ordering::SeqCst);
        Err("too many connections waiting for the client")
    } else if let Some(slot) = conn.shared.take_slot(conn) {
        Ok(slot)
    } else {
        conn.devflow.pending.fetch_sub(1, Ordering::SeqCst);
        Err("too many channels on this connection")
    };
    let slot = match slot {
        Ok(slot) => slot,
        Err(reason) => {
            drop((rd, wr));
            if conn.log_allowed() {
                debug!(server = %conn.login.server.login_name(), kind, reason, "forwarded connection closed");
            }
            conn.audit(
                "forward",
                kind,
                "rejected",
                serde_json::json!({ "reason": reason }),
            )
            .await;
            return;
        }
    };
    let conn = conn.clone();
    tokio::spawn(async move {
        let _slot = slot;
        let started = Instant::now();
        let opened = {
            conn.devflow.lock().opening += 1;
            let opening = Opening(&conn.devflow);
            let r = tokio::time::timeout(OPEN_TIMEOUT, open).await;
            let ch = match r {
                Ok(Ok(ch)) => {
                    conn.devflow.lock().adopted.insert(ch.id());
                    Some(ch)
                }
                _ => None,
            };
            drop(opening);
            ch
        };
        conn.devflow.pending.fetch_sub(1, Ordering::SeqCst);
        let Some(channel) = opened else {
            // The client refused (or never answered): the container side sees the connection
            // closed, not a hang.
            conn.audit(
                "forward",
                kind,
                "rejected",
                serde_json::json!({ "reason": "the client refused the channel" }),
            )
            .await;
            return;
        };
        let id = channel.id();
        let (bytes_in, bytes_out) = relay_adopted(&conn, channel, rd, wr).await;
        conn.devflow.lock().adopted.remove(&id);
        conn.audit(
            "forward",
            kind,
            "closed",
            serde_json::json!({
                "bytes_in": bytes_in, "bytes_out": bytes_out,
                "duration_ms": started.elapsed().as_millis() as u64,
            }),
        )
        .await;
    });
}

/// [`crate::forward::relay`] for a channel the gateway opened: its messages are read here and
/// queued for the writer, whose writes return the window.
async fn relay_adopted<R, W>(conn: &Arc<Conn>, channel: Channel<Msg>, rd: R, wr: W) -> (u64, u64)
where
    R: AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Send + Unpin + 'static,
{
    let id = channel.id();
    let (mut read_half, writer) = channel.split();
    let (tx, rx) = mpsc::unbounded_channel();
    let closed = CancellationToken::new();
    let reader = {
        let closed = closed.clone();
        let conn = conn.clone();
        tokio::spawn(async move {
            loop {
                let Some(msg) = read_half.wait().await else {
                    break;
                };
                match msg {
                    ChannelMsg::Data { data } => {
                        conn.touch();
                        if let Err(mpsc::error::SendError(Input::Data(d))) =
                            tx.send(Input::Data(data))
                        {
                            pipe::give_back(&conn.shared, &conn.handle, id, d.len());
                        }
                    }
                    ChannelMsg::ExtendedData { data, .. } => {
                        pipe::give_back(&conn.shared, &conn.handle, id, data.len());
                    }
                    ChannelMsg::Eof => {
                        let _ = tx.send(Input::Eof);
                    }
                    ChannelMsg::Close => break,
                    _ => {}
                }
            }
            closed.cancel();
        })
    };
    let stream = Stream {
        read: Box::new(rd),
        write: Box::new(wr),
        path: "agent",
    };
    let r = crate::forward::relay(conn, writer, rx, &closed, stream).await;
    reader.abort();
    r
}

/// `direct-streamlocal@openssh.com` (`ssh -L /local.sock:/remote.sock`): connects to `path` in
/// the container as the session user, then relays like `direct-tcpip`.
pub struct DirectSpec {
    pub conn: Arc<Conn>,
    pub closed: CancellationToken,
    pub writer: russh::ChannelWriteHalf<Msg>,
    pub reply: russh::server::ChannelOpenHandle,
    pub path: String,
    pub input: mpsc::UnboundedReceiver<Input>,
}

pub async fn direct_streamlocal(spec: DirectSpec) {
    let DirectSpec {
        conn,
        closed,
        writer,
        reply,
        path,
        input,
    } = spec;
    let started = Instant::now();
    let audit = |outcome: &'static str, detail: serde_json::Value| {
        let conn = conn.clone();
        async move {
            conn.audit("forward", "direct-streamlocal", outcome, detail)
                .await
        }
    };
    if !conn.shared.cfg.allow_streamlocal_forwarding || !socket_path_ok(&path) {
        reply
            .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        let reason = if socket_path_ok(&path) {
            "unix-socket forwarding is disabled"
        } else {
            "not an absolute socket path"
        };
        audit(
            "rejected",
            serde_json::json!({ "path": path, "reason": reason }),
        )
        .await;
        return;
    }
    let connected = async {
        let target = target(&conn).await?;
        let login = conn.login.server.login_name();
        match tokio::time::timeout(
            BACKEND_TIMEOUT,
            conn.shared.backend.connect_unix(&target, &login, &path),
        )
        .await
        {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(backend_text(e)),
            Err(_) => Err("timeout".to_string()),
        }
    }
    .await;
    let stream = match connected {
        Ok(s) => s,
        Err(e) => {
            debug!(path = %loggable(&path), error = %e, "direct-streamlocal connect failed");
            reply.reject(russh::ChannelOpenFailure::ConnectFailed).await;
            audit("failure", serde_json::json!({ "path": path, "error": e })).await;
            return;
        }
    };
    reply.accept().await;
    let (bytes_in, bytes_out) = crate::forward::relay(&conn, writer, input, &closed, stream).await;
    audit(
        "closed",
        serde_json::json!({
            "path": path, "bytes_in": bytes_in, "bytes_out": bytes_out,
            "duration_ms": started.elapsed().as_millis() as u64,
        }),
    )
    .await;
}

/// Refuses an agent-forwarding request when the operator disabled it (audited).
pub async fn agent_refused(conn: &Conn) {
    conn.audit(
        "forward",
        "auth-agent",
        "rejected",
        serde_json::json!({ "reason": "agent forwarding is disabled" }),
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chan(n: u32) -> ChannelId {
        use russh::keys::ssh_encoding::Decode;
        let bytes = n.to_be_bytes();
        match ChannelId::decode(&mut &bytes[..]) {
            Ok(id) => id,
            Err(e) => panic!("channel id: {e}"),
        }
    }

    #[test]
    fn only_adopted_or_in_flight_channels_keep_their_window_from_the_handler() {
        let st = State::default();
        assert!(!st.owns(chan(3)));
        st.lock().opening += 1;
        assert!(
            st.owns(chan(3)),
            "a channel open in flight may be any unknown id"
        );
        {
            let mut inner = st.lock();
            inner.opening -= 1;
            inner.adopted.insert(chan(4));
        }
        assert!(st.owns(chan(4)));
        assert!(!st.owns(chan(3)));
    }

    #[test]
    fn agent_requests_are_bounded_and_forgotten_with_their_channel() {
        let st = State::default();
        for n in 0..MAX_AGENT_SOCKETS as u32 {
            assert!(st.want_agent(chan(n)));
        }
        assert!(!st.want_agent(chan(999)));
        st.forget(chan(0));
        assert!(st.want_agent(chan(999)));
    }

    #[test]
    fn loopback_policy_never_binds_beyond_the_loopback() {
        let c: IpAddr = [172, 19, 2, 7].into();
        let lo = RemoteForwardBind::Loopback;
        let v4: IpAddr = Ipv4Addr::LOCALHOST.into();
        for a in ["", "*", "0.0.0.0", "localhost", "127.0.0.1"] {
            assert_eq!(bind_address(a, lo, c), Ok(v4), "{a:?}");
        }
        assert_eq!(bind_address("::", lo, c), Ok(Ipv6Addr::LOCALHOST.into()));
        assert_eq!(bind_address("::1", lo, c), Ok(Ipv6Addr::LOCALHOST.into()));
        for a in [
            "172.19.2.7",
            "172.19.2.1",
            "10.0.0.1",
            "example.com",
            "::ffff:1.2.3.4",
        ] {
            assert!(bind_address(a, lo, c).is_err(), "{a:?}");
        }
    }

    #[test]
    fn container_policy_allows_its_own_address_and_the_wildcard_only() {
        let c: IpAddr = [172, 19, 2, 7].into();
        let p = RemoteForwardBind::Container;
        assert_eq!(bind_address("", p, c), Ok(Ipv4Addr::UNSPECIFIED.into()));
        assert_eq!(
            bind_address("0.0.0.0", p, c),
            Ok(Ipv4Addr::UNSPECIFIED.into())
        );
        assert_eq!(bind_address("172.19.2.7", p, c), Ok(c));
        assert_eq!(
            bind_address("localhost", p, c),
            Ok(Ipv4Addr::LOCALHOST.into())
        );
        for a in ["172.19.2.1", "172.19.2.8", "192.168.1.1", "gateway.example"] {
            assert!(bind_address(a, p, c).is_err(), "{a:?}");
        }
    }

    #[test]
    fn socket_paths_are_absolute_bounded_lines() {
        assert!(socket_path_ok("/tmp/code-1234.sock"));
        assert!(!socket_path_ok("relative.sock"));
        assert!(!socket_path_ok("/tmp/a\nb"));
        assert!(!socket_path_ok("/tmp/a\0b"));
        assert!(!socket_path_ok(&format!("/{}", "x".repeat(200))));
    }
}
