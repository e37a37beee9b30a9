//! The cluster roles as an operator starts them: two `berth run` processes on one Docker host
//! sharing one real PostgreSQL database — `berth run node` as node n2 (hop endpoint) and
//! `berth run front` as front f1 on node n1 — and the real OpenSSH client logging in through
//! the front to a server placed on n2. An operator on another host lists and ends a front's
//! session through the store. Then n2 goes away and the client gets one clear line.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use integration_tests::cluster::{config, free_port, ok, ssh, start, text, wait_port};
use integration_tests::gateway::client_opts;
use integration_tests::tenants::{DbKind, DockerWorld, TestDb, berth};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_through_a_front_reaches_a_server_on_another_node() -> Result<()> {
    integration_tests::tenants::require_docker()?;
    let db = TestDb::new(DbKind::Postgres, "clusterrun")?;
    let world = DockerWorld::new("clusterrun", 0);
    let hop_port = free_port()?;
    let front_port = free_port()?;
    let base = db.dir.path();
    let node_cfg = config(
        &base.join("node"),
        &db,
        &world,
        &format!("node = \"n2\"\nadvertise = \"127.0.0.1:{hop_port}\""),
        "listen = []",
    )?;
    let front_cfg = config(
        &base.join("front"),
        &db,
        &world,
        "node = \"n1\"\nfront = \"f1\"",
        &format!("listen = [\"127.0.0.1:{front_port}\"]"),
    )?;

    // The node first: it makes the tenant network and registers with its hop host key.
    let node_log = base.join("node.log");
    let node = start(&node_cfg, "node", &node_log)?;
    tokio::task::block_in_place(|| wait_port(hop_port, "the node", &node_log))?;
    let front_log = base.join("front.log");
    let front = start(&front_cfg, "front", &front_log)?;
    tokio::task::block_in_place(|| wait_port(front_port, "the front", &front_log))?;
    // A second front on another "host" (n3 holds no servers and runs no node component).
    let front2_port = free_port()?;
    let front2_cfg = config(
        &base.join("front2"),
        &db,
        &world,
        "node = \"n3\"\nfront = \"f2\"",
        &format!("listen = [\"127.0.0.1:{front2_port}\"]"),
    )?;
    let front2_log = base.join("front2.log");
    let _front2 = start(&front2_cfg, "front", &front2_log)?;
    tokio::task::block_in_place(|| wait_port(front2_port, "the second front", &front2_log))?;

    // An account with a key and a server, placed on n2.
    let key = base.join("id_ed25519");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()?;
    anyhow::ensure!(st.success(), "ssh-keygen");
    let public = std::fs::read_to_string(key.with_extension("pub"))?;
    ok(
        &node_cfg,
        &["account", "add", "alice", "--no-password"],
        None,
    )?;
    ok(
        &node_cfg,
        &["account", "key", "add", "alice", public.trim()],
        None,
    )?;
    // Placement: an unknown node is refused; on n2's own host the server is made and placed
    // there (from another host, n2 makes it over the hop: `cluster_move.rs`).
    let (code, _, err) = berth(
        &node_cfg,
        &["server", "create", "--owner", "alice", "--node", "n9"],
        None,
    )?;
    assert_eq!(code, 67, "{err}");
    assert!(err.contains("node n9 does not exist"), "{err}");
    let out = ok(
        &node_cfg,
        &["server", "create", "--owner", "alice", "--node", "n2"],
        None,
    )?;
    let user = out.lines().last().unwrap_or_default().to_string();
    let id = tenants::parse_login(&user).context("server name")?;
    let store = db.store().await?;
    assert_eq!(store.server_node(id).await?.as_deref(), Some("n2"));
    let show = ok(&node_cfg, &["server", "show", &user], None)?;
    assert!(show.contains("node:      n2"), "{show}");

    // The operator's view: n2 ready with its server and pinned key, f1 registered.
    let list: serde_json::Value =
        serde_json::from_str(&ok(&node_cfg, &["node", "list", "--json"], None)?)?;
    let n2 = list
        .as_array()
        .and_then(|a| a.iter().find(|n| n["name"] == "n2"))
        .context("n2 listed")?;
    assert_eq!(n2["state"], "ready", "{list}");
    assert_eq!(n2["servers"], 1, "{list}");
    assert!(
        n2["host_key"]
            .as_str()
            .is_some_and(|k| k.starts_with("ssh-ed25519 ")),
        "{list}"
    );
    let fronts = ok(&node_cfg, &["node", "fronts"], None)?;
    assert!(fronts.contains("f1"), "{fronts}");

    // Through the front, across the hop, into the server's container.
    let out = tokio::task::block_in_place(|| {
        ssh(
            front_port,
            &key,
            &user,
            "echo hello-$BERTH_SERVER; hostname",
        )
    })?;
    assert!(
        out.status.success(),
        "{}\nfront log:\n{}",
        text(&out),
        std::fs::read_to_string(&front_log).unwrap_or_default()
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("hello-{user}\n{user}\n")
    );
    let front_text = std::fs::read_to_string(&front_log)?;
    assert!(front_text.contains("relaying to node"), "{front_text}");
    let node_text = std::fs::read_to_string(&node_log)?;
    assert!(node_text.contains("hop login"), "{node_text}");

    // The operator on another host (n2's config) sees a session held by front f2 through the
    // store, and ends it: the client is told why.
    let mut watched = Command::new("ssh");
    watched
        .args(client_opts(&key))
        .arg("-p")
        .arg(front2_port.to_string())
        .arg(format!("{user}@127.0.0.1"))
        .arg("--")
        .arg("echo started; exec sleep 313")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut watched = watched.spawn().context("spawn the watched session")?;
    let mut watched_out = watched.stdout.take().context("watched stdout")?;
    tokio::task::block_in_place(|| -> Result<()> {
        use std::io::Read;
        let mut seen = Vec::new();
        let mut buf = [0u8; 64];
        while !String::from_utf8_lossy(&seen).contains("started") {
            let n = watched_out.read(&mut buf)?;
            anyhow::ensure!(n > 0, "the watched session ended before it started");
            seen.extend_from_slice(&buf[..n]);
        }
        Ok(())
    })?;
    // Fronts publish within about a second; generous for a loaded machine.
    let listed = tokio::task::block_in_place(|| -> Result<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let list: serde_json::Value =
                serde_json::from_str(&ok(&node_cfg, &["session", "list", "--json"], None)?)?;
            let row = list.as_array().and_then(|a| {
                a.iter()
                    .find(|s| s["front"] == "f2" && s["server"] == id.get() && s["kind"] == "exec")
            });
            if let Some(row) = row {
                return Ok(row.clone());
            }
            anyhow::ensure!(Instant::now() < deadline, "never listed: {list}");
            std::thread::sleep(Duration::from_millis(200));
        }
    })?;
    assert_eq!(listed["account"], "alice", "{listed}");
    assert_eq!(listed["stale"], false, "{listed}");
    let session_id = listed["id"].as_str().context("session id")?.to_string();
    assert!(session_id.starts_with("f2/"), "{listed}");
    let (code, out, err) = berth(
        &node_cfg,
        &[
            "session",
            "kill",
            &session_id,
            "--message",
            "abuse report 42",
        ],
        None,
    )?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("ended {session_id}")), "{out}{err}");
    assert!(out.contains("1 session(s) ended"), "{out}{err}");
    let watched = tokio::task::block_in_place(|| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = watched.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = watched.kill();
        watched.wait_with_output()
    })?;
    let said = String::from_utf8_lossy(&watched.stderr);
    assert!(
        said.contains("berth: this session was ended by the operator: abuse report 42"),
        "{said}"
    );
    let list = ok(&node_cfg, &["session", "list", "--json"], None)?;
    assert!(!list.contains(&session_id), "{list}");

    // A front killed mid-session: its client's session ends, what the tenant detached keeps
    // running, the session's own processes are hung up on the node, and the client gets in
    // again at once through the other front.
    let mut held = Command::new("ssh");
    held.args(client_opts(&key))
        .arg("-p")
        .arg(front_port.to_string())
        .arg(format!("{user}@127.0.0.1"))
        .arg("--")
        // "started" only once the detached process is in its own session: before its exec it
        // is still in the session's process group, which the hangup below rightly kills.
        .arg(
            "setsid sleep 311 </dev/null >/dev/null 2>&1 & \
             until pgrep -x -f 'sleep 311' >/dev/null; do sleep 0.05; done; \
             echo started; exec sleep 312",
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut held = held.spawn().context("spawn the held session")?;
    let mut stdout = held.stdout.take().context("held stdout")?;
    tokio::task::block_in_place(|| -> Result<()> {
        use std::io::Read;
        let mut seen = Vec::new();
        let mut buf = [0u8; 64];
        while !String::from_utf8_lossy(&seen).contains("started") {
            let n = stdout.read(&mut buf)?;
            anyhow::ensure!(n > 0, "the held session ended before it started");
            seen.extend_from_slice(&buf[..n]);
        }
        Ok(())
    })?;
    let _ = Command::new("kill")
        .args(["-9", &front.0.id().to_string()])
        .status();
    let ended = tokio::task::block_in_place(|| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = held.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    });
    if !ended {
        let _ = held.kill();
    }
    let _ = held.wait();
    assert!(ended, "the client's session outlived its front");
    let count = |pattern: &str| -> Result<String> {
        let out = ssh(
            front2_port,
            &key,
            &user,
            &format!("pgrep -cx -f '{pattern}' || true"),
        )?;
        anyhow::ensure!(out.status.success(), "{}", text(&out));
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    assert_eq!(
        tokio::task::block_in_place(|| count("sleep 311"))?,
        "1",
        "the detached process must survive its front"
    );
    let hung_up = tokio::task::block_in_place(|| -> Result<bool> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if count("sleep 312")? == "0" {
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        Ok(false)
    })?;
    assert!(
        hung_up,
        "the killed front's session was not hung up on the node"
    );
    drop(front);

    // n2 goes away: the next login through a front gets one clear line, promptly.
    drop(node);
    let t = Instant::now();
    let out = tokio::task::block_in_place(|| ssh(front2_port, &key, &user, "true"))?;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(&format!("{user}'s host n2 is unreachable; try again later")),
        "{}",
        text(&out)
    );
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t.elapsed()
    );
    Ok(())
}
