//! Remote forwards and agent forwarding across the hop, on the front's side.
//!
//! The front asks the node for a listener as any SSH client would (`tcpip-forward`,
//! `streamlocal-forward@openssh.com`, `auth-agent-req@openssh.com` on the hop session channel);
//! the node's gateway binds it in the container under the node's own policy and limits, and opens
//! `forwarded-tcpip`, `forwarded-streamlocal@openssh.com` or `auth-agent@openssh.com` channels to
//! the front's hop client for each connection. [`Forwards`] is the hop connection's table of what
//! the front asked for: a channel the node opens is accepted only when it names one of them, and
//! handed to the gateway's accept loop for that listener ([`gateway::backend::Listening::Relayed`]),
//! which opens the matching channel to the client under the gateway's per-connection limits.
//! Anything else the node opens (sessions, direct channels, X11, unknown kinds, listeners never
//! asked for or already cancelled) is refused, counted and logged: the node is trusted more than a
//! tenant, but it cannot open channels to the client on its own.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use gateway::Stream;
use gateway::backend::Accepted;
use russh::client::Msg;
use russh::{Channel, ChannelOpenFailure};
use tokio::sync::mpsc;
use tracing::warn;

/// Connections one relayed listener may have queued for the gateway's accept loop; beyond that
/// the node's channel is refused (the gateway bounds what it has in flight to the client itself).
pub(crate) const QUEUE: usize = 16;

/// Prefix of the `SSH_AUTH_SOCK` value a relayed agent listener hands the gateway: the front
/// replaces it with an `auth-agent-req@openssh.com` on the hop session channel, and the node sets
/// its own socket path.
const AGENT_TOKEN: &str = "berth-hop-agent:";

/// What a front asked the node for on one hop connection.
#[derive(Default)]
pub(crate) struct Forwards {
    inner: Mutex<Inner>,
    /// Channel opens from the node that named nothing asked for (or kinds never relayed).
    refused: AtomicU64,
}

#[derive(Default)]
struct Inner {
    /// `tcpip-forward` as sent to the node (address string, bound port).
    tcp: HashMap<(String, u32), mpsc::Sender<Accepted>>,
    /// `streamlocal-forward@openssh.com` paths.
    unix: HashMap<String, mpsc::Sender<Accepted>>,
    agents: HashMap<u64, Agent>,
    next_agent: u64,
}

struct Agent {
    tx: mpsc::Sender<Accepted>,
    /// The node accepted `auth-agent-req@openssh.com` on a session channel for this agent.
    armed: bool,
}

/// One entry of [`Forwards`], removed by [`Forwards::remove`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entry {
    Tcp(String, u32),
    Unix(String),
    Agent(u64),
}

impl Forwards {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a listener the node confirmed; its connections go to `tx`.
    pub(crate) fn add(&self, entry: &Entry, tx: mpsc::Sender<Accepted>) {
        let mut inner = self.lock();
        match entry {
            Entry::Tcp(a, p) => {
                inner.tcp.insert((a.clone(), *p), tx);
            }
            Entry::Unix(p) => {
                inner.unix.insert(p.clone(), tx);
            }
            Entry::Agent(id) => {
                inner.agents.insert(*id, Agent { tx, armed: false });
            }
        }
    }

    /// A fresh agent listener (not armed until the node accepts the request) and the token that
    /// stands for it in the session's environment.
    pub(crate) fn add_agent(&self, tx: mpsc::Sender<Accepted>) -> (Entry, String) {
        let mut inner = self.lock();
        inner.next_agent += 1;
        let id = inner.next_agent;
        inner.agents.insert(id, Agent { tx, armed: false });
        (Entry::Agent(id), format!("{AGENT_TOKEN}{id}"))
    }

    /// The agent a session's `SSH_AUTH_SOCK` value stands for, if it is one of ours.
    pub(crate) fn agent_of(&self, value: &str) -> Option<u64> {
        let id: u64 = value.strip_prefix(AGENT_TOKEN)?.parse().ok()?;
        self.lock().agents.contains_key(&id).then_some(id)
    }

    /// The node accepted agent forwarding for agent `id`: its channels may now come in.
    pub(crate) fn arm(&self, id: u64) {
        if let Some(a) = self.lock().agents.get_mut(&id) {
            a.armed = true;
        }
    }

    pub(crate) fn remove(&self, entry: &Entry) {
        let mut inner = self.lock();
        match entry {
            Entry::Tcp(a, p) => {
                inner.tcp.remove(&(a.clone(), *p));
            }
            Entry::Unix(p) => {
                inner.unix.remove(p);
            }
            Entry::Agent(id) => {
                inner.agents.remove(id);
            }
        }
    }

    /// How many channel opens from the node were refused on this hop connection.
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    fn tcp(&self, address: &str, port: u32) -> Option<mpsc::Sender<Accepted>> {
        self.lock().tcp.get(&(address.to_string(), port)).cloned()
    }

    fn unix(&self, path: &str) -> Option<mpsc::Sender<Accepted>> {
        self.lock().unix.get(path).cloned()
    }

