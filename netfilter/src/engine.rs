//! The operations behind `berth netfilter apply|show|check|flush` and `berth run netfilter`:
//! render (pure) + nft (IO) + bridge-port isolation (rtnetlink), and the drift watch that keeps the
//! live tables equal to what was applied.
//!
//! It never touches a table that is not berth's own, and never removes berth's rules on exit:
//! the filter must outlive the daemon.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nftables::batch::Batch;
use nftables::expr::{Expression, Meta, MetaKey, NamedExpression};
use nftables::schema::{Chain, NfListObject, Rule, Table};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use tokio::io::{AsyncBufReadExt, BufReader};
use tracing::{error, info, warn};

use crate::bindings::{PortBinding, PortsFile, normalize};
use crate::config::{BridgeMatch, Config, Policy};
use crate::diff::{diff, expected_lines, live_lines};
use crate::nft::{Nft, NftError};
use crate::ports;
use crate::render::{L2Match, Network, Ruleset, delete_batch, to_nft_json};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid netfilter config: {0}")]
    Config(String),
    #[error(transparent)]
    Nft(#[from] NftError),
    #[error("cannot isolate the ports of bridge {bridge}: {source}")]
    Ports {
        bridge: String,
        source: std::io::Error,
    },
    #[error("cannot read the port map {path}: {reason}")]
    PortMap { path: String, reason: String },
}

pub use crate::diff::DropCounter;

/// What an apply did.
#[derive(Debug, Clone)]
pub struct Applied {
    pub ruleset: Ruleset,
    pub l2: L2Match,
    pub elapsed: Duration,
    /// Bridge ports that were newly isolated.
    pub isolated: Vec<String>,
    /// Why port isolation could not be set (e.g. /sys mounted read-only). Not fatal: the
    /// bridge table still separates tenants for IPv4, IPv6 and ARP.
    pub isolation_error: Option<String>,
}

/// berth's firewall for one tenant network.
#[derive(Debug, Clone)]
pub struct Firewall {
    nft: Nft,
    policy: Policy,
    net: Network,
    bridge_match: BridgeMatch,
    isolate_ports: bool,
    interval: Duration,
    monitor: bool,
    ports_file: Option<PathBuf>,
    ports_poll: Duration,
    /// The port map last loaded (normalized) and the bridge's ports without a binding;
    /// rendered into every apply.
    bindings: Arc<Mutex<(Vec<PortBinding>, Vec<String>)>>,
}

/// What loading the port map found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortMap {
    pub bindings: Vec<PortBinding>,
    /// Ports of the tenant bridge with no binding (they get nothing).
    pub unbound: Vec<String>,
    /// Endpoints or bindings that could not be used, with why (for logs).
    pub problems: Vec<String>,
}

impl Firewall {
    pub fn new(cfg: &Config, net: Network) -> Result<Self, Error> {
        let policy = cfg.policy().map_err(Error::Config)?;
        Ok(Self {
            nft: Nft::new(cfg.nft.clone()),
            policy,
            net,
            bridge_match: cfg.bridge_match,
            isolate_ports: cfg.isolate_ports,
            interval: Duration::from_secs(cfg.check_interval_secs),
            monitor: cfg.monitor,
            ports_file: (!cfg.ports_file.is_empty()).then(|| PathBuf::from(&cfg.ports_file)),
            ports_poll: Duration::from_millis(cfg.ports_poll_ms),
            bindings: Arc::new(Mutex::new((Vec::new(), Vec::new()))),
        })
    }

    /// Whether port binding is on (a `ports_file` is configured).
    pub fn binds_ports(&self) -> bool {
        self.ports_file.is_some()
    }

    fn current_state(&self) -> Option<(Vec<PortBinding>, Vec<String>)> {
        self.ports_file.as_ref()?;
        Some(match self.bindings.lock() {
            Ok(b) => b.clone(),
            Err(p) => p.into_inner().clone(),
        })
    }

    fn render_current(&self, l2: L2Match) -> Ruleset {
        let state = self.current_state();
        crate::render::render_full(
            &self.policy,
            &self.net,
            l2,
            state.as_ref().map(|(b, _)| b.as_slice()),
            state.as_ref().map_or(&[][..], |(_, u)| u.as_slice()),
        )
    }

