//! Live sessions through the control socket with the real `berth` CLI and OpenSSH clients:
//! `berth session list` shows who runs what, `berth session kill` ends one session (its client
//! sees the operator's message) or all of an account, and a non-root peer gets no answer even
//! when the socket file's mode would let it connect.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
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
        h.shared.live.clone(),
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
