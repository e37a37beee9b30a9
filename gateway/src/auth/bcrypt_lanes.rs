//! bcrypt off the async workers, in lanes: verifications run on the blocking pool behind a
//! global semaphore; an address waits for its own previous attempt before it may queue for a
//! global slot (a storm from one address holds at most one slot), at most `bcrypt_queue`
//! attempts wait in all (beyond that they are refused at once), and an owner's usual address
//! has a lane of its own that never waits behind a storm. Unknown servers verify against a
//! dummy hash of the configured cost, so timing does not tell them apart.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Instant;

use tokio::sync::Semaphore;

use super::{Authenticator, limits};
use crate::metrics;

impl Authenticator {
    /// Warns once when real hashes and the dummy differ in cost (timing would tell them apart).
    pub(super) fn check_cost(&self, hash: &str) {
        let cost = hash.split('$').nth(2).and_then(|c| c.parse::<u32>().ok());
        if let Some(cost) = cost
            && cost != self.inner.cfg.bcrypt_dummy_cost
            && !self
                .inner
                .cost_warned
                .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(
                target: "berth::auth",
                hash_cost = cost,
                dummy_cost = self.inner.cfg.bcrypt_dummy_cost,
                "password hashes and ssh.auth.bcrypt_dummy_cost differ: login timing can tell \
                 existing servers from unknown ones; set bcrypt_dummy_cost to the hash cost"
            );
        }
    }

    pub(super) async fn dummy_hash(&self) -> String {
        let cost = self.inner.cfg.bcrypt_dummy_cost;
        self.inner
            .dummy_hash
            .get_or_init(|| async move {
                let secret: [u8; 32] = rand::random();
                let made = tokio::task::spawn_blocking(move || bcrypt::hash(secret, cost)).await;
                match made {
                    Ok(Ok(h)) => h,
                    // Unreachable in practice (cost is validated); a fixed hash of the default
                    // cost keeps timing close rather than failing logins.
                    _ => "$2b$12$C6UzMDM.H6dfI/f/IKxGhuR4CiOI1O0xzZ8L7V6Bf2WWe5ycQd0uK".into(),
                }
            })
            .await
            .clone()
    }

    /// One bcrypt verification on the blocking pool. Usual addresses (a recent success for
    /// this server) use their own slot and skip the queue; everyone else queues per address,
    /// then globally, and is refused at once when `bcrypt_queue` attempts already wait.
    pub(super) async fn bcrypt_verify(
        &self,
        peer: IpAddr,
        secret: &[u8],
        hash: String,
        trusted: bool,
    ) -> Result<bool, Busy> {
        let secret = secret.to_vec();
        let run = || async move {
            self.inner
                .bcrypt_runs
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let started = Instant::now();
            let verified = tokio::task::spawn_blocking(move || bcrypt::verify(secret, &hash))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(false);
            metrics::BCRYPT_SECONDS.observe(started.elapsed());
            verified
        };
        if trusted {
            let Ok(_slot) = self.inner.trusted_slot.acquire().await else {
                return Err(Busy);
            };
            return Ok(run().await);
        }
        let Some(waiting) = Waiting::enter(&self.inner.bcrypt_queued, self.inner.cfg.bcrypt_queue)
        else {
            return Err(Busy);
        };
        // Queued per source prefix (see `limits::source_key`), like every other per-source limit.
        let peer = limits::source_key(
            peer,
            self.inner.cfg.source_prefix_v4,
            self.inner.cfg.source_prefix_v6,
        );
        let queue = {
            let mut map = self
                .inner
                .bcrypt_per_ip
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            map.entry(peer)
                .or_insert_with(|| Arc::new(Semaphore::new(1)))
                .clone()
        };
        let result = async {
            let _mine = queue.acquire().await.ok()?;
            let _slot = self.inner.bcrypt_slots.acquire().await.ok()?;
            drop(waiting);
            Some(run().await)
        }
        .await;
        {
            let mut map = self
                .inner
                .bcrypt_per_ip
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Ours plus the map's: nobody else is queued, forget the address.
            if Arc::strong_count(&queue) == 2 {
                map.remove(&peer);
            }
        }
        result.ok_or(Busy)
    }
}

/// The bcrypt queue is full (or closed): refuse without verifying.
#[derive(Debug, Clone, Copy)]
pub(super) struct Busy;

/// One attempt waiting for a bcrypt slot (counted in `bcrypt_queued` and the metrics gauge).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn enter(count: &'a AtomicUsize, max: usize) -> Option<Self> {
        use std::sync::atomic::Ordering;
        let entered = count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok();
        entered.then(|| {
            metrics::BCRYPT_WAITING.inc();
            Self(count)
        })
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        metrics::BCRYPT_WAITING.dec();
    }
}
