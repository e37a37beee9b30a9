//! `berth run [gateway|dns|netfilter|node|front]…`: brings up the user plane in dependency
//! order. `node` and `front` are the cluster roles (docs/CLUSTER.md, `commands/cluster.rs`).
//!
//! Order: netfilter first (a gateway must never serve tenants whose egress filter failed to
//! apply), then the resolver, then the gateway. Each component's `run_daemon` reports readiness
//! on a oneshot; systemd hears READY=1 only when every requested component really serves.
//!
//! Which process does what in the split deployment (one unit per component) is decided here:
//! only a process running the gateway touches the store and Docker (tenant network, reconcile,
//! the published hosts file); a resolver without the gateway follows that file; each process
//! serves metrics on its own endpoint (`config::MetricsConfig`). Deliberately not here: any
//! component logic — this file only sequences, signals and serves `/metrics`.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::commands::{self, Exit};
use crate::config::Config;

#[derive(clap::Args)]
pub struct Args {
    /// Components to run, started in the order netfilter, dns, node, gateway/front. None named:
    /// netfilter, dns and gateway on a single host; netfilter, dns, node and front when
    /// `[cluster] node` is set.
    #[arg(value_enum)]
    components: Vec<Component>,
    /// First-five-minutes mode: build the tenant image if missing, create account `demo`
    /// (password printed once) and its first server, print the ssh/sftp commands, then run.
    #[arg(long)]
    demo: bool,
}

impl Args {
    /// Whether this process will serve SSH (gateway, node or front; all when none is named):
    /// `main` then caps malloc arenas before the runtime starts (`gateway::memory`).
    pub fn serves_ssh(&self) -> bool {
        self.components.is_empty()
            || self
                .components
                .iter()
                .any(|c| matches!(c, Component::Gateway | Component::Node | Component::Front))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Component {
    Gateway,
    Dns,
    Netfilter,
    /// This host's hop endpoint, registration and heartbeat in a cluster.
    Node,
    /// Client SSH relayed to each server's node.
    Front,
}

impl Component {
    fn name(self) -> &'static str {
        match self {
            Component::Gateway => "gateway",
            Component::Dns => "dns",
            Component::Netfilter => "netfilter",
            Component::Node => "node",
            Component::Front => "front",
        }
    }
}

/// How long a component may take to report ready before `run` gives up on it.
const START_TIMEOUT: Duration = Duration::from_secs(120);

pub async fn run(path: Option<&Path>, args: Args) -> Result<ExitCode> {
    let cfg = commands::load_config(path)?;
    let wanted = order(&args.components, !cfg.cluster.node.is_empty());
    if wanted.contains(&Component::Gateway) && wanted.contains(&Component::Front) {
        return Err(Exit {
            code: 64,
            message: "gateway and front both serve [ssh] listen: a cluster host runs front (it serves its own node's servers without a hop)".into(),
        }
        .into());
    }
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone())?;

    if args.demo {
        crate::commands::demo::prepare(&cfg).await?;
    }
    // The process that owns this host's tenants: the single-host gateway or a cluster node.
    let with_gateway = wanted.contains(&Component::Gateway) || wanted.contains(&Component::Node);
    if with_gateway {
        // A resolver alone needs no bridge (it binds with IP_FREEBIND) and has no store.
        ensure_tenant_network(&cfg).await;
        if !cfg.publish.hosts_file.is_empty() {
            tokio::spawn(crate::hostsfile::publish(cfg.clone(), shutdown.clone()));
        }
        // netfilter's port map (per-port address binding); see src/portmap.rs.
        if !cfg.netfilter.ports_file.is_empty() {
            tokio::spawn(crate::portmap::publish(cfg.clone(), shutdown.clone()));
        }
    }
    let parts = crate::metrics_http::Parts {
        gateway: with_gateway || wanted.contains(&Component::Front),
        dns: wanted.contains(&Component::Dns),
        netfilter: wanted.contains(&Component::Netfilter),
    };
    if parts.netfilter {
        let fw = commands::netfilter::firewall(&cfg)?;
        let every = Duration::from_secs(cfg.metrics.textfile_interval_secs);
        tokio::spawn(crate::metrics_http::poll_netfilter(
            fw,
            every,
            shutdown.clone(),
        ));
    }
    let metrics = spawn_metrics(&cfg, parts, shutdown.clone()).await?;

