//! Brute-force defence as a pure state machine: admission caps, governor budgets, escalating bans
//! and "usual address" trust, all driven by an injected clock.
//!
//! No IO, no async, no bcrypt: `Authenticator` asks this module *before* spending a bcrypt and
//! tells it the outcome afterwards. Time comes from a governor [`Clock`] whose instants are
//! [`Nanos`], so tests drive everything with `FakeRelativeClock` and are exact.
//!
//! Policy in one paragraph: a connection is admitted unless its address is banned (and has no
//! recent successful login anywhere), the global or per-address unauthenticated cap is full, or
//! the address opens connections too fast. A connection that authenticates gives its connection
//! cell back (like OpenSSH's PerSourcePenalties, only what attackers do costs: abandoned,
//! failed and stalled connections), so an owner's deploy loop never runs out. When strangers fill
//! the unauthenticated cap, a reserve of a quarter of it beyond the cap is kept for owners: a source
//! that logged in to a server within `trusted_for` may take a reserve slot charged to that server,
//! at most [`RESERVE_PER_SERVER`] at once per server, and the connection's first authentication
//! request must name a server its source is trusted for (else it is dropped), so one account
//! logging in from many sources holds at most that many reserve slots and cannot starve other
//! servers' owners. A password (or keyboard-interactive) attempt costs
//! one cell of the address's budget and one of the server's budget — unless the address logged
//! in to that server successfully within `trusted_for`, in which case it costs one cell of a
//! budget private to that (server, address) pair and ignores bans and the server budget, so an
//! attacker can slow guessing against a server but cannot lock its owner out of their usual
//! address. Repeated password failures from an address start a ban that doubles each time, up to
//! `ban_max`, and is forgotten after `ban_forget` quiet time. Public-key attempts are cheap (no
//! bcrypt) and are only refused for banned addresses; their failures never count towards a ban
//! (agents offer several keys routinely).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};
use tenants::ServerId;

use super::config::AuthConfig;

/// Reserve slots (beyond the unauthenticated cap) one server's trusted sources may hold at once.
pub const RESERVE_PER_SERVER: usize = 2;

/// Servers remembered per source for the reserve (the most recent logins win).
const TRUSTED_SERVERS_PER_SOURCE: usize = 16;

/// Which pool an admitted connection's unauthenticated slot came from; given back to
/// [`Limits::release`] / [`Limits::authenticated`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    /// The unauthenticated cap, open to everyone.
    Regular,
    /// The owners' reserve beyond the cap, charged to a server the source logged in to recently.
    Reserve(ServerId),
}

/// A reserve connection's first authentication request named no server its source is trusted
/// for, or that server's reserve share is taken: the connection must be dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReserveRefused;

/// How a credential was presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Password,
    PublicKey,
    KeyboardInteractive,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Password => "password",
            Method::PublicKey => "publickey",
            Method::KeyboardInteractive => "keyboard-interactive",
        }
    }

    /// Methods that cost a bcrypt and can be guessed.
    pub fn is_secret(self) -> bool {
        matches!(self, Method::Password | Method::KeyboardInteractive)
    }
}

/// Why a connection was refused at accept time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmitDenied {
    Banned,
    ConnectionRate,
    UnauthenticatedCap,
    UnauthenticatedCapPerIp,
}

impl AdmitDenied {
    pub fn as_str(self) -> &'static str {
        match self {
            AdmitDenied::Banned => "banned",
            AdmitDenied::ConnectionRate => "connection_rate",
            AdmitDenied::UnauthenticatedCap => "unauthenticated_cap",
            AdmitDenied::UnauthenticatedCapPerIp => "unauthenticated_cap_per_ip",
        }
    }
}

/// Why an authentication attempt was refused before any credential check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptDenied {
    Banned,
    IpBudget,
    ServerBudget,
    TrustedBudget,
    /// Too many attempts already wait for bcrypt (decided by the caller, not by `Limits`).
    BcryptQueue,
}

impl AttemptDenied {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptDenied::Banned => "banned",
            AttemptDenied::IpBudget => "ip_budget",
            AttemptDenied::ServerBudget => "server_budget",
            AttemptDenied::TrustedBudget => "trusted_budget",
            AttemptDenied::BcryptQueue => "bcrypt_queue",
        }
    }
}

/// What recording an outcome changed (for audit and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Nothing,
    /// This failure started a ban of that length.
    Banned(Duration),
}

/// Durations and budgets, resolved from [`AuthConfig`] once.
#[derive(Debug, Clone)]
pub struct Params {
    pub max_unauthenticated: usize,
    pub max_unauthenticated_per_ip: usize,
    pub connections: Bucket,
    pub ip_attempts: Quota,
    pub server_attempts: Quota,
    pub trusted_attempts: Quota,
    pub ban_after_failures: u32,
    pub ban_window: Duration,
    pub ban_base: Duration,
    pub ban_max: Duration,
    pub ban_forget: Duration,
    pub trusted_for: Duration,
    pub source_prefix_v4: u8,
    pub source_prefix_v6: u8,
}

/// The key per-source limits count under: `ip` masked to its source prefix (/32 and /64 by
/// default), with IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) treated as the IPv4 address.
pub fn source_key(ip: IpAddr, v4_prefix: u8, v6_prefix: u8) -> IpAddr {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let keep = u32::from(v4_prefix.min(32));
            let mask = if keep == 0 {
                0
            } else {
                u32::MAX << (32 - keep)
            };
            IpAddr::V4((bits & mask).into())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let keep = u32::from(v6_prefix.min(128));
            let mask = if keep == 0 {
                0
            } else {
                u128::MAX << (128 - keep)
            };
            IpAddr::V6((bits & mask).into())
        }
    }
}

fn quota(burst: u32, interval_ms: u64) -> Quota {
    // Zero values are refused by `AuthConfig::validate`; clamp anyway so a bad value cannot panic.
    let period = Duration::from_millis(interval_ms.max(1));
    let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst)
}

