//! The cluster components of `berth run` (docs/CLUSTER.md): `node` (this host's hop endpoint,
//! its registration with the pinned hop host key, and its heartbeat) and `front` (client SSH
//! on `[ssh] listen`, authenticated as on a single host, relayed to the server's node).
//!
//! Only the glue between the binary's config and the `hop` crate lives here.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use gateway::Backend;
use gateway::tenants_backend::TenantsBackend;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// The node's hop host key and the front's hop client key, in the state dir.
const HOP_HOST_KEY: &str = "hop_host_ed25519_key";
pub(crate) const HOP_CLIENT_KEY: &str = "hop_client_ed25519_key";

fn need_cluster(cfg: &Config, what: &str) -> Result<()> {
    if cfg.cluster.node.is_empty() {
        bail!(
            "{what} needs [cluster] node (this host's node name) and a PostgreSQL database_url; see docs/CLUSTER.md"
        );
    }
    Ok(())
}

/// How long the engine may take to say its swarm address.
const ENGINE_TIMEOUT: Duration = Duration::from_secs(10);

/// The node's hop endpoint address and where it came from: `[cluster] advertise` when set
/// (it always wins), else this engine's swarm address (`Swarm.NodeAddr` of `docker info`,
/// through the same Docker endpoint the node drives its tenants with) on `[cluster] hop_port`.
pub async fn hop_address(cfg: &Config) -> Result<(String, String)> {
    if !cfg.cluster.advertise.is_empty() {
        return Ok((cfg.cluster.advertise.clone(), "cluster.advertise".into()));
    }
    let asked = async {
        let (docker, endpoint) = tenants::provision::connect_docker(&cfg.tenants).await?;
        let addr = tenants::provision::swarm_node_addr(&docker)
            .await
            .with_context(|| format!("cannot read docker's info at {endpoint}"))?;
        anyhow::Ok((addr, endpoint))
    };
    let (addr, endpoint) = tokio::time::timeout(ENGINE_TIMEOUT, asked)
        .await
        .map_err(|_| anyhow::anyhow!("docker did not answer within {ENGINE_TIMEOUT:?}"))
        .and_then(|r| r)
        .context(
            "cluster.advertise is empty and the engine's swarm address cannot be read; set \
             [cluster] advertise = \"ADDRESS:PORT\" (or BERTH_CLUSTER_ADVERTISE)",
        )?;
    let Some(addr) = addr else {
        bail!(
            "cluster.advertise is empty and the engine at {endpoint} is not an active swarm \
             member, so there is no swarm address to derive it from; set [cluster] advertise = \
             \"ADDRESS:PORT\" (or BERTH_CLUSTER_ADVERTISE)"
        );
    };
    let ip: std::net::IpAddr = addr.parse().with_context(|| {
        format!("the engine at {endpoint} reports swarm address {addr:?}, which is not an IP address; set [cluster] advertise")
    })?;
    let hop = std::net::SocketAddr::new(ip, cfg.cluster.hop_port).to_string();
    Ok((
        hop,
        format!(
            "the swarm address of the engine at {endpoint}, port cluster.hop_port ({})",
            cfg.cluster.hop_port
        ),
    ))
}

async fn provisioner(cfg: &Config, store: &tenants::Store) -> Result<tenants::Provisioner> {
    tenants::Provisioner::connect(&cfg.network, &cfg.tenants, store.clone())
        .await
        .context("cannot set up the docker client")
}

async fn local_backend(cfg: &Config, store: &tenants::Store) -> Result<Arc<dyn Backend>> {
    let provisioner = provisioner(cfg, store).await?;
    Ok(Arc::new(TenantsBackend::new(
        store.clone(),
        provisioner,
        &cfg.ssh,
    )))
}

fn hop_key(cfg: &Config, file: &str) -> Result<russh::keys::PrivateKey> {
    let path = cfg.state_dir.join(file);
    gateway::hostkeys::load_or_generate_one(&path, gateway::hostkeys::KeyKind::Ed25519, true)
        .with_context(|| format!("hop key {}", path.display()))
}

