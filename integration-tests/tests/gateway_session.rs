//! Gateway sessions through the real OpenSSH client (and paramiko): exec, exit codes, stderr,
//! stdin volume, PTY size and resize, env allowlist, ControlMaster concurrency, on-demand start,
//! and no orphaned processes after a disconnect.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use integration_tests::gateway::{GatewayHarness, sha256_file};

/// The system Python (it has python3-paramiko); a pyenv shim on PATH may not.
fn python() -> &'static str {
    if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exec_exit_code_and_stderr_are_separate() -> Result<()> {
    let h = GatewayHarness::start("exec_exit").await?;
    let out = blocking(|| h.ssh_exec("echo out; echo err >&2; exit 42", b""))?;
    assert_eq!(
        out.status.code(),
        Some(42),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    let who = blocking(|| h.ssh_exec("id -un; pwd", b""))?;
    assert_eq!(
        String::from_utf8_lossy(&who.stdout),
        "tenant\n/home/tenant\n"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stdin_100_mib_checksum() -> Result<()> {
    let h = GatewayHarness::start("stdin100").await?;
    let file = h.path("blob");
    let st = Command::new("head")
        .args(["-c", "104857600", "/dev/urandom"])
        .stdout(std::fs::File::create(&file)?)
        .status()?;
    assert!(st.success());
    let want = sha256_file(&file)?;
    let out = blocking(|| {
        let mut c = h.ssh();
        c.arg(format!("{}@127.0.0.1", h.user())).arg("sha256sum");
        c.stdin(std::fs::File::open(&file)?);
        c.output().context("ssh")
    })?;
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = String::from_utf8_lossy(&out.stdout);
    assert_eq!(got.split_whitespace().next(), Some(want.as_str()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn env_allowlist_passes_lang_and_lc_only() -> Result<()> {
    let h = GatewayHarness::start("envallow").await?;
    let out = blocking(|| {
        let mut c = h.ssh();
        c.args(["-o", "SendEnv=LANG LC_* SECRET_TOKEN PATH"])
            .env("LANG", "C.UTF-8")
            .env("LC_TIME", "POSIX")
            .env("SECRET_TOKEN", "leak")
            .arg(format!("{}@127.0.0.1", h.user()))
            .arg("echo \"$LANG|$LC_TIME|${SECRET_TOKEN:-unset}\"");
        c.output().context("ssh")
    })?;
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "C.UTF-8|POSIX|unset\n"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pty_size_term_and_resize_via_paramiko() -> Result<()> {
    let h = GatewayHarness::start("ptyresize").await?;
    let script = r#"
import paramiko, sys, time
host, port, user, keyfile = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
c = paramiko.SSHClient()
c.set_missing_host_key_policy(paramiko.AutoAddPolicy())
c.connect(host, port=port, username=user, key_filename=keyfile, look_for_keys=False, allow_agent=False)
ch = c.get_transport().open_session()
ch.get_pty(term="xterm-256color", width=101, height=33)
ch.exec_command("stty size; echo TERM=$TERM; test -t 0 && echo tty; read x; stty size")
time.sleep(1.0)
ch.resize_pty(width=120, height=40)
time.sleep(0.5)
ch.send("go\n")
out = b""
while True:
    d = ch.recv(4096)
    if not d:
        break
    out += d
print(out.decode().replace("\r", ""))
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
        out.status.success(),
        "paramiko failed: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("33 101"), "initial size missing: {text}");
    assert!(text.contains("TERM=xterm-256color"), "{text}");
    assert!(text.contains("\ntty\n"), "{text}");
    assert!(text.contains("40 120"), "resize not applied: {text}");
    assert!(text.contains("EXIT 0"), "{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn password_login_with_paramiko() -> Result<()> {
    let h = GatewayHarness::start("paramikopw").await?;
    let script = r#"
import paramiko, sys
host, port, user, pw = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
c = paramiko.SSHClient()
c.set_missing_host_key_policy(paramiko.AutoAddPolicy())
c.connect(host, port=port, username=user, password=pw, look_for_keys=False, allow_agent=False)
i, o, e = c.exec_command("echo hello-$((6*7)); echo warn >&2; exit 3")
print(o.read().decode().strip(), e.read().decode().strip(), o.channel.recv_exit_status())
"#;
    let out = blocking(|| {
        Command::new(python())
            .arg("-c")
            .arg(script)
            .arg("127.0.0.1")
            .arg(h.addr.port().to_string())
            .arg(h.user())
            .arg(&h.password)
            .output()
    })?;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "hello-42 warn 3",
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn control_master_three_concurrent_sessions() -> Result<()> {
    let h = GatewayHarness::start("ctlmaster").await?;
    let sock = h.path("ctl.sock");
    let target = format!("{}@127.0.0.1", h.user());
    let st = blocking(|| {
        let mut c = h.ssh();
        c.args(["-M", "-S"])
            .arg(&sock)
            .args(["-f", "-N"])
            .arg(&target);
        c.status()
    })?;
    assert!(st.success(), "control master failed");
    let _close = CloseMaster {
        sock: sock.clone(),
        target: target.clone(),
    };
    let t0 = Instant::now();
    let children: Vec<_> = (0..3)
        .map(|i| {
            let mut c = Command::new("ssh");
            c.arg("-S")
                .arg(&sock)
                .arg(&target)
                .arg(format!("sleep 2; echo session-{i}"));
            c.stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .stdin(Stdio::null());
            c.spawn()
        })
        .collect::<Result<_, _>>()?;
    let mut outs = Vec::new();
    for c in children {
        outs.push(blocking(|| c.wait_with_output())?);
    }
    let took = t0.elapsed();
    for (i, o) in outs.iter().enumerate() {
        assert!(
            o.status.success(),
            "session {i}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&o.stdout), format!("session-{i}\n"));
    }
    assert!(
        took < Duration::from_secs(5),
        "sessions did not run concurrently: {took:?}"
    );
    Ok(())
}

struct CloseMaster {
    sock: std::path::PathBuf,
    target: String,
}
impl Drop for CloseMaster {
    fn drop(&mut self) {
        let _ = Command::new("ssh")
            .arg("-S")
            .arg(&self.sock)
            .args(["-O", "exit"])
            .arg(&self.target)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disconnect_kills_the_exec_but_not_setsid() -> Result<()> {
    let h = GatewayHarness::start("disckill").await?;
    let id = h.server.context("server")?;
    let mut c = h.ssh();
    c.arg(format!("{}@127.0.0.1", h.user()))
        .arg("setsid sleep 4243 </dev/null >/dev/null 2>&1 & sleep 4242");
    c.stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = c.spawn()?;
    let running = |pat: &str| -> Result<bool> {
        let o = h.docker_exec(id, &["ps", "-eo", "args"])?;
        Ok(String::from_utf8_lossy(&o.stdout)
            .lines()
            .any(|l| l.trim() == pat))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !blocking(|| running("sleep 4242"))? {
        assert!(Instant::now() < deadline, "exec never started");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    child.kill()?;
    let _ = child.wait();
    let deadline = Instant::now() + Duration::from_secs(15);
    while blocking(|| running("sleep 4242"))? {
        assert!(
            Instant::now() < deadline,
            "exec survived the client's disconnect"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        blocking(|| running("sleep 4243"))?,
        "a setsid-detached process must survive"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn login_starts_a_stopped_server() -> Result<()> {
    let h = GatewayHarness::start("ondemand").await?;
    let id = h.server.context("server")?;
    h.provisioner
        .stop(id)
        .await
        .map_err(|e| anyhow::anyhow!("stop: {e}"))?;
    let state = Command::new("docker")
        .args(["inspect", "-f", "{{.State.Running}}", &h.container(id)])
        .output()?;
    assert_eq!(String::from_utf8_lossy(&state.stdout).trim(), "false");
    let out = blocking(|| h.ssh_exec("echo up", b""))?;
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "up\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("was stopped; started it"),
        "no start note: {err:?}"
    );
    // Second login: already running, no note.
    let out = blocking(|| h.ssh_exec("echo again", b""))?;
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shell_without_pty_reads_commands_from_stdin() -> Result<()> {
    let h = GatewayHarness::start("shellnopty").await?;
    let out = blocking(|| {
        let mut c = h.ssh();
        c.arg("-T").arg(format!("{}@127.0.0.1", h.user()));
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn()?;
        if let Some(mut si) = child.stdin.take() {
            si.write_all(b"echo from-shell $((1+1))\nexit 7\n")?;
        }
        child.wait_with_output().context("ssh")
    })?;
    assert_eq!(
        out.status.code(),
        Some(7),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("from-shell 2"));
    Ok(())
}

/// The SSH login name means the login user inside the container: `~server<N>` and
/// `getent passwd server<N>` resolve to the exec user's entry and home, `id -un` still names the
/// real user, and USER/LOGNAME/HOME agree in exec, shell and sftp sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn login_name_resolves_to_the_login_user_everywhere() -> Result<()> {
    let h = GatewayHarness::start("loginalias").await?;
    let login = h.user();
    let script = format!(
        "echo \"$USER $LOGNAME $HOME\"; id -un; echo ~{login}; getent passwd {login} | cut -d: -f3,6"
    );
    let want = "tenant tenant /home/tenant\ntenant\n/home/tenant\n1000:/home/tenant\n";
    let exec = blocking(|| h.ssh_exec(&script, b""))?;
    assert_eq!(
        String::from_utf8_lossy(&exec.stdout),
        want,
        "exec; stderr: {}",
        String::from_utf8_lossy(&exec.stderr)
    );
    let shell = blocking(|| {
        let mut c = h.ssh();
        c.arg("-T").arg(format!("{login}@127.0.0.1"));
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn()?;
        if let Some(mut si) = child.stdin.take() {
            si.write_all(format!("{script}\nexit\n").as_bytes())?;
        }
        child.wait_with_output().context("ssh")
    })?;
    assert_eq!(String::from_utf8_lossy(&shell.stdout), want, "shell");
    // The alias is added once, after the real entry.
    let passwd = h.docker_exec(
        h.server.context("server")?,
        &["grep", "-c", &format!("^{login}:"), "/etc/passwd"],
    )?;
    assert_eq!(String::from_utf8_lossy(&passwd.stdout), "1\n");
    // sftp starts in the login user's home.
    let batch = h.path("pwd.batch");
    std::fs::write(&batch, "pwd\n")?;
    let sftp = blocking(|| {
        Command::new("sftp")
            .args(h.ssh_opts())
            .arg("-P")
            .arg(h.addr.port().to_string())
            .arg("-b")
            .arg(&batch)
            .arg(format!("{login}@127.0.0.1"))
            .stdin(Stdio::null())
            .output()
    })?;
    assert!(
        String::from_utf8_lossy(&sftp.stdout).contains("/home/tenant"),
        "sftp pwd: {} {}",
        String::from_utf8_lossy(&sftp.stdout),
        String::from_utf8_lossy(&sftp.stderr)
    );
    Ok(())
}

/// A server whose login user is root: the tenant is root inside (can run apt), the login name
/// is root's alias; switched back to `tenant`, the next login is unprivileged again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn login_user_per_server_root_and_back() -> Result<()> {
    let h = GatewayHarness::start("rootuser").await?;
    let id = h.server.context("server")?;
    let change = |user: &str| tenants::ServerChange {
        user: Some(user.to_string()),
        ..Default::default()
    };
    let (_, applied) = h
        .provisioner
        .set_server(id, change("root"))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(applied, tenants::Applied::Recreated);
    let login = h.user();
    let out = blocking(|| {
        h.ssh_exec(
            &format!("id -u; echo $USER $HOME; getent passwd {login} | cut -d: -f3; apt-get check >/dev/null && echo apt-ok"),
            b"",
        )
    })?;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "0\nroot /root\n0\napt-ok\n",
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    h.provisioner
        .set_server(id, change("tenant"))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let out = blocking(|| h.ssh_exec("id -un; apt-get check 2>/dev/null || echo apt-denied", b""))?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "tenant\napt-denied\n");
    Ok(())
}
