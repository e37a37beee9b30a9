//! The wire between the gateway and `berth-agent`, the small program that runs inside a tenant
//! container and starts that tenant's session processes.
//!
//! Why an agent at all: Docker's exec attach stream (CLI → dockerd → containerd-shim → process)
//! moves bytes slower than OpenSSH moves them end to end. The agent, started once per container
//! through a Docker exec (so runc applies the container's user, capabilities, seccomp and cgroup),
//! spawns each session's process and hands the gateway the kernel objects — stdio pipes, a PTY
//! master, a connected TCP socket — by `SCM_RIGHTS`. The gateway then moves bytes between the
//! SSH channel and those fds, the path sshd uses.
//!
//! Transport: a `SOCK_SEQPACKET` unix socket (message boundaries kept, fds travel with the
//! message that names them). Messages are JSON objects of at most [`MAX_MESSAGE`] bytes. The
//! gateway listens, the agent connects and must first present the token it was started with.
//!
//! Trust: the agent runs as the tenant, so the gateway treats every message and every fd from it
//! as hostile input (see `gateway::docker::agent`). fds only ever move from the agent to the
//! gateway, never the other way.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};

/// Bumped on any incompatible change of [`Request`] or [`Reply`].
pub const PROTOCOL_VERSION: u32 = 2;

/// Largest message either side sends or accepts.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// Most fds one message carries (a pipe session: stdin, stdout, stderr).
pub const MAX_FDS: usize = 3;

/// Where the per-container socket directory is mounted inside the container.
pub const CONTAINER_DIR: &str = "/dev/berth";

/// The gateway's listening socket, inside [`CONTAINER_DIR`] (and inside the host directory that
/// is mounted there).
pub const SOCKET_NAME: &str = "gw.sock";

/// How long the agent tries to connect a forward before it answers with an error. Shorter
/// than the gateway's wait for any reply, so an honest slow connect is never taken for a stuck
/// agent (the gateway asserts the order at compile time).
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Longest unix socket path a request may name (`sun_path` holds 108 bytes with its NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Environment variable carrying the one-time token (never passed on to session processes).
pub const TOKEN_ENV: &str = "BERTH_AGENT_TOKEN";

/// Terminal size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Winsize {
    pub cols: u16,
    pub rows: u16,
}

/// Gateway → agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Request {
    /// Start `argv` in a new session (`setsid`), with `env` on top of the agent's own
    /// environment. With `pty`, stdio is a new terminal and the reply carries its master; else
    /// three pipes (stdin write end, stdout and stderr read ends).
    Spawn {
        id: u32,
        argv: Vec<String>,
        env: Vec<(String, String)>,
        cwd: Option<String>,
        pty: Option<Winsize>,
    },
    /// Deliver a signal to the session's process group.
    Signal { id: u32, signal: i32 },
    /// The client went away: SIGHUP to the session, SIGKILL to its process group one second
    /// later if the leader is still alive. Processes the tenant detached (`setsid`) are spared.
    Hangup { id: u32 },
    /// Connect to `ip:port` from inside the container's network namespace; the reply carries the
    /// connected socket.
    Connect { id: u32, ip: IpAddr, port: u16 },
    /// Listen on `ip:port` (0: any free port) inside the container's network namespace; the
    /// reply ([`Reply::Listening`]) carries the listening socket, on which the gateway accepts.
    Listen { id: u32, ip: IpAddr, port: u16 },
    /// Connect to the unix socket at `path`, as the agent's (the session's) user; the reply
    /// ([`Reply::Connected`]) carries the connected socket.
    ConnectUnix { id: u32, path: String },
    /// Listen on a unix socket as the agent's user: at `path`, or (`None`) in a fresh private
    /// directory (mode 0700) as a socket of mode 0600, for agent forwarding. The reply
    /// ([`Reply::ListeningUnix`]) carries the listening socket and names its path.
    ListenUnix { id: u32, path: Option<String> },
    /// Remove a socket this agent created with [`Request::ListenUnix`] (and its private
    /// directory); any other path is ignored. No reply.
    Unlink { path: String },
}