    let mut running: Vec<(Component, JoinHandle<Result<()>>)> = Vec::new();
    let mut failed = false;
    for comp in wanted.iter().copied() {
        if shutdown.is_cancelled() {
            break;
        }
        match start(comp, &cfg, path, with_gateway, shutdown.clone()).await {
            Ok(handle) => {
                tracing::info!(component = comp.name(), "component ready");
                running.push((comp, handle));
            }
            Err(e) => {
                failed = true;
                eprintln!(
                    "berth: {} failed to start: {}",
                    comp.name(),
                    commands::format_error(&e)
                );
                if comp == Component::Netfilter && wanted.contains(&Component::Gateway) {
                    // Never serve tenants whose egress filter is not in place.
                    eprintln!("berth: not starting the gateway without its egress filter");
                    shutdown.cancel();
                    break;
                }
            }
        }
    }
    if running.is_empty() {
        shutdown.cancel();
        if let Some(m) = metrics {
            let _ = m.await;
        }
        return Err(Exit {
            code: 1,
            message: "no component could start".into(),
        }
        .into());
    }
    let names: Vec<&str> = running.iter().map(|(c, _)| c.name()).collect();
    notify_ready(&format!("serving: {}", names.join(", ")));
    spawn_watchdog(shutdown.clone());

    // Run until SIGTERM or until a component stops on its own (an error while serving).
    let mut handles = running;
    let mut exit_err = None;
    while !handles.is_empty() {
        let (res, idx, _) = futures::future::select_all(handles.iter_mut().map(|(_, h)| h)).await;
        let (comp, _) = handles.remove(idx);
        match res {
            Ok(Ok(())) if shutdown.is_cancelled() => {}
            Ok(Ok(())) => {
                tracing::warn!(component = comp.name(), "component stopped unexpectedly");
                exit_err.get_or_insert(format!("{} stopped unexpectedly", comp.name()));
                shutdown.cancel();
            }
            Ok(Err(e)) => {
                let msg = format!("{}: {}", comp.name(), commands::format_error(&e));
                eprintln!("berth: {msg}");
                exit_err.get_or_insert(msg);
                shutdown.cancel();
            }
            Err(join) => {
                let msg = format!("{} crashed: {join}", comp.name());
                eprintln!("berth: {msg}");
                exit_err.get_or_insert(msg);
                shutdown.cancel();
            }
        }
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    if let Some(m) = metrics {
        let _ = m.await;
    }
    match exit_err {
        Some(message) => Err(Exit { code: 1, message }.into()),
        None if failed => Err(Exit {
            code: 1,
            message: "some components failed to start".into(),
        }
        .into()),
        None => Ok(ExitCode::SUCCESS),
    }
}

/// First in the start order: the resolver binds the tenant gateway address, which exists once
/// the tenant network's bridge does. Docker being down is not fatal here — the resolver binds
/// when the address appears and the gateway reports Docker outages per login.
async fn ensure_tenant_network(cfg: &Config) {
    let result = async {
        let store = tenants::Store::connect(&cfg.database_url()).await?;
        let prov = tenants::Provisioner::connect(&cfg.network, &cfg.tenants, store).await?;
        prov.ensure_network().await?;
        // Start-up reconcile: report, never delete. Missing containers are recreated on demand
        // (and, on a cluster node, by its healing loop: `tenants::provision::heal`).
        // On a cluster node only its own servers (and unplaced ones) are this engine's.
        let node = Some(cfg.cluster.node.as_str()).filter(|n| !n.is_empty());
        let report = prov.reconcile_on(node).await?;
        tracing::info!(
            present = report.present.len(),
            missing = report.missing.len(),
            stopped = report.stopped.len(),
            unknown = report.unknown.len(),
            "reconcile"
        );
        for c in &report.unknown {
            tracing::warn!(container = %c.name, reason = %c.reason, "berth-labelled container unknown to the store (left alone)");
        }
        anyhow::Ok(())
    }
    .await;
    match result {
        Ok(()) => tracing::info!(network = %cfg.network.name, "tenant network ready"),
        Err(e) => tracing::warn!(
            network = %cfg.network.name,
            error = %commands::format_error(&e),
            "cannot ensure the tenant network yet"
        ),
    }
}

/// Dedup and put in start order; none requested means the host's default set.
fn order(requested: &[Component], cluster: bool) -> Vec<Component> {
    let all = [
        Component::Netfilter,
        Component::Dns,
        Component::Node,
        Component::Gateway,
        Component::Front,
    ];
    let default = |c: &Component| match c {
        Component::Node | Component::Front => cluster,
        Component::Gateway => !cluster,
        Component::Netfilter | Component::Dns => true,
    };
    all.into_iter()
        .filter(|c| {
            if requested.is_empty() {
                default(c)
            } else {
                requested.contains(c)
            }
        })
        .collect()
}

/// Spawns one component and waits until it is ready (or fails, or times out).
async fn start(
    comp: Component,
    cfg: &Config,
    path: Option<&Path>,
    with_gateway: bool,
    shutdown: CancellationToken,
) -> Result<JoinHandle<Result<()>>> {
    let (ready_tx, ready_rx) = oneshot::channel();
    let cfg = cfg.clone();
    // Where the config came from, for a reload on SIGHUP (netfilter re-reads it).
    let config_path = path.map(Path::to_path_buf);
    let mut handle = tokio::spawn(async move {
        match comp {
            Component::Gateway => commands::gateway::run_daemon(&cfg, shutdown, ready_tx).await,
            Component::Dns => {
                let feed = commands::dns::ZoneFeed::for_process(&cfg, with_gateway);
                commands::dns::run_daemon(&cfg, feed, shutdown, ready_tx).await
            }
            Component::Netfilter => {
                commands::netfilter::run_daemon(&cfg, config_path, shutdown, ready_tx).await
            }
            Component::Node => commands::cluster::run_node(&cfg, shutdown, ready_tx).await,
            Component::Front => commands::cluster::run_front(&cfg, shutdown, ready_tx).await,
        }
    });
    tokio::select! {
        ready = ready_rx => match ready {
            Ok(()) => Ok(handle),
            // The sender was dropped without a signal: the task ended; report how.
            Err(_) => match handle.await {
                Ok(Err(e)) => Err(e),
                Ok(Ok(())) => anyhow::bail!("stopped before it was ready"),
                Err(e) => anyhow::bail!("crashed while starting: {e}"),
            },
        },
        res = &mut handle => match res {
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) => anyhow::bail!("stopped before it was ready"),
            Err(e) => anyhow::bail!("crashed while starting: {e}"),
        },
        _ = tokio::time::sleep(START_TIMEOUT) => {
            handle.abort();
            anyhow::bail!("not ready after {}s", START_TIMEOUT.as_secs())
        }
    }
}

