//! What can go wrong with the store, and which of it is worth retrying: [`StoreError`], and
//! the sorting of sqlx's errors into locked / unreachable / other.
//!
//! Messages name the database by its redacted URL; no query text or bound value appears in
//! them.

use std::path::PathBuf;
use std::time::Duration;

use crate::keys::KeyError;
use crate::name::{ACCOUNT_NAME_RULE, ServerId};

/// How long a SQLite writer waits for another writer before reporting "locked".
pub(super) const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

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
    #[error("invalid node name {name:?}: {}", crate::placement::NODE_NAME_RULE)]
    InvalidNodeName { name: String },
    #[error("node {0} does not exist; `berth node list` shows the known nodes")]
    UnknownNode(String),
    #[error("node {0} already exists")]
    DuplicateNode(String),
    #[error("node {name} still holds {}; move or remove them first", list_servers(.servers))]
    NodeHasServers {
        name: String,
        servers: Vec<ServerId>,
    },
    #[error(
        "node {0} presents a hop host key other than the one pinned in the store; if the host \
         was reinstalled, run `berth node forget-key {0}` and start it again"
    )]
    NodeKeyMismatch(String),
    /// A move's step found the placement other than the move expects (another move, or a
    /// move that ended meanwhile).
    #[error("{server} is not on its way from {from} to {to}: {found}")]
    MoveConflict {
        server: ServerId,
        from: String,
        to: String,
        found: String,
    },
    #[error("front {0} does not exist; `berth node fronts` shows the known fronts")]
    UnknownFront(String),
    #[error("invalid front name {name:?}: {}", crate::placement::NODE_NAME_RULE)]
    InvalidFrontName { name: String },
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

/// Sorts a sqlx error into locked / unreachable / other.
pub(super) fn classify(url: &str, e: sqlx::Error) -> StoreError {
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

pub(super) fn migrate_error(url: &str, e: sqlx::migrate::MigrateError) -> StoreError {
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
