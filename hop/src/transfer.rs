//! Moving a server between nodes (`berth server move`) over the hop.
//!
//! The mover holds a front's hop key and logs in to a node as `transfer/server<N>` (no account:
//! the data, not a tenant session). On such a connection the node's [`NodeBackend`] runs no
//! process in the tenant; each exec is one [`Op`] on the node's own engine: export the
//! stopped server's data as a tar stream, import such a stream into a new volume and
//! container, discard a copy the store does not serve from there, start the server. Each op
//! checks the server's placement first, so a confused or replayed mover cannot discard the
//! live copy or import over it.
//!
//! While a move runs, the placement row's `moving_to` is set: fronts and nodes answer new
//! logins with [`moving`], and nothing restarts the source copy during the transfer.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use gateway::policy::{Exit, ForwardDest, Program};
use gateway::{
    AuditRecord, Backend, BackendError, Chunk, Credentials, ExecRequest, Process, ProcessControl,
    ProcessOutput, Stream, Target,
};
use russh::ChannelMsg;
use russh::client::{self, Handle};
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey};
use tenants::{Placement, Provisioner, ServerId, Store};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::relay::{HOP_CONNECT_TIMEOUT, Pinned};

/// The owner name a transfer login carries inside the gateway: not a valid account name, so it
/// never matches a tenant.
pub const TRANSFER_OWNER: &str = "@transfer";

/// The hop user name of a transfer of `server`.
pub fn transfer_user(server: ServerId) -> String {
    format!("transfer/{}", server.login_name())
}

/// The server of a transfer user name, exactly as [`transfer_user`] writes it.
pub fn parse_transfer_user(user: &str) -> Option<ServerId> {
    let server = tenants::parse_login(user.strip_prefix("transfer/")?)?;
    (transfer_user(server) == user).then_some(server)
}

/// The one line a client gets while its server is being moved.
pub fn moving(server: ServerId, p: &Placement) -> BackendError {
    BackendError::ForClient(format!(
        "{} is being moved to another host ({}); try again in a few minutes",
        server.login_name(),
        p.moving_to.as_deref().unwrap_or("?")
    ))
}

/// One step of a move, sent as the exec command of a transfer session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// On the source, during the move: stop the server (refused while sessions are open
    /// unless `force`) and write its data to stdout as tar.
    Export { force: bool },
    /// On the target, during the move: make the server here from the tar on stdin.
    Import,
    /// On a node that is not the server's home: remove its copy there.
    Discard,
    /// On the server's home: start it.
    Start,
    /// On the node a new server was placed on from another host: make its volume and
    /// container, start it, and print `address <ip>`.
    Create,
}

impl Op {
    pub fn command(self) -> &'static str {
        match self {
            Op::Export { force: false } => "export",
            Op::Export { force: true } => "export --force",
            Op::Import => "import",
            Op::Discard => "discard",
            Op::Start => "start",
            Op::Create => "create",
        }
    }

    pub fn parse(cmd: &str) -> Option<Self> {
        Some(match cmd {
            "export" => Op::Export { force: false },
            "export --force" => Op::Export { force: true },
            "import" => Op::Import,
            "discard" => Op::Discard,
            "start" => Op::Start,
            "create" => Op::Create,
            _ => return None,
        })
    }
}

/// Exit status of an export refused because sessions are open.
pub const EXIT_SESSIONS_OPEN: u32 = 3;

/// The node's backend on its hop endpoint: sessions go to the local backend (refused while
/// their server is moving), transfer logins run [`Op`]s on this node's engine.
pub struct NodeBackend {
    local: Arc<dyn Backend>,
    provisioner: Provisioner,
    store: Store,
    node: String,
}

/// Marks a transfer connection's target.
struct TransferRoute;

impl NodeBackend {
    pub fn new(
        local: Arc<dyn Backend>,
        provisioner: Provisioner,
        store: Store,
        node: String,
    ) -> Self {
        Self {
            local,
            provisioner,
            store,
            node,
        }
    }

