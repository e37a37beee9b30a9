//! The front's side of the hop: a [`Backend`] that sends a login on to the node holding the
//! server, or hands it to the local backend when the server lives here (or the store has no
//! placement for it: a single host).
//!
//! One internal SSH connection per client connection (opened by `ensure_running_for`, kept in
//! the connection's [`Target`] and closed with it). Each session channel becomes a session
//! channel on the hop with the client's requests replayed one to one (`pty-req`, `env`, then
//! `shell`, `exec` or `subsystem sftp`); input, output, window changes, signals, EOF, exit
//! status and exit signal travel back and forth. `direct-tcpip` becomes `direct-tcpip` on the
//! hop, naming the destination as the client did (the node applies its own forward policy).
//!
//! The node's host key must equal the pin in the store: no trust on first use. A node that
//! cannot be reached within [`HOP_CONNECT_TIMEOUT`] is reported to the client in one line.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use gateway::policy::{Exit, ForwardDest, Program};
use gateway::{
    AuditRecord, Backend, BackendError, Chunk, Credentials, ExecRequest, Process, ProcessControl,
    ProcessOutput, Stream, Target,
};
use russh::ChannelMsg;
use russh::client::{self, Handle};
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey};
use tenants::{ServerId, Store};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::assertion::Assertion;

/// How long a front waits for a node's hop endpoint (TCP, key exchange and login together).
pub const HOP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Environment the front adds itself; the node sets its own.
const NODE_SET_ENV: [&str; 2] = ["TERM", "BERTH_SERVER"];

pub struct RelayBackend {
    local: Arc<dyn Backend>,
    store: Store,
    /// This host's node name (`""`: not a node; every placed server is elsewhere).
    node: String,
    key: Arc<PrivateKey>,
    config: Arc<client::Config>,
}

impl RelayBackend {
    /// `local` serves servers placed on `node` (this host) and answers credentials; `key` is
    /// this front's hop client key (its public half registered in the `fronts` table).
    pub fn new(local: Arc<dyn Backend>, store: Store, node: String, key: PrivateKey) -> Self {
        let config = client::Config {
            inactivity_timeout: None,
            keepalive_interval: Some(Duration::from_secs(15)),
            keepalive_max: 3,
            nodelay: true,
            window_size: 8 * 1024 * 1024,
            maximum_packet_size: 65_535,
            preferred: hop_preferred(),
            ..Default::default()
        };
        Self {
            local,
            store,
            node,
            key: Arc::new(key),
            config: Arc::new(config),
        }
    }

    async fn open_hop(
        &self,
        server: ServerId,
        node: &str,
        owner: &str,
        peer: IpAddr,
    ) -> Result<Target, BackendError> {
        let unreachable = || {
            BackendError::ForClient(format!(
                "{}'s host {node} is unreachable; try again later",
                server.login_name()
            ))
        };
        let row = self
            .store
            .node(node)
            .await
            .map_err(|e| BackendError::Unavailable(format!("cannot look up host {node}: {e}")))?
            .ok_or_else(|| {
                BackendError::Failed(format!(
                    "{} is placed on host {node}, which is not registered",
                    server.login_name()
                ))
            })?;
        let pin = PublicKey::from_openssh(&row.host_key).map_err(|_| {
            BackendError::ForClient(format!(
                "{}'s host {node} has no pinned host key yet (its node service never started); try again later",
                server.login_name()
            ))
        })?;
        let assertion = Assertion {
            server,
            account: owner.to_string(),
            client: peer,
        };
        let connect = async {
            let handler = Pinned { pin };
            let mut handle = client::connect(self.config.clone(), row.advertise.as_str(), handler)
                .await
                .map_err(|e| {
                    warn!(target: "berth::hop", node, error = %e, "hop connect failed");
                    unreachable()
                })?;
            let key = PrivateKeyWithHashAlg::new(self.key.clone(), None);
            let auth = handle
                .authenticate_publickey(assertion.to_user(), key)
                .await
                .map_err(|e| {
                    warn!(target: "berth::hop", node, error = %e, "hop login failed");
                    unreachable()
                })?;
            if !auth.success() {
                warn!(target: "berth::hop", node, "node refused this front's hop login");
                return Err(BackendError::ForClient(format!(
                    "{}'s host {node} refused the login relay; please tell the operator",
                    server.login_name()
                )));
            }
            Ok(handle)
        };
        let handle = tokio::time::timeout(HOP_CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| unreachable())??;
        info!(target: "berth::hop", node, server = %server.login_name(), "relaying to node");
        Ok(Target {
            server,
            container_id: format!("hop:{node}"),
            address: IpAddr::from([0, 0, 0, 0]),
            started_now: false,
            user: None,
            agent_dir: None,
            route: Some(Arc::new(Route {
                handle,
                node: node.to_string(),
            })),
        })
    }
}

