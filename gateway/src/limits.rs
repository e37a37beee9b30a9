//! Per-session limits: an idle timeout and a maximum duration, from the server's own settings
//! (`berth server set --idle-timeout/--max-duration`), else its owner account's (`berth account
//! set …`), else `[ssh] max_session_secs`; and the session caps ([`Caps`]) the live registry
//! enforces when a session starts.
//! Pure: [`SessionLimits::check`] takes the elapsed and idle times and says whether to warn the
//! tenant, end the session, or do nothing; the session task owns the clock. The connection-wide
//! `[ssh] idle_timeout_secs` stays where it is (the connection's watchdog).
//!
//! And the bandwidth limit (`berth server set --bandwidth`): the server's total on this gateway,
//! one token [`Bucket`] per direction shared by all its session and forward channels
//! ([`ServerBandwidth`], handed out by [`BandwidthPools`]). Bulk channels take turns (each waits
//! for the debt reserved before it), and a small chunk (a keystroke, its echo) is charged but
//! does not wait while the debt stays under a second's worth, so keystrokes are not queued behind
//! a bulk transfer; a flood of small chunks still waits once it has run the debt up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tenants::ServerId;

use crate::config::Config;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Idle,
    Duration,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Idle => "idle",
            Limit::Duration => "duration",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Nothing,
    /// Tell the tenant (a line on stderr) that the session will end soon.
    Warn(String),
    /// Tell the tenant and end the session.
    End(Limit, String),
}

/// How many session channels may run at once on this gateway: for the server, and for all
/// servers of its owner account (`None`: no cap beyond `[ssh] max_sessions_per_server`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caps {
    pub server: Option<usize>,
    pub account: Option<usize>,
}

impl Caps {
    pub fn new(ops: Option<&tenants::ServerOperations>) -> Self {
        let cap = |v: Option<u64>| {
            v.filter(|n| *n > 0)
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
        };
        Self {
            server: cap(ops.and_then(|o| o.limits.max_sessions)),
            account: cap(ops.and_then(|o| o.account_limits.max_sessions)),
        }
    }

