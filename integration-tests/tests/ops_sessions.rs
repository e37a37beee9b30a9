//! Live sessions through the control socket with the real `berth` CLI and OpenSSH clients:
//! `berth session list` shows who runs what, `berth session kill` ends one session (its client
//! sees the operator's message) or all of an account, and a non-root peer gets no answer even
//! when the socket file's mode would let it connect.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use integration_tests::gateway::GatewayHarness;
use integration_tests::tenants::berth;

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Serves the harness gateway's control socket and writes a CLI config naming it.
fn control(h: &GatewayHarness) -> Result<(PathBuf, PathBuf)> {
    let sock = h.path("control.sock");
    let listener = gateway::control::bind(&sock)?;
    tokio::spawn(gateway::control::serve(
        gateway::control::Sources::sessions_only(h.shared.live.clone()),
        listener,
        tokio_util::sync::CancellationToken::new(),
    ));
    let cfg = h.path("cli.toml");
    std::fs::write(
        &cfg,
        format!(
            "state_dir = \"{0}\"\ndatabase_url = \"sqlite://{0}/berth.db\"\n[ssh]\ncontrol_socket = \"{1}\"\n",
            h.dir.path().display(),
            sock.display()
        ),
    )?;
    Ok((sock, cfg))
}

fn list(cfg: &Path) -> Result<Vec<gateway::control::SessionView>> {
    let (code, out, err) = berth(cfg, &["session", "list", "--json"], None)?;
    if code != 0 {
        bail!("session list failed ({code}): {err}");
    }
    Ok(serde_json::from_str(&out)?)
}