/// `berth run node`: registers this node (pinning its hop host key on first start), keeps it
/// marked alive, and serves the hop endpoint on `[cluster] advertise` (or the address
/// [`hop_address`] derives on a swarm).
pub async fn run_node(
    cfg: &Config,
    shutdown: CancellationToken,
    ready: oneshot::Sender<()>,
) -> Result<()> {
    need_cluster(cfg, "the node component")?;
    let (advertise, from) = hop_address(cfg).await.context("node")?;
    let advertise = advertise.as_str();
    tracing::info!(node = %cfg.cluster.node, %advertise, from = %from, "hop endpoint address");
    let store = tenants::Store::connect(&cfg.database_url())
        .await
        .context("node: cannot open the tenant store")?;
    let key = hop_key(cfg, HOP_HOST_KEY)?;
    let line = key
        .public_key()
        .to_openssh()
        .context("node: encode the hop host key")?;
    let node = &cfg.cluster.node;
    store
        .register_node(node, advertise, &line)
        .await
        .with_context(|| format!("node: cannot register node {node}"))?;
    let listener = tokio::net::TcpListener::bind(advertise)
        .await
        .with_context(|| format!("node: cannot listen on {advertise} ({from})"))?;
    tracing::info!(node = %node, %advertise, "hop endpoint listening");

    let beat = Duration::from_secs((cfg.cluster.node_timeout_secs / 3).max(1));
    let heartbeat = {
        let store = store.clone();
        let node = node.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(beat) => {}
                }
                if let Err(e) = store.node_seen(&node).await {
                    tracing::warn!(node = %node, error = %e, "cannot mark this node alive");
                }
            }
        })
    };

    let provisioner = provisioner(cfg, &store).await?;
    let healer = spawn_heal(
        provisioner.clone(),
        node.clone(),
        cfg.cluster.heal_interval_secs,
        shutdown.clone(),
    );
    let local: Arc<dyn Backend> = Arc::new(TenantsBackend::new(
        store.clone(),
        provisioner.clone(),
        &cfg.ssh,
    ));
    let backend: Arc<dyn Backend> = Arc::new(hop::NodeBackend::new(
        local,
        provisioner,
        store.clone(),
        node.clone(),
    ));
    let gate = Arc::new(hop::HopGate::new(store, backend.clone()));
    let ssh = cfg.gateway_config();
    gateway::recording::prepare_dir(&ssh.recording).with_context(|| {
        format!(
            "node: cannot create the recordings directory {} (recording.dir)",
            ssh.recording.dir
        )
    })?;
    let shared = gateway::Shared::new(
        ssh,
        backend,
        gate,
        vec![key],
        Arc::new(gateway::Stats::default()),
    );
    let _ = ready.send(());
    let served = gateway::serve(shared, vec![listener], shutdown).await;
    heartbeat.abort();
    if let Some(h) = healer {
        h.abort();
    }
    served.context("node hop endpoint")
}

/// The node's healing loop (`[cluster] heal_interval_secs`; see `tenants::provision::heal`):
/// the first pass right away, so a rebooted node brings its servers back without a login.
fn spawn_heal(
    prov: tenants::Provisioner,
    node: String,
    every_secs: u64,
    stop: CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    if every_secs == 0 {
        tracing::info!(node = %node, "healing is off (cluster.heal_interval_secs = 0)");
        return None;
    }
    let every = Duration::from_secs(every_secs);
    Some(tokio::spawn(async move {
        loop {
            match prov
                .heal_on(Some(&node), tenants::provision::create_grace(every_secs))
                .await
            {
                Ok(r) if r.is_quiet() => {}
                Ok(r) => tracing::info!(
                    node = %node,
                    started = r.started.len(),
                    recreated = r.recreated.len(),
                    left = r.left.len(),
                    failed = r.failed.len(),
                    "heal pass"
                ),
                Err(e) => {
                    tracing::warn!(node = %node, error = %e, "heal pass failed; trying again")
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }))
}

/// `berth run front`: client SSH on `[ssh] listen`, relayed to each server's node.
pub async fn run_front(
    cfg: &Config,
    shutdown: CancellationToken,
    ready: oneshot::Sender<()>,
) -> Result<()> {
    need_cluster(cfg, "the front component")?;
    let ssh = cfg.ssh.clone();
    ssh.validate().map_err(anyhow::Error::msg)?;
    let store = tenants::Store::connect(&cfg.database_url())
        .await
        .context("front: cannot open the tenant store")?;
    let key = hop_key(cfg, HOP_CLIENT_KEY)?;
    let line = key
        .public_key()
        .to_openssh()
        .context("front: encode the hop client key")?;
    let name = cfg.cluster.front_name();
    store
        .register_front(name, &line)
        .await
        .with_context(|| format!("front: cannot register front {name}"))?;
    let host_keys = gateway::hostkeys::load_or_generate(&cfg.state_dir, &ssh.auth.host_keys)
        .context("front: host keys")?;
    let mut listeners = Vec::new();
    for addr in &ssh.listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("front: cannot listen on {addr} (ssh.listen)"))?;
        tracing::info!(%addr, front = %name, "front listening");
        listeners.push(l);
    }
    let local = local_backend(cfg, &store).await?;
    let relay: Arc<dyn Backend> = Arc::new(hop::RelayBackend::new(
        local,
        store,
        cfg.cluster.node.clone(),
        key,
    ));
    let auth = gateway::auth::Authenticator::new(&ssh, relay.clone());
    let shared = gateway::Shared::new(
        ssh,
        relay,
        Arc::new(auth),
        host_keys,
        Arc::new(gateway::Stats::default()),
    );
    let _ = ready.send(());
    gateway::serve(shared, listeners, shutdown)
        .await
        .context("front")
}