fn spawn_signal_handler(shutdown: CancellationToken) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?;
    // SIGHUP is `systemctl reload`: components that reload (dns blocklist, netfilter config)
    // listen for it
    // themselves; this listener guarantees the default action (terminate) never applies.
    let mut hup = signal(SignalKind::hangup()).context("cannot install SIGHUP handler")?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!(signal = "SIGHUP", "reload requested");
        }
    });
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
            _ = int.recv() => tracing::info!(signal = "SIGINT", "shutting down"),
        }
        shutdown.cancel();
    });
    Ok(())
}

fn notify_ready(status: &str) {
    // Outside systemd NOTIFY_SOCKET is unset and this is a no-op.
    if let Err(e) = sd_notify::notify(
        false,
        &[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(status),
        ],
    ) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// Pings systemd's watchdog at half its interval while the runtime is alive.
fn spawn_watchdog(shutdown: CancellationToken) {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let every = Duration::from_micros(usec / 2);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(every) => {
                    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
                }
            }
        }
    });
}

/// This process's metrics endpoint (see `config::MetricsConfig`): `/metrics` (Prometheus text)
/// and `/healthz` on `[metrics] listen` when it runs the gateway, on `[metrics] dns_listen` when
/// it runs the resolver without the gateway; a netfilter-only process (its unit allows no IP
/// socket) rewrites `[metrics] netfilter_textfile` instead.
async fn spawn_metrics(
    cfg: &Config,
    parts: crate::metrics_http::Parts,
    shutdown: CancellationToken,
) -> Result<Option<JoinHandle<()>>> {
    let (addr, key) = if parts.gateway {
        (&cfg.metrics.listen, "[metrics] listen")
    } else if parts.dns {
        (&cfg.metrics.dns_listen, "[metrics] dns_listen")
    } else {
        if cfg.metrics.netfilter_textfile.is_empty() {
            return Ok(None);
        }
        let path = std::path::PathBuf::from(&cfg.metrics.netfilter_textfile);
        let every = Duration::from_secs(cfg.metrics.textfile_interval_secs);
        tracing::info!(file = %path.display(), "metrics textfile");
        return Ok(Some(tokio::spawn(crate::metrics_http::write_textfile(
            path, parts, every, shutdown,
        ))));
    };
    if addr.is_empty() {
        return Ok(None);
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr} ({key})"))?;
    tracing::info!(listen = %addr, "metrics endpoint up");
    Ok(Some(tokio::spawn(crate::metrics_http::serve(
        listener, parts, shutdown,
    ))))
}
