//! Authentication and admission: who may try, and whether what they presented is right.
//!
//! Owned by the "auth" work area. The SSH session code (`crate::server`) calls only the
//! [`Authenticator`] surface below; everything behind it (rate limits, bans, bcrypt on the
//! blocking pool, dummy-hash timing equalisation, key matching) is private to this module.
//!
//! CONTRACT (do not change signatures without telling the coordinator):
//! - `Authenticator::new(cfg: &crate::Config, backend: std::sync::Arc<dyn crate::Backend>) -> Self`
//! - `Authenticator::admit(&self, peer: std::net::IpAddr) -> Admission` — called on TCP accept,
//!   before the SSH handshake. `Admission::Accept(Permit)`: keep the `Permit` alive until the
//!   connection authenticates (then call `Permit::authenticated(self)`) or closes (drop);
//!   `Admission::Reject(reason)`: close the socket immediately.
//! - `Authenticator::password(&self, peer: IpAddr, user: &str, password: &str) -> Decision`
//!   (async; rate-limit check first, then bcrypt verify on the blocking pool; unknown server →
//!   dummy hash; same timing, same reply)
//! - `Authenticator::public_key(&self, peer: IpAddr, user: &str, key: &russh::keys::PublicKey,
//!   verified: bool) -> Decision` (async; `verified == false` is the probe step — answer must
//!   not reveal whether the server exists: accept a probe for any well-formed key and decide at
//!   the signed step, or equivalent)
//! - `Decision::Accept { server: tenants::ServerId, owner: String }` | `Decision::Reject`
//!   (`Reject` carries nothing the client may learn; the reason goes to the audit log only).
//!
//! ADDITIONS (helpers for the Handler; nothing above changed):
//! - `Authenticator` is `Clone` (one `Arc` inside): clone it into each connection's Handler.
//! - Probe answers: for `verified == false`, `Accept { server, owner: "" }` means only "send the
//!   signature" — it is returned for every well-formed `server<N>` name without looking the
//!   server up, so it reveals nothing; never treat it as authentication. Names that are not
//!   `server<N>` (statically invalid, so nothing to hide) and banned addresses get `Reject`.
//! - `Authenticator::keyboard_interactive(peer, user, response)` → [`KeyboardInteractive`]:
//!   `Prompt(auth)` (return `auth` from `auth_keyboard_interactive`: one no-echo prompt
//!   [`KBDINT_PROMPT`] = `"Password: "`) or `Finished(decision)` (the same path as `password`).
//! - `Authenticator::configure_russh(&self, &mut russh::server::Config)` sets
//!   `max_auth_attempts`, `auth_rejection_time(_initial)` and the offered methods from
//!   `[ssh.auth]`; call it when building the russh config.
//! - `Permit::grace_deadline()` / `Permit::grace_expired()` (a future): close the connection
//!   when it fires before `authenticated` (login grace time; counts
//!   `metrics::LOGIN_GRACE_EXPIRED`).
//! - `auth::rejection()`: return it instead of `Auth::reject()` for a `Reject` (keeps every
//!   method on offer; `Auth::reject()` makes russh stop offering "password" after one failure).
//! - `Authenticator::config()` exposes `[ssh.auth]` (host keys: `crate::hostkeys`).
//!
//! Design: decisions live in the pure [`limits::Limits`] state machine (injected clock,
//! exhaustively unit-tested); this file does the IO around it — credentials from the
//! [`Backend`], bcrypt on `spawn_blocking` behind a per-address queue and a global semaphore (so
//! a storm from one address occupies at most one bcrypt slot and cannot starve other logins; a
//! distributed storm fills at most `bcrypt_queue` places, beyond which attempts are refused at
//! once; an owner's usual address has its own slot and never waits behind the storm),
//! audit records through a bounded queue (a slow database never delays a login; overflow is
//! counted), structured log events on target `berth::auth` (rate-limited under storms).

