//! The operator plane's rows: per-server recording, bandwidth and session-limit settings and
//! per-account session limits ([`ServerOperations`]) and the metadata of recorded sessions ([`Recording`]). The gateway
//! writes one recording row when a recorded session ends; `berth session recordings` reads them.
//! The recordings' files are not touched here.

use super::connection::{Store, with_pool};
use super::error::StoreError;
use super::model::{Recording, ServerOperations, SessionLimitSettings};
use super::row::{server_id, time};
use crate::name::ServerId;

type RecordingRow = (
    String,
    i64,
    String,
    String,
    String,
    Option<String>,
    i64,
    i64,
    Option<String>,
    i64,
    i64,
    i64,
    Option<String>,
    Option<String>,
);

fn recording_from_row(r: RecordingRow) -> Result<Recording, StoreError> {
    let (id, server, account, peer, kind, command, started, ended, file, bytes, bi, bo, exit, note) =
        r;
    let unsigned = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(Recording {
        id,
        server: server_id(server)?,
        account,
        peer,
        kind,
        command,
        started: time(started),
        ended: time(ended),
        file,
        bytes: unsigned(bytes),
        bytes_in: unsigned(bi),
        bytes_out: unsigned(bo),
        exit,
        note,
    })
}

fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Store {
    /// The operator's settings for one server and its owner account (all `None` when never
    /// set).
    pub async fn server_operations(&self, id: ServerId) -> Result<ServerOperations, StoreError> {
        type Row = (
            Option<bool>,
            Option<i64>,
            Option<i64>,
            Option<i64>,
            Option<i64>,
            Option<i64>,
            Option<i64>,
            Option<i64>,
        );
        let row: Option<Row> = with_pool!(self, p => sqlx::query_as(
            "SELECT o.record, o.bandwidth_bps, o.idle_timeout_secs, o.max_duration_secs, \
             o.max_sessions, a.idle_timeout_secs, a.max_duration_secs, a.max_sessions \
             FROM servers s \
             LEFT JOIN server_operations o ON o.server_id = s.id \
             LEFT JOIN account_operations a ON a.account_id = s.owner_id \
             WHERE s.id = $1",
        )
        .bind(i64::from(id.get()))
        .fetch_optional(p)
        .await)
        .map_err(|e| self.err(e))?;
        let u = |v: Option<i64>| v.and_then(|v| u64::try_from(v).ok());
        Ok(row
            .map(
                |(record, bw, idle, max, n, a_idle, a_max, a_n)| ServerOperations {
                    record,
                    bandwidth_bps: u(bw),
                    limits: SessionLimitSettings {
                        idle_timeout_secs: u(idle),
                        max_duration_secs: u(max),
                        max_sessions: u(n),
                    },
                    account_limits: SessionLimitSettings {
                        idle_timeout_secs: u(a_idle),
                        max_duration_secs: u(a_max),
                        max_sessions: u(a_n),
                    },
                },
            )
            .unwrap_or_default())
    }

    /// Sets whether `id`'s sessions are recorded (`None`: follow `[recording] enabled`).
    pub async fn set_server_record(
        &self,
        id: ServerId,
        record: Option<bool>,
    ) -> Result<(), StoreError> {
        with_pool!(self, p => sqlx::query(
            "INSERT INTO server_operations (server_id, record) VALUES ($1, $2) \
             ON CONFLICT (server_id) DO UPDATE SET record = excluded.record",
        )
        .bind(i64::from(id.get()))
        .bind(record)
        .execute(p)
        .await
        .map(|_| ()))
        .map_err(|e| self.err(e))
    }

    /// Sets `id`'s bandwidth limit in bytes per second (`None`: unlimited).
    pub async fn set_server_bandwidth(
        &self,
        id: ServerId,
        bytes_per_sec: Option<u64>,
    ) -> Result<(), StoreError> {
        with_pool!(self, p => sqlx::query(
            "INSERT INTO server_operations (server_id, bandwidth_bps) VALUES ($1, $2) \
             ON CONFLICT (server_id) DO UPDATE SET bandwidth_bps = excluded.bandwidth_bps",
        )
        .bind(i64::from(id.get()))
        .bind(bytes_per_sec.map(signed))
        .execute(p)
        .await
        .map(|_| ()))
        .map_err(|e| self.err(e))
    }

    /// Sets `id`'s session limits (each `None`: follow its account's, then the config's).
    pub async fn set_server_session_limits(
        &self,
        id: ServerId,
        l: SessionLimitSettings,
    ) -> Result<(), StoreError> {
        with_pool!(self, p => sqlx::query(
            "INSERT INTO server_operations (server_id, idle_timeout_secs, max_duration_secs, max_sessions) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (server_id) DO UPDATE SET \
             idle_timeout_secs = excluded.idle_timeout_secs, \
             max_duration_secs = excluded.max_duration_secs, \
             max_sessions = excluded.max_sessions",
        )
        .bind(i64::from(id.get()))
        .bind(l.idle_timeout_secs.map(signed))
        .bind(l.max_duration_secs.map(signed))
        .bind(l.max_sessions.map(signed))
        .execute(p)
        .await
        .map(|_| ()))
        .map_err(|e| self.err(e))
    }

    /// The session limits set for account `name` (`None`: no such account).
    pub async fn account_session_limits(
        &self,
        name: &str,
    ) -> Result<Option<SessionLimitSettings>, StoreError> {
        type Row = (Option<i64>, Option<i64>, Option<i64>);
        let row: Option<Row> = with_pool!(self, p => sqlx::query_as(
            "SELECT o.idle_timeout_secs, o.max_duration_secs, o.max_sessions \
             FROM accounts a LEFT JOIN account_operations o ON o.account_id = a.id \
             WHERE a.name = $1",
        )
        .bind(name)
        .fetch_optional(p)
        .await)
        .map_err(|e| self.err(e))?;
        let u = |v: Option<i64>| v.and_then(|v| u64::try_from(v).ok());
        Ok(row.map(|(idle, max, n)| SessionLimitSettings {
            idle_timeout_secs: u(idle),
            max_duration_secs: u(max),
            max_sessions: u(n),
        }))
    }

    /// Sets account `name`'s session limits; false when there is no such account.
    pub async fn set_account_session_limits(
        &self,
        name: &str,
        l: SessionLimitSettings,
    ) -> Result<bool, StoreError> {
        with_pool!(self, p => sqlx::query(
            "INSERT INTO account_operations (account_id, idle_timeout_secs, max_duration_secs, max_sessions) \
             SELECT id, $2, $3, $4 FROM accounts WHERE name = $1 \
             ON CONFLICT (account_id) DO UPDATE SET \
             idle_timeout_secs = excluded.idle_timeout_secs, \
             max_duration_secs = excluded.max_duration_secs, \
             max_sessions = excluded.max_sessions",
        )
        .bind(name)
        .bind(l.idle_timeout_secs.map(signed))
        .bind(l.max_duration_secs.map(signed))
        .bind(l.max_sessions.map(signed))
        .execute(p)
        .await
        .map(|r| r.rows_affected() > 0))
        .map_err(|e| self.err(e))
    }

    /// Stores one recorded session's metadata (an id seen twice is an error).
    pub async fn add_recording(&self, r: &Recording) -> Result<(), StoreError> {
        with_pool!(self, p => sqlx::query(
            "INSERT INTO recordings (id, server, account, peer, kind, command, started_at, \
                    ended_at, file, bytes, bytes_in, bytes_out, exit, note) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(&r.id)
        .bind(i64::from(r.server.get()))
        .bind(&r.account)
        .bind(&r.peer)
        .bind(&r.kind)
        .bind(r.command.as_deref())
        .bind(r.started.timestamp())
        .bind(r.ended.timestamp())
        .bind(r.file.as_deref())
        .bind(signed(r.bytes))
        .bind(signed(r.bytes_in))
        .bind(signed(r.bytes_out))
        .bind(r.exit.as_deref())
        .bind(r.note.as_deref())
        .execute(p)
        .await
        .map(|_| ()))
        .map_err(|e| self.err(e))
    }

    /// Recordings, newest first, of one server or all.
    pub async fn recordings(
        &self,
        server: Option<ServerId>,
        limit: u32,
    ) -> Result<Vec<Recording>, StoreError> {
        let rows: Vec<RecordingRow> = with_pool!(self, p => sqlx::query_as(
            "SELECT id, server, account, peer, kind, command, started_at, ended_at, file, bytes, \
                    bytes_in, bytes_out, exit, note FROM recordings WHERE ($1 OR server = $2) \
             ORDER BY started_at DESC, id DESC LIMIT $3",
        )
            .bind(server.is_none())
            .bind(server.map_or(0, |s| i64::from(s.get())))
            .bind(i64::from(limit))
            .fetch_all(p)
            .await)
        .map_err(|e| self.err(e))?;
        rows.into_iter().map(recording_from_row).collect()
    }

    /// One recording by id.
    pub async fn recording(&self, id: &str) -> Result<Option<Recording>, StoreError> {
        let row: Option<RecordingRow> = with_pool!(self, p => sqlx::query_as(
            "SELECT id, server, account, peer, kind, command, started_at, ended_at, file, bytes, \
                    bytes_in, bytes_out, exit, note FROM recordings WHERE id = $1",
        )
            .bind(id)
            .fetch_optional(p)
            .await)
        .map_err(|e| self.err(e))?;
        row.map(recording_from_row).transpose()
    }

    /// Removes the rows of recordings that started before `before` (unix seconds) and returns
    /// them, so the caller can remove their files.
    pub async fn prune_recordings(&self, before: i64) -> Result<Vec<Recording>, StoreError> {
        let rows: Vec<RecordingRow> = with_pool!(self, p => sqlx::query_as(
            "SELECT id, server, account, peer, kind, command, started_at, ended_at, file, bytes, \
                    bytes_in, bytes_out, exit, note FROM recordings WHERE started_at < $1",
        )
            .bind(before)
            .fetch_all(p)
            .await)
        .map_err(|e| self.err(e))?;
        with_pool!(self, p => sqlx::query("DELETE FROM recordings WHERE started_at < $1")
            .bind(before)
            .execute(p)
            .await
            .map(|_| ()))
        .map_err(|e| self.err(e))?;
        rows.into_iter().map(recording_from_row).collect()
    }
}
