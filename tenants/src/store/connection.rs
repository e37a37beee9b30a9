//! Opening the database: the [`Store`] handle, its pool per SQL [`Dialect`], the SQLite file's
//! permissions, the embedded migrations, and [`with_pool!`], which every query goes through so
//! one SQL text serves both dialects.
//!
//! The queries themselves live in the files named after what they touch.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::error::{SQLITE_BUSY_TIMEOUT, StoreError, classify, migrate_error};
use super::url::{redact_url, sqlite_path};

/// Which SQL dialect a store speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone)]
pub(super) enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$p` bound to the concrete pool; the body is compiled once per dialect.
macro_rules! with_pool {
    ($store:expr, $p:ident => $body:expr) => {
        match &$store.pool {
            super::connection::Pool::Sqlite($p) => $body,
            super::connection::Pool::Postgres($p) => $body,
        }
    };
}
pub(super) use with_pool;

/// Handle to the database. Cheap to clone (pools are shared); Send + Sync.
#[derive(Debug, Clone)]
pub struct Store {
    pub(super) pool: Pool,
    /// The URL with any password replaced, for messages.
    url: Arc<str>,
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

    /// Which SQL dialect this store speaks.
    pub fn dialect(&self) -> Dialect {
        match self.pool {
            Pool::Sqlite(_) => Dialect::Sqlite,
            Pool::Postgres(_) => Dialect::Postgres,
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

    /// A query's error, sorted and naming this store's URL.
    pub(super) fn err(&self, e: sqlx::Error) -> StoreError {
        classify(&self.url, e)
    }
}
