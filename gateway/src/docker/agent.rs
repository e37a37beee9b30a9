//! The fast data path: one `berth-agent` per container, reached over a unix socket the gateway
//! listens on in that container's agent directory (mounted at `/dev/berth`).
//!
//! Life of an agent: on a container's first session the gateway copies its agent binary into
//! the container (once per container per gateway process), starts it with a Docker exec as the
//! session user with a fresh token in its environment, and waits until the process it started
//! connects to that container's socket and presents the token. From then on sessions and
//! forwards cost one message round trip plus the tenant's own process; the exec stays until the
//! container stops or the gateway goes away (the agent then hangs up its sessions and exits).
//!
//! Trust: the agent runs as the tenant, so nothing it says is believed beyond its own
//! container: only the process the gateway started may hold a handshake (its pid, from Docker,
//! against `SO_PEERCRED`), a connection only ever serves the container whose directory it came
//! through, every reply must answer a request still waiting for one (once), fds are
//! type-checked (`fds.rs`), every send to the agent is bounded in time, and tenant text from the
//! agent is cut to [`TEXT_MAX`] bytes before it reaches a log or the audit table. Anything else
//! is misbehaviour: the connection is dropped and the container's sessions take the attach path
//! for a while. A session whose Spawn reached the agent is never started a second time on the
//! attach path: it fails with a clear error instead, because the command may have run.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use berth_agent::{PROTOCOL_VERSION, Reply, Request, SOCKET_NAME, TOKEN_ENV, WireError};
use bollard::Docker;
use bollard::exec::{CreateExecOptions, StartExecOptions};
use bytes::Bytes;
use sha2::Digest;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::fds::{self, PipeEnd, Pty};
use crate::backend::{Chunk, Process, ProcessControl, ProcessOutput, Stream};
use crate::policy::{self, Exit};

/// How long a started agent has to connect and say hello.
const START_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request waits for its reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one send to the agent may wait for room in its socket: an agent reads every
/// request at once, so a full socket for this long means it stopped reading.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// After a failed start, sessions of that container take the attach path for this long.
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// Handshakes in progress on one container's socket.
const MAX_HANDSHAKES: usize = 8;
/// Bytes read from a pipe at once.
const CHUNK: usize = 64 * 1024;
/// Largest hello accepted (version and a 32-character token fit many times over).
const HELLO_MAX: usize = 1024;
/// Tenant text from the agent (error messages, what made a message malformed) is cut to this
/// many bytes before it is logged, audited or shown.
pub const TEXT_MAX: usize = 256;
/// Tenant error texts one agent connection may pass on per [`TEXT_WINDOW`]; beyond that a fixed
/// text stands in for them.
const TEXT_BUDGET: u32 = 32;
const TEXT_WINDOW: Duration = Duration::from_secs(60);

// The agent gives up on a forward's connect before the gateway gives up on the reply, so a slow
// but honest connect is answered with an error instead of being taken for a stuck agent.
const _: () = assert!(berth_agent::CONNECT_TIMEOUT.as_secs() + 3 <= REPLY_TIMEOUT.as_secs());

/// Why the agent path did not serve a request.
#[derive(Debug)]
pub enum AgentError {
    /// No agent (not startable, gone, misbehaving) and the request never reached one: another
    /// path may serve it.
    Unavailable(String),
    /// The agent worked and the operation failed (e.g. connection refused): tell the client.
    Refused(String),
    /// The request reached the agent and no usable answer came back: it may have been carried
    /// out. A session must not be started again elsewhere (it could run twice).
    Sent(String),
}

impl std::fmt::Display for AgentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentError::Unavailable(e) | AgentError::Refused(e) | AgentError::Sent(e) => {
                f.write_str(e)
            }
        }
    }
}

/// `text` as it may be logged: at most [`TEXT_MAX`] bytes (cut at a character boundary, `…`
/// appended), control characters escaped.
pub fn tenant_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(TEXT_MAX) + 4);
    for c in text.chars() {
        let escaped: String = if c.is_control() {
            c.escape_default().collect()
        } else {
            c.to_string()
        };
        if out.len() + escaped.len() > TEXT_MAX {
            out.push('…');
            break;
        }
        out.push_str(&escaped);
    }
    out
}

/// The agent binary the gateway copies into containers.
pub struct Binary {
    bytes: Bytes,
    /// Versioned by content, so a container keeps a running older agent while a new one is
    /// copied next to it.
    path: String,
}

impl Binary {
    pub fn load(path: &Path) -> io::Result<Self> {
        let bytes = std::fs::read(path)?;
        let hash = hex::encode(&sha2::Sha256::digest(&bytes)[..6]);
        Ok(Self {
            bytes: Bytes::from(bytes),
            path: format!("/usr/lib/berth/berth-agent-{hash}"),
        })
    }
}

#[derive(Default)]
struct HubState {
    /// Container id → its agent (single flight: the lock is held while one starts).
    agents: HashMap<String, Arc<tokio::sync::Mutex<Option<Arc<AgentConn>>>>>,
    listeners: HashMap<PathBuf, Arc<Listener>>,
    failed: HashMap<String, Instant>,
    uploaded: HashSet<String>,
}

/// Every agent of this gateway process.
pub struct Hub {
    binary: Arc<Binary>,
    state: Mutex<HubState>,
}

/// Who the agent runs as, and where.
pub struct Placement<'a> {
    pub container: &'a str,
    pub dir: &'a Path,
    pub user: &'a str,
    pub workdir: Option<&'a str>,
}

