//! The `gateway` component of `berth run`: opens the store and
//! Docker, loads host keys, binds `[ssh] listen`, serves until `shutdown`, then drains.

use anyhow::{Context, Result};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// Runs the component until `shutdown` fires; sends on `ready` once it really serves.
pub async fn run_daemon(
    cfg: &Config,
    shutdown: CancellationToken,
    ready: oneshot::Sender<()>,
) -> Result<()> {
    let ssh = cfg.gateway_config();
    ssh.validate().map_err(anyhow::Error::msg)?;
    gateway::recording::prepare_dir(&ssh.recording).with_context(|| {
        format!(
            "gateway: cannot create the recordings directory {} (recording.dir)",
            ssh.recording.dir
        )
    })?;
    let store = tenants::Store::connect(&cfg.database_url())
        .await
        .context("gateway: cannot open the tenant store")?;
    // Docker being down at start is not fatal: sessions report it per login and recover.
    let provisioner = tenants::Provisioner::connect(&cfg.network, &cfg.tenants, store.clone())
        .await
        .context("gateway: cannot set up the docker client")?;
    let keys = gateway::hostkeys::load_or_generate(&cfg.state_dir, &ssh.auth.host_keys)
        .context("gateway: host keys")?;
    for fp in gateway::hostkeys::fingerprints(&keys) {
        tracing::info!(key = %fp, "gateway host key");
    }
    let mut listeners = Vec::new();
    // Socket activation (systemd/berth-gateway.socket) replaces [ssh] listen.
    for l in crate::commands::activation::inherited_tcp_listeners()? {
        let addr = l.local_addr().context("gateway: inherited socket")?;
        tracing::info!(%addr, "gateway listening (socket-activated)");
        listeners.push(tokio::net::TcpListener::from_std(l).context("gateway: inherited socket")?);
    }
    let activated = !listeners.is_empty();
    for addr in ssh.listen.iter().filter(|_| !activated) {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("gateway: cannot listen on {addr} (ssh.listen)"))?;
        tracing::info!(%addr, "gateway listening");
        listeners.push(l);
    }
    let shared = gateway::build(ssh, store, provisioner, keys, None);
    tokio::spawn(gateway::recording::retention(
        shared.clone(),
        shutdown.clone(),
    ));
    if shared.cfg.control_socket != "off" {
        let path = std::path::Path::new(&shared.cfg.control_socket);
        let control = gateway::control::bind(path).with_context(|| {
            format!(
                "gateway: cannot bind the control socket {} (ssh.control_socket)",
                path.display()
            )
        })?;
        tokio::spawn(gateway::control::serve(
            shared.live.clone(),
            control,
            shutdown.clone(),
        ));
    }
    let _ = ready.send(());
    gateway::serve(shared, listeners, shutdown)
        .await
        .context("gateway")?;
    Ok(())
}

/// Appends this component's Prometheus metrics (text format).
pub fn render_metrics(out: &mut String) {
    gateway::metrics::render(out);
}
