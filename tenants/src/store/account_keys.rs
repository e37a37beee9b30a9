//! Queries on an account's authorized public keys: add (validated and fingerprinted), remove
//! by fingerprint, list.
//!
//! Parsing an OpenSSH key line is [`crate::keys`]' job; this file only stores the result.

use super::connection::{Store, with_pool};
use super::error::StoreError;
use super::model::AuthorizedKey;
use super::row::{now, time};
use crate::keys::parse_key_line;

impl Store {
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
}