pub mod config;
pub mod limits;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use russh::keys::{HashAlg, PublicKey};
use tenants::ServerId;
use tokio::sync::{Semaphore, mpsc};

pub use config::AuthConfig;
pub use limits::{AdmitDenied, AttemptDenied, Method};

use crate::backend::{AuditRecord, Backend};
use crate::metrics::{self, AuthResult};
use limits::{Limits, MonotonicClock, Params, Recorded};

/// The single prompt of keyboard-interactive authentication.
pub const KBDINT_PROMPT: &str = "Password: ";

/// bcrypt looks at the first 72 bytes only; longer passwords are refused when set, so a longer
/// one presented at login is wrong by definition (but still costs a dummy verify for timing).
const BCRYPT_MAX_PASSWORD: usize = 72;

/// Audit records waiting for the backend; beyond this they are dropped and counted.
const AUDIT_QUEUE: usize = 4096;

/// Longest user name kept verbatim in audit records and logs.
const MAX_LOGGED_USER: usize = 64;

/// Result of an authentication attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Accept { server: ServerId, owner: String },
    Reject,
}

impl Decision {
    pub fn is_accept(&self) -> bool {
        matches!(self, Decision::Accept { .. })
    }
}

/// Result of [`Authenticator::admit`].
#[derive(Debug)]
pub enum Admission {
    Accept(Permit),
    Reject(AdmitDenied),
}

/// One step of keyboard-interactive authentication.
#[derive(Debug)]
pub enum KeyboardInteractive {
    /// Return this from `Handler::auth_keyboard_interactive` (asks for the password).
    Prompt(russh::server::Auth),
    /// The answer was checked like a password.
    Finished(Decision),
}

/// The methods the gateway offers (also what [`rejection`] keeps offering).
pub const METHODS: [russh::MethodKind; 3] = [
    russh::MethodKind::PublicKey,
    russh::MethodKind::Password,
    russh::MethodKind::KeyboardInteractive,
];

/// What a Handler should return for a rejected attempt: a rejection that keeps offering every
/// method. `russh::server::Auth::reject()` makes russh drop "password" after one failure, so an
/// OpenSSH client could not retry a mistyped password on the same connection (the per-connection
/// limit is `max_auth_attempts`, and the budgets here bound guessing anyway).
pub fn rejection() -> russh::server::Auth {
    russh::server::Auth::Reject {
        proceed_with_methods: Some(russh::MethodSet::from(&METHODS[..])),
        partial_success: false,
    }
}

/// The keyboard-interactive challenge: one no-echo [`KBDINT_PROMPT`].
pub fn keyboard_interactive_prompt() -> russh::server::Auth {
    russh::server::Auth::Partial {
        name: "".into(),
        instructions: "".into(),
        prompts: vec![(KBDINT_PROMPT.into(), false)].into(),
    }
}

/// An admitted, not yet authenticated connection's slot. Dropping it (connection closed) or
/// calling [`Permit::authenticated`] frees the slot.
#[derive(Debug)]
pub struct Permit {
    inner: Weak<Inner>,
    peer: IpAddr,
    deadline: tokio::time::Instant,
    released: bool,
}

impl Permit {
    /// The connection authenticated: it no longer counts against the unauthenticated caps.
    pub fn authenticated(mut self) {
        self.release();
    }

    /// When the login grace time runs out.
    pub fn grace_deadline(&self) -> tokio::time::Instant {
        self.deadline
    }

    /// Completes when the login grace time has run out (counts the expiry in metrics).
    pub async fn grace_expired(&self) {
        tokio::time::sleep_until(self.deadline).await;
        metrics::LOGIN_GRACE_EXPIRED.inc();
    }

    pub fn peer(&self) -> IpAddr {
        self.peer
    }

    fn release(&mut self) {
        if std::mem::replace(&mut self.released, true) {
            return;
        }
        metrics::UNAUTHENTICATED.dec();
        if let Some(inner) = self.inner.upgrade() {
            inner.limits().release(self.peer);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.release();
    }
}

/// The gateway's authentication service (cheap to clone).
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").finish_non_exhaustive()
    }
}

