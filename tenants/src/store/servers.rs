//! Queries on servers: register (fresh id, never reused), look up, list, change spec or
//! desired state, mark deleted.
//!
//! The containers behind them are [`crate::provision`]'s business.

use super::connection::{Store, with_pool};
use super::error::StoreError;
use super::model::{DesiredState, Server, ServerSpec};
use super::row::{ServerRow, now, server_from_row, server_id, time};
use crate::name::ServerId;

impl Store {
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
                                  desired_state, created_at, login_user, dind_mode, init_mode) \
             VALUES ($1, $2, $3, $4, $5, $6, 'running', $7, $8, $9, $10) RETURNING id",
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
        .bind(spec.init.map(|i| i.as_str()))
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

    /// Hard-deletes a server row (and its placement): only to undo a failed create. The id is
    /// still never reused.
    pub async fn forget_server(&self, id: ServerId) -> Result<(), StoreError> {
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
                    created_at, deleted_at, login_user, dind_mode, init_mode FROM servers WHERE id = $1",
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
                    created_at, deleted_at, login_user, dind_mode, init_mode FROM servers WHERE ($1 OR deleted_at IS NULL) ORDER BY id",
        )
        .bind(include_deleted)
        .fetch_all(p)
        .await)
        .map_err(|e| self.err(e))?;
        rows.into_iter().map(server_from_row).collect()
    }

    /// Replaces a live server's spec (image, limits, login user, DinD and init modes).
    pub async fn set_server_spec(&self, id: ServerId, spec: &ServerSpec) -> Result<(), StoreError> {
        let memory = spec.memory.map(|m| i64::try_from(m).unwrap_or(i64::MAX));
        let n = with_pool!(self, p => sqlx::query(
            "UPDATE servers SET image = $1, memory_bytes = $2, nano_cpus = $3, pids_limit = $4, \
                    login_user = $5, dind_mode = $6, init_mode = $7 WHERE id = $8 AND deleted_at IS NULL",
        )
        .bind(spec.image.as_deref())
        .bind(memory)
        .bind(spec.nano_cpus)
        .bind(spec.pids)
        .bind(spec.user.as_deref())
        .bind(spec.dind.map(|d| d.as_str()))
        .bind(spec.init.map(|i| i.as_str()))
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
}
