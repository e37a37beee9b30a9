//! `berth-agent`: started by the gateway through a Docker exec, as the tenant's user, once per
//! container. It connects to the gateway's socket in `/dev/berth`, proves it is the process the
//! gateway started (the token from its environment), then serves requests until the gateway
//! closes the connection: spawn a session process, signal it, hang it up, connect a forward.
//!
//! Blocking std code and a few threads on purpose: the binary is static, small, and has one
//! connection to serve. Main thread: requests. One reaper thread: `waitpid` and `Exited`
//! replies. Forward connects: one short-lived thread each (bounded).
//!
//! `berth-agent --session [--tty] -- ARGV…` is the trampoline each session process starts as:
//! it becomes a session leader (and takes the terminal), then execs ARGV in place.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use berth_agent::{
    CONNECT_TIMEOUT, CONTAINER_DIR, PROTOCOL_VERSION, Reply, Request, SOCKET_NAME, TOKEN_ENV,
};
use rustix::process::{Pid, Signal};

/// Sessions one agent serves at once.
const MAX_SESSIONS: usize = 1024;
/// Forward connects in flight at once.
const MAX_CONNECTS: usize = 64;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "--session") {
        return trampoline(&args[2..]);
    }
    if args.get(1).is_some_and(|a| a == "--version") {
        println!(
            "berth-agent {} protocol {PROTOCOL_VERSION}",
            env!("CARGO_PKG_VERSION")
        );
        return ExitCode::SUCCESS;
    }
    let path = args
        .get(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(CONTAINER_DIR).join(SOCKET_NAME));
    match serve(&path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth-agent: {e}");
            ExitCode::from(1)
        }
    }
}

/// The session process before it becomes the tenant's program.
fn trampoline(args: &[OsString]) -> ExitCode {
    let mut tty = false;
    let mut rest = args;
    while let Some(a) = rest.first() {
        if a == "--tty" {
            tty = true;
        } else if a == "--" {
            rest = &rest[1..];
            break;
        }
        rest = &rest[1..];
    }
    let Some(program) = rest.first() else {
        eprintln!("berth-agent: --session needs a program");
        return ExitCode::from(127);
    };
    if let Err(e) = rustix::process::setsid() {
        eprintln!("berth-agent: setsid: {e}");
    }
    if tty && let Err(e) = rustix::process::ioctl_tiocsctty(std::io::stdin()) {
        eprintln!("berth-agent: cannot take the terminal: {e}");
    }
    // `exec` only returns on failure; the shell's codes: 127 not found, 126 not executable.
    let e = Command::new(program).args(&rest[1..]).exec();
    let _ = writeln!(
        std::io::stderr(),
        "berth: {}: {e}",
        program.to_string_lossy()
    );
    ExitCode::from(if e.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    })
}

struct State {
    sock: OwnedFd,
    /// Base environment of every session: the agent's own minus the token.
    env: Vec<(OsString, OsString)>,
    /// Session id → leader pid, until the leader is reaped.
    sessions: Mutex<HashMap<u32, u32>>,
    /// Children not yet reaped; the reaper sleeps while it is 0.
    children: Mutex<usize>,
    child_cv: Condvar,
    connects: AtomicUsize,
    /// Unix sockets this agent bound (path → inside a private directory of its own), the only
    /// paths [`Request::Unlink`] removes.
    bound: Mutex<HashMap<String, bool>>,
}

impl State {
    fn reply(&self, msg: &Reply, fds: &[OwnedFd]) {
        // A failed send means the gateway is gone; the request loop notices and hangs up.
        let _ = berth_agent::send(self.sock.as_fd(), msg, &berth_agent::borrow_all(fds));
    }
}

