//! The audit trail: appending events (also emitted on the `audit` tracing target) and reading
//! the most recent ones back.

use super::connection::{Store, with_pool};
use super::error::StoreError;
use super::model::{AuditEntry, AuditEvent, AuditKind};
use super::row::{now, server_id, time};

impl Store {
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
    pub async fn audit_events(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
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
                |(id, at, kind, server, account, peer, method, outcome, detail)| AuditEntry {
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
