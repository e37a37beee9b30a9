//! The tenant store: accounts, their public keys, servers and audit events, in SQLite (default,
//! one file in the state dir) or PostgreSQL (shared by many gateways).
//!
//! Both dialects run the same SQL text (`$N` placeholders work in both) through one
//! [`with_pool!`] dispatch; only the embedded migrations differ (`migrations/{sqlite,postgres}`).
//! Invariants live in the schema, not in this process: unique account names, server ids from
//! AUTOINCREMENT / an identity sequence (never reused, safe across gateways), a live server
//! always has an owner (CHECK + `ON DELETE SET NULL`). Times are unix seconds.
//!
//! This module knows nothing about Docker; [`crate::provision`] keeps the two consistent.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use russh::keys::PublicKey;
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::keys::{KeyError, parse_key_line};
use crate::name::{ACCOUNT_NAME_RULE, ServerId, valid_account_name};

/// How long a SQLite writer waits for another writer before reporting "locked".
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid database url {url}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("cannot prepare the database file {path}: {source}")]
    StateFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("database {url} is unreachable: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error(
        "database {url} is locked by another writer (waited {}s); retry, or stop the other process",
        SQLITE_BUSY_TIMEOUT.as_secs()
    )]
    Locked { url: String },
    #[error("cannot migrate database {url}: {source}")]
    Migrate {
        url: String,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    #[error("invalid account name {name:?}: {ACCOUNT_NAME_RULE}")]
    InvalidAccountName { name: String },
    #[error("account {0} does not exist")]
    UnknownAccount(String),
    #[error("account {0} already exists")]
    DuplicateAccount(String),
    #[error("account {name} still owns {}; remove them first", list_servers(.servers))]
    AccountHasServers {
        name: String,
        servers: Vec<ServerId>,
    },
    #[error(transparent)]
    InvalidKey(#[from] KeyError),
    #[error("key {fingerprint} is already authorized for account {account}")]
    DuplicateKey {
        account: String,
        fingerprint: String,
    },
    #[error("key {fingerprint} is not authorized for account {account}")]
    UnknownKey {
        account: String,
        fingerprint: String,
    },
    #[error("{0} does not exist")]
    UnknownServer(ServerId),
    #[error("{0} is deleted")]
    ServerDeleted(ServerId),
    #[error("database handed out server id {0}, beyond the u32 range server names allow")]
    IdOutOfRange(i64),
    #[error("database {url}: {source}")]
    Db {
        url: String,
        #[source]
        source: sqlx::Error,
    },
}

fn list_servers(ids: &[ServerId]) -> String {
    ids.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl StoreError {
    /// True for outages worth retrying (database down or locked), false for final answers.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Unreachable { .. } | StoreError::Locked { .. }
        )
    }
}

/// Which SQL dialect a store speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$p` bound to the concrete pool; the body is compiled once per dialect.
macro_rules! with_pool {
    ($store:expr, $p:ident => $body:expr) => {
        match &$store.pool {
            Pool::Sqlite($p) => $body,
            Pool::Postgres($p) => $body,
        }
    };
}

/// Handle to the database. Cheap to clone (pools are shared); Send + Sync.
#[derive(Debug, Clone)]
pub struct Store {
    pool: Pool,
    /// The URL with any password replaced, for messages.
    url: Arc<str>,
}

/// An account as listed (no secrets).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Account {
    pub name: String,
    pub enabled: bool,
    pub has_password: bool,
    pub keys: u32,
    pub created: DateTime<Utc>,
}

/// One authorized public key of an account.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuthorizedKey {
    pub fingerprint: String,
    pub algorithm: String,
    pub comment: String,
    /// Normalised OpenSSH line.
    pub line: String,
    pub created: DateTime<Utc>,
}

/// What a server should be doing; `ensure_running` turns it to `Running`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DesiredState {
    Running,
    Stopped,
}

impl DesiredState {
    pub fn as_str(self) -> &'static str {
        match self {
            DesiredState::Running => "running",
            DesiredState::Stopped => "stopped",
        }
    }
}

