//! The gateway's Prometheus metrics: one process-global recorder of its own (see the
//! `metrics-page` crate for why not the `metrics` crate's global one), every handle registered on
//! it up front, and [`render`] for the text format (0.0.4).
//!
//! Global because there is one gateway per process and every connection task bumps them.
//! Handles are registered once, in `Registered::new`, and kept. Registering every label
//! combination there is what makes a fixed label set print zeros before anything happened.
//! Label values come only from
//! fixed enums here — never usernames, server numbers or addresses (unbounded cardinality, and
//! private). Serving `/metrics` over HTTP is the binary's job; it calls [`render`].

use std::sync::LazyLock;
use std::time::Duration;

use metrics_page::{Counter, Gauge, Histogram, PrometheusHandle, Registrar};

/// Upper bounds (seconds) shared by the latency histograms.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A counter family over one fixed label, every value registered up front.
#[derive(Debug)]
pub struct Family<const N: usize> {
    values: [&'static str; N],
    counters: [Counter; N],
}

impl<const N: usize> Family<N> {
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
}

/// Registers a [`Family`] on `r`.
fn family<const N: usize>(
    r: &Registrar,
    name: &'static str,
    help: &'static str,
    label: &'static str,
    values: [&'static str; N],
) -> Family<N> {
    Family {
        values,
        counters: values.map(|v| r.labelled_counter(name, help, &[(label, v)])),
    }
}

// ---------------------------------------------------------------------------------------------
// The gateway's metrics.

const AUTH_METHODS: [&str; 3] = ["password", "publickey", "keyboard-interactive"];
const AUTH_RESULTS: [&str; 3] = ["success", "failure", "rate_limited"];

/// Every gateway metric, registered on one recorder; `page` renders them.
#[derive(Debug)]
struct Registered {
    page: PrometheusHandle,
    connections: Family<2>,
    connections_active: Gauge,
    unauthenticated: Gauge,
    handshakes: Family<2>,
    /// Index = method (see [`AUTH_METHODS`]), then result (see [`AuthResult`]).
    auth: [[Counter; 3]; 3],
    rate_limited: Family<9>,
    bans: Counter,
    login_grace_expired: Counter,
    protocol_violations: Family<2>,
    bcrypt_seconds: Histogram,
    bcrypt_waiting: Gauge,
    audit_dropped: Counter,
    sessions_active: Gauge,
    sessions: Family<5>,
    bytes: Family<2>,
    exec_errors: Counter,
    ensure_running_seconds: Histogram,
    session_paths: Family<2>,
    ensure_running: Family<3>,
    recordings_dropped: Family<2>,
    memory_trims: Family<2>,
}

impl Registered {
    /// A fresh recorder with every metric registered (the process's is `METRICS`).
    fn new() -> Self {
        let r = Registrar::new(&LATENCY_BUCKETS);
        Self {
            connections: family(
                &r,
                "berth_gateway_connections_total",
                "TCP connections by admission result.",
                "result",
                ["accepted", "rejected"],
            ),
            connections_active: r
                .gauge("berth_gateway_connections_active", "Open SSH connections."),
            unauthenticated: r.gauge(
                "berth_gateway_unauthenticated_connections",
                "Admitted connections that have not authenticated yet.",
            ),
            handshakes: family(
                &r,
                "berth_gateway_handshakes_total",
                "SSH handshakes by result.",
                "result",
                ["ok", "failed"],
            ),
            auth: AUTH_METHODS.map(|m| {
                AUTH_RESULTS.map(|res| {
                    r.labelled_counter(
                        "berth_gateway_auth_attempts_total",
                        "Authentication attempts by method and result.",
                        &[("method", m), ("result", res)],
                    )
                })
            }),
            rate_limited: family(
                &r,
                "berth_gateway_rate_limit_rejections_total",
                "Connections and attempts refused by the brute-force defence, by scope.",
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
            ),
            bans: r.counter(
                "berth_gateway_bans_total",
                "Temporary address bans started.",
            ),
            login_grace_expired: r.counter(
                "berth_gateway_login_grace_expired_total",
                "Connections closed because the login grace time ran out.",
            ),
            protocol_violations: family(
                &r,
                "berth_gateway_protocol_violations_total",
                "Connections cut because the client ignored the protocol's limits (channel window, request floods).",
                "kind",
                ["window_exceeded", "agent"],
            ),
            bcrypt_seconds: r.histogram(
                "berth_gateway_bcrypt_seconds",
                "bcrypt verification time (real or dummy hash), queueing excluded.",
            ),
            bcrypt_waiting: r.gauge(
                "berth_gateway_bcrypt_waiting",
                "bcrypt verifications waiting for a slot.",
            ),
            audit_dropped: r.counter(
                "berth_gateway_audit_dropped_total",
                "Audit records dropped because the audit queue was full.",
            ),
            sessions_active: r.gauge("berth_gateway_sessions_active", "Open sessions (channels)."),
            sessions: family(
                &r,
                "berth_gateway_sessions_total",
                "Sessions opened by kind.",
                "kind",
                ["shell", "exec", "sftp", "subsystem", "direct_tcpip"],
            ),
            bytes: family(
                &r,
                "berth_gateway_bytes_total",
                "Payload bytes relayed by direction.",
                "direction",
                ["client_to_container", "container_to_client"],
            ),
            exec_errors: r.counter(
                "berth_gateway_exec_errors_total",
                "Docker exec and forward failures.",
            ),
            ensure_running_seconds: r.histogram(
                "berth_gateway_ensure_running_seconds",
                "Time to make the tenant's container run at login.",
            ),
            session_paths: family(
                &r,
                "berth_gateway_session_paths_total",
                "Sessions and forwards by data path (agent: fds from the in-container agent; attach: Docker's exec stream).",
                "path",
                ["agent", "attach"],
            ),
            ensure_running: family(
                &r,
                "berth_gateway_ensure_running_total",
                "ensure_running calls by result.",
                "result",
                ["running", "started", "failed"],
            ),
            recordings_dropped: family(
                &r,
                "berth_gateway_recordings_dropped_total",
                "Session recordings stopped before the session ended, by cause (the session went on).",
                "reason",
                ["queue_full", "write_failed"],
            ),
            memory_trims: family(
                &r,
                "berth_gateway_memory_trims_total",
                "Returns of free heap memory to the kernel after connections ended, by whether the allocator released any.",
                "result",
                ["released", "nothing"],
            ),
            page: r.page(),
        }
    }
}

/// The process's gateway metrics, registered on first use (or first render).
static METRICS: LazyLock<Registered> = LazyLock::new(Registered::new);

/// One of the process's gateway handles under a name of its own (`metrics::BANS.inc()`).
pub struct Global<T: 'static>(fn(&'static Registered) -> &'static T);

impl<T> std::ops::Deref for Global<T> {
    type Target = T;
    fn deref(&self) -> &T {
        (self.0)(&METRICS)
    }
}

/// TCP connections accepted (admitted) / rejected at admission.
pub static CONNECTIONS: Global<Family<2>> = Global(|m| &m.connections);
/// Connections open right now (any state).
pub static CONNECTIONS_ACTIVE: Global<Gauge> = Global(|m| &m.connections_active);
/// Connections admitted but not yet authenticated.
pub static UNAUTHENTICATED: Global<Gauge> = Global(|m| &m.unauthenticated);
/// SSH handshakes (key exchange) completed / failed.
pub static HANDSHAKES: Global<Family<2>> = Global(|m| &m.handshakes);
/// Refusals by the brute-force defence, by where they happened.
pub static RATE_LIMITED: Global<Family<9>> = Global(|m| &m.rate_limited);
/// Temporary bans started.
pub static BANS: Global<Counter> = Global(|m| &m.bans);
/// Connections closed because login grace time ran out.
pub static LOGIN_GRACE_EXPIRED: Global<Counter> = Global(|m| &m.login_grace_expired);
/// Connections cut because the client broke the protocol's limits, by kind.
pub static PROTOCOL_VIOLATIONS: Global<Family<2>> = Global(|m| &m.protocol_violations);
/// bcrypt verifications (real or dummy) and how long each took, queueing excluded.
pub static BCRYPT_SECONDS: Global<Histogram> = Global(|m| &m.bcrypt_seconds);
/// bcrypt verifications waiting for a slot right now.
pub static BCRYPT_WAITING: Global<Gauge> = Global(|m| &m.bcrypt_waiting);
/// Audit records dropped because the audit queue was full.
pub static AUDIT_DROPPED: Global<Counter> = Global(|m| &m.audit_dropped);
/// Sessions (channels) open right now.
pub static SESSIONS_ACTIVE: Global<Gauge> = Global(|m| &m.sessions_active);
/// Sessions opened, by kind.
pub static SESSIONS: Global<Family<5>> = Global(|m| &m.sessions);
/// Payload bytes relayed, by direction.
pub static BYTES: Global<Family<2>> = Global(|m| &m.bytes);
/// Docker exec failures (create/start/attach/inspect) and forward connection failures.
pub static EXEC_ERRORS: Global<Counter> = Global(|m| &m.exec_errors);
/// `Backend::ensure_running` latency.
pub static ENSURE_RUNNING_SECONDS: Global<Histogram> = Global(|m| &m.ensure_running_seconds);
/// `ensure_running` calls that started a container / that failed.
pub static ENSURE_RUNNING: Global<Family<3>> = Global(|m| &m.ensure_running);
/// Recordings stopped before their session ended, by cause.
pub static RECORDINGS_DROPPED: Global<Family<2>> = Global(|m| &m.recordings_dropped);
/// Sessions and forwards by the data path that carried them.
pub static SESSION_PATHS: Global<Family<2>> = Global(|m| &m.session_paths);

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
    METRICS.auth[m][result as usize].inc();
}