impl Params {
    pub fn from_config(cfg: &AuthConfig) -> Self {
        Self {
            max_unauthenticated: cfg.max_unauthenticated,
            max_unauthenticated_per_ip: cfg.max_unauthenticated_per_ip,
            connections: Bucket {
                burst: cfg.connections_per_ip_burst.max(1),
                interval: Duration::from_millis(cfg.connections_per_ip_interval_ms.max(1)),
            },
            ip_attempts: quota(cfg.ip_attempts_burst, cfg.ip_attempts_interval_ms),
            server_attempts: quota(cfg.server_attempts_burst, cfg.server_attempts_interval_ms),
            trusted_attempts: quota(cfg.trusted_attempts_burst, cfg.trusted_attempts_interval_ms),
            ban_after_failures: cfg.ban_after_failures.max(1),
            ban_window: Duration::from_secs(cfg.ban_window_secs),
            ban_base: Duration::from_secs(cfg.ban_base_secs),
            ban_max: Duration::from_secs(cfg.ban_max_secs.max(cfg.ban_base_secs)),
            ban_forget: Duration::from_secs(cfg.ban_forget_secs),
            trusted_for: Duration::from_secs(cfg.trusted_for_secs),
            source_prefix_v4: cfg.source_prefix_v4,
            source_prefix_v6: cfg.source_prefix_v6,
        }
    }
}

/// A refundable token bucket (GCRA): `burst` cells, one back per `interval`.
///
/// governor's limiters cannot give a cell back, and the connection budget must: a connection
/// that authenticates returns what it took.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    pub burst: u32,
    pub interval: Duration,
}

/// Per-source state of a [`Bucket`]: the theoretical arrival time of the next cell. A source
/// whose `tat` lies in the past has its whole burst and needs no entry.
#[derive(Debug, Default)]
struct Cells {
    tat: HashMap<IpAddr, Nanos>,
}

impl Cells {
    /// Takes one cell for `key` if the bucket has one.
    fn take(&mut self, b: Bucket, key: IpAddr, now: Nanos) -> bool {
        let interval = Nanos::from(b.interval);
        let tat = self.tat.get(&key).copied().unwrap_or(now).max(now);
        let next = tat + interval;
        // Allowed while the debt after this cell is at most `burst` intervals.
        let limit = Nanos::from(b.interval.saturating_mul(b.burst));
        if next.duration_since(now) > limit {
            return false;
        }
        self.tat.insert(key, next);
        true
    }

    /// Gives one cell back to `key` (never more than its full burst).
    fn refund(&mut self, b: Bucket, key: IpAddr, now: Nanos) {
        let interval = Nanos::from(b.interval);
        if let Some(tat) = self.tat.get_mut(&key) {
            let back = Nanos::from(tat.as_u64().saturating_sub(interval.as_u64()));
            if back <= now {
                self.tat.remove(&key);
            } else {
                *tat = back;
            }
        }
    }

    fn retain(&mut self, now: Nanos) {
        self.tat.retain(|_, t| *t > now);
        self.tat.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.tat.len()
    }
}

type Keyed<K, C> = RateLimiter<K, HashMapStateStore<K>, C, NoOpMiddleware<Nanos>>;

/// Per-address failure history.
#[derive(Debug, Default)]
struct Strikes {
    /// Recent password failures, oldest first, at most `ban_after_failures` of them.
    failures: VecDeque<Nanos>,
    /// Bans so far (since the history was last forgotten).
    bans: u32,
    banned_until: Option<Nanos>,
    last_ban: Option<Nanos>,
}

/// A monotonic clock for production: nanoseconds since the limiter was created.
#[derive(Debug, Clone)]
pub struct MonotonicClock {
    start: std::time::Instant,
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self {
            start: std::time::Instant::now(),
        }
    }
}

impl Clock for MonotonicClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(self.start.elapsed())
    }
}

/// The whole brute-force state of one gateway process.
pub struct Limits<C: Clock<Instant = Nanos> + Clone> {
    p: Params,
    clock: C,
    connections: Cells,
    ip_attempts: Keyed<IpAddr, C>,
    server_attempts: Keyed<ServerId, C>,
    trusted_attempts: Keyed<(ServerId, IpAddr), C>,
    strikes: HashMap<IpAddr, Strikes>,
    /// Last successful login per (server, address).
    trusted: HashMap<(ServerId, IpAddr), Nanos>,
    /// Last successful login per address, any server (lets the owner's address past a ban at
    /// accept time; the per-attempt checks still apply to other servers).
    trusted_ips: HashMap<IpAddr, Nanos>,
    /// Servers each address logged in to, oldest first (at most `TRUSTED_SERVERS_PER_SOURCE`):
    /// the candidates a reserve slot can be charged to.
    trusted_servers: HashMap<IpAddr, Vec<ServerId>>,
    unauthenticated: usize,
    unauthenticated_per_ip: HashMap<IpAddr, usize>,
    /// Reserve slots held, in total and per server they are charged to.
    reserve: usize,
    reserve_per_server: HashMap<ServerId, usize>,
}

impl<C: Clock<Instant = Nanos> + Clone> Limits<C> {
    pub fn new(p: Params, clock: C) -> Self {
        Self {
            connections: Cells::default(),
            ip_attempts: RateLimiter::hashmap_with_clock(p.ip_attempts, clock.clone()),
            server_attempts: RateLimiter::hashmap_with_clock(p.server_attempts, clock.clone()),
            trusted_attempts: RateLimiter::hashmap_with_clock(p.trusted_attempts, clock.clone()),
            p,
            clock,
            strikes: HashMap::new(),
            trusted: HashMap::new(),
            trusted_ips: HashMap::new(),
            trusted_servers: HashMap::new(),
            unauthenticated: 0,
            unauthenticated_per_ip: HashMap::new(),
            reserve: 0,
            reserve_per_server: HashMap::new(),
        }
    }

    fn now(&self) -> Nanos {
        self.clock.now()
    }

    /// Every public entry point keys its state by this, never by the raw address.
    fn src(&self, ip: IpAddr) -> IpAddr {
        source_key(ip, self.p.source_prefix_v4, self.p.source_prefix_v6)
    }

    fn within(&self, then: Nanos, span: Duration) -> bool {
        self.now().duration_since(then) < Nanos::from(span)
    }

