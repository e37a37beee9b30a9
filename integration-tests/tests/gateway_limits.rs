//! Gateway limits and failure handling: signals reach the exec, sessions per connection,
//! idle timeout, Docker unreachable (one clear line, then recovery), SIGTERM-style drain.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use gateway::{AuditRecord, Backend, BackendError, Credentials, Target};
use integration_tests::gateway::{GatewayHarness, Options};
use tenants::ServerId;

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn python() -> &'static str {
    if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn signals_reach_the_exec_process() -> Result<()> {
    let h = GatewayHarness::start("signals").await?;
    // paramiko has no API for "signal" requests: send the raw channel request.
    let script = r#"
import paramiko, sys, time
from paramiko.common import cMSG_CHANNEL_REQUEST
from paramiko.message import Message
host, port, user, keyfile = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
c = paramiko.SSHClient()
c.set_missing_host_key_policy(paramiko.AutoAddPolicy())
c.connect(host, port=port, username=user, key_filename=keyfile, look_for_keys=False, allow_agent=False)
def signal(ch, name):
    m = Message()
    m.add_byte(cMSG_CHANNEL_REQUEST)
    m.add_int(ch.remote_chanid)
    m.add_string("signal")
    m.add_boolean(False)
    m.add_string(name)
    ch.transport._send_user_message(m)
ch = c.get_transport().open_session()
ch.exec_command("trap 'echo got-term; exit 3' TERM; echo ready; while :; do sleep 0.1; done")
buf = b""
while b"ready" not in buf:
    buf += ch.recv(100)
ch.settimeout(5)
signal(ch, "TERM")
tries = 1
while True:
    try:
        d = ch.recv(100)
    except Exception:
        if tries >= 3: break
        tries += 1
        signal(ch, "TERM")
        continue
    if not d: break
    buf += d
print("TRIES", tries)
print(buf.decode().split())
print("EXIT", ch.recv_exit_status())
"#;
    let out = blocking(|| {
        Command::new(python())
            .arg("-c")
            .arg(script)
            .arg("127.0.0.1")
            .arg(h.addr.port().to_string())
            .arg(h.user())
            .arg(&h.key)
            .output()
    })?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("got-term"),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("EXIT 3"), "{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_per_connection_are_capped() -> Result<()> {
    let mut opts = Options::default();
    opts.ssh.max_sessions_per_connection = 2;
    let h = GatewayHarness::start_with("sesscap", opts).await?;
    let sock = h.path("ctl.sock");
    let target = format!("{}@127.0.0.1", h.user());
    let st = blocking(|| {
        h.ssh()
            .args(["-M", "-S"])
            .arg(&sock)
            .args(["-f", "-N"])
            .arg(&target)
            .status()
    })?;
    anyhow::ensure!(st.success());
    let spawn = |cmd: &str| {
        Command::new("ssh")
            .arg("-S")
            .arg(&sock)
            .arg(&target)
            .arg(cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
    };
    let a = spawn("sleep 3; echo a")?;
    let b = spawn("sleep 3; echo b")?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let c = blocking(|| spawn("echo c")?.wait_with_output())?;
    assert!(!c.status.success(), "third session should be refused");
    assert!(c.stdout.is_empty());
    for (child, want) in [(a, "a\n"), (b, "b\n")] {
        let o = blocking(|| child.wait_with_output())?;
        assert_eq!(String::from_utf8_lossy(&o.stdout), want);
    }
    // Slots come back when sessions end.
    // (the master confirms channel closes asynchronously: allow it a moment)
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let d = blocking(|| spawn("echo d")?.wait_with_output())?;
        if String::from_utf8_lossy(&d.stdout) == "d\n" {
            break;
        }
        assert!(Instant::now() < deadline, "slots were not released");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = Command::new("ssh")
        .arg("-S")
        .arg(&sock)
        .args(["-O", "exit"])
        .arg(&target)
        .output();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_connections_are_closed() -> Result<()> {
    let mut opts = Options::default();
    opts.ssh.idle_timeout_secs = 2;
    let h = GatewayHarness::start_with("idle", opts).await?;
    let t0 = Instant::now();
    let out = blocking(|| h.ssh_exec("sleep 30", b""))?;
    let took = t0.elapsed();
    assert!(!out.status.success());
    assert!(
        took < Duration::from_secs(10),
        "idle connection lived {took:?}"
    );
    // Active sessions are not idle.
    let out = blocking(|| h.ssh_exec("for i in 1 2 3 4; do echo $i; sleep 1; done", b""))?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n2\n3\n4\n");
    Ok(())
}

/// Wraps the real backend; `down` makes `ensure_running` report Docker unreachable.
struct Flaky {
    inner: Arc<dyn Backend>,
    down: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl Backend for Flaky {
    async fn credentials(&self, s: ServerId) -> Result<Option<Credentials>, BackendError> {
        self.inner.credentials(s).await
    }
    async fn ensure_running(&self, s: ServerId) -> Result<Target, BackendError> {
        if self.down.load(Ordering::Relaxed) {
            return Err(BackendError::Unavailable(
                "docker: connection refused".into(),
            ));
        }
        self.inner.ensure_running(s).await
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
        self.inner.audit(r).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_unreachable_gives_one_clear_line_then_recovers() -> Result<()> {
    let down = Arc::new(AtomicBool::new(true));
    let mut opts = Options::default();
    let d = down.clone();
    opts.wrap_backend = Some(Box::new(move |inner| Arc::new(Flaky { inner, down: d })));
    let h = GatewayHarness::start_with("dockerdown", opts).await?;
    let out = blocking(|| h.ssh_exec("echo hi", b""))?;
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.lines().filter(|l| l.contains("berth:")).count(),
        1,
        "{err}"
    );
    assert!(err.contains("temporarily unavailable"), "{err}");
    down.store(false, Ordering::Relaxed);
    let out = blocking(|| h.ssh_exec("echo hi", b""))?;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hi\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drain_tells_clients_and_closes_by_the_deadline() -> Result<()> {
    let mut opts = Options::default();
    opts.ssh.drain_timeout_secs = 3;
    let mut h = GatewayHarness::start_with("drain", opts).await?;
    let mut c = h.ssh();
    c.arg(format!("{}@127.0.0.1", h.user()))
        .arg("echo started; sleep 60");
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = c.spawn()?;
    // A finished session before the drain.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t0 = Instant::now();
    h.begin_shutdown();
    h.wait_stopped(Duration::from_secs(20))
        .await
        .context("drain")?;
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(12),
        "drain took {took:?}"
    );
    let out = blocking(|| child.wait_with_output())?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "started\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("shutting down"), "client was not told: {err}");
    // No new connections after the drain.
    assert!(
        std::net::TcpStream::connect(h.addr).is_err(),
        "still accepting"
    );
    Ok(())
}
