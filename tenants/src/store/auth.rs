//! The gateway's one query per login: a server's owner, whether it may log in, its password
//! hash and its keys, read together so a login costs one round trip.

use russh::keys::PublicKey;

use super::connection::{Store, with_pool};
use super::error::StoreError;
use super::model::ServerAuth;
use crate::name::ServerId;

impl Store {
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
}