impl Hub {
    pub fn new(binary: Binary) -> Self {
        Self {
            binary: Arc::new(binary),
            state: Mutex::new(HubState::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts `argv` through the container's agent. [`AgentError::Unavailable`] only when the
    /// Spawn never reached an agent; every failure after that is [`AgentError::Sent`].
    pub async fn exec(
        &self,
        docker: &Docker,
        at: &Placement<'_>,
        argv: Vec<String>,
        env: Vec<(String, String)>,
        pty: Option<(u32, u32)>,
    ) -> Result<Process, AgentError> {
        let conn = self.agent(docker, at).await?;
        let clamp = |n: u32| u16::try_from(n).unwrap_or(u16::MAX).max(1);
        let id = conn.next_id();
        let exit_rx = conn.expect_exit(id);
        let req = Request::Spawn {
            id,
            argv,
            env,
            cwd: None,
            pty: pty.map(|(c, r)| berth_agent::Winsize {
                cols: clamp(c),
                rows: clamp(r),
            }),
        };
        let (reply, fds) = match conn.request(id, &req).await {
            Ok(r) => r,
            Err(e) => {
                conn.forget_exit(id);
                return Err(e);
            }
        };
        match reply {
            Reply::Spawned { .. } => {}
            Reply::Failed { error, .. } => {
                conn.forget_exit(id);
                return Err(AgentError::Sent(format!(
                    "the session agent could not start the session: {}",
                    conn.passed_text(&error)
                )));
            }
            other => {
                conn.violation(&format!("unexpected reply to spawn: {}", kind(&other)));
                return Err(AgentError::Sent(
                    "the session agent answered the spawn with something else".into(),
                ));
            }
        }
        match process(&conn, id, exit_rx, fds, pty.is_some()) {
            Ok(p) => Ok(p),
            Err(e) => {
                conn.violation(&format!("spawn reply carried the wrong fds: {e}"));
                conn.send(&Request::Hangup { id }).await;
                Err(AgentError::Sent(format!(
                    "the session agent sent unusable fds: {e}"
                )))
            }
        }
    }

    /// Connects to `addr` from inside the container's network namespace.
    pub async fn connect(
        &self,
        docker: &Docker,
        at: &Placement<'_>,
        addr: SocketAddr,
    ) -> Result<Stream, AgentError> {
        let make = |id| Request::Connect {
            id,
            ip: addr.ip(),
            port: addr.port(),
        };
        let (conn, _, fd) = self
            .request_fd(docker, at, "connect", make, |r| {
                matches!(r, Reply::Connected { .. })
            })
            .await?;
        vetted(&conn, "connect", fds::check_tcp(&fd, addr))?;
        let stream = std::net::TcpStream::from(fd);
        let stream = nonblocking(stream.set_nonblocking(true), "forward socket", || {
            tokio::net::TcpStream::from_std(stream)
        })?;
        let _ = stream.set_nodelay(true);
        let (read, write) = stream.into_split();
        Ok(agent_stream(read, write))
    }

    /// Listens on `addr` inside the container's network namespace; the gateway accepts on the
    /// returned socket itself, so every connection to it is one of the container's own.
    pub async fn listen_tcp(
        &self,
        docker: &Docker,
        at: &Placement<'_>,
        addr: SocketAddr,
    ) -> Result<(tokio::net::TcpListener, SocketAddr), AgentError> {
        let make = |id| Request::Listen {
            id,
            ip: addr.ip(),
            port: addr.port(),
        };
        let (conn, _, fd) = self
            .request_fd(docker, at, "listen", make, |r| {
                matches!(r, Reply::Listening { .. })
            })
            .await?;
        let local = vetted(&conn, "listen", fds::check_tcp_listener(&fd, addr))?;
        let l = std::net::TcpListener::from(fd);
        let l = nonblocking(l.set_nonblocking(true), "listening socket", || {
            tokio::net::TcpListener::from_std(l)
        })?;
        Ok((l, local))
    }

    /// Connects to the unix socket at `path` as the agent's user (so the container's own file
    /// permissions decide).
    pub async fn connect_unix(
        &self,
        docker: &Docker,
        at: &Placement<'_>,
        path: &str,
    ) -> Result<Stream, AgentError> {
        let make = |id| Request::ConnectUnix {
            id,
            path: path.to_string(),
        };
        let (conn, _, fd) = self
            .request_fd(docker, at, "a unix connect", make, |r| {
                matches!(r, Reply::Connected { .. })
            })
            .await?;
        vetted(&conn, "unix connect", fds::check_unix_stream(&fd))?;
        let stream = std::os::unix::net::UnixStream::from(fd);
        let stream = nonblocking(stream.set_nonblocking(true), "forward socket", || {
            tokio::net::UnixStream::from_std(stream)
        })?;
        let (read, write) = stream.into_split();
        Ok(agent_stream(read, write))
    }

    /// Listens on a unix socket as the agent's user: at `path`, or (`None`) in a fresh private
    /// directory for agent forwarding. The socket is removed when the returned [`Unlink`] is
    /// dropped.
    pub async fn listen_unix(
        &self,
        docker: &Docker,
        at: &Placement<'_>,
        path: Option<&str>,
    ) -> Result<(tokio::net::UnixListener, String, Unlink), AgentError> {
        let make = |id| Request::ListenUnix {
            id,
            path: path.map(str::to_string),
        };
        let (conn, reply, fd) = self
            .request_fd(docker, at, "a unix listen", make, |r| {
                matches!(r, Reply::ListeningUnix { .. })
            })
            .await?;
        let Reply::ListeningUnix { path: bound, .. } = reply else {
            return Err(AgentError::Sent("unexpected reply".into()));
        };
        // The path is the tenant's text: it must be the one asked for, or a plausible fresh one.
        let plausible = match path {
            Some(p) => bound == p,
            None => {
                bound.starts_with("/tmp/ssh-")
                    && bound.len() <= berth_agent::MAX_SOCKET_PATH
                    && !bound.chars().any(|c| c.is_control())
            }
        };
        let unlink = Unlink {
            conn: conn.clone(),
            path: bound.clone(),
        };
        if !plausible {
            conn.violation("unix listen reply named another path");
            return Err(AgentError::Sent("agent bound another path".into()));
        }
        vetted(&conn, "unix listen", fds::check_unix_listener(&fd))?;
        let l = std::os::unix::net::UnixListener::from(fd);
        let l = nonblocking(l.set_nonblocking(true), "listening socket", || {
            tokio::net::UnixListener::from_std(l)
        })?;
        Ok((l, bound, unlink))
    }

    /// Sends one request that the agent answers with exactly one fd. `expected` names the reply
    /// that carries it; `Failed` is the tenant's refusal (its text passed on, budgeted);
    /// anything else — another reply, or the wrong number of fds — is a protocol violation.
    async fn request_fd(
        &self,
        docker: &Docker,
        at: &Placement<'_>,
        what: &str,
        make: impl FnOnce(u32) -> Request,
        expected: impl Fn(&Reply) -> bool,
    ) -> Result<(Arc<AgentConn>, Reply, OwnedFd), AgentError> {
        let conn = self.agent(docker, at).await?;
        let id = conn.next_id();
        let (reply, mut fds) = conn.request(id, &make(id)).await?;
        if expected(&reply) && fds.len() == 1 {
            let fd = fds.remove(0);
            return Ok((conn, reply, fd));
        }
        if let Reply::Failed { error, .. } = &reply {
            return Err(AgentError::Refused(conn.passed_text(error)));
        }
        conn.violation(&format!(
            "unexpected reply to {what}: {} with {} fds",
            kind(&reply),
            fds.len()
        ));
        Err(AgentError::Sent("unexpected reply".into()))
    }

    /// The container's live agent, started if needed.
    async fn agent(
        &self,
        docker: &Docker,
        at: &Placement<'_>,
    ) -> Result<Arc<AgentConn>, AgentError> {
        let cell = {
            let mut st = self.state();
            if let Some(t) = st.failed.get(at.container)
                && t.elapsed() < RETRY_AFTER
            {
                return Err(AgentError::Unavailable(
                    "agent failed to start recently".into(),
                ));
            }
            if st.agents.len() > 100_000 {
                st.agents.retain(|_, c| Arc::strong_count(c) > 1);
            }
            st.agents
                .entry(at.container.to_string())
                .or_default()
                .clone()
        };
        let mut slot = cell.lock().await;
        if let Some(c) = slot.as_ref() {
            if !c.dead.is_cancelled() {
                return Ok(c.clone());
            }
            if c.misbehaved.load(Ordering::Relaxed) {
                // Not restarted at once: a replaced agent would be started for every session.
                *slot = None;
                self.state()
                    .failed
                    .insert(at.container.to_string(), Instant::now());
                return Err(AgentError::Unavailable(
                    "the agent misbehaved recently".into(),
                ));
            }
        }
        let t0 = Instant::now();
        match self.start(docker, at).await {
            Ok(c) => {
                info!(container = %at.container, user = %at.user, took_ms = t0.elapsed().as_millis() as u64, "session agent started");
                *slot = Some(c.clone());
                Ok(c)
            }
            Err(e) => {
                warn!(container = %at.container, error = %e, "session agent unavailable; sessions use docker exec");
                let mut st = self.state();
                st.failed.insert(at.container.to_string(), Instant::now());
                st.uploaded.remove(at.container);
                Err(AgentError::Unavailable(e))
            }
        }
    }

    async fn start(&self, docker: &Docker, at: &Placement<'_>) -> Result<Arc<AgentConn>, String> {
        let listener = self.listener(at.dir)?;
        let uploaded = self.state().uploaded.contains(at.container);
        if !uploaded {
            upload(docker, at.container, &self.binary).await?;
            self.state().uploaded.insert(at.container.to_string());
        }
        let token = hex::encode(rand::random::<[u8; 16]>());
        let hello = listener.expect(&token);
        let opts = CreateExecOptions::<String> {
            cmd: Some(vec![self.binary.path.clone()]),
            user: Some(at.user.to_string()),
            env: Some(vec![format!("{TOKEN_ENV}={token}")]),
            working_dir: at.workdir.map(str::to_string),
            ..Default::default()
        };
        let r = async {
            let exec = docker
                .create_exec(at.container, opts)
                .await
                .map_err(|e| format!("create agent exec: {e}"))?
                .id;
            docker
                .start_exec(
                    &exec,
                    Some(StartExecOptions {
                        detach: true,
                        ..Default::default()
                    }),
                )
                .await
                .map_err(|e| format!("start agent exec: {e}"))?;
            let deadline = tokio::time::Instant::now() + START_TIMEOUT;
            let mut hello = hello;
            let mut pid_known = false;
            loop {
                if !pid_known {
                    // The process Docker started is the only peer allowed a handshake.
                    match docker.inspect_exec(&exec).await {
                        Ok(i) if i.running == Some(false) => {
                            return Err(format!("agent exited with code {:?}", i.exit_code));
                        }
                        Ok(i) => {
                            if let Some(pid) = i.pid.and_then(|p| i32::try_from(p).ok())
                                && pid > 0
                            {
                                listener.started(&token, pid);
                                pid_known = true;
                            }
                        }
                        Err(e) => debug!(error = %e, "inspect agent exec"),
                    }
                }
                tokio::select! {
                    fd = &mut hello => return fd.map_err(|_| "agent socket closed".to_string()),
                    _ = tokio::time::sleep(Duration::from_millis(if pid_known { 100 } else { 10 })) => {
                        if tokio::time::Instant::now() >= deadline {
                            return Err("agent did not connect in time".to_string());
                        }
                        if pid_known
                            && let Ok(i) = docker.inspect_exec(&exec).await
                            && i.running == Some(false)
                        {
                            return Err(format!("agent exited with code {:?}", i.exit_code));
                        }
                    }
                }
            }
        }
        .await;
        listener.forget(&token);
        let fd = r?;
        AgentConn::start(fd).map_err(|e| format!("agent socket: {e}"))
    }

    /// The listening socket in `dir`, made on first use and made again when the socket file
    /// there is no longer ours (removed or replaced).
    fn listener(&self, dir: &Path) -> Result<Arc<Listener>, String> {
        let mut st = self.state();
        if let Some(l) = st.listeners.get(dir) {
            if !l.closed.is_cancelled() && l.in_place(dir) {
                return Ok(l.clone());
            }
            debug!(dir = %dir.display(), "agent socket gone; binding it again");
        }
        let l =
            Listener::bind(dir).map_err(|e| format!("cannot listen in {}: {e}", dir.display()))?;
        st.listeners.insert(dir.to_path_buf(), l.clone());
        Ok(l)
    }
}

/// A reply's kind, for logs (never its tenant-controlled fields).
fn kind(r: &Reply) -> &'static str {
    match r {
        Reply::Hello { .. } => "hello",
        Reply::Spawned { .. } => "spawned",
        Reply::Failed { .. } => "failed",
        Reply::Exited { .. } => "exited",
        Reply::Connected { .. } => "connected",
        Reply::Listening { .. } => "listening",
        Reply::ListeningUnix { .. } => "listening-unix",
    }
}

/// Copies the agent into the container (a one-file tar; missing parent directories are made by
/// Docker, existing ones are left as they are).
/// The result of checking an fd the agent passed: a wrong one is a protocol violation.
fn vetted<T>(conn: &AgentConn, what: &str, checked: io::Result<T>) -> Result<T, AgentError> {
    checked.map_err(|e| {
        conn.violation(&format!("{what} reply carried the wrong fd: {e}"));
        AgentError::Sent(format!("agent sent an unusable socket: {e}"))
    })
}

/// Registers a checked socket with tokio once it is non-blocking.
fn nonblocking<T>(
    set: io::Result<()>,
    what: &str,
    register: impl FnOnce() -> io::Result<T>,
) -> Result<T, AgentError> {
    set.and_then(|()| register())
        .map_err(|e| AgentError::Sent(format!("{what}: {e}")))
}

fn agent_stream(
    read: impl tokio::io::AsyncRead + Send + Unpin + 'static,
    write: impl tokio::io::AsyncWrite + Send + Unpin + 'static,
) -> Stream {
    Stream {
        read: Box::new(read),
        write: Box::new(write),
        path: "agent",
    }
}

async fn upload(docker: &Docker, container: &str, binary: &Binary) -> Result<(), String> {
    let name = binary.path.trim_start_matches('/');
    let tar = super::tar::one_file(name, 0o755, &binary.bytes)
        .map_err(|e| format!("agent archive: {e}"))?;
    let opts = bollard::query_parameters::UploadToContainerOptions {
        path: "/".into(),
        ..Default::default()
    };
    docker
        .upload_to_container(container, Some(opts), bollard::body_full(Bytes::from(tar)))
        .await
        .map_err(|e| format!("copy the agent into the container: {e}"))
}

/// An agent start in progress: who gets the connection, and (once Docker said) the pid of the
/// process that may make it.
struct Pending {
    tx: oneshot::Sender<OwnedFd>,
    pid: Option<i32>,
}

/// Whether a peer may hold a handshake slot.
#[derive(Debug, PartialEq, Eq)]
enum Admit {
    /// It is the process a pending start is waiting for.
    Yes,
    /// A start is pending whose process Docker has not named yet.
    NotYet,
    No,
}

/// One container's socket: hands the connection of the process a start is waiting for, once it
/// presents that start's token, to the starter.
struct Listener {
    waiting: Mutex<HashMap<String, Pending>>,
    /// Bumped whenever the pending starts change (one begins, learns its pid, ends): the
    /// accept loop pauses or resumes, handshakes of other peers end.
    pids: watch::Sender<u64>,
    /// The socket file as bound: (device, inode).
    file: (u64, u64),
    /// Cancelled when the accept loop has ended.
    closed: CancellationToken,
    /// Cancelled when the listener is dropped: ends the accept loop.
    stop: CancellationToken,
    /// When a handshake last logged at warn level (tenant-driven, so rate-limited).
    last_warn: Mutex<Option<Instant>>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Listener {
    /// Binds in a staging name in the gateway-only parent directory, opens it to everyone there
    /// (only this container sees the directory it lands in), then renames it into place:
    /// nothing the tenant put in its directory is followed or chmod'ed.
    fn bind(dir: &Path) -> io::Result<Arc<Self>> {
        use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
        use std::os::unix::fs::MetadataExt;
        let parent = dir
            .parent()
            .ok_or_else(|| io::Error::other("agent directory has no parent"))?;
        let staging = parent.join(format!(
            ".gw-{}-{}.sock",
            std::process::id(),
            hex::encode(rand::random::<[u8; 4]>())
        ));
        let sock = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            None,
        )?;
        rustix::net::bind(&sock, &SocketAddrUnix::new(&staging)?)?;
        let placed = (|| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o666))?;
            let m = std::fs::symlink_metadata(&staging)?;
            rustix::net::listen(&sock, 16)?;
            std::fs::rename(&staging, dir.join(SOCKET_NAME))?;
            Ok::<_, io::Error>((m.dev(), m.ino()))
        })();
        let file = match placed {
            Ok(f) => f,
            Err(e) => {
                let _ = std::fs::remove_file(&staging);
                return Err(e);
            }
        };
        let l = Arc::new(Self {
            waiting: Mutex::new(HashMap::new()),
            pids: watch::Sender::new(0),
            file,
            closed: CancellationToken::new(),
            stop: CancellationToken::new(),
            last_warn: Mutex::new(None),
        });
        let fd = fds::register(sock)?;
        tokio::spawn(accept_loop(
            fd,
            Arc::downgrade(&l),
            l.closed.clone(),
            l.stop.clone(),
        ));
        Ok(l)
    }

    /// Whether `dir`'s socket file is still the one this listener bound.
    fn in_place(&self, dir: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        std::fs::symlink_metadata(dir.join(SOCKET_NAME))
            .is_ok_and(|m| (m.dev(), m.ino()) == self.file)
    }

    fn expect(&self, token: &str) -> oneshot::Receiver<OwnedFd> {
        let (tx, rx) = oneshot::channel();
        self.lock()
            .insert(token.to_string(), Pending { tx, pid: None });
        self.pids.send_modify(|n| *n += 1);
        rx
    }

    /// Docker named the process of the start waiting for `token`.
    fn started(&self, token: &str, pid: i32) {
        if let Some(p) = self.lock().get_mut(token) {
            p.pid = Some(pid);
        }
        self.pids.send_modify(|n| *n += 1);
    }

    fn forget(&self, token: &str) {
        self.lock().remove(token);
        self.pids.send_modify(|n| *n += 1);
    }

    /// `peer` is `None` when the connecting process is not visible from the gateway's pid
    /// namespace. A gateway in the host's namespace sees every process, so that happens only to
    /// a gateway in a pid namespace of its own (a container, `unshare --pid`), which sees no
    /// container process at all: there the pid rule cannot apply and the start's token alone
    /// decides. Only processes of this container can reach its socket, so an intruder there
    /// holds at most this container's own handshake slots (its own sessions then take the
    /// attach path).
    fn admit(&self, peer: Option<i32>) -> Admit {
        let waiting = self.lock();
        match peer {
            Some(pid) if waiting.values().any(|p| p.pid == Some(pid)) => Admit::Yes,
            _ if waiting.values().any(|p| p.pid.is_none()) => Admit::NotYet,
            None if !waiting.is_empty() => Admit::Yes,
            _ => Admit::No,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// At most one warn line a minute from this socket's handshakes; the rest go to debug.
    fn may_warn(&self) -> bool {
        let mut last = self.last_warn.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(60)) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }
}

