//! The first five minutes, end to end, as a new operator would do them: a clean state dir,
//! `berth run --demo` (the README's command, with a config that keeps this test to loopback and
//! its own Docker objects), systemd's READY=1 on a NOTIFY_SOCKET we listen on, an `ssh` login
//! into the demo server with the printed password, then SIGTERM and a clean exit 0.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;
use common::{free_port, remove_network, tenant_image};

/// Removes every Docker object this test's prefix and network made, even when the test fails.
struct DockerCleanup {
    prefix: String,
    network: String,
}

impl Drop for DockerCleanup {
    fn drop(&mut self) {
        let ids = Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("name=^{}-server-", self.prefix),
            ])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f"])
                .args(&ids)
                .output();
        }
        let vols = Command::new("docker")
            .args([
                "volume",
                "ls",
                "-q",
                "--filter",
                &format!("name=^{}-server-", self.prefix),
            ])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        if !vols.is_empty() {
            let _ = Command::new("docker")
                .args(["volume", "rm", "-f"])
                .args(&vols)
                .output();
        }
        remove_network(&self.network);
    }
}

#[test]
fn demo_quickstart_login_and_clean_sigterm() {
    let docker_ok = Command::new("docker")
        .args(["image", "inspect", &tenant_image()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        docker_ok,
        "needs a running dockerd and the image {} (run scripts/test)",
        tenant_image()
    );

    let pid = std::process::id();
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let prefix = format!("bq{pid}");
    let network = format!("bq{pid}-net");
    let bridge = format!("bq{}", pid % 1_000_000);
    let octet = 10 + pid % 240;
    let _cleanup = DockerCleanup {
        prefix: prefix.clone(),
        network: network.clone(),
    };
    let (ssh_port, dns_port, metrics_port) = (free_port(), free_port(), free_port());
    let config = dir.path().join("berth.toml");
    std::fs::write(
        &config,
        format!(
            r#"state_dir = "{state}"
[ssh]
listen = ["127.0.0.1:{ssh_port}"]
[network]
name = "{network}"
bridge = "{bridge}"
subnet = "10.232.{octet}.0/24"
gateway = "10.232.{octet}.1"
[dns]
listen = ["127.0.0.1:{dns_port}"]
upstreams = ["127.0.0.1:9"]
[tenants]
image = "{image}"
name_prefix = "{prefix}"
[metrics]
listen = "127.0.0.1:{metrics_port}"
"#,
            state = state.display(),
            image = tenant_image(),
        ),
    )
    .expect("write config");

    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("bind NOTIFY_SOCKET");
    notify
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");

    let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["--config"])
        .arg(&config)
        .args(["run", "--demo", "dns", "gateway"])
        .env("NOTIFY_SOCKET", &notify_path)
        .env("BERTH_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn berth run --demo");

    // Collect stdout lines (the demo banner) and stderr (logs) on threads.
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut stderr = child.stderr.take().expect("stderr");
    let logs = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });

    // READY=1 must arrive, and only once the gateway really serves.
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut ready = false;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "berth exited early with {status}: {}",
                logs.join().unwrap_or_default()
            );
        }
        if let Ok(n) = notify.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]);
            if msg.lines().any(|l| l == "READY=1") {
                ready = true;
                break;
            }
        }
    }
    assert!(ready, "no READY=1 on NOTIFY_SOCKET within the deadline");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", ssh_port)).is_ok(),
        "READY=1 was sent but the SSH port does not accept connections"
    );

    let banner: Vec<String> = rx.try_iter().collect();
    let password = banner
        .iter()
        .find_map(|l| {
            l.split("password (shown once, not stored in clear): ")
                .nth(1)
        })
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no password in the demo banner: {banner:#?}"));
    let login = banner
        .iter()
        .find_map(|l| l.trim().strip_prefix("ssh  -p "))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|userhost| userhost.split('@').next())
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no ssh command in the demo banner: {banner:#?}"));
    assert_eq!(login, "server1", "a fresh state dir gives server1");

    // Log in with the printed password through real OpenSSH (SSH_ASKPASS, no tty).
    let askpass = dir.path().join("askpass.sh");
    std::fs::write(&askpass, format!("#!/bin/sh\necho '{password}'\n")).expect("askpass");
    std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let out = Command::new("ssh")
        .args(["-p", &ssh_port.to_string()])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "PreferredAuthentications=password,keyboard-interactive",
            "-o",
            "NumberOfPasswordPrompts=1",
            "-o",
            "ConnectTimeout=30",
        ])
        .arg("server1@127.0.0.1")
        .arg("echo quickstart-ok; hostname; id -un")
        .env("SSH_ASKPASS", &askpass)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env("DISPLAY", ":0")
        .stdin(Stdio::null())
        .output()
        .expect("run ssh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("quickstart-ok"),
        "ssh login failed ({}): stdout {stdout:?} stderr {:?}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("server1"), "not inside server1: {stdout:?}");

    // /healthz answers while running.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).expect("metrics port");
    std::io::Write::write_all(&mut s, b"GET /healthz HTTP/1.0\r\n\r\n").expect("write");
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 200"), "healthz: {resp:?}");

    // SIGTERM → drain → exit 0.
    let rc = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(rc.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "berth did not exit within 60 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let logs = logs.join().unwrap_or_default();
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM; logs:\n{logs}"
    );
    assert!(
        !logs.contains(&password),
        "the demo password leaked into the logs"
    );
    // State files are private.
    let mode = std::fs::metadata(&state)
        .expect("state dir")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700, "state dir mode {mode:o}");
    let _ = Path::new(&notify_path);
}
