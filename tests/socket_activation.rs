//! Socket activation (`systemd/berth-gateway.socket`): the gateway serves on the listener
//! systemd passes (LISTEN_FDS) instead of binding `[ssh] listen` itself. Driven by
//! `systemd-socket-activate`, which implements the same protocol as systemd.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{free_port, remove_network};

struct Cleanup {
    child: std::process::Child,
    network: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        remove_network(&self.network);
    }
}

#[test]
fn gateway_serves_an_inherited_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid = std::process::id();
    let (activated, configured) = (free_port(), free_port());
    let network = format!("bsa{pid}");
    let cfg = dir.path().join("berth.toml");
    std::fs::write(
        &cfg,
        format!(
            "state_dir = \"{}\"\n[ssh]\nlisten = [\"127.0.0.1:{configured}\"]\n[metrics]\nlisten = \"\"\n\
             [network]\nname = \"{network}\"\nbridge = \"bsa{}\"\nsubnet = \"10.234.{o}.0/24\"\ngateway = \"10.234.{o}.1\"\n\
             [tenants]\nname_prefix = \"{network}\"\n",
            dir.path().join("state").display(),
            pid % 1_000_000,
            o = pid % 250,
        ),
    )
    .expect("write config");
    let child = Command::new("systemd-socket-activate")
        .args(["-l", &format!("127.0.0.1:{activated}")])
        .arg(env!("CARGO_BIN_EXE_berth"))
        .arg("--config")
        .arg(&cfg)
        .args(["run", "gateway"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("systemd-socket-activate (package systemd) must be installed");
    let _guard = Cleanup { child, network };

    // systemd-socket-activate binds first and starts berth on the first connection.
    let deadline = Instant::now() + Duration::from_secs(60);
    let banner = loop {
        assert!(
            Instant::now() < deadline,
            "no SSH banner on the activated socket"
        );
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", activated)) {
            s.set_read_timeout(Some(Duration::from_secs(30)))
                .expect("timeout");
            let mut buf = [0u8; 64];
            if let Ok(n) = s.read(&mut buf)
                && n > 0
            {
                break String::from_utf8_lossy(&buf[..n]).to_string();
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(banner.starts_with("SSH-2.0-"), "banner {banner:?}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", configured)).is_err(),
        "with an inherited socket the gateway must not also bind [ssh] listen"
    );
}
