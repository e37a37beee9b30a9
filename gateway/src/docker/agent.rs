//! The fast data path: one `berth-agent` per container, reached over a unix socket the gateway
//! listens on in that container's agent directory (mounted at `/dev/berth`).
//!
//! Life of an agent: on a container's first session the gateway copies its agent binary into
//! the container (once per container per gateway process), starts it with a Docker exec as the
//! session user with a fresh token in its environment, and waits until a connection on that
//! container's socket presents the token. From then on sessions and forwards cost one message
//! round trip plus the tenant's own process; the exec stays until the container stops or the
//! gateway goes away (the agent then hangs up its sessions and exits).
//!
//! Trust: anything in the container can connect to the socket, and the agent runs as the
//! tenant, so nothing it says is believed beyond its own container: a connection only ever
//! serves the container whose directory it came through, replies are matched to requests we
//! made, fds are type-checked (`fds.rs`), and a connection that keeps sending garbage is
//! dropped. A failed or misbehaving agent sends the session down the attach path instead.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use berth_agent::{PROTOCOL_VERSION, Received, Reply, Request, SOCKET_NAME, TOKEN_ENV, WireError};
use bollard::Docker;
use bollard::exec::{CreateExecOptions, StartExecOptions};
use bytes::Bytes;
use sha2::Digest;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::fds::{self, PipeEnd, Pty};
use crate::backend::{Chunk, Process, ProcessControl, ProcessOutput, Stream};
use crate::policy::{self, Exit};

/// How long a started agent has to connect and say hello.
const START_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request waits for its reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failed start, sessions of that container take the attach path for this long.
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// Handshakes in progress on one container's socket.
const MAX_HANDSHAKES: usize = 8;
/// Bytes read from a pipe at once.
const CHUNK: usize = 64 * 1024;

/// Why the agent path did not serve a request.
#[derive(Debug)]
pub enum AgentError {
    /// No agent (not startable, gone, misbehaving): use the attach path.
    Unavailable(String),
    /// The agent worked and the operation failed (e.g. connection refused): tell the client.
    Refused(String),
}

