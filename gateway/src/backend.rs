//! The gateway's narrow view of tenant control: credentials, "make it run", run a process in
//! it, connect to it, audit.
//!
//! A trait so the SSH code never touches SQL or Docker: session and forward code is written
//! against [`Process`] and [`ProcessControl`] (unit-testable with a fake), and another container
//! backend (Kubernetes) can slot in without touching it. The production implementation
//! (`TenantsBackend`, over `tenants::Store`, `tenants::Provisioner` and the Docker data path in
//! `docker/`) lives in `tenants_backend.rs`.

use std::net::IpAddr;
use std::path::PathBuf;

use bytes::Bytes;
use tenants::ServerId;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::policy::{Exit, ForwardDest, Program};

/// What auth needs about one server and its owner.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub server: ServerId,
    pub owner: String,
    /// False when the owner is disabled or the server is deleted: auth must fail like a wrong
    /// password.
    pub login_allowed: bool,
    pub password_hash: Option<String>,
    pub authorized_keys: Vec<russh::keys::PublicKey>,
}

/// A running tenant container the gateway can exec into and forward to.
#[derive(Debug, Clone)]
pub struct Target {
    pub server: ServerId,
    pub container_id: String,
    pub address: IpAddr,
    /// True when this call had to start (or recreate) the container.
    pub started_now: bool,
    /// The server's login user when the backend knows it; `None`: `tenant` if the image has
    /// it, else `root`.
    pub user: Option<String>,
    /// Host directory mounted at `/dev/berth` in the container (the agent's socket), if any.
    pub agent_dir: Option<PathBuf>,
    /// Whatever else the backend keeps for this connection's target (a relaying backend keeps
    /// its connection to the server's host here); dropped with the connection.
    pub route: Option<std::sync::Arc<dyn std::any::Any + Send + Sync>>,
}

/// What one session channel runs.
#[derive(Debug, Clone)]
pub struct ExecRequest {
    /// What the client asked for; `argv` is how this gateway runs it in a container.
    pub program: Program,
    pub argv: Vec<String>,
    /// On top of the container's environment (allowlisted client variables, `TERM`,
    /// `BERTH_SERVER`); the backend adds `USER` and `LOGNAME` for the user it runs as.
    pub env: Vec<(String, String)>,
    /// Terminal size (columns, rows) when the client asked for a PTY.
    pub pty: Option<(u32, u32)>,
}

/// A chunk of a process's output.
#[derive(Debug)]
pub enum Chunk {
    Stdout(Bytes),
    Stderr(Bytes),
}

/// The output side of a running process (stdout and stderr, or one terminal).
#[async_trait::async_trait]
pub trait ProcessOutput: Send {
    /// The next chunk; `None` once every output stream is closed. Cancel-safe: dropping the
    /// future loses no data.
    async fn read(&mut self) -> Option<Chunk>;
}

/// Resize, signal, wait and hang up a running process.
#[async_trait::async_trait]
pub trait ProcessControl: Send {
    async fn resize(&mut self, cols: u32, rows: u32);
    /// `name` is an SSH signal name already checked by `policy::signal_number`.
    async fn signal(&mut self, name: &str);
    /// How the process ended; `None` when the backend cannot tell. Cancel-safe.
    async fn wait(&mut self) -> Option<Exit>;
    /// The client went away: end what the session started (SIGHUP to the session, SIGKILL to
    /// its process group if the leader survives); processes the tenant detached are spared.
    async fn hangup(&mut self);
}

pub type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
pub type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// A process started by [`Backend::exec`].
pub struct Process {
    pub stdin: BoxWrite,
    /// The client's EOF must not shut `stdin` (a terminal: that would end the session).
    pub keep_stdin_open: bool,
    pub output: Box<dyn ProcessOutput>,
    pub control: Box<dyn ProcessControl>,
    /// Which data path carries it ("agent" or "attach"), for logs and metrics.
    pub path: &'static str,
}

/// A connected forward: bytes to and from the target.
pub struct Stream {
    pub read: BoxRead,
    pub write: BoxWrite,
    pub path: &'static str,
}

/// Where a listener is asked for, inside the container.
#[derive(Debug, Clone)]
pub enum ListenSpec {
    /// A TCP address in the container's network namespace (port 0: any free port).
    Tcp(std::net::SocketAddr),
    /// A unix socket path, or (`None`) a fresh private one for agent forwarding.
    Unix(Option<String>),
}

/// A listener inside the container that the gateway accepts on.
pub enum Listening {
    Tcp {
        listener: tokio::net::TcpListener,
        /// Where it is bound (the allocated port when port 0 was asked for).
        local: std::net::SocketAddr,
    },
    Unix {
        listener: tokio::net::UnixListener,
        path: String,
    },
    /// A listener the backend holds elsewhere (a relaying backend: in the container on another
    /// host), whose connections arrive as streams. The accept loop ends when the sender goes.
    Relayed {
        incoming: tokio::sync::mpsc::Receiver<Accepted>,
        bound: Bound,
    },
}