/// What the hop negotiates: russh's defaults with AES-GCM first. Every relayed byte is
/// encrypted twice more than on a single host (node and front), and with the CPU's AES
/// instructions AES-GCM costs a fraction of ChaCha20-Poly1305; a node whose CPU lacks them
/// still agrees on any cipher of the list.
pub(crate) fn hop_preferred() -> russh::Preferred {
    const CIPHERS: &[russh::cipher::Name] = &[
        russh::cipher::AES_256_GCM,
        russh::cipher::AES_128_GCM,
        russh::cipher::CHACHA20_POLY1305,
        russh::cipher::AES_256_CTR,
    ];
    russh::Preferred {
        cipher: std::borrow::Cow::Borrowed(CIPHERS),
        ..russh::Preferred::default()
    }
}

/// The hop connection of one client connection. Dropped with the connection's target, which
/// ends the hop session (its task stops when the last handle and channel are gone).
struct Route {
    handle: Handle<Pinned>,
    node: String,
}

fn route(target: &Target) -> Option<&Route> {
    target.route.as_ref()?.downcast_ref::<Route>()
}

/// Accepts exactly the pinned host key.
pub(crate) struct Pinned {
    pub(crate) pin: PublicKey,
}

impl client::Handler for Pinned {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(match key {
            russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } => {
                key.key_data() == self.pin.key_data()
            }
            // A certificate is not the pinned key.
            _ => false,
        })
    }
}

/// The hop connection failed under a session: logged with its cause, told to the client in
/// one line without it.
fn hop_error(node: &str, e: russh::Error) -> BackendError {
    warn!(target: "berth::hop", node, error = %e, "hop connection failed");
    BackendError::ForClient(format!(
        "the connection to the server's host {node} failed; try again"
    ))
}

/// How a channel request was answered.
async fn answered(ch: &mut russh::Channel<client::Msg>, what: &str) -> Result<(), BackendError> {
    loop {
        match ch.wait().await {
            Some(ChannelMsg::Success) => return Ok(()),
            Some(ChannelMsg::Failure) => {
                return Err(BackendError::Failed(format!(
                    "the server's host refused {what}"
                )));
            }
            Some(ChannelMsg::WindowAdjusted { .. }) => continue,
            Some(_) => continue,
            None => {
                return Err(BackendError::Unavailable(format!(
                    "the server's host closed the channel during {what}"
                )));
            }
        }
    }
}

#[async_trait::async_trait]
impl Backend for RelayBackend {
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
        let placed = self.store.server_placement(server).await.map_err(|e| {
            BackendError::Unavailable(format!(
                "cannot look up {}'s host: {e}",
                server.login_name()
            ))
        })?;
        match placed {
            Some(p) if p.moving_to.is_some() => Err(crate::transfer::moving(server, &p)),
            Some(p) if p.node != self.node => self.open_hop(server, &p.node, owner, peer).await,
            _ => self.local.ensure_running_for(server, owner, peer).await,
        }
    }

    async fn exec(
        &self,
        target: &Target,
        login: &str,
        req: ExecRequest,
    ) -> Result<Process, BackendError> {
        let Some(route) = route(target) else {
            return self.local.exec(target, login, req).await;
        };
        let node = route.node.as_str();
        let mut ch = route
            .handle
            .channel_open_session()
            .await
            .map_err(|e| hop_error(node, e))?;
        if let Some((cols, rows)) = req.pty {
            let term = req
                .env
                .iter()
                .find(|(k, _)| k == "TERM")
                .map_or("xterm", |(_, v)| v.as_str());
            ch.request_pty(true, term, cols, rows, 0, 0, &[])
                .await
                .map_err(|e| hop_error(node, e))?;
            answered(&mut ch, "the terminal").await?;
        }
        for (k, v) in req
            .env
            .iter()
            .filter(|(k, _)| !NODE_SET_ENV.contains(&k.as_str()))
        {
            ch.set_env(false, k.as_str(), v.as_str())
                .await
                .map_err(|e| hop_error(node, e))?;
        }
        match &req.program {
            Program::Shell => ch.request_shell(true).await,
            Program::Exec(cmd) => ch.exec(true, cmd.as_bytes()).await,
            Program::Sftp => ch.request_subsystem(true, "sftp").await,
        }
        .map_err(|e| hop_error(node, e))?;
        answered(&mut ch, "the session").await?;
        let (read, write) = ch.split();
        let write = Arc::new(write);
        let (exit_tx, exit_rx) = watch::channel(None);
        Ok(Process {
            stdin: Box::new(write.make_writer()),
            keep_stdin_open: false,
            output: Box::new(HopOutput {
                read,
                exit: exit_tx,
            }),
            control: Box::new(HopControl {
                write,
                exit: exit_rx,
            }),
            path: "hop",
        })
    }

    async fn connect(
        &self,
        target: &Target,
        login: &str,
        dest: ForwardDest,
        port: u16,
    ) -> Result<Stream, BackendError> {
        let Some(route) = route(target) else {
            return self.local.connect(target, login, dest, port).await;
        };
        let host = match dest {
            ForwardDest::Loopback(None) => "localhost".to_string(),
            ForwardDest::Loopback(Some(ip)) => ip.to_string(),
            // The node knows its container's address; the server's name means it there.
            ForwardDest::Container(_) => login.to_string(),
        };
        let ch = route
            .handle
            .channel_open_direct_tcpip(host, u32::from(port), "127.0.0.1", 0)
            .await
            .map_err(|e| BackendError::Failed(format!("host {}: {e}", route.node)))?;
        let (read, write) = tokio::io::split(ch.into_stream());
        Ok(Stream {
            read: Box::new(read),
            write: Box::new(write),
            path: "hop",
        })
    }

    async fn audit(&self, record: AuditRecord) {
        self.local.audit(record).await;
    }
}