struct Inner {
    cfg: AuthConfig,
    backend: Arc<dyn Backend>,
    limits: Mutex<Limits<MonotonicClock>>,
    bcrypt_slots: Semaphore,
    /// The usual-address lane: one verification at a time, never behind a storm.
    trusted_slot: Semaphore,
    /// Attempts waiting for `bcrypt_slots` (bounded by `bcrypt_queue`).
    bcrypt_queued: std::sync::atomic::AtomicUsize,
    /// One queue per address with a verification in flight: an address waits for its own
    /// previous attempt before it may take a global slot.
    bcrypt_per_ip: Mutex<HashMap<IpAddr, Arc<Semaphore>>>,
    dummy_hash: tokio::sync::OnceCell<String>,
    audit_tx: OnceLock<mpsc::Sender<AuditRecord>>,
    sweeper: OnceLock<()>,
    log_budget: Mutex<LogBudget>,
    cost_warned: std::sync::atomic::AtomicBool,
    /// bcrypt verifications run so far (tests prove every rejection path pays one).
    bcrypt_runs: std::sync::atomic::AtomicU64,
}

impl Inner {
    fn limits(&self) -> std::sync::MutexGuard<'_, Limits<MonotonicClock>> {
        // A panic while holding this lock cannot leave the tables inconsistent in a way that
        // matters more than refusing every login would; keep serving.
        self.limits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Authenticator {
    pub fn new(cfg: &crate::Config, backend: Arc<dyn Backend>) -> Self {
        Self::with_auth_config(cfg.auth.clone(), backend)
    }

    /// Same as [`Authenticator::new`] from the `[ssh.auth]` section alone.
    pub fn with_auth_config(cfg: AuthConfig, backend: Arc<dyn Backend>) -> Self {
        // Default: half the CPUs (at least one), so a storm that gets past the budgets still
        // leaves CPU for the async workers that carry everyone's sessions.
        let slots = match cfg.bcrypt_concurrency {
            0 => std::thread::available_parallelism().map_or(1, |n| (usize::from(n) / 2).max(1)),
            n => n,
        };
        let limits = Limits::new(Params::from_config(&cfg), MonotonicClock::default());
        let this = Self {
            inner: Arc::new(Inner {
                cfg,
                backend,
                limits: Mutex::new(limits),
                bcrypt_slots: Semaphore::new(slots),
                trusted_slot: Semaphore::new(1),
                bcrypt_queued: std::sync::atomic::AtomicUsize::new(0),
                bcrypt_per_ip: Mutex::new(HashMap::new()),
                dummy_hash: tokio::sync::OnceCell::new(),
                audit_tx: OnceLock::new(),
                sweeper: OnceLock::new(),
                log_budget: Mutex::new(LogBudget::default()),
                cost_warned: std::sync::atomic::AtomicBool::new(false),
                bcrypt_runs: std::sync::atomic::AtomicU64::new(0),
            }),
        };
        // Inside a runtime: start background work now (dummy hash, sweeper) so the first login
        // does not pay for it. Outside one, it starts lazily on first use.
        if tokio::runtime::Handle::try_current().is_ok() {
            this.start_background();
            let me = this.clone();
            tokio::spawn(async move {
                me.dummy_hash().await;
            });
        }
        this
    }

    pub fn config(&self) -> &AuthConfig {
        &self.inner.cfg
    }

    /// Applies `[ssh.auth]` to russh's server config.
    pub fn configure_russh(&self, config: &mut russh::server::Config) {
        let cfg = &self.inner.cfg;
        config.max_auth_attempts = cfg.max_auth_attempts;
        config.auth_rejection_time = cfg.rejection_delay();
        // OpenSSH clients open with a "none" request to learn the methods; answer it at once.
        config.auth_rejection_time_initial = Some(Duration::ZERO);
        config.methods = russh::MethodSet::from(&METHODS[..]);
    }

    /// Accept-time admission (before the SSH handshake).
    pub fn admit(&self, peer: IpAddr) -> Admission {
        self.start_background();
        let verdict = self.inner.limits().admit(peer);
        match verdict {
            Ok(()) => {
                metrics::count_connection(true);
                metrics::UNAUTHENTICATED.inc();
                Admission::Accept(Permit {
                    inner: Arc::downgrade(&self.inner),
                    peer,
                    deadline: tokio::time::Instant::now() + self.inner.cfg.login_grace_time(),
                    released: false,
                })
            }
            Err(denied) => {
                metrics::count_connection(false);
                metrics::rate_limited(match denied {
                    AdmitDenied::Banned => "banned_at_connect",
                    other => other.as_str(),
                });
                if self.inner.log_budget().allow() {
                    tracing::info!(
                        target: "berth::auth",
                        peer = %peer,
                        outcome = "rejected",
                        reason = denied.as_str(),
                        "connection refused at admission"
                    );
                }
                Admission::Reject(denied)
            }
        }
    }

    /// Password authentication (also the path of keyboard-interactive).
    pub async fn password(&self, peer: IpAddr, user: &str, password: &str) -> Decision {
        self.secret(peer, user, password.as_bytes(), Method::Password)
            .await
    }

    /// Keyboard-interactive: first call (`response == None`) returns the prompt; the answer's
    /// first field is checked exactly like a password.
    pub async fn keyboard_interactive(
        &self,
        peer: IpAddr,
        user: &str,
        response: Option<russh::server::Response<'_>>,
    ) -> KeyboardInteractive {
        let Some(mut response) = response else {
            return KeyboardInteractive::Prompt(keyboard_interactive_prompt());
        };
        let answer = response.next().unwrap_or_default();
        KeyboardInteractive::Finished(self.keyboard_interactive_answer(peer, user, &answer).await)
    }

    /// The second half of keyboard-interactive: the client's answer to [`KBDINT_PROMPT`].
    pub async fn keyboard_interactive_answer(
        &self,
        peer: IpAddr,
        user: &str,
        answer: &[u8],
    ) -> Decision {
        self.secret(peer, user, answer, Method::KeyboardInteractive)
            .await
    }

    /// Public-key authentication; `verified == false` is the unsigned probe.
    pub async fn public_key(
        &self,
        peer: IpAddr,
        user: &str,
        key: &PublicKey,
        verified: bool,
    ) -> Decision {
        let parsed = tenants::parse_login(user);
        if !verified {
            let allowed = parsed.is_some() && self.inner.limits().probe_allowed(peer, parsed);
            return match parsed {
                Some(server) if allowed => Decision::Accept {
                    server,
                    owner: String::new(),
                },
                _ => Decision::Reject,
            };
        }
        let method = Method::PublicKey;
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        let checked = self.inner.limits().check_attempt(peer, parsed, method);
        if let Err(denied) = checked {
            self.refused(peer, user, parsed, method, denied, Some(&fingerprint));
            return Decision::Reject;
        }
        let (decision, reason) = match parsed {
            None => (Decision::Reject, "not a server name".to_string()),
            Some(server) => match self.inner.backend.credentials(server).await {
                Ok(None) => (Decision::Reject, "unknown server".into()),
                Ok(Some(c)) if !c.login_allowed => (
                    Decision::Reject,
                    "login not allowed (owner disabled or server deleted)".into(),
                ),
                Ok(Some(c)) => {
                    if c.authorized_keys
                        .iter()
                        .any(|k| k.key_data() == key.key_data())
                    {
                        (
                            Decision::Accept {
                                server,
                                owner: c.owner,
                            },
                            String::new(),
                        )
                    } else {
                        (Decision::Reject, "key not authorized".into())
                    }
                }
                Err(e) => (Decision::Reject, format!("backend: {e}")),
            },
        };
        self.finish(
            peer,
            user,
            parsed,
            method,
            decision,
            reason,
            Some(&fingerprint),
        )
    }

    async fn secret(&self, peer: IpAddr, user: &str, secret: &[u8], method: Method) -> Decision {
        let parsed = tenants::parse_login(user);
        let checked = self.inner.limits().check_attempt(peer, parsed, method);
        if let Err(denied) = checked {
            self.refused(peer, user, parsed, method, denied, None);
            return Decision::Reject;
        }
        // Work out what to verify against; every path below runs exactly one bcrypt.
        let mut reason = String::new();
        let mut accept: Option<(ServerId, String)> = None;
        let mut hash: Option<String> = None;
        match parsed {
            None => reason = "not a server name".into(),
            Some(server) => match self.inner.backend.credentials(server).await {
                Ok(None) => reason = "unknown server".into(),
                Ok(Some(c)) if !c.login_allowed => {
                    reason = "login not allowed (owner disabled or server deleted)".into();
                }
                Ok(Some(c)) => match c.password_hash {
                    None => reason = "no password set".into(),
                    Some(h) => {
                        self.check_cost(&h);
                        hash = Some(h);
                        accept = Some((server, c.owner));
                    }
                },
                Err(e) => reason = format!("backend: {e}"),
            },
        }
        if secret.len() > BCRYPT_MAX_PASSWORD {
            reason = "password longer than 72 bytes".into();
            hash = None;
            accept = None;
        }
        let hash = match hash {
            Some(h) => h,
            None => self.dummy_hash().await,
        };
        let trusted = parsed.is_some_and(|s| self.inner.limits().is_trusted(s, peer));
        let secret = &secret[..secret.len().min(BCRYPT_MAX_PASSWORD)];
        let Ok(matched) = self.bcrypt_verify(peer, secret, hash, trusted).await else {
            self.refused(peer, user, parsed, method, AttemptDenied::BcryptQueue, None);
            return Decision::Reject;
        };
        let decision = match accept {
            Some((server, owner)) if matched => Decision::Accept { server, owner },
            Some(_) => {
                reason = "wrong password".into();
                Decision::Reject
            }
            None => Decision::Reject,
        };
        self.finish(peer, user, parsed, method, decision, reason, None)
    }

    /// Records an attempt that passed the budgets and returns its decision.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        peer: IpAddr,
        user: &str,
        parsed: Option<ServerId>,
        method: Method,
        decision: Decision,
        reason: String,
        fingerprint: Option<&str>,
    ) -> Decision {
        let success = decision.is_accept();
        let recorded = self.inner.limits().record(peer, parsed, method, success);
        metrics::auth_outcome(
            method,
            if success {
                AuthResult::Success
            } else {
                AuthResult::Failure
            },
        );
        if let Recorded::Banned(length) = recorded {
            metrics::BANS.inc();
            tracing::warn!(
                target: "berth::auth",
                peer = %peer,
                ban_secs = length.as_secs(),
                "address banned after repeated password failures"
            );
            self.audit(AuditRecord {
                kind: "auth",
                server: None,
                account: None,
                peer: Some(peer),
                method: Some("ban".into()),
                outcome: "banned".into(),
                detail: serde_json::json!({ "ban_secs": length.as_secs() }),
            });
        }
        let shown = loggable_user(user);
        let (account, outcome) = match &decision {
            Decision::Accept { owner, .. } => (Some(owner.clone()), "success"),
            Decision::Reject => (None, "failure"),
        };
        if success || self.inner.log_budget().allow() {
            tracing::info!(
                target: "berth::auth",
                peer = %peer,
                user = %shown,
                method = method.as_str(),
                outcome,
                reason = %reason,
                key = fingerprint.unwrap_or(""),
                "auth attempt"
            );
        }
        let mut detail = serde_json::json!({ "user": shown });
        if !reason.is_empty() {
            detail["reason"] = reason.into();
        }
        if let Some(fp) = fingerprint {
            detail["key"] = fp.into();
        }
        self.audit(AuditRecord {
            kind: "auth",
            server: parsed,
            account,
            peer: Some(peer),
            method: Some(method.as_str().into()),
            outcome: outcome.into(),
            detail,
        });
        decision
    }

