//! The `gateway` component of `berth run`: opens the store and
//! Docker, loads host keys, binds `[ssh] listen`, serves until `shutdown`, then drains.

use std::sync::atomic::{AtomicI8, Ordering};

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
    tokio::spawn(watch_engine(provisioner.clone(), shutdown.clone()));
    let provisioner_states = provisioner.clone();
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
        let stop = shutdown.clone();
        let states = provisioner_states
            .watch_statuses(async move { stop.cancelled().await })
            .await;
        let sources = gateway::control::Sources {
            live: shared.live.clone(),
            states: Some(states),
        };
        tokio::spawn(gateway::control::serve(sources, control, shutdown.clone()));
    }
    let _ = ready.send(());
    gateway::serve(shared, listeners, shutdown)
        .await
        .context("gateway")?;
    Ok(())
}

/// How often the engine's isolation is asked again (a dockerd restarted with other flags).
const ENGINE_POLL: std::time::Duration = std::time::Duration::from_secs(60);

/// The engine's isolation as last asked: [`ENGINE_UNKNOWN`], 0 (container root is host root),
/// 1 (`--userns-remap`) or 2 (rootless engine).
static ENGINE: AtomicI8 = AtomicI8::new(ENGINE_UNKNOWN);
const ENGINE_UNKNOWN: i8 = -1;

/// Asks the engine how it isolates containers now and every [`ENGINE_POLL`], logging changes.
async fn watch_engine(prov: tenants::Provisioner, shutdown: CancellationToken) {
    loop {
        let asked = prov.engine_isolation().await;
        let now = match &asked {
            Ok(i) if i.rootless => 2,
            Ok(i) if i.userns => 1,
            Ok(_) => 0,
            Err(e) => {
                tracing::warn!(error = %e, "cannot ask docker how it isolates containers");
                ENGINE_UNKNOWN
            }
        };
        let before = ENGINE.swap(now, Ordering::Relaxed);
        if let Ok(i) = asked
            && before != now
        {
            tracing::info!(engine = i.as_str(), "docker engine: {}", i.describe());
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(ENGINE_POLL) => {}
        }
    }
}

/// Appends this component's Prometheus metrics (text format).
pub fn render_metrics(out: &mut String) {
    gateway::metrics::render(out);
    out.push_str(&render_engine(ENGINE.load(Ordering::Relaxed)));
}

/// The engine gauges, through a recorder of their own built per read.
fn render_engine(state: i8) -> String {
    use metrics::{Key, Level, Metadata, Recorder as _};
    const META: Metadata<'static> =
        Metadata::new(module_path!(), Level::INFO, Some(module_path!()));
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let gauge = |name: &'static str, help: &'static str, v: bool| {
        recorder.describe_gauge(name.into(), None, help.into());
        recorder
            .register_gauge(&Key::from_static_name(name), &META)
            .set(f64::from(u8::from(v)));
    };
    gauge(
        "berth_engine_info_up",
        "1 when the last question to docker about how it isolates containers was answered.",
        state != ENGINE_UNKNOWN,
    );
    gauge(
        "berth_engine_user_namespaced",
        "1 when a tenant container's uid 0 is an unprivileged host uid (dockerd --userns-remap or a rootless engine), 0 when it is host uid 0 or unknown.",
        state > 0,
    );
    recorder.handle().render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_gauges_follow_the_state() {
        let unknown = render_engine(ENGINE_UNKNOWN);
        assert!(unknown.contains("berth_engine_info_up 0"), "{unknown}");
        assert!(
            unknown.contains("berth_engine_user_namespaced 0"),
            "{unknown}"
        );
        let plain = render_engine(0);
        assert!(plain.contains("berth_engine_info_up 1"), "{plain}");
        assert!(plain.contains("berth_engine_user_namespaced 0"), "{plain}");
        for state in [1, 2] {
            let text = render_engine(state);
            assert!(text.contains("berth_engine_user_namespaced 1"), "{text}");
        }
    }
}
