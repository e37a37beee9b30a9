//! Queries on accounts: create, password, enable/disable, remove (refused while the account
//! owns live servers), list.

use super::connection::{Store, with_pool};
use super::error::StoreError;
use super::model::Account;
use super::row::{account_from_row, now, server_id, time};
use crate::name::valid_account_name;

impl Store {
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

    /// An account's row id, for the queries that reference it.
    pub(super) async fn account_id(&self, name: &str) -> Result<i64, StoreError> {
        let row: Option<(i64,)> =
            with_pool!(self, p => sqlx::query_as("SELECT id FROM accounts WHERE name = $1")
                .bind(name)
                .fetch_optional(p)
                .await)
            .map_err(|e| self.err(e))?;
        row.map(|(id,)| id)
            .ok_or_else(|| StoreError::UnknownAccount(name.to_string()))
    }
}