    async fn placement(&self, server: ServerId) -> Result<Placement, String> {
        match self.store.server_placement(server).await {
            Ok(Some(p)) => Ok(p),
            Ok(None) => Err(format!("{} has no node", server.login_name())),
            Err(e) => Err(format!(
                "cannot look up {}'s node: {e}",
                server.login_name()
            )),
        }
    }

    /// Runs `op` for `server`, writing its output to `out`; the exit status and, on failure,
    /// one line for stderr.
    async fn run(
        &self,
        server: ServerId,
        op: Op,
        stdin: tokio::io::DuplexStream,
        out: &mpsc::Sender<Chunk>,
    ) -> Result<(), (u32, String)> {
        let name = server.login_name();
        let here = self.node.as_str();
        let p = self.placement(server).await.map_err(|e| (1, e))?;
        let fail = |e: tenants::ProvisionError| (1, format!("host {here}: {e}"));
        match op {
            Op::Export { force } => {
                if p.node != here || p.moving_to.is_none() {
                    return Err((1, format!("{name} is not moving away from host {here}")));
                }
                let open = self.provisioner.open_sessions(server).await.map_err(fail)?;
                if open > 0 && !force {
                    return Err((
                        EXIT_SESSIONS_OPEN,
                        format!(
                            "{name} has {open} open session(s) on host {here}; ask its users to log out, or move with --force to end them"
                        ),
                    ));
                }
                self.provisioner
                    .halt_for_transfer(server)
                    .await
                    .map_err(fail)?;
                let mut tar = Box::pin(self.provisioner.export_data(server).await.map_err(fail)?);
                while let Some(chunk) = tar.next().await {
                    let chunk = chunk.map_err(fail)?;
                    if out.send(Chunk::Stdout(chunk)).await.is_err() {
                        return Err((1, "the mover went away".into()));
                    }
                }
                Ok(())
            }
            Op::Import => {
                if p.moving_to.as_deref() != Some(here) {
                    return Err((1, format!("{name} is not moving to host {here}")));
                }
                let stream = futures::stream::unfold(stdin, |mut r| async move {
                    let mut buf = BytesMut::with_capacity(64 * 1024);
                    match r.read_buf(&mut buf).await {
                        Ok(0) => None,
                        Ok(_) => Some((Ok::<Bytes, std::io::Error>(buf.freeze()), r)),
                        Err(e) => Some((Err(e), r)),
                    }
                });
                self.provisioner
                    .import_data(server, stream)
                    .await
                    .map_err(fail)
            }
            Op::Discard => {
                if p.node == here && p.moving_to.is_none() {
                    return Err((
                        1,
                        format!("{name} lives on host {here}; its copy there is not discarded"),
                    ));
                }
                self.provisioner.discard_copy(server).await.map_err(fail)
            }
            Op::Start => {
                if p.node != here || p.moving_to.is_some() {
                    return Err((1, format!("{name} does not live on host {here}")));
                }
                self.provisioner
                    .ensure_running(server)
                    .await
                    .map(|_| ())
                    .map_err(fail)
            }
            Op::Create => {
                if p.node != here || p.moving_to.is_some() {
                    return Err((1, format!("{name} is not placed on host {here}")));
                }
                self.provisioner
                    .create_registered(server)
                    .await
                    .map_err(fail)?;
                let running = self
                    .provisioner
                    .ensure_running(server)
                    .await
                    .map_err(fail)?;
                let line = format!("address {}\n", running.address);
                let _ = out.send(Chunk::Stdout(Bytes::from(line))).await;
                Ok(())
            }
        }
    }
}

#[async_trait::async_trait]
impl Backend for NodeBackend {
    async fn credentials(&self, server: ServerId) -> Result<Option<Credentials>, BackendError> {
        self.local.credentials(server).await
    }

    async fn ensure_running(&self, server: ServerId) -> Result<Target, BackendError> {
        self.local.ensure_running(server).await
    }

