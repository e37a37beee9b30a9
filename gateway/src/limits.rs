//! Per-session limits: an idle timeout and a maximum duration, from the server's own settings
//! (`berth server set --idle-timeout/--max-duration`), else its owner account's (`berth account
//! set …`), else `[ssh] max_session_secs`; and the session caps ([`Caps`]) the live registry
//! enforces when a session starts.
//! Pure: [`SessionLimits::check`] takes the elapsed and idle times and says whether to warn the
//! tenant, end the session, or do nothing; the session task owns the clock. The connection-wide
//! `[ssh] idle_timeout_secs` stays where it is (the connection's watchdog).
//!
//! And [`Bucket`], the bandwidth limit (`berth server set --bandwidth`): one token bucket per
//! channel and direction, so a bulk transfer never delays another channel's keystrokes.

use std::time::{Duration, Instant};

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

    /// Waits until `n` bytes may pass.
    pub async fn take(&mut self, n: usize) {
        let wait = self.reserve(n, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// [`Bucket::take`] when there is a bucket.
pub async fn throttle(bucket: &mut Option<Bucket>, n: usize) {
    if let Some(b) = bucket {
        b.take(n).await;
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
