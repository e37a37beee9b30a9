//! The cluster tables (nodes, fronts, placements, live sessions) against real SQLite files and a real
//! PostgreSQL server: every test body runs on both backends. What the schema must enforce
//! across hosts is checked here, where two writers really share one database.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use integration_tests::tenants::{DbKind, TestDb};
use tenants::placement::{self, Needs};
use tenants::{ServerSpec, StoreError};

const HOST_KEY_A: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIHD8kX34G+5hacsR4eEYezNhoIa+ohMGr407z4ALm5L n1";
const HOST_KEY_B: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA9d0AgIl0SdnnOVpvwlKVW4SQRtBWmvhR3XWZ4nXjVz other";

async fn nodes_and_placement(kind: DbKind) {
    let db = TestDb::new(kind, "nodes").unwrap();
    let store = db.store().await.unwrap();
    // A fresh store is a single-host store.
    assert!(store.nodes().await.unwrap().is_empty());

    // Names follow the rule; duplicates are refused by the database.
    let err = store
        .add_node("Bad_Name", 0, &BTreeMap::new())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidNodeName { .. }), "{err}");
    let mut labels = BTreeMap::new();
    labels.insert("dind".to_string(), "caps".to_string());
    let n1 = store.add_node("n1", 2, &labels).await.unwrap();
    assert_eq!((n1.capacity, n1.servers, n1.drained), (2, 0, false));
    assert!(n1.last_seen.is_none() && n1.host_key.is_empty());
    let err = store.add_node("n1", 0, &BTreeMap::new()).await.unwrap_err();
    assert!(
        matches!(err, StoreError::DuplicateNode(ref n) if n == "n1"),
        "{err}"
    );

    // The node's own start pins its host key; a different key later is refused and changes
    // nothing; an operator's forget-key lets the next start pin again.
    let reg = store
        .register_node("n1", "10.9.0.1:2200", HOST_KEY_A)
        .await
        .unwrap();
    assert_eq!(reg.host_key, HOST_KEY_A);
    assert_eq!(reg.labels.get("dind").map(String::as_str), Some("caps"));
    assert!(reg.last_seen.is_some());
    let err = store
        .register_node("n1", "10.9.0.66:2200", HOST_KEY_B)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NodeKeyMismatch(_)), "{err}");
    assert!(
        err.to_string().contains("berth node forget-key n1"),
        "{err}"
    );
    let still = store.node("n1").await.unwrap().unwrap();
    assert_eq!(
        (still.host_key.as_str(), still.advertise.as_str()),
        (HOST_KEY_A, "10.9.0.1:2200")
    );
    store.forget_node_key("n1").await.unwrap();
    store
        .register_node("n1", "10.9.0.1:2200", HOST_KEY_B)
        .await
        .unwrap();
    store
        .register_node("n1", "10.9.0.1:2200", HOST_KEY_B)
        .await
        .unwrap();
    // A node nobody announced registers itself.
    let n2 = store
        .register_node("n2", "10.9.0.2:2200", HOST_KEY_A)
        .await
        .unwrap();
    assert_eq!(n2.capacity, 0);

    // Placement rows: one home per server, unknown nodes refused, counts per node.
    store.add_account("alice", None::<&str>).await.unwrap();
    let s1 = store
        .insert_server("alice", &ServerSpec::default())
        .await
        .unwrap();
    let s2 = store
        .insert_server("alice", &ServerSpec::default())
        .await
        .unwrap();
    assert_eq!(store.server_node(s1.id).await.unwrap(), None);
    let err = store.place_server(s1.id, "n9").await.unwrap_err();
    assert!(
        matches!(err, StoreError::UnknownNode(ref n) if n == "n9"),
        "{err}"
    );
    store.place_server(s1.id, "n1").await.unwrap();
    store.place_server(s2.id, "n1").await.unwrap();
    assert_eq!(
        store.server_node(s1.id).await.unwrap().as_deref(),
        Some("n1")
    );
    assert_eq!(store.node("n1").await.unwrap().unwrap().servers, 2);
    // A move is one row switch.
    store.place_server(s2.id, "n2").await.unwrap();
    assert_eq!(
        store.server_node(s2.id).await.unwrap().as_deref(),
        Some("n2")
    );
    let counts: Vec<(String, u32)> = store
        .nodes()
        .await
        .unwrap()
        .into_iter()
        .map(|n| (n.name, n.servers))
        .collect();
    assert_eq!(counts, [("n1".into(), 1), ("n2".into(), 1)]);

    // Drain, capacity, labels.
    store.set_node_drained("n2", true).await.unwrap();
    store.update_node("n1", Some(1), None).await.unwrap();
    let err = store.set_node_drained("n9", true).await.unwrap_err();
    assert!(matches!(err, StoreError::UnknownNode(_)), "{err}");
    let nodes = store.nodes().await.unwrap();
    let now = chrono::Utc::now();
    let ready = std::time::Duration::from_secs(60);
    // n1 is full (1 of 1), n2 drained: nothing fits, and the error says why for each.
    let err = placement::place(&nodes, Needs::default(), None, now, ready).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("n1 full (1 servers)") && text.contains("n2 drained"),
        "{text}"
    );
    // The operator may still name the drained node.
    let picked = placement::place(&nodes, Needs::default(), Some("n2"), now, ready).unwrap();
    assert_eq!(picked.name, "n2");

    // A deleted server no longer counts; a node with live servers cannot be removed.
    let err = store.remove_node("n1").await.unwrap_err();
    assert!(matches!(err, StoreError::NodeHasServers { .. }), "{err}");
    assert!(err.to_string().contains("server1"), "{err}");
    store.mark_deleted(s1.id).await.unwrap();
    assert_eq!(store.node("n1").await.unwrap().unwrap().servers, 0);
    store.remove_node("n1").await.unwrap();
    assert!(store.node("n1").await.unwrap().is_none());
    store.close().await;
}

