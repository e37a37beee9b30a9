//! The tenant store against real SQLite files and a real PostgreSQL server: every test body
//! runs on both backends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use integration_tests::tenants::{DbKind, TEST_COST, TestDb};
use tenants::{
    AuditEvent, AuditKind, DesiredState, ServerId, ServerSpec, Store, StoreError, password,
};

const KEY1: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIHD8kX34G+5hacsR4eEYezNhoIa+ohMGr407z4ALm5L alice@example";
const KEY1_FP: &str = "SHA256:BTZz8KnJqTOkgMISepQ3ROjhPAqHtQHnq/pnhC3qb6o";

fn key2() -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k");
    let st = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ecdsa", "-N", "", "-C", "second", "-f"])
        .arg(&path)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::read_to_string(path.with_extension("pub")).unwrap()
}

async fn accounts_and_keys(kind: DbKind) {
    let db = TestDb::new(kind, "accounts").unwrap();
    let store = db.store().await.unwrap();

    // Names: the rule is quoted in the error.
    for bad in ["Alice", "", "1x", "a b", "x".repeat(33).as_str()] {
        let err = store.add_account(bad, None::<&str>).await.unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidAccountName { .. }),
            "{bad:?}: {err}"
        );
        assert!(err.to_string().contains("lower-case"), "{err}");
    }

    let hash = password::hash("hunter2hunter2", TEST_COST).unwrap();
    let a = store.add_account("alice", Some(&hash)).await.unwrap();
    assert!(a.enabled && a.has_password);
    let dup = store.add_account("alice", None::<&str>).await.unwrap_err();
    assert!(
        matches!(dup, StoreError::DuplicateAccount(ref n) if n == "alice"),
        "{dup}"
    );
    store.add_account("bob", None::<&str>).await.unwrap();

    let list = store.accounts().await.unwrap();
    assert_eq!(
        list.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(),
        ["alice", "bob"]
    );
    assert!(!list[1].has_password);

    // Keys: validated, fingerprinted, unique per account.
    let k = store.add_key("alice", KEY1).await.unwrap();
    assert_eq!(k.fingerprint, KEY1_FP);
    assert_eq!(k.algorithm, "ssh-ed25519");
    let err = store.add_key("alice", KEY1).await.unwrap_err();
    assert!(matches!(err, StoreError::DuplicateKey { .. }), "{err}");
    let err = store
        .add_key("alice", "ssh-ed25519 AAAAnotakey")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidKey(_)), "{err}");
    let err = store.add_key("nobody", KEY1).await.unwrap_err();
    assert!(matches!(err, StoreError::UnknownAccount(_)), "{err}");
    // The same key may belong to another account.
    store.add_key("bob", KEY1).await.unwrap();
    let k2 = store.add_key("alice", &key2()).await.unwrap();
    assert_eq!(store.keys("alice").await.unwrap().len(), 2);
    assert_eq!(store.account("alice").await.unwrap().unwrap().keys, 2);

    // Password change, enable/disable.
    let hash2 = password::hash("another-one", TEST_COST).unwrap();
    store.set_password("alice", Some(&hash2)).await.unwrap();
    assert!(matches!(
        store
            .set_password("nobody", Some(&hash2))
            .await
            .unwrap_err(),
        StoreError::UnknownAccount(_)
    ));
    store.set_enabled("alice", false).await.unwrap();
    assert!(!store.account("alice").await.unwrap().unwrap().enabled);

    // server_auth: one query with everything the gateway needs.
    let s = store
        .insert_server("alice", &ServerSpec::default())
        .await
        .unwrap();
    let auth = store.server_auth(s.id).await.unwrap().unwrap();
    assert_eq!(auth.owner, "alice");
    assert!(!auth.owner_enabled && !auth.login_allowed());
    assert!(password::verify(
        "another-one",
        auth.password_hash.as_deref().unwrap()
    ));
    assert_eq!(auth.authorized_keys.len(), 2);
    store.set_enabled("alice", true).await.unwrap();
    let auth = store.server_auth(s.id).await.unwrap().unwrap();
    assert!(auth.login_allowed());
    assert!(
        store
            .server_auth(ServerId::new(999_999).unwrap())
            .await
            .unwrap()
            .is_none()
    );

    // Key removal by fingerprint.
    store.remove_key("alice", &k2.fingerprint).await.unwrap();
    let err = store
        .remove_key("alice", &k2.fingerprint)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::UnknownKey { .. }), "{err}");
    assert_eq!(
        store
            .server_auth(s.id)
            .await
            .unwrap()
            .unwrap()
            .authorized_keys
            .len(),
        1
    );

    // An owner of a live server cannot be removed; after the server is deleted it can.
    let err = store.remove_account("alice").await.unwrap_err();
    assert!(
        matches!(&err, StoreError::AccountHasServers { servers, .. } if servers == &vec![s.id]),
        "{err}"
    );
    assert!(err.to_string().contains(&s.id.to_string()), "{err}");
    store.mark_deleted(s.id).await.unwrap();
    let err = store.mark_deleted(s.id).await.unwrap_err();
    assert!(matches!(err, StoreError::ServerDeleted(_)), "{err}");
    store.remove_account("alice").await.unwrap();
    assert!(store.account("alice").await.unwrap().is_none());
    assert!(matches!(
        store.remove_account("alice").await.unwrap_err(),
        StoreError::UnknownAccount(_)
    ));
    // The deleted server keeps its history and reports itself deleted to the gateway.
    let auth = store.server_auth(s.id).await.unwrap().unwrap();
    assert!(auth.deleted && !auth.login_allowed() && auth.password_hash.is_none());
    assert_eq!(auth.owner, "alice");
    // bob's copy of the key survived alice's removal.
    assert_eq!(store.keys("bob").await.unwrap().len(), 1);
    store.close().await;
}

