//! Per-client token buckets: a tenant flooding the resolver gets REFUSED instead of starving the
//! others. The bucket arithmetic is pure (time is passed in, so tests inject a clock); the keyed
//! table is bounded and evicts the least recently seen client, so a many-source flood can
//! neither grow it nor wipe the other clients' state.

use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use hashlink::LruCache;

/// One client's bucket.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn full(burst: u32, now: Instant) -> Self {
        Self {
            tokens: f64::from(burst),
            last: now,
        }
    }

    /// Refills at `rate` tokens/s up to `burst`, then takes one token if there is one.
    pub fn take(&mut self, rate: u32, burst: u32, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * f64::from(rate)).min(f64::from(burst));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Buckets keyed by client address, at most `max_clients` of them. When a new client arrives
/// at a full table, the client seen least recently loses its bucket (O(1), LRU order): an
/// active client keeps its state however many others come and go, and a flood of new sources
/// costs each of them one eviction, never a reset of everyone's bucket. (An evicted client
/// comes back with a full bucket; with netfilter's per-port source binding a tenant cannot
/// mint new source addresses to churn the table.)
#[derive(Debug)]
pub struct RateLimiter {
    rate: u32,
    burst: u32,
    buckets: Mutex<LruCache<IpAddr, Bucket>>,
    evictions: AtomicU64,
}

/// Default bound on tracked clients.
pub const MAX_CLIENTS: usize = 4096;

impl RateLimiter {
    /// `rate == 0` disables limiting.
    pub fn new(rate: u32, burst: u32) -> Self {
        Self::with_capacity(rate, burst, MAX_CLIENTS)
    }

    /// As [`Self::new`] with an explicit client table size (at least 1).
    pub fn with_capacity(rate: u32, burst: u32, max_clients: usize) -> Self {
        Self {
            rate,
            burst,
            buckets: Mutex::new(LruCache::new(max_clients.max(1))),
            evictions: AtomicU64::new(0),
        }
    }

    pub fn enabled(&self) -> bool {
        self.rate > 0
    }

    /// Clients dropped from a full table so far.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Clients currently tracked.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<IpAddr, Bucket>> {
        match self.buckets.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// True when the client may send this query.
    pub fn check(&self, ip: IpAddr, now: Instant) -> bool {
        if self.rate == 0 {
            return true;
        }
        let mut map = self.lock();
        // `get_mut` also makes the client the most recently seen.
        if let Some(b) = map.get_mut(&ip) {
            return b.take(self.rate, self.burst, now);
        }
        if map.len() >= map.capacity() {
            map.remove_lru();
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
        let mut b = Bucket::full(self.burst, now);
        let ok = b.take(self.rate, self.burst, now);
        map.insert(ip, b);
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_refill() {
        let t0 = Instant::now();
        let mut b = Bucket::full(3, t0);
        assert!(b.take(10, 3, t0));
        assert!(b.take(10, 3, t0));
        assert!(b.take(10, 3, t0));
        assert!(!b.take(10, 3, t0));
        assert!(b.take(10, 3, t0 + Duration::from_millis(100)));
        assert!(!b.take(10, 3, t0 + Duration::from_millis(100)));
        // never above burst
        let later = t0 + Duration::from_secs(100);
        for _ in 0..3 {
            assert!(b.take(10, 3, later));
        }
        assert!(!b.take(10, 3, later));
    }

    #[test]
    fn keyed_and_bounded_by_evicting_the_oldest() {
        let t0 = Instant::now();
        let rl = RateLimiter::with_capacity(1, 1, 3);
        let ip = |i: u32| IpAddr::from(i.to_be_bytes());
        let (a, b, c, d) = (ip(1), ip(2), ip(3), ip(4));
        assert!(rl.check(a, t0));
        assert!(!rl.check(a, t0), "a is limited");
        assert!(rl.check(b, t0));
        assert!(rl.check(c, t0));
        // a is seen again (and still limited): it becomes the most recent; b is now oldest.
        assert!(!rl.check(a, t0));
        assert!(rl.check(d, t0), "a new client gets a bucket");
        assert_eq!(rl.len(), 3);
        assert_eq!(rl.evictions(), 1);
        // The oldest (b) was dropped, not everyone: a is still limited at the same instant…
        assert!(!rl.check(a, t0), "a's bucket survived the eviction");
        // …and b comes back with a fresh bucket (evicting c, now the oldest).
        assert!(rl.check(b, t0));
        assert_eq!(rl.evictions(), 2);
        assert!(!rl.check(d, t0), "d kept its bucket");
        // Time passes on the injected clock: a refills at 1/s.
        assert!(rl.check(a, t0 + Duration::from_secs(1)));
        assert!(RateLimiter::new(0, 0).check(a, t0));
    }

    #[test]
    fn a_many_source_flood_never_resets_an_active_client() {
        let t0 = Instant::now();
        let rl = RateLimiter::with_capacity(1, 10, 1000);
        let abuser: IpAddr = "172.19.2.66".parse().unwrap();
        for _ in 0..10 {
            assert!(rl.check(abuser, t0));
        }
        assert!(!rl.check(abuser, t0));
        // 100 000 one-shot sources in between, the abuser keeps sending (and stays limited):
        // it is never the least recently seen, so its empty bucket is never dropped.
        for i in 0..100_000u32 {
            let now = t0 + Duration::from_micros(u64::from(i));
            rl.check(IpAddr::from((0x0b00_0000 + i).to_be_bytes()), now);
            if i % 500 == 0 {
                assert!(!rl.check(abuser, now), "abuser reset at source {i}");
            }
        }
        assert_eq!(rl.len(), 1000);
        assert!(rl.evictions() >= 99_000);
    }
}