fn serve(path: &std::path::Path) -> Result<(), String> {
    let token = std::env::var(TOKEN_ENV).map_err(|_| format!("{TOKEN_ENV} is not set"))?;
    let env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| k != TOKEN_ENV)
        .collect();
    let sock = rustix::net::socket_with(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| format!("socket: {e}"))?;
    let addr =
        rustix::net::SocketAddrUnix::new(path).map_err(|e| format!("{}: {e}", path.display()))?;
    rustix::net::connect(&sock, &addr).map_err(|e| format!("connect {}: {e}", path.display()))?;
    let state = Arc::new(State {
        sock,
        env,
        sessions: Mutex::new(HashMap::new()),
        children: Mutex::new(0),
        child_cv: Condvar::new(),
        connects: AtomicUsize::new(0),
        bound: Mutex::new(HashMap::new()),
    });
    state.reply(
        &Reply::Hello {
            version: PROTOCOL_VERSION,
            token,
        },
        &[],
    );
    {
        let state = state.clone();
        std::thread::spawn(move || reaper(&state));
    }
    // One receive buffer, reused for every request.
    let mut buf = vec![0u8; berth_agent::MAX_MESSAGE + 1];
    loop {
        let n = match berth_agent::recv_into(state.sock.as_fd(), 0, &mut buf) {
            Ok((n, _)) => n,
            Err(berth_agent::WireError::Malformed(e)) => {
                eprintln!("berth-agent: {e}");
                continue;
            }
            Err(_) => break,
        };
        match berth_agent::decode::<Request>(&buf[..n]) {
            Ok(req) => handle(&state, req),
            Err(e) => eprintln!("berth-agent: {e}"),
        }
    }
    // The gateway is gone: hang up every session as sshd's death would.
    let ids: Vec<u32> = lock(&state.sessions).keys().copied().collect();
    for id in ids {
        hangup(&state, id);
    }
    std::thread::sleep(Duration::from_millis(1100));
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn handle(state: &Arc<State>, req: Request) {
    match req {
        Request::Spawn {
            id,
            argv,
            env,
            cwd,
            pty,
        } => {
            if let Err(error) = spawn(state, id, &argv, &env, cwd.as_deref(), pty) {
                state.reply(&Reply::Failed { id, error }, &[]);
            }
        }
        Request::Signal { id, signal } => {
            let pid = lock(&state.sessions).get(&id).copied();
            if let (Some(pid), Some(sig)) = (pid.and_then(pid_of), Signal::from_named_raw(signal))
                && rustix::process::kill_process_group(pid, sig).is_err()
            {
                let _ = rustix::process::kill_process(pid, sig);
            }
        }
        Request::Hangup { id } => hangup(state, id),
        Request::Connect { id, ip, port } => {
            if state.connects.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTS {
                state.connects.fetch_sub(1, Ordering::SeqCst);
                state.reply(
                    &Reply::Failed {
                        id,
                        error: "too many connects in flight".into(),
                    },
                    &[],
                );
                return;
            }
            let state = state.clone();
            std::thread::spawn(move || {
                match std::net::TcpStream::connect_timeout(
                    &SocketAddr::new(ip, port),
                    CONNECT_TIMEOUT,
                ) {
                    Ok(s) => state.reply(&Reply::Connected { id }, &[OwnedFd::from(s)]),
                    Err(e) => state.reply(
                        &Reply::Failed {
                            id,
                            error: e.to_string(),
                        },
                        &[],
                    ),
                }
                state.connects.fetch_sub(1, Ordering::SeqCst);
            });
        }
        Request::Listen { id, ip, port } => match listen_tcp(ip, port) {
            Ok((port, fd)) => state.reply(&Reply::Listening { id, port }, &[fd]),
            Err(error) => state.reply(&Reply::Failed { id, error }, &[]),
        },
        Request::ConnectUnix { id, path } => match connect_unix(&path) {
            Ok(fd) => state.reply(&Reply::Connected { id }, &[fd]),
            Err(error) => state.reply(&Reply::Failed { id, error }, &[]),
        },
        Request::ListenUnix { id, path } => match listen_unix(state, path.as_deref()) {
            Ok((path, fd)) => state.reply(&Reply::ListeningUnix { id, path }, &[fd]),
            Err(error) => state.reply(&Reply::Failed { id, error }, &[]),
        },
        Request::Unlink { path } => unlink(state, &path),
    }
}

/// Binds a TCP listener inside the container's network namespace.
fn listen_tcp(ip: std::net::IpAddr, port: u16) -> Result<(u16, OwnedFd), String> {
    let l = std::net::TcpListener::bind(SocketAddr::new(ip, port)).map_err(|e| e.to_string())?;
    let port = l.local_addr().map_err(|e| e.to_string())?.port();
    Ok((port, OwnedFd::from(l)))
}