    /// Reads the port map file and asks the kernel which bridge ports lead into each listed
    /// namespace; stores and returns the bindings. A missing file is an empty map (no tenant
    /// port bound yet: deny by default). Without port binding configured: empty, nothing read.
    pub async fn load_ports(&self) -> Result<PortMap, Error> {
        let Some(path) = self.ports_file.clone() else {
            return Ok(PortMap::default());
        };
        let bridge = self.net.bridge.clone();
        let shown = path.display().to_string();
        let map = tokio::task::spawn_blocking(move || -> Result<PortMap, String> {
            let file = match std::fs::read_to_string(&path) {
                Ok(t) => PortsFile::parse(&t)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => PortsFile::default(),
                Err(e) => return Err(e.to_string()),
            };
            let r = crate::netns::resolve(&bridge, &file.endpoints)
                .map_err(|e| format!("rtnetlink: {e}"))?;
            let (bindings, mut problems) = normalize(r.bindings);
            problems.extend(
                r.unresolved
                    .into_iter()
                    .map(|(name, why)| format!("{name}: {why}")),
            );
            let unbound = r
                .bridge_ports
                .into_iter()
                .filter(|p| !bindings.iter().any(|b| b.port == *p))
                .collect();
            Ok(PortMap {
                bindings,
                unbound,
                problems,
            })
        })
        .await
        .map_err(|e| Error::PortMap {
            path: shown.clone(),
            reason: e.to_string(),
        })?
        .map_err(|reason| Error::PortMap {
            path: shown,
            reason,
        })?;
        let (b, _) = normalize(map.bindings.clone());
        match self.bindings.lock() {
            Ok(mut g) => *g = (b, map.unbound.clone()),
            Err(p) => *p.into_inner() = (b, map.unbound.clone()),
        }
        Ok(map)
    }

    /// Replaces the stored port map (tests and in-process feeds); applied by the next apply or
    /// [`Self::update_ports`].
    pub fn set_bindings(&self, bindings: Vec<PortBinding>) {
        let (b, _) = normalize(bindings);
        match self.bindings.lock() {
            Ok(mut g) => g.0 = b,
            Err(p) => p.into_inner().0 = b,
        }
    }

    /// Moves the live port sets from `previous` to the stored port map in one transaction
    /// that touches nothing else; falls back to a full apply when that
    /// transaction is refused (e.g. the live table predates port binding). Returns the new
    /// ruleset.
    pub async fn update_ports(&self, previous: &Ruleset, l2: L2Match) -> Result<Ruleset, Error> {
        let ruleset = self.render_current(l2);
        if let Some(batch) = ruleset.ports_update_batch(previous) {
            match self
                .nft
                .apply(&to_nft_json(&batch), "update berth's port bindings")
                .await
            {
                Ok(()) => return Ok(ruleset),
                Err(e) => {
                    warn!(error = %e, "incremental port update refused; re-applying everything")
                }
            }
        }
        Ok(self.apply().await?.ruleset)
    }

    pub fn table(&self) -> &str {
        &self.policy.table
    }

