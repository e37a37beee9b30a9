//! Authenticator tests against an in-memory backend: every rejection path looks and costs the
//! same as a wrong password, budgets run before bcrypt, audit never sees a password, and a storm
//! from one address does not delay another.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use russh::keys::{Algorithm, PrivateKey, PublicKey};
use tenants::ServerId;

use super::*;
use crate::backend::{BackendError, Credentials, Target};

const COST: u32 = 4;

#[derive(Default)]
struct FakeBackend {
    creds: Mutex<HashMap<u32, Credentials>>,
    audits: Mutex<Vec<AuditRecord>>,
    unavailable: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl Backend for FakeBackend {
    async fn credentials(&self, server: ServerId) -> Result<Option<Credentials>, BackendError> {
        if self.unavailable.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(BackendError::Unavailable("database down".into()));
        }
        Ok(self
            .creds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&server.get())
            .cloned())
    }
    async fn ensure_running(&self, _server: ServerId) -> Result<Target, BackendError> {
        Err(BackendError::Failed("not in this test".into()))
    }
    async fn exec(
        &self,
        _target: &Target,
        _login: &str,
        _req: crate::backend::ExecRequest,
    ) -> Result<crate::backend::Process, BackendError> {
        Err(BackendError::Failed("not in this test".into()))
    }
    async fn connect(
        &self,
        _target: &Target,
        _login: &str,
        _dest: crate::policy::ForwardDest,
        _port: u16,
    ) -> Result<crate::backend::Stream, BackendError> {
        Err(BackendError::Failed("not in this test".into()))
    }
    async fn audit(&self, record: AuditRecord) {
        self.audits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(record);
    }
}

impl FakeBackend {
    fn add(
        &self,
        n: u32,
        owner: &str,
        password: Option<&str>,
        keys: Vec<PublicKey>,
        allowed: bool,
    ) {
        let hash = password.map(|p| bcrypt::hash(p, COST).unwrap_or_else(|e| panic!("hash: {e}")));
        let server = sid(n);
        self.creds.lock().unwrap_or_else(|e| e.into_inner()).insert(
            n,
            Credentials {
                server,
                owner: owner.into(),
                login_allowed: allowed,
                password_hash: hash,
                authorized_keys: keys,
            },
        );
    }

