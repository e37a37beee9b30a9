//! Prometheus counters for the gateway, as process-global atomics, rendered in the text format.
//!
//! Global because there is one gateway per process and every connection task bumps them; no
//! registry, no locks, no allocation on the hot path. Label values come only from fixed enums
//! here — never usernames, server numbers or addresses (unbounded cardinality, and private).
//! Serving `/metrics` over HTTP is the binary's job; it calls [`render`].

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// A monotonically increasing count.
#[derive(Debug)]
pub struct Counter(AtomicU64);

impl Counter {
    pub const fn new() -> Self {
        Self(AtomicU64::new(0))
    }
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Default for Counter {
    fn default() -> Self {
        Self::new()
    }
}

/// A value that goes up and down.
#[derive(Debug)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub const fn new() -> Self {
        Self(AtomicI64::new(0))
    }
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Default for Gauge {
    fn default() -> Self {
        Self::new()
    }
}

/// Upper bounds (seconds) shared by the latency histograms.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A fixed-bucket latency histogram (cumulative on render).
#[derive(Debug)]
pub struct Histogram {
    counts: [AtomicU64; LATENCY_BUCKETS.len()],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub const fn new() -> Self {
        Self {
            counts: [const { AtomicU64::new(0) }; LATENCY_BUCKETS.len()],
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, help, "histogram");
        let mut cumulative = 0;
        for (bound, c) in LATENCY_BUCKETS.iter().zip(&self.counts) {
            cumulative += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

/// A counter family over one fixed label.
#[derive(Debug)]
pub struct Family<const N: usize> {
    label: &'static str,
    values: [&'static str; N],
    counters: [Counter; N],
}

impl<const N: usize> Family<N> {
    pub const fn new(label: &'static str, values: [&'static str; N]) -> Self {
        Self {
            label,
            values,
            counters: [const { Counter::new() }; N],
        }
    }
    pub fn get(&self, i: usize) -> u64 {
        self.counters.get(i).map_or(0, Counter::get)
    }
    fn inc(&self, i: usize) {
        self.add(i, 1);
    }
    fn add(&self, i: usize, n: u64) {
        if let Some(c) = self.counters.get(i) {
            c.add(n);
        }
    }
    fn render(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, help, "counter");
        for (v, c) in self.values.iter().zip(&self.counters) {
            let _ = writeln!(out, "{name}{{{}=\"{v}\"}} {}", self.label, c.get());
        }
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn scalar(out: &mut String, name: &str, help: &str, kind: &str, v: impl std::fmt::Display) {
    header(out, name, help, kind);
    let _ = writeln!(out, "{name} {v}");
}

// ---------------------------------------------------------------------------------------------
// The gateway's metrics.

/// TCP connections accepted (admitted) / rejected at admission.
pub static CONNECTIONS: Family<2> = Family::new("result", ["accepted", "rejected"]);
/// Connections open right now (any state).
pub static CONNECTIONS_ACTIVE: Gauge = Gauge::new();
/// Connections admitted but not yet authenticated.
pub static UNAUTHENTICATED: Gauge = Gauge::new();
/// SSH handshakes (key exchange) completed / failed.
pub static HANDSHAKES: Family<2> = Family::new("result", ["ok", "failed"]);

/// Auth attempts: index = method * 3 + result (see [`auth_outcome`]).
static AUTH: [Family<3>; 3] = [
    Family::new("result", ["success", "failure", "rate_limited"]),
    Family::new("result", ["success", "failure", "rate_limited"]),
    Family::new("result", ["success", "failure", "rate_limited"]),
];
const AUTH_METHODS: [&str; 3] = ["password", "publickey", "keyboard-interactive"];

/// Refusals by the brute-force defence, by where they happened.
pub static RATE_LIMITED: Family<9> = Family::new(
    "scope",
    [
        "connection_rate",
        "unauthenticated_cap",
        "unauthenticated_cap_per_ip",
        "banned_at_connect",
        "banned",
        "ip_budget",
        "server_budget",
        "trusted_budget",
        "bcrypt_queue",
    ],
);
/// Temporary bans started.
pub static BANS: Counter = Counter::new();
/// Connections closed because login grace time ran out.
pub static LOGIN_GRACE_EXPIRED: Counter = Counter::new();
/// Connections cut because the client broke the protocol's limits, by kind.
pub static PROTOCOL_VIOLATIONS: Family<2> = Family::new("kind", ["window_exceeded", "agent"]);
/// bcrypt verifications (real or dummy) and how long each took, queueing excluded.
pub static BCRYPT_SECONDS: Histogram = Histogram::new();
/// bcrypt verifications waiting for a slot right now.
pub static BCRYPT_WAITING: Gauge = Gauge::new();
/// Audit records dropped because the audit queue was full.
pub static AUDIT_DROPPED: Counter = Counter::new();

/// Sessions (channels) open right now.
pub static SESSIONS_ACTIVE: Gauge = Gauge::new();
/// Sessions opened, by kind.
pub static SESSIONS: Family<5> = Family::new(
    "kind",
    ["shell", "exec", "sftp", "subsystem", "direct_tcpip"],
);
/// Payload bytes relayed, by direction.
pub static BYTES: Family<2> =
    Family::new("direction", ["client_to_container", "container_to_client"]);
/// Docker exec failures (create/start/attach/inspect) and forward connection failures.
pub static EXEC_ERRORS: Counter = Counter::new();
/// `Backend::ensure_running` latency.
pub static ENSURE_RUNNING_SECONDS: Histogram = Histogram::new();
/// `ensure_running` calls that started a container / that failed.
pub static ENSURE_RUNNING: Family<3> = Family::new("result", ["running", "started", "failed"]);

// ---------------------------------------------------------------------------------------------
// Helpers for the session code.

/// Why a connection was cut for breaking the protocol's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// The client sent more channel data than the window we granted.
    WindowExceeded,
    /// A session agent (or something else in a container) sent a message or fd we refuse.
    Agent,
}

pub fn protocol_violation(v: Violation) {
    PROTOCOL_VIOLATIONS.inc(match v {
        Violation::WindowExceeded => 0,
        Violation::Agent => 1,
    });
}

/// Sessions and forwards by the data path that carried them.
pub static SESSION_PATHS: Family<2> = Family::new("path", ["agent", "attach"]);

pub fn session_path(path: &str) {
    SESSION_PATHS.inc(usize::from(path != "agent"));
}

/// Auth outcome for [`auth_outcome`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthResult {
    Success,
    Failure,
    RateLimited,
}

/// Counts one auth attempt. `method` is the SSH method name (`crate::auth::Method::as_str`):
/// a name rather than the auth module's enum so metrics depend on nothing above them; a name
/// outside [`AUTH_METHODS`] is ignored and never becomes a label.
pub fn auth_outcome(method: &str, result: AuthResult) {
    let Some(m) = AUTH_METHODS.iter().position(|x| *x == method) else {
        return;
    };
    AUTH[m].inc(result as usize);
}

/// Value of one auth counter (tests).
pub fn auth_count(method: &str, result: AuthResult) -> u64 {
    AUTH_METHODS
        .iter()
        .position(|x| *x == method)
        .map_or(0, |m| AUTH[m].get(result as usize))
}

/// Counts a refusal by the brute-force defence (`scope` = one of [`RATE_LIMITED`]'s values).
pub fn rate_limited(scope: &str) {
    if let Some(i) = RATE_LIMITED.values.iter().position(|v| *v == scope) {
        RATE_LIMITED.inc(i);
    }
}

/// What kind of session a channel carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    Shell,
    Exec,
    Sftp,
    Subsystem,
    DirectTcpip,
}

/// Counts a session open; the active gauge drops when the guard does.
#[must_use = "the session counts as active while the guard lives"]
pub fn session_opened(kind: SessionKind) -> ActiveSession {
    SESSIONS.inc(kind as usize);
    SESSIONS_ACTIVE.inc();
    ActiveSession(())
}

/// Keeps [`SESSIONS_ACTIVE`] up while alive.
#[derive(Debug)]
pub struct ActiveSession(());

impl Drop for ActiveSession {
    fn drop(&mut self) {
        SESSIONS_ACTIVE.dec();
    }
}

/// Counts an open TCP connection; [`CONNECTIONS_ACTIVE`] drops when the guard does.
#[must_use = "the connection counts as active while the guard lives"]
pub fn connection_opened() -> ActiveConnection {
    CONNECTIONS_ACTIVE.inc();
    ActiveConnection(())
}

/// Keeps [`CONNECTIONS_ACTIVE`] up while alive.
#[derive(Debug)]
pub struct ActiveConnection(());

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        CONNECTIONS_ACTIVE.dec();
    }
}