    /// Any armed agent: every agent of one connection is the same client's agent.
    fn agent(&self) -> Option<mpsc::Sender<Accepted>> {
        let inner = self.lock();
        inner
            .agents
            .values()
            .find(|a| a.armed && !a.tx.is_closed())
            .map(|a| a.tx.clone())
    }

    /// Counts and logs a refused channel open (the first few per hop connection, then every
    /// power of two, so a node opening channels in a loop cannot flood the log).
    pub(crate) fn refuse(&self, node: &str, kind: &str, reason: &'static str) {
        let n = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        if n <= 4 || n.is_power_of_two() {
            warn!(target: "berth::hop", node, kind, reason, refused = n, "channel from the node refused");
        }
    }

    /// A `forwarded-tcpip`, `forwarded-streamlocal` or `auth-agent` channel the node opened:
    /// `Some(sender)` when it names a listener this connection asked for.
    pub(crate) fn route(&self, open: &Open<'_>) -> Option<mpsc::Sender<Accepted>> {
        match open {
            Open::Tcp { address, port, .. } => self.tcp(address, *port),
            Open::Unix { path } => self.unix(path),
            Open::Agent => self.agent(),
        }
    }
}

/// A channel open from the node, as far as routing needs it.
pub(crate) enum Open<'a> {
    Tcp {
        address: &'a str,
        port: u32,
        origin: &'a str,
        origin_port: u32,
    },
    Unix {
        path: &'a str,
    },
    Agent,
}

impl Open<'_> {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Open::Tcp { .. } => "forwarded-tcpip",
            Open::Unix { .. } => "forwarded-streamlocal",
            Open::Agent => "auth-agent",
        }
    }

    fn peer(&self) -> Option<SocketAddr> {
        match self {
            Open::Tcp {
                origin,
                origin_port,
                ..
            } => {
                let ip: IpAddr = origin.parse().ok()?;
                Some(SocketAddr::new(ip, u16::try_from(*origin_port).ok()?))
            }
            _ => None,
        }
    }
}

/// Accepts or refuses one channel the node opened. Never waits: a full queue is a refusal.
pub(crate) async fn admit(
    forwards: &Forwards,
    node: &str,
    open: Open<'_>,
    channel: Channel<Msg>,
    reply: russh::client::ChannelOpenHandle,
) {
    let Some(tx) = forwards.route(&open) else {
        forwards.refuse(node, open.kind(), "no such listener on this connection");
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        return;
    };
    let Ok(permit) = tx.try_reserve() else {
        forwards.refuse(node, open.kind(), "too many connections queued");
        reply.reject(ChannelOpenFailure::ResourceShortage).await;
        return;
    };
    reply.accept().await;
    let (read, write) = tokio::io::split(channel.into_stream());
    permit.send(Accepted {
        stream: Stream {
            read: Box::new(read),
            write: Box::new(write),
            path: "hop",
        },
        peer: open.peer(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listeners_asked_for_are_routed() {
        let f = Forwards::default();
        let (tx, _rx) = mpsc::channel(QUEUE);
        let tcp = |address, port| Open::Tcp {
            address,
            port,
            origin: "127.0.0.1",
            origin_port: 5,
        };
        assert!(f.route(&tcp("127.0.0.1", 4000)).is_none());
        f.add(&Entry::Tcp("127.0.0.1".into(), 4000), tx.clone());
        assert!(f.route(&tcp("127.0.0.1", 4000)).is_some());
        assert!(f.route(&tcp("127.0.0.1", 4001)).is_none());
        assert!(f.route(&tcp("0.0.0.0", 4000)).is_none());
        f.remove(&Entry::Tcp("127.0.0.1".into(), 4000));
        assert!(f.route(&tcp("127.0.0.1", 4000)).is_none());

        f.add(&Entry::Unix("/tmp/a.sock".into()), tx.clone());
        assert!(
            f.route(&Open::Unix {
                path: "/tmp/a.sock"
            })
            .is_some()
        );
        assert!(
            f.route(&Open::Unix {
                path: "/tmp/b.sock"
            })
            .is_none()
        );
    }

    #[test]
    fn agent_channels_need_an_armed_agent_and_tokens_are_ours_only() {
        let f = Forwards::default();
        let (tx, _rx) = mpsc::channel(QUEUE);
        assert!(f.route(&Open::Agent).is_none());
        let (entry, token) = f.add_agent(tx);
        assert!(
            f.route(&Open::Agent).is_none(),
            "not armed before the node accepted the request"
        );
        let Some(id) = f.agent_of(&token) else {
            panic!("token {token} not recognised");
        };
        assert_eq!(f.agent_of("/tmp/ssh-x/agent.1"), None);
        assert_eq!(f.agent_of(&format!("{AGENT_TOKEN}{}", id + 1)), None);
        f.arm(id);
        assert!(f.route(&Open::Agent).is_some());
        f.remove(&entry);
        assert!(f.route(&Open::Agent).is_none());
        assert_eq!(f.agent_of(&token), None);
    }

    #[test]
    fn refusals_are_counted() {
        let f = Forwards::default();
        for _ in 0..10 {
            f.refuse("n2", "session", "never relayed");
        }
        assert_eq!(f.refused(), 10);
    }
}