/// Agent → gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Reply {
    /// First message on a connection.
    Hello { version: u32, token: String },
    /// The session process runs (fds attached: see [`Request::Spawn`]).
    Spawned { id: u32, pid: u32 },
    /// A spawn or connect failed.
    Failed { id: u32, error: String },
    /// The session's leader ended: `status` when it exited, `signal` when a signal killed it.
    Exited {
        id: u32,
        status: Option<i32>,
        signal: Option<i32>,
    },
    /// The forward is connected (one fd attached: the socket).
    Connected { id: u32 },
    /// A TCP listener is bound (one fd attached: the listening socket) on `port`.
    Listening { id: u32, port: u16 },
    /// A unix listener is bound at `path` (one fd attached: the listening socket).
    ListeningUnix { id: u32, path: String },
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("agent socket: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection.
    #[error("agent socket closed")]
    Closed,
    /// Larger than [`MAX_MESSAGE`], more fds than the receiver allows, or not JSON we know.
    #[error("malformed agent message: {0}")]
    Malformed(String),
}

impl From<rustix::io::Errno> for WireError {
    fn from(e: rustix::io::Errno) -> Self {
        WireError::Io(e.into())
    }
}

/// Sends one message with `fds` attached (SCM_RIGHTS). On a non-blocking socket this returns
/// `WouldBlock` like any send.
pub fn send<T: Serialize>(
    sock: BorrowedFd<'_>,
    msg: &T,
    fds: &[BorrowedFd<'_>],
) -> Result<(), WireError> {
    let bytes = serde_json::to_vec(msg).map_err(|e| WireError::Malformed(e.to_string()))?;
    send_raw(sock, &bytes, fds)
}

/// [`send`] for bytes already encoded (tests use it to send garbage).
pub fn send_raw(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> Result<(), WireError> {
    if bytes.len() > MAX_MESSAGE {
        return Err(WireError::Malformed(format!(
            "{} bytes is over the {MAX_MESSAGE}-byte limit",
            bytes.len()
        )));
    }
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(WireError::Malformed(format!(
            "{} fds is too many",
            fds.len()
        )));
    }
    let n = rustix::net::sendmsg(
        sock,
        &[IoSlice::new(bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    if n != bytes.len() {
        return Err(WireError::Malformed(
            "short send on a seqpacket socket".into(),
        ));
    }
    Ok(())
}

/// One received message: its bytes and the fds that came with it (close-on-exec).
#[derive(Debug)]
pub struct Received {
    pub bytes: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

/// Receives one message. Oversized messages and messages with more than `max_fds` fds are an
/// error (every fd that did arrive is closed); the kernel closes fds beyond the control buffer.
pub fn recv(sock: BorrowedFd<'_>, max_fds: usize) -> Result<Received, WireError> {
    let mut buf = vec![0u8; MAX_MESSAGE + 1];
    let (n, fds) = recv_into(sock, max_fds, &mut buf)?;
    buf.truncate(n);
    Ok(Received { bytes: buf, fds })
}

/// [`recv`] into a buffer the caller keeps (and reuses): the message's length and its fds. A
/// message that does not fit `buf` (or is over [`MAX_MESSAGE`]) is refused as oversized, so a
/// smaller buffer is a smaller limit.
pub fn recv_into(
    sock: BorrowedFd<'_>,
    max_fds: usize,
    buf: &mut [u8],
) -> Result<(usize, Vec<OwnedFd>), WireError> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let r = rustix::net::recvmsg(
        sock,
        &mut [IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(iter) = m {
            fds.extend(iter);
        }
    }
    if r.bytes == 0 && fds.is_empty() {
        return Err(WireError::Closed);
    }
    if r.flags.contains(ReturnFlags::CTRUNC) || fds.len() > max_fds {
        return Err(WireError::Malformed(format!(
            "too many fds (at most {max_fds} expected)"
        )));
    }
    if r.flags.contains(ReturnFlags::TRUNC) || r.bytes > MAX_MESSAGE {
        return Err(WireError::Malformed(format!(
            "message over the {}-byte limit",
            MAX_MESSAGE.min(buf.len())
        )));
    }
    Ok((r.bytes, fds))
}

/// Decodes a message received with [`recv`].
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, WireError> {
    serde_json::from_slice(bytes).map_err(|e| WireError::Malformed(e.to_string()))
}

/// A connected `SOCK_SEQPACKET` pair (tests, and nothing else).
pub fn seqpacket_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Borrows a list of owned fds for [`send`].
pub fn borrow_all(fds: &[OwnedFd]) -> Vec<BorrowedFd<'_>> {
    fds.iter().map(|f| f.as_fd()).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_with_fds() {
        let (a, b) = seqpacket_pair().unwrap();
        let (r, w) = rustix::pipe::pipe().unwrap();
        let msg = Reply::Spawned { id: 7, pid: 42 };
        send(a.as_fd(), &msg, &[r.as_fd(), w.as_fd()]).unwrap();
        let got = recv(b.as_fd(), 3).unwrap();
        assert_eq!(decode::<Reply>(&got.bytes).unwrap(), msg);
        assert_eq!(got.fds.len(), 2);
    }

    #[test]
    fn too_many_fds_and_garbage_are_refused() {
        let (a, b) = seqpacket_pair().unwrap();
        let (r, w) = rustix::pipe::pipe().unwrap();
        send(
            a.as_fd(),
            &Reply::Connected { id: 1 },
            &[r.as_fd(), w.as_fd()],
        )
        .unwrap();
        assert!(matches!(recv(b.as_fd(), 1), Err(WireError::Malformed(_))));
        send_raw(a.as_fd(), b"{not json", &[]).unwrap();
        let got = recv(b.as_fd(), 1).unwrap();
        assert!(decode::<Reply>(&got.bytes).is_err());
        drop(a);
        assert!(matches!(recv(b.as_fd(), 1), Err(WireError::Closed)));
    }

    #[test]
    fn a_reused_buffer_bounds_and_carries_each_message() {
        let (a, b) = seqpacket_pair().unwrap();
        let mut buf = vec![0u8; 64];
        send(a.as_fd(), &Reply::Connected { id: 1 }, &[]).unwrap();
        send(a.as_fd(), &Reply::Spawned { id: 2, pid: 3 }, &[]).unwrap();
        let (n, _) = recv_into(b.as_fd(), 0, &mut buf).unwrap();
        assert_eq!(
            decode::<Reply>(&buf[..n]).unwrap(),
            Reply::Connected { id: 1 }
        );
        let (n, _) = recv_into(b.as_fd(), 0, &mut buf).unwrap();
        assert_eq!(
            decode::<Reply>(&buf[..n]).unwrap(),
            Reply::Spawned { id: 2, pid: 3 }
        );
        send_raw(a.as_fd(), &[b' '; 65], &[]).unwrap();
        assert!(matches!(
            recv_into(b.as_fd(), 0, &mut buf),
            Err(WireError::Malformed(_))
        ));
    }

    #[test]
    fn oversized_is_refused_on_both_sides() {
        let (a, _b) = seqpacket_pair().unwrap();
        let big = vec![b'x'; MAX_MESSAGE + 1];
        assert!(matches!(
            send_raw(a.as_fd(), &big, &[]),
            Err(WireError::Malformed(_))
        ));
    }

    #[test]
    fn wire_format_is_tagged_json() {
        let s = serde_json::to_string(&Request::Signal { id: 3, signal: 2 }).unwrap();
        assert_eq!(s, r#"{"t":"signal","id":3,"signal":2}"#);
    }
}
