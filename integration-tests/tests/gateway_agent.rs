//! The agent data path: forwards to the container's own loopback (IPv4 and IPv6), nothing in
//! the container can take over the agent socket (not even by holding its handshake slots first,
//! nor by removing it), the session user fails closed, and hostile agents (garbage, oversized
//! messages, wrong fds, too many fds, silence, early exit) cost the tenant the fast path and
//! nothing else. A session whose command was handed to the agent is never run a second time
//! on Docker's exec stream: it fails with a clear line; later sessions take the exec stream.
//!
//! Every test here holds [`SERIAL`]: the violation counter read by the hostile-agent cases is
//! process-global, and any test running beside them (intruders, hostile agents) raises it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use gateway::{AuditRecord, Backend, BackendError, Credentials, Target};
use integration_tests::gateway::{GatewayHarness, Options};
use tenants::ServerId;
use tokio::sync::mpsc;

/// One test of this file at a time (see the module comment).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// A one-shot TCP service in the container on `addr` (an IPv4 or IPv6 literal) and `port`.
fn serve_on(h: &GatewayHarness, addr: &str, port: u16, reply: &str) -> Result<()> {
    let family = if addr.contains(':') {
        "AF_INET6"
    } else {
        "AF_INET"
    };
    let script = format!(
        "import socket\ns=socket.socket(socket.{family})\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('{addr}',{port}))\ns.listen(8)\nwhile True:\n  c,_=s.accept()\n  c.sendall(b'{reply}\\n')\n  c.close()\n"
    );
    let id = h.server.context("server")?;
    let st = Command::new("docker")
        .args(["exec", "-d", &h.container(id), "python3", "-c", &script])
        .status()?;
    anyhow::ensure!(st.success(), "could not start the test service");
    Ok(())
}

fn ssh_w(h: &GatewayHarness, dest: &str) -> Result<std::process::Output> {
    let mut c = h.ssh();
    c.arg("-W").arg(dest).arg(format!("{}@127.0.0.1", h.user()));
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c.spawn()?.wait_with_output().context("ssh -W")
}

/// `ssh -W dest` until it prints something (the service needs a moment to bind).
fn forward_reply(h: &GatewayHarness, dest: &str) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = ssh_w(h, dest)?;
        let got = String::from_utf8_lossy(&out.stdout).to_string();
        if !got.is_empty() || Instant::now() > deadline {
            return Ok(got);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forwards_reach_services_bound_to_the_container_loopback() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let h = GatewayHarness::start_with(
        "agentlo",
        Options {
            ipv6: true,
            agent_mount: true,
            ..Options::default()
        },
    )
    .await?;
    // Bound to loopback only: unreachable from the gateway's side of the bridge.
    serve_on(&h, "127.0.0.1", 8081, "v4 loopback")?;
    serve_on(&h, "::1", 8082, "v6 loopback")?;
    for (dest, want) in [
        ("127.0.0.1:8081", "v4 loopback\n"),
        ("localhost:8081", "v4 loopback\n"),
        ("[::1]:8082", "v6 loopback\n"),
        // `localhost` tries 127.0.0.1 first, then ::1, like a resolver returning both.
        ("localhost:8082", "v6 loopback\n"),
    ] {
        let got = blocking(|| forward_reply(&h, dest))?;
        assert_eq!(got, want, "ssh -W {dest}");
    }
    // Other tenants, the host and the internet stay refused.
    for dest in ["10.0.0.1:22", "169.254.169.254:80", "server999:22"] {
        let out = blocking(|| ssh_w(&h, dest))?;
        assert!(out.stdout.is_empty(), "ssh -W {dest} got through");
        assert!(!out.status.success(), "ssh -W {dest} succeeded");
    }

    // Something else in the container connects to the socket: a wrong token, garbage, a
    // connection flood. The agent keeps serving and sessions are unaffected.
    let id = h.server.context("server")?;
    let intruder = r#"
import socket, json
for i in range(200):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        s.connect('/dev/berth/gw.sock')
        s.send(json.dumps({"t":"hello","version":2,"token":"guess%d" % i}).encode() if i % 2 else b'\xff' * 100)
    except OSError:
        pass
print('done')
"#;
    let out = Command::new("docker")
        .args([
            "exec",
            "-u",
            "tenant",
            &h.container(id),
            "python3",
            "-c",
            intruder,
        ])
        .output()?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "done\n");
    let out = blocking(|| h.ssh_exec("echo still here", b""))?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "still here\n");
    let got = blocking(|| forward_reply(&h, "127.0.0.1:8081"))?;
    assert_eq!(got, "v4 loopback\n");

    // Another gateway process starting its own agent in this container uploads the binary
    // again, which replaces the file the running agent was started from (as a cluster host's
    // node and front components do). The running agent still starts sessions: it re-executes
    // its own image, not the path.
    let container = h.container(id);
    let listing = Command::new("docker")
        .args(["exec", &container, "ls", "/usr/lib/berth"])
        .output()?;
    let name = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .find(|l| l.starts_with("berth-agent"))
        .map(str::to_string)
        .context("no agent binary in the container")?;
    let agent = integration_tests::gateway::agent_binary()?;
    let st = Command::new("docker")
        .arg("cp")
        .arg(&agent)
        .arg(format!("{container}:/usr/lib/berth/{name}"))
        .status()?;
    anyhow::ensure!(st.success(), "docker cp the agent");
    let out = blocking(|| h.ssh_exec("echo after the agent file was replaced", b""))?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "after the agent file was replaced\n"
    );
    Ok(())
}