#[tokio::test]
async fn nodes_and_placement_sqlite() {
    nodes_and_placement(DbKind::Sqlite).await;
}

#[tokio::test]
async fn nodes_and_placement_postgres() {
    nodes_and_placement(DbKind::Postgres).await;
}

async fn fronts(kind: DbKind) {
    let db = TestDb::new(kind, "fronts").unwrap();
    let store = db.store().await.unwrap();
    let f = store.register_front("f1", HOST_KEY_A).await.unwrap();
    assert_eq!(f.key_line, HOST_KEY_A);
    // A front's restart with a new key replaces the old one (nodes trust the row).
    store.register_front("f1", HOST_KEY_B).await.unwrap();
    let all = store.fronts().await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].key_line, HOST_KEY_B);
    let err = store.register_front("F 1", HOST_KEY_A).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidFrontName { .. }), "{err}");

    // Live sessions: the front publishes two, any host lists and selects them, a kill request
    // reaches only the named one (and only on a front seen recently), the front confirms by
    // removing the row; removing the front removes its rows.
    let row = |id: u64, server: u32, account: &str| tenants::LiveSessionRow {
        local_id: id,
        server,
        account: account.into(),
        peer: "192.0.2.7:40000".into(),
        kind: "shell".into(),
        started: 1_000,
        last_active: 1_010,
        bytes_in: 5,
        bytes_out: 7,
        recording: false,
    };
    store.clear_live_sessions("f1").await.unwrap();
    store
        .publish_live_sessions("f1", &[row(1, 3, "alice"), row(2, 4, "bob")], &[], true)
        .await
        .unwrap();
    let all = store
        .live_sessions(&tenants::LiveSelector::default())
        .await
        .unwrap();
    assert_eq!(
        all.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        ["f1/1", "f1/2"]
    );
    assert!(all[0].front_seen.is_some() && !all[0].kill_requested);
    let by_server = tenants::LiveSelector {
        server: tenants::ServerId::new(4),
        ..Default::default()
    };
    let listed = store.live_sessions(&by_server).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].account, "bob");
    // Counters refreshed; a pending kill survives a refresh.
    let by_account = tenants::LiveSelector {
        account: Some("alice".into()),
        ..Default::default()
    };
    let far_future = i64::MAX / 2;
    assert!(
        store
            .request_session_kill(&by_account, Some("bye"), far_future)
            .await
            .unwrap()
            .is_empty(),
        "a front not seen since then is not asked"
    );
    assert_eq!(
        store
            .request_session_kill(&by_account, Some("bye"), 0)
            .await
            .unwrap(),
        ["f1/1"]
    );
    let mut moved = row(1, 3, "alice");
    moved.bytes_out = 99;
    store
        .publish_live_sessions("f1", &[moved], &[], false)
        .await
        .unwrap();
    assert_eq!(
        store.pending_session_kills("f1").await.unwrap(),
        [(1, Some("bye".to_string()))]
    );
    let one = tenants::LiveSelector {
        id: Some(("f1".into(), 1)),
        ..Default::default()
    };
    let s1 = store.live_sessions(&one).await.unwrap();
    assert_eq!(
        (s1.len(), s1[0].bytes_out, s1[0].kill_requested),
        (1, 99, true)
    );
    store
        .publish_live_sessions("f1", &[], &[1], false)
        .await
        .unwrap();
    assert!(store.live_sessions(&one).await.unwrap().is_empty());
    assert!(store.pending_session_kills("f1").await.unwrap().is_empty());
    store.remove_front("f1").await.unwrap();
    assert!(
        store
            .live_sessions(&tenants::LiveSelector::default())
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.fronts().await.unwrap().is_empty());
    let err = store.remove_front("f1").await.unwrap_err();
    assert!(matches!(err, StoreError::UnknownFront(_)), "{err}");
    store.close().await;
}

#[tokio::test]
async fn fronts_sqlite() {
    fronts(DbKind::Sqlite).await;
}

#[tokio::test]
async fn fronts_postgres() {
    fronts(DbKind::Postgres).await;
}