#[tokio::test]
async fn accounts_and_keys_sqlite() {
    accounts_and_keys(DbKind::Sqlite).await;
}

#[tokio::test]
async fn accounts_and_keys_postgres() {
    accounts_and_keys(DbKind::Postgres).await;
}

async fn servers_and_audit(kind: DbKind) {
    let db = TestDb::new(kind, "servers").unwrap();
    let store = db.store().await.unwrap();
    store.add_account("carol", None::<&str>).await.unwrap();
    let err = store
        .insert_server("nobody", &ServerSpec::default())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::UnknownAccount(_)), "{err}");

    let spec = ServerSpec {
        image: Some("example/img:1".into()),
        memory: Some(512 << 20),
        nano_cpus: Some(1_500_000_000),
        pids: Some(100),
        user: Some("root".into()),
        dind: Some(tenants::DindMode::Caps),
        init: Some(tenants::spec::InitMode::Systemd),
    };
    let s1 = store.insert_server("carol", &spec).await.unwrap();
    let got = store.server(s1.id).await.unwrap().unwrap();
    assert_eq!(got.spec, spec);
    assert_eq!(got.owner, "carol");
    assert_eq!(got.desired, DesiredState::Running);
    store
        .set_desired_state(s1.id, DesiredState::Stopped)
        .await
        .unwrap();
    assert_eq!(
        store.server(s1.id).await.unwrap().unwrap().desired,
        DesiredState::Stopped
    );

    // 20 concurrent inserts (as from several gateways/CLIs): 20 distinct ids.
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let st: Store = store.clone();
        tasks.push(tokio::spawn(async move {
            st.insert_server("carol", &ServerSpec::default())
                .await
                .map(|s| s.id)
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap().unwrap());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20);

    // Deleted ids are never handed out again.
    let last = *ids.last().unwrap();
    store.mark_deleted(last).await.unwrap();
    let next = store
        .insert_server("carol", &ServerSpec::default())
        .await
        .unwrap();
    assert!(next.id > last, "{} <= {}", next.id, last);
    assert_eq!(store.servers(false).await.unwrap().len(), 21);
    assert_eq!(store.servers(true).await.unwrap().len(), 22);
    let err = store
        .set_desired_state(last, DesiredState::Running)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::ServerDeleted(_)), "{err}");
    let err = store
        .set_desired_state(ServerId::new(4_000_000).unwrap(), DesiredState::Running)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::UnknownServer(_)), "{err}");

    // Audit events round-trip.
    store
        .record_audit(AuditEvent {
            server: Some(s1.id),
            account: Some("carol".into()),
            peer: Some("192.0.2.7:50000".into()),
            method: Some("password".into()),
            detail: serde_json::json!({"reason": "bad password"}),
            ..AuditEvent::new(AuditKind::Auth, "failure")
        })
        .await
        .unwrap();
    store
        .record_audit(AuditEvent::new(AuditKind::Admin, "success"))
        .await
        .unwrap();
    let ev = store.audit_events(10).await.unwrap();
    assert_eq!(ev.len(), 2);
    assert_eq!(ev[0].event.kind, AuditKind::Admin);
    assert_eq!(ev[1].event.kind, AuditKind::Auth);
    assert_eq!(ev[1].event.server, Some(s1.id));
    assert_eq!(ev[1].event.peer.as_deref(), Some("192.0.2.7:50000"));
    assert_eq!(ev[1].event.detail["reason"], "bad password");
    store.close().await;
}