/// The pid of the process that connected (`SO_PEERCRED`, in the gateway's pid namespace:
/// `None` when it is not visible from there).
fn peer_pid(conn: OwnedFd) -> io::Result<(OwnedFd, Option<i32>)> {
    let std = std::os::unix::net::UnixStream::from(conn);
    let tokio = tokio::net::UnixStream::from_std(std)?;
    let pid = tokio.peer_cred()?.pid().filter(|p| *p > 0);
    let std = tokio.into_std()?;
    Ok((OwnedFd::from(std), pid))
}

async fn accept_loop(
    fd: AsyncFd<OwnedFd>,
    listener: Weak<Listener>,
    closed: CancellationToken,
    stop: CancellationToken,
) {
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    let Some(mut pids) = listener.upgrade().map(|l| l.pids.subscribe()) else {
        closed.cancel();
        return;
    };
    loop {
        // While Docker has not yet named the process a start waits for, nothing is accepted:
        // connections wait in the kernel's backlog (the agent's blocking connect with them)
        // and are then sorted by the one rule below, so none can take a slot in that window.
        let naming = listener
            .upgrade()
            .is_some_and(|l| l.admit(None) == Admit::NotYet);
        if naming {
            tokio::select! {
                changed = pids.changed() => if changed.is_err() { break },
                _ = stop.cancelled() => break,
                // A pending start always ends (named, forgotten) within its own bound.
                _ = tokio::time::sleep(START_TIMEOUT) => {}
            }
            continue;
        }
        let ready = tokio::select! {
            r = fd.readable() => r,
            _ = stop.cancelled() => break,
            // A start beginning pauses accepting (above).
            changed = pids.changed() => if changed.is_err() { break } else { continue },
        };
        let Ok(mut guard) = ready else {
            break;
        };
        let accepted = guard.try_io(|fd| {
            rustix::net::accept_with(
                fd.get_ref(),
                rustix::net::SocketFlags::NONBLOCK | rustix::net::SocketFlags::CLOEXEC,
            )
            .map_err(io::Error::from)
        });
        match accepted {
            Ok(Ok(conn)) => {
                let Some(l) = listener.upgrade() else { break };
                let Ok((conn, peer)) = peer_pid(conn) else {
                    continue;
                };
                // Only the process a start is waiting for may hold a slot; everyone else is
                // closed unread at once.
                if l.admit(peer) != Admit::Yes {
                    debug!(
                        ?peer,
                        "agent socket connection from a process no start waits for"
                    );
                    continue;
                }
                drop(l);
                // Past the bound, new connections are closed unread (only starts in flight
                // at once can be admitted, so this is a backstop).
                let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                    continue;
                };
                let listener = listener.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    handshake(conn, peer, listener).await;
                });
            }
            Ok(Err(e)) => {
                debug!(error = %e, "agent socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(_would_block) => {}
        }
        if listener.strong_count() == 0 {
            break;
        }
    }
    closed.cancel();
}