    fn audits(&self) -> Vec<AuditRecord> {
        self.audits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits for the audit queue to deliver at least `n` records.
    async fn wait_audits(&self, n: usize) -> Vec<AuditRecord> {
        for _ in 0..200 {
            let a = self.audits();
            if a.len() >= n {
                return a;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("expected {n} audit records, got {:?}", self.audits());
    }
}

fn sid(n: u32) -> ServerId {
    ServerId::new(n).unwrap_or_else(|| panic!("server id {n}"))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn key() -> PrivateKey {
    PrivateKey::random(&mut rand_core_rng(), Algorithm::Ed25519).unwrap_or_else(|e| panic!("{e}"))
}

fn rand_core_rng() -> impl russh::keys::ssh_key::rand_core::CryptoRng {
    struct R;
    impl russh::keys::ssh_key::rand_core::TryRng for R {
        type Error = std::convert::Infallible;
        fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
            Ok(rand::random())
        }
        fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
            Ok(rand::random())
        }
        fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
            rand::fill(dst);
            Ok(())
        }
    }
    impl russh::keys::ssh_key::rand_core::TryCryptoRng for R {}
    R
}

fn test_cfg() -> AuthConfig {
    AuthConfig {
        bcrypt_dummy_cost: COST,
        ..AuthConfig::default()
    }
}

fn setup(cfg: AuthConfig) -> (Authenticator, Arc<FakeBackend>) {
    let backend = Arc::new(FakeBackend::default());
    let auth = Authenticator::with_auth_config(cfg, backend.clone());
    (auth, backend)
}

#[tokio::test]
async fn password_paths_all_cost_one_bcrypt_and_look_alike() {
    let (auth, be) = setup(test_cfg());
    be.add(1, "alice", Some("right horse"), vec![], true);
    be.add(2, "bob", Some("bobpw"), vec![], false); // disabled owner / deleted server
    be.add(3, "carol", None, vec![], true); // key-only account
    let peer = ip("192.0.2.10");

    let ok = auth.password(peer, "server1", "right horse").await;
    assert_eq!(
        ok,
        Decision::Accept {
            server: sid(1),
            owner: "alice".into()
        }
    );

    let cases = [
        ("server1", "Tr0ub4dor&3", "wrong password"),
        ("server9", "right horse", "unknown server"),
        (
            "server2",
            "bobpw",
            "login not allowed (owner disabled or server deleted)",
        ),
        ("server3", "", "no password set"),
        ("root", "right horse", "not a server name"),
        ("server01", "right horse", "not a server name"),
        ("server1", &"x".repeat(100), "password longer than 72 bytes"),
    ];
    for (user, pw, _) in &cases {
        let before = auth.bcrypt_runs();
        assert_eq!(
            auth.password(peer, user, pw).await,
            Decision::Reject,
            "{user}"
        );
        assert_eq!(
            auth.bcrypt_runs(),
            before + 1,
            "{user}: every rejection runs one bcrypt"
        );
    }
    // "right horse" + garbage beyond 72 bytes must not match through truncation.
    let long = format!("right horse{}", "y".repeat(80));
    assert_eq!(
        auth.password(peer, "server1", &long).await,
        Decision::Reject
    );

    let audits = be.wait_audits(cases.len() + 2).await;
    assert_eq!(audits[0].outcome, "success");
    assert_eq!(audits[0].account.as_deref(), Some("alice"));
    for (record, (user, _, reason)) in audits[1..].iter().zip(&cases) {
        assert_eq!(record.kind, "auth");
        assert_eq!(record.outcome, "failure", "{user}");
        assert_eq!(record.method.as_deref(), Some("password"));
        assert_eq!(record.peer, Some(peer));
        assert_eq!(record.detail["user"], *user);
        assert_eq!(record.detail["reason"], *reason);
    }
    // Never a password in the audit trail.
    let all = format!("{audits:?}");
    for secret in ["right horse", "bobpw", "Tr0ub4dor"] {
        assert!(!all.contains(secret), "audit leaked {secret:?}: {all}");
    }
}

#[tokio::test]
async fn backend_outage_is_a_plain_rejection_with_the_same_cost() {
    let (auth, be) = setup(test_cfg());
    be.add(1, "alice", Some("pw"), vec![], true);
    be.unavailable
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let before = auth.bcrypt_runs();
    assert_eq!(
        auth.password(ip("192.0.2.1"), "server1", "pw").await,
        Decision::Reject
    );
    assert_eq!(auth.bcrypt_runs(), before + 1);
    let audits = be.wait_audits(1).await;
    assert!(
        audits[0].detail["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("backend:"))
    );
}

#[tokio::test]
async fn an_unreachable_database_is_announced_to_new_connections_until_it_answers() {
    let (auth, be) = setup(test_cfg());
    be.add(1, "alice", Some("pw"), vec![], true);
    assert_eq!(auth.banner(), None);
    be.unavailable
        .store(true, std::sync::atomic::Ordering::Relaxed);
    // A lookup that finds the backend down (by key or password) arms the notice…
    let k = key();
    let signed = auth
        .public_key(ip("192.0.2.1"), "server1", k.public_key(), true)
        .await;
    assert_eq!(signed, Decision::Reject);
    let line = auth.banner().unwrap_or_default();
    assert!(line.contains("account database is unreachable"), "{line:?}");
    // …and the next answer, whatever it says about the login, clears it.
    be.unavailable
        .store(false, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        auth.password(ip("192.0.2.1"), "server1", "wrong").await,
        Decision::Reject
    );
    assert_eq!(auth.banner(), None);
}

#[tokio::test]
async fn unknown_and_wrong_take_the_same_time() {
    // Real-cost comparison: cost 8 is ~16 ms optimised, large against scheduling noise.
    let cost = 8;
    let (auth, be) = setup(AuthConfig {
        bcrypt_dummy_cost: cost,
        ip_attempts_burst: 1_000,
        server_attempts_burst: 1_000,
        ban_after_failures: 1_000,
        ..AuthConfig::default()
    });
    let hash = bcrypt::hash("pw", cost).unwrap_or_else(|e| panic!("{e}"));
    be.creds.lock().unwrap_or_else(|e| e.into_inner()).insert(
        1,
        Credentials {
            server: sid(1),
            owner: "alice".into(),
            login_allowed: true,
            password_hash: Some(hash),
            authorized_keys: vec![],
        },
    );
    let peer = ip("192.0.2.2");
    // Warm the dummy hash.
    auth.password(peer, "server7", "x").await;
    // Interleave the three kinds so CPU contention from other tests hits them alike; keep the
    // fastest of each.
    let users = ["server1", "server7", "admin"];
    let mut best = [Duration::MAX; 3];
    for _ in 0..9 {
        for (i, user) in users.iter().enumerate() {
            let t = Instant::now();
            let _ = auth.password(peer, user, "nope").await;
            best[i] = best[i].min(t.elapsed());
        }
    }
    let [wrong, unknown, garbage] = best;
    for (what, t) in [("unknown", unknown), ("garbage", garbage)] {
        let ratio = t.as_secs_f64() / wrong.as_secs_f64();
        assert!(
            (0.5..2.0).contains(&ratio),
            "{what}: {t:?} vs wrong password {wrong:?}"
        );
    }
}

#[tokio::test]
async fn public_key_probe_reveals_nothing_and_signed_step_decides() {
    let (auth, be) = setup(test_cfg());
    let good = key();
    let other = key();
    be.add(1, "alice", None, vec![good.public_key().clone()], true);
    be.add(2, "bob", None, vec![good.public_key().clone()], false);
    let peer = ip("192.0.2.20");

    // Probes: identical answers for an existing, a disabled and a missing server, any key.
    for user in ["server1", "server2", "server999"] {
        for k in [&good, &other] {
            let d = auth.public_key(peer, user, k.public_key(), false).await;
            assert!(
                matches!(&d, Decision::Accept { owner, .. } if owner.is_empty()),
                "{user}"
            );
        }
    }
    assert_eq!(
        auth.public_key(peer, "root", good.public_key(), false)
            .await,
        Decision::Reject
    );
    assert_eq!(be.audits().len(), 0, "probes are not attempts");

    // Signed step.
    let accepted = auth
        .public_key(peer, "server1", good.public_key(), true)
        .await;
    assert_eq!(
        accepted,
        Decision::Accept {
            server: sid(1),
            owner: "alice".into()
        }
    );
    for (user, k) in [
        ("server1", &other),
        ("server2", &good),
        ("server999", &good),
    ] {
        assert_eq!(
            auth.public_key(peer, user, k.public_key(), true).await,
            Decision::Reject
        );
    }
    assert_eq!(auth.bcrypt_runs(), 0, "keys never cost a bcrypt");
    let audits = be.wait_audits(4).await;
    let reasons: Vec<_> = audits
        .iter()
        .map(|a| a.detail["reason"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        reasons,
        [
            "",
            "key not authorized",
            "login not allowed (owner disabled or server deleted)",
            "unknown server"
        ]
    );
    assert!(audits.iter().all(|a| {
        a.detail["key"]
            .as_str()
            .is_some_and(|k| k.starts_with("SHA256:"))
    }));
}

#[tokio::test]
async fn budgets_run_before_bcrypt() {
    let (auth, be) = setup(AuthConfig {
        ip_attempts_burst: 3,
        ..test_cfg()
    });
    be.add(1, "alice", Some("pw"), vec![], true);
    let attacker = ip("198.51.100.7");
    for _ in 0..3 {
        assert_eq!(
            auth.password(attacker, "server1", "guess").await,
            Decision::Reject
        );
    }
    let runs = auth.bcrypt_runs();
    for _ in 0..5 {
        // Even the right password is refused once the budget is spent.
        assert_eq!(
            auth.password(attacker, "server1", "pw").await,
            Decision::Reject
        );
    }
    assert_eq!(
        auth.bcrypt_runs(),
        runs,
        "rate-limited attempts must not reach bcrypt"
    );
    // Another address is unaffected.
    assert!(
        auth.password(ip("198.51.100.8"), "server1", "pw")
            .await
            .is_accept()
    );
    let audits = be.wait_audits(9).await;
    assert!(
        audits[3..8]
            .iter()
            .all(|a| a.outcome == "rejected" && a.detail["reason"] == "ip_budget")
    );
}

#[tokio::test]
async fn repeated_failures_ban_the_address_and_refuse_connections() {
    let (auth, be) = setup(AuthConfig {
        ban_after_failures: 3,
        ..test_cfg()
    });
    be.add(1, "alice", Some("pw"), vec![], true);
    let attacker = ip("198.51.100.9");
    for _ in 0..3 {
        auth.password(attacker, "server1", "guess").await;
    }
    assert!(matches!(
        auth.admit(attacker),
        Admission::Reject(AdmitDenied::Banned)
    ));
    assert_eq!(auth.limits_snapshot().1, 1);
    let audits = be.wait_audits(4).await;
    assert!(audits.iter().any(|a| a.outcome == "banned"));
    assert!(matches!(
        auth.admit(ip("198.51.100.10")),
        Admission::Accept(_)
    ));
}

#[tokio::test]
async fn permits_count_unauthenticated_connections() {
    let (auth, _be) = setup(AuthConfig {
        max_unauthenticated: 3,
        max_unauthenticated_per_ip: 2,
        ..test_cfg()
    });
    let a = ip("203.0.113.1");
    let b = ip("203.0.113.2");
    let Admission::Accept(p1) = auth.admit(a) else {
        panic!("first")
    };
    let Admission::Accept(p2) = auth.admit(a) else {
        panic!("second")
    };
    assert!(matches!(
        auth.admit(a),
        Admission::Reject(AdmitDenied::UnauthenticatedCapPerIp)
    ));
    let Admission::Accept(p3) = auth.admit(b) else {
        panic!("third")
    };
    assert!(matches!(
        auth.admit(b),
        Admission::Reject(AdmitDenied::UnauthenticatedCap)
    ));
    p1.authenticated();
    let Admission::Accept(_p4) = auth.admit(b) else {
        panic!("slot freed by authenticated()")
    };
    drop(p2);
    drop(p3);
    assert!(
        matches!(auth.admit(a), Admission::Accept(_)),
        "slots freed by drop"
    );
}

#[tokio::test]
async fn grace_time_fires() {
    let (auth, _be) = setup(AuthConfig {
        login_grace_time_secs: 1,
        ..test_cfg()
    });
    let start = tokio::time::Instant::now();
    let Admission::Accept(p) = auth.admit(ip("203.0.113.3")) else {
        panic!("admit")
    };
    assert!(p.grace_deadline() >= start + Duration::from_secs(1));
    p.grace_expired().await;
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[tokio::test]
async fn keyboard_interactive_prompts_then_checks_like_a_password() {
    let (auth, be) = setup(test_cfg());
    be.add(1, "alice", Some("pw"), vec![], true);
    let peer = ip("192.0.2.30");
    match auth.keyboard_interactive(peer, "server1", None).await {
        KeyboardInteractive::Prompt(russh::server::Auth::Partial { prompts, .. }) => {
            assert_eq!(prompts.len(), 1);
            assert_eq!(prompts[0].0, KBDINT_PROMPT);
            assert!(!prompts[0].1, "the password prompt must not echo");
        }
        other => panic!("expected a prompt, got {other:?}"),
    }
    let answer = |pw: &'static str| {
        let auth = auth.clone();
        async move {
            auth.keyboard_interactive_answer(peer, "server1", pw.as_bytes())
                .await
        }
    };
    assert!(answer("pw").await.is_accept());
    assert_eq!(answer("nope").await, Decision::Reject);
    let audits = be.wait_audits(2).await;
    assert!(
        audits
            .iter()
            .all(|a| a.method.as_deref() == Some("keyboard-interactive"))
    );
}

#[tokio::test]
async fn storm_from_one_address_does_not_delay_another() {
    // Cost 10 (~60 ms optimised): 24 storm attempts would take ~1.5 s on one slot if queued
    // ahead of the legitimate login.
    let cost = 10;
    let (auth, be) = setup(AuthConfig {
        bcrypt_dummy_cost: cost,
        bcrypt_concurrency: 2,
        ip_attempts_burst: 1_000,
        server_attempts_burst: 1_000,
        ban_after_failures: 1_000,
        ..AuthConfig::default()
    });
    let hash = bcrypt::hash("pw", cost).unwrap_or_else(|e| panic!("{e}"));
    be.creds.lock().unwrap_or_else(|e| e.into_inner()).insert(
        1,
        Credentials {
            server: sid(1),
            owner: "alice".into(),
            login_allowed: true,
            password_hash: Some(hash),
            authorized_keys: vec![],
        },
    );
    // One uncontended login for reference.
    let t = Instant::now();
    assert!(
        auth.password(ip("192.0.2.50"), "server1", "pw")
            .await
            .is_accept()
    );
    let alone = t.elapsed();

    let mut storm = Vec::new();
    for _ in 0..24 {
        let auth = auth.clone();
        storm.push(tokio::spawn(async move {
            auth.password(ip("198.51.100.66"), "server1", "guess").await
        }));
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let t = Instant::now();
    assert!(
        auth.password(ip("192.0.2.51"), "server1", "pw")
            .await
            .is_accept()
    );
    let during = t.elapsed();
    let storm_start = Instant::now();
    for s in storm {
        assert_eq!(s.await.ok(), Some(Decision::Reject));
    }
    let storm_rest = storm_start.elapsed();
    assert!(
        during < alone * 4 + Duration::from_millis(100),
        "legit login took {during:?} during the storm vs {alone:?} alone (storm drained in \
         {storm_rest:?} more)"
    );
}

#[test]
fn user_names_are_logged_safely() {
    assert_eq!(loggable_user("server1"), "server1");
    assert_eq!(loggable_user("a\nb\u{1b}[31m"), "a\\nb\\u{1b}[31m");
    let long = "x".repeat(100);
    let shown = loggable_user(&long);
    assert!(
        shown.starts_with(&"x".repeat(64)) && shown.ends_with('…') && shown.chars().count() == 65
    );
}

#[test]
fn rejection_keeps_offering_password() {
    match rejection() {
        russh::server::Auth::Reject {
            proceed_with_methods: Some(m),
            partial_success: false,
        } => {
            for want in METHODS {
                assert!(m.contains(&want), "{want:?} missing from {m:?}");
            }
        }
        other => panic!("unexpected {other:?}"),
    }
}

mod parse_login_props {
    //! The gateway's only user-name rule is `tenants::parse_login`; these pin the properties auth
    //! relies on (canonical form, so one server has exactly one name and one budget key).
    use proptest::prelude::*;
    use tenants::{ServerId, parse_login};

    proptest! {
        #[test]
        fn every_id_round_trips(n in 1u32..=u32::MAX) {
            let id = ServerId::new(n).unwrap_or_else(|| unreachable!());
            prop_assert_eq!(parse_login(&id.login_name()), Some(id));
        }

        #[test]
        fn accepted_names_are_canonical(s in "\\PC{0,24}") {
            if let Some(id) = parse_login(&s) {
                prop_assert_eq!(id.login_name(), s);
            }
        }

        #[test]
        fn near_misses_are_refused(
            n in 1u32..=u32::MAX,
            prefix in prop::sample::select(vec!["", " ", "0", "+", "-", "Server", "SERVER", "server ", "server0"]),
            suffix in prop::sample::select(vec!["", " ", "\n", "\0", "x", ".", "/"]),
        ) {
            let s = if prefix.starts_with(['S', 's']) {
                format!("{prefix}{n}{suffix}")
            } else {
                format!("server{prefix}{n}{suffix}")
            };
            let canonical = format!("server{n}");
            // "server0<n>" style leading zeros, signs, case and trailing bytes are all refused;
            // only the exact canonical spelling is accepted.
            prop_assert_eq!(parse_login(&s).is_some(), s == canonical, "{:?}", s);
        }
    }
}

fn storm_setup(cost: u32, queue: usize) -> (Authenticator, Arc<FakeBackend>) {
    let (auth, be) = setup(AuthConfig {
        bcrypt_dummy_cost: cost,
        bcrypt_concurrency: 1,
        bcrypt_queue: queue,
        ip_attempts_burst: 1_000,
        server_attempts_burst: 1_000,
        ban_after_failures: 1_000,
        ..AuthConfig::default()
    });
    let hash = bcrypt::hash("pw", cost).unwrap_or_else(|e| panic!("{e}"));
    be.creds.lock().unwrap_or_else(|e| e.into_inner()).insert(
        1,
        Credentials {
            server: sid(1),
            owner: "alice".into(),
            login_allowed: true,
            password_hash: Some(hash),
            authorized_keys: vec![],
        },
    );
    (auth, be)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_storm_does_not_delay_the_usual_address() {
    let (auth, _be) = storm_setup(10, 1_000);
    let owner = ip("192.0.2.77");
    let t = Instant::now();
    assert!(auth.password(owner, "server1", "pw").await.is_accept());
    let alone = t.elapsed();
    // 40 addresses, one guess each, all queued for the single bcrypt slot (~40 x alone).
    let mut storm = Vec::new();
    for i in 0..40u8 {
        let auth = auth.clone();
        storm.push(tokio::spawn(async move {
            auth.password(IpAddr::from([198, 51, 100, i]), "server1", "guess")
                .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let t = Instant::now();
    assert!(auth.password(owner, "server1", "pw").await.is_accept());
    let during = t.elapsed();
    for s in storm {
        assert_eq!(s.await.ok(), Some(Decision::Reject));
    }
    assert!(
        during < alone * 4 + Duration::from_millis(150),
        "usual address took {during:?} during a distributed storm vs {alone:?} alone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bcrypt_queue_is_bounded() {
    let (auth, be) = storm_setup(10, 3);
    let mut storm = Vec::new();
    for i in 0..20u8 {
        let auth = auth.clone();
        storm.push(tokio::spawn(async move {
            auth.password(IpAddr::from([198, 51, 100, i]), "server1", "guess")
                .await
        }));
    }
    for s in storm {
        assert_eq!(s.await.ok(), Some(Decision::Reject));
    }
    let runs = auth.bcrypt_runs();
    assert!(
        (1..20).contains(&runs),
        "{runs} bcrypts for 20 attempts with a queue of 3"
    );
    let audits = be.wait_audits(20).await;
    let busy = audits
        .iter()
        .filter(|a| a.detail["reason"] == "bcrypt_queue")
        .count();
    assert_eq!(
        busy as u64 + runs,
        20,
        "every attempt is either verified or refused as busy"
    );
    assert!(
        audits
            .iter()
            .filter(|a| a.detail["reason"] == "bcrypt_queue")
            .all(|a| a.outcome == "rejected")
    );
}
