//! Live sessions across fronts (`live_sessions`): each front publishes its running session
//! channels and marks itself alive (`fronts.last_seen`); `berth session list|kill` on any host
//! reads them and asks the owning front to end some ([`Store::request_session_kill`]), which
//! the front picks up with [`Store::pending_session_kills`] and confirms by removing the row.
//!
//! A front writes only its own rows. Rows of a front that stopped marking itself alive stay
//! until it starts again (it clears them first) or is removed (cascade); readers decide what
//! "stale" means from `front_seen`.

use serde::Serialize;

use super::connection::{Store, with_pool};
use super::error::StoreError;
use super::row::now;
use crate::name::ServerId;

/// What a front publishes about one of its session channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveSessionRow {
    /// The front's own id of the session (unique within the front's current run).
    pub local_id: u64,
    pub server: u32,
    pub account: String,
    pub peer: String,
    pub kind: String,
    /// Unix seconds.
    pub started: i64,
    /// Unix seconds of the connection's last channel data.
    pub last_active: i64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub recording: bool,
}

/// A live session as the store lists it, with its front and how fresh the row is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LiveSession {
    /// `FRONT/LOCAL_ID`, unique across fronts.
    pub id: String,
    pub front: String,
    pub local_id: u64,
    pub server: u32,
    pub account: String,
    pub peer: String,
    pub kind: String,
    /// Unix seconds.
    pub started: i64,
    /// Unix seconds of the connection's last channel data as last published.
    pub last_active: i64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub recording: bool,
    /// Unix seconds when the front last wrote this row.
    pub updated: i64,
    /// Unix seconds when the front last marked itself alive (`None`: never).
    pub front_seen: Option<i64>,
    /// An end was asked for and the front has not confirmed it yet.
    pub kill_requested: bool,
}

/// Which live sessions a list or kill is about (all set fields must match).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveSelector {
    /// One session: its front and local id.
    pub id: Option<(String, u64)>,
    pub server: Option<ServerId>,
    pub account: Option<String>,
}

fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn unsigned(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

type Row = (
    String,
    i64,
    i64,
    String,
    String,
    String,
    i64,
    i64,
    i64,
    i64,
    bool,
    i64,
    Option<i64>,
    Option<i64>,
);

fn from_row(r: Row) -> LiveSession {
    let (front, local, server, account, peer, kind, started, active, bi, bo, rec, upd, seen, kill) =
        r;
    let local_id = unsigned(local);
    LiveSession {
        id: format!("{front}/{local_id}"),
        front,
        local_id,
        server: u32::try_from(server).unwrap_or(0),
        account,
        peer,
        kind,
        started,
        last_active: active,
        bytes_in: unsigned(bi),
        bytes_out: unsigned(bo),
        recording: rec,
        updated: upd,
        front_seen: seen,
        kill_requested: kill.is_some(),
    }
}

/// The WHERE clause of a selector over `s` (`live_sessions`), binding `$1`…`$6`.
macro_rules! select_where {
    () => {
        "($1 OR (s.front = $2 AND s.local_id = $3)) \
         AND ($4 OR s.server = $5) AND (s.account = $6 OR $6 = '')"
    };
}

/// The values `select_where!` binds as `$1`…`$6`, in order.
struct WhereArgs<'a> {
    any_id: bool,
    front: &'a str,
    local: i64,
    any_server: bool,
    server: i64,
    account: &'a str,
}

impl<'a> WhereArgs<'a> {
    fn of(sel: &'a LiveSelector) -> Self {
        let (front, local) = sel
            .id
            .as_ref()
            .map_or(("", 0), |(f, l)| (f.as_str(), signed(*l)));
        WhereArgs {
            any_id: sel.id.is_none(),
            front,
            local,
            any_server: sel.server.is_none(),
            server: sel.server.map_or(0, |s| i64::from(s.get())),
            account: sel.account.as_deref().unwrap_or(""),
        }
    }
}

impl Store {
    /// A front's start (or clean stop): removes the rows its previous run left and marks it
    /// seen now.
    pub async fn clear_live_sessions(&self, front: &str) -> Result<(), StoreError> {
        with_pool!(self, p => async {
            let mut tx = p.begin().await?;
            sqlx::query("DELETE FROM live_sessions WHERE front = $1")
                .bind(front)
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE fronts SET last_seen = $2 WHERE name = $1")
                .bind(front)
                .bind(now())
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        }
        .await)
        .map_err(|e| self.err(e))
    }