/// A stand-in agent for one kind of misbehaviour (the image has python3; the gateway copies
/// whatever `agent_binary` names into the container and starts it).
const FAKE_AGENT: &str = r#"#!/usr/bin/python3
import json, os, socket, subprocess, sys, time
MODE = "@MODE@"
tok = os.environ.get("BERTH_AGENT_TOKEN", "")
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.connect("/dev/berth/gw.sock")
if MODE == "garbage_hello":
    s.send(b"\x00\xff not a hello")
    time.sleep(30)
    sys.exit(0)
if MODE == "early_exit":
    sys.exit(3)
s.send(json.dumps({"t": "hello", "version": @VERSION@, "token": tok}).encode())
while True:
    m = s.recv(70000)
    if not m:
        break
    req = json.loads(m)
    i = req.get("id", 0)
    spawned = json.dumps({"t": "spawned", "id": i, "pid": 1}).encode()
    if req["t"] == "listen":
        # A listener, but on every address of the container instead of the one asked for.
        l = socket.socket(); l.bind(("0.0.0.0", 0)); l.listen(1)
        port = l.getsockname()[1]
        socket.send_fds(s, [json.dumps({"t": "listening", "id": i, "port": port}).encode()], [l.fileno()])
        continue
    if req["t"] == "connect_unix":
        # A TCP connection where a unix one belongs.
        l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(1)
        c = socket.create_connection(l.getsockname())
        socket.send_fds(s, [json.dumps({"t": "connected", "id": i}).encode()], [c.fileno()])
        continue
    if req["t"] == "connect":
        if MODE == "wrong_peer":
            # Connected, but to the next port: not what the gateway asked for.
            c = socket.create_connection((req["ip"], req["port"] + 1))
            socket.send_fds(s, [json.dumps({"t": "connected", "id": i}).encode()], [c.fileno()])
            c.close()
        continue
    if MODE == "oversized":
        s.send(b"{" + b" " * 70000 + b"}")
    elif MODE == "garbage":
        s.send(b'{"t":"spawned","id":' + str(i).encode() + b',"pid":"nope"}')
    elif MODE == "dir_and_file":
        fds = [os.open("/", os.O_RDONLY), os.open("/etc/passwd", os.O_RDONLY), os.open("/dev/null", os.O_WRONLY)]
        socket.send_fds(s, [spawned], fds)
    elif MODE == "socket_as_pipe":
        # Real pipes for stdin and stderr; stdout a socket the agent writes forged output into.
        a = os.pipe(); c = os.pipe()
        x, y = socket.socketpair()
        y.sendall(b"forged\n")
        y.close()
        socket.send_fds(s, [spawned], [a[1], x.fileno(), c[0]])
    elif MODE == "too_many_fds":
        r, w = os.pipe()
        socket.send_fds(s, [spawned], [r, w, r, w, r, w, r, w])
    elif MODE == "reversed_pipes":
        a = os.pipe(); b = os.pipe(); c = os.pipe()
        os.write(b[1], b"forged\n")
        socket.send_fds(s, [spawned], [a[0], b[1], c[1]])
    elif MODE == "opath_pipes":
        a = os.pipe(); b = os.pipe(); c = os.pipe()
        po = lambda fd: os.open("/proc/self/fd/%d" % fd, os.O_PATH)
        socket.send_fds(s, [spawned], [po(a[1]), po(b[0]), po(c[0])])
    elif MODE == "pty_slave":
        master, slave = os.openpty()
        os.write(master, b"forged\n")
        socket.send_fds(s, [spawned], [slave])
    elif MODE == "runs_then_bad_fds":
        # Really runs the command, then hands over something unusable.
        env = dict(os.environ)
        env.update(dict(req["env"]))
        subprocess.run(req["argv"], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        socket.send_fds(s, [spawned], [os.open("/", os.O_RDONLY)] * 3)
    elif MODE == "unasked":
        s.send(json.dumps({"t": "exited", "id": 4000000000, "status": 0, "signal": None}).encode())
    elif MODE == "reply_flood":
        for n in range(20000):
            s.send(json.dumps({"t": "connected", "id": i + 1 + n}).encode())
    elif MODE == "exit_on_request":
        sys.exit(0)
    # "silent": never answers
"#;

fn fake_agent(dir: &Path, mode: &str) -> Result<PathBuf> {
    let p = dir.join(format!("fake-agent-{mode}"));
    let mut f = std::fs::File::create(&p)?;
    f.write_all(
        FAKE_AGENT
            .replace("@MODE@", mode)
            .replace("@VERSION@", &berth_agent::PROTOCOL_VERSION.to_string())
            .as_bytes(),
    )?;
    Ok(p)
}

fn violations() -> u64 {
    gateway::metrics::PROTOCOL_VIOLATIONS.get(1)
}

/// Wraps the real backend: every audit record is also sent to the test, and `no_user_label`
/// makes targets look like containers made before the `berth.user` label.
struct Observed {
    inner: Arc<dyn Backend>,
    audit: mpsc::UnboundedSender<AuditRecord>,
    no_user_label: bool,
}

#[async_trait::async_trait]
impl Backend for Observed {
    async fn credentials(&self, s: ServerId) -> Result<Option<Credentials>, BackendError> {
        self.inner.credentials(s).await
    }
    async fn ensure_running(&self, s: ServerId) -> Result<Target, BackendError> {
        let mut t = self.inner.ensure_running(s).await?;
        if self.no_user_label {
            t.user = None;
        }
        Ok(t)
    }
    async fn exec(
        &self,
        t: &Target,
        login: &str,
        req: gateway::ExecRequest,
    ) -> Result<gateway::Process, BackendError> {
        self.inner.exec(t, login, req).await
    }
    async fn connect(
        &self,
        t: &Target,
        login: &str,
        dest: gateway::policy::ForwardDest,
        port: u16,
    ) -> Result<gateway::Stream, BackendError> {
        self.inner.connect(t, login, dest, port).await
    }
    async fn audit(&self, r: AuditRecord) {
        let _ = self.audit.send(r.clone());
        self.inner.audit(r).await
    }
}

/// Audit records of one gateway, as they are written.
struct Audits(mpsc::UnboundedReceiver<AuditRecord>);

impl Audits {
    fn observe(opts: &mut Options, no_user_label: bool) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        opts.wrap_backend = Some(Box::new(move |inner| {
            Arc::new(Observed {
                inner,
                audit: tx,
                no_user_label,
            })
        }));
        Self(rx)
    }

    /// The next session record (bounded wait: it is written as the session closes).
    async fn next_session(&mut self) -> Result<AuditRecord> {
        loop {
            let r = tokio::time::timeout(Duration::from_secs(30), self.0.recv())
                .await
                .context("no session audit record")?
                .context("audit channel closed")?;
            if r.kind == "session" {
                return Ok(r);
            }
        }
    }

    /// The data path of the next session.
    async fn next_path(&mut self) -> Result<String> {
        let r = self.next_session().await?;
        Ok(r.detail["path"].as_str().unwrap_or("").to_string())
    }
}