/// What the node reported about the process's end: `Some(None)` when the channel closed
/// without an exit status.
type ExitSlot = Option<Option<Exit>>;

struct HopOutput {
    read: russh::ChannelReadHalf,
    exit: watch::Sender<ExitSlot>,
}

#[async_trait::async_trait]
impl ProcessOutput for HopOutput {
    async fn read(&mut self) -> Option<Chunk> {
        loop {
            match self.read.wait().await {
                Some(ChannelMsg::Data { data }) => return Some(Chunk::Stdout(data)),
                Some(ChannelMsg::ExtendedData { data, ext: 1 }) => {
                    return Some(Chunk::Stderr(data));
                }
                Some(ChannelMsg::ExitStatus { exit_status }) => {
                    self.exit
                        .send_replace(Some(Some(Exit::Status(exit_status))));
                }
                Some(ChannelMsg::ExitSignal { signal_name, .. }) => {
                    let name = gateway::policy::ssh_signal_name(signal_name);
                    self.exit.send_replace(Some(Some(Exit::Signal(name))));
                }
                Some(ChannelMsg::Close) | None => {
                    self.exit.send_if_modified(|e| {
                        let unset = e.is_none();
                        if unset {
                            *e = Some(None);
                        }
                        unset
                    });
                    return None;
                }
                // EOF, window adjustments, other extended streams: nothing to pass on.
                Some(_) => {}
            }
        }
    }
}

struct HopControl {
    write: Arc<russh::ChannelWriteHalf<client::Msg>>,
    exit: watch::Receiver<ExitSlot>,
}

#[async_trait::async_trait]
impl ProcessControl for HopControl {
    async fn resize(&mut self, cols: u32, rows: u32) {
        let _ = self.write.window_change(cols, rows, 0, 0).await;
    }

    async fn signal(&mut self, name: &str) {
        let _ = self.write.signal(gateway::policy::ssh_signal(name)).await;
    }

    async fn wait(&mut self) -> Option<Exit> {
        match self.exit.wait_for(Option::is_some).await {
            Ok(v) => v.clone().flatten(),
            Err(_) => None,
        }
    }

    async fn hangup(&mut self) {
        let _ = self.write.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hop_prefers_aes_gcm_and_offers_only_ciphers_russh_has() {
        let p = hop_preferred();
        assert_eq!(p.cipher.first(), Some(&russh::cipher::AES_256_GCM));
        for c in p.cipher.iter() {
            assert!(russh::cipher::ALL_CIPHERS.contains(&c), "{c:?}");
            assert!(
                ![russh::cipher::NONE, russh::cipher::CLEAR].contains(c),
                "{c:?}"
            );
        }
        // Everything else (key exchange, host keys, MACs) stays russh's default.
        assert_eq!(p.kex, russh::Preferred::default().kex);
    }
}