    async fn ensure_running_for(
        &self,
        server: ServerId,
        owner: &str,
        peer: IpAddr,
    ) -> Result<Target, BackendError> {
        if owner == TRANSFER_OWNER {
            return Ok(Target {
                server,
                container_id: "transfer".into(),
                address: IpAddr::from([0, 0, 0, 0]),
                started_now: false,
                user: None,
                agent_dir: None,
                route: Some(Arc::new(TransferRoute)),
            });
        }
        match self.store.server_placement(server).await {
            Ok(Some(p)) if p.moving_to.is_some() => return Err(moving(server, &p)),
            Ok(_) => {}
            Err(e) => {
                return Err(BackendError::Unavailable(format!(
                    "cannot look up {}'s node: {e}",
                    server.login_name()
                )));
            }
        }
        self.local.ensure_running_for(server, owner, peer).await
    }

    async fn exec(
        &self,
        target: &Target,
        login: &str,
        req: ExecRequest,
    ) -> Result<Process, BackendError> {
        if !is_transfer(target) {
            return self.local.exec(target, login, req).await;
        }
        let op = match &req.program {
            Program::Exec(cmd) if req.pty.is_none() => Op::parse(cmd),
            _ => None,
        }
        .ok_or_else(|| BackendError::Failed("a transfer session runs one move step".into()))?;
        let server = target.server;
        let (stdin_w, stdin_r) = tokio::io::duplex(256 * 1024);
        let (out_tx, out_rx) = mpsc::channel(8);
        let (exit_tx, exit_rx) = oneshot::channel();
        let this = NodeBackend {
            local: self.local.clone(),
            provisioner: self.provisioner.clone(),
            store: self.store.clone(),
            node: self.node.clone(),
        };
        info!(target: "berth::hop", server = %server.login_name(), op = op.command(), "move step");
        let task = tokio::spawn(async move {
            let status = match this.run(server, op, stdin_r, &out_tx).await {
                Ok(()) => 0,
                Err((status, line)) => {
                    warn!(target: "berth::hop", server = %server.login_name(), op = op.command(), error = %line, "move step failed");
                    let _ = out_tx
                        .send(Chunk::Stderr(Bytes::from(format!("{line}\n"))))
                        .await;
                    status
                }
            };
            drop(out_tx);
            let _ = exit_tx.send(Exit::Status(status));
        });
        Ok(Process {
            stdin: Box::new(stdin_w),
            keep_stdin_open: false,
            output: Box::new(OpOutput(out_rx)),
            control: Box::new(OpControl {
                exit: Some(exit_rx),
                task,
            }),
            path: "transfer",
        })
    }

    async fn connect(
        &self,
        target: &Target,
        login: &str,
        dest: ForwardDest,
        port: u16,
    ) -> Result<Stream, BackendError> {
        if is_transfer(target) {
            return Err(BackendError::Failed(
                "a transfer session forwards nothing".into(),
            ));
        }
        self.local.connect(target, login, dest, port).await
    }

    async fn audit(&self, record: AuditRecord) {
        self.local.audit(record).await;
    }
}

fn is_transfer(target: &Target) -> bool {
    target
        .route
        .as_ref()
        .is_some_and(|r| r.downcast_ref::<TransferRoute>().is_some())
}

struct OpOutput(mpsc::Receiver<Chunk>);

#[async_trait::async_trait]
impl ProcessOutput for OpOutput {
    async fn read(&mut self) -> Option<Chunk> {
        self.0.recv().await
    }
}

struct OpControl {
    exit: Option<oneshot::Receiver<Exit>>,
    task: tokio::task::JoinHandle<()>,
}

#[async_trait::async_trait]
impl ProcessControl for OpControl {
    async fn resize(&mut self, _cols: u32, _rows: u32) {}

    async fn signal(&mut self, _name: &str) {}