    /// True while `ip` serves a ban.
    pub fn is_banned(&self, ip: IpAddr) -> bool {
        let ip = self.src(ip);
        let now = self.now();
        self.strikes
            .get(&ip)
            .and_then(|s| s.banned_until)
            .is_some_and(|until| now < until)
    }

    fn trusted_ip(&self, ip: IpAddr) -> bool {
        let ip = self.src(ip);
        self.trusted_ips
            .get(&ip)
            .is_some_and(|t| self.within(*t, self.p.trusted_for))
    }

    /// True when `ip` logged in to `server` successfully within `trusted_for`.
    pub fn is_trusted(&self, server: ServerId, ip: IpAddr) -> bool {
        let ip = self.src(ip);
        self.trusted
            .get(&(server, ip))
            .is_some_and(|t| self.within(*t, self.p.trusted_for))
    }

    /// The reserve's size: a quarter of the unauthenticated cap (at least one slot).
    fn reserve_cap(&self) -> usize {
        (self.p.max_unauthenticated / 4).max(1)
    }

    /// A server `ip` is trusted for whose reserve share has room, most recent login first.
    fn reserve_server(&self, ip: IpAddr) -> Option<ServerId> {
        self.trusted_servers
            .get(&ip)?
            .iter()
            .rev()
            .copied()
            .find(|s| self.is_trusted(*s, ip) && self.reserve_room(*s))
    }

    fn reserve_room(&self, server: ServerId) -> bool {
        self.reserve_per_server.get(&server).copied().unwrap_or(0) < RESERVE_PER_SERVER
    }

    /// Accept-time check; on `Ok` the connection holds one unauthenticated slot (from the pool
    /// named in the answer) until [`Limits::release`] or [`Limits::authenticated`].
    pub fn admit(&mut self, ip: IpAddr) -> Result<Admitted, AdmitDenied> {
        let ip = self.src(ip);
        let trusted = self.trusted_ip(ip);
        if self.is_banned(ip) && !trusted {
            return Err(AdmitDenied::Banned);
        }
        // Stalled handshakes from many addresses fill the cap, not the owners' way in: beyond
        // it, a source with a recent successful login takes a reserve slot charged to one of
        // its servers, each server holding at most `RESERVE_PER_SERVER` of them.
        let pool = if self.unauthenticated.saturating_sub(self.reserve) < self.p.max_unauthenticated
        {
            Admitted::Regular
        } else if self.reserve >= self.reserve_cap() {
            return Err(AdmitDenied::UnauthenticatedCap);
        } else {
            match self.reserve_server(ip) {
                Some(s) => Admitted::Reserve(s),
                None => return Err(AdmitDenied::UnauthenticatedCap),
            }
        };
        let per_ip = self.unauthenticated_per_ip.get(&ip).copied().unwrap_or(0);
        if per_ip >= self.p.max_unauthenticated_per_ip {
            return Err(AdmitDenied::UnauthenticatedCapPerIp);
        }
        let now = self.now();
        if !self.connections.take(self.p.connections, ip, now) {
            return Err(AdmitDenied::ConnectionRate);
        }
        self.unauthenticated += 1;
        *self.unauthenticated_per_ip.entry(ip).or_insert(0) += 1;
        if let Admitted::Reserve(s) = pool {
            self.reserve += 1;
            *self.reserve_per_server.entry(s).or_insert(0) += 1;
        }
        Ok(pool)
    }

    /// A connection's authentication request for `named` (`None`: not a server name). A
    /// regular slot passes. A reserve slot passes only when its source is trusted for `named`:
    /// the slot is then charged to `named` (moved there if it has room). On `Err` the caller
    /// drops the connection and releases the slot it still holds (the one passed in).
    pub fn claim(
        &mut self,
        ip: IpAddr,
        slot: Admitted,
        named: Option<ServerId>,
    ) -> Result<Admitted, ReserveRefused> {
        let Admitted::Reserve(charged) = slot else {
            return Ok(slot);
        };
        let Some(named) = named.filter(|s| self.is_trusted(*s, ip)) else {
            return Err(ReserveRefused);
        };
        if named == charged {
            return Ok(slot);
        }
        if !self.reserve_room(named) {
            return Err(ReserveRefused);
        }
        self.uncharge(charged);
        *self.reserve_per_server.entry(named).or_insert(0) += 1;
        Ok(Admitted::Reserve(named))
    }