    /// Whether one more session fits beside `on_server` and `of_account` running ones; if not,
    /// the line the tenant sees.
    pub fn admit(&self, on_server: usize, of_account: usize) -> Result<(), String> {
        if let Some(n) = self.server
            && on_server >= n
        {
            return Err(format!(
                "berth: this server already has {on_server} sessions open (limit {n}); close one and try again\r\n"
            ));
        }
        if let Some(n) = self.account
            && of_account >= n
        {
            return Err(format!(
                "berth: this account already has {of_account} sessions open over its servers (limit {n}); close one and try again\r\n"
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionLimits {
    pub idle: Option<Duration>,
    pub max_duration: Option<Duration>,
    warned_idle: bool,
    warned_duration: bool,
}

/// How long before a limit the tenant is warned: a quarter of it, at most a minute.
fn margin(limit: Duration) -> Duration {
    (limit / 4).min(Duration::from_secs(60))
}

fn secs(d: Duration) -> u64 {
    d.as_secs().max(1)
}

impl SessionLimits {
    /// The server's settings where it has them (`Some(0)`: no limit), else its account's, else
    /// the config's.
    pub fn new(cfg: &Config, ops: Option<&tenants::ServerOperations>) -> Self {
        let l = ops
            .map(|o| o.limits.or(o.account_limits))
            .unwrap_or_default();
        let pick = |own: Option<u64>, global: u64| {
            let v = own.unwrap_or(global);
            (v > 0).then(|| Duration::from_secs(v))
        };
        Self {
            idle: pick(l.idle_timeout_secs, 0),
            max_duration: pick(l.max_duration_secs, cfg.max_session_secs),
            ..Default::default()
        }
    }

    pub fn active(&self) -> bool {
        self.idle.is_some() || self.max_duration.is_some()
    }

    /// How often the session task should call [`SessionLimits::check`].
    pub fn tick(&self) -> Duration {
        let shortest = [self.idle, self.max_duration]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(Duration::from_secs(3600));
        (shortest / 8).clamp(Duration::from_millis(100), Duration::from_secs(5))
    }

    pub fn check(&mut self, elapsed: Duration, idle: Duration) -> Action {
        if let Some(max) = self.max_duration {
            if elapsed >= max {
                return Action::End(
                    Limit::Duration,
                    format!(
                        "\r\nberth: this session reached its maximum duration of {} s and is closed\r\n",
                        secs(max)
                    ),
                );
            }
            if !self.warned_duration && elapsed + margin(max) >= max {
                self.warned_duration = true;
                return Action::Warn(format!(
                    "\r\nberth: this session will be closed in {} s (maximum duration {} s)\r\n",
                    secs(max - elapsed),
                    secs(max)
                ));
            }
        }
        if let Some(limit) = self.idle {
            if idle >= limit {
                return Action::End(
                    Limit::Idle,
                    format!(
                        "\r\nberth: this session was idle for {} s and is closed\r\n",
                        secs(limit)
                    ),
                );
            }
            if idle + margin(limit) >= limit {
                if !self.warned_idle {
                    self.warned_idle = true;
                    return Action::Warn(format!(
                        "\r\nberth: this session will be closed in {} s unless there is activity (idle limit {} s)\r\n",
                        secs(limit - idle),
                        secs(limit)
                    ));
                }
            } else {
                // Activity resumed: warn again next time.
                self.warned_idle = false;
            }
        }
        Action::Nothing
    }
}

/// A token bucket of `rate` bytes per second holding at most [`Bucket::burst`] bytes. A chunk
/// passes at once while tokens remain and may drive the bucket into debt; the next chunk then
/// waits, in one sleep, until the debt is repaid. No copy, no timer while under the rate.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket for `rate` bytes per second (`None` for 0: no limit).
    pub fn new(rate: u64, now: Instant) -> Option<Self> {
        if rate == 0 {
            return None;
        }
        #[allow(clippy::cast_precision_loss)]
        let rate = rate as f64;
        let burst = Self::burst(rate);
        Some(Self {
            rate,
            burst,
            tokens: burst,
            last: now,
        })
    }

    /// A tenth of a second's worth, at least 32 KiB (one SSH packet must fit).
    fn burst(rate: f64) -> f64 {
        (rate / 10.0).max(32.0 * 1024.0)
    }

    /// Takes `n` bytes' tokens at `now`; how long to wait before passing them on.
    pub fn reserve(&mut self, n: usize, now: Instant) -> Duration {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        #[allow(clippy::cast_precision_loss)]
        let n = n as f64;
        let wait = if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        };
        self.tokens -= n;
        wait
    }
}

/// A chunk this small or smaller is interactive: it passes at once while the shared debt is
/// under [`Bucket::DEBT_CAP_SECS`] (it is still charged).
pub const INTERACTIVE_CHUNK: usize = 4096;

impl Bucket {
    /// How much debt (in seconds of the rate) small chunks may pass over without waiting.
    pub const DEBT_CAP_SECS: f64 = 1.0;

    /// Sets a new rate (an operator's `server set --bandwidth` reaching running channels when a
    /// new session of the server starts); the tokens held are kept within the new burst.
    pub fn set_rate(&mut self, rate: u64) {
        #[allow(clippy::cast_precision_loss)]
        let rate = (rate.max(1)) as f64;
        if (rate - self.rate).abs() > f64::EPSILON {
            self.rate = rate;
            self.burst = Self::burst(rate);
            self.tokens = self.tokens.min(self.burst);
        }
    }

    /// [`Bucket::reserve`] for a bucket shared by channels: a chunk of at most
    /// [`INTERACTIVE_CHUNK`] bytes is charged without waiting while the debt is under
    /// [`Bucket::DEBT_CAP_SECS`] of the rate.
    pub fn reserve_shared(&mut self, n: usize, now: Instant) -> Duration {
        let wait = self.reserve(n, now);
        if n <= INTERACTIVE_CHUNK && self.tokens > -self.rate * Self::DEBT_CAP_SECS {
            return Duration::ZERO;
        }
        wait
    }
}

/// One server's bandwidth limit on this gateway: a bucket per direction, shared by all its
/// channels (sessions and forwards).
#[derive(Debug)]
pub struct ServerBandwidth {
    /// Container → client.
    down: Mutex<Bucket>,
    /// Client → container.
    up: Mutex<Bucket>,
}

impl ServerBandwidth {
    fn new(rate: u64, now: Instant) -> Option<Self> {
        let b = Bucket::new(rate, now)?;
        Some(Self {
            down: Mutex::new(b.clone()),
            up: Mutex::new(b),
        })
    }

    fn set_rate(&self, rate: u64) {
        for b in [&self.down, &self.up] {
            b.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .set_rate(rate);
        }
    }
}

/// The [`ServerBandwidth`] of each limited server with channels open on this gateway (an entry
/// lives as long as a channel holds it).
#[derive(Debug, Default)]
pub struct BandwidthPools {
    map: Mutex<HashMap<ServerId, Weak<ServerBandwidth>>>,
}

impl BandwidthPools {
    /// The shared limit of `server` at `rate` bytes per second (`None` for 0: no limit, no
    /// bucket). A changed rate applies to the server's running channels too.
    pub fn get(&self, server: ServerId, rate: u64) -> Option<Arc<ServerBandwidth>> {
        if rate == 0 {
            return None;
        }
        let mut m = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(pool) = m.get(&server).and_then(Weak::upgrade) {
            pool.set_rate(rate);
            return Some(pool);
        }
        m.retain(|_, w| w.strong_count() > 0);
        let pool = Arc::new(ServerBandwidth::new(rate, Instant::now())?);
        m.insert(server, Arc::downgrade(&pool));
        Some(pool)
    }
}

/// One channel's side of its server's limit, in one direction (or none).
#[derive(Debug, Clone, Default)]
pub struct Throttle {
    pool: Option<Arc<ServerBandwidth>>,
    up: bool,
}

impl Throttle {
    /// Client → container.
    pub fn up(pool: Option<&Arc<ServerBandwidth>>) -> Self {
        Self {
            pool: pool.cloned(),
            up: true,
        }
    }

    /// Container → client.
    pub fn down(pool: Option<&Arc<ServerBandwidth>>) -> Self {
        Self {
            pool: pool.cloned(),
            up: false,
        }
    }

    /// Charges `n` bytes at `now`; how long to wait before passing them on.
    pub fn reserve(&self, n: usize, now: Instant) -> Duration {
        let Some(pool) = &self.pool else {
            return Duration::ZERO;
        };
        let bucket = if self.up { &pool.up } else { &pool.down };
        bucket
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .reserve_shared(n, now)
    }

    /// Waits until `n` bytes may pass (no timer when no wait is due).
    pub async fn take(&self, n: usize) {
        let wait = self.reserve(n, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// The server's bandwidth limit in bytes per second, 0 when none or the store cannot say.
pub fn bandwidth(ops: Option<&tenants::ServerOperations>) -> u64 {
    ops.and_then(|o| o.bandwidth_bps).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn server_settings_beat_the_config_and_zero_means_none() {
        let cfg = Config {
            max_session_secs: 600,
            ..Default::default()
        };
        assert_eq!(SessionLimits::new(&cfg, None).max_duration, Some(s(600)));
        let ops = tenants::ServerOperations {
            limits: tenants::SessionLimitSettings {
                max_duration_secs: Some(0),
                ..Default::default()
            },
            account_limits: tenants::SessionLimitSettings {
                idle_timeout_secs: Some(30),
                max_duration_secs: Some(90),
                max_sessions: Some(3),
            },
            ..Default::default()
        };
        let l = SessionLimits::new(&cfg, Some(&ops));
        assert_eq!((l.max_duration, l.idle), (None, Some(s(30))));
        assert!(!SessionLimits::new(&Config::default(), None).active());
        let caps = Caps::new(Some(&ops));
        assert_eq!((caps.server, caps.account), (None, Some(3)));
    }

    #[test]
    fn bucket_averages_to_its_rate_and_passes_bursts_at_once() {
        let t0 = Instant::now();
        assert!(Bucket::new(0, t0).is_none());
        let Some(mut b) = Bucket::new(1 << 20, t0) else {
            panic!("a rate gives a bucket");
        };
        // Within the burst: no wait.
        assert_eq!(b.reserve(32 * 1024, t0), Duration::ZERO);
        // Send 10 MiB in 32 KiB chunks, each after the wait the bucket asked for: the clock
        // must advance by about 10 s less the initial burst.
        let mut now = t0;
        for _ in 0..320 {
            now += b.reserve(32 * 1024, now);
        }
        let took = now.duration_since(t0).as_secs_f64();
        assert!(
            (9.5..10.1).contains(&took),
            "10 MiB at 1 MiB/s took {took} s"
        );
        // After a long pause the bucket holds only its burst (100 KiB), not the pause's worth:
        // the chunk that empties it passes, the next one waits.
        now += Duration::from_secs(60);
        assert_eq!(b.reserve(64 * 1024, now), Duration::ZERO);
        assert_eq!(b.reserve(64 * 1024, now), Duration::ZERO);
        assert!(b.reserve(32 * 1024, now) > Duration::ZERO);
    }

    /// Channels sending `chunk`-byte chunks through one shared bucket, each right after its own
    /// previous wait; when the last of `total` bytes per channel went, and each channel's share.
    fn share(b: &mut Bucket, t0: Instant, chunks: &[usize], total: usize) -> (f64, Vec<f64>) {
        let mut ready = vec![t0; chunks.len()];
        let mut sent = vec![0usize; chunks.len()];
        let mut done = vec![0.0f64; chunks.len()];
        while let Some(i) = (0..chunks.len())
            .filter(|i| sent[*i] < total)
            .min_by_key(|i| ready[*i])
        {
            let now = ready[i];
            ready[i] = now + b.reserve_shared(chunks[i], now);
            sent[i] += chunks[i];
            done[i] = ready[i].duration_since(t0).as_secs_f64();
        }
        let end = done.iter().copied().fold(0.0, f64::max);
        (end, done)
    }

    #[test]
    fn a_shared_bucket_holds_the_total_and_bulk_channels_take_turns() {
        let t0 = Instant::now();
        let Some(mut b) = Bucket::new(1 << 20, t0) else {
            panic!("a rate gives a bucket");
        };
        // Two bulk channels, 5 MiB each at 1 MiB/s in total: about 10 s, and they finish
        // together (neither starves the other).
        let (end, done) = share(&mut b, t0, &[32 * 1024, 32 * 1024], 5 << 20);
        assert!((9.5..10.2).contains(&end), "10 MiB in total took {end} s");
        assert!((done[0] - done[1]).abs() < 0.2, "{done:?}");
        // In the bulk's debt, a keystroke passes at once and a bulk chunk does not.
        assert!(b.tokens < 0.0);
        assert_eq!(
            b.reserve_shared(64, t0 + Duration::from_secs_f64(end)),
            Duration::ZERO
        );
        assert!(b.reserve_shared(32 * 1024, t0 + Duration::from_secs_f64(end)) > Duration::ZERO);
    }

    #[test]
    fn a_flood_of_small_chunks_still_keeps_to_the_rate() {
        let t0 = Instant::now();
        let Some(mut b) = Bucket::new(1 << 20, t0) else {
            panic!("a rate gives a bucket");
        };
        // 10 MiB in 4 KiB chunks: free only until the debt reaches a second's worth.
        let (end, _) = share(&mut b, t0, &[INTERACTIVE_CHUNK], 10 << 20);
        assert!(
            (8.8..10.2).contains(&end),
            "10 MiB of small chunks took {end} s"
        );
    }

    #[test]
    fn pools_share_per_server_follow_the_rate_and_go_with_their_channels() {
        let pools = BandwidthPools::default();
        let (s1, s2) = (ServerId::new(1), ServerId::new(2));
        let (Some(s1), Some(s2)) = (s1, s2) else {
            panic!("valid ids");
        };
        assert!(pools.get(s1, 0).is_none());
        let (Some(a), Some(b), Some(c)) = (
            pools.get(s1, 1000),
            pools.get(s1, 2000),
            pools.get(s2, 1000),
        ) else {
            panic!("limited servers get a pool");
        };
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        let rate = |p: &ServerBandwidth| p.down.lock().map(|b| b.rate).unwrap_or(0.0);
        assert!((rate(&a) - 2000.0).abs() < 1e-9);
        drop((a, b));
        let Some(d) = pools.get(s1, 500) else {
            panic!("a new pool");
        };
        assert!((rate(&d) - 500.0).abs() < 1e-9);
    }

    #[test]
    fn caps_refuse_at_the_limit_naming_it() {
        let caps = Caps {
            server: Some(2),
            account: Some(5),
        };
        assert!(caps.admit(1, 4).is_ok());
        assert!(
            caps.admit(2, 0)
                .is_err_and(|m| m.contains("this server") && m.contains("limit 2"))
        );
        assert!(
            caps.admit(0, 5)
                .is_err_and(|m| m.contains("this account") && m.contains("limit 5"))
        );
        assert!(Caps::default().admit(1000, 1000).is_ok());
    }

    #[test]
    fn duration_warns_once_then_ends() {
        let mut l = SessionLimits {
            max_duration: Some(s(400)),
            ..Default::default()
        };
        assert_eq!(l.check(s(100), s(0)), Action::Nothing);
        assert!(matches!(l.check(s(341), s(0)), Action::Warn(m) if m.contains("closed in 59 s")));
        assert_eq!(l.check(s(350), s(0)), Action::Nothing);
        assert!(
            matches!(l.check(s(400), s(0)), Action::End(Limit::Duration, m) if m.contains("400 s"))
        );
    }

    #[test]
    fn idle_warns_rearms_on_activity_and_ends() {
        let mut l = SessionLimits {
            idle: Some(s(8)),
            ..Default::default()
        };
        assert_eq!(l.check(s(1), s(5)), Action::Nothing);
        assert!(matches!(l.check(s(2), s(6)), Action::Warn(_)));
        assert_eq!(l.check(s(3), s(7)), Action::Nothing);
        assert_eq!(l.check(s(4), s(0)), Action::Nothing);
        assert!(matches!(l.check(s(10), s(6)), Action::Warn(_)));
        assert!(matches!(l.check(s(12), s(8)), Action::End(Limit::Idle, _)));
    }
}
