//! `berth server list` answered by the running gateway: the real binary as `berth run gateway`,
//! real Docker and SQLite. The CLI's own config names a Docker endpoint that does not exist, so
//! a container state it prints can only have come from the gateway's event-fed map; `--docker`
//! and a stopped gateway show the CLI asking Docker itself.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::cluster::{Daemon, free_port};
use integration_tests::tenants::{
    DbKind, DockerWorld, TestDb, berth, berth_bin, require_docker, write_cli_config,
};

fn list(cfg: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["server", "list", "--json"];
    args.extend_from_slice(extra);
    let (code, out, err) = berth(cfg, &args, None).unwrap();
    assert_eq!(code, 0, "server list failed: {err}");
    serde_json::from_str(&out).unwrap()
}

/// `(state, docker)` of server1 in a `--json` list.
fn state_of(v: &serde_json::Value) -> (String, String) {
    let row = &v.as_array().expect("array")[0];
    let state = row["container"]["state"].as_str().unwrap_or("").to_string();
    (state, row["docker"].as_str().unwrap_or("").to_string())
}

/// Polls `list` until server1's container state is `want` (a minute at most: the gateway
/// follows Docker's events, whose delivery this test does not control).
fn wait_state(cfg: &Path, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = state_of(&list(cfg, &[]));
        if got.0 == want && got.1 == "ok" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "server list never showed {want:?} from the gateway; last {got:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test]
async fn server_list_is_answered_by_the_running_gateway() {
    require_docker().unwrap();
    let db = TestDb::new(DbKind::Sqlite, "lstgw").unwrap();
    let world = DockerWorld::new("lstgw", 0);
    let sock = db.dir.path().join("control.sock");
    let port = free_port().unwrap();
    let gw_dir = db.dir.path().join("gw");
    let cli_dir = db.dir.path().join("cli");
    std::fs::create_dir_all(&gw_dir).unwrap();
    std::fs::create_dir_all(&cli_dir).unwrap();
    let gw = write_cli_config(
        &gw_dir,
        &db.url,
        &world,
        &format!(
            "[ssh]\nlisten = [\"127.0.0.1:{port}\"]\ncontrol_socket = \"{}\"\n",
            sock.display()
        ),
    )
    .unwrap();
    let cli = write_cli_config(
        &cli_dir,
        &db.url,
        &world,
        &format!(
            "docker_host = \"unix:///nonexistent/berth-docker.sock\"\n[ssh]\ncontrol_socket = \"{}\"\n",
            sock.display()
        ),
    )
    .unwrap();

    let (code, _, err) = berth(&gw, &["account", "add", "alice", "--no-password"], None).unwrap();
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = berth(&gw, &["server", "create", "--owner", "alice"], None).unwrap();
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().last(), Some("server1"), "{out}");

    // No gateway yet: the CLI asks Docker, which its config cannot reach.
    let (state, docker) = state_of(&list(&cli, &[]));
    assert_eq!(state, "", "no state without Docker or a gateway");
    assert!(docker.contains("nonexistent"), "{docker}");

    let child = Command::new(berth_bin().unwrap())
        .arg("--config")
        .arg(&gw)
        .args(["run", "gateway"])
        .env("BERTH_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let daemon = Daemon(child);

    // Through the gateway: the state and address Docker gave server1.
    wait_state(&cli, "running");
    let via_gateway = list(&cli, &[]);
    let direct = list(&gw, &["--docker"]);
    assert_eq!(via_gateway[0]["container"], direct[0]["container"]);
    assert!(
        via_gateway[0]["container"]["address"].is_string(),
        "{via_gateway}"
    );
    let table = berth(&cli, &["server", "list"], None).unwrap().1;
    assert!(
        table.lines().nth(1).is_some_and(|l| l.contains("running")),
        "{table}"
    );

    // --docker skips the gateway: the CLI's unreachable Docker shows.
    let (state, docker) = state_of(&list(&cli, &["--docker"]));
    assert_eq!(state, "");
    assert!(docker.contains("nonexistent"), "{docker}");

    // A stop (berth's or anyone's) reaches the gateway through Docker's events.
    let (code, _, err) = berth(&gw, &["server", "stop", "server1"], None).unwrap();
    assert_eq!(code, 0, "{err}");
    wait_state(&cli, "exited");
    let (code, _, err) = berth(&gw, &["server", "start", "server1"], None).unwrap();
    assert_eq!(code, 0, "{err}");
    wait_state(&cli, "running");

    // The gateway gone: back to asking Docker.
    drop(daemon);
    let (state, docker) = state_of(&list(&cli, &[]));
    assert_eq!(state, "");
    assert!(docker.contains("nonexistent"), "{docker}");
}