    fn uncharge(&mut self, server: ServerId) {
        if let Some(n) = self.reserve_per_server.get_mut(&server) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.reserve_per_server.remove(&server);
            }
        }
    }

    /// Gives back the unauthenticated slot taken by a successful [`Limits::admit`] (as last
    /// answered by [`Limits::claim`]).
    pub fn release(&mut self, ip: IpAddr, slot: Admitted) {
        let ip = self.src(ip);
        self.unauthenticated = self.unauthenticated.saturating_sub(1);
        if let Some(n) = self.unauthenticated_per_ip.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.unauthenticated_per_ip.remove(&ip);
            }
        }
        if let Admitted::Reserve(s) = slot {
            self.reserve = self.reserve.saturating_sub(1);
            self.uncharge(s);
        }
    }

    /// The connection from `ip` authenticated: its unauthenticated slot is freed and the
    /// connection cell it took at [`Limits::admit`] is given back.
    pub fn authenticated(&mut self, ip: IpAddr, slot: Admitted) {
        self.release(ip, slot);
        let key = self.src(ip);
        let now = self.now();
        self.connections.refund(self.p.connections, key, now);
    }

    /// Reserve slots held right now, in total and charged to `server`.
    pub fn reserve_held(&self, server: ServerId) -> (usize, usize) {
        (
            self.reserve,
            self.reserve_per_server.get(&server).copied().unwrap_or(0),
        )
    }

    /// Unauthenticated connections right now (gateway-wide).
    pub fn unauthenticated(&self) -> usize {
        self.unauthenticated
    }

    /// Whether a probe (unsigned public key offer) may be answered positively.
    pub fn probe_allowed(&self, ip: IpAddr, server: Option<ServerId>) -> bool {
        server.is_some_and(|s| self.is_trusted(s, ip)) || !self.is_banned(ip)
    }

    /// Checks (and charges) the budgets for one attempt. `server` is `None` when the user name
    /// is not a server name at all.
    pub fn check_attempt(
        &mut self,
        ip: IpAddr,
        server: Option<ServerId>,
        method: Method,
    ) -> Result<(), AttemptDenied> {
        let ip = self.src(ip);
        if let Some(s) = server.filter(|s| self.is_trusted(*s, ip)) {
            if method.is_secret() && self.trusted_attempts.check_key(&(s, ip)).is_err() {
                return Err(AttemptDenied::TrustedBudget);
            }
            return Ok(());
        }
        if self.is_banned(ip) {
            return Err(AttemptDenied::Banned);
        }
        if !method.is_secret() {
            return Ok(());
        }
        if self.ip_attempts.check_key(&ip).is_err() {
            return Err(AttemptDenied::IpBudget);
        }
        if let Some(s) = server
            && self.server_attempts.check_key(&s).is_err()
        {
            return Err(AttemptDenied::ServerBudget);
        }
        Ok(())
    }

    /// Records the outcome of an attempt that passed [`Limits::check_attempt`].
    pub fn record(
        &mut self,
        ip: IpAddr,
        server: Option<ServerId>,
        method: Method,
        success: bool,
    ) -> Recorded {
        let ip = self.src(ip);
        let now = self.now();
        if success {
            if let Some(s) = server {
                self.trusted.insert((s, ip), now);
                self.trusted_ips.insert(ip, now);
                let servers = self.trusted_servers.entry(ip).or_default();
                servers.retain(|x| *x != s);
                if servers.len() >= TRUSTED_SERVERS_PER_SOURCE {
                    servers.remove(0);
                }
                servers.push(s);
            }
            return Recorded::Nothing;
        }
        if !method.is_secret() {
            return Recorded::Nothing;
        }
        let p = &self.p;
        let s = self.strikes.entry(ip).or_default();
        if s.last_ban
            .is_some_and(|t| now.duration_since(t) >= Nanos::from(p.ban_forget))
        {
            s.bans = 0;
            s.last_ban = None;
        }
        let window = Nanos::from(p.ban_window);
        while s
            .failures
            .front()
            .is_some_and(|t| now.duration_since(*t) >= window)
        {
            s.failures.pop_front();
        }
        s.failures.push_back(now);
        if s.failures.len() < p.ban_after_failures as usize {
            return Recorded::Nothing;
        }
        s.failures.clear();
        s.bans = s.bans.saturating_add(1);
        let length = ban_length(p.ban_base, p.ban_max, s.bans);
        s.banned_until = Some(now + Nanos::from(length));
        s.last_ban = Some(now);
        Recorded::Banned(length)
    }

    /// Drops state nobody needs any more: idle governor keys, expired bans and trust. Call it
    /// periodically, or keyed state grows with every address ever seen.
    pub fn retain_recent(&mut self) {
        let now = self.now();
        self.connections.retain(now);
        self.ip_attempts.retain_recent();
        self.ip_attempts.shrink_to_fit();
        self.server_attempts.retain_recent();
        self.server_attempts.shrink_to_fit();
        self.trusted_attempts.retain_recent();
        self.trusted_attempts.shrink_to_fit();

        let p = &self.p;
        let window = Nanos::from(p.ban_window);
        let forget = Nanos::from(p.ban_forget);
        self.strikes.retain(|_, s| {
            while s
                .failures
                .front()
                .is_some_and(|t| now.duration_since(*t) >= window)
            {
                s.failures.pop_front();
            }
            let banned = s.banned_until.is_some_and(|u| now < u);
            let remembered = s.last_ban.is_some_and(|t| now.duration_since(t) < forget);
            banned || remembered || !s.failures.is_empty()
        });
        let trust = Nanos::from(p.trusted_for);
        self.trusted.retain(|_, t| now.duration_since(*t) < trust);
        self.trusted_ips
            .retain(|_, t| now.duration_since(*t) < trust);
        let trusted = &self.trusted;
        self.trusted_servers.retain(|ip, servers| {
            servers.retain(|s| {
                trusted
                    .get(&(*s, *ip))
                    .is_some_and(|t| now.duration_since(*t) < trust)
            });
            !servers.is_empty()
        });
        self.trusted_servers.shrink_to_fit();
        self.strikes.shrink_to_fit();
        self.trusted.shrink_to_fit();
        self.trusted_ips.shrink_to_fit();
    }

    /// Sizes of the keyed tables (for tests and metrics).
    pub fn table_sizes(&self) -> TableSizes {
        TableSizes {
            connections: self.connections.len(),
            ip_attempts: self.ip_attempts.len(),
            server_attempts: self.server_attempts.len(),
            trusted_attempts: self.trusted_attempts.len(),
            strikes: self.strikes.len(),
            trusted: self.trusted.len(),
        }
    }

    /// Addresses serving a ban right now.
    pub fn banned_count(&self) -> usize {
        let now = self.now();
        self.strikes
            .values()
            .filter(|s| s.banned_until.is_some_and(|u| now < u))
            .count()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableSizes {
    pub connections: usize,
    pub ip_attempts: usize,
    pub server_attempts: usize,
    pub trusted_attempts: usize,
    pub strikes: usize,
    pub trusted: usize,
}

/// `base * 2^(n-1)`, capped at `max` (n ≥ 1).
pub fn ban_length(base: Duration, max: Duration, n: u32) -> Duration {
    let shift = n.saturating_sub(1).min(31);
    base.checked_mul(1u32 << shift).map_or(max, |d| d.min(max))
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    fn sid(n: u32) -> Option<ServerId> {
        ServerId::new(n)
    }

    fn server(n: u32) -> ServerId {
        ServerId::new(n).unwrap_or_else(|| panic!("server id {n} must be >= 1"))
    }

    fn cfg() -> AuthConfig {
        AuthConfig {
            max_unauthenticated: 4,
            max_unauthenticated_per_ip: 2,
            connections_per_ip_burst: 3,
            connections_per_ip_interval_ms: 1_000,
            ip_attempts_burst: 5,
            ip_attempts_interval_ms: 10_000,
            ban_after_failures: 3,
            ban_window_secs: 60,
            ban_base_secs: 10,
            ban_max_secs: 35,
            ban_forget_secs: 600,
            server_attempts_burst: 4,
            server_attempts_interval_ms: 10_000,
            trusted_attempts_burst: 2,
            trusted_attempts_interval_ms: 10_000,
            trusted_for_secs: 3_600,
            ..AuthConfig::default()
        }
    }

    const REG: Admitted = Admitted::Regular;

    fn limits(c: &AuthConfig) -> (Limits<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (Limits::new(Params::from_config(c), clock.clone()), clock)
    }

    #[test]
    fn ban_length_doubles_and_caps() {
        let b = Duration::from_secs(10);
        let m = Duration::from_secs(35);
        let got: Vec<u64> = (1..=5).map(|n| ban_length(b, m, n).as_secs()).collect();
        assert_eq!(got, [10, 20, 35, 35, 35]);
        assert_eq!(
            ban_length(b, Duration::from_secs(u64::MAX / 4), 200).as_secs(),
            10 << 31
        );
    }

    #[test]
    fn unauthenticated_caps_global_and_per_ip() {
        let (mut l, _) = limits(&cfg());
        assert_eq!(l.admit(ip(1)), Ok(REG));
        assert_eq!(l.admit(ip(1)), Ok(REG));
        assert_eq!(l.admit(ip(1)), Err(AdmitDenied::UnauthenticatedCapPerIp));
        assert_eq!(l.admit(ip(2)), Ok(REG));
        assert_eq!(l.admit(ip(3)), Ok(REG));
        assert_eq!(l.unauthenticated(), 4);
        assert_eq!(l.admit(ip(4)), Err(AdmitDenied::UnauthenticatedCap));
        l.release(ip(1), REG);
        assert_eq!(l.admit(ip(4)), Ok(REG));
        for a in [1, 2, 3, 4] {
            l.release(ip(a), REG);
        }
        assert_eq!(l.unauthenticated(), 0);
        // Releasing more than was taken never underflows.
        l.release(ip(9), REG);
        assert_eq!(l.unauthenticated(), 0);
    }

    fn addr(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn source_key_masks_to_the_configured_prefix() {
        let cases: &[(&str, u8, u8, &str)] = &[
            ("192.0.2.77", 32, 64, "192.0.2.77"),
            ("192.0.2.77", 24, 64, "192.0.2.0"),
            ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", 32, 64, "2001:db8:1:2::"),
            ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", 32, 48, "2001:db8:1::"),
            (
                "2001:db8:1:2:aaaa:bbbb:cccc:dddd",
                32,
                128,
                "2001:db8:1:2:aaaa:bbbb:cccc:dddd",
            ),
            // IPv4-mapped IPv6 (a dual-stack listener) counts as the IPv4 source.
            ("::ffff:192.0.2.77", 32, 64, "192.0.2.77"),
            ("::ffff:192.0.2.77", 16, 64, "192.0.0.0"),
        ];
        for (input, v4, v6, want) in cases {
            let got = source_key(addr(input), *v4, *v6);
            assert_eq!(got, addr(want), "{input} /{v4} /{v6}");
        }
    }

    #[test]
    fn one_ipv6_slash64_is_one_source() {
        let (mut l, _) = limits(&cfg());
        let a = addr("2001:db8:0:1::1");
        let b = addr("2001:db8:0:1:ffff::2");
        let other = addr("2001:db8:0:2::1");
        assert_eq!(l.admit(a), Ok(REG));
        assert_eq!(l.admit(b), Ok(REG));
        // Per-source cap is 2 in `cfg()`: a third address of the same /64 is refused…
        let c = addr("2001:db8:0:1:1234::9");
        assert_eq!(l.admit(c), Err(AdmitDenied::UnauthenticatedCapPerIp));
        // …while the next /64 is a different source.
        assert_eq!(l.admit(other), Ok(REG));
        // Releasing by any address of the prefix frees the prefix's slot.
        l.release(c, REG);
        assert_eq!(l.admit(a), Ok(REG));
        // Failures from many addresses of one /64 add up to one ban.
        let (mut l, _) = limits(&cfg());
        let n = cfg().ban_after_failures;
        for i in 0..n {
            let addr = IpAddr::V6(std::net::Ipv6Addr::new(
                0x2001,
                0xdb8,
                0,
                7,
                0,
                0,
                0,
                i as u16 + 1,
            ));
            let _ = l.check_attempt(addr, None, Method::Password);
            l.record(addr, None, Method::Password, false);
        }
        let fresh = addr("2001:db8:0:7:dead::beef");
        assert!(l.is_banned(fresh));
        assert!(!l.is_banned(addr("2001:db8:0:8::1")));
    }

    #[test]
    fn a_full_cap_still_admits_a_recently_successful_source() {
        let (mut l, _) = limits(&AuthConfig {
            max_unauthenticated_per_ip: 100,
            connections_per_ip_burst: 100,
            ..cfg()
        });
        let owner = ip(200);
        let s = server(1);
        assert_eq!(l.check_attempt(owner, Some(s), Method::Password), Ok(()));
        l.record(owner, Some(s), Method::Password, true);
        for a in 1..=4 {
            assert_eq!(l.admit(ip(a)), Ok(REG));
        }
        assert_eq!(l.admit(ip(5)), Err(AdmitDenied::UnauthenticatedCap));
        // The reserve (a quarter of the cap of 4 = 1) is the trusted source's only, charged to
        // the server it logged in to.
        assert_eq!(l.admit(owner), Ok(Admitted::Reserve(s)));
        assert_eq!(l.reserve_held(s), (1, 1));
        assert_eq!(l.admit(owner), Err(AdmitDenied::UnauthenticatedCap));
        assert_eq!(l.admit(ip(6)), Err(AdmitDenied::UnauthenticatedCap));
        // Releasing the reserve slot frees it for the next owner.
        l.release(owner, Admitted::Reserve(s));
        assert_eq!(l.reserve_held(s), (0, 0));
        assert_eq!(l.admit(owner), Ok(Admitted::Reserve(s)));
        l.authenticated(owner, Admitted::Reserve(s));
        assert_eq!(l.reserve_held(s), (0, 0));
        assert_eq!(l.unauthenticated(), 4);
    }

    /// One account logging in from many sources holds at most `RESERVE_PER_SERVER` reserve
    /// slots; the reserve stays open to another server's owner.
    #[test]
    fn the_reserve_is_keyed_to_the_server_logged_in_to() {
        let (mut l, clock) = limits(&AuthConfig {
            max_unauthenticated: 40, // reserve: 10
            max_unauthenticated_per_ip: 100,
            connections_per_ip_burst: 100,
            ..cfg()
        });
        let (mine, theirs) = (server(1), server(2));
        let many: Vec<IpAddr> = (100..110).map(ip).collect();
        for a in &many {
            l.record(*a, Some(mine), Method::PublicKey, true);
        }
        let owner = ip(200);
        l.record(owner, Some(theirs), Method::PublicKey, true);
        for a in 1..=40 {
            assert_eq!(l.admit(IpAddr::from([198, 51, 100, a])), Ok(REG));
        }
        // Ten sources trusted for one server, three connections each: two reserve slots.
        let mut held = Vec::new();
        for a in &many {
            for _ in 0..3 {
                match l.admit(*a) {
                    Ok(slot) => held.push((*a, slot)),
                    Err(e) => assert_eq!(e, AdmitDenied::UnauthenticatedCap),
                }
            }
        }
        assert_eq!(
            held,
            [
                (many[0], Admitted::Reserve(mine)),
                (many[0], Admitted::Reserve(mine))
            ]
        );
        assert_eq!(l.reserve_held(mine), (2, 2));
        // The other server's owner still gets in, twice, charged to their own server.
        assert_eq!(l.admit(owner), Ok(Admitted::Reserve(theirs)));
        assert_eq!(l.admit(owner), Ok(Admitted::Reserve(theirs)));
        assert_eq!(l.admit(owner), Err(AdmitDenied::UnauthenticatedCap));
        assert_eq!(l.reserve_held(theirs), (4, 2));
        // A freed slot is the account's again.
        let (a, slot) = held[0];
        l.release(a, slot);
        assert_eq!(l.admit(many[5]), Ok(Admitted::Reserve(mine)));
        // Trust expires: the reserve closes to the source.
        l.release(many[5], Admitted::Reserve(mine));
        clock.advance(Duration::from_secs(3_600));
        assert_eq!(l.admit(many[5]), Err(AdmitDenied::UnauthenticatedCap));
    }

    #[test]
    fn a_reserve_slot_must_name_a_server_its_source_is_trusted_for() {
        let (mut l, _) = limits(&AuthConfig {
            max_unauthenticated: 4, // reserve: 1
            max_unauthenticated_per_ip: 100,
            connections_per_ip_burst: 100,
            ..cfg()
        });
        let (a, b, c) = (server(1), server(2), server(3));
        let src = ip(200);
        l.record(src, Some(a), Method::PublicKey, true);
        l.record(src, Some(b), Method::PublicKey, true);
        for n in 1..=4 {
            assert_eq!(l.admit(ip(n)), Ok(REG));
        }
        // Regular slots never need a claim.
        assert_eq!(l.claim(ip(1), REG, None), Ok(REG));
        assert_eq!(l.claim(ip(1), REG, Some(c)), Ok(REG));
        // Charged to the most recent login's server…
        let slot = l.admit(src);
        assert_eq!(slot, Ok(Admitted::Reserve(b)));
        let slot = Admitted::Reserve(b);
        // …a request for it passes, one for another trusted server moves the charge…
        assert_eq!(l.claim(src, slot, Some(b)), Ok(slot));
        assert_eq!(l.claim(src, slot, Some(a)), Ok(Admitted::Reserve(a)));
        assert_eq!(l.reserve_held(a), (1, 1));
        assert_eq!(l.reserve_held(b), (1, 0));
        let slot = Admitted::Reserve(a);
        // …and one for a server the source never logged in to, or no server, is refused.
        assert_eq!(l.claim(src, slot, Some(c)), Err(ReserveRefused));
        assert_eq!(l.claim(src, slot, None), Err(ReserveRefused));
        // The caller then releases what it holds: the reserve is empty again.
        l.release(src, slot);
        assert_eq!(l.reserve_held(a), (0, 0));
        assert_eq!(l.unauthenticated(), 4);
        // A source trusted for two servers falls back to the second when the first's share is
        // taken, and cannot move into the full one.
        let (mut l, _) = limits(&AuthConfig {
            max_unauthenticated: 40, // reserve: 10
            max_unauthenticated_per_ip: 100,
            connections_per_ip_burst: 100,
            ..cfg()
        });
        let (x, y) = (ip(150), ip(151));
        l.record(x, Some(a), Method::PublicKey, true);
        l.record(y, Some(b), Method::PublicKey, true);
        l.record(y, Some(a), Method::PublicKey, true);
        for n in 1..=40 {
            assert_eq!(l.admit(IpAddr::from([198, 51, 100, n])), Ok(REG));
        }
        assert_eq!(l.admit(x), Ok(Admitted::Reserve(a)));
        assert_eq!(l.admit(x), Ok(Admitted::Reserve(a)));
        assert_eq!(l.admit(y), Ok(Admitted::Reserve(b)));
        assert_eq!(
            l.claim(y, Admitted::Reserve(b), Some(a)),
            Err(ReserveRefused)
        );
        assert_eq!(l.reserve_held(a), (3, 2));
        assert_eq!(l.reserve_held(b), (3, 1));
    }

    #[test]
    fn connection_rate_per_ip_refills() {
        let (mut l, clock) = limits(&AuthConfig {
            max_unauthenticated_per_ip: 100,
            ..cfg()
        });
        for _ in 0..3 {
            assert_eq!(l.admit(ip(1)), Ok(REG));
            l.release(ip(1), REG);
        }
        assert_eq!(l.admit(ip(1)), Err(AdmitDenied::ConnectionRate));
        // Another address is unaffected.
        assert_eq!(l.admit(ip(2)), Ok(REG));
        clock.advance(Duration::from_millis(1_000));
        assert_eq!(l.admit(ip(1)), Ok(REG));
        assert_eq!(l.admit(ip(1)), Err(AdmitDenied::ConnectionRate));
    }

    #[test]
    fn authenticated_connections_give_their_cell_back() {
        let (mut l, _) = limits(&AuthConfig {
            max_unauthenticated_per_ip: 100,
            ..cfg()
        });
        // An owner's loop: far more connections than the burst of 3, all within one instant,
        // each authenticating.
        for i in 0..300 {
            assert_eq!(l.admit(ip(1)), Ok(REG), "login #{i}");
            l.authenticated(ip(1), REG);
        }
        assert_eq!(l.unauthenticated(), 0);
        // Abandoned connections still cost: three, then refused.
        for _ in 0..3 {
            assert_eq!(l.admit(ip(1)), Ok(REG));
            l.release(ip(1), REG);
        }
        assert_eq!(l.admit(ip(1)), Err(AdmitDenied::ConnectionRate));
        // One authentication never gives back more than one cell, and never beyond the burst.
        let (mut l, clock) = limits(&AuthConfig {
            max_unauthenticated_per_ip: 100,
            ..cfg()
        });
        for _ in 0..3 {
            assert_eq!(l.admit(ip(2)), Ok(REG));
        }
        l.authenticated(ip(2), REG);
        l.authenticated(ip(2), REG);
        l.authenticated(ip(2), REG);
        l.authenticated(ip(2), REG);
        for _ in 0..3 {
            assert_eq!(l.admit(ip(2)), Ok(REG));
        }
        assert_eq!(l.admit(ip(2)), Err(AdmitDenied::ConnectionRate));
        // The table forgets a source whose bucket is full again.
        clock.advance(Duration::from_secs(10));
        l.retain_recent();
        assert_eq!(l.table_sizes().connections, 0);
    }

    #[test]
    fn caps_do_not_consume_rate_tokens() {
        let (mut l, _) = limits(&AuthConfig {
            max_unauthenticated_per_ip: 1,
            ..cfg()
        });
        assert_eq!(l.admit(ip(1)), Ok(REG));
        for _ in 0..10 {
            assert_eq!(l.admit(ip(1)), Err(AdmitDenied::UnauthenticatedCapPerIp));
        }
        l.release(ip(1), REG);
        assert_eq!(
            l.admit(ip(1)),
            Ok(REG),
            "rejections by cap must not eat the rate budget"
        );
    }

    #[test]
    fn ip_budget_is_charged_per_secret_attempt_only() {
        let (mut l, clock) = limits(&AuthConfig {
            ban_after_failures: 100,
            ..cfg()
        });
        for _ in 0..20 {
            assert_eq!(l.check_attempt(ip(1), sid(1), Method::PublicKey), Ok(()));
        }
        for i in 0..5 {
            let server = sid(10 + i); // spread over servers so only the ip budget bites
            assert_eq!(l.check_attempt(ip(1), server, Method::Password), Ok(()));
        }
        assert_eq!(
            l.check_attempt(ip(1), sid(50), Method::KeyboardInteractive),
            Err(AttemptDenied::IpBudget)
        );
        assert_eq!(l.check_attempt(ip(2), sid(50), Method::Password), Ok(()));
        clock.advance(Duration::from_secs(10));
        assert_eq!(l.check_attempt(ip(1), sid(50), Method::Password), Ok(()));
        assert_eq!(
            l.check_attempt(ip(1), None, Method::Password),
            Err(AttemptDenied::IpBudget)
        );
    }

    #[test]
    fn server_budget_spans_addresses() {
        let (mut l, _) = limits(&cfg());
        for a in 0..4 {
            assert_eq!(l.check_attempt(ip(a), sid(7), Method::Password), Ok(()));
        }
        assert_eq!(
            l.check_attempt(ip(9), sid(7), Method::Password),
            Err(AttemptDenied::ServerBudget)
        );
        // Other servers and unparseable names are not affected.
        assert_eq!(l.check_attempt(ip(9), sid(8), Method::Password), Ok(()));
        assert_eq!(l.check_attempt(ip(10), None, Method::Password), Ok(()));
        // Public keys do not use the server budget.
        assert_eq!(l.check_attempt(ip(11), sid(7), Method::PublicKey), Ok(()));
    }

    #[test]
    fn failures_escalate_bans() {
        let (mut l, clock) = limits(&AuthConfig {
            ip_attempts_burst: 1_000,
            server_attempts_burst: 1_000,
            ..cfg()
        });
        let a = ip(1);
        let fail = |l: &mut Limits<FakeRelativeClock>| {
            assert_eq!(l.check_attempt(a, sid(1), Method::Password), Ok(()));
            l.record(a, sid(1), Method::Password, false)
        };
        assert_eq!(fail(&mut l), Recorded::Nothing);
        assert_eq!(fail(&mut l), Recorded::Nothing);
        assert_eq!(fail(&mut l), Recorded::Banned(Duration::from_secs(10)));
        assert!(l.is_banned(a));
        assert_eq!(l.banned_count(), 1);
        assert_eq!(
            l.check_attempt(a, sid(1), Method::Password),
            Err(AttemptDenied::Banned)
        );
        assert_eq!(
            l.check_attempt(a, sid(1), Method::PublicKey),
            Err(AttemptDenied::Banned)
        );
        assert_eq!(l.admit(a), Err(AdmitDenied::Banned));
        assert!(!l.probe_allowed(a, sid(1)));
        clock.advance(Duration::from_secs(10));
        assert!(!l.is_banned(a));
        for _ in 0..2 {
            assert_eq!(fail(&mut l), Recorded::Nothing);
        }
        assert_eq!(fail(&mut l), Recorded::Banned(Duration::from_secs(20)));
        clock.advance(Duration::from_secs(20));
        for _ in 0..2 {
            fail(&mut l);
        }
        assert_eq!(
            fail(&mut l),
            Recorded::Banned(Duration::from_secs(35)),
            "capped at ban_max"
        );
        // After ban_forget quiet time the history resets to the base length.
        clock.advance(Duration::from_secs(600));
        for _ in 0..2 {
            fail(&mut l);
        }
        assert_eq!(fail(&mut l), Recorded::Banned(Duration::from_secs(10)));
    }

    #[test]
    fn failures_outside_window_do_not_ban() {
        let (mut l, clock) = limits(&AuthConfig {
            ip_attempts_burst: 1_000,
            ..cfg()
        });
        for _ in 0..10 {
            assert_eq!(
                l.record(ip(1), sid(1), Method::Password, false),
                Recorded::Nothing
            );
            l.record(ip(1), sid(1), Method::Password, false);
            clock.advance(Duration::from_secs(61));
        }
        assert!(!l.is_banned(ip(1)));
    }

    #[test]
    fn public_key_failures_never_ban() {
        let (mut l, _) = limits(&cfg());
        for _ in 0..50 {
            assert_eq!(
                l.record(ip(1), sid(1), Method::PublicKey, false),
                Recorded::Nothing
            );
        }
        assert!(!l.is_banned(ip(1)));
    }

    #[test]
    fn owner_is_not_locked_out_from_usual_address() {
        let (mut l, _) = limits(&cfg());
        let owner = ip(1);
        let attacker = ip(66);
        // The owner logged in before.
        assert_eq!(l.check_attempt(owner, sid(7), Method::Password), Ok(()));
        l.record(owner, sid(7), Method::Password, true);
        assert!(l.is_trusted(server(7), owner));
        // Attackers from many addresses exhaust the server budget.
        for a in 100..103 {
            assert_eq!(l.check_attempt(ip(a), sid(7), Method::Password), Ok(()));
            l.record(ip(a), sid(7), Method::Password, false);
        }
        assert_eq!(
            l.check_attempt(attacker, sid(7), Method::Password),
            Err(AttemptDenied::ServerBudget)
        );
        // The owner's usual address still gets through, on its own budget.
        assert_eq!(l.check_attempt(owner, sid(7), Method::Password), Ok(()));
        assert_eq!(l.check_attempt(owner, sid(7), Method::Password), Ok(()));
        assert_eq!(
            l.check_attempt(owner, sid(7), Method::Password),
            Err(AttemptDenied::TrustedBudget),
            "the trusted budget is separate but still finite"
        );
        // ...and public keys always.
        assert_eq!(l.check_attempt(owner, sid(7), Method::PublicKey), Ok(()));
    }

    #[test]
    fn trusted_address_passes_its_own_ban_for_its_server_only() {
        let (mut l, _) = limits(&AuthConfig {
            ip_attempts_burst: 1_000,
            ..cfg()
        });
        let nat = ip(1);
        l.record(nat, sid(7), Method::Password, true);
        // Someone else behind the same address guesses another server and gets it banned.
        for _ in 0..3 {
            l.record(nat, sid(8), Method::Password, false);
        }
        assert!(l.is_banned(nat));
        assert_eq!(
            l.admit(nat),
            Ok(REG),
            "an address with a recent login is still admitted"
        );
        assert!(l.probe_allowed(nat, sid(7)));
        assert!(!l.probe_allowed(nat, sid(8)));
        assert_eq!(l.check_attempt(nat, sid(7), Method::Password), Ok(()));
        assert_eq!(
            l.check_attempt(nat, sid(8), Method::Password),
            Err(AttemptDenied::Banned)
        );
        assert_eq!(
            l.check_attempt(nat, None, Method::Password),
            Err(AttemptDenied::Banned)
        );
    }

    #[test]
    fn trust_expires() {
        let (mut l, clock) = limits(&cfg());
        let s = server(7);
        l.record(ip(1), Some(s), Method::PublicKey, true);
        assert!(l.is_trusted(s, ip(1)));
        assert!(!l.is_trusted(s, ip(2)));
        clock.advance(Duration::from_secs(3_600));
        assert!(!l.is_trusted(s, ip(1)));
    }

    #[test]
    fn unknown_name_success_is_not_trust() {
        let (mut l, _) = limits(&cfg());
        l.record(ip(1), None, Method::Password, true);
        assert_eq!(l.table_sizes().trusted, 0);
    }

    #[test]
    fn retain_recent_forgets_idle_state() {
        let (mut l, clock) = limits(&AuthConfig {
            ip_attempts_burst: 1_000,
            ..cfg()
        });
        for a in 0..50 {
            assert_eq!(l.admit(ip(a)), Ok(REG));
            l.release(ip(a), REG);
            let _ = l.check_attempt(ip(a), sid(u32::from(a) + 1), Method::Password);
            l.record(ip(a), sid(u32::from(a) + 1), Method::Password, a % 2 == 0);
        }
        let before = l.table_sizes();
        assert!(before.ip_attempts >= 50 && before.strikes == 25 && before.trusted == 25);
        clock.advance(Duration::from_secs(3_600));
        l.retain_recent();
        let after = l.table_sizes();
        assert_eq!(
            after,
            TableSizes {
                connections: 0,
                ip_attempts: 0,
                server_attempts: 0,
                trusted_attempts: 0,
                strikes: 0,
                trusted: 0
            }
        );
    }

    #[test]
    fn retain_recent_keeps_live_bans() {
        let (mut l, clock) = limits(&AuthConfig {
            ip_attempts_burst: 1_000,
            ..cfg()
        });
        for _ in 0..3 {
            l.record(ip(1), sid(1), Method::Password, false);
        }
        clock.advance(Duration::from_secs(5));
        l.retain_recent();
        assert!(l.is_banned(ip(1)));
        // The ban history survives the ban itself until ban_forget.
        clock.advance(Duration::from_secs(100));
        l.retain_recent();
        assert_eq!(l.table_sizes().strikes, 1);
        clock.advance(Duration::from_secs(600));
        l.retain_recent();
        assert_eq!(l.table_sizes().strikes, 0);
    }
}