fn wait_listed(cfg: &Path, n: usize) -> Result<Vec<gateway::control::SessionView>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let l = list(cfg)?;
        if l.len() == n {
            return Ok(l);
        }
        if Instant::now() > deadline {
            bail!("{} sessions listed, expected {n}: {l:?}", l.len());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn spawn_ssh(h: &GatewayHarness, tty: bool, cmd: &str) -> Result<Child> {
    let mut c = h.ssh();
    if tty {
        c.arg("-tt");
    }
    c.arg(format!("{}@127.0.0.1", h.user()))
        .arg(cmd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c.spawn().context("spawn ssh")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_then_kill_one_with_a_message_and_all_of_an_account() -> Result<()> {
    let h = GatewayHarness::start("opssessions").await?;
    let (_sock, cfg) = control(&h)?;
    let id = h.server.context("server")?;
    let first = blocking(|| spawn_ssh(&h, true, "sleep 300"))?;
    let listed = blocking(|| wait_listed(&cfg, 1))?;
    let s = &listed[0];
    assert_eq!(s.server, id.get());
    assert_eq!(s.account, h.account);
    assert_eq!(s.kind, "exec");
    assert!(!s.recording);
    assert!(s.peer.starts_with("127.0.0.1:"));

    let (code, out, err) = blocking(|| {
        berth(
            &cfg,
            &[
                "session",
                "kill",
                &s.id.to_string(),
                "--message",
                "abuse report 42",
            ],
            None,
        )
    })?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("1 session(s) ended"), "{out}");
    let done = blocking(|| first.wait_with_output())?;
    let seen = format!(
        "{}{}",
        String::from_utf8_lossy(&done.stdout),
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(
        seen.contains("berth: this session was ended by the operator: abuse report 42"),
        "the client was not told: {seen:?}"
    );
    assert_eq!(done.status.code(), Some(255));
    blocking(|| wait_listed(&cfg, 0))?;

    // Two sessions of the account (a terminal and a plain exec): one kill ends both.
    let a = blocking(|| spawn_ssh(&h, true, "sleep 300"))?;
    let b = blocking(|| spawn_ssh(&h, false, "sleep 300"))?;
    blocking(|| wait_listed(&cfg, 2))?;
    let (code, out, err) =
        blocking(|| berth(&cfg, &["session", "kill", "--account", &h.account], None))?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("2 session(s) ended"), "{out}");
    for c in [a, b] {
        let o = blocking(|| c.wait_with_output())?;
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("ended by the operator"),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // Nothing left to end: a distinct exit code.
    let (code, _, _) = blocking(|| berth(&cfg, &["session", "kill", "--server", "1"], None))?;
    assert_eq!(code, 67);

    // A forward channel is listed as one (no session cap counts it) and a kill closes it.
    const HOLD: &str = "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('127.0.0.1',8089))\ns.listen(4)\nc,_=s.accept()\nc.sendall(b'held\\n')\nwhile c.recv(4096):\n  pass\n";
    let st = Command::new("docker")
        .args(["exec", "-d", &h.container(id), "python3", "-c", HOLD])
        .status()?;
    ensure!(st.success(), "could not start the held service");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut fwd = h
        .ssh()
        .args(["-N", "-o", "ExitOnForwardFailure=yes", "-L"])
        .arg(format!("127.0.0.1:{port}:127.0.0.1:8089"))
        .arg(format!("{}@127.0.0.1", h.user()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut held = loop {
        if let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            c.set_read_timeout(Some(Duration::from_secs(30)))?;
            let mut first = [0u8; 5];
            if c.read_exact(&mut first).is_ok() && &first == b"held\n" {
                break c;
            }
        }
        if Instant::now() > deadline {
            let _ = fwd.kill();
            bail!("the forward to the held service never answered");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let listed = blocking(|| wait_listed(&cfg, 1))?;
    assert_eq!(listed[0].kind, "forward", "{listed:?}");
    let (code, out, err) = blocking(|| {
        berth(
            &cfg,
            &["session", "kill", "--server", &id.get().to_string()],
            None,
        )
    })?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("1 session(s) ended"), "{out}");
    let mut rest = Vec::new();
    let ended = blocking(|| held.read_to_end(&mut rest));
    let _ = fwd.kill();
    let _ = fwd.wait();
    assert!(
        matches!(ended, Ok(0)),
        "the killed forward still carried data or timed out: {ended:?}"
    );
    blocking(|| wait_listed(&cfg, 0))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_non_root_peer_gets_no_answer() -> Result<()> {
    let h = GatewayHarness::start("opsctlroot").await?;
    let (sock, _cfg) = control(&h)?;
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sock)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // Open the file and its directory up, then ask as `nobody`: the peer check still refuses.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666))?;
    std::fs::set_permissions(h.dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let script = r#"
import os, socket, sys
if sys.argv[2] == "nobody":
    os.setgid(65534); os.setuid(65534)
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
try:
    s.sendall(b'{"op":"list"}\n')
    d = s.recv(4096)
except OSError:
    d = b''
print("ANSWER" if d else "NO-ANSWER")
"#;
    let asked = |py: &str, who: &str| -> Result<String> {
        let o = Command::new(py)
            .arg("-c")
            .arg(script)
            .arg(&sock)
            .arg(who)
            .output()?;
        Ok(format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ))
    };
    let py = if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let text = blocking(|| asked(py, "nobody"))?;
    assert_eq!(text.trim(), "NO-ANSWER", "a non-root peer was answered");
    // The same request as root is answered.
    let text = blocking(|| asked(py, "root"))?;
    assert_eq!(text.trim(), "ANSWER");
    Ok(())
}

/// Runs `berth ARGS…`; an error with its stderr unless it succeeds.
fn berth_ok(cfg: &Path, args: &[&str]) -> Result<String> {
    let (code, out, err) = berth(cfg, args, None)?;
    if code != 0 {
        bail!("berth {args:?} failed ({code}): {err}");
    }
    Ok(out)
}

/// What the client printed, stdout then stderr.
fn seen(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duration_and_idle_limits_warn_then_close_with_a_message() -> Result<()> {
    let h = GatewayHarness::start("opslimits").await?;
    let (_sock, cfg) = control(&h)?;
    let name = h.user();
    let quiet_session = || -> Result<(std::process::Output, Duration)> {
        let t0 = Instant::now();
        let mut c = h.ssh();
        c.arg("-tt")
            .arg(format!("{}@127.0.0.1", h.user()))
            .arg("sleep 120");
        let out = c.output().context("ssh")?;
        Ok((out, t0.elapsed()))
    };

    // The server's own maximum duration.
    let said = blocking(|| berth_ok(&cfg, &["server", "set", &name, "--max-duration", "4"]))?;
    assert!(said.contains("maximum duration 4 s"), "{said}");
    let (out, took) = blocking(quiet_session)?;
    let text = seen(&out);
    assert!(
        text.contains("berth: this session will be closed in")
            && text.contains("(maximum duration 4 s)"),
        "no warning before the limit: {text:?}"
    );
    assert!(
        text.contains("berth: this session reached its maximum duration of 4 s and is closed"),
        "no message at the limit: {text:?}"
    );
    assert_eq!(out.status.code(), Some(255));
    assert!(
        took >= Duration::from_secs(4),
        "closed after {took:?}, before its limit"
    );
    assert!(took < Duration::from_secs(100), "closed after {took:?}");

    // The account's idle limit applies once the server sets no duration limit of its own.
    blocking(|| berth_ok(&cfg, &["server", "set", &name, "--max-duration", "0"]))?;
    let said = blocking(|| berth_ok(&cfg, &["account", "set", &h.account, "--idle-timeout", "4"]))?;
    assert!(said.contains("idle timeout 4 s"), "{said}");
    let (out, took) = blocking(quiet_session)?;
    let text = seen(&out);
    assert!(
        text.contains("unless there is activity (idle limit 4 s)"),
        "no warning before the limit: {text:?}"
    );
    assert!(
        text.contains("berth: this session was idle for 4 s and is closed"),
        "no message at the limit: {text:?}"
    );
    assert_eq!(out.status.code(), Some(255));
    assert!(
        took >= Duration::from_secs(4),
        "closed after {took:?}, before its limit"
    );

    // A session that keeps talking is not idle: it outlives the idle limit and exits itself.
    let (out, took) = blocking(|| {
        let t0 = Instant::now();
        let mut c = h.ssh();
        c.arg(format!("{}@127.0.0.1", h.user()))
            .arg("for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo tick; sleep 0.5; done");
        let out = c.output().context("ssh")?;
        anyhow::Ok((out, t0.elapsed()))
    })?;
    assert_eq!(out.status.code(), Some(0), "{}", seen(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).matches("tick").count(),
        12
    );
    assert!(took >= Duration::from_secs(5), "{took:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn session_caps_per_server_and_account_refuse_with_a_message() -> Result<()> {
    let h = GatewayHarness::start("opscaps").await?;
    let (_sock, cfg) = control(&h)?;
    let name = h.user();
    blocking(|| berth_ok(&cfg, &["server", "set", &name, "--max-sessions", "1"]))?;
    let first = blocking(|| spawn_ssh(&h, false, "sleep 300"))?;
    blocking(|| wait_listed(&cfg, 1))?;
    let refused = blocking(|| h.ssh_exec("echo should-not-run", b""))?;
    let text = seen(&refused);
    assert!(
        text.contains("berth: this server already has 1 sessions open (limit 1)"),
        "{text:?}"
    );
    assert!(!text.contains("should-not-run"), "{text:?}");
    assert_eq!(refused.status.code(), Some(1));

    // The server's cap lifted, the account's applies.
    blocking(|| berth_ok(&cfg, &["server", "set", &name, "--max-sessions", "0"]))?;
    blocking(|| berth_ok(&cfg, &["account", "set", &h.account, "--max-sessions", "1"]))?;
    let refused = blocking(|| h.ssh_exec("echo should-not-run", b""))?;
    let text = seen(&refused);
    assert!(
        text.contains("this account already has 1 sessions open over its servers (limit 1)"),
        "{text:?}"
    );
    // Room again: the next session runs.
    blocking(|| berth_ok(&cfg, &["account", "set", &h.account, "--max-sessions", "2"]))?;
    let ok = blocking(|| h.ssh_exec("echo ran", b""))?;
    assert_eq!(
        String::from_utf8_lossy(&ok.stdout).trim(),
        "ran",
        "{}",
        seen(&ok)
    );

    // An unknown account is named.
    let (code, _, err) = blocking(|| {
        berth(
            &cfg,
            &["account", "set", "nobody-such", "--max-sessions", "1"],
            None,
        )
    })?;
    assert_eq!(code, 67, "{err}");
    assert!(err.contains("nobody-such"), "{err}");

    let mut first = first;
    let _ = first.kill();
    let _ = blocking(|| first.wait());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bandwidth_limit_slows_bulk_both_ways_and_other_channels_stay_responsive() -> Result<()> {
    let h = GatewayHarness::start("opsbw").await?;
    let (_sock, cfg) = control(&h)?;
    let name = h.user();
    let said = blocking(|| berth_ok(&cfg, &["server", "set", &name, "--bandwidth", "1M"]))?;
    assert!(said.contains("bandwidth 1048576 bytes/s"), "{said}");
    const MIB: usize = 1 << 20;

    // Container → client: the limit is the server's total, so two connections downloading
    // 3 MiB each at once take about 6 s together (a limit per channel would let them finish in
    // about 3 s). Only a lower bound: a slow machine may take longer.
    let (outs, took) = blocking(|| {
        let t0 = Instant::now();
        let outs = std::thread::scope(|s| {
            let a = s.spawn(|| h.ssh_exec("head -c 3145728 /dev/zero", b""));
            let b = s.spawn(|| h.ssh_exec("head -c 3145728 /dev/zero", b""));
            [a.join(), b.join()]
        });
        (outs, t0.elapsed())
    });
    for out in outs {
        let out = out.map_err(|_| anyhow::anyhow!("a download thread panicked"))??;
        assert_eq!(
            out.stdout.len(),
            3 * MIB,
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        took >= Duration::from_secs(5),
        "2 × 3 MiB at 1 MiB/s in total in {took:?}"
    );

    // Client → container: 5 MiB.
    let (out, took) = blocking(|| {
        let t0 = Instant::now();
        let o = h.ssh_exec("wc -c", &vec![0u8; 5 * MIB])?;
        anyhow::Ok((o, t0.elapsed()))
    })?;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "5242880");
    assert!(
        took >= Duration::from_secs(4),
        "5 MiB at 1 MiB/s in {took:?}"
    );

    // One connection (a ControlMaster), two channels: a 30 s bulk download, and an echo that
    // answers while the bulk still runs.
    let ctl = h.path("mux.sock");
    let dest = format!("{}@127.0.0.1", h.user());
    let mut master = {
        let mut c = h.ssh();
        c.arg("-M")
            .arg("-S")
            .arg(&ctl)
            .arg("-N")
            .arg(&dest)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c.spawn().context("ssh master")?
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ctl.exists() {
        if Instant::now() > deadline {
            let _ = master.kill();
            bail!("the ssh master never made its socket");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mux = |cmd: &str| {
        let mut c = h.ssh();
        c.arg("-S").arg(&ctl).arg(&dest).arg(cmd);
        c
    };
    let mut bulk = mux("head -c 31457280 /dev/zero")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("bulk ssh")?;
    blocking(|| wait_listed(&cfg, 1))?;
    let t0 = Instant::now();
    let echo = blocking(|| mux("echo still-here").output())?;
    let echo_took = t0.elapsed();
    let bulk_running = bulk.try_wait()?.is_none();
    let _ = bulk.kill();
    let _ = master.kill();
    let _ = blocking(|| bulk.wait());
    let _ = blocking(|| master.wait());
    assert_eq!(String::from_utf8_lossy(&echo.stdout).trim(), "still-here");
    assert!(
        bulk_running,
        "the echo took {echo_took:?}: it waited for the bulk transfer"
    );
    Ok(())
}