    /// Resolves `bridge_match = "auto"`: asks the kernel (`nft -c`, nothing committed) whether
    /// bridge meta expressions are supported.
    pub async fn l2_match(&self) -> Result<L2Match, Error> {
        match self.bridge_match {
            BridgeMatch::Meta => Ok(L2Match::Meta),
            BridgeMatch::Addresses => Ok(L2Match::Addresses),
            BridgeMatch::Auto => {
                let table = format!("{}_probe", self.policy.table);
                let mut b = Batch::new();
                b.add(NfListObject::Table(Table {
                    family: NfFamily::Bridge,
                    name: table.clone().into(),
                    handle: None,
                }));
                b.add(NfListObject::Chain(Chain {
                    family: NfFamily::Bridge,
                    table: table.clone().into(),
                    name: "probe".into(),
                    newname: None,
                    handle: None,
                    _type: Some(NfChainType::Filter),
                    hook: Some(NfHook::Forward),
                    prio: Some(-200),
                    dev: None,
                    policy: Some(NfChainPolicy::Accept),
                }));
                b.add(NfListObject::Rule(Rule {
                    family: NfFamily::Bridge,
                    table: table.into(),
                    chain: "probe".into(),
                    expr: vec![Statement::Match(Match {
                        left: Expression::Named(NamedExpression::Meta(Meta {
                            key: MetaKey::Ibridgename,
                        })),
                        right: Expression::String(self.net.bridge.clone().into()),
                        op: Operator::EQ,
                    })]
                    .into(),
                    handle: None,
                    index: None,
                    comment: None,
                }));
                match self
                    .nft
                    .check(&to_nft_json(&b.to_nftables()), "probe bridge meta support")
                    .await
                {
                    Ok(()) => Ok(L2Match::Meta),
                    Err(NftError::Failed { stderr, .. })
                        if stderr.contains("Operation not supported")
                            || stderr.contains("No such file or directory") =>
                    {
                        Ok(L2Match::Addresses)
                    }
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    /// The ruleset config renders to, with the bridge match resolved against this kernel.
    pub async fn render(&self) -> Result<Ruleset, Error> {
        let l2 = self.l2_match().await?;
        self.load_ports().await?;
        Ok(self.render_current(l2))
    }

    /// The ruleset for an explicit bridge match, without asking the kernel.
    /// The stored port map is used as is (see [`Self::load_ports`]).
    pub fn render_with(&self, l2: L2Match) -> Ruleset {
        self.render_current(l2)
    }

    /// Replaces berth's tables in one transaction (with the port map as the file says now),
    /// then isolates the bridge's ports.
    pub async fn apply(&self) -> Result<Applied, Error> {
        self.nft.preflight("apply berth's ruleset")?;
        let ruleset = self.render().await?;
        let l2 = self.l2_match().await?;
        let start = Instant::now();
        self.nft
            .apply(
                &to_nft_json(&ruleset.apply_batch()),
                "apply berth's ruleset",
            )
            .await?;
        let elapsed = start.elapsed();
        if l2 == L2Match::Addresses && !self.isolate_ports && self.ports_file.is_none() {
            warn!(
                "without bridge meta, port isolation or a port map, tenants can reach each other over link-local IPv6 and raw Ethernet"
            );
        }
        let (isolated, isolation_error) = match self.isolate() {
            Ok(ports) => (ports, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        Ok(Applied {
            ruleset,
            l2,
            elapsed,
            isolated,
            isolation_error,
        })
    }

    fn isolate(&self) -> Result<Vec<String>, Error> {
        if !self.isolate_ports {
            return Ok(Vec::new());
        }
        ports::isolate_ports(&self.net.bridge).map_err(|source| Error::Ports {
            bridge: self.net.bridge.clone(),
            source,
        })
    }

    /// Canonical lines of the live tables (empty when both are absent).
    pub async fn live_lines(&self) -> Result<Vec<String>, Error> {
        let mut objects = Vec::new();
        for family in ["inet", "bridge"] {
            if let Some(o) = self.nft.list_table(family, &self.policy.table).await? {
                objects.extend(o);
            }
        }
        Ok(live_lines(&objects))
    }

    /// `None` when the live tables are what config renders, else the difference
    /// (`-` expected but missing, `+` live but not expected).
    pub async fn check(&self) -> Result<Option<String>, Error> {
        self.nft.preflight("read berth's ruleset")?;
        let ruleset = self.render().await?;
        let expected = expected_lines(&ruleset.objects);
        let live = self.live_lines().await?;
        Ok(diff(&expected, &live))
    }

    /// The live tables as nft prints them (empty string when absent).
    pub async fn show(&self) -> Result<String, Error> {
        self.nft.preflight("read berth's ruleset")?;
        let mut out = String::new();
        for family in ["inet", "bridge"] {
            match self.nft.list_table_text(family, &self.policy.table).await? {
                Some(t) => out.push_str(&t),
                None => out.push_str(&format!(
                    "# table {family} {} is not loaded\n",
                    self.policy.table
                )),
            }
        }
        Ok(out)
    }

    /// Drop counters per table family and reason (`drop_<reason>` chains), for `show` and
    /// metrics. Missing tables give no entries.
    pub async fn drop_counters(&self) -> Result<Vec<DropCounter>, Error> {
        self.nft.preflight("read berth's counters")?;
        let mut out = Vec::new();
        for family in ["inet", "bridge"] {
            let Some(objects) = self.nft.list_table(family, &self.policy.table).await? else {
                continue;
            };
            out.extend(crate::diff::drop_counters(family, &objects));
        }
        Ok(out)
    }

    /// Removes berth's two tables (nothing else) and clears port isolation on the bridge.
    pub async fn flush(&self) -> Result<(), Error> {
        self.nft.preflight("remove berth's ruleset")?;
        self.nft
            .apply(
                &to_nft_json(&delete_batch(&self.policy.table)),
                "remove berth's tables",
            )
            .await?;
        if self.isolate_ports {
            ports::release_ports(&self.net.bridge).map_err(|source| Error::Ports {
                bridge: self.net.bridge.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// `berth run netfilter`: apply, call `ready`, then re-apply whenever the live tables stop
    /// matching what was applied (polled every `check_interval_secs`, and right after any
    /// `nft monitor` event), until `shutdown` completes. The rules stay in place on exit.
    pub async fn watch(
        &self,
        shutdown: impl Future<Output = ()>,
        ready: impl FnOnce(),
    ) -> Result<(), Error> {
        let applied = self.apply().await?;
        log_applied(&applied, "applied");
        let mut last = applied.ruleset.clone();
        // The port map `last` was rendered from (apply loads the file first).
        let mut applied_state = self.current_state();
        let mut retry = Retry::new(self.ports_poll);
        STATS.port_map_pending.store(false, Ordering::Relaxed);
        let l2 = applied.l2;
        let mut last_problems: Vec<String> = Vec::new();
        let mut ports_ticker = tokio::time::interval(self.ports_poll);
        ports_ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let expected = expected_lines(&applied.ruleset.objects);
        let mut baseline = self.live_lines().await?;
        if let Some(d) = diff(&expected, &baseline) {
            // Another nft version may print the same ruleset differently; judge drift against
            // what the kernel listed right after our own apply.
            warn!(difference = %d, "live listing differs in form from the rendered ruleset");
        }
        ready();

        let mut monitor = if self.monitor {
            self.start_monitor()
        } else {
            None
        };
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = ticker.tick() => {}
                _ = ports_ticker.tick(), if self.ports_file.is_some() => {
                    match self.load_ports().await {
                        Ok(map) => {
                            if map.problems != last_problems {
                                for p in &map.problems {
                                    warn!(problem = %p, "port map entry not bound");
                                }
                                last_problems = map.problems;
                            }
                        }
                        // The last map loaded stays; a change not yet applied is still retried.
                        Err(e) => error!(error = %e, "cannot load the port map; keeping the last one"),
                    }
                    // Dirty until applied: compared with what the live ruleset was rendered
                    // from, not with the previous read, so a failed update is retried on later
                    // ticks even when the file does not change again.
                    let wanted = self.current_state();
                    if wanted == applied_state {
                        STATS.port_map_pending.store(false, Ordering::Relaxed);
                        continue;
                    }
                    STATS.port_map_pending.store(true, Ordering::Relaxed);
                    if !retry.due(Instant::now()) {
                        continue;
                    }
                    let start = Instant::now();
                    match self.update_ports(&last, l2).await {
                        Ok(rs) => {
                            info!(
                                ports = ?rs.bound_ports().unwrap_or_default(),
                                elapsed_ms = %format!("{:.1}", start.elapsed().as_secs_f64() * 1000.0),
                                "port bindings updated"
                            );
                            last = rs;
                            applied_state = wanted;
                            retry.succeeded();
                            STATS.port_map_pending.store(false, Ordering::Relaxed);
                            match self.live_lines().await {
                                Ok(l) => baseline = l,
                                Err(e) => error!(error = %e, "cannot read back berth's ruleset"),
                            }
                        }
                        Err(e) => {
                            STATS.port_map_failures.fetch_add(1, Ordering::Relaxed);
                            let wait = retry.failed(Instant::now());
                            error!(
                                error = %e,
                                retry_in_ms = wait.as_millis() as u64,
                                "cannot update port bindings; retrying"
                            );
                        }
                    }
                    continue;
                }
                line = next_line(&mut monitor) => {
                    if line.is_none() {
                        warn!("nft monitor ended; drift is detected by polling only");
                        monitor = None;
                    } else {
                        drain(&mut monitor).await;
                    }
                }
            }
            match self.live_lines().await {
                Ok(live) => {
                    if let Some(d) = diff(&baseline, &live) {
                        warn!(difference = %d, "berth's ruleset drifted; re-applying");
                        match self.apply().await {
                            Ok(a) => {
                                log_applied(&a, "re-applied");
                                last = a.ruleset.clone();
                                applied_state = self.current_state();
                                match self.live_lines().await {
                                    Ok(l) => baseline = l,
                                    Err(e) => {
                                        error!(error = %e, "cannot read back berth's ruleset")
                                    }
                                }
                            }
                            Err(e) => {
                                STATS.reapply_failures.fetch_add(1, Ordering::Relaxed);
                                error!(error = %e, "cannot re-apply berth's ruleset")
                            }
                        }
                        continue;
                    }
                }
                Err(e) => error!(error = %e, "cannot read berth's ruleset"),
            }
            match self.isolate() {
                Ok(ports) if !ports.is_empty() => {
                    info!(ports = ?ports, "isolated new bridge ports")
                }
                Ok(_) => {}
                Err(e) => error!(error = %e, "cannot isolate bridge ports"),
            }
        }
        info!("netfilter watch stopped; berth's ruleset stays in place");
        Ok(())
    }

    fn start_monitor(&self) -> Option<MonitorLines> {
        match self.nft.monitor() {
            Ok(mut child) => {
                let stdout = child.stdout.take()?;
                Some(MonitorLines {
                    _child: child,
                    lines: BufReader::new(stdout).lines(),
                })
            }
            Err(e) => {
                warn!(error = %e, "cannot start nft monitor; drift is detected by polling only");
                None
            }
        }
    }
}

/// How [`Firewall::watch`] fared in this process, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WatchStats {
    /// Port map updates that failed to apply (each attempt, retries included).
    pub port_map_failures: u64,
    /// A loaded port map is not in the live ruleset yet (its update failed or waits to retry).
    pub port_map_pending: bool,
    /// Re-applies after drift that failed.
    pub reapply_failures: u64,
}

struct Stats {
    port_map_failures: AtomicU64,
    port_map_pending: AtomicBool,
    reapply_failures: AtomicU64,
}

static STATS: Stats = Stats {
    port_map_failures: AtomicU64::new(0),
    port_map_pending: AtomicBool::new(false),
    reapply_failures: AtomicU64::new(0),
};

/// This process's watch statistics (one watch runs per process).
pub fn watch_stats() -> WatchStats {
    WatchStats {
        port_map_failures: STATS.port_map_failures.load(Ordering::Relaxed),
        port_map_pending: STATS.port_map_pending.load(Ordering::Relaxed),
        reapply_failures: STATS.reapply_failures.load(Ordering::Relaxed),
    }
}

/// The longest wait between two attempts at a port map update that keeps failing.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Exponential backoff for a failing port map update: the first retry one poll interval after
/// the failure, doubling up to [`RETRY_MAX`]; a success starts over.
#[derive(Debug)]
struct Retry {
    first: Duration,
    next_wait: Duration,
    not_before: Option<Instant>,
}

impl Retry {
    fn new(first: Duration) -> Self {
        let first = first.min(RETRY_MAX);
        Self {
            first,
            next_wait: first,
            not_before: None,
        }
    }

    fn due(&self, now: Instant) -> bool {
        self.not_before.is_none_or(|t| now >= t)
    }

    /// Records a failure at `now`; returns how long until the next attempt.
    fn failed(&mut self, now: Instant) -> Duration {
        let wait = self.next_wait;
        self.not_before = Some(now + wait);
        self.next_wait = (wait * 2).min(RETRY_MAX);
        wait
    }

    fn succeeded(&mut self) {
        self.next_wait = self.first;
        self.not_before = None;
    }
}

struct MonitorLines {
    _child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

/// The next monitor line; pending forever without a monitor.
async fn next_line(m: &mut Option<MonitorLines>) -> Option<String> {
    match m {
        Some(m) => m.lines.next_line().await.ok().flatten(),
        None => std::future::pending().await,
    }
}

/// Swallows the rest of a burst of events (an apply is dozens of lines).
async fn drain(m: &mut Option<MonitorLines>) {
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(50), next_line(m)).await {}
}

fn log_applied(a: &Applied, what: &str) {
    info!(
        table = %a.ruleset.table,
        rules = a.ruleset.rule_count(),
        elements = a.ruleset.element_count(),
        bridge_match = ?a.l2,
        elapsed_ms = %format!("{:.1}", a.elapsed.as_secs_f64() * 1000.0),
        "{what} berth's ruleset"
    );
    if !a.isolated.is_empty() {
        info!(ports = ?a.isolated, "isolated bridge ports");
    }
    if let Some(e) = &a.isolation_error {
        warn!(error = %e, "bridge ports not isolated; tenant separation relies on the bridge table");
    }
}

#[cfg(test)]
mod tests {
    use super::{RETRY_MAX, Retry};
    use std::time::{Duration, Instant};

    #[test]
    fn retry_backs_off_to_a_cap_and_starts_over_after_success() {
        let t0 = Instant::now();
        let mut r = Retry::new(Duration::from_millis(500));
        assert!(r.due(t0), "nothing failed yet: due at once");
        assert_eq!(r.failed(t0), Duration::from_millis(500));
        assert!(!r.due(t0 + Duration::from_millis(499)));
        assert!(r.due(t0 + Duration::from_millis(500)));
        assert_eq!(r.failed(t0), Duration::from_secs(1));
        assert_eq!(r.failed(t0), Duration::from_secs(2));
        for _ in 0..10 {
            r.failed(t0);
        }
        assert_eq!(r.failed(t0), RETRY_MAX);
        assert!(!r.due(t0 + RETRY_MAX - Duration::from_millis(1)));
        r.succeeded();
        assert!(r.due(t0), "a success clears the wait");
        assert_eq!(r.failed(t0), Duration::from_millis(500));
    }
}