/// Connects to a unix socket without blocking: a listener whose backlog is full answers at once
/// (`EAGAIN`) instead of holding the request past the gateway's patience.
fn connect_unix(path: &str) -> Result<OwnedFd, String> {
    let sock = rustix::net::socket_with(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::STREAM,
        rustix::net::SocketFlags::CLOEXEC | rustix::net::SocketFlags::NONBLOCK,
        None,
    )
    .map_err(|e| format!("socket: {e}"))?;
    let addr = rustix::net::SocketAddrUnix::new(path).map_err(|e| e.to_string())?;
    match rustix::net::connect(&sock, &addr) {
        Ok(()) => Ok(sock),
        Err(rustix::io::Errno::AGAIN) => Err("the socket accepts no more connections".into()),
        Err(e) => Err(std::io::Error::from(e).to_string()),
    }
}

/// A name no other process guessed: 10 characters from /dev/urandom.
fn random_name() -> Result<String, String> {
    use std::io::Read;
    let mut b = [0u8; 10];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    Ok(b.iter()
        .map(|x| ALPHABET[usize::from(*x) % ALPHABET.len()] as char)
        .collect())
}

/// Binds a unix listener at `path`, or in a fresh private directory (0700, socket 0600).
fn listen_unix(state: &State, path: Option<&str>) -> Result<(String, OwnedFd), String> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let (path, private) = match path {
        Some(p) => (p.to_string(), false),
        None => {
            let mut made = None;
            for _ in 0..8 {
                let dir = format!("/tmp/ssh-{}", random_name()?);
                match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                    Ok(()) => {
                        made = Some(dir);
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(format!("{dir}: {e}")),
                }
            }
            let dir = made.ok_or("no fresh directory under /tmp")?;
            (format!("{dir}/agent.{}", std::process::id()), true)
        }
    };
    if path.len() > berth_agent::MAX_SOCKET_PATH {
        return Err("socket path too long".into());
    }
    let l = match std::os::unix::net::UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            if private && let Some(dir) = std::path::Path::new(&path).parent() {
                let _ = std::fs::remove_dir(dir);
            }
            return Err(format!("{path}: {e}"));
        }
    };
    if private {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("{path}: {e}"))?;
    }
    let mut bound = lock(&state.bound);
    if bound.len() < 4096 {
        bound.insert(path.clone(), private);
    }
    Ok((path, OwnedFd::from(l)))
}

fn unlink(state: &State, path: &str) {
    let Some(private) = lock(&state.bound).remove(path) else {
        return;
    };
    let _ = std::fs::remove_file(path);
    if private && let Some(dir) = std::path::Path::new(path).parent() {
        let _ = std::fs::remove_dir(dir);
    }
}

fn pid_of(pid: u32) -> Option<Pid> {
    Pid::from_raw(i32::try_from(pid).ok()?)
}

