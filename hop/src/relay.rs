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
//! Remote forwards, unix-socket forwards and agent forwarding are asked of the node in turn, and
//! the channels it opens back come to the client through the gateway's listener machinery
//! (`crate::forwards`).
//!
//! The node's host key must equal the pin in the store: no trust on first use. A node that
//! cannot be reached within [`HOP_CONNECT_TIMEOUT`] is reported to the client in one line.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use gateway::backend::{Bound, ListenSpec, Listener, Listening};
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
use crate::forwards::{self, Entry, Forwards, Open};

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
        let forwards = Arc::new(Forwards::default());
        let connect = async {
            let handler = Pinned {
                pin,
                node: node.to_string(),
                forwards: forwards.clone(),
            };
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
                forwards,
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
    /// What the front asked the node to listen for on this connection.
    forwards: Arc<Forwards>,
}

impl Drop for Route {
    fn drop(&mut self) {
        let refused = self.forwards.refused();
        if refused > 0 {
            warn!(target: "berth::hop", node = %self.node, refused, "hop connection closed; the node opened channels that were refused");
        }
    }
}

fn route(target: &Target) -> Option<&Route> {
    target.route.as_ref()?.downcast_ref::<Route>()
}

/// Takes a relayed listener off the hop when the gateway drops it: forgotten at once (channels
/// for it are refused from then on), cancelled on the node in the background.
struct Unlisten {
    route: Arc<dyn std::any::Any + Send + Sync>,
    entry: Entry,
}

impl Drop for Unlisten {
    fn drop(&mut self) {
        let Ok(route) = self.route.clone().downcast::<Route>() else {
            return;
        };
        route.forwards.remove(&self.entry);
        let entry = self.entry.clone();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            // The node drops its listeners with the hop connection anyway; a failure here only
            // means the connection is already going.
            let _ = match entry {
                Entry::Tcp(address, port) => route.handle.cancel_tcpip_forward(address, port).await,
                Entry::Unix(path) => route.handle.cancel_streamlocal_forward(path).await,
                Entry::Agent(_) => Ok(()),
            };
        });
    }
}

/// A hop client: accepts exactly the pinned host key, and only the channels `forwards` routes
/// (none for a connection that asked for no listener).
pub(crate) struct Pinned {
    pub(crate) pin: PublicKey,
    pub(crate) node: String,
    pub(crate) forwards: Arc<Forwards>,
}

impl Pinned {
    /// A hop client that accepts no channel from the node.
    pub(crate) fn closed(pin: PublicKey, node: &str) -> Self {
        Self {
            pin,
            node: node.to_string(),
            forwards: Arc::new(Forwards::default()),
        }
    }

