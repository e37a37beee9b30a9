//! Authentication and admission: who may try, and whether what they presented is right.
//!
//! The SSH code sees only the [`Authenticator`] surface (through [`crate::gate::Gate`]):
//! [`Authenticator::admit`] on TCP accept, before the handshake ([`Admission::Accept`] carries
//! the connection's [`Permit`]); then [`Authenticator::password`],
//! [`Authenticator::keyboard_interactive_answer`] and [`Authenticator::public_key`], each
//! answering a [`Decision`]. A `Reject` carries nothing the client may learn; the reason goes to
//! the audit log only. The unsigned public-key probe (`verified == false`) is answered
//! `Accept { owner: "" }` for every well-formed `server<N>` name without looking the server up
//! (so it reveals nothing) and must never be taken as authentication.
//! Rejections use [`rejection`], not `Auth::reject()`, which would make russh stop offering
//! "password" after one failure.
//!
//! The work is split by concern: decisions live in the pure [`limits::Limits`] state machine
//! (injected clock, exhaustively unit-tested); this file does the IO around it (credentials from
//! the [`Backend`], the order of checks); `bcrypt_lanes.rs` runs verifications in lanes off the async
//! workers; `audit.rs` turns each attempt into counters, log lines and audit records;
//! `permit.rs` is the admission slot.
//!
//! Known limitation (russh, seen with paramiko): a client that sends SERVICE_REQUEST
//! "ssh-userauth" again before each auth call gets no SERVICE_ACCEPT while russh waits for an
//! auth request, and hangs until its own timeout; OpenSSH does not do this.

mod audit;
mod bcrypt_lanes;
pub mod config;
pub mod limits;
mod permit;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use russh::keys::{HashAlg, PublicKey};
use tenants::ServerId;
use tokio::sync::{Semaphore, mpsc};

pub use audit::loggable_user;
pub use config::AuthConfig;
pub use limits::{AdmitDenied, AttemptDenied, Method};
pub use permit::Permit;

use crate::backend::{AuditRecord, Backend};
use crate::metrics;
use audit::LogBudget;
use limits::{Limits, MonotonicClock, Params};

/// The single prompt of keyboard-interactive authentication.
pub const KBDINT_PROMPT: &str = "Password: ";

/// bcrypt looks at the first 72 bytes only; longer passwords are refused when set, so a longer
/// one presented at login is wrong by definition (but still costs a dummy verify for timing).
const BCRYPT_MAX_PASSWORD: usize = 72;

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

/// How long after a failed lookup new connections are told the database is unreachable.
pub const BACKEND_DOWN_NOTICE: Duration = Duration::from_secs(60);

/// What they are told.
pub const BACKEND_DOWN_LINE: &str = "berth: logins cannot be checked right now (the account database is unreachable); please try again later\r\n";

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
    /// When a credentials lookup last found the backend unavailable (cleared by the next
    /// answer): new connections are then told why their login will fail.
    backend_down: Mutex<Option<std::time::Instant>>,
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
                backend_down: Mutex::new(None),
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

    /// The backend's answer about `server`, remembering whether it was reachable.
    async fn credentials(
        &self,
        server: ServerId,
    ) -> Result<Option<crate::backend::Credentials>, crate::backend::BackendError> {
        let r = self.inner.backend.credentials(server).await;
        let down = matches!(r, Err(crate::backend::BackendError::Unavailable(_)));
        *self
            .inner
            .backend_down
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            down.then(std::time::Instant::now);
        r
    }

    /// The line shown to a connecting client before it authenticates, while the last
    /// credentials lookup (within [`BACKEND_DOWN_NOTICE`]) found the account database
    /// unreachable: its login would fail like a wrong password otherwise. Cheap (no lookup of
    /// its own), so it costs nothing before authentication.
    pub fn banner(&self) -> Option<String> {
        let since = *self
            .inner
            .backend_down
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        since
            .filter(|t| t.elapsed() < BACKEND_DOWN_NOTICE)
            .map(|_| BACKEND_DOWN_LINE.to_string())
    }

    /// Accept-time admission (before the SSH handshake).
    pub fn admit(&self, peer: IpAddr) -> Admission {
        self.start_background();
        let verdict = self.inner.limits().admit(peer);
        match verdict {
            Ok(slot) => {
                metrics::count_connection(true);
                metrics::UNAUTHENTICATED.inc();
                Admission::Accept(Permit {
                    inner: Arc::downgrade(&self.inner),
                    peer,
                    deadline: tokio::time::Instant::now() + self.inner.cfg.login_grace_time(),
                    released: false,
                    slot,
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
            Some(server) => match self.credentials(server).await {
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
            Some(server) => match self.credentials(server).await {
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

#[cfg(test)]
mod tests;
