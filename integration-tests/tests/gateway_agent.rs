//! The agent data path (issue 10): forwards to the container's own loopback (IPv4 and IPv6),
//! nothing in the container can take over the agent socket, and hostile agents (garbage,
//! oversized messages, wrong fds, too many fds, silence, early exit) cost the tenant the fast
//! path and nothing else: every session still runs, on Docker's exec stream.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use integration_tests::gateway::{GatewayHarness, Options};

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
        s.send(json.dumps({"t":"hello","version":1,"token":"guess%d" % i}).encode() if i % 2 else b'\xff' * 100)
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
    Ok(())
}

/// A stand-in agent for one kind of misbehaviour (the image has python3; the gateway copies
/// whatever `agent_binary` names into the container and starts it).
const FAKE_AGENT: &str = r#"#!/usr/bin/python3
import json, os, socket, sys, time
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
s.send(json.dumps({"t": "hello", "version": 1, "token": tok}).encode())
while True:
    m = s.recv(70000)
    if not m:
        break
    i = json.loads(m).get("id", 0)
    spawned = json.dumps({"t": "spawned", "id": i, "pid": 1}).encode()
    if MODE == "oversized":
        s.send(b"{" + b" " * 70000 + b"}")
    elif MODE == "garbage":
        s.send(b'{"t":"spawned","id":' + str(i).encode() + b',"pid":"nope"}')
    elif MODE == "wrong_fds":
        fds = [os.open("/", os.O_RDONLY), os.open("/etc/passwd", os.O_RDONLY), os.open("/dev/null", os.O_WRONLY)]
        socket.send_fds(s, [spawned], fds)
    elif MODE == "too_many_fds":
        r, w = os.pipe()
        socket.send_fds(s, [spawned], [r, w, r, w, r, w, r, w])
    elif MODE == "reversed_pipes":
        a = os.pipe(); b = os.pipe(); c = os.pipe()
        socket.send_fds(s, [spawned], [a[0], b[1], c[1]])
    elif MODE == "unasked":
        s.send(json.dumps({"t": "exited", "id": 4000000000, "status": 0, "signal": None}).encode())
    elif MODE == "exit_on_request":
        sys.exit(0)
    # "silent": never answers
"#;

fn fake_agent(dir: &Path, mode: &str) -> Result<PathBuf> {
    let p = dir.join(format!("fake-agent-{mode}"));
    let mut f = std::fs::File::create(&p)?;
    f.write_all(FAKE_AGENT.replace("@MODE@", mode).as_bytes())?;
    Ok(p)
}

fn violations() -> u64 {
    gateway::metrics::PROTOCOL_VIOLATIONS.get(1)
}

/// Sessions still work (on the attach path) and a second one does not pay for the agent again.
async fn hostile_agent(mode: &str, counts_violation: bool) -> Result<()> {
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
    // The broken agent is not retried for every session.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_sending_garbage_instead_of_hello() -> Result<()> {
    hostile_agent("garbage_hello", true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_exiting_before_hello() -> Result<()> {
    hostile_agent("early_exit", false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_sending_an_oversized_message() -> Result<()> {
    hostile_agent("oversized", true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_sending_malformed_json() -> Result<()> {
    hostile_agent("garbage", true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_sending_a_directory_and_a_file_as_pipes() -> Result<()> {
    hostile_agent("wrong_fds", true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_sending_too_many_fds() -> Result<()> {
    hostile_agent("too_many_fds", true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_sending_pipes_facing_the_wrong_way() -> Result<()> {
    hostile_agent("reversed_pipes", true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_sending_an_unasked_reply() -> Result<()> {
    hostile_agent("unasked", true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_exiting_on_the_first_request() -> Result<()> {
    hostile_agent("exit_on_request", false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_never_answering() -> Result<()> {
    hostile_agent("silent", false).await
}