fn spawn(
    state: &State,
    id: u32,
    argv: &[String],
    env: &[(String, String)],
    cwd: Option<&str>,
    pty: Option<berth_agent::Winsize>,
) -> Result<(), String> {
    if argv.is_empty() {
        return Err("empty argv".into());
    }
    // Held until the pid is recorded, so the reaper cannot reap a fast exit before it knows
    // whose it is.
    let mut sessions = lock(&state.sessions);
    if sessions.contains_key(&id) {
        return Err(format!("session id {id} is in use"));
    }
    if sessions.len() >= MAX_SESSIONS {
        return Err("too many sessions".into());
    }
    // The running image itself, not the path it was started from: another gateway process
    // starting its own agent in this container uploads the binary again, which replaces the
    // file (the old path then names a deleted file and spawning it fails with ENOENT).
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg("--session");
    if pty.is_some() {
        cmd.arg("--tty");
    }
    cmd.arg("--").args(argv);
    cmd.env_clear().envs(state.env.iter().map(|(k, v)| (k, v)));
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let ours: Vec<OwnedFd> = match pty {
        Some(ws) => {
            use rustix::pty::OpenptFlags;
            let err = |what: &str, e: rustix::io::Errno| format!("{what}: {e}");
            let master =
                rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
                    .map_err(|e| err("open /dev/ptmx", e))?;
            rustix::pty::grantpt(&master).map_err(|e| err("grantpt", e))?;
            rustix::pty::unlockpt(&master).map_err(|e| err("unlockpt", e))?;
            let slave = rustix::pty::ioctl_tiocgptpeer(
                &master,
                OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC,
            )
            .map_err(|e| err("open the terminal", e))?;
            let _ = rustix::termios::tcsetwinsize(
                &slave,
                rustix::termios::Winsize {
                    ws_row: ws.rows,
                    ws_col: ws.cols,
                    ws_xpixel: 0,
                    ws_ypixel: 0,
                },
            );
            let dup = |f: &OwnedFd| f.try_clone().map_err(|e| format!("dup: {e}"));
            cmd.stdin(Stdio::from(dup(&slave)?))
                .stdout(Stdio::from(dup(&slave)?))
                .stderr(Stdio::from(slave));
            vec![master]
        }
        None => {
            let pipe = || {
                rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                    .map_err(|e| format!("pipe: {e}"))
            };
            let (in_r, in_w) = pipe()?;
            let (out_r, out_w) = pipe()?;
            let (err_r, err_w) = pipe()?;
            cmd.stdin(Stdio::from(in_r))
                .stdout(Stdio::from(out_w))
                .stderr(Stdio::from(err_w));
            vec![in_w, out_r, err_r]
        }
    };
    let child = cmd.spawn().map_err(|e| format!("spawn {}: {e}", argv[0]))?;
    // Counted once it exists (a reaper woken earlier would find no child and go back to sleep);
    // an exit before this is a zombie the reaper collects when it wakes.
    *lock(&state.children) += 1;
    state.child_cv.notify_one();
    // The child's ends of the pipes / the terminal slave live in `cmd`: close them here so EOF
    // reaches the gateway when the session's processes close theirs.
    drop(cmd);
    let pid = child.id();
    sessions.insert(id, pid);
    drop(sessions);
    state.reply(&Reply::Spawned { id, pid }, &ours);
    Ok(())
}

fn hangup(state: &Arc<State>, id: u32) {
    let Some(raw) = lock(&state.sessions).get(&id).copied() else {
        return;
    };
    let Some(pid) = pid_of(raw) else { return };
    let _ = rustix::process::kill_process_group(pid, Signal::HUP);
    for p in session_members(raw) {
        if let Some(p) = pid_of(p) {
            let _ = rustix::process::kill_process(p, Signal::HUP);
        }
    }
    let state = state.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        if lock(&state.sessions).get(&id) == Some(&raw) {
            let _ = rustix::process::kill_process_group(pid, Signal::KILL);
        }
    });
}

/// Processes of session `sid` (the container's own /proc; bounded).
fn session_members(sid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in dir.flatten().take(65536) {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if stat_session(&stat) == Some(sid) && pid != sid {
            out.push(pid);
        }
    }
    out
}

/// Field 6 (session) of /proc/PID/stat; the command name may contain spaces and parentheses.
fn stat_session(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(3)?.parse().ok()
}

fn reaper(state: &State) {
    loop {
        {
            let mut n = lock(&state.children);
            while *n == 0 {
                n = state.child_cv.wait(n).unwrap_or_else(|p| p.into_inner());
            }
        }
        // `wait` is waitpid(-1): `waitpid(None)` would be waitpid(0), our own process group only,
        // and every session leader is in a group of its own.
        let r = rustix::process::wait(rustix::process::WaitOptions::empty());
        match r {
            Ok(Some((pid, status))) => {
                {
                    let mut n = lock(&state.children);
                    *n = n.saturating_sub(1);
                }
                let raw = pid.as_raw_nonzero().get() as u32;
                let id = {
                    let mut sessions = lock(&state.sessions);
                    let id = sessions.iter().find(|(_, p)| **p == raw).map(|(i, _)| *i);
                    if let Some(i) = id {
                        sessions.remove(&i);
                    }
                    id
                };
                if let Some(id) = id {
                    state.reply(
                        &Reply::Exited {
                            id,
                            status: status.exit_status(),
                            signal: status.terminating_signal(),
                        },
                        &[],
                    );
                }
            }
            Ok(None) => {}
            Err(rustix::io::Errno::CHILD) => *lock(&state.children) = 0,
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_field_of_stat() {
        assert_eq!(stat_session("42 (a b) c) S 1 42 40 0 -1"), Some(40));
        assert_eq!(stat_session("garbage"), None);
    }
}