/// Counts a TCP connection at admission (done by `Authenticator::admit`).
pub fn count_connection(accepted: bool) {
    CONNECTIONS.inc(usize::from(!accepted));
}

/// Counts a finished SSH handshake.
pub fn handshake(ok: bool) {
    HANDSHAKES.inc(usize::from(!ok));
}

/// Bytes relayed from the client into the container.
pub fn bytes_to_container(n: u64) {
    BYTES.add(0, n);
}

/// Bytes relayed from the container to the client.
pub fn bytes_to_client(n: u64) {
    BYTES.add(1, n);
}

/// Counts a Docker exec (or forward) failure.
pub fn exec_error() {
    EXEC_ERRORS.inc();
}

/// Records one `ensure_running` call: `Ok(started_now)` or `Err(())`.
pub fn ensure_running(took: Duration, outcome: Result<bool, ()>) {
    ENSURE_RUNNING_SECONDS.observe(took);
    ENSURE_RUNNING.inc(match outcome {
        Ok(false) => 0,
        Ok(true) => 1,
        Err(()) => 2,
    });
}

/// Appends every gateway metric in the Prometheus text format (0.0.4).
pub fn render(out: &mut String) {
    CONNECTIONS.render(
        out,
        "berth_gateway_connections_total",
        "TCP connections by admission result.",
    );
    scalar(
        out,
        "berth_gateway_connections_active",
        "Open SSH connections.",
        "gauge",
        CONNECTIONS_ACTIVE.get(),
    );
    scalar(
        out,
        "berth_gateway_unauthenticated_connections",
        "Admitted connections that have not authenticated yet.",
        "gauge",
        UNAUTHENTICATED.get(),
    );
    HANDSHAKES.render(
        out,
        "berth_gateway_handshakes_total",
        "SSH handshakes by result.",
    );

    let name = "berth_gateway_auth_attempts_total";
    header(
        out,
        name,
        "Authentication attempts by method and result.",
        "counter",
    );
    for (m, fam) in AUTH_METHODS.iter().zip(&AUTH) {
        for (r, c) in fam.values.iter().zip(&fam.counters) {
            let _ = writeln!(out, "{name}{{method=\"{m}\",result=\"{r}\"}} {}", c.get());
        }
    }
    RATE_LIMITED.render(
        out,
        "berth_gateway_rate_limit_rejections_total",
        "Connections and attempts refused by the brute-force defence, by scope.",
    );
    scalar(
        out,
        "berth_gateway_bans_total",
        "Temporary address bans started.",
        "counter",
        BANS.get(),
    );
    scalar(
        out,
        "berth_gateway_login_grace_expired_total",
        "Connections closed because the login grace time ran out.",
        "counter",
        LOGIN_GRACE_EXPIRED.get(),
    );
    PROTOCOL_VIOLATIONS.render(
        out,
        "berth_gateway_protocol_violations_total",
        "Connections cut because the client ignored the protocol's limits (channel window, request floods).",
    );
    BCRYPT_SECONDS.render(
        out,
        "berth_gateway_bcrypt_seconds",
        "bcrypt verification time (real or dummy hash), queueing excluded.",
    );
    scalar(
        out,
        "berth_gateway_bcrypt_waiting",
        "bcrypt verifications waiting for a slot.",
        "gauge",
        BCRYPT_WAITING.get(),
    );
    scalar(
        out,
        "berth_gateway_audit_dropped_total",
        "Audit records dropped because the audit queue was full.",
        "counter",
        AUDIT_DROPPED.get(),
    );
    scalar(
        out,
        "berth_gateway_sessions_active",
        "Open sessions (channels).",
        "gauge",
        SESSIONS_ACTIVE.get(),
    );
    SESSIONS.render(
        out,
        "berth_gateway_sessions_total",
        "Sessions opened by kind.",
    );
    BYTES.render(
        out,
        "berth_gateway_bytes_total",
        "Payload bytes relayed by direction.",
    );
    scalar(
        out,
        "berth_gateway_exec_errors_total",
        "Docker exec and forward failures.",
        "counter",
        EXEC_ERRORS.get(),
    );
    ENSURE_RUNNING_SECONDS.render(
        out,
        "berth_gateway_ensure_running_seconds",
        "Time to make the tenant's container run at login.",
    );
    SESSION_PATHS.render(
        out,
        "berth_gateway_session_paths_total",
        "Sessions and forwards by data path (agent: fds from the in-container agent; attach: Docker's exec stream).",
    );
    ENSURE_RUNNING.render(
        out,
        "berth_gateway_ensure_running_total",
        "ensure_running calls by result.",
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let h = Histogram::new();
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(100));
        let mut out = String::new();
        h.render(&mut out, "t", "help");
        assert!(out.contains("t_bucket{le=\"0.0025\"} 0\n"), "{out}");
        assert!(out.contains("t_bucket{le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("t_bucket{le=\"30\"} 2\n"), "{out}");
        assert!(out.contains("t_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("t_count 3\n"), "{out}");
    }

    #[test]
    fn render_is_well_formed_and_has_no_free_labels() {
        auth_outcome("keyboard-interactive", AuthResult::RateLimited);
        auth_outcome("not-a-method", AuthResult::Success); // ignored
        rate_limited("ip_budget");
        rate_limited("not-a-scope"); // ignored, never becomes a label
        let _s = session_opened(SessionKind::Sftp);
        let mut out = String::new();
        render(&mut out);
        assert!(
            out.contains(
                "berth_gateway_auth_attempts_total{method=\"keyboard-interactive\",result=\"rate_limited\"} "
            ),
            "{out}"
        );
        assert!(!out.contains("not-a-scope"));
        assert!(!out.contains("not-a-method"));
        for line in out.lines() {
            if line.starts_with('#') {
                assert!(
                    line.starts_with("# HELP berth_") || line.starts_with("# TYPE berth_"),
                    "{line}"
                );
                continue;
            }
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad line {line}"));
            assert!(series.starts_with("berth_gateway_"), "{line}");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
        assert!(auth_count("keyboard-interactive", AuthResult::RateLimited) >= 1);
    }
}
