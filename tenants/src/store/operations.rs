//! The operator plane's rows: per-server recording and bandwidth settings
//! ([`ServerOperations`]) and the metadata of recorded sessions ([`Recording`]). The gateway
//! writes one recording row when a recorded session ends; `berth session recordings` reads them.
//! The recordings' files are not touched here.

use super::connection::{Store, with_pool};
use super::error::StoreError;
use super::model::{Recording, ServerOperations};
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
    /// The operator's settings for one server (all `None` when never set).
    pub async fn server_operations(&self, id: ServerId) -> Result<ServerOperations, StoreError> {
        let row: Option<(Option<bool>, Option<i64>)> = with_pool!(self, p => sqlx::query_as(
            "SELECT record, bandwidth_bps FROM server_operations WHERE server_id = $1",
        )
        .bind(i64::from(id.get()))
        .fetch_optional(p)
        .await)
        .map_err(|e| self.err(e))?;
        Ok(row
            .map(|(record, bw)| ServerOperations {
                record,
                bandwidth_bps: bw.and_then(|b| u64::try_from(b).ok()),
            })
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