    /// An attempt refused by the budgets before any credential check.
    fn refused(
        &self,
        peer: IpAddr,
        user: &str,
        parsed: Option<ServerId>,
        method: Method,
        denied: AttemptDenied,
        fingerprint: Option<&str>,
    ) {
        metrics::auth_outcome(method, AuthResult::RateLimited);
        metrics::rate_limited(denied.as_str());
        let shown = loggable_user(user);
        if self.inner.log_budget().allow() {
            tracing::info!(
                target: "berth::auth",
                peer = %peer,
                user = %shown,
                method = method.as_str(),
                outcome = "rejected",
                reason = denied.as_str(),
                "auth attempt refused by rate limit"
            );
        }
        let mut detail = serde_json::json!({ "user": shown, "reason": denied.as_str() });
        if let Some(fp) = fingerprint {
            detail["key"] = fp.into();
        }
        self.audit(AuditRecord {
            kind: "auth",
            server: parsed,
            account: None,
            peer: Some(peer),
            method: Some(method.as_str().into()),
            outcome: "rejected".into(),
            detail,
        });
    }

    /// Warns once when real hashes and the dummy differ in cost (timing would tell them apart).
    fn check_cost(&self, hash: &str) {
        let cost = hash.split('$').nth(2).and_then(|c| c.parse::<u32>().ok());
        if let Some(cost) = cost
            && cost != self.inner.cfg.bcrypt_dummy_cost
            && !self
                .inner
                .cost_warned
                .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(
                target: "berth::auth",
                hash_cost = cost,
                dummy_cost = self.inner.cfg.bcrypt_dummy_cost,
                "password hashes and ssh.auth.bcrypt_dummy_cost differ: login timing can tell \
                 existing servers from unknown ones; set bcrypt_dummy_cost to the hash cost"
            );
        }
    }

    async fn dummy_hash(&self) -> String {
        let cost = self.inner.cfg.bcrypt_dummy_cost;
        self.inner
            .dummy_hash
            .get_or_init(|| async move {
                let secret: [u8; 32] = rand::random();
                let made = tokio::task::spawn_blocking(move || bcrypt::hash(secret, cost)).await;
                match made {
                    Ok(Ok(h)) => h,
                    // Unreachable in practice (cost is validated); a fixed hash of the default
                    // cost keeps timing close rather than failing logins.
                    _ => "$2b$12$C6UzMDM.H6dfI/f/IKxGhuR4CiOI1O0xzZ8L7V6Bf2WWe5ycQd0uK".into(),
                }
            })
            .await
            .clone()
    }

    /// One bcrypt verification on the blocking pool. Usual addresses (a recent success for
    /// this server) use their own slot and skip the queue; everyone else queues per address,
    /// then globally, and is refused at once when `bcrypt_queue` attempts already wait.
    async fn bcrypt_verify(
        &self,
        peer: IpAddr,
        secret: &[u8],
        hash: String,
        trusted: bool,
    ) -> Result<bool, Busy> {
        let secret = secret.to_vec();
        let run = || async move {
            self.inner
                .bcrypt_runs
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let started = Instant::now();
            let verified = tokio::task::spawn_blocking(move || bcrypt::verify(secret, &hash))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(false);
            metrics::BCRYPT_SECONDS.observe(started.elapsed());
            verified
        };
        if trusted {
            let Ok(_slot) = self.inner.trusted_slot.acquire().await else {
                return Err(Busy);
            };
            return Ok(run().await);
        }
        let Some(waiting) = Waiting::enter(&self.inner.bcrypt_queued, self.inner.cfg.bcrypt_queue)
        else {
            return Err(Busy);
        };
        // Queued per source prefix (see `limits::source_key`), like every other per-source limit.
        let peer = limits::source_key(
            peer,
            self.inner.cfg.source_prefix_v4,
            self.inner.cfg.source_prefix_v6,
        );
        let queue = {
            let mut map = self
                .inner
                .bcrypt_per_ip
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            map.entry(peer)
                .or_insert_with(|| Arc::new(Semaphore::new(1)))
                .clone()
        };
        let result = async {
            let _mine = queue.acquire().await.ok()?;
            let _slot = self.inner.bcrypt_slots.acquire().await.ok()?;
            drop(waiting);
            Some(run().await)
        }
        .await;
        {
            let mut map = self
                .inner
                .bcrypt_per_ip
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Ours plus the map's: nobody else is queued, forget the address.
            if Arc::strong_count(&queue) == 2 {
                map.remove(&peer);
            }
        }
        result.ok_or(Busy)
    }

    fn audit(&self, record: AuditRecord) {
        let tx = self.inner.audit_tx.get_or_init(|| {
            let (tx, mut rx) = mpsc::channel::<AuditRecord>(AUDIT_QUEUE);
            let backend = self.inner.backend.clone();
            tokio::spawn(async move {
                while let Some(r) = rx.recv().await {
                    backend.audit(r).await;
                }
            });
            tx
        });
        if tx.try_send(record).is_err() {
            metrics::AUDIT_DROPPED.inc();
        }
    }

    fn start_background(&self) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        self.inner.sweeper.get_or_init(|| {
            let weak = Arc::downgrade(&self.inner);
            let every = Duration::from_secs(self.inner.cfg.sweep_interval_secs.max(1));
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let Some(inner) = weak.upgrade() else { break };
                    inner.limits().retain_recent();
                }
            });
        });
    }

    /// bcrypt verifications run so far by this authenticator (real and dummy).
    pub fn bcrypt_runs(&self) -> u64 {
        self.inner
            .bcrypt_runs
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Test and metrics view of the limiter.
    pub fn limits_snapshot(&self) -> (limits::TableSizes, usize) {
        let l = self.inner.limits();
        (l.table_sizes(), l.banned_count())
    }
}

