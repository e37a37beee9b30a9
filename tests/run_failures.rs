//! `berth run` when a component cannot start: one clear line naming the cause, a non-zero exit,
//! and never a gateway serving tenants whose egress filter failed to apply.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{free_port, remove_network};

/// Removes the test's own Docker network (berth run creates the tenant network first).
struct NetworkCleanup(String);

impl Drop for NetworkCleanup {
    fn drop(&mut self) {
        remove_network(&self.0);
    }
}

/// A config confined to the test: own state dir, own Docker network, no metrics port.
fn write_config(
    dir: &std::path::Path,
    tag: u32,
    extra: &str,
) -> (std::path::PathBuf, NetworkCleanup) {
    let pid = std::process::id();
    let name = format!("brf{pid}-{tag}");
    let path = dir.join("berth.toml");
    let text = format!(
        "state_dir = \"{}\"\n[metrics]\nlisten = \"\"\n[network]\nname = \"{name}\"\nbridge = \"brf{}{tag}\"\nsubnet = \"10.233.{o}.0/24\"\ngateway = \"10.233.{o}.1\"\n[tenants]\nname_prefix = \"{name}\"\n{extra}",
        dir.join("state").display(),
        pid % 100_000,
        o = (pid % 120) * 2 + tag,
    );
    std::fs::write(&path, text).expect("write config");
    (path, NetworkCleanup(name))
}

/// Runs berth with a deadline; returns (exit code, stderr).
fn run_berth(
    config: &std::path::Path,
    args: &[&str],
    watch_port: Option<u16>,
) -> (Option<i32>, String, bool) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn berth");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut port_opened = false;
    let status = loop {
        if let Some(port) = watch_port {
            port_opened |= std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        }
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("berth {args:?} did not exit within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    (status.code(), err, port_opened)
}

#[test]
fn failed_egress_filter_keeps_the_gateway_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let (cfg, _net) = write_config(
        dir.path(),
        0,
        &format!(
            "[ssh]\nlisten = [\"127.0.0.1:{port}\"]\n[netfilter]\nnft = \"/nonexistent/nft\"\n"
        ),
    );
    let (code, stderr, opened) = run_berth(&cfg, &["run", "netfilter", "gateway"], Some(port));
    assert_eq!(code, Some(1), "stderr:\n{stderr}");
    assert!(
        !opened,
        "the gateway accepted connections although the egress filter failed"
    );
    let line = stderr
        .lines()
        .find(|l| l.starts_with("berth: netfilter failed to start"))
        .unwrap_or_else(|| panic!("no clear netfilter line in:\n{stderr}"));
    assert!(
        line.contains("/nonexistent/nft"),
        "the line should name the missing nft: {line}"
    );
    assert!(
        stderr.contains("not starting the gateway"),
        "stderr:\n{stderr}"
    );
}

#[test]
fn port_in_use_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let (cfg, _net) = write_config(
        dir.path(),
        1,
        &format!("[ssh]\nlisten = [\"127.0.0.1:{port}\"]\n"),
    );
    let (code, stderr, _) = run_berth(&cfg, &["run", "gateway"], None);
    assert_eq!(code, Some(1), "stderr:\n{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("berth: gateway failed to start"))
        .unwrap_or_else(|| panic!("no clear gateway line in:\n{stderr}"));
    assert!(
        line.contains(&format!("127.0.0.1:{port}")),
        "the line should name the address: {line}"
    );
}

#[test]
fn bad_config_exits_64_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, _net) = write_config(dir.path(), 0, "[ssh]\nlisten_on = [\"127.0.0.1:1\"]\n");
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("--config")
        .arg(&cfg)
        .args(["config", "check"])
        .output()
        .expect("run berth");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listen_on"), "{err}");
}

/// A cluster node's identity as `config check` reports it: an explicit `[cluster] advertise`
/// wins; without it the address comes from the engine's swarm membership, and an engine outside
/// any swarm gets a line naming the setting to use. A host name that is no node name (the
/// swarm stack's `BERTH_CLUSTER_NODE`) is refused with exit 64, saying where it came from.
#[test]
fn cluster_hop_address_is_reported_and_a_bad_host_name_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let check = |extra: &str, node: &str| {
        let (cfg, _net) = write_config(dir.path(), 2, extra);
        Command::new(env!("CARGO_BIN_EXE_berth"))
            .arg("--config")
            .arg(&cfg)
            .args(["config", "check"])
            .env("BERTH_DATABASE_URL", "postgres://berth@127.0.0.1:1/berth")
            .env("BERTH_CLUSTER_NODE", node)
            .env_remove("BERTH_CLUSTER_ADVERTISE")
            .output()
            .expect("run berth")
    };
    let out = check("[cluster]\nadvertise = \"127.0.0.1:2299\"\n", "n1");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("cluster: node n1, hop endpoint 127.0.0.1:2299 (from cluster.advertise)"),
        "{text}"
    );

    let state = Command::new("docker")
        .args(["info", "--format", "{{.Swarm.LocalNodeState}}"])
        .output()
        .expect("run docker info");
    let out = check("[cluster]\nhop_port = 2301\n", "n1");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    if String::from_utf8_lossy(&state.stdout).trim() == "active" {
        assert!(
            text.contains(":2301 (from the swarm address of the engine"),
            "{text}"
        );
    } else {
        assert!(
            text.contains("cluster: node n1, hop endpoint unknown (")
                && text.contains("is not an active swarm member")
                && text.contains("[cluster] advertise"),
            "{text}"
        );
    }

    let out = check("", "Web1.example.com");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("\"Web1.example.com\" (from BERTH_CLUSTER_NODE")
            && err.contains("host's name"),
        "{err}"
    );
}