/// Value of one auth counter (tests).
pub fn auth_count(method: &str, result: AuthResult) -> u64 {
    AUTH_METHODS
        .iter()
        .position(|x| *x == method)
        .map_or(0, |m| METRICS.auth[m][result as usize].get())
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

/// Why a recording stopped while its session went on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordingDrop {
    /// The writer fell behind (a slow disk): the bounded queue was full.
    QueueFull,
    /// Creating or writing the file failed (e.g. a full disk).
    WriteFailed,
}

/// Counts a recording dropped while its session went on.
pub fn recording_dropped(why: RecordingDrop) {
    RECORDINGS_DROPPED.inc(match why {
        RecordingDrop::QueueFull => 0,
        RecordingDrop::WriteFailed => 1,
    });
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

/// Counts one `malloc_trim` after connections ended (`crate::memory::Trimmer`).
pub fn memory_trimmed(released: bool) {
    METRICS.memory_trims.inc(usize::from(!released));
}

/// Appends every gateway metric in the Prometheus text format (0.0.4).
pub fn render(out: &mut String) {
    out.push_str(&METRICS.page.render());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A recorder of its own, so other tests bumping the process's counters cannot interfere.
    #[test]
    fn renders_names_help_zeros_and_buckets() {
        let m = Registered::new();
        m.bcrypt_seconds.observe(Duration::from_millis(3));
        m.bcrypt_seconds.observe(Duration::from_millis(3));
        m.bcrypt_seconds.observe(Duration::from_secs(100));
        m.auth[2][AuthResult::RateLimited as usize].inc();
        m.bytes.add(1, 300);
        m.unauthenticated.inc();
        let out = m.page.render();
        for line in [
            "# HELP berth_gateway_auth_attempts_total Authentication attempts by method and result.",
            "# TYPE berth_gateway_auth_attempts_total counter",
            "berth_gateway_auth_attempts_total{method=\"keyboard-interactive\",result=\"rate_limited\"} 1",
            "berth_gateway_auth_attempts_total{method=\"password\",result=\"success\"} 0",
            "berth_gateway_rate_limit_rejections_total{scope=\"bcrypt_queue\"} 0",
            "berth_gateway_bytes_total{direction=\"container_to_client\"} 300",
            "berth_gateway_bans_total 0",
            "# TYPE berth_gateway_unauthenticated_connections gauge",
            "berth_gateway_unauthenticated_connections 1",
            "berth_gateway_sessions_active 0",
            "# HELP berth_gateway_bcrypt_seconds bcrypt verification time (real or dummy hash), queueing excluded.",
            "# TYPE berth_gateway_bcrypt_seconds histogram",
            "berth_gateway_bcrypt_seconds_bucket{le=\"0.0025\"} 0",
            "berth_gateway_bcrypt_seconds_bucket{le=\"0.005\"} 2",
            "berth_gateway_bcrypt_seconds_bucket{le=\"30\"} 2",
            "berth_gateway_bcrypt_seconds_bucket{le=\"+Inf\"} 3",
            "berth_gateway_bcrypt_seconds_count 3",
            "berth_gateway_ensure_running_seconds_bucket{le=\"0.001\"} 0",
            "berth_gateway_ensure_running_seconds_sum 0",
            "berth_gateway_ensure_running_seconds_count 0",
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line:?} in\n{out}");
        }
        let sum = out
            .lines()
            .find_map(|l| l.strip_prefix("berth_gateway_bcrypt_seconds_sum "))
            .and_then(|v| v.parse::<f64>().ok());
        assert!(sum.is_some_and(|s| (s - 100.006).abs() < 1e-9), "{out}");
        assert_eq!(m.auth[2][AuthResult::RateLimited as usize].get(), 1);
        assert_eq!(m.unauthenticated.get(), 1);
        assert_eq!(m.bytes.get(1), 300);
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
        let mut families = 0;
        for line in out.lines() {
            // The library separates families with an empty line (the text format ignores them).
            if line.is_empty() {
                continue;
            }
            if line.starts_with('#') {
                assert!(
                    line.starts_with("# HELP berth_") || line.starts_with("# TYPE berth_"),
                    "{line}"
                );
                families += usize::from(line.starts_with("# TYPE "));
                continue;
            }
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad line {line}"));
            assert!(series.starts_with("berth_gateway_"), "{line}");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
        assert_eq!(families, 21, "{out}");
        assert!(auth_count("keyboard-interactive", AuthResult::RateLimited) >= 1);
        assert!(SESSIONS_ACTIVE.get() >= 1);
    }
}