impl Inner {
    fn log_budget(&self) -> std::sync::MutexGuard<'_, LogBudget> {
        self.log_budget
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The bcrypt queue is full (or closed): refuse without verifying.
#[derive(Debug, Clone, Copy)]
struct Busy;

/// One attempt waiting for a bcrypt slot (counted in `bcrypt_queued` and the metrics gauge).
struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Waiting<'a> {
    fn enter(count: &'a std::sync::atomic::AtomicUsize, max: usize) -> Option<Self> {
        use std::sync::atomic::Ordering;
        let entered = count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok();
        entered.then(|| {
            metrics::BCRYPT_WAITING.inc();
            Self(count)
        })
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        metrics::BCRYPT_WAITING.dec();
    }
}

/// At most `PER_SECOND` failure log lines per second; the rest are counted in metrics only.
#[derive(Debug, Default)]
struct LogBudget {
    second: u64,
    used: u32,
    suppressed: u64,
}

impl LogBudget {
    const PER_SECOND: u32 = 20;

    fn allow(&mut self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if now != self.second {
            if self.suppressed > 0 {
                tracing::info!(
                    target: "berth::auth",
                    suppressed = self.suppressed,
                    "auth log lines suppressed in the last second"
                );
            }
            self.second = now;
            self.used = 0;
            self.suppressed = 0;
        }
        if self.used < Self::PER_SECOND {
            self.used += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

/// The user name as typed, made safe for logs: control characters escaped, length capped.
pub fn loggable_user(user: &str) -> String {
    let mut out: String = user
        .chars()
        .take(MAX_LOGGED_USER)
        .flat_map(char::escape_debug)
        .collect();
    if user.chars().count() > MAX_LOGGED_USER {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests;
