//! fds received from the agent: what we accept, and async wrappers to move bytes through them.
//!
//! The agent runs as the tenant, so every fd it sends is checked before use (the lessons of
//! runc's `checkPtmxHandle` and CVE-2024-21626): a session gets exactly three pipes of the right
//! direction or one PTY master, a forward gets one connected TCP socket to the address we asked
//! for. Directories, `O_PATH` fds, regular files, netlink, pidfds, eventfds and anything else
//! are refused; the refused fd is closed at once.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustix::fs::{FileType, OFlags};
use tokio::io::AsyncWrite;
use tokio::io::unix::AsyncFd;

/// Which end of a pipe the gateway must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipeEnd {
    Read,
    Write,
}

fn refuse(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// The fd's status flags, refusing an `O_PATH` fd: it names a file without opening it, and
/// `fstat` on it reports the file's type, so a type check alone would pass one (a path fd of a
/// FIFO even reads as `O_RDONLY`).
fn opened(fd: &OwnedFd) -> io::Result<OFlags> {
    let fl = rustix::fs::fcntl_getfl(fd)?;
    if fl.contains(OFlags::PATH) {
        return Err(refuse("an O_PATH fd (not an open file)".into()));
    }
    Ok(fl)
}

/// A FIFO opened for `end` (and nothing else: read-write is refused too).
pub fn check_pipe(fd: &OwnedFd, end: PipeEnd) -> io::Result<()> {
    let fl = opened(fd)?;
    let st = rustix::fs::fstat(fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::Fifo {
        return Err(refuse(format!(
            "expected a pipe, got {:?}",
            FileType::from_raw_mode(st.st_mode)
        )));
    }
    let mode = fl & OFlags::RWMODE;
    let ok = match end {
        PipeEnd::Read => mode == OFlags::RDONLY,
        PipeEnd::Write => mode == OFlags::WRONLY,
    };
    if !ok {
        return Err(refuse(format!("pipe open for {mode:?}, wanted {end:?}")));
    }
    Ok(())
}

/// A PTY master open for reading and writing: a character device 5:2 (`ptmx`, of any devpts
/// instance) that answers `TIOCGPTN` (a slave or `/dev/tty` does not).
pub fn check_pty_master(fd: &OwnedFd) -> io::Result<()> {
    let fl = opened(fd)?;
    let st = rustix::fs::fstat(fd)?;
    let rdev = st.st_rdev;
    if FileType::from_raw_mode(st.st_mode) != FileType::CharacterDevice
        || rustix::fs::major(rdev) != 5
        || rustix::fs::minor(rdev) != 2
    {
        return Err(refuse("expected a PTY master (char device 5:2)".into()));
    }
    if fl & OFlags::RWMODE != OFlags::RDWR {
        return Err(refuse("PTY master not open for reading and writing".into()));
    }
    rustix::pty::ptsname(fd, Vec::new()).map_err(|e| refuse(format!("not a PTY master: {e}")))?;
    Ok(())
}

/// A connected TCP stream socket whose peer is `want`.
pub fn check_tcp(fd: &OwnedFd, want: SocketAddr) -> io::Result<()> {
    opened(fd)?;
    let st = rustix::fs::fstat(fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::Socket {
        return Err(refuse("expected a socket".into()));
    }
    if rustix::net::sockopt::socket_type(fd)? != rustix::net::SocketType::STREAM {
        return Err(refuse("expected a stream socket".into()));
    }
    let domain = rustix::net::sockopt::socket_domain(fd)?;
    if domain != rustix::net::AddressFamily::INET && domain != rustix::net::AddressFamily::INET6 {
        return Err(refuse("expected a TCP socket".into()));
    }
    let peer = rustix::net::getpeername(fd)?
        .and_then(|a| SocketAddr::try_from(a).ok())
        .ok_or_else(|| refuse("socket is not connected".into()))?;
    // IPv4-mapped peers on a dual-stack socket compare by their IPv4 form.
    let canon = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    if canon(peer) != canon(want) {
        return Err(refuse(format!("socket connected to {peer}, wanted {want}")));
    }
    Ok(())
}

/// A stream socket of `family`: the common part of the socket checks.
fn check_stream_socket(fd: &OwnedFd, unix: bool) -> io::Result<()> {
    opened(fd)?;
    let st = rustix::fs::fstat(fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::Socket {
        return Err(refuse("expected a socket".into()));
    }
    if rustix::net::sockopt::socket_type(fd)? != rustix::net::SocketType::STREAM {
        return Err(refuse("expected a stream socket".into()));
    }
    let domain = rustix::net::sockopt::socket_domain(fd)?;
    let ok = if unix {
        domain == rustix::net::AddressFamily::UNIX
    } else {
        domain == rustix::net::AddressFamily::INET || domain == rustix::net::AddressFamily::INET6
    };
    if !ok {
        return Err(refuse(format!(
            "expected a {} socket",
            if unix { "unix" } else { "TCP" }
        )));
    }
    Ok(())
}

/// A listening TCP socket bound to `want` (port 0 in `want`: any port). Returns where it is bound.
pub fn check_tcp_listener(fd: &OwnedFd, want: SocketAddr) -> io::Result<SocketAddr> {
    check_stream_socket(fd, false)?;
    if !rustix::net::sockopt::socket_acceptconn(fd)? {
        return Err(refuse("expected a listening socket".into()));
    }
    let local = rustix::net::getsockname(fd)
        .ok()
        .and_then(|a| SocketAddr::try_from(a).ok())
        .ok_or_else(|| refuse("listening socket has no address".into()))?;
    if local.ip().to_canonical() != want.ip().to_canonical()
        || (want.port() != 0 && local.port() != want.port())
        || local.port() == 0
    {
        return Err(refuse(format!("socket bound to {local}, wanted {want}")));
    }
    Ok(local)
}

/// A listening unix stream socket.
pub fn check_unix_listener(fd: &OwnedFd) -> io::Result<()> {
    check_stream_socket(fd, true)?;
    if !rustix::net::sockopt::socket_acceptconn(fd)? {
        return Err(refuse("expected a listening socket".into()));
    }
    Ok(())
}

/// A connected (not listening) unix stream socket.
pub fn check_unix_stream(fd: &OwnedFd) -> io::Result<()> {
    check_stream_socket(fd, true)?;
    if rustix::net::sockopt::socket_acceptconn(fd)? {
        return Err(refuse(
            "expected a connected socket, got a listening one".into(),
        ));
    }
    // A connecting or unconnected socket has no peer.
    rustix::net::getpeername(fd).map_err(|e| refuse(format!("socket is not connected: {e}")))?;
    Ok(())
}

/// Registers `fd` with tokio's reactor. `AsyncFd::new` is deprecated in favour of an `unsafe`
/// `register` whose condition is that the fd stays the same open file while registered: an
/// `OwnedFd` owned by the `AsyncFd` guarantees exactly that, so the safe form is kept here, in
/// one place.
#[allow(deprecated)]
pub fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    AsyncFd::new(fd)
}

/// Makes `fd` non-blocking (its open file description: the agent has closed its copy).
pub fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    let fl = rustix::fs::fcntl_getfl(fd)?;
    rustix::fs::fcntl_setfl(fd, fl | OFlags::NONBLOCK)?;
    Ok(())
}

/// Grows a pipe's buffer (fewer wake-ups per byte); best effort.
pub fn grow_pipe(fd: &OwnedFd) {
    let _ = rustix::pipe::fcntl_setpipe_size(fd, 1 << 20)
        .or_else(|_| rustix::pipe::fcntl_setpipe_size(fd, 256 << 10));
}

/// A PTY master shared by the reader and the writer of one session.
#[derive(Clone)]
pub struct Pty(Arc<AsyncFd<OwnedFd>>);

impl Pty {
    pub fn new(master: OwnedFd) -> io::Result<Self> {
        set_nonblocking(&master)?;
        Ok(Self(Arc::new(register(master)?)))
    }

    /// TIOCSWINSZ: the kernel sends SIGWINCH to the terminal's foreground group.
    pub fn resize(&self, cols: u32, rows: u32) {
        let ws = rustix::termios::Winsize {
            ws_col: u16::try_from(cols).unwrap_or(u16::MAX).max(1),
            ws_row: u16::try_from(rows).unwrap_or(u16::MAX).max(1),
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let _ = rustix::termios::tcsetwinsize(self.0.get_ref(), ws);
    }

    /// What the terminal printed; `None` once every slave is closed (EIO on Linux). The buffer
    /// is allocated only once data is ready, so an idle terminal holds none.
    pub async fn read_chunk(&self) -> io::Result<Option<bytes::Bytes>> {
        loop {
            let mut guard = self.0.readable().await?;
            let mut buf = vec![0u8; 16 * 1024];
            match guard
                .try_io(|fd| rustix::io::read(fd.get_ref(), &mut buf[..]).map_err(io::Error::from))
            {
                Ok(Ok(0)) => return Ok(None),
                Ok(Ok(n)) => {
                    buf.truncate(n);
                    return Ok(Some(bytes::Bytes::from(buf)));
                }
                Ok(Err(e)) if e.raw_os_error() == Some(rustix::io::Errno::IO.raw_os_error()) => {
                    return Ok(None);
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for Pty {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.poll_write_ready(cx))?;
            match guard
                .try_io(|fd| rustix::io::write(fd.get_ref().as_fd(), buf).map_err(io::Error::from))
            {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// A terminal has no half-close: the client's EOF leaves it open (sshd does the same).
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pipes_must_face_the_right_way() {
        let (r, w) = rustix::pipe::pipe().unwrap();
        assert!(check_pipe(&r, PipeEnd::Read).is_ok());
        assert!(check_pipe(&w, PipeEnd::Write).is_ok());
        assert!(check_pipe(&r, PipeEnd::Write).is_err());
        assert!(check_pipe(&w, PipeEnd::Read).is_err());
    }

    #[test]
    fn files_dirs_and_sockets_are_not_pipes_or_ptys() {
        let dir = OwnedFd::from(std::fs::File::open("/").unwrap());
        let file = OwnedFd::from(std::fs::File::open("/proc/self/status").unwrap());
        let null = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let (a, _b) = berth_agent::seqpacket_pair().unwrap();
        for fd in [&dir, &file, &null, &a] {
            assert!(check_pipe(fd, PipeEnd::Read).is_err());
            assert!(check_pty_master(fd).is_err());
            assert!(check_tcp(fd, "127.0.0.1:1".parse().unwrap()).is_err());
        }
    }

    #[test]
    fn a_pty_master_passes_and_its_slave_does_not() {
        use rustix::pty::OpenptFlags;
        let flags = OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC;
        let master = rustix::pty::openpt(flags).unwrap();
        rustix::pty::grantpt(&master).unwrap();
        rustix::pty::unlockpt(&master).unwrap();
        let slave = rustix::pty::ioctl_tiocgptpeer(&master, flags).unwrap();
        assert!(check_pty_master(&master).is_ok());
        assert!(check_pty_master(&slave).is_err());
    }

    /// An `O_PATH` fd of `fd`'s file, as a hostile agent can make one (`/proc/self/fd/N`).
    fn path_fd(fd: &OwnedFd) -> OwnedFd {
        use std::os::fd::AsRawFd;
        rustix::fs::open(
            format!("/proc/self/fd/{}", fd.as_raw_fd()),
            OFlags::PATH | OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .unwrap()
    }

    #[test]
    fn o_path_fds_are_refused_by_the_checks_themselves() {
        let (r, w) = rustix::pipe::pipe().unwrap();
        let pr = path_fd(&r);
        // What a type check alone would see: a FIFO whose access mode reads as read-only.
        assert_eq!(
            FileType::from_raw_mode(rustix::fs::fstat(&pr).unwrap().st_mode),
            FileType::Fifo
        );
        assert_eq!(
            rustix::fs::fcntl_getfl(&pr).unwrap() & OFlags::RWMODE,
            OFlags::RDONLY
        );
        assert!(check_pipe(&pr, PipeEnd::Read).is_err());
        assert!(check_pipe(&path_fd(&w), PipeEnd::Write).is_err());
        let ptmx = rustix::fs::open(
            "/dev/ptmx",
            OFlags::PATH | OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        assert!(check_pty_master(&ptmx).is_err());
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let s = OwnedFd::from(std::net::TcpStream::connect(addr).unwrap());
        if let Ok(ps) = rustix::fs::open(
            format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&s)),
            OFlags::PATH | OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        ) {
            assert!(check_tcp(&ps, addr).is_err());
        }
    }

    #[test]
    fn a_read_write_fifo_is_not_a_pipe_end() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &p,
            FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let rw = OwnedFd::from(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&p)
                .unwrap(),
        );
        assert!(check_pipe(&rw, PipeEnd::Read).is_err());
        assert!(check_pipe(&rw, PipeEnd::Write).is_err());
    }

    #[test]
    fn sockets_are_not_pipes() {
        let (a, _b) = rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::STREAM,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        assert!(check_pipe(&a, PipeEnd::Read).is_err());
        assert!(check_pipe(&a, PipeEnd::Write).is_err());
    }

    #[test]
    fn tcp_peer_must_match() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let s = OwnedFd::from(std::net::TcpStream::connect(addr).unwrap());
        assert!(check_tcp(&s, addr).is_ok());
        let other = SocketAddr::new(addr.ip(), addr.port().wrapping_add(1));
        assert!(check_tcp(&s, other).is_err());
    }
}