    /// One publication of `front`, in one transaction: `rows` inserted or refreshed (a pending
    /// kill request is kept), `gone` removed, and, with `heartbeat`, the front marked seen.
    pub async fn publish_live_sessions(
        &self,
        front: &str,
        rows: &[LiveSessionRow],
        gone: &[u64],
        heartbeat: bool,
    ) -> Result<(), StoreError> {
        let t = now();
        with_pool!(self, p => async {
            let mut tx = p.begin().await?;
            for id in gone {
                sqlx::query("DELETE FROM live_sessions WHERE front = $1 AND local_id = $2")
                    .bind(front)
                    .bind(signed(*id))
                    .execute(&mut *tx)
                    .await?;
            }
            for r in rows {
                sqlx::query(
                    "INSERT INTO live_sessions (front, local_id, server, account, peer, kind, \
                         started_at, last_active_at, bytes_in, bytes_out, recording, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
                     ON CONFLICT (front, local_id) DO UPDATE SET \
                         last_active_at = excluded.last_active_at, bytes_in = excluded.bytes_in, \
                         bytes_out = excluded.bytes_out, updated_at = excluded.updated_at",
                )
                .bind(front)
                .bind(signed(r.local_id))
                .bind(i64::from(r.server))
                .bind(&r.account)
                .bind(&r.peer)
                .bind(&r.kind)
                .bind(r.started)
                .bind(r.last_active)
                .bind(signed(r.bytes_in))
                .bind(signed(r.bytes_out))
                .bind(r.recording)
                .bind(t)
                .execute(&mut *tx)
                .await?;
            }
            if heartbeat {
                sqlx::query("UPDATE fronts SET last_seen = $2 WHERE name = $1")
                    .bind(front)
                    .bind(t)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await
        }
        .await)
        .map_err(|e| self.err(e))
    }

    /// The sessions of `front` someone asked to end: local id and the message for the client.
    pub async fn pending_session_kills(
        &self,
        front: &str,
    ) -> Result<Vec<(u64, Option<String>)>, StoreError> {
        let rows: Vec<(i64, Option<String>)> = with_pool!(self, p => sqlx::query_as(
            "SELECT local_id, kill_message FROM live_sessions \
             WHERE front = $1 AND kill_requested_at IS NOT NULL ORDER BY local_id",
        )
        .bind(front)
        .fetch_all(p)
        .await)
        .map_err(|e| self.err(e))?;
        Ok(rows.into_iter().map(|(id, m)| (unsigned(id), m)).collect())
    }

    /// Live sessions of every front that `sel` names, by front and id.
    pub async fn live_sessions(&self, sel: &LiveSelector) -> Result<Vec<LiveSession>, StoreError> {
        let w = WhereArgs::of(sel);
        let sql = concat!(
            "SELECT s.front, s.local_id, s.server, s.account, s.peer, s.kind, s.started_at, \
                    s.last_active_at, s.bytes_in, s.bytes_out, s.recording, s.updated_at, \
                    f.last_seen, s.kill_requested_at \
             FROM live_sessions s JOIN fronts f ON f.name = s.front WHERE ",
            select_where!(),
            " ORDER BY s.front, s.local_id"
        );
        let rows: Vec<Row> = with_pool!(self, p => sqlx::query_as(sql)
            .bind(w.any_id)
            .bind(w.front)
            .bind(w.local)
            .bind(w.any_server)
            .bind(w.server)
            .bind(w.account)
            .fetch_all(p)
            .await)
        .map_err(|e| self.err(e))?;
        Ok(rows.into_iter().map(from_row).collect())
    }

    /// Asks the fronts to end the sessions `sel` names on fronts seen at or after `alive_since`
    /// (unix seconds), telling their clients `message`; the ids asked (`FRONT/LOCAL_ID`).
    /// Sessions of fronts not seen since then are left alone: nobody would act on the request.
    pub async fn request_session_kill(
        &self,
        sel: &LiveSelector,
        message: Option<&str>,
        alive_since: i64,
    ) -> Result<Vec<String>, StoreError> {
        let w = WhereArgs::of(sel);
        let sql = concat!(
            "UPDATE live_sessions AS s SET kill_requested_at = $7, kill_message = $8 WHERE ",
            select_where!(),
            " AND s.front IN (SELECT name FROM fronts WHERE last_seen >= $9) \
             RETURNING front, local_id"
        );
        let rows: Vec<(String, i64)> = with_pool!(self, p => sqlx::query_as(sql)
            .bind(w.any_id)
            .bind(w.front)
            .bind(w.local)
            .bind(w.any_server)
            .bind(w.server)
            .bind(w.account)
            .bind(now())
            .bind(message)
            .bind(alive_since)
            .fetch_all(p)
            .await)
        .map_err(|e| self.err(e))?;
        let mut ids: Vec<String> = rows
            .into_iter()
            .map(|(f, l)| format!("{f}/{}", unsigned(l)))
            .collect();
        ids.sort();
        Ok(ids)
    }
}