    async fn never(&self, kind: &str, reply: client::ChannelOpenHandle) {
        self.forwards
            .refuse(&self.node, kind, "never relayed to the client");
        reply
            .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
            .await;
    }
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

    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        channel: russh::Channel<client::Msg>,
        connected_address: &str,
        connected_port: u32,
        originator_address: &str,
        originator_port: u32,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        let open = Open::Tcp {
            address: connected_address,
            port: connected_port,
            origin: originator_address,
            origin_port: originator_port,
        };
        forwards::admit(&self.forwards, &self.node, open, channel, reply).await;
        Ok(())
    }

    async fn server_channel_open_forwarded_streamlocal(
        &mut self,
        channel: russh::Channel<client::Msg>,
        socket_path: &str,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        let open = Open::Unix { path: socket_path };
        forwards::admit(&self.forwards, &self.node, open, channel, reply).await;
        Ok(())
    }

    async fn server_channel_open_agent_forward(
        &mut self,
        channel: russh::Channel<client::Msg>,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        forwards::admit(&self.forwards, &self.node, Open::Agent, channel, reply).await;
        Ok(())
    }

    async fn server_channel_open_session(
        &mut self,
        _channel: russh::Channel<client::Msg>,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        self.never("session", reply).await;
        Ok(())
    }

    async fn server_channel_open_direct_tcpip(
        &mut self,
        _channel: russh::Channel<client::Msg>,
        _host_to_connect: &str,
        _port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        self.never("direct-tcpip", reply).await;
        Ok(())
    }

    async fn server_channel_open_direct_streamlocal(
        &mut self,
        _channel: russh::Channel<client::Msg>,
        _socket_path: &str,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        self.never("direct-streamlocal", reply).await;
        Ok(())
    }

    async fn server_channel_open_x11(
        &mut self,
        _channel: russh::Channel<client::Msg>,
        _originator_address: &str,
        _originator_port: u32,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        self.never("x11", reply).await;
        Ok(())
    }

    async fn should_accept_unknown_server_channel(
        &mut self,
        _id: russh::ChannelId,
        channel_type: &str,
    ) -> bool {
        let kind = gateway::audit::loggable(channel_type, 64);
        self.forwards
            .refuse(&self.node, &kind, "never relayed to the client");
        false
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
        // A relayed agent listener stands in the environment as its token: asked of the node
        // on this session channel instead of being sent as a variable.
        let agent = req
            .env
            .iter()
            .find(|(k, _)| k == "SSH_AUTH_SOCK")
            .and_then(|(_, v)| route.forwards.agent_of(v));
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
        let mut note = None;
        if let Some(id) = agent {
            ch.agent_forward(true)
                .await
                .map_err(|e| hop_error(node, e))?;
            match answered(&mut ch, "agent forwarding").await {
                Ok(()) => route.forwards.arm(id),
                // The node's policy said no: the session runs without it, and says why, as
                // it does on one host.
                Err(BackendError::Failed(e)) => {
                    note = Some(Chunk::Stderr(bytes::Bytes::from(format!(
                        "berth: agent forwarding unavailable: {e}\r\n"
                    ))));
                }
                Err(e) => return Err(e),
            }
        }
        for (k, v) in req.env.iter().filter(|(k, _)| {
            !NODE_SET_ENV.contains(&k.as_str()) && (agent.is_none() || k != "SSH_AUTH_SOCK")
        }) {
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
                note,
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

    async fn listen(
        &self,
        target: &Target,
        login: &str,
        spec: ListenSpec,
    ) -> Result<Listener, BackendError> {
        let (Some(route), Some(arc)) = (route(target), target.route.as_ref()) else {
            return self.local.listen(target, login, spec).await;
        };
        let node = route.node.as_str();
        let (tx, incoming) = tokio::sync::mpsc::channel(forwards::QUEUE);
        // The node answers with its own policy and limits; a refusal reaches the client as one.
        let refused = |what: &str| {
            BackendError::ForClient(format!("{login}'s host {node} refused the {what}"))
        };
        let (entry, bound) = match spec {
            ListenSpec::Tcp(addr) => {
                let address = addr.ip().to_string();
                // A named port is known before the node answers: registered first, so that a
                // connection the node accepts at once is not taken for an unsolicited one.
                let early =
                    (addr.port() != 0).then(|| Entry::Tcp(address.clone(), u32::from(addr.port())));
                if let Some(e) = &early {
                    route.forwards.add(e, tx.clone());
                }
                let asked = route
                    .handle
                    .tcpip_forward(address.clone(), u32::from(addr.port()))
                    .await;
                let port = match asked {
                    // A specific port is answered without one.
                    Ok(0) => Ok(addr.port()),
                    Ok(p) => u16::try_from(p).map_err(|_| {
                        BackendError::Failed(format!("host {node} bound an impossible port {p}"))
                    }),
                    Err(russh::Error::RequestDenied) => Err(refused("remote forward")),
                    Err(e) => Err(hop_error(node, e)),
                };
                let port = match port {
                    Ok(p) => p,
                    Err(e) => {
                        if let Some(entry) = &early {
                            route.forwards.remove(entry);
                        }
                        return Err(e);
                    }
                };
                let entry = Entry::Tcp(address, u32::from(port));
                route.forwards.add(&entry, tx);
                (entry, Bound::Tcp(SocketAddr::new(addr.ip(), port)))
            }
            ListenSpec::Unix(Some(path)) => {
                let entry = Entry::Unix(path.clone());
                route.forwards.add(&entry, tx);
                match route.handle.streamlocal_forward(path.clone()).await {
                    Ok(()) => {}
                    Err(e) => {
                        route.forwards.remove(&entry);
                        return Err(match e {
                            russh::Error::RequestDenied => refused("unix-socket forward"),
                            e => hop_error(node, e),
                        });
                    }
                }
                (entry, Bound::Unix(path))
            }
            // Agent forwarding: asked of the node on the session channel, when it starts.
            ListenSpec::Unix(None) => {
                let (entry, token) = route.forwards.add_agent(tx);
                (entry, Bound::Unix(token))
            }
        };
        Ok(Listener {
            listening: Listening::Relayed { incoming, bound },
            cleanup: Some(Box::new(Unlisten {
                route: arc.clone(),
                entry,
            })),
        })
    }

    async fn connect_unix(
        &self,
        target: &Target,
        login: &str,
        path: &str,
    ) -> Result<Stream, BackendError> {
        let Some(route) = route(target) else {
            return self.local.connect_unix(target, login, path).await;
        };
        // The node opens the path as the session user (its own streamlocal policy applies).
        let ch = route
            .handle
            .channel_open_direct_streamlocal(path)
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
    /// Said on stderr before the process's output (a forwarding the node refused).
    note: Option<Chunk>,
    read: russh::ChannelReadHalf,
    exit: watch::Sender<ExitSlot>,
}

#[async_trait::async_trait]
impl ProcessOutput for HopOutput {
    async fn read(&mut self) -> Option<Chunk> {
        if let Some(note) = self.note.take() {
            return Some(note);
        }
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
    use russh::server;
    use tokio::sync::{mpsc, oneshot};

    fn ed25519(name: &str) -> PrivateKey {
        let path =
            std::env::temp_dir().join(format!("berth-hop-unit-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let key = gateway::hostkeys::load_or_generate_one(
            &path,
            gateway::hostkeys::KeyKind::Ed25519,
            true,
        );
        let _ = std::fs::remove_file(&path);
        match key {
            Ok(k) => k,
            Err(e) => panic!("generate key: {e}"),
        }
    }

    /// A node that lets anyone in and then hands the test its session handle, to open whatever
    /// channels it likes towards the front's hop client.
    struct Hostile(Option<oneshot::Sender<server::Handle>>);

    impl server::Handler for Hostile {
        type Error = russh::Error;

        async fn auth_none(&mut self, _user: &str) -> Result<server::Auth, Self::Error> {
            Ok(server::Auth::Accept)
        }

        async fn auth_succeeded(
            &mut self,
            session: &mut server::Session,
        ) -> Result<(), Self::Error> {
            if let Some(tx) = self.0.take() {
                let _ = tx.send(session.handle());
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_node_opens_channels_only_for_listeners_the_front_asked_for() {
        let node_key = ed25519("node");
        let pin = node_key.public_key().clone();
        let config = Arc::new(server::Config {
            keys: vec![node_key],
            ..Default::default()
        });
        let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => panic!("bind: {e}"),
        };
        let addr = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => panic!("local addr: {e}"),
        };
        let (handle_tx, handle_rx) = oneshot::channel();
        tokio::spawn(async move {
            if let Ok((stream, _)) = listener.accept().await
                && let Ok(running) =
                    server::run_stream(config, stream, Hostile(Some(handle_tx))).await
            {
                let _ = running.await;
            }
        });

        let forwards = Arc::new(Forwards::default());
        let client = Pinned {
            pin,
            node: "n9".into(),
            forwards: forwards.clone(),
        };
        let cfg = Arc::new(client::Config::default());
        let mut front = match client::connect(cfg, addr, client).await {
            Ok(h) => h,
            Err(e) => panic!("connect: {e}"),
        };
        match front.authenticate_none("front").await {
            Ok(r) if r.success() => {}
            other => panic!("login: {other:?}"),
        }
        let node = match handle_rx.await {
            Ok(h) => h,
            Err(e) => panic!("no session handle: {e}"),
        };

        // Nothing asked for yet: every kind of channel the node may open is refused.
        assert!(
            node.channel_open_forwarded_tcpip("127.0.0.1", 4000, "127.0.0.1", 5)
                .await
                .is_err()
        );
        assert!(
            node.channel_open_forwarded_streamlocal("/tmp/a.sock")
                .await
                .is_err()
        );
        assert!(node.channel_open_agent().await.is_err());
        assert!(node.channel_open_session().await.is_err());
        assert!(
            node.channel_open_direct_tcpip("127.0.0.1", 22, "127.0.0.1", 5)
                .await
                .is_err()
        );
        assert!(
            node.channel_open_direct_streamlocal("/tmp/a.sock")
                .await
                .is_err()
        );
        assert!(node.channel_open_x11("127.0.0.1", 6000).await.is_err());
        assert_eq!(forwards.refused(), 7);

        // One listener and an agent asked for (not yet accepted by the node): only the listener's
        // channels come in, carrying the originator; others are still refused.
        let (tx, mut rx) = mpsc::channel(forwards::QUEUE);
        forwards.add(&Entry::Tcp("127.0.0.1".into(), 4000), tx);
        let (atx, mut arx) = mpsc::channel(forwards::QUEUE);
        let (_, token) = forwards.add_agent(atx);
        assert!(
            node.channel_open_forwarded_tcpip("127.0.0.1", 4000, "127.0.0.7", 5)
                .await
                .is_ok()
        );
        match rx.recv().await {
            Some(a) => assert_eq!(a.peer, Some(SocketAddr::from(([127, 0, 0, 7], 5)))),
            None => panic!("the accepted channel never reached the listener"),
        }
        assert!(
            node.channel_open_forwarded_tcpip("127.0.0.1", 4001, "127.0.0.1", 5)
                .await
                .is_err()
        );
        assert!(
            node.channel_open_forwarded_tcpip("0.0.0.0", 4000, "127.0.0.1", 5)
                .await
                .is_err()
        );
        assert!(node.channel_open_agent().await.is_err());
        let Some(id) = forwards.agent_of(&token) else {
            panic!("agent token not recognised");
        };
        forwards.arm(id);
        assert!(node.channel_open_agent().await.is_ok());
        assert!(arx.recv().await.is_some());
        assert_eq!(forwards.refused(), 10);

        // A queue the gateway does not drain: refused once full, never waited on.
        for _ in 0..forwards::QUEUE {
            assert!(
                node.channel_open_forwarded_tcpip("127.0.0.1", 4000, "127.0.0.1", 5)
                    .await
                    .is_ok()
            );
        }
        assert!(
            node.channel_open_forwarded_tcpip("127.0.0.1", 4000, "127.0.0.1", 5)
                .await
                .is_err()
        );
        assert_eq!(forwards.refused(), 11);
        drop(rx);
        assert!(
            node.channel_open_forwarded_tcpip("127.0.0.1", 4000, "127.0.0.1", 5)
                .await
                .is_err()
        );
    }

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