/// The agent's failure happened before the Spawn reached it: the session runs on the attach
/// path.
async fn agent_failing_before_spawn(mode: &str, counts_violation: bool) -> Result<()> {
    let _serial = SERIAL.lock().await;
    let scratch = tempfile::tempdir()?;
    let mut opts = Options {
        agent_mount: true,
        ..Options::default()
    };
    opts.ssh.agent_binary = fake_agent(scratch.path(), mode)?.display().to_string();
    let h = GatewayHarness::start_with(&format!("agent{mode}"), opts).await?;
    let before = violations();
    let out = blocking(|| h.ssh_exec("echo out; echo err >&2; exit 7", b""))?;
    assert_eq!(
        out.status.code(),
        Some(7),
        "{mode}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n", "{mode}");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n", "{mode}");
    if counts_violation {
        assert!(
            violations() > before,
            "{mode}: no protocol violation counted"
        );
    }
    second_session_takes_the_attach_path(&h, mode)
}

/// The broken agent is not retried for every session.
fn second_session_takes_the_attach_path(h: &GatewayHarness, mode: &str) -> Result<()> {
    let t0 = Instant::now();
    let out = blocking(|| h.ssh_exec("cat", b"second"))?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "second", "{mode}");
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "{mode}: second session took {:?}",
        t0.elapsed()
    );
    Ok(())
}

