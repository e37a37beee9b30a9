//! A cluster front's live sessions in the shared store, so `berth session list|kill` on any
//! host sees and ends every front's sessions (the store is the one thing all hosts share; no
//! listener is added). A single host keeps its control socket ([`crate::control`]) and never
//! runs this.
//!
//! Every [`POLL`] the publisher asks the store for kill requests addressed to this front and
//! ends those sessions through the [`Registry`] (the client gets the same line as from the
//! control socket). It writes when the set of sessions changed (new rows, removed rows) and
//! every [`HEARTBEAT`] (byte counters and activity of the rows that changed, and the front's
//! `last_seen`), each time in one transaction: the write rate is bounded by the tick, never by
//! traffic. A row disappears once its session has ended, which is what `berth session kill`
//! waits for. The front's rows are removed when it starts and when it stops cleanly.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tenants::{LiveSessionRow, Store};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::control::{Registry, Selector, SessionView};

/// How often kill requests are polled (and new or ended sessions published).
pub const POLL: Duration = Duration::from_secs(1);
/// How often counters are refreshed and the front marked alive.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// A front not marked alive for this long is stale: its rows are shown as such and no kill is
/// asked of it.
pub const STALE_AFTER_SECS: i64 = 20;

/// Unix seconds, as the store's live-session rows hold them.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn row(v: &SessionView, now: i64) -> LiveSessionRow {
    LiveSessionRow {
        local_id: v.id,
        server: v.server,
        account: v.account.clone(),
        peer: v.peer.clone(),
        kind: v.kind.clone(),
        started: i64::try_from(v.started).unwrap_or(0),
        last_active: now - i64::try_from(v.idle_secs).unwrap_or(0),
        bytes_in: v.bytes_in,
        bytes_out: v.bytes_out,
        recording: v.recording,
    }
}

/// What one publication must write, given what the store holds (`published`): rows that are
/// new, or (on a heartbeat) whose counters or activity moved; and ids no longer running.
fn changes(
    published: &HashMap<u64, LiveSessionRow>,
    current: &[LiveSessionRow],
    heartbeat: bool,
) -> (Vec<LiveSessionRow>, Vec<u64>) {
    let upsert = current
        .iter()
        .filter(|r| match published.get(&r.local_id) {
            None => true,
            Some(old) => {
                heartbeat
                    && (old.bytes_in != r.bytes_in
                        || old.bytes_out != r.bytes_out
                        || (old.last_active - r.last_active).abs() > 1)
            }
        })
        .cloned()
        .collect();
    let ids: HashSet<u64> = current.iter().map(|r| r.local_id).collect();
    let mut gone: Vec<u64> = published
        .keys()
        .filter(|id| !ids.contains(id))
        .copied()
        .collect();
    gone.sort_unstable();
    (upsert, gone)
}

/// Publishes `registry` as front `front` until `stop` fires, then removes the front's rows.
pub async fn run(registry: Arc<Registry>, store: Store, front: String, stop: CancellationToken) {
    if let Err(e) = store.clear_live_sessions(&front).await {
        warn!(front = %front, error = %e, "cannot clear this front's live sessions in the store");
    }
    let mut published: HashMap<u64, LiveSessionRow> = HashMap::new();
    // Kill requests already acted on (their rows go once the sessions have ended).
    let mut asked: HashSet<u64> = HashSet::new();
    let mut last_generation = None;
    let mut last_beat = Instant::now();
    let mut failing = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(POLL) => {}
        }
        let result = async {
            for (id, message) in store.pending_session_kills(&front).await? {
                if asked.insert(id) {
                    let sel = Selector {
                        id: Some(id),
                        ..Default::default()
                    };
                    let n = registry.kill(&sel, message.as_deref());
                    info!(front = %front, id, ended = n, "kill request from the store");
                }
            }
            let generation = registry.generation();
            let heartbeat = last_beat.elapsed() >= HEARTBEAT;
            if last_generation == Some(generation) && !heartbeat {
                return Ok::<_, tenants::StoreError>(());
            }
            let now = now_secs();
            let current: Vec<LiveSessionRow> = registry
                .list(&Selector::default())
                .iter()
                .map(|v| row(v, now))
                .collect();
            let (upsert, gone) = changes(&published, &current, heartbeat);
            if !upsert.is_empty() || !gone.is_empty() || heartbeat {
                store
                    .publish_live_sessions(&front, &upsert, &gone, heartbeat)
                    .await?;
            }
            for id in &gone {
                published.remove(id);
                asked.remove(id);
            }
            for r in upsert {
                published.insert(r.local_id, r);
            }
            last_generation = Some(generation);
            if heartbeat {
                last_beat = Instant::now();
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) if failing => {
                failing = false;
                info!(front = %front, "live sessions published to the store again");
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                warn!(front = %front, error = %e, "cannot publish live sessions to the store; `berth session list|kill` will not see this front until it can");
            }
            Err(_) => {}
        }
    }
    if let Err(e) = store.clear_live_sessions(&front).await {
        warn!(front = %front, error = %e, "cannot remove this front's live sessions from the store");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(id: u64, bytes: u64, active: i64) -> LiveSessionRow {
        LiveSessionRow {
            local_id: id,
            server: 7,
            account: "alice".into(),
            peer: "10.0.0.1:5000".into(),
            kind: "shell".into(),
            started: 100,
            last_active: active,
            bytes_in: bytes,
            bytes_out: bytes,
            recording: false,
        }
    }

    #[test]
    fn only_new_rows_between_heartbeats_and_moved_counters_on_them() {
        let published: HashMap<u64, LiveSessionRow> = [(1, r(1, 10, 100)), (2, r(2, 10, 100))]
            .into_iter()
            .collect();
        let current = [r(1, 99, 100), r(3, 0, 100)];
        // Between heartbeats: the new session only; the ended one goes.
        let (up, gone) = changes(&published, &current, false);
        assert_eq!(up.iter().map(|r| r.local_id).collect::<Vec<_>>(), [3]);
        assert_eq!(gone, [2]);
        // On a heartbeat also the session whose counters moved.
        let (up, _) = changes(&published, &current, true);
        assert_eq!(up.iter().map(|r| r.local_id).collect::<Vec<_>>(), [1, 3]);
        // Nothing moved (activity within the rounding of a second): nothing written.
        let (up, gone) = changes(&published, &[r(1, 10, 101), r(2, 10, 99)], true);
        assert!(up.is_empty() && gone.is_empty());
    }
}