/// Per-server overrides; `None` follows `[tenants]` defaults at container-creation time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerSpec {
    pub image: Option<String>,
    /// Memory limit in bytes (0 = unlimited).
    pub memory: Option<u64>,
    /// CPU limit in billionths of a CPU (Docker's NanoCpus; 0 = unlimited).
    pub nano_cpus: Option<i64>,
    /// PIDs limit (0 = unlimited).
    pub pids: Option<i64>,
    /// The login user inside the container (`root` or a name the image has).
    #[serde(default)]
    pub user: Option<String>,
    /// Docker-in-Docker mode of this server (`None`: `[tenants] dind`).
    #[serde(default)]
    pub dind: Option<crate::config::DindMode>,
}

/// A server row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Server {
    pub id: ServerId,
    pub owner: String,
    #[serde(flatten)]
    pub spec: ServerSpec,
    pub desired: DesiredState,
    pub created: DateTime<Utc>,
    pub deleted: Option<DateTime<Utc>>,
}

/// Everything the gateway needs to authenticate a login as `server<N>`, in one query.
#[derive(Debug, Clone)]
pub struct ServerAuth {
    pub server: ServerId,
    pub owner: String,
    pub owner_enabled: bool,
    /// bcrypt hash, `None` when the owner has no password (keys only).
    pub password_hash: Option<String>,
    pub authorized_keys: Vec<PublicKey>,
    pub deleted: bool,
}

impl ServerAuth {
    /// Whether anyone may log in at all (server live and owner enabled).
    pub fn login_allowed(&self) -> bool {
        !self.deleted && self.owner_enabled
    }
}

/// Category of an audit event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditKind {
    /// A login attempt (password or key), any outcome.
    Auth,
    /// A session/channel ended (bytes, duration in `detail`).
    Session,
    /// An admin action through the CLI.
    Admin,
    /// A container lifecycle action (start on demand, recreate).
    Provision,
}

impl AuditKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::Auth => "auth",
            AuditKind::Session => "session",
            AuditKind::Admin => "admin",
            AuditKind::Provision => "provision",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "auth" => AuditKind::Auth,
            "session" => AuditKind::Session,
            "provision" => AuditKind::Provision,
            _ => AuditKind::Admin,
        }
    }
}

/// One audit event to record. Never put secrets in it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEvent {
    pub kind: AuditKind,
    pub server: Option<ServerId>,
    pub account: Option<String>,
    /// Remote address, e.g. "203.0.113.9:50122".
    pub peer: Option<String>,
    /// e.g. "password", "publickey", "shell", "exec", "sftp", "direct-tcpip", "server create".
    pub method: Option<String>,
    /// e.g. "success", "failure", "rate-limited", "error".
    pub outcome: String,
    pub detail: serde_json::Value,
}

impl AuditEvent {
    /// An event with only kind and outcome set; fill the rest with struct update syntax.
    pub fn new(kind: AuditKind, outcome: impl Into<String>) -> Self {
        Self {
            kind,
            server: None,
            account: None,
            peer: None,
            method: None,
            outcome: outcome.into(),
            detail: serde_json::Value::Null,
        }
    }
}

/// A recorded audit event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditRecord {
    pub id: i64,
    pub at: DateTime<Utc>,
    #[serde(flatten)]
    pub event: AuditEvent,
}

fn now() -> i64 {
    Utc::now().timestamp()
}

fn time(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).unwrap_or_default()
}

fn server_id(raw: i64) -> Result<ServerId, StoreError> {
    u32::try_from(raw)
        .ok()
        .and_then(ServerId::new)
        .ok_or(StoreError::IdOutOfRange(raw))
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_string();
    };
    let userinfo = &authority[..at];
    match userinfo.find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &url[..scheme_end + 3],
            &userinfo[..colon],
            &rest[at..]
        ),
        None => url.to_string(),
    }
}

/// The file path of a `sqlite:` URL; `None` for in-memory databases.
fn sqlite_path(url: &str) -> Result<Option<PathBuf>, StoreError> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| StoreError::InvalidUrl {
            url: url.to_string(),
            reason: "expected sqlite:///path/to/file.db".into(),
        })?;
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return Ok(None);
    }
    Ok(Some(PathBuf::from(path)))
}

