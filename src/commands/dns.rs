//! The `dns` component of `berth run`: binds `[dns] listen`, feeds the local zone, reloads the
//! blocklist on SIGHUP, serves until shutdown.
//!
//! The local zone's feed depends on the process ([`ZoneFeed`]): next to the gateway it follows
//! the tenants crate (Docker events) directly; alone (`berth-dns.service`, which has neither the
//! store nor the Docker socket) it follows the hosts file the gateway's process publishes and
//! never opens the store. The resolver itself lives in the `dns` crate and knows nothing about
//! Docker; this file is the glue. If the feed is unavailable the resolver still serves
//! (forwarding works, the local zone keeps its last state) and the feed retries in the
//! background.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, Result};
use ipnet::IpNet;
use tenants::ServerId;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// The running resolver, for `render_metrics`.
static SERVICE: OnceLock<Mutex<Option<dns::Service>>> = OnceLock::new();

fn service_slot() -> &'static Mutex<Option<dns::Service>> {
    SERVICE.get_or_init(|| Mutex::new(None))
}

/// The tenant subnet(s): always allowed to query.
pub fn tenant_nets(cfg: &Config) -> Vec<IpNet> {
    let mut nets = vec![IpNet::V4(cfg.network.subnet)];
    if let Some(v6) = cfg.network.subnet6 {
        nets.push(IpNet::V6(v6));
    }
    nets
}

/// Where the local zone's addresses come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZoneFeed {
    /// The store and Docker events (the process also runs the gateway).
    Tenants,
    /// The hosts file the gateway's process publishes (`[publish] hosts_file`).
    HostsFile(PathBuf),
    /// No local names (`[publish] hosts_file = ""` in a resolver-only process).
    Off,
}

impl ZoneFeed {
    /// The feed for a process that runs the resolver, with or without the gateway beside it.
    pub fn for_process(cfg: &Config, with_gateway: bool) -> Self {
        match (with_gateway, cfg.publish.hosts_file.as_str()) {
            (true, _) => ZoneFeed::Tenants,
            (false, "") => ZoneFeed::Off,
            (false, path) => ZoneFeed::HostsFile(PathBuf::from(path)),
        }
    }
}

/// Runs the component until `shutdown` fires; sends on `ready` once it really serves.
pub async fn run_daemon(
    cfg: &Config,
    feed: ZoneFeed,
    shutdown: CancellationToken,
    ready: oneshot::Sender<()>,
) -> Result<()> {
    let zone = dns::LocalZone::new();
    let svc = dns::Service::new(&cfg.dns, &tenant_nets(cfg), zone.clone())
        .context("cannot start the dns resolver")?;
    // IP_FREEBIND: binding the tenant gateway address works before the bridge exists.
    let listeners = cfg
        .dns
        .listen
        .iter()
        .map(|a| dns::bind(*a))
        .collect::<Result<Vec<_>, _>>()
        .context("cannot bind [dns] listen")?;
    if let Ok(mut slot) = service_slot().lock() {
        *slot = Some(svc.clone());
    }

    match &feed {
        ZoneFeed::Tenants => {
            tokio::spawn(feed_zone_from_tenants(cfg.clone(), zone, shutdown.clone()));
        }
        ZoneFeed::HostsFile(path) => {
            tokio::spawn(crate::hostsfile::follow(
                path.clone(),
                zone,
                shutdown.clone(),
            ));
        }
        ZoneFeed::Off => {
            tracing::warn!(
                "[publish] hosts_file is empty: the local zone stays empty in a resolver without the gateway"
            )
        }
    }
    spawn_sighup_reload(svc.clone(), shutdown.clone());

    tracing::info!(
        listen = ?cfg.dns.listen,
        upstreams = ?cfg.dns.upstreams,
        domain = %cfg.dns.domain,
        feed = ?feed,
        "dns resolver serving"
    );
    let _ = ready.send(());
    let res = svc.serve(listeners, shutdown).await;
    if let Ok(mut slot) = service_slot().lock() {
        *slot = None;
    }
    res.context("dns resolver failed")
}

/// Applies every address map a watch channel publishes to the local zone (the contract with
/// `tenants::Provisioner::watch_addresses`), with each server's IPv6 address added when the
/// tenant network has IPv6 (AAAA), until the sender is dropped.
async fn follow_tenant_addresses(
    cfg: &Config,
    p: &tenants::Provisioner,
    zone: dns::LocalZone,
    mut rx: watch::Receiver<BTreeMap<ServerId, IpAddr>>,
) {
    loop {
        let v4 = rx.borrow_and_update().clone();
        let map = crate::hostsfile::with_ipv6(cfg, p, v4).await;
        tracing::debug!(servers = map.len(), "local zone updated");
        zone.replace_addrs(map);
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Connects to the store and Docker (retrying every 5 s while either is down), then follows the
/// running servers' addresses through Docker events.
async fn feed_zone_from_tenants(cfg: Config, zone: dns::LocalZone, shutdown: CancellationToken) {
    let Some(p) = crate::hostsfile::provisioner_when_ready(&cfg, "dns local zone", &shutdown).await
    else {
        return;
    };
    let stop = shutdown.clone();
    let rx = p
        .watch_addresses(async move { stop.cancelled().await })
        .await;
    tracing::info!(
        servers = rx.borrow().len(),
        "dns local zone following docker"
    );
    tokio::select! {
        _ = follow_tenant_addresses(&cfg, &p, zone, rx) => {}
        _ = shutdown.cancelled() => {}
    }
}

fn spawn_sighup_reload(svc: dns::Service, shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; blocklist reloads only on file change");
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                r = hup.recv() => if r.is_none() { return },
                _ = shutdown.cancelled() => return,
            }
            match svc.reload_blocklist() {
                Ok(n) => tracing::info!(domains = n, "blocklist reloaded on SIGHUP"),
                Err(e) => {
                    tracing::warn!(error = %e, "blocklist reload failed; keeping the previous list")
                }
            }
        }
    });
}

/// Appends this component's Prometheus metrics (text format).
pub fn render_metrics(out: &mut String) {
    let svc = service_slot().lock().ok().and_then(|s| s.clone());
    if let Some(svc) = svc {
        svc.render_metrics(out);
    }
}