    async fn wait(&mut self) -> Option<Exit> {
        match self.exit.as_mut() {
            Some(rx) => {
                let r = rx.await.ok();
                self.exit = None;
                r
            }
            None => None,
        }
    }

    async fn hangup(&mut self) {
        self.task.abort();
    }
}

/// The mover's side: one transfer connection to a node.
pub struct TransferClient {
    handle: Handle<Pinned>,
    node: String,
}

/// What a step answered.
#[derive(Debug)]
pub struct StepError {
    pub status: Option<u32>,
    pub message: String,
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StepError {}

fn step_err(message: String) -> StepError {
    StepError {
        status: None,
        message,
    }
}

impl TransferClient {
    /// Logs in to `node` (at `advertise`, presenting exactly the pinned `host_key` line) with
    /// this host's front key, for a transfer of `server`.
    pub async fn connect(
        node: &str,
        advertise: &str,
        host_key: &str,
        key: PrivateKey,
        server: ServerId,
    ) -> Result<Self, StepError> {
        let pin = PublicKey::from_openssh(host_key)
            .map_err(|_| step_err(format!("host {node} has no pinned hop host key yet")))?;
        let config = Arc::new(client::Config {
            inactivity_timeout: None,
            window_size: 8 * 1024 * 1024,
            maximum_packet_size: 65_535,
            nodelay: true,
            preferred: crate::relay::hop_preferred(),
            ..Default::default()
        });
        let login = async {
            let mut handle = client::connect(config, advertise, Pinned::closed(pin, node))
                .await
                .map_err(|e| step_err(format!("cannot reach host {node} at {advertise}: {e}")))?;
            let auth = handle
                .authenticate_publickey(
                    transfer_user(server),
                    PrivateKeyWithHashAlg::new(Arc::new(key), None),
                )
                .await
                .map_err(|e| step_err(format!("host {node}: {e}")))?;
            if !auth.success() {
                return Err(step_err(format!(
                    "host {node} refused this host's front key (is this host's front registered? `berth node fronts`)"
                )));
            }
            Ok(handle)
        };
        let handle = tokio::time::timeout(HOP_CONNECT_TIMEOUT, login)
            .await
            .map_err(|_| step_err(format!("host {node} at {advertise} did not answer")))??;
        Ok(Self {
            handle,
            node: node.to_string(),
        })
    }

    async fn open(&self, op: Op) -> Result<russh::Channel<client::Msg>, StepError> {
        let node = &self.node;
        let ch = self
            .handle
            .channel_open_session()
            .await
            .map_err(|e| step_err(format!("host {node}: {e}")))?;
        ch.exec(true, op.command().as_bytes())
            .await
            .map_err(|e| step_err(format!("host {node}: {e}")))?;
        Ok(ch)
    }

    /// Runs a step without data either way.
    pub async fn step(&self, op: Op) -> Result<(), StepError> {
        self.step_text(op).await.map(|_| ())
    }

    /// Runs a step that takes no data and returns what it printed (at most 4 KiB).
    pub async fn step_text(&self, op: Op) -> Result<String, StepError> {
        let ch = self.open(op).await?;
        let _ = ch.eof().await;
        let (mut read, _write) = ch.split();
        let (tx, mut rx) = mpsc::channel::<Bytes>(4);
        let collect = async {
            let mut text = Vec::new();
            while let Some(b) = rx.recv().await {
                if text.len() < 4096 {
                    text.extend_from_slice(&b);
                }
            }
            String::from_utf8_lossy(&text).into_owned()
        };
        let drained = async {
            let r = drain(&self.node, op, &mut read, Some(&tx)).await;
            drop(tx);
            r
        };
        let (r, text) = tokio::join!(drained, collect);
        r.map(|_| text)
    }