/// Creates missing parent directories 0700 and the database file 0600 (tightening an existing
/// file's mode). Existing directories are left alone: they may be shared (e.g. /tmp).
fn prepare_sqlite_file(path: &Path) -> Result<(), StoreError> {
    let err = |source| StoreError::StateFile {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(err)?;
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let meta = std::fs::metadata(path).map_err(err)?;
            if meta.permissions().mode() & 0o077 != 0 {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .map_err(err)?;
            }
            Ok(())
        }
        Err(e) => Err(err(e)),
    }
}

impl Store {
    /// Opens (creating if needed) the database at `url` and runs the embedded migrations.
    ///
    /// `sqlite:///abs/path.db` (or `sqlite:rel.db`, `sqlite::memory:`): file 0600, missing parent
    /// directories 0700, WAL, foreign keys on, 5 s busy timeout. `postgres://…`: a pool of 10;
    /// migrations take Postgres' advisory lock, so several gateways may start at once.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        let redacted: Arc<str> = redact_url(url).into();
        if url.starts_with("sqlite:") {
            let path = sqlite_path(url)?;
            let (opts, max) = match &path {
                Some(p) => {
                    prepare_sqlite_file(p)?;
                    (SqliteConnectOptions::new().filename(p), 8)
                }
                // Every in-memory connection is its own database: keep exactly one.
                None => (
                    SqliteConnectOptions::from_str("sqlite::memory:").map_err(|e| {
                        StoreError::InvalidUrl {
                            url: redacted.to_string(),
                            reason: e.to_string(),
                        }
                    })?,
                    1,
                ),
            };
            let opts = opts
                .create_if_missing(true)
                .journal_mode(if path.is_some() {
                    SqliteJournalMode::Wal
                } else {
                    SqliteJournalMode::Memory
                })
                .synchronous(SqliteSynchronous::Normal)
                .foreign_keys(true)
                .busy_timeout(SQLITE_BUSY_TIMEOUT);
            let pool = SqlitePoolOptions::new()
                .max_connections(max)
                .min_connections(0)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(opts)
                .await
                .map_err(|e| classify(&redacted, e))?;
            sqlx::migrate!("./migrations/sqlite")
                .run(&pool)
                .await
                .map_err(|e| migrate_error(&redacted, e))?;
            Ok(Store {
                pool: Pool::Sqlite(pool),
                url: redacted,
            })
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = PgPoolOptions::new()
                .max_connections(10)
                .acquire_timeout(Duration::from_secs(10))
                .connect(url)
                .await
                .map_err(|e| match e {
                    sqlx::Error::Configuration(_) => StoreError::InvalidUrl {
                        url: redacted.to_string(),
                        reason: e.to_string(),
                    },
                    e => StoreError::Unreachable {
                        url: redacted.to_string(),
                        source: e,
                    },
                })?;
            sqlx::migrate!("./migrations/postgres")
                .run(&pool)
                .await
                .map_err(|e| migrate_error(&redacted, e))?;
            Ok(Store {
                pool: Pool::Postgres(pool),
                url: redacted,
            })
        } else {
            Err(StoreError::InvalidUrl {
                url: redacted.to_string(),
                reason: "expected sqlite:///path/to/berth.db or postgres://user@host/db".into(),
            })
        }
    }

    pub fn backend(&self) -> Backend {
        match self.pool {
            Pool::Sqlite(_) => Backend::Sqlite,
            Pool::Postgres(_) => Backend::Postgres,
        }
    }

    /// The URL with its password redacted.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Closes the pool (waits for connections to return).
    pub async fn close(&self) {
        with_pool!(self, p => p.close().await)
    }

    fn err(&self, e: sqlx::Error) -> StoreError {
        classify(&self.url, e)
    }

    // ---- accounts -------------------------------------------------------------------------

    /// Adds an account. `password_hash` is a bcrypt hash from [`crate::password::hash`]
    /// (`String` or `&str`), or `None::<&str>` for a key-only account.
    pub async fn add_account<H: AsRef<str>>(
        &self,
        name: &str,
        password_hash: Option<H>,
    ) -> Result<Account, StoreError> {
        let password_hash = password_hash.as_ref().map(AsRef::as_ref);
        if !valid_account_name(name) {
            return Err(StoreError::InvalidAccountName {
                name: name.to_string(),
            });
        }
        let created = now();
        let res = with_pool!(self, p => sqlx::query(
            "INSERT INTO accounts (name, password_hash, enabled, created_at) VALUES ($1, $2, TRUE, $3)",
        )
        .bind(name)
        .bind(password_hash)
        .bind(created)
        .execute(p)
        .await
        .map(|_| ()));
        match res {
            Ok(()) => Ok(Account {
                name: name.to_string(),
                enabled: true,
                has_password: password_hash.is_some(),
                keys: 0,
                created: time(created),
            }),
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                Err(StoreError::DuplicateAccount(name.to_string()))
            }
            Err(e) => Err(self.err(e)),
        }
    }

    /// Replaces (or with `None` clears) an account's password hash.
    pub async fn set_password<H: AsRef<str>>(
        &self,
        name: &str,
        password_hash: Option<H>,
    ) -> Result<(), StoreError> {
        let password_hash = password_hash.as_ref().map(AsRef::as_ref);
        let n = with_pool!(self, p => sqlx::query("UPDATE accounts SET password_hash = $1 WHERE name = $2")
            .bind(password_hash)
            .bind(name)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(|e| self.err(e))?;
        if n == 0 {
            return Err(StoreError::UnknownAccount(name.to_string()));
        }
        Ok(())
    }

    /// Enables or disables an account (a disabled owner cannot log in to any server).
    pub async fn set_enabled(&self, name: &str, enabled: bool) -> Result<(), StoreError> {
        let n =
            with_pool!(self, p => sqlx::query("UPDATE accounts SET enabled = $1 WHERE name = $2")
            .bind(enabled)
            .bind(name)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
            .map_err(|e| self.err(e))?;
        if n == 0 {
            return Err(StoreError::UnknownAccount(name.to_string()));
        }
        Ok(())
    }

    /// Removes an account and its keys. Refused while it owns live servers (the schema's CHECK
    /// enforces the same, even against a concurrent `server create`).
    pub async fn remove_account(&self, name: &str) -> Result<(), StoreError> {
        let res: Result<Result<(), StoreError>, sqlx::Error> = with_pool!(self, p => async {
            let mut tx = p.begin().await?;
            let id: Option<(i64,)> = sqlx::query_as("SELECT id FROM accounts WHERE name = $1")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
            let Some((id,)) = id else {
                return Ok(Err(StoreError::UnknownAccount(name.to_string())));
            };
            let live: Vec<(i64,)> = sqlx::query_as(
                "SELECT id FROM servers WHERE owner_id = $1 AND deleted_at IS NULL ORDER BY id",
            )
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
            if !live.is_empty() {
                let servers = live.iter().filter_map(|(i,)| server_id(*i).ok()).collect();
                return Ok(Err(StoreError::AccountHasServers { name: name.to_string(), servers }));
            }
            sqlx::query("DELETE FROM accounts WHERE id = $1").bind(id).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(Ok(()))
        }
        .await);
        match res {
            Ok(r) => r,
            Err(sqlx::Error::Database(db)) if db.is_check_violation() => {
                Err(StoreError::AccountHasServers {
                    name: name.to_string(),
                    servers: vec![],
                })
            }
            Err(e) => Err(self.err(e)),
        }
    }

    /// One account, or `None`.
    pub async fn account(&self, name: &str) -> Result<Option<Account>, StoreError> {
        let row: Option<(String, bool, bool, i64, i64)> = with_pool!(self, p => sqlx::query_as(
            "SELECT a.name, a.enabled, a.password_hash IS NOT NULL, \
                    (SELECT COUNT(*) FROM account_keys k WHERE k.account_id = a.id), a.created_at \
             FROM accounts a WHERE a.name = $1",
        )
        .bind(name)
        .fetch_optional(p)
        .await)
        .map_err(|e| self.err(e))?;
        Ok(row.map(account_from_row))
    }

    /// All accounts by name.
    pub async fn accounts(&self) -> Result<Vec<Account>, StoreError> {
        let rows: Vec<(String, bool, bool, i64, i64)> = with_pool!(self, p => sqlx::query_as(
            "SELECT a.name, a.enabled, a.password_hash IS NOT NULL, \
                    (SELECT COUNT(*) FROM account_keys k WHERE k.account_id = a.id), a.created_at \
             FROM accounts a ORDER BY a.name",
        )
        .fetch_all(p)
        .await)
        .map_err(|e| self.err(e))?;
        Ok(rows.into_iter().map(account_from_row).collect())
    }

    async fn account_id(&self, name: &str) -> Result<i64, StoreError> {
        let row: Option<(i64,)> =
            with_pool!(self, p => sqlx::query_as("SELECT id FROM accounts WHERE name = $1")
                .bind(name)
                .fetch_optional(p)
                .await)
            .map_err(|e| self.err(e))?;
        row.map(|(id,)| id)
            .ok_or_else(|| StoreError::UnknownAccount(name.to_string()))
    }

    // ---- keys -----------------------------------------------------------------------------

    /// Authorizes an OpenSSH public key line for an account (validated and fingerprinted).
    pub async fn add_key(&self, account: &str, line: &str) -> Result<AuthorizedKey, StoreError> {
        let parsed = parse_key_line(line)?;
        let id = self.account_id(account).await?;
        let created = now();
        let res = with_pool!(self, p => sqlx::query(
            "INSERT INTO account_keys (account_id, fingerprint, algorithm, key_line, comment, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id)
        .bind(&parsed.fingerprint)
        .bind(&parsed.algorithm)
        .bind(&parsed.line)
        .bind(&parsed.comment)
        .bind(created)
        .execute(p)
        .await
        .map(|_| ()));
        match res {
            Ok(()) => Ok(AuthorizedKey {
                fingerprint: parsed.fingerprint,
                algorithm: parsed.algorithm,
                comment: parsed.comment,
                line: parsed.line,
                created: time(created),
            }),
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                Err(StoreError::DuplicateKey {
                    account: account.to_string(),
                    fingerprint: parsed.fingerprint,
                })
            }
            Err(sqlx::Error::Database(db)) if db.is_foreign_key_violation() => {
                Err(StoreError::UnknownAccount(account.to_string()))
            }
            Err(e) => Err(self.err(e)),
        }
    }

    /// Removes a key by its `SHA256:…` fingerprint.
    pub async fn remove_key(&self, account: &str, fingerprint: &str) -> Result<(), StoreError> {
        let id = self.account_id(account).await?;
        let n = with_pool!(self, p => sqlx::query(
            "DELETE FROM account_keys WHERE account_id = $1 AND fingerprint = $2",
        )
        .bind(id)
        .bind(fingerprint)
        .execute(p)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| self.err(e))?;
        if n == 0 {
            return Err(StoreError::UnknownKey {
                account: account.to_string(),
                fingerprint: fingerprint.to_string(),
            });
        }
        Ok(())
    }

    /// An account's keys, oldest first.
    pub async fn keys(&self, account: &str) -> Result<Vec<AuthorizedKey>, StoreError> {
        let id = self.account_id(account).await?;
        let rows: Vec<(String, String, String, String, i64)> =
            with_pool!(self, p => sqlx::query_as(
            "SELECT fingerprint, algorithm, comment, key_line, created_at FROM account_keys \
             WHERE account_id = $1 ORDER BY id",
        )
        .bind(id)
        .fetch_all(p)
        .await)
            .map_err(|e| self.err(e))?;
        Ok(rows
            .into_iter()
            .map(
                |(fingerprint, algorithm, comment, line, created)| AuthorizedKey {
                    fingerprint,
                    algorithm,
                    comment,
                    line,
                    created: time(created),
                },
            )
            .collect())
    }

    // ---- servers --------------------------------------------------------------------------

    /// Registers a new server for `owner` and returns it with its fresh id (never reused).
    /// Normally called by [`crate::Provisioner::create_server`], which also makes the container.
    pub async fn insert_server(
        &self,
        owner: &str,
        spec: &ServerSpec,
    ) -> Result<Server, StoreError> {
        let owner_id = self.account_id(owner).await?;
        let created = now();
        let memory = spec.memory.map(|m| i64::try_from(m).unwrap_or(i64::MAX));
        let res: Result<(i64,), sqlx::Error> = with_pool!(self, p => sqlx::query_as(
            "INSERT INTO servers (owner_id, owner_name, image, memory_bytes, nano_cpus, pids_limit, \
                                  desired_state, created_at, login_user, dind_mode) \
             VALUES ($1, $2, $3, $4, $5, $6, 'running', $7, $8, $9) RETURNING id",
        )
        .bind(owner_id)
        .bind(owner)
        .bind(spec.image.as_deref())
        .bind(memory)
        .bind(spec.nano_cpus)
        .bind(spec.pids)
        .bind(created)
        .bind(spec.user.as_deref())
        .bind(spec.dind.map(|d| d.as_str()))
        .fetch_one(p)
        .await);
        let (id,) = match res {
            Ok(row) => row,
            // The owner vanished between the lookup and the insert.
            Err(sqlx::Error::Database(db)) if db.is_foreign_key_violation() => {
                return Err(StoreError::UnknownAccount(owner.to_string()));
            }
            Err(e) => return Err(self.err(e)),
        };
        Ok(Server {
            id: server_id(id)?,
            owner: owner.to_string(),
            spec: spec.clone(),
            desired: DesiredState::Running,
            created: time(created),
            deleted: None,
        })
    }

    /// Hard-deletes a server row: only to undo a failed create. The id is still never reused.
    pub(crate) async fn forget_server(&self, id: ServerId) -> Result<(), StoreError> {
        with_pool!(self, p => sqlx::query("DELETE FROM servers WHERE id = $1")
            .bind(i64::from(id.get()))
            .execute(p)
            .await
            .map(|_| ()))
        .map_err(|e| self.err(e))
    }

    /// One server (deleted ones included), or `None`.
    pub async fn server(&self, id: ServerId) -> Result<Option<Server>, StoreError> {
        let row: Option<ServerRow> = with_pool!(self, p => sqlx::query_as(
            "SELECT id, owner_name, image, memory_bytes, nano_cpus, pids_limit, desired_state, \
                    created_at, deleted_at, login_user, dind_mode FROM servers WHERE id = $1",
        )
        .bind(i64::from(id.get()))
        .fetch_optional(p)
        .await)
        .map_err(|e| self.err(e))?;
        row.map(server_from_row).transpose()
    }

    /// Servers by id; deleted ones only when asked.
    pub async fn servers(&self, include_deleted: bool) -> Result<Vec<Server>, StoreError> {
        let rows: Vec<ServerRow> = with_pool!(self, p => sqlx::query_as(
            "SELECT id, owner_name, image, memory_bytes, nano_cpus, pids_limit, desired_state, \
                    created_at, deleted_at, login_user, dind_mode FROM servers WHERE ($1 OR deleted_at IS NULL) ORDER BY id",
        )
        .bind(include_deleted)
        .fetch_all(p)
        .await)
        .map_err(|e| self.err(e))?;
        rows.into_iter().map(server_from_row).collect()
    }

    /// Replaces a live server's spec (image, limits, login user).
    pub async fn set_server_spec(&self, id: ServerId, spec: &ServerSpec) -> Result<(), StoreError> {
        let memory = spec.memory.map(|m| i64::try_from(m).unwrap_or(i64::MAX));
        let n = with_pool!(self, p => sqlx::query(
            "UPDATE servers SET image = $1, memory_bytes = $2, nano_cpus = $3, pids_limit = $4, \
                    login_user = $5, dind_mode = $6 WHERE id = $7 AND deleted_at IS NULL",
        )
        .bind(spec.image.as_deref())
        .bind(memory)
        .bind(spec.nano_cpus)
        .bind(spec.pids)
        .bind(spec.user.as_deref())
        .bind(spec.dind.map(|d| d.as_str()))
        .bind(i64::from(id.get()))
        .execute(p)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| self.err(e))?;
        if n == 0 {
            return Err(self.missing_server(id).await);
        }
        Ok(())
    }

    /// Records whether a live server should be running.
    pub async fn set_desired_state(
        &self,
        id: ServerId,
        state: DesiredState,
    ) -> Result<(), StoreError> {
        let n = with_pool!(self, p => sqlx::query(
            "UPDATE servers SET desired_state = $1 WHERE id = $2 AND deleted_at IS NULL",
        )
        .bind(state.as_str())
        .bind(i64::from(id.get()))
        .execute(p)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| self.err(e))?;
        if n == 0 {
            return Err(self.missing_server(id).await);
        }
        Ok(())
    }

    /// Marks a server deleted (the row stays, so its id is never handed out again).
    pub async fn mark_deleted(&self, id: ServerId) -> Result<(), StoreError> {
        let n = with_pool!(self, p => sqlx::query(
            "UPDATE servers SET deleted_at = $1, desired_state = 'stopped' \
             WHERE id = $2 AND deleted_at IS NULL",
        )
        .bind(now())
        .bind(i64::from(id.get()))
        .execute(p)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| self.err(e))?;
        if n == 0 {
            return Err(self.missing_server(id).await);
        }
        Ok(())
    }

    async fn missing_server(&self, id: ServerId) -> StoreError {
        match self.server(id).await {
            Ok(Some(_)) => StoreError::ServerDeleted(id),
            Ok(None) => StoreError::UnknownServer(id),
            Err(e) => e,
        }
    }

    /// The gateway's one query for authenticating `server<N>`: owner, enabled flag, password
    /// hash and keys. `None` when the server never existed. Key lines that no longer parse are
    /// skipped with a warning.
    pub async fn server_auth(&self, id: ServerId) -> Result<Option<ServerAuth>, StoreError> {
        type Row = (
            i64,
            Option<i64>,
            String,
            Option<bool>,
            Option<String>,
            Option<String>,
        );
        let rows: Vec<Row> = with_pool!(self, p => sqlx::query_as(
            "SELECT s.id, s.deleted_at, s.owner_name, a.enabled, a.password_hash, k.key_line \
             FROM servers s \
             LEFT JOIN accounts a ON a.id = s.owner_id \
             LEFT JOIN account_keys k ON k.account_id = a.id \
             WHERE s.id = $1 ORDER BY k.id",
        )
        .bind(i64::from(id.get()))
        .fetch_all(p)
        .await)
        .map_err(|e| self.err(e))?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let mut auth = ServerAuth {
            server: id,
            owner: first.2.clone(),
            owner_enabled: first.3.unwrap_or(false),
            password_hash: first.4.clone(),
            authorized_keys: Vec::new(),
            deleted: first.1.is_some(),
        };
        for row in &rows {
            if let Some(line) = &row.5 {
                match PublicKey::from_openssh(line) {
                    Ok(k) => auth.authorized_keys.push(k),
                    Err(e) => {
                        tracing::warn!(server = %id, error = %e, "skipping unparsable stored key")
                    }
                }
            }
        }
        Ok(Some(auth))
    }

    // ---- audit ----------------------------------------------------------------------------

    /// Appends an audit event (also emitted on the `audit` tracing target).
    pub async fn record_audit(&self, event: AuditEvent) -> Result<(), StoreError> {
        // Admin events come from the CLI, which prints its own outcome: keep them out of the
        // operator's terminal (they are in the table regardless).
        macro_rules! emit {
            ($level:expr) => {
                tracing::event!(
                    target: "audit",
                    $level,
                    kind = event.kind.as_str(),
                    server = event.server.map(|s| s.get()),
                    account = event.account.as_deref(),
                    peer = event.peer.as_deref(),
                    method = event.method.as_deref(),
                    outcome = %event.outcome,
                    detail = %event.detail,
                )
            };
        }
        if event.kind == AuditKind::Admin {
            emit!(tracing::Level::DEBUG);
        } else {
            emit!(tracing::Level::INFO);
        }
        let detail = if event.detail.is_null() {
            "{}".to_string()
        } else {
            event.detail.to_string()
        };
        with_pool!(self, p => sqlx::query(
            "INSERT INTO audit_events (at, kind, server, account, peer, method, outcome, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(now())
        .bind(event.kind.as_str())
        .bind(event.server.map(|s| i64::from(s.get())))
        .bind(event.account.as_deref())
        .bind(event.peer.as_deref())
        .bind(event.method.as_deref())
        .bind(&event.outcome)
        .bind(detail)
        .execute(p)
        .await
        .map(|_| ()))
        .map_err(|e| self.err(e))
    }

    /// The most recent audit events, newest first.
    pub async fn audit_events(&self, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        type Row = (
            i64,
            i64,
            String,
            Option<i64>,
            Option<String>,
            Option<String>,
            Option<String>,
            String,
            String,
        );
        let rows: Vec<Row> = with_pool!(self, p => sqlx::query_as(
            "SELECT id, at, kind, server, account, peer, method, outcome, detail \
             FROM audit_events ORDER BY id DESC LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(p)
        .await)
        .map_err(|e| self.err(e))?;
        Ok(rows
            .into_iter()
            .map(
                |(id, at, kind, server, account, peer, method, outcome, detail)| AuditRecord {
                    id,
                    at: time(at),
                    event: AuditEvent {
                        kind: AuditKind::parse(&kind),
                        server: server.and_then(|s| server_id(s).ok()),
                        account,
                        peer,
                        method,
                        outcome,
                        detail: serde_json::from_str(&detail)
                            .unwrap_or(serde_json::Value::String(detail)),
                    },
                },
            )
            .collect())
    }
}

type ServerRow = (
    i64,
    String,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    String,
    i64,
    Option<i64>,
    Option<String>,
    Option<String>,
);

fn server_from_row(r: ServerRow) -> Result<Server, StoreError> {
    let (id, owner, image, memory, nano_cpus, pids, desired, created, deleted, user, dind) = r;
    Ok(Server {
        id: server_id(id)?,
        owner,
        spec: ServerSpec {
            image,
            memory: memory.map(|m| u64::try_from(m).unwrap_or(0)),
            nano_cpus,
            pids,
            user,
            // A value this version does not know follows the config, like NULL.
            dind: dind.and_then(|d| crate::config::DindMode::parse(&d)),
        },
        desired: if desired == "stopped" {
            DesiredState::Stopped
        } else {
            DesiredState::Running
        },
        created: time(created),
        deleted: deleted.map(time),
    })
}

fn account_from_row(r: (String, bool, bool, i64, i64)) -> Account {
    Account {
        name: r.0,
        enabled: r.1,
        has_password: r.2,
        keys: u32::try_from(r.3).unwrap_or(u32::MAX),
        created: time(r.4),
    }
}

/// Sorts a sqlx error into locked / unreachable / other.
fn classify(url: &str, e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) => {
            // SQLITE_BUSY (5) and SQLITE_LOCKED (6), including extended codes (517, 262, …).
            let code = db.code().and_then(|c| c.parse::<i64>().ok()).unwrap_or(-1);
            if url.starts_with("sqlite") && matches!(code & 0xff, 5 | 6) {
                return StoreError::Locked {
                    url: url.to_string(),
                };
            }
            StoreError::Db {
                url: url.to_string(),
                source: e,
            }
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => StoreError::Unreachable {
            url: url.to_string(),
            source: e,
        },
        _ => StoreError::Db {
            url: url.to_string(),
            source: e,
        },
    }
}

fn migrate_error(url: &str, e: sqlx::migrate::MigrateError) -> StoreError {
    match e {
        sqlx::migrate::MigrateError::Execute(inner) => match classify(url, inner) {
            StoreError::Db { source, .. } => StoreError::Migrate {
                url: url.to_string(),
                source: sqlx::migrate::MigrateError::Execute(source),
            },
            other => other,
        },
        e => StoreError::Migrate {
            url: url.to_string(),
            source: e,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://berth:secret@127.0.0.1/berth"),
            "postgres://berth:***@127.0.0.1/berth"
        );
        assert_eq!(redact_url("postgres://berth@db/x"), "postgres://berth@db/x");
        assert_eq!(
            redact_url("sqlite:///var/lib/berth/berth.db"),
            "sqlite:///var/lib/berth/berth.db"
        );
        assert_eq!(
            redact_url("postgres://u:p@ss@h/db"),
            "postgres://u:***@h/db"
        );
    }

    #[test]
    fn sqlite_paths() {
        assert_eq!(
            sqlite_path("sqlite:///var/lib/berth/berth.db").unwrap(),
            Some(PathBuf::from("/var/lib/berth/berth.db"))
        );
        assert_eq!(
            sqlite_path("sqlite:rel.db?mode=rwc").unwrap(),
            Some(PathBuf::from("rel.db"))
        );
        assert_eq!(sqlite_path("sqlite::memory:").unwrap(), None);
        assert!(sqlite_path("mysql://x").is_err());
    }
}