#[tokio::test]
async fn servers_and_audit_sqlite() {
    servers_and_audit(DbKind::Sqlite).await;
}

#[tokio::test]
async fn servers_and_audit_postgres() {
    servers_and_audit(DbKind::Postgres).await;
}

#[tokio::test]
async fn sqlite_file_modes_and_reopen() {
    let db = TestDb::new(DbKind::Sqlite, "modes").unwrap();
    let store = db.store().await.unwrap();
    store.add_account("dave", None::<&str>).await.unwrap();
    let path = db.path.clone().unwrap();
    let file_mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    let dir_mode = std::fs::metadata(path.parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(file_mode, 0o600);
    assert_eq!(dir_mode, 0o700);
    store.close().await;
    // A loosened file is tightened on open; data and migrations survive reopening.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let store = db.store().await.unwrap();
    assert!(store.account("dave").await.unwrap().is_some());
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    store.close().await;
}

#[tokio::test]
async fn sqlite_locked_is_reported_as_locked() {
    use std::io::Write;
    let db = TestDb::new(DbKind::Sqlite, "locked").unwrap();
    let store = db.store().await.unwrap();
    let path = db.path.clone().unwrap();
    // Another process holds the write lock.
    let mut holder = std::process::Command::new("sqlite3")
        .arg(&path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("sqlite3 CLI (apt-get install sqlite3)");
    let mut stdin = holder.stdin.take().unwrap();
    writeln!(
        stdin,
        "BEGIN EXCLUSIVE; INSERT INTO audit_events (at, kind, outcome) VALUES (0, 'x', 'y');"
    )
    .unwrap();
    stdin.flush().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = Instant::now();
    let err = store.add_account("erin", None::<&str>).await.unwrap_err();
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    assert!(err.is_retryable());
    assert!(err.to_string().contains("locked"), "{err}");
    assert!(
        t.elapsed() >= Duration::from_secs(4),
        "gave up after {:?}",
        t.elapsed()
    );
    // Once the other writer is gone, writes work again.
    store.add_account("erin", None::<&str>).await.unwrap();
}

#[tokio::test]
async fn unreachable_postgres_names_the_url_without_password() {
    let t = Instant::now();
    let err = Store::connect("postgres://berth:s3cret@127.0.0.1:1/nope")
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Unreachable { .. }), "{err:?}");
    assert!(err.is_retryable());
    assert!(
        msg.contains("127.0.0.1:1") && !msg.contains("s3cret"),
        "{msg}"
    );
    assert!(t.elapsed() < Duration::from_secs(15));
    let err = Store::connect("mysql://x").await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidUrl { .. }), "{err}");
}