/// Waits for the hello of a connection from `peer`, as long as `peer` may hold a slot.
async fn handshake(conn: OwnedFd, peer: Option<i32>, weak: Weak<Listener>) {
    let Ok(afd) = fds::register(conn) else { return };
    let Some(mut pids) = weak.upgrade().map(|l| l.pids.subscribe()) else {
        return;
    };
    let mut buf = vec![0u8; HELLO_MAX];
    let deadline = tokio::time::sleep(START_TIMEOUT);
    tokio::pin!(deadline);
    let first = loop {
        tokio::select! {
            m = recv(&afd, 0, &mut buf) => break m,
            _ = &mut deadline => return,
            changed = pids.changed() => {
                let admitted = weak.upgrade().map(|l| l.admit(peer));
                if changed.is_err() || admitted == Some(Admit::No) || admitted.is_none() {
                    return;
                }
            }
        }
    };
    let Some(listener) = weak.upgrade() else {
        return;
    };
    let token = match first {
        Ok((n, _)) => match berth_agent::decode::<Reply>(&buf[..n]) {
            Ok(Reply::Hello { version, token }) if version == PROTOCOL_VERSION => token,
            Ok(Reply::Hello { version, .. }) => {
                if listener.may_warn() {
                    warn!(
                        version,
                        expected = PROTOCOL_VERSION,
                        "agent speaks another protocol version"
                    );
                }
                return;
            }
            _ => {
                crate::metrics::protocol_violation(crate::metrics::Violation::Agent);
                return;
            }
        },
        Err(WireError::Malformed(_)) => {
            crate::metrics::protocol_violation(crate::metrics::Violation::Agent);
            return;
        }
        Err(_) => return,
    };
    // The token must be that of a start whose process is this peer: a token read out of the
    // agent's environment is no use to another process. A hello can beat Docker's answer
    // naming the process: then it waits for it (within the same deadline).
    drop(listener);
    let waiter = loop {
        let Some(l) = weak.upgrade() else { return };
        let decided = {
            let mut waiting = l.lock();
            match waiting.get(&token) {
                Some(p) if p.pid.is_none() => None,
                // An invisible peer (see `Listener::admit`) is judged by the token alone.
                Some(p) if p.pid == peer || peer.is_none() => Some(waiting.remove(&token)),
                _ => Some(None),
            }
        };
        drop(l);
        if let Some(w) = decided {
            break w;
        }
        tokio::select! {
            _ = &mut deadline => return,
            changed = pids.changed() => if changed.is_err() { return },
        }
    };
    match waiter {
        Some(p) => {
            let _ = p.tx.send(afd.into_inner());
        }
        None => {
            debug!(
                ?peer,
                "agent connection with an unknown token or from another process closed"
            );
            crate::metrics::protocol_violation(crate::metrics::Violation::Agent);
        }
    }
}