impl std::fmt::Display for AgentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentError::Unavailable(e) | AgentError::Refused(e) => f.write_str(e),
        }
    }
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

    /// Starts `argv` through the container's agent.
    pub async fn exec(
        &self,
        docker: &Docker,
        at: &Placement<'_>,
        argv: Vec<String>,
        env: Vec<(String, String)>,
        pty: Option<(u32, u32)>,
    ) -> Result<Process, AgentError> {
        let conn = self.agent(docker, at).await?;
        let id = conn.next_id();
        let (exit_tx, exit_rx) = oneshot::channel();
        conn.lock_exits().insert(id, exit_tx);
        let clamp = |n: u32| u16::try_from(n).unwrap_or(u16::MAX).max(1);
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
                conn.lock_exits().remove(&id);
                return Err(e);
            }
        };
        match reply {
            Reply::Spawned { .. } => {}
            Reply::Failed { error, .. } => {
                conn.lock_exits().remove(&id);
                return Err(AgentError::Unavailable(format!(
                    "agent could not spawn: {error}"
                )));
            }
            other => {
                conn.violation(&format!("unexpected reply to spawn: {other:?}"));
                return Err(AgentError::Unavailable("unexpected reply".into()));
            }
        }
        match process(&conn, id, exit_rx, fds, pty.is_some()) {
            Ok(p) => Ok(p),
            Err(e) => {
                conn.violation(&format!("spawn reply carried the wrong fds: {e}"));
                conn.send(&Request::Hangup { id }).await;
                Err(AgentError::Unavailable(format!(
                    "agent sent unusable fds: {e}"
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
        let conn = self.agent(docker, at).await?;
        let id = conn.next_id();
        let req = Request::Connect {
            id,
            ip: addr.ip(),
            port: addr.port(),
        };
        let (reply, mut fds) = conn.request(id, &req).await?;
        match reply {
            Reply::Connected { .. } if fds.len() == 1 => {}
            Reply::Failed { error, .. } => return Err(AgentError::Refused(error)),
            other => {
                conn.violation(&format!("unexpected reply to connect: {other:?}"));
                return Err(AgentError::Unavailable("unexpected reply".into()));
            }
        }
        let fd = fds.remove(0);
        if let Err(e) = fds::check_tcp(&fd, addr) {
            conn.violation(&format!("connect reply carried the wrong fd: {e}"));
            return Err(AgentError::Unavailable(format!(
                "agent sent an unusable socket: {e}"
            )));
        }
        let std = std::net::TcpStream::from(fd);
        let stream = std
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpStream::from_std(std))
            .map_err(|e| AgentError::Unavailable(format!("forward socket: {e}")))?;
        let _ = stream.set_nodelay(true);
        let (read, write) = stream.into_split();
        Ok(Stream {
            read: Box::new(read),
            write: Box::new(write),
            path: "agent",
        })
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
            loop {
                tokio::select! {
                    fd = &mut hello => return fd.map_err(|_| "agent socket closed".to_string()),
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {
                        if tokio::time::Instant::now() >= deadline {
                            return Err("agent did not connect in time".to_string());
                        }
                        if let Ok(i) = docker.inspect_exec(&exec).await
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

    /// The listening socket in `dir`, made on first use.
    fn listener(&self, dir: &Path) -> Result<Arc<Listener>, String> {
        let mut st = self.state();
        if let Some(l) = st.listeners.get(dir)
            && !l.closed.is_cancelled()
        {
            return Ok(l.clone());
        }
        let l =
            Listener::bind(dir).map_err(|e| format!("cannot listen in {}: {e}", dir.display()))?;
        st.listeners.insert(dir.to_path_buf(), l.clone());
        Ok(l)
    }
}

/// Copies the agent into the container (a one-file tar; missing parent directories are made by
/// Docker, existing ones are left as they are).
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

/// One container's socket: hands connections that present an expected token to their starter.
struct Listener {
    waiting: Mutex<HashMap<String, oneshot::Sender<OwnedFd>>>,
    closed: CancellationToken,
}

impl Listener {
    /// Binds in a staging name in the gateway-only parent directory, opens it to everyone there
    /// (only this container sees the directory it lands in), then renames it into place:
    /// nothing the tenant put in its directory is followed or chmod'ed.
    fn bind(dir: &Path) -> io::Result<Arc<Self>> {
        use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
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
            rustix::net::listen(&sock, 16)?;
            std::fs::rename(&staging, dir.join(SOCKET_NAME))
        })();
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&staging);
            return Err(e);
        }
        let l = Arc::new(Self {
            waiting: Mutex::new(HashMap::new()),
            closed: CancellationToken::new(),
        });
        let fd = fds::register(sock)?;
        tokio::spawn(accept_loop(fd, Arc::downgrade(&l), l.closed.clone()));
        Ok(l)
    }

    fn expect(&self, token: &str) -> oneshot::Receiver<OwnedFd> {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(token.to_string(), tx);
        rx
    }

    fn forget(&self, token: &str) {
        self.lock().remove(token);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<OwnedFd>>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn accept_loop(fd: AsyncFd<OwnedFd>, listener: Weak<Listener>, closed: CancellationToken) {
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(mut guard) = fd.readable().await else {
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
                // Past the bound, new connections are closed unread: a flood only slows the
                // flooding tenant's own agent start.
                let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                    continue;
                };
                let listener = listener.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    handshake(conn, listener).await;
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

async fn handshake(conn: OwnedFd, listener: Weak<Listener>) {
    let Ok(afd) = fds::register(conn) else { return };
    let first = tokio::time::timeout(START_TIMEOUT, recv(&afd, 0)).await;
    let token = match first {
        Ok(Ok(m)) => match berth_agent::decode::<Reply>(&m.bytes) {
            Ok(Reply::Hello { version, token }) if version == PROTOCOL_VERSION => token,
            Ok(Reply::Hello { version, .. }) => {
                warn!(
                    version,
                    expected = PROTOCOL_VERSION,
                    "agent speaks another protocol version"
                );
                return;
            }
            _ => {
                crate::metrics::protocol_violation(crate::metrics::Violation::Agent);
                return;
            }
        },
        _ => return,
    };
    let Some(listener) = listener.upgrade() else {
        return;
    };
    let waiter = listener.lock().remove(&token);
    match waiter {
        Some(tx) => {
            let _ = tx.send(afd.into_inner());
        }
        None => {
            debug!("agent connection with an unknown token closed");
            crate::metrics::protocol_violation(crate::metrics::Violation::Agent);
        }
    }
}

/// Receives one message (cancel-safe: data is taken only when the socket is ready).
async fn recv(afd: &AsyncFd<OwnedFd>, max_fds: usize) -> Result<Received, WireError> {
    loop {
        let mut guard = afd.readable().await?;
        let r = guard.try_io(
            |fd| match berth_agent::recv(fd.get_ref().as_fd(), max_fds) {
                Err(WireError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => Err(e),
                other => Ok(other),
            },
        );
        if let Ok(r) = r {
            return r?;
        }
    }
}

async fn send(afd: &AsyncFd<OwnedFd>, msg: &Request) -> Result<(), WireError> {
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
}

type ReplySender = oneshot::Sender<(Reply, Vec<OwnedFd>)>;

/// One agent connection.
struct AgentConn {
    sock: AsyncFd<OwnedFd>,
    next_id: AtomicU32,
    replies: Mutex<HashMap<u32, ReplySender>>,
    exits: Mutex<HashMap<u32, oneshot::Sender<Exit>>>,
    misbehaved: std::sync::atomic::AtomicBool,
    dead: CancellationToken,
}

impl AgentConn {
    fn start(fd: OwnedFd) -> io::Result<Arc<Self>> {
        let conn = Arc::new(Self {
            sock: fds::register(fd)?,
            next_id: AtomicU32::new(1),
            replies: Mutex::new(HashMap::new()),
            exits: Mutex::new(HashMap::new()),
            misbehaved: std::sync::atomic::AtomicBool::new(false),
            dead: CancellationToken::new(),
        });
        tokio::spawn(conn.clone().dispatch());
        Ok(conn)
    }

    fn next_id(&self) -> u32 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether `id` was handed out on this connection.
    fn issued(&self, id: u32) -> bool {
        id > 0 && id < self.next_id.load(Ordering::Relaxed)
    }

    fn lock_exits(&self) -> std::sync::MutexGuard<'_, HashMap<u32, oneshot::Sender<Exit>>> {
        self.exits.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_replies(&self) -> std::sync::MutexGuard<'_, HashMap<u32, ReplySender>> {
        self.replies.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Anything malformed, unasked for or unusable ends the connection: a well-behaved agent
    /// never does it, and the requests in flight fall back to the attach path at once.
    fn violation(&self, what: &str) {
        warn!(what, "session agent misbehaved; dropping its connection");
        crate::metrics::protocol_violation(crate::metrics::Violation::Agent);
        self.misbehaved.store(true, Ordering::Relaxed);
        self.dead.cancel();
    }

    async fn send(&self, req: &Request) {
        if let Err(e) = send(&self.sock, req).await {
            debug!(error = %e, "agent send failed");
            self.dead.cancel();
        }
    }

    async fn request(&self, id: u32, req: &Request) -> Result<(Reply, Vec<OwnedFd>), AgentError> {
        let (tx, rx) = oneshot::channel();
        self.lock_replies().insert(id, tx);
        let gone = || AgentError::Unavailable("agent connection lost".into());
        let r = async {
            send(&self.sock, req).await.map_err(|_| gone())?;
            tokio::select! {
                r = rx => r.map_err(|_| gone()),
                _ = self.dead.cancelled() => Err(gone()),
                _ = tokio::time::sleep(REPLY_TIMEOUT) => {
                    // Treated like misbehaviour: a stuck agent would make every session wait.
                    warn!("session agent did not answer in time; dropping its connection");
                    self.misbehaved.store(true, Ordering::Relaxed);
                    self.dead.cancel();
                    Err(AgentError::Unavailable("agent did not answer".into()))
                }
            }
        }
        .await;
        self.lock_replies().remove(&id);
        r
    }

    async fn dispatch(self: Arc<Self>) {
        loop {
            let m = tokio::select! {
                m = recv(&self.sock, berth_agent::MAX_FDS) => m,
                _ = self.dead.cancelled() => break,
            };
            let m = match m {
                Ok(m) => m,
                Err(WireError::Malformed(e)) => {
                    self.violation(&e);
                    continue;
                }
                Err(_) => break,
            };
            match berth_agent::decode::<Reply>(&m.bytes) {
                Ok(Reply::Exited { id, status, signal }) => {
                    let tx = self.lock_exits().remove(&id);
                    match tx {
                        Some(tx) => {
                            let _ = tx.send(policy::exit_from_wait(status, signal));
                        }
                        // A session we stopped waiting for (its channel closed first).
                        None if self.issued(id) => {}
                        None => self.violation("exit of an unknown session"),
                    }
                }
                Ok(
                    reply @ (Reply::Spawned { id, .. }
                    | Reply::Failed { id, .. }
                    | Reply::Connected { id }),
                ) => {
                    let tx = self.lock_replies().remove(&id);
                    match tx {
                        Some(tx) => {
                            let _ = tx.send((reply, m.fds));
                        }
                        // Too late: the request timed out (its fds are closed here).
                        None if self.issued(id) => {}
                        None => self.violation("reply to no request"),
                    }
                }
                Ok(Reply::Hello { .. }) => self.violation("second hello"),
                Err(e) => self.violation(&e.to_string()),
            }
        }
        self.dead.cancel();
        self.lock_replies().clear();
        self.lock_exits().clear();
        debug!("session agent connection closed");
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
    fds::check_pipe(&stdin, PipeEnd::Write)?;
    fds::check_pipe(&stdout, PipeEnd::Read)?;
    fds::check_pipe(&stderr, PipeEnd::Read)?;
    fds::grow_pipe(&stdin);
    fds::grow_pipe(&stdout);
    Ok(Process {
        stdin: Box::new(pipe::Sender::from_owned_fd(stdin)?),
        keep_stdin_open: false,
        output: Box::new(PipeOutput {
            out: Some(pipe::Receiver::from_owned_fd(stdout)?),
            err: Some(pipe::Receiver::from_owned_fd(stderr)?),
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
/// holds none.
fn try_chunk(rx: &pipe::Receiver) -> Step {
    let mut buf = Vec::with_capacity(CHUNK);
    match rx.try_read_buf(&mut buf) {
        Ok(0) => Step::Eof,
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
            self.conn.lock_exits().remove(&self.id);
        }
    }
}
