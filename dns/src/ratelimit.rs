//! Per-client token buckets: a tenant flooding the resolver gets REFUSED instead of starving the
//! others. The bucket arithmetic is pure (time is passed in); the keyed map prunes itself so a
//! spoofed-source flood cannot grow it without bound.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

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

    fn is_full(&self, rate: u32, burst: u32, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + dt * f64::from(rate) >= f64::from(burst)
    }
}

/// Buckets keyed by client address.
#[derive(Debug)]
pub struct RateLimiter {
    rate: u32,
    burst: u32,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

/// Above this many tracked clients, full (idle) buckets are dropped.
const PRUNE_AT: usize = 4096;

impl RateLimiter {
    /// `rate == 0` disables limiting.
    pub fn new(rate: u32, burst: u32) -> Self {
        Self {
            rate,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.rate > 0
    }

    /// True when the client may send this query.
    pub fn check(&self, ip: IpAddr, now: Instant) -> bool {
        if self.rate == 0 {
            return true;
        }
        let mut map = match self.buckets.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if map.len() >= PRUNE_AT && !map.contains_key(&ip) {
            let (rate, burst) = (self.rate, self.burst);
            map.retain(|_, b| !b.is_full(rate, burst, now));
            if map.len() >= PRUNE_AT {
                // Still full of active clients: a spoofed-source flood. Start over rather than grow.
                map.clear();
            }
        }
        map.entry(ip)
            .or_insert_with(|| Bucket::full(self.burst, now))
            .take(self.rate, self.burst, now)
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
    fn keyed_and_pruned() {
        let t0 = Instant::now();
        let rl = RateLimiter::new(1, 1);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(rl.check(a, t0));
        assert!(!rl.check(a, t0));
        assert!(rl.check(b, t0));
        for i in 0..5000u32 {
            rl.check(IpAddr::from(i.to_be_bytes()), t0 + Duration::from_secs(10));
        }
        assert!(rl.buckets.lock().unwrap().len() <= PRUNE_AT + 1);
        assert!(RateLimiter::new(0, 0).check(a, t0));
    }
}