    /// Exports from this (source) node into `to`'s import; returns the bytes carried.
    pub async fn export_into(&self, to: &TransferClient, force: bool) -> Result<u64, StepError> {
        let export = Op::Export { force };
        let src = self.open(export).await?;
        let _ = src.eof().await;
        let (mut src, _src_write) = src.split();
        let dst = to.open(Op::Import).await?;
        let (mut dst_read, dst_write) = dst.split();
        let mut writer = dst_write.make_writer();
        // Data is written to the target as it arrives; the target's answer is read after EOF.
        let pump = async {
            use tokio::io::AsyncWriteExt;
            let (tx, mut rx) = mpsc::channel::<Bytes>(16);
            let read = async {
                let r = drain(&self.node, export, &mut src, Some(&tx)).await;
                drop(tx);
                r
            };
            let write = async {
                while let Some(b) = rx.recv().await {
                    writer
                        .write_all(&b)
                        .await
                        .map_err(|e| step_err(format!("host {}: {e}", to.node)))?;
                }
                writer
                    .shutdown()
                    .await
                    .map_err(|e| step_err(format!("host {}: {e}", to.node)))?;
                Ok::<(), StepError>(())
            };
            let (r, w) = tokio::join!(read, write);
            w.and(r)
        };
        let pumped = pump.await;
        let imported = drain(&to.node, Op::Import, &mut dst_read, None).await;
        match (pumped, imported) {
            (Ok(n), Ok(_)) => Ok(n),
            (Err(e), _) => Err(e),
            (Ok(_), Err(e)) => Err(e),
        }
    }
}

/// Reads a step's channel to its end: data into `tx` (dropped when there is none), stderr
/// into the error message; the bytes of data carried.
async fn drain(
    node: &str,
    op: Op,
    read: &mut russh::ChannelReadHalf,
    tx: Option<&mpsc::Sender<Bytes>>,
) -> Result<u64, StepError> {
    let mut err = Vec::new();
    let mut status = None;
    let mut n = 0u64;
    while let Some(msg) = read.wait().await {
        match msg {
            ChannelMsg::Data { data } => {
                n += data.len() as u64;
                if let Some(tx) = tx
                    && tx.send(data).await.is_err()
                {
                    return Err(step_err("the target stopped taking data".into()));
                }
            }
            ChannelMsg::ExtendedData { data, .. } if err.len() < 4096 => {
                err.extend_from_slice(&data);
            }
            ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
            ChannelMsg::Failure => {
                return Err(step_err(format!(
                    "host {node} refused the {} step",
                    op.command()
                )));
            }
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    verdict(node, op, status, &err).map(|()| n)
}

fn verdict(node: &str, op: Op, status: Option<u32>, err: &[u8]) -> Result<(), StepError> {
    match status {
        Some(0) => Ok(()),
        _ => {
            let text = String::from_utf8_lossy(err);
            let text = text.trim();
            Err(StepError {
                status,
                message: if text.is_empty() {
                    format!("host {node}: the {} step failed", op.command())
                } else {
                    text.to_string()
                },
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_users_round_trip_and_nothing_else_parses() {
        let s = ServerId::new(12).unwrap_or_else(|| unreachable!());
        assert_eq!(transfer_user(s), "transfer/server12");
        assert_eq!(parse_transfer_user("transfer/server12"), Some(s));
        for bad in [
            "transfer/server012",
            "transfer/",
            "transfer/server12/x",
            "Transfer/server12",
            "server12",
            "transfer/server12/alice/1.2.3.4",
        ] {
            assert_eq!(parse_transfer_user(bad), None, "{bad:?}");
        }
        assert!(!tenants::valid_account_name(TRANSFER_OWNER));
    }

    #[test]
    fn ops_round_trip_and_unknown_commands_are_refused() {
        for op in [
            Op::Export { force: false },
            Op::Export { force: true },
            Op::Import,
            Op::Discard,
            Op::Start,
            Op::Create,
        ] {
            assert_eq!(Op::parse(op.command()), Some(op));
        }
        for bad in ["", "export ", "rm -rf /", "import; true", "EXPORT"] {
            assert_eq!(Op::parse(bad), None, "{bad:?}");
        }
    }
}
