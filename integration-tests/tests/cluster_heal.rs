//! A cluster node heals its own servers (`[cluster] heal_interval_secs`): a stopped container
//! of a server that should run is started, a lost container whose volume is kept is made again
//! with the data intact, and nothing else is touched — not a server the operator stopped, not
//! one whose volume is gone (no empty volume is made unattended), not a server placed on
//! another node.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use integration_tests::cluster::{config, free_port, ok, start, wait_port};
use integration_tests::tenants::{DbKind, DockerWorld, TestDb};

fn docker(args: &[&str]) -> Result<String> {
    let out = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("run docker")?;
    if !out.status.success() {
        bail!(
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The container's state ("running", "exited", …) or `None` when there is no container.
fn state(container: &str) -> Option<String> {
    docker(&["inspect", "--format", "{{.State.Status}}", container]).ok()
}

fn wait_for(what: &str, log: &std::path::Path, mut done: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        if done() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    bail!(
        "{what} did not happen within 90 s; the node's log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_starts_and_recreates_its_servers_and_leaves_the_rest_alone() -> Result<()> {
    integration_tests::tenants::require_docker()?;
    let db = TestDb::new(DbKind::Postgres, "clusterheal")?;
    let w = DockerWorld::new("clheal", 0);
    let hop = free_port()?;
    let base = db.dir.path();
    let cfg = config(
        &base.join("n1"),
        &db,
        &w,
        &format!("node = \"n1\"\nadvertise = \"127.0.0.1:{hop}\"\nheal_interval_secs = 1"),
        "listen = []",
    )?;
    ok(&cfg, &["account", "add", "alice", "--no-password"], None)?;
    let log = base.join("n1.log");
    let node = start(&cfg, "node", &log)?;
    tokio::task::block_in_place(|| wait_port(hop, "node n1", &log))?;
    for _ in 0..5 {
        ok(
            &cfg,
            &["server", "create", "--owner", "alice", "--node", "n1"],
            None,
        )?;
    }
    let (stopped, lost, held, gone, elsewhere) = (1, 2, 3, 4, 5);
    for n in 1..=5 {
        ok(&cfg, &["server", "start", &format!("server{n}")], None)?;
    }
    docker(&[
        "exec",
        &w.container(lost),
        "sh",
        "-c",
        "echo kept > /apps/marker",
    ])?;
    // With the node down (so no pass runs half-way through): the operator stops one, one
    // loses its container and its volume, one is placed on n2 (its container here is then a
    // copy n1 must not touch).
    drop(node);
    ok(&cfg, &["server", "stop", &format!("server{held}")], None)?;
    docker(&["rm", "-f", &w.container(gone)])?;
    docker(&["volume", "rm", &w.volume(gone)])?;
    // n2 is announced and never runs.
    ok(&cfg, &["node", "add", "n2"], None)?;
    let store = tenants::Store::connect(&db.url).await?;
    let id = tenants::ServerId::new(elsewhere).context("server id")?;
    store.place_server(id, "n2").await?;
    docker(&["stop", &w.container(elsewhere)])?;
    // Now the two n1 must heal: stopped behind the node's back, and removed with the volume kept.
    docker(&["stop", &w.container(stopped)])?;
    docker(&["rm", "-f", &w.container(lost)])?;
    assert_eq!(state(&w.container(lost)), None);

    let log = base.join("n1-again.log");
    let _node = start(&cfg, "node", &log)?;
    tokio::task::block_in_place(|| {
        wait_for("server1 started and server2 recreated", &log, || {
            state(&w.container(stopped)).as_deref() == Some("running")
                && state(&w.container(lost)).as_deref() == Some("running")
        })
    })?;
    let marker = docker(&["exec", &w.container(lost), "cat", "/apps/marker"])?;
    assert_eq!(
        marker, "kept",
        "the recreated container has the kept volume"
    );
    // The pass that healed those saw the others too; one more pass to be sure.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        state(&w.container(held)).as_deref(),
        Some("exited"),
        "a server the operator stopped stays stopped"
    );
    assert_eq!(
        state(&w.container(gone)),
        None,
        "no container without a volume"
    );
    assert!(
        docker(&["volume", "inspect", &w.volume(gone)]).is_err(),
        "no empty volume is made unattended"
    );
    assert_eq!(
        state(&w.container(elsewhere)).as_deref(),
        Some("exited"),
        "a server placed on n2 is not n1's to start"
    );
    let text = std::fs::read_to_string(&log)?;
    assert!(
        text.contains("heal: recreated a lost container"),
        "the node logs what it recreated:\n{text}"
    );
    let report = ok(&cfg, &["server", "reconcile", "--json"], None)?;
    let r: serde_json::Value = serde_json::from_str(&report)?;
    assert_eq!(r["missing"], serde_json::json!([gone]), "{report}");
    Ok(())
}
