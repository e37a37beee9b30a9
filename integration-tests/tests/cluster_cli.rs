//! `berth node …` as an operator runs it: the real binary, a config file, SQLite and
//! PostgreSQL; outputs, JSON and exit codes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use integration_tests::tenants::{DbKind, DockerWorld, TestDb, berth, write_cli_config};

fn ok(cfg: &Path, args: &[&str]) -> String {
    let (code, out, err) = berth(cfg, args, None).unwrap();
    assert_eq!(code, 0, "berth {args:?} failed: {err}");
    out
}

fn fails(cfg: &Path, args: &[&str], code: i32) -> String {
    let (got, out, err) = berth(cfg, args, None).unwrap();
    assert_eq!(got, code, "berth {args:?}: stdout {out} stderr {err}");
    err
}

fn node_json(cfg: &Path) -> Vec<serde_json::Value> {
    let out = ok(cfg, &["node", "list", "--json"]);
    serde_json::from_str(&out).unwrap()
}

fn nodes(kind: DbKind) {
    let db = TestDb::new(kind, "nodecli").unwrap();
    let world = DockerWorld::new("nodecli", 0);
    let cfg = write_cli_config(db.dir.path(), &db.url, &world, "").unwrap();
    let cfg = cfg.as_path();

    let out = ok(cfg, &["node", "list"]);
    assert!(out.contains("single host"), "{out}");
    assert!(node_json(cfg).is_empty());

    ok(
        cfg,
        &[
            "node",
            "add",
            "n1",
            "--capacity",
            "2",
            "--label",
            "dind=caps",
        ],
    );
    ok(cfg, &["node", "add", "n2"]);
    let err = fails(cfg, &["node", "add", "n1"], 73);
    assert!(err.contains("node n1 already exists"), "{err}");
    let err = fails(cfg, &["node", "add", "N_1"], 65);
    assert!(err.contains("invalid node name"), "{err}");
    let err = fails(cfg, &["node", "add", "n3", "--label", "dind=cap"], 65);
    assert!(err.contains("not a DinD mode"), "{err}");
    let err = fails(cfg, &["node", "add", "n3", "--label", "nokey"], 2);
    assert!(err.contains("KEY=VALUE"), "{err}");

    let list = node_json(cfg);
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["name"], "n1");
    assert_eq!(list[0]["state"], "new");
    assert_eq!(list[0]["free"], 2);
    assert_eq!(list[0]["labels"]["dind"], "caps");
    assert_eq!(list[1]["free"], serde_json::Value::Null);

    let out = ok(cfg, &["node", "drain", "n2"]);
    assert!(out.contains("drained"), "{out}");
    assert_eq!(node_json(cfg)[1]["state"], "drained");
    ok(cfg, &["node", "undrain", "n2"]);
    assert_eq!(node_json(cfg)[1]["state"], "new");
    let err = fails(cfg, &["node", "drain", "n9"], 67);
    assert!(err.contains("node n9 does not exist"), "{err}");

    let err = fails(cfg, &["node", "set", "n1"], 64);
    assert!(err.contains("nothing to change"), "{err}");
    ok(
        cfg,
        &[
            "node",
            "set",
            "n1",
            "--unlabel",
            "dind",
            "--label",
            "zone=a",
        ],
    );
    let list = node_json(cfg);
    assert_eq!(list[0]["labels"], serde_json::json!({ "zone": "a" }));

    let table = ok(cfg, &["node", "list"]);
    assert!(
        table.contains("NODE") && table.contains("n1") && table.contains("never"),
        "{table}"
    );
    let out = ok(cfg, &["node", "fronts"]);
    assert!(out.contains("no fronts"), "{out}");

    ok(cfg, &["node", "rm", "n2"]);
    assert_eq!(node_json(cfg).len(), 1);
    let err = fails(cfg, &["node", "forget-key", "n2"], 67);
    assert!(err.contains("node n2 does not exist"), "{err}");
}

#[test]
fn nodes_sqlite() {
    nodes(DbKind::Sqlite);
}

#[test]
fn nodes_postgres() {
    nodes(DbKind::Postgres);
}

/// `[cluster] node` on SQLite is refused at start with the reason, before anything runs.
#[test]
fn a_cluster_node_needs_postgres() {
    let db = TestDb::new(DbKind::Sqlite, "nodecfg").unwrap();
    let world = DockerWorld::new("nodecfg", 0);
    let cfg = write_cli_config(db.dir.path(), &db.url, &world, "").unwrap();
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str("\n[cluster]\nnode = \"n1\"\n");
    std::fs::write(&cfg, text).unwrap();
    let err = fails(&cfg, &["node", "list"], 64);
    assert!(
        err.contains("cluster.node is set") && err.contains("PostgreSQL"),
        "{err}"
    );
}