/// `ssh … CMD` killed after 60 s: a session on fds that should have been refused may never end.
fn ssh_bounded(h: &GatewayHarness, cmd: &str) -> Result<std::process::Output> {
    let mut c = Command::new("timeout");
    c.arg("60").arg("ssh").args(h.ssh_opts());
    c.arg("-p").arg(h.addr.port().to_string());
    c.arg(format!("{}@127.0.0.1", h.user())).arg("--").arg(cmd);
    c.stdin(Stdio::null()).output().context("ssh")
}

/// The refusal a client sees for a session the agent failed after its Spawn was sent.
fn assert_refused(out: &std::process::Output, mode: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{mode}: session succeeded: {err}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "",
        "{mode}: output of a refused session (stderr: {err})"
    );
    assert!(
        err.contains("berth: could not start the session"),
        "{mode}: no refusal line: {err}"
    );
}

/// The Spawn reached the (hostile) agent: the session fails, is not run again on the attach
/// path, a violation is counted, and the next session takes the attach path at once.
async fn agent_failing_after_spawn(mode: &str, counts_violation: bool) -> Result<()> {
    let _serial = SERIAL.lock().await;
    let scratch = tempfile::tempdir()?;
    let mut opts = Options {
        agent_mount: true,
        ..Options::default()
    };
    opts.ssh.agent_binary = fake_agent(scratch.path(), mode)?.display().to_string();
    let mut audits = Audits::observe(&mut opts, false);
    let h = GatewayHarness::start_with(&format!("agent{mode}"), opts).await?;
    let before = violations();
    let out = blocking(|| ssh_bounded(&h, "echo out; echo err >&2; exit 7"))?;
    assert_refused(&out, mode);
    let rec = audits.next_session().await?;
    assert_eq!(rec.outcome, "error", "{mode}: {:?}", rec.detail);
    if counts_violation {
        assert!(
            violations() > before,
            "{mode}: no protocol violation counted"
        );
    }
    second_session_takes_the_attach_path(&h, mode)?;
    assert_eq!(audits.next_path().await?, "attach", "{mode}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_sending_garbage_instead_of_hello() -> Result<()> {
    agent_failing_before_spawn("garbage_hello", true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_exiting_before_hello() -> Result<()> {
    agent_failing_before_spawn("early_exit", false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_sending_an_oversized_message() -> Result<()> {
    agent_failing_after_spawn("oversized", true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_sending_malformed_json() -> Result<()> {
    agent_failing_after_spawn("garbage", true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_sending_a_directory_and_a_file_as_pipes() -> Result<()> {
    agent_failing_after_spawn("dir_and_file", true).await
}

/// Passes tokio's own pipe checks only if `fds::check_pipe` is gone: a socket is pollable.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_sending_a_socket_where_a_pipe_belongs() -> Result<()> {
    agent_failing_after_spawn("socket_as_pipe", true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_sending_too_many_fds() -> Result<()> {
    agent_failing_after_spawn("too_many_fds", true).await
}

/// The gateway takes the pipes through tokio's unchecked constructors: only `fds::check_pipe`
/// stands between a reversed pipe and a session reading the agent's forged output.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_sending_pipes_facing_the_wrong_way() -> Result<()> {
    agent_failing_after_spawn("reversed_pipes", true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_sending_o_path_fds_as_pipes() -> Result<()> {
    agent_failing_after_spawn("opath_pipes", true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_sending_an_unasked_reply() -> Result<()> {
    agent_failing_after_spawn("unasked", true).await
}

/// 20 000 replies to requests never made: the first ends the connection, the rest are not read.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_flooding_replies_to_nothing() -> Result<()> {
    agent_failing_after_spawn("reply_flood", true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_exiting_on_the_first_request() -> Result<()> {
    agent_failing_after_spawn("exit_on_request", false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_never_answering() -> Result<()> {
    agent_failing_after_spawn("silent", true).await
}

/// An agent that runs the command and then hands over unusable fds: the command ran once, and
/// the gateway does not run it again on the attach path.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_command_handed_to_the_agent_never_runs_twice() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let scratch = tempfile::tempdir()?;
    let mut opts = Options {
        agent_mount: true,
        ..Options::default()
    };
    opts.ssh.agent_binary = fake_agent(scratch.path(), "runs_then_bad_fds")?
        .display()
        .to_string();
    let h = GatewayHarness::start_with("agentrunsonce", opts).await?;
    let id = h.server.context("server")?;
    let out = blocking(|| h.ssh_exec("echo ran >> /tmp/berth-ran", b""))?;
    assert_refused(&out, "runs_then_bad_fds");
    let ran = h.docker_exec(id, &["cat", "/tmp/berth-ran"])?;
    assert_eq!(String::from_utf8_lossy(&ran.stdout), "ran\n");
    Ok(())
}

/// A PTY slave where the master belongs (and a master the agent writes forged output into).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_sending_a_terminal_slave_as_the_master() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let scratch = tempfile::tempdir()?;
    let mut opts = Options {
        agent_mount: true,
        ..Options::default()
    };
    opts.ssh.agent_binary = fake_agent(scratch.path(), "pty_slave")?
        .display()
        .to_string();
    let h = GatewayHarness::start_with("agentptyslave", opts).await?;
    let before = violations();
    // Bounded: with the check gone the session would wait on the slave for ever.
    let out = blocking(|| {
        let mut c = Command::new("timeout");
        c.arg("60").arg("ssh").args(h.ssh_opts());
        c.arg("-p").arg(h.addr.port().to_string()).arg("-tt");
        c.arg(format!("{}@127.0.0.1", h.user())).arg("echo hi");
        c.stdin(Stdio::null()).output()
    })?;
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{all}");
    assert!(!all.contains("forged"), "{all}");
    assert!(all.contains("berth: could not start the session"), "{all}");
    assert!(violations() > before, "no protocol violation counted");
    Ok(())
}

/// The agent returns a socket connected to another service of the container than the one
/// asked for: refused, and nothing of the other service reaches the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_connecting_a_forward_elsewhere() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let scratch = tempfile::tempdir()?;
    let mut opts = Options {
        agent_mount: true,
        ..Options::default()
    };
    opts.ssh.agent_binary = fake_agent(scratch.path(), "wrong_peer")?
        .display()
        .to_string();
    let h = GatewayHarness::start_with("agentwrongpeer", opts).await?;
    serve_on(&h, "127.0.0.1", 8081, "asked for")?;
    serve_on(&h, "127.0.0.1", 8082, "elsewhere")?;
    let id = h.server.context("server")?;
    let ready = "import socket,sys\nfor p in (8081,8082):\n  socket.create_connection(('127.0.0.1',p)).close()\n";
    let deadline = Instant::now() + Duration::from_secs(20);
    while !h
        .docker_exec(id, &["python3", "-c", ready])?
        .status
        .success()
    {
        anyhow::ensure!(Instant::now() < deadline, "test services did not start");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let before = violations();
    let out = blocking(|| ssh_w(&h, "127.0.0.1:8081"))?;
    let got = String::from_utf8_lossy(&out.stdout);
    assert!(!got.contains("elsewhere"), "forward went elsewhere: {got}");
    assert!(violations() > before, "no protocol violation counted");
    Ok(())
}

/// An agent answering a remote forward with a listener on other addresses, and a unix-socket
/// forward with a TCP socket: both refused (the client's forward fails), counted as violations.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_sending_the_wrong_listener_or_socket() -> Result<()> {
    let _serial = SERIAL.lock().await;
    for (n, args) in [
        ["-R", "127.0.0.1:0:127.0.0.1:9"],
        ["-L", "/tmp/berth-test-never.sock:/tmp/x.sock"],
    ]
    .into_iter()
    .enumerate()
    {
        let scratch = tempfile::tempdir()?;
        let mut opts = Options {
            agent_mount: true,
            ..Options::default()
        };
        opts.ssh.agent_binary = fake_agent(scratch.path(), "wrong_listener")?
            .display()
            .to_string();
        let h = GatewayHarness::start_with(&format!("agentwronglisten{n}"), opts).await?;
        let before = violations();
        if args[0] == "-R" {
            let out = blocking(|| {
                h.ssh()
                    .args(["-o", "ExitOnForwardFailure=yes"])
                    .args(args)
                    .arg(format!("{}@127.0.0.1", h.user()))
                    .arg("true")
                    .output()
            })?;
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("remote port forwarding failed"),
                "-R with a wildcard listener accepted: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        } else {
            let local = scratch.path().join("l.sock");
            let mut fwd = h
                .ssh()
                .args(["-N", "-L", &format!("{}:/tmp/x.sock", local.display())])
                .arg(format!("{}@127.0.0.1", h.user()))
                .spawn()?;
            let deadline = Instant::now() + Duration::from_secs(30);
            let got = loop {
                if let Ok(mut c) = std::os::unix::net::UnixStream::connect(&local) {
                    c.set_read_timeout(Some(Duration::from_secs(30)))?;
                    let mut buf = Vec::new();
                    let _ = std::io::Read::read_to_end(&mut c, &mut buf);
                    break buf;
                }
                anyhow::ensure!(Instant::now() < deadline, "-L never listened");
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            let _ = fwd.kill();
            let _ = fwd.wait();
            assert!(got.is_empty(), "data through a TCP socket posing as unix");
        }
        assert!(
            violations() > before,
            "{args:?}: no protocol violation counted"
        );
    }
    Ok(())
}

/// Processes of another uid hold (and keep re-taking) every handshake slot of the socket before
/// the agent is (re)started: the agent still gets through, because only the process Docker
/// started may hold a slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn intruders_holding_the_handshake_slots_first_do_not_keep_the_agent_out() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut opts = Options {
        agent_mount: true,
        ..Options::default()
    };
    let mut audits = Audits::observe(&mut opts, false);
    let h = GatewayHarness::start_with("agenttakeover", opts).await?;
    let id = h.server.context("server")?;
    // The first session binds the socket and starts the agent.
    let out = blocking(|| h.ssh_exec("echo one", b""))?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "one\n");
    assert_eq!(audits.next_path().await?, "agent");
    // Sixteen connections held open, each re-made as soon as the gateway closes it; a marker
    // once the first round is connected.
    let intruder = r#"
import select, socket, time
socks = []
marked = False
while True:
    while len(socks) < 16:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            s.connect('/dev/berth/gw.sock')
            socks.append(s)
        except OSError:
            s.close()
            time.sleep(0.02)
    if not marked:
        open('/tmp/intruder-ready', 'w').close()
        marked = True
    r, _, _ = select.select(socks, [], [], 1)
    for s in r:
        socks.remove(s)
        s.close()
    time.sleep(0.02)
"#;
    let st = Command::new("docker")
        .args([
            "exec",
            "-d",
            "-u",
            "nobody",
            &h.container(id),
            "python3",
            "-c",
            intruder,
        ])
        .status()?;
    anyhow::ensure!(st.success(), "could not start the intruder");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !h
        .docker_exec(id, &["test", "-e", "/tmp/intruder-ready"])?
        .status
        .success()
    {
        anyhow::ensure!(Instant::now() < deadline, "intruder did not connect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The agent goes away; the next start happens with the intruder holding the slots.
    let killed = h.docker_exec(id, &["pkill", "-f", "^/usr/lib/berth/berth-agent-"])?;
    anyhow::ensure!(killed.status.success(), "no agent to stop");
    // A session that comes before the gateway noticed the agent's end may take the attach path
    // once; after that a new agent must serve them (a failed start would keep every session on
    // the attach path for 30 s).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = blocking(|| h.ssh_exec("echo through", b""))?;
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "through\n",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = audits.next_path().await?;
        if path == "agent" {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the agent was kept out (sessions take {path})"
        );
    }
    Ok(())
}

/// The socket file disappears (and the agent with it): the next session binds it again and
/// starts the agent, instead of every session taking the attach path until a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_removed_agent_socket_is_bound_again() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut opts = Options {
        agent_mount: true,
        ..Options::default()
    };
    let mut audits = Audits::observe(&mut opts, false);
    let h = GatewayHarness::start_with("agentrebind", opts).await?;
    let id = h.server.context("server")?;
    let out = blocking(|| h.ssh_exec("echo one", b""))?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "one\n");
    assert_eq!(audits.next_path().await?, "agent");
    let sock = h
        .path("agent")
        .join(format!("server{}", id.get()))
        .join("gw.sock");
    std::fs::remove_file(&sock).with_context(|| format!("remove {}", sock.display()))?;
    let killed = h.docker_exec(id, &["pkill", "-f", "^/usr/lib/berth/berth-agent-"])?;
    anyhow::ensure!(killed.status.success(), "no agent to stop");
    // The gateway notices the agent is gone when its connection closes; a session that comes
    // before may still take the attach path once. The socket must be bound again and a new
    // agent serve the sessions.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = blocking(|| h.ssh_exec("echo two", b""))?;
        assert_eq!(String::from_utf8_lossy(&out.stdout), "two\n");
        let path = audits.next_path().await?;
        if sock.exists() && path == "agent" {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "socket never bound again (last session: {path})"
        );
    }
    Ok(())
}

/// A container without the `berth.user` label whose `id` probe fails or hangs: the session is
/// refused (never run as root), and once the probe answers again sessions run as `tenant`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_undecidable_session_user_refuses_the_session_instead_of_root() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut opts = Options {
        agent_mount: true,
        ..Options::default()
    };
    let mut audits = Audits::observe(&mut opts, true);
    let h = GatewayHarness::start_with("agentnouser", opts).await?;
    let id = h.server.context("server")?;
    let c = h.container(id);
    let as_root = |script: &str| -> Result<()> {
        let st = Command::new("docker")
            .args(["exec", "-u", "root", &c, "sh", "-c", script])
            .status()?;
        anyhow::ensure!(st.success(), "{script}");
        Ok(())
    };
    as_root("mv /usr/bin/id /usr/bin/id.real")?;
    // A probe that fails, then one that answers "no such user" only after its time bound
    // (reading its output must be bounded too).
    for fake in ["exit 2", "sleep 20; exit 1"] {
        as_root(&format!(
            "printf '#!/bin/sh\\n{fake}\\n' > /usr/bin/id && chmod 755 /usr/bin/id"
        ))?;
        let out = blocking(|| h.ssh_exec("whoami", b""))?;
        assert_refused(&out, fake);
        let rec = audits.next_session().await?;
        assert_eq!(rec.outcome, "error", "{fake}: {:?}", rec.detail);
    }
    as_root("mv /usr/bin/id.real /usr/bin/id")?;
    let out = blocking(|| h.ssh_exec("whoami", b""))?;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "tenant\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A forward whose connect hangs inside the container (the service's accept queue is full, so
/// its SYNs are dropped): the agent gives up first and answers with an error, so the gateway
/// does not take the honest agent for a stuck one; the next session still takes the agent path.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_forward_connect_is_not_taken_for_a_stuck_agent() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut opts = Options {
        agent_mount: true,
        ..Options::default()
    };
    let mut audits = Audits::observe(&mut opts, false);
    let h = GatewayHarness::start_with("agentslowconn", opts).await?;
    let id = h.server.context("server")?;
    let out = blocking(|| h.ssh_exec("echo one", b""))?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "one\n");
    assert_eq!(audits.next_path().await?, "agent");
    let full = r#"
import socket, time
l = socket.socket()
l.bind(('127.0.0.1', 8090))
l.listen(0)
held = []
for _ in range(4):
    c = socket.socket()
    c.setblocking(False)
    try:
        c.connect(('127.0.0.1', 8090))
    except BlockingIOError:
        pass
    held.append(c)
time.sleep(1)
open('/tmp/queue-full', 'w').close()
time.sleep(600)
"#;
    let st = Command::new("docker")
        .args(["exec", "-d", &h.container(id), "python3", "-c", full])
        .status()?;
    anyhow::ensure!(st.success(), "could not start the full listener");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !h
        .docker_exec(id, &["test", "-e", "/tmp/queue-full"])?
        .status
        .success()
    {
        anyhow::ensure!(Instant::now() < deadline, "listener did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = violations();
    let out = blocking(|| ssh_w(&h, "127.0.0.1:8090"))?;
    assert!(!out.status.success(), "the hanging connect succeeded");
    assert_eq!(
        violations(),
        before,
        "an honest slow connect counted as a violation"
    );
    let out = blocking(|| h.ssh_exec("echo after", b""))?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "after\n");
    assert_eq!(audits.next_path().await?, "agent");
    Ok(())
}
