//! `berth server move` between two nodes, each a `berth run node` process with its own
//! Docker objects (own name prefix and network on this engine, so the data really is copied
//! from one volume into another), a front on n1, and the mover on the front's host: open
//! sessions refuse the move, the data and its ownership arrive intact, logins follow the
//! server through the front, and the source's copy stays until `--purge-from`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use integration_tests::cluster::{config, free_port, ok, ssh, start, text, wait_port};
use integration_tests::gateway::client_opts;
use integration_tests::tenants::{DbKind, DockerWorld, TestDb, berth};

fn volume_exists(name: &str) -> bool {
    Command::new("docker")
        .args(["volume", "inspect", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_moves_to_another_node_with_its_data_and_logins_follow() -> Result<()> {
    integration_tests::tenants::require_docker()?;
    let db = TestDb::new(DbKind::Postgres, "clustermove")?;
    let w1 = DockerWorld::new("clmove1", 0);
    let mut w2 = DockerWorld::new("clmove2", 1);
    let mut attempt = 2;
    while w2.net.subnet == w1.net.subnet {
        w2 = DockerWorld::new("clmove2", attempt);
        attempt += 1;
    }
    let (hop1, hop2, front_port) = (free_port()?, free_port()?, free_port()?);
    let base = db.dir.path();
    let n1_cfg = config(
        &base.join("n1"),
        &db,
        &w1,
        &format!("node = \"n1\"\nadvertise = \"127.0.0.1:{hop1}\""),
        "listen = []",
    )?;
    let n2_cfg = config(
        &base.join("n2"),
        &db,
        &w2,
        &format!("node = \"n2\"\nadvertise = \"127.0.0.1:{hop2}\""),
        "listen = []",
    )?;
    // The front lives on n1's host: n1's servers are served locally, n2's over the hop.
    let front_cfg = config(
        &base.join("front"),
        &db,
        &w1,
        "node = \"n1\"\nfront = \"f1\"",
        &format!("listen = [\"127.0.0.1:{front_port}\"]"),
    )?;
    let (l1, l2, lf) = (
        base.join("n1.log"),
        base.join("n2.log"),
        base.join("front.log"),
    );
    let _n1 = start(&n1_cfg, "node", &l1)?;
    let _n2 = start(&n2_cfg, "node", &l2)?;
    tokio::task::block_in_place(|| wait_port(hop1, "node n1", &l1))?;
    tokio::task::block_in_place(|| wait_port(hop2, "node n2", &l2))?;
    let _front = start(&front_cfg, "front", &lf)?;
    tokio::task::block_in_place(|| wait_port(front_port, "the front", &lf))?;

    let key = base.join("id_ed25519");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()?;
    anyhow::ensure!(st.success(), "ssh-keygen");
    let public = std::fs::read_to_string(key.with_extension("pub"))?;
    ok(&n1_cfg, &["account", "add", "alice", "--no-password"], None)?;
    ok(
        &n1_cfg,
        &["account", "key", "add", "alice", public.trim()],
        None,
    )?;
    let out = ok(
        &n1_cfg,
        &["server", "create", "--owner", "alice", "--node", "n1"],
        None,
    )?;
    let user = out.lines().last().unwrap_or_default().to_string();
    let id = tenants::parse_login(&user).context("server name")?;
    let store = db.store().await?;

    // Data of the session user's own, plus a file only root can read.
    let write = "set -e; mkdir -p /apps/move && echo kept > /apps/move/note \
                 && head -c 3000000 /dev/urandom > /apps/move/blob \
                 && sha256sum /apps/move/blob | cut -d' ' -f1; id -un";
    let out = tokio::task::block_in_place(|| ssh(front_port, &key, &user, write))?;
    assert!(out.status.success(), "{}", text(&out));
    let before = String::from_utf8_lossy(&out.stdout).to_string();
    let mut lines = before.lines();
    let sum = lines.next().context("checksum")?.to_string();
    let session_user = lines.next().context("session user")?.to_string();

    // Refusals that change nothing.
    let (code, _, err) = berth(&front_cfg, &["server", "move", &user, "--to", "n1"], None)?;
    assert_eq!(code, 73, "{err}");
    assert!(err.contains("already on n1"), "{err}");
    let (code, _, err) = berth(&front_cfg, &["server", "move", &user, "--to", "n9"], None)?;
    assert_eq!(code, 67, "{err}");
    let (code, _, err) = berth(&n2_cfg, &["server", "move", &user, "--to", "n2"], None)?;
    assert_eq!(code, 64, "a host without a front key cannot move: {err}");
    assert!(err.contains("berth run front"), "{err}");

    // An open session refuses the move; the server stays on n1 and takes logins again.
    let mut held = Command::new("ssh");
    held.args(client_opts(&key))
        .arg("-p")
        .arg(front_port.to_string())
        .arg(format!("{user}@127.0.0.1"))
        .arg("--")
        .arg("echo started; exec sleep 300")
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
    let (code, _, err) = berth(&front_cfg, &["server", "move", &user, "--to", "n2"], None)?;
    assert_eq!(code, 75, "{err}");
    assert!(
        err.contains("1 open session(s) on host n1") && err.contains("--force"),
        "{err}"
    );
    assert!(err.contains(&format!("{user} stays on n1")), "{err}");
    let p = store.server_placement(id).await?.context("placement")?;
    assert_eq!((p.node.as_str(), p.moving_to), ("n1", None));
    let out = tokio::task::block_in_place(|| ssh(front_port, &key, &user, "cat /apps/move/note"))?;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "kept\n",
        "{}",
        text(&out)
    );
    let _ = held.kill();
    let _ = held.wait();
    // The session's process goes with its connection (hung up by the gateway).
    let quiet = tokio::task::block_in_place(|| -> Result<bool> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let out = ssh(front_port, &key, &user, "pgrep -cx -f 'sleep 300' || true")?;
            if String::from_utf8_lossy(&out.stdout).trim() == "0" {
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        Ok(false)
    })?;
    assert!(quiet, "the held session's process outlived its client");

    // The move.
    let out = ok(&front_cfg, &["server", "move", &user, "--to", "n2"], None)?;
    assert!(
        out.contains(&format!("moved {user} from n1 to n2")),
        "{out}"
    );
    assert!(out.contains("--purge-from n1"), "{out}");
    let p = store.server_placement(id).await?.context("placement")?;
    assert_eq!((p.node.as_str(), p.moving_to), ("n2", None));
    assert!(volume_exists(&format!(
        "{}-server-{}-data",
        w2.prefix,
        id.get()
    )));
    assert!(
        volume_exists(&format!("{}-server-{}-data", w1.prefix, id.get())),
        "the source keeps its copy until --purge-from"
    );

    // Through the same front, now over the hop to n2: the data, its owner, its checksum.
    let check = "cat /apps/move/note; sha256sum /apps/move/blob | cut -d' ' -f1; \
                 stat -c %U /apps/move/blob; hostname";
    let out = tokio::task::block_in_place(|| ssh(front_port, &key, &user, check))?;
    assert!(
        out.status.success(),
        "{}\nfront log:\n{}",
        text(&out),
        std::fs::read_to_string(&lf).unwrap_or_default()
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("kept\n{sum}\n{session_user}\n{user}\n")
    );
    let n2_log = std::fs::read_to_string(&l2)?;
    assert!(n2_log.contains("hop login"), "{n2_log}");
    // The node's audit names the client, not the front that relayed it.
    let out = tokio::task::block_in_place(|| {
        Command::new("ssh")
            .args(client_opts(&key))
            .args(["-o", "BindAddress=127.0.0.2", "-p"])
            .arg(front_port.to_string())
            .arg(format!("{user}@127.0.0.1"))
            .args(["--", "true"])
            .stdin(Stdio::null())
            .output()
    })?;
    assert!(out.status.success(), "{}", text(&out));
    // The node writes its session record when its side of the session closes, which may be
    // just after the client returned.
    let deadline = Instant::now() + Duration::from_secs(30);
    let node_rows = loop {
        let rows: Vec<_> = store
            .audit_events(200)
            .await?
            .into_iter()
            .filter(|e| e.event.server == Some(id) && e.event.detail["path"] == "agent")
            .collect();
        if rows
            .iter()
            .any(|e| e.event.peer.as_deref() == Some("127.0.0.2"))
            || Instant::now() > deadline
        {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        node_rows
            .iter()
            .any(|e| e.event.peer.as_deref() == Some("127.0.0.2")),
        "{node_rows:#?}"
    );
    let show = ok(&n1_cfg, &["server", "show", &user], None)?;
    assert!(show.contains("node:      n2"), "{show}");

    // Each node accounts for its own servers: the target has it, the source reports only the
    // copy left behind (stopped, kept for --purge-from) as another node's.
    let on = |cfg: &std::path::Path| -> Result<serde_json::Value> {
        let out = ok(cfg, &["server", "reconcile", "--json"], None)?;
        serde_json::from_str(&out).with_context(|| format!("reconcile --json: {out}"))
    };
    let listed = |r: &serde_json::Value, key: &str| -> Vec<String> {
        r[key]
            .as_array()
            .map(|a| a.iter().map(|v| v.to_string()).collect())
            .unwrap_or_default()
    };
    let sid = serde_json::Value::from(id.get()).to_string();
    let r2 = on(&n2_cfg)?;
    assert!(listed(&r2, "present").contains(&sid), "{r2}");
    assert!(!listed(&r2, "missing").contains(&sid), "{r2}");
    let r1 = on(&n1_cfg)?;
    for key in ["present", "missing", "stopped"] {
        assert!(!listed(&r1, key).contains(&sid), "{key} on n1: {r1}");
    }
    let left = r1["unknown"]
        .as_array()
        .and_then(|a| a.iter().find(|u| u["server"] == id.get()))
        .with_context(|| format!("the copy on n1 is not reported: {r1}"))?;
    assert_eq!(
        left["reason"],
        format!("{user} is placed on node n2"),
        "{r1}"
    );

    // The old copy goes only when asked, and never the live one.
    let (code, _, err) = berth(
        &front_cfg,
        &["server", "move", &user, "--purge-from", "n2"],
        None,
    )?;
    assert_eq!(code, 73, "{err}");
    assert!(volume_exists(&format!(
        "{}-server-{}-data",
        w2.prefix,
        id.get()
    )));
    let out = ok(
        &front_cfg,
        &["server", "move", &user, "--purge-from", "n1"],
        None,
    )?;
    assert!(
        out.contains(&format!("removed the copy of {user} on n1")),
        "{out}"
    );
    assert!(!volume_exists(&format!(
        "{}-server-{}-data",
        w1.prefix,
        id.get()
    )));
    let (code, _, err) = berth(&front_cfg, &["server", "move", &user, "--abort"], None)?;
    assert_eq!(code, 73, "{err}");
    assert!(err.contains("is not moving"), "{err}");

    // And back to n1, removing the copy on n2 at once.
    let out = ok(
        &front_cfg,
        &["server", "move", &user, "--to", "n1", "--purge"],
        None,
    )?;
    assert!(
        out.contains(&format!("moved {user} from n2 to n1")),
        "{out}"
    );
    assert!(!volume_exists(&format!(
        "{}-server-{}-data",
        w2.prefix,
        id.get()
    )));
    let out = tokio::task::block_in_place(|| ssh(front_port, &key, &user, "cat /apps/move/note"))?;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "kept\n",
        "{}",
        text(&out)
    );

    // A server created on another host's node: n2 makes it over the hop.
    let out = ok(
        &front_cfg,
        &["server", "create", "--owner", "alice", "--node", "n2"],
        None,
    )?;
    assert!(out.contains("on node n2: address 10."), "{out}");
    let second = out.lines().last().unwrap_or_default().to_string();
    let id2 = tenants::parse_login(&second).context("second server")?;
    assert_eq!(store.server_node(id2).await?.as_deref(), Some("n2"));
    assert!(volume_exists(&format!(
        "{}-server-{}-data",
        w2.prefix,
        id2.get()
    )));
    let out = tokio::task::block_in_place(|| ssh(front_port, &key, &second, "hostname"))?;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{second}\n"),
        "{}",
        text(&out)
    );
    // What the node refuses leaves no row behind; nor does a host without a front key.
    let before = store.servers(true).await?.len();
    let (code, _, err) = berth(
        &front_cfg,
        &[
            "server",
            "create",
            "--owner",
            "alice",
            "--node",
            "n2",
            "--image",
            "berth/none:x",
        ],
        None,
    )?;
    assert_ne!(code, 0);
    assert!(
        err.contains("node n2 could not create it") && err.contains("berth/none:x"),
        "{err}"
    );
    let (code, _, err) = berth(
        &n2_cfg,
        &["server", "create", "--owner", "alice", "--node", "n1"],
        None,
    )?;
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("berth run front"), "{err}");
    assert_eq!(
        store.servers(true).await?.len(),
        before,
        "a failed create keeps no row"
    );
    Ok(())
}