/// Receives one message into `buf` (cancel-safe: data is taken only when the socket is
/// ready): its length and the fds that came with it.
async fn recv(
    afd: &AsyncFd<OwnedFd>,
    max_fds: usize,
    buf: &mut [u8],
) -> Result<(usize, Vec<OwnedFd>), WireError> {
    loop {
        let mut guard = afd.readable().await?;
        let r =
            guard.try_io(
                |fd| match berth_agent::recv_into(fd.get_ref().as_fd(), max_fds, buf) {
                    Err(WireError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => Err(e),
                    other => Ok(other),
                },
            );
        if let Ok(r) = r {
            return r?;
        }
    }
}

/// Sends one message, waiting for room in the socket at most [`SEND_TIMEOUT`].
async fn send(afd: &AsyncFd<OwnedFd>, msg: &Request) -> Result<(), SendError> {
    let attempt = async {
        loop {
            let mut guard = afd.writable().await?;
            let r = guard.try_io(
                |fd| match berth_agent::send(fd.get_ref().as_fd(), msg, &[]) {
                    Err(WireError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => Err(e),
                    other => Ok(other),
                },
            );
            if let Ok(r) = r {
                return r?;
            }
        }
    };
    match tokio::time::timeout(SEND_TIMEOUT, attempt).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(SendError::Failed(e)),
        Err(_elapsed) => Err(SendError::Stuck),
    }
}

/// Why a send to the agent did not happen (either way the message was not queued: a
/// `SOCK_SEQPACKET` send takes the whole message or nothing).
#[derive(Debug)]
enum SendError {
    /// The socket is gone or refused the message.
    Failed(WireError),
    /// The agent stopped reading: its socket stayed full for [`SEND_TIMEOUT`].
    Stuck,
}

type ReplySender = oneshot::Sender<(Reply, Vec<OwnedFd>)>;

/// One agent connection.
struct AgentConn {
    sock: AsyncFd<OwnedFd>,
    next_id: AtomicU32,
    /// Requests waiting for their one reply (kept until it comes, also when the requester gave
    /// up waiting, so a late answer is known to be owed).
    replies: Mutex<HashMap<u32, ReplySender>>,
    /// Sessions whose exit is owed; `None` once nobody waits for it any more.
    exits: Mutex<HashMap<u32, Option<oneshot::Sender<Exit>>>>,
    misbehaved: AtomicBool,
    dead: CancellationToken,
    /// Tenant error texts passed on in the current window: (window start, count).
    texts: Mutex<(Instant, u32)>,
}

impl AgentConn {
    fn start(fd: OwnedFd) -> io::Result<Arc<Self>> {
        let conn = Arc::new(Self::new(fd)?);
        tokio::spawn(conn.clone().dispatch());
        Ok(conn)
    }

    fn new(fd: OwnedFd) -> io::Result<Self> {
        Ok(Self {
            sock: fds::register(fd)?,
            next_id: AtomicU32::new(1),
            replies: Mutex::new(HashMap::new()),
            exits: Mutex::new(HashMap::new()),
            misbehaved: AtomicBool::new(false),
            dead: CancellationToken::new(),
            texts: Mutex::new((Instant::now(), 0)),
        })
    }

    fn next_id(&self) -> u32 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn lock_exits(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Option<oneshot::Sender<Exit>>>> {
        self.exits.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_replies(&self) -> std::sync::MutexGuard<'_, HashMap<u32, ReplySender>> {
        self.replies.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers session `id`'s exit as owed (before its Spawn is sent: the exit may come
    /// before the Spawned reply).
    fn expect_exit(&self, id: u32) -> oneshot::Receiver<Exit> {
        let (tx, rx) = oneshot::channel();
        self.lock_exits().insert(id, Some(tx));
        rx
    }

    /// Session `id` never started: no exit is owed.
    fn forget_exit(&self, id: u32) {
        self.lock_exits().remove(&id);
    }

    /// Nobody waits for session `id`'s exit any more; it is still owed.
    fn abandon_exit(&self, id: u32) {
        if let Some(tx) = self.lock_exits().get_mut(&id) {
            *tx = None;
        }
    }

    /// A tenant error text as it may be passed on: cut by [`tenant_text`], and past
    /// [`TEXT_BUDGET`] texts per [`TEXT_WINDOW`] a fixed stand-in.
    fn passed_text(&self, text: &str) -> String {
        let mut t = self.texts.lock().unwrap_or_else(|p| p.into_inner());
        if t.0.elapsed() >= TEXT_WINDOW {
            *t = (Instant::now(), 0);
        }
        t.1 += 1;
        if t.1 > TEXT_BUDGET {
            return "(the agent's error text is withheld: too many)".into();
        }
        tenant_text(text)
    }

    /// Anything malformed, unasked for, unusable or stuck ends the connection: a well-behaved
    /// agent never does it. Logged once per connection; `what` may carry tenant text.
    fn violation(&self, what: &str) {
        crate::metrics::protocol_violation(crate::metrics::Violation::Agent);
        if !self.misbehaved.swap(true, Ordering::Relaxed) {
            warn!(what = %tenant_text(what), "session agent misbehaved; dropping its connection");
        }
        self.dead.cancel();
    }

    /// A request that expects no reply (signal, hang-up); bounded by [`SEND_TIMEOUT`].
    async fn send(&self, req: &Request) {
        if self.dead.is_cancelled() {
            return;
        }
        match send(&self.sock, req).await {
            Ok(()) => {}
            Err(SendError::Stuck) => self.violation("the agent stopped reading its requests"),
            Err(SendError::Failed(e)) => {
                debug!(error = %e, "agent send failed");
                self.dead.cancel();
            }
        }
    }

    /// Sends `req` and waits for its reply. [`AgentError::Unavailable`] when it was not sent,
    /// [`AgentError::Sent`] when it was and no reply came.
    async fn request(&self, id: u32, req: &Request) -> Result<(Reply, Vec<OwnedFd>), AgentError> {
        if self.dead.is_cancelled() {
            return Err(AgentError::Unavailable("agent connection lost".into()));
        }
        let (tx, rx) = oneshot::channel();
        self.lock_replies().insert(id, tx);
        let r = match send(&self.sock, req).await {
            Err(e) => {
                if matches!(e, SendError::Stuck) {
                    self.violation("the agent stopped reading its requests");
                } else {
                    self.dead.cancel();
                }
                Err(AgentError::Unavailable(format!("agent send: {e:?}")))
            }
            Ok(()) => {
                let lost = || {
                    // An agent that goes away with a request in flight is not restarted at once
                    // either: one that dies on every request would fail every session.
                    self.misbehaved.store(true, Ordering::Relaxed);
                    AgentError::Sent("the session agent connection was lost".into())
                };
                tokio::select! {
                    r = rx => r.map_err(|_| lost()),
                    _ = self.dead.cancelled() => Err(lost()),
                    _ = tokio::time::sleep(REPLY_TIMEOUT) => {
                        // Treated like misbehaviour: a stuck agent would make every session wait.
                        self.violation("the agent did not answer in time");
                        Err(AgentError::Sent("the session agent did not answer in time".into()))
                    }
                }
            }
        };
        if r.is_err() {
            self.lock_replies().remove(&id);
        }
        r
    }

    async fn dispatch(self: Arc<Self>) {
        // One receive buffer per connection, reused for every message.
        let mut buf = vec![0u8; berth_agent::MAX_MESSAGE + 1];
        loop {
            let m = tokio::select! {
                m = recv(&self.sock, berth_agent::MAX_FDS, &mut buf) => m,
                _ = self.dead.cancelled() => break,
            };
            let (n, fds) = match m {
                Ok(m) => m,
                Err(WireError::Malformed(e)) => {
                    self.violation(&e);
                    break;
                }
                Err(_) => break,
            };
            if let Err(what) = self.deliver(&buf[..n], fds) {
                self.violation(&what);
                break;
            }
        }
        self.dead.cancel();
        self.lock_replies().clear();
        self.lock_exits().clear();
        debug!("session agent connection closed");
    }

    /// Hands one message to whoever waits for it. Every message must be owed: one reply per
    /// request, one exit per started session; anything else is an error (and ends the
    /// connection), so a flood of replies costs the gateway one message.
    fn deliver(&self, bytes: &[u8], fds: Vec<OwnedFd>) -> Result<(), String> {
        match berth_agent::decode::<Reply>(bytes) {
            Ok(Reply::Exited { id, status, signal }) => {
                if !fds.is_empty() {
                    return Err("fds with an exit".into());
                }
                match self.lock_exits().remove(&id) {
                    Some(Some(tx)) => {
                        let _ = tx.send(policy::exit_from_wait(status, signal));
                        Ok(())
                    }
                    // A session we stopped waiting for (its channel closed first).
                    Some(None) => Ok(()),
                    None => Err(format!("exit of session {id}, which is not running")),
                }
            }
            Ok(
                reply @ (Reply::Spawned { id, .. }
                | Reply::Failed { id, .. }
                | Reply::Connected { id }
                | Reply::Listening { id, .. }
                | Reply::ListeningUnix { id, .. }),
            ) => {
                let tx = self.lock_replies().remove(&id);
                match tx {
                    Some(tx) => {
                        // The requester gave up (its client went away): a session that started
                        // anyway is ended, nobody will read it.
                        match tx.send((reply, fds)) {
                            Err((Reply::Spawned { .. }, _fds)) => {
                                self.abandon_exit(id);
                                self.hangup_soon(id);
                            }
                            Err((Reply::Failed { .. }, _)) => self.forget_exit(id),
                            _ => {}
                        }
                        Ok(())
                    }
                    None => Err(format!(
                        "{} for request {id}, which waits for none",
                        kind(&reply)
                    )),
                }
            }
            Ok(Reply::Hello { .. }) => Err("second hello".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Sends a hang-up without making the dispatcher wait for room in the socket.
    fn hangup_soon(&self, id: u32) {
        let r = berth_agent::send(self.sock.get_ref().as_fd(), &Request::Hangup { id }, &[]);
        if let Err(e) = r {
            debug!(error = %e, id, "hang-up of an abandoned session not sent");
        }
    }
}

/// Removes a unix socket the agent bound, when dropped (best effort: an agent that is gone
/// took its container's state with it or will be replaced).
pub struct Unlink {
    conn: Arc<AgentConn>,
    path: String,
}

impl Drop for Unlink {
    fn drop(&mut self) {
        let conn = self.conn.clone();
        let path = std::mem::take(&mut self.path);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { conn.send(&Request::Unlink { path }).await });
        }
    }
}

fn process(
    conn: &Arc<AgentConn>,
    id: u32,
    exit_rx: oneshot::Receiver<Exit>,
    fds: Vec<OwnedFd>,
    tty: bool,
) -> io::Result<Process> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    let control = |pty: Option<Pty>| AgentControl {
        conn: conn.clone(),
        id,
        exit_rx: Some(exit_rx),
        exit: None,
        pty,
    };
    if tty {
        let [master]: [OwnedFd; 1] = fds
            .try_into()
            .map_err(|_| bad("a PTY session needs one fd"))?;
        fds::check_pty_master(&master)?;
        let pty = Pty::new(master)?;
        return Ok(Process {
            stdin: Box::new(pty.clone()),
            keep_stdin_open: true,
            output: Box::new(PtyOutput { pty: pty.clone() }),
            control: Box::new(control(Some(pty))),
            path: "agent",
        });
    }
    let [stdin, stdout, stderr]: [OwnedFd; 3] = fds
        .try_into()
        .map_err(|_| bad("a pipe session needs three fds"))?;
    // These checks are the only ones: tokio's unchecked constructors are used on purpose, so
    // that what is accepted is decided here and nowhere else.
    fds::check_pipe(&stdin, PipeEnd::Write)?;
    fds::check_pipe(&stdout, PipeEnd::Read)?;
    fds::check_pipe(&stderr, PipeEnd::Read)?;
    for fd in [&stdin, &stdout, &stderr] {
        fds::set_nonblocking(fd)?;
    }
    fds::grow_pipe(&stdin);
    fds::grow_pipe(&stdout);
    Ok(Process {
        stdin: Box::new(pipe::Sender::from_owned_fd_unchecked(stdin)?),
        keep_stdin_open: false,
        output: Box::new(PipeOutput {
            out: Some(pipe::Receiver::from_owned_fd_unchecked(stdout)?),
            err: Some(pipe::Receiver::from_owned_fd_unchecked(stderr)?),
        }),
        control: Box::new(control(None)),
        path: "agent",
    })
}

struct PipeOutput {
    out: Option<pipe::Receiver>,
    err: Option<pipe::Receiver>,
}

async fn readable(rx: Option<&pipe::Receiver>) -> io::Result<()> {
    match rx {
        Some(r) => r.readable().await,
        None => std::future::pending().await,
    }
}

enum Step {
    Data(Bytes),
    Eof,
    Again,
}

/// Reads what is there; the buffer is allocated only once data is ready, so an idle session
/// holds none, and a short read is copied out so a queued chunk does not pin a full buffer.
fn try_chunk(rx: &pipe::Receiver) -> Step {
    let mut buf = Vec::with_capacity(CHUNK);
    match rx.try_read_buf(&mut buf) {
        Ok(0) => Step::Eof,
        Ok(n) if n < CHUNK / 4 => Step::Data(Bytes::copy_from_slice(&buf)),
        Ok(_) => Step::Data(Bytes::from(buf)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Step::Again,
        Err(_) => Step::Eof,
    }
}

#[async_trait::async_trait]
impl ProcessOutput for PipeOutput {
    async fn read(&mut self) -> Option<Chunk> {
        loop {
            if self.out.is_none() && self.err.is_none() {
                return None;
            }
            let (is_out, ready) = tokio::select! {
                r = readable(self.out.as_ref()) => (true, r),
                r = readable(self.err.as_ref()) => (false, r),
            };
            let slot = if is_out { &mut self.out } else { &mut self.err };
            let step = match (ready, slot.as_ref()) {
                (Ok(()), Some(rx)) => try_chunk(rx),
                _ => Step::Eof,
            };
            match step {
                Step::Data(b) if is_out => return Some(Chunk::Stdout(b)),
                Step::Data(b) => return Some(Chunk::Stderr(b)),
                Step::Eof => *slot = None,
                Step::Again => {}
            }
        }
    }
}

struct PtyOutput {
    pty: Pty,
}

#[async_trait::async_trait]
impl ProcessOutput for PtyOutput {
    async fn read(&mut self) -> Option<Chunk> {
        match self.pty.read_chunk().await {
            Ok(Some(b)) => Some(Chunk::Stdout(b)),
            _ => None,
        }
    }
}

struct AgentControl {
    conn: Arc<AgentConn>,
    id: u32,
    exit_rx: Option<oneshot::Receiver<Exit>>,
    exit: Option<Option<Exit>>,
    pty: Option<Pty>,
}

#[async_trait::async_trait]
impl ProcessControl for AgentControl {
    async fn resize(&mut self, cols: u32, rows: u32) {
        if let Some(p) = &self.pty {
            p.resize(cols, rows);
        }
    }

    async fn signal(&mut self, name: &str) {
        if self.exit.is_some() {
            return;
        }
        if let Some(n) = policy::signal_number(name) {
            self.conn
                .send(&Request::Signal {
                    id: self.id,
                    signal: i32::from(n),
                })
                .await;
        }
    }

    async fn wait(&mut self) -> Option<Exit> {
        if let Some(e) = &self.exit {
            return e.clone();
        }
        let r = match self.exit_rx.as_mut() {
            Some(rx) => tokio::select! {
                r = rx => r.ok(),
                // The agent is gone: its sessions' exit codes are lost with it.
                _ = self.conn.dead.cancelled() => None,
            },
            None => None,
        };
        self.exit_rx = None;
        self.exit = Some(r.clone());
        r
    }

    async fn hangup(&mut self) {
        if self.exit.is_none() && !self.conn.dead.is_cancelled() {
            self.conn.send(&Request::Hangup { id: self.id }).await;
        }
    }
}

impl Drop for AgentControl {
    fn drop(&mut self) {
        if self.exit.is_none() {
            self.conn.abandon_exit(self.id);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// An agent connection whose far end the test plays.
    fn pair() -> (Arc<AgentConn>, OwnedFd) {
        let (ours, theirs) = berth_agent::seqpacket_pair().unwrap();
        fds::set_nonblocking(&ours).unwrap();
        (AgentConn::start(ours).unwrap(), theirs)
    }

    fn reply(sock: &OwnedFd, r: &Reply) {
        berth_agent::send(sock.as_fd(), r, &[]).unwrap();
    }

    /// Waits (bounded) until the connection is dropped.
    async fn dropped(conn: &AgentConn) {
        tokio::time::timeout(Duration::from_secs(30), conn.dead.cancelled())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn an_agent_that_stops_reading_cannot_hold_a_sender() {
        let (conn, _theirs) = pair();
        // Never read: the socket fills, and every send gives up within SEND_TIMEOUT.
        let all = async {
            for id in 1..1000 {
                conn.send(&Request::Hangup { id }).await;
                if conn.dead.is_cancelled() {
                    break;
                }
            }
        };
        tokio::time::timeout(SEND_TIMEOUT * 3, all).await.unwrap();
        assert!(conn.misbehaved.load(Ordering::Relaxed));
        assert!(conn.dead.is_cancelled());
    }

    #[tokio::test]
    async fn a_request_to_a_stuck_agent_is_bounded_and_was_not_sent() {
        let (conn, theirs) = pair();
        // Fill the agent's side until the socket takes no more.
        let mut queued = 0;
        while berth_agent::send(conn.sock.get_ref().as_fd(), &Request::Hangup { id: 0 }, &[])
            .is_ok()
        {
            queued += 1;
            assert!(queued < 100_000);
        }
        let id = conn.next_id();
        let r = tokio::time::timeout(SEND_TIMEOUT * 3, conn.request(id, &Request::Hangup { id }))
            .await
            .unwrap();
        // Not sent: another path may serve it; and the stuck agent counts as misbehaving.
        assert!(
            matches!(r, Err(AgentError::Unavailable(_))),
            "{:?}",
            r.err()
        );
        assert!(conn.misbehaved.load(Ordering::Relaxed));
        // Nothing but what was queued before reached the agent.
        rustix::io::ioctl_fionbio(&theirs, true).unwrap();
        let mut got = 0;
        while berth_agent::recv(theirs.as_fd(), 0).is_ok() {
            got += 1;
        }
        assert_eq!(got, queued);
    }

    #[tokio::test]
    async fn a_request_never_answered_is_bounded_and_may_have_run() {
        let (conn, _theirs) = pair();
        let id = conn.next_id();
        let r = tokio::time::timeout(REPLY_TIMEOUT * 2, conn.request(id, &Request::Hangup { id }))
            .await
            .unwrap();
        assert!(matches!(r, Err(AgentError::Sent(_))), "{:?}", r.err());
        assert!(conn.misbehaved.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn a_reply_to_no_request_ends_the_connection() {
        let (conn, theirs) = pair();
        reply(&theirs, &Reply::Connected { id: 1 });
        dropped(&conn).await;
        assert!(conn.misbehaved.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn a_second_reply_to_an_answered_request_ends_the_connection() {
        let (conn, theirs) = pair();
        let id = conn.next_id();
        let answering = tokio::task::spawn_blocking(move || {
            let m = berth_agent::recv(theirs.as_fd(), 0);
            assert!(m.is_ok());
            reply(
                &theirs,
                &Reply::Failed {
                    id,
                    error: "no".into(),
                },
            );
            theirs
        });
        let connect = Request::Connect {
            id,
            ip: [127, 0, 0, 1].into(),
            port: 1,
        };
        let r = conn.request(id, &connect).await;
        let theirs = answering.await.unwrap();
        assert!(matches!(r, Ok((Reply::Failed { .. }, _))));
        assert!(!conn.dead.is_cancelled());
        // The same answer again, then a flood: the first extra one ends the connection and the
        // rest are never read.
        for _ in 0..8 {
            reply(
                &theirs,
                &Reply::Failed {
                    id,
                    error: "no".into(),
                },
            );
        }
        dropped(&conn).await;
        assert!(conn.misbehaved.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn exits_are_owed_once_per_started_session() {
        let (conn, theirs) = pair();
        let waited = conn.next_id();
        let rx = conn.expect_exit(waited);
        let abandoned = conn.next_id();
        drop(conn.expect_exit(abandoned));
        conn.abandon_exit(abandoned);
        let exited = |id| Reply::Exited {
            id,
            status: Some(0),
            signal: None,
        };
        reply(&theirs, &exited(waited));
        reply(&theirs, &exited(abandoned));
        assert_eq!(rx.await.unwrap(), Exit::Status(0));
        assert!(!conn.dead.is_cancelled());
        // Its exit was delivered: a second one is owed to nobody.
        reply(&theirs, &exited(waited));
        dropped(&conn).await;
        assert!(conn.misbehaved.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn a_session_started_after_its_requester_left_is_hung_up() {
        let (conn, theirs) = pair();
        let id = conn.next_id();
        drop(conn.expect_exit(id));
        let (tx, rx) = oneshot::channel();
        conn.lock_replies().insert(id, tx);
        drop(rx);
        reply(&theirs, &Reply::Spawned { id, pid: 9 });
        let got = tokio::task::spawn_blocking(move || {
            let m = berth_agent::recv(theirs.as_fd(), 0).unwrap();
            berth_agent::decode::<Request>(&m.bytes).unwrap()
        })
        .await
        .unwrap();
        assert_eq!(got, Request::Hangup { id });
        assert!(!conn.misbehaved.load(Ordering::Relaxed));
    }

    #[test]
    fn tenant_text_is_cut_and_escaped() {
        assert_eq!(tenant_text("plain"), "plain");
        assert_eq!(tenant_text("a\nb\x1b[2J"), "a\\nb\\u{1b}[2J");
        let long = "é".repeat(1000);
        let cut = tenant_text(&long);
        assert!(cut.len() <= TEXT_MAX + '…'.len_utf8(), "{}", cut.len());
        assert!(cut.ends_with('…'));
        let esc = tenant_text(&"\u{7}".repeat(1000));
        assert!(esc.len() <= TEXT_MAX + '…'.len_utf8());
    }

    #[tokio::test]
    async fn error_texts_per_connection_are_budgeted() {
        let (conn, _theirs) = pair();
        let passed: Vec<String> = (0..TEXT_BUDGET + 5)
            .map(|i| conn.passed_text(&format!("error {i}")))
            .collect();
        assert_eq!(passed[0], "error 0");
        assert_eq!(
            passed[TEXT_BUDGET as usize - 1],
            format!("error {}", TEXT_BUDGET - 1)
        );
        assert!(passed[TEXT_BUDGET as usize].contains("withheld"));
    }

    #[tokio::test]
    async fn only_the_started_process_may_hold_a_handshake() {
        let dir = tempfile::tempdir().unwrap();
        let agent_dir = dir.path().join("server1");
        std::fs::create_dir(&agent_dir).unwrap();
        let l = Listener::bind(&agent_dir).unwrap();
        let me = i32::try_from(std::process::id()).unwrap();
        assert_eq!(l.admit(Some(me)), Admit::No);
        let _rx = l.expect("tok");
        assert_eq!(l.admit(Some(me)), Admit::NotYet);
        l.started("tok", me);
        assert_eq!(l.admit(Some(me)), Admit::Yes);
        assert_eq!(l.admit(Some(me + 1)), Admit::No);
        // A peer invisible from our pid namespace (the gateway in one of its own): only the
        // token can decide, so it may try while a named start waits, never otherwise.
        assert_eq!(l.admit(None), Admit::Yes);
        l.forget("tok");
        assert_eq!(l.admit(Some(me)), Admit::No);
        assert_eq!(l.admit(None), Admit::No);
    }

    #[tokio::test]
    async fn a_removed_socket_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let agent_dir = dir.path().join("server1");
        std::fs::create_dir(&agent_dir).unwrap();
        let l = Listener::bind(&agent_dir).unwrap();
        assert!(l.in_place(&agent_dir));
        std::fs::remove_file(agent_dir.join(SOCKET_NAME)).unwrap();
        assert!(!l.in_place(&agent_dir));
        let other = Listener::bind(&agent_dir).unwrap();
        assert!(other.in_place(&agent_dir));
        assert!(!l.in_place(&agent_dir));
    }
}