/// Where a [`Listening::Relayed`] listener is bound, as the client is told.
#[derive(Debug, Clone)]
pub enum Bound {
    /// The allocated port when port 0 was asked for.
    Tcp(std::net::SocketAddr),
    /// The socket path; for agent forwarding, the value the backend expects back as
    /// `SSH_AUTH_SOCK` in [`ExecRequest::env`] (which it may replace with its own).
    Unix(String),
}

/// One connection accepted by a [`Listening::Relayed`] listener.
pub struct Accepted {
    pub stream: Stream,
    /// Who connected, for `forwarded-tcpip` (unknown: reported as `127.0.0.1:0`).
    pub peer: Option<std::net::SocketAddr>,
}

/// A [`Listening`] socket and whatever removes it from the container when dropped.
pub struct Listener {
    pub listening: Listening,
    pub cleanup: Option<Box<dyn Send + Sync>>,
}

/// What a backend without an in-container agent answers for listeners and unix sockets.
pub const NEEDS_AGENT: &str = "remote forwards, unix-socket forwards and agent forwarding need the session agent, which this server's container does not run";

/// One audit record (never a password).
#[derive(Debug, Clone, Default)]
pub struct AuditRecord {
    /// "auth" | "session" | "forward"
    pub kind: &'static str,
    pub server: Option<ServerId>,
    pub account: Option<String>,
    pub peer: Option<IpAddr>,
    /// "password" | "publickey" | "keyboard-interactive" | "shell" | "exec" | "sftp" | …
    pub method: Option<String>,
    /// "success" | "failure" | "rejected" | "closed" | …
    pub outcome: String,
    /// Free-form JSON: reason, username as typed, bytes in/out, exit status, …
    pub detail: serde_json::Value,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Docker (or the database) is unreachable: tell the client to retry later.
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
    /// Anything final (server deleted, image missing, …).
    #[error("{0}")]
    Failed(String),
    /// A failure whose text is written for the client and shown to it as is (e.g. "server7's
    /// host n2 is unreachable; try again later"). It must hold nothing internal.
    #[error("{0}")]
    ForClient(String),
}

#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// `Ok(None)` when the server does not exist (never reused ids, deleted rows included).
    async fn credentials(&self, server: ServerId) -> Result<Option<Credentials>, BackendError>;
    /// Idempotent and single-flight: starts or recreates the container if needed.
    async fn ensure_running(&self, server: ServerId) -> Result<Target, BackendError>;
    /// [`Backend::ensure_running`] for one authenticated connection: `owner` logged in from
    /// `peer`. A backend that forwards the login elsewhere needs them; others need not.
    async fn ensure_running_for(
        &self,
        server: ServerId,
        _owner: &str,
        _peer: IpAddr,
    ) -> Result<Target, BackendError> {
        self.ensure_running(server).await
    }
    /// Starts `req` in the running container of `target`. `login` is the SSH login name
    /// (`server<N>`), which the backend may make an alias of the user it runs as.
    async fn exec(
        &self,
        target: &Target,
        login: &str,
        req: ExecRequest,
    ) -> Result<Process, BackendError>;
    /// Connects to `port` at `dest` as seen from inside the container of `target`.
    async fn connect(
        &self,
        target: &Target,
        login: &str,
        dest: ForwardDest,
        port: u16,
    ) -> Result<Stream, BackendError>;
    /// Listens inside the container of `target` (remote forwards, agent forwarding). Refused
    /// unless the backend can listen from inside the container itself.
    async fn listen(
        &self,
        _target: &Target,
        _login: &str,
        _spec: ListenSpec,
    ) -> Result<Listener, BackendError> {
        Err(BackendError::ForClient(NEEDS_AGENT.into()))
    }
    /// Connects to the unix socket at `path` inside the container of `target`, as the session
    /// user. Refused unless the backend can connect from inside the container itself.
    async fn connect_unix(
        &self,
        _target: &Target,
        _login: &str,
        _path: &str,
    ) -> Result<Stream, BackendError> {
        Err(BackendError::ForClient(NEEDS_AGENT.into()))
    }
    /// Best effort: failures are logged, never surfaced to the client.
    async fn audit(&self, record: AuditRecord);
    /// The operator's settings for `server`: recording, bandwidth, session limits (each
    /// `None`: follow the config).
    async fn operations(
        &self,
        _server: ServerId,
    ) -> Result<tenants::ServerOperations, BackendError> {
        Ok(tenants::ServerOperations::default())
    }
    /// Stores a recorded session's metadata. Best effort: failures are logged.
    async fn recording_done(&self, _recording: tenants::Recording) {}
    /// Forgets recordings that started before `before` (unix seconds); returns their files.
    async fn prune_recordings(&self, _before: i64) -> Vec<String> {
        Vec::new()
    }
}
