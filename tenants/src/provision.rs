//! Tenant containers through the Docker Engine API (bollard), kept consistent with the store.
//!
//! The store is the source of truth for which servers exist; Docker holds what runs. Every
//! operation is written so a failure leaves the two consistent: a failed create removes what
//! it made and forgets the row; a container removed behind berth's back is recreated (with
//! its volume) the next time the server is needed; containers berth labelled but the store
//! does not know are reported, never deleted.
//!
//! `ensure_running` is single-flight per server inside this process (a shared, spawned
//! future); across processes it relies on Docker's own idempotence (create → 409, start of a
//! running container → 304), so several gateways may race safely.
//!
//! Deliberately not here: session execs (the gateway drives `docker()` itself) and
//! firewalling. The only execs here are root helpers at create/recreate time (does the login
//! user exist in the image, does it own the data volume).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{ContainerInspectResponse, VolumeCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptions, EventsOptions, ListContainersOptions, RemoveContainerOptions,
    RemoveVolumeOptions, RestartContainerOptions, StopContainerOptions,
};
use futures::StreamExt;
use futures::future::{BoxFuture, FutureExt, Shared};
use tokio::sync::watch;

use crate::config::{Config, NetworkConfig};
use crate::name::ServerId;
use crate::spec::{self, ExistingNetwork, LABEL_INSTANCE, LABEL_MANAGED, LABEL_SERVER, Names};
use crate::store::{AuditEvent, AuditKind, DesiredState, Server, ServerSpec, Store, StoreError};

fn check_dind(cfg: &Config, spec: &ServerSpec) -> Result<(), ProvisionError> {
    if spec.dind == Some(crate::config::DindMode::Runtime)
        && cfg.runtime.as_deref().is_none_or(str::is_empty)
    {
        return Err(ProvisionError::Invalid(
            "dind mode runtime needs tenants.runtime (e.g. \"sysbox-runc\") in the config".into(),
        ));
    }
    Ok(())
}

fn check_user_name(u: &str) -> Result<(), ProvisionError> {
    if spec::valid_user(u) {
        Ok(())
    } else {
        Err(ProvisionError::Invalid(format!(
            "user {u:?} must be root or a login name of [a-z0-9_-] starting with a letter or _"
        )))
    }
}

/// Connecting to the engine failed.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error(
        "cannot reach docker at {endpoint}: {source} (is dockerd running? set tenants.docker_host or DOCKER_HOST)"
    )]
    Unreachable {
        endpoint: String,
        #[source]
        source: BollardError,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// A provisioning failure. [`ProvisionError::is_retryable`] separates outages ("docker or the
/// database is unreachable — retry later") from final answers. Clone so one single-flight
/// result can be handed to every waiter.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProvisionError {
    #[error("docker at {endpoint} is unreachable, retry later: {message}")]
    DockerUnavailable { endpoint: String, message: String },
    #[error("{0} does not exist")]
    UnknownServer(ServerId),
    #[error("{0} is deleted")]
    ServerDeleted(ServerId),
    #[error(
        "image {image} is not on the docker host; build it with `berth image build --tag {image}` (or pull it)"
    )]
    ImageMissing { image: String },
    #[error("docker network {name} exists but conflicts with [network]: {}", .conflicts.join("; "))]
    NetworkConflict {
        name: String,
        conflicts: Vec<String>,
    },
    #[error(
        "{what} already exists in docker but the store does not know it; remove it or change tenants.name_prefix"
    )]
    Leftover { what: String },
    #[error("docker could not {action} {object}: {message}")]
    Docker {
        action: &'static str,
        object: String,
        status: Option<u16>,
        message: String,
    },
    #[error(
        "image {image} has no user {user}; choose one it has (e.g. --user root) or build the image with that user"
    )]
    UserMissing { user: String, image: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{server} is running but has no address on network {network}")]
    NoAddress { server: ServerId, network: String },
    #[error(transparent)]
    Store(Arc<StoreError>),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ProvisionError {
    /// True when the caller should tell the user "temporarily unavailable, retry later".
    pub fn is_retryable(&self) -> bool {
        match self {
            ProvisionError::DockerUnavailable { .. } => true,
            ProvisionError::Store(e) => e.is_retryable(),
            // Docker answers 500 for OCI/runtime refusals too: final, not an outage.
            ProvisionError::Docker { status, .. } => *status == Some(503),
            _ => false,
        }
    }
}

impl From<StoreError> for ProvisionError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UnknownServer(id) => ProvisionError::UnknownServer(id),
            StoreError::ServerDeleted(id) => ProvisionError::ServerDeleted(id),
            e => ProvisionError::Store(Arc::new(e)),
        }
    }
}

/// One running server's attachment to the tenant network, as Docker reports it (see
/// [`Provisioner::server_endpoints`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerEndpoint {
    pub server: ServerId,
    /// Docker's handle on the container's network namespace (`/var/run/docker/netns/<id>`).
    pub sandbox_key: Option<String>,
    /// The container's init process as the host sees it.
    pub pid: Option<u32>,
    pub mac: String,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<std::net::Ipv6Addr>,
}

/// A server whose container is running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningServer {
    pub id: ServerId,
    pub container_id: String,
    /// The container's address on the tenant network.
    pub address: Ipv4Addr,
    /// True when this call (or the single flight it joined) started or recreated it.
    pub started_now: bool,
    /// The login user recorded on the container (`None` for containers made before berth
    /// recorded it: the gateway then picks `tenant` or `root` itself).
    pub user: Option<String>,
    /// The host directory mounted at `/dev/berth` in the container, when it has that mount
    /// (containers made without `[tenants] agent_dir` have none).
    pub agent_dir: Option<std::path::PathBuf>,
}

/// What `server set` changes; `None` leaves a setting as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerChange {
    pub image: Option<String>,
    pub memory: Option<u64>,
    pub nano_cpus: Option<i64>,
    pub pids: Option<i64>,
    pub user: Option<String>,
    pub dind: Option<crate::config::DindMode>,
    /// Recreate the container even when nothing else asks for it (volume kept): picks up what
    /// only a new container gets, such as the agent mount of `[tenants] agent_dir`.
    pub recreate: bool,
}

/// How `server set` applied a change.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Applied {
    /// Nothing differed from the current settings.
    Unchanged,
    /// Limits changed on the existing container (or it had none; the next start uses them).
    Live,
    /// The container was recreated with its data volume intact.
    Recreated,
}

/// What Docker says about one server's container.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ContainerStatus {
    pub container_id: String,
    /// Docker's state word: running, exited, created, restarting, paused, dead…
    pub state: String,
    pub running: bool,
    pub address: Option<Ipv4Addr>,
}

/// A container berth labelled that the store does not account for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ForeignContainer {
    pub name: String,
    pub container_id: String,
    pub server: Option<ServerId>,
    pub reason: String,
}

/// Result of [`Provisioner::reconcile`]. Nothing is deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReconcileReport {
    /// Live servers with a container.
    pub present: Vec<ServerId>,
    /// Live servers whose container is gone: recreated (volume intact) on next use.
    pub missing: Vec<ServerId>,
    /// Desired running but the container is not running.
    pub stopped: Vec<ServerId>,
    /// Labelled containers of this instance unknown to the store (or of deleted servers).
    pub unknown: Vec<ForeignContainer>,
}

type Flight = Shared<BoxFuture<'static, Result<RunningServer, ProvisionError>>>;

struct Inner {
    docker: Docker,
    endpoint: String,
    net: NetworkConfig,
    cfg: Config,
    names: Names,
    store: Store,
    inflight: Mutex<HashMap<ServerId, Flight>>,
}

/// Creates, starts, stops and removes tenant containers. Cheap to clone.
#[derive(Clone)]
pub struct Provisioner {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Provisioner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provisioner")
            .field("endpoint", &self.inner.endpoint)
            .field("network", &self.inner.net.name)
            .field("prefix", &self.inner.names.prefix())
            .finish()
    }
}

/// The Docker endpoint berth uses: config, else `DOCKER_HOST`, else the local socket.
pub fn docker_endpoint(cfg: &Config) -> String {
    cfg.docker_host
        .clone()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "unix:///var/run/docker.sock".to_string())
}

/// Connects to the engine named by the config and negotiates the API version.
pub async fn connect_docker(cfg: &Config) -> Result<(Docker, String), DockerError> {
    let endpoint = docker_endpoint(cfg);
    let unreachable = |source| DockerError::Unreachable {
        endpoint: endpoint.clone(),
        source,
    };
    let docker = Docker::connect_with_host(&endpoint).map_err(unreachable)?;
    let docker = docker.negotiate_version().await.map_err(unreachable)?;
    Ok((docker, endpoint))
}

fn status_of(e: &BollardError) -> Option<u16> {
    match e {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn is_not_found(e: &BollardError) -> bool {
    status_of(e) == Some(404)
}

fn message_of(e: &BollardError) -> String {
    match e {
        BollardError::DockerResponseServerError { message, .. } => message.clone(),
        e => e.to_string(),
    }
}

impl Provisioner {
    /// Connects to Docker (`tenants.docker_host` / `DOCKER_HOST` / the local socket); the
    /// error names the endpoint tried. Does not touch the network: call [`Self::ensure_network`].
    pub async fn connect(
        net: &NetworkConfig,
        cfg: &Config,
        store: Store,
    ) -> Result<Provisioner, DockerError> {
        net.validate().map_err(DockerError::Config)?;
        cfg.validate().map_err(DockerError::Config)?;
        let (docker, endpoint) = connect_docker(cfg).await?;
        Ok(Provisioner {
            inner: Arc::new(Inner {
                docker,
                endpoint,
                net: net.clone(),
                cfg: cfg.clone(),
                names: Names::new(&cfg.name_prefix),
                store,
                inflight: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The engine client, for the gateway's execs.
    pub fn docker(&self) -> &Docker {
        &self.inner.docker
    }

    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn names(&self) -> &Names {
        &self.inner.names
    }

    pub fn config(&self) -> &Config {
        &self.inner.cfg
    }

    pub fn network(&self) -> &NetworkConfig {
        &self.inner.net
    }

    fn docker_err(&self, action: &'static str, object: &str, e: BollardError) -> ProvisionError {
        match status_of(&e) {
            Some(status) => ProvisionError::Docker {
                action,
                object: object.to_string(),
                status: Some(status),
                message: message_of(&e),
            },
            None => match e {
                BollardError::JsonDataError { .. }
                | BollardError::JsonSerdeError { .. }
                | BollardError::APIVersionParseError {} => ProvisionError::Docker {
                    action,
                    object: object.to_string(),
                    status: None,
                    message: e.to_string(),
                },
                e => ProvisionError::DockerUnavailable {
                    endpoint: self.inner.endpoint.clone(),
                    message: e.to_string(),
                },
            },
        }
    }

    /// Creates the tenant network if missing; an existing one must match `[network]` (driver,
    /// bridge name, subnet, gateway) or the error lists each difference.
    pub async fn ensure_network(&self) -> Result<(), ProvisionError> {
        let net = &self.inner.net;
        let docker = &self.inner.docker;
        for _ in 0..2 {
            match docker.inspect_network(&net.name, None).await {
                Ok(n) => {
                    let existing = ExistingNetwork {
                        driver: n.driver,
                        bridge: n
                            .options
                            .as_ref()
                            .and_then(|o| o.get(spec::OPT_BRIDGE_NAME).cloned()),
                        subnets: n
                            .ipam
                            .and_then(|i| i.config)
                            .unwrap_or_default()
                            .into_iter()
                            .map(|c| (c.subnet, c.gateway))
                            .collect(),
                    };
                    let conflicts = spec::network_conflicts(net, &existing);
                    if conflicts.is_empty() {
                        return Ok(());
                    }
                    return Err(ProvisionError::NetworkConflict {
                        name: net.name.clone(),
                        conflicts,
                    });
                }
                Err(e) if is_not_found(&e) => {
                    match docker.create_network(spec::network_request(net)).await {
                        Ok(_) => {
                            tracing::info!(network = %net.name, bridge = %net.bridge, subnet = %net.subnet, "created tenant network");
                            return Ok(());
                        }
                        // Created concurrently by another process: inspect again.
                        Err(e) if status_of(&e) == Some(409) => continue,
                        Err(e) => return Err(self.docker_err("create network", &net.name, e)),
                    }
                }
                Err(e) => return Err(self.docker_err("inspect network", &net.name, e)),
            }
        }
        Err(ProvisionError::Internal(format!(
            "network {} keeps changing",
            net.name
        )))
    }

    /// Removes the tenant network (tests and uninstall). Missing is fine.
    pub async fn remove_network(&self) -> Result<(), ProvisionError> {
        match self.inner.docker.remove_network(&self.inner.net.name).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(self.docker_err("remove network", &self.inner.net.name, e)),
        }
    }

    async fn check_image(&self, image: &str) -> Result<(), ProvisionError> {
        match self.inner.docker.inspect_image(image).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Err(ProvisionError::ImageMissing {
                image: image.to_string(),
            }),
            Err(e) => Err(self.docker_err("inspect image", image, e)),
        }
    }

    async fn inspect(
        &self,
        id: ServerId,
    ) -> Result<Option<ContainerInspectResponse>, ProvisionError> {
        let name = self.inner.names.container(id);
        match self.inner.docker.inspect_container(&name, None).await {
            Ok(c) => Ok(Some(c)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(self.docker_err("inspect container", &name, e)),
        }
    }

    async fn volume_exists(&self, name: &str) -> Result<bool, ProvisionError> {
        match self.inner.docker.inspect_volume(name).await {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(self.docker_err("inspect volume", name, e)),
        }
    }

    async fn create_volume(&self, server: &Server) -> Result<(), ProvisionError> {
        let name = self.inner.names.volume(server.id);
        let req = VolumeCreateRequest {
            name: Some(name.clone()),
            labels: Some(spec::labels(&self.inner.names, server.id, &server.owner)),
            ..Default::default()
        };
        self.inner
            .docker
            .create_volume(req)
            .await
            .map(|_| ())
            .map_err(|e| self.docker_err("create volume", &name, e))
    }

    /// Creates the container (volume must exist or Docker creates it unlabelled). 409 = made
    /// concurrently by another process: fine.
    async fn create_container(&self, server: &Server) -> Result<(), ProvisionError> {
        let name = self.inner.names.container(server.id);
        if let Some(dir) = spec::agent_dir(&self.inner.cfg, server.id)
            && let Err(e) = prepare_agent_dir(&dir)
        {
            // Docker creates it (root-owned) at start; sessions then use Docker's exec stream
            // when the gateway cannot make its socket there.
            tracing::warn!(dir = %dir.display(), error = %e, "cannot prepare the agent directory");
        }
        let image = spec::image(&self.inner.cfg, server);
        // The image's labels say what it needs (systemd as PID 1); an image that vanished is
        // reported by the create below.
        let traits = match self.inner.docker.inspect_image(image).await {
            Ok(i) => {
                spec::ImageTraits::from_labels(i.config.as_ref().and_then(|c| c.labels.as_ref()))
            }
            Err(_) => spec::ImageTraits::default(),
        };
        let body = spec::container_body_for(
            &self.inner.cfg,
            &self.inner.net,
            &self.inner.names,
            server,
            traits,
        );
        let opts = CreateContainerOptions {
            name: Some(name.clone()),
            ..Default::default()
        };
        match self.inner.docker.create_container(Some(opts), body).await {
            Ok(_) => Ok(()),
            Err(e) if status_of(&e) == Some(409) => Ok(()),
            Err(e) if is_not_found(&e) => {
                // Image (or network) vanished between our check and the create.
                let image = spec::image(&self.inner.cfg, server).to_string();
                if message_of(&e).contains("image") {
                    Err(ProvisionError::ImageMissing { image })
                } else {
                    Err(self.docker_err("create container", &name, e))
                }
            }
            Err(e) => Err(self.docker_err("create container", &name, e)),
        }
    }

    async fn start_container(&self, id: ServerId) -> Result<(), ProvisionError> {
        let name = self.inner.names.container(id);
        // When another process created the container concurrently, our create got 409 while
        // the engine may not have registered the container yet: a start then answers 404 for
        // a moment. Retry briefly instead of failing the login.
        let mut attempt = 0;
        loop {
            match self.inner.docker.start_container(&name, None).await {
                Ok(()) => return Ok(()),
                Err(e) if is_not_found(&e) && attempt < 30 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(self.docker_err("start container", &name, e)),
            }
        }
    }

    fn running_from(
        &self,
        id: ServerId,
        c: &ContainerInspectResponse,
        started_now: bool,
    ) -> Result<RunningServer, ProvisionError> {
        let address = container_address(c, &self.inner.net.name).ok_or_else(|| {
            ProvisionError::NoAddress {
                server: id,
                network: self.inner.net.name.clone(),
            }
        })?;
        let user = c
            .config
            .as_ref()
            .and_then(|cfg| cfg.labels.as_ref())
            .and_then(|l| l.get(spec::LABEL_USER))
            .cloned();
        let agent_dir = c
            .mounts
            .as_ref()
            .and_then(|m| {
                m.iter()
                    .find(|m| m.destination.as_deref() == Some(spec::AGENT_MOUNT))
            })
            .and_then(|m| m.source.clone())
            .map(std::path::PathBuf::from);
        Ok(RunningServer {
            id,
            container_id: c.id.clone().unwrap_or_default(),
            address,
            started_now,
            user,
            agent_dir,
        })
    }

    /// Runs `argv` as root in server `id`'s (running) container; its exit code.
    async fn exec_root(&self, id: ServerId, argv: Vec<String>) -> Result<i64, ProvisionError> {
        use bollard::exec::{CreateExecOptions, StartExecResults};
        let name = self.inner.names.container(id);
        let opts = CreateExecOptions::<String> {
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            cmd: Some(argv),
            user: Some("root".into()),
            ..Default::default()
        };
        let exec = self
            .inner
            .docker
            .create_exec(&name, opts)
            .await
            .map_err(|e| self.docker_err("exec in", &name, e))?;
        match self.inner.docker.start_exec(&exec.id, None).await {
            Ok(StartExecResults::Attached { mut output, .. }) => {
                while output.next().await.is_some() {}
            }
            Ok(StartExecResults::Detached) => {}
            Err(e) => return Err(self.docker_err("exec in", &name, e)),
        }
        for _ in 0..200 {
            let i = self
                .inner
                .docker
                .inspect_exec(&exec.id)
                .await
                .map_err(|e| self.docker_err("inspect exec in", &name, e))?;
            if i.running != Some(true) {
                return Ok(i.exit_code.unwrap_or(-1));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err(ProvisionError::Internal(format!(
            "a helper command in {name} did not finish within 5 s"
        )))
    }

    /// The server's login user must exist in its image, and a non-root user must own the data
    /// volume (Docker seeds a new volume with the image's directory, which may be root's).
    async fn prepare_user(&self, server: &Server) -> Result<(), ProvisionError> {
        let user = spec::login_user(&self.inner.cfg, server).to_string();
        let exists = self
            .exec_root(
                server.id,
                vec!["id".into(), "-u".into(), "--".into(), user.clone()],
            )
            .await?;
        if exists != 0 {
            return Err(ProvisionError::UserMissing {
                user,
                image: spec::image(&self.inner.cfg, server).to_string(),
            });
        }
        if user != "root" {
            let script = r#"[ "$(stat -c %u "$2")" = "$(id -u "$1")" ] || chown -- "$1": "$2""#;
            let code = self
                .exec_root(
                    server.id,
                    vec![
                        "/bin/sh".into(),
                        "-c".into(),
                        script.into(),
                        "berth-volume-owner".into(),
                        user.clone(),
                        self.inner.cfg.volume_mount.clone(),
                    ],
                )
                .await?;
            if code != 0 {
                return Err(ProvisionError::Internal(format!(
                    "cannot give {} to {user} in {} (exit {code})",
                    self.inner.cfg.volume_mount, server.id
                )));
            }
        }
        Ok(())
    }

    /// Changes a server after it exists. Limits change on the running container (`docker
    /// update`); lifting a memory or CPU limit, or an image, login-user or DinD change, recreates the container with its data volume
    /// intact (and starts it again when it should run). The store is updated only once Docker
    /// has taken the change; on a failed recreate the old settings are restored and the old
    /// container recreated from them.
    pub async fn set_server(
        &self,
        id: ServerId,
        change: ServerChange,
    ) -> Result<(Server, Applied), ProvisionError> {
        let server = self.live_server(id).await?;
        if let Some(u) = &change.user {
            check_user_name(u)?;
        }
        let mut new = server.clone();
        let spec = &mut new.spec;
        if let Some(i) = &change.image {
            spec.image = Some(i.clone());
        }
        if let Some(m) = change.memory {
            spec.memory = Some(m);
        }
        if let Some(c) = change.nano_cpus {
            spec.nano_cpus = Some(c);
        }
        if let Some(p) = change.pids {
            spec.pids = Some(p);
        }
        if let Some(u) = &change.user {
            spec.user = Some(u.clone());
        }
        if let Some(d) = change.dind {
            spec.dind = Some(d);
        }
        let cfg = &self.inner.cfg;
        check_dind(cfg, &new.spec)?;
        let (old_l, new_l) = (
            spec::effective_limits(cfg, &server),
            spec::effective_limits(cfg, &new),
        );
        // `docker update` reads 0 as "leave as is" for memory and CPUs, so lifting one of those
        // limits needs a new container.
        let lifted = (old_l.memory > 0 && new_l.memory == 0)
            || (old_l.nano_cpus > 0 && new_l.nano_cpus == 0);
        let recreate = change.recreate
            || lifted
            || spec::image(cfg, &new) != spec::image(cfg, &server)
            || spec::login_user(cfg, &new) != spec::login_user(cfg, &server)
            || spec::dind(cfg, &new) != spec::dind(cfg, &server);
        let limits_changed =
            spec::effective_limits(cfg, &new) != spec::effective_limits(cfg, &server);
        if !recreate && !limits_changed {
            if new.spec != server.spec {
                self.inner.store.set_server_spec(id, &new.spec).await?;
            }
            return Ok((new, Applied::Unchanged));
        }
        let detail = serde_json::json!({
            "image": spec::image(cfg, &new),
            "user": spec::login_user(cfg, &new),
            "dind": spec::dind(cfg, &new).as_str(),
            "limits": {
                "memory": spec::effective_limits(cfg, &new).memory,
                "nano_cpus": spec::effective_limits(cfg, &new).nano_cpus,
                "pids": spec::effective_limits(cfg, &new).pids,
            },
        });
        if !recreate {
            let name = self.inner.names.container(id);
            if self.inspect(id).await?.is_some() {
                let l = spec::effective_limits(cfg, &new);
                let memory = i64::try_from(l.memory).unwrap_or(i64::MAX);
                // Docker's "unlimited" is 0 for memory/CPU and -1 for PIDs; swap follows memory
                // (-1 = unlimited swap when memory is unlimited).
                let body = bollard::models::ContainerUpdateBody {
                    memory: Some(memory),
                    memory_swap: Some(if memory > 0 { memory } else { -1 }),
                    nano_cpus: Some(l.nano_cpus),
                    pids_limit: Some(if l.pids > 0 { l.pids } else { -1 }),
                    ..Default::default()
                };
                self.inner
                    .docker
                    .update_container(&name, body)
                    .await
                    .map_err(|e| self.docker_err("update container", &name, e))?;
            }
            self.inner.store.set_server_spec(id, &new.spec).await?;
            self.audit(id, "set", "success", detail).await;
            tracing::info!(server = %id, "changed limits live");
            return Ok((new, Applied::Live));
        }
        self.check_image(spec::image(cfg, &new)).await?;
        match self.recreate_with(&new).await {
            Ok(()) => {
                self.audit(id, "set", "success", detail).await;
                tracing::info!(server = %id, "recreated with new settings, volume kept");
                Ok((new, Applied::Recreated))
            }
            Err(e) => {
                tracing::warn!(server = %id, error = %e, "recreate failed; restoring the old settings");
                if let Err(se) = self.inner.store.set_server_spec(id, &server.spec).await {
                    tracing::error!(server = %id, error = %se, "cannot restore the old settings");
                }
                if let Err(re) = self.recreate_with(&server).await {
                    tracing::error!(server = %id, error = %re, "cannot recreate the old container");
                }
                self.audit(
                    id,
                    "set",
                    "failure",
                    serde_json::json!({ "error": e.to_string() }),
                )
                .await;
                Err(e)
            }
        }
    }

    /// Replaces server `new.id`'s container with one made from `new` (volume kept), records
    /// `new`'s spec, and starts it when it should run.
    async fn recreate_with(&self, new: &Server) -> Result<(), ProvisionError> {
        let id = new.id;
        let name = self.inner.names.container(id);
        if let Some(c) = self.inspect(id).await? {
            self.check_ours(id, &c)?;
            let opts = RemoveContainerOptions {
                force: true,
                ..Default::default()
            };
            match self.inner.docker.remove_container(&name, Some(opts)).await {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(self.docker_err("remove container", &name, e)),
            }
        }
        self.inner.store.set_server_spec(id, &new.spec).await?;
        self.create_container(new).await?;
        self.start_container(id).await?;
        let prepared = self.prepare_user(new).await;
        if new.desired == DesiredState::Stopped {
            let t = i32::try_from(self.inner.cfg.stop_timeout_secs).unwrap_or(i32::MAX);
            let opts = StopContainerOptions {
                t: Some(t),
                ..Default::default()
            };
            if let Err(e) = self.inner.docker.stop_container(&name, Some(opts)).await {
                tracing::warn!(server = %id, error = %e, "cannot stop the recreated container");
            }
        }
        prepared
    }

    async fn audit(&self, id: ServerId, method: &str, outcome: &str, detail: serde_json::Value) {
        let ev = AuditEvent {
            server: Some(id),
            method: Some(method.to_string()),
            detail,
            ..AuditEvent::new(AuditKind::Provision, outcome)
        };
        if let Err(e) = self.inner.store.record_audit(ev).await {
            tracing::warn!(server = %id, error = %e, "cannot record audit event");
        }
    }

    /// Registers a server for `owner`, creates its volume and container, and starts it.
    /// On any failure the container, volume and row made here are removed again, so the store
    /// and Docker stay consistent (the id is still never reused).
    pub async fn create_server(
        &self,
        owner: &str,
        spec: ServerSpec,
    ) -> Result<Server, ProvisionError> {
        let image = spec
            .image
            .clone()
            .unwrap_or_else(|| self.inner.cfg.image.clone());
        if let Some(u) = &spec.user {
            check_user_name(u)?;
        }
        check_dind(&self.inner.cfg, &spec)?;
        self.check_image(&image).await?;
        self.ensure_network().await?;
        let server = self.inner.store.insert_server(owner, &spec).await?;
        let id = server.id;
        let container = self.inner.names.container(id);
        let volume = self.inner.names.volume(id);
        let mut made_volume = false;
        let mut made_container = false;
        let result: Result<(), ProvisionError> = async {
            if self.inspect(id).await?.is_some() {
                return Err(ProvisionError::Leftover {
                    what: format!("container {container}"),
                });
            }
            if self.volume_exists(&volume).await? {
                return Err(ProvisionError::Leftover {
                    what: format!("volume {volume}"),
                });
            }
            self.create_volume(&server).await?;
            made_volume = true;
            self.create_container(&server).await?;
            made_container = true;
            self.start_container(id).await?;
            self.prepare_user(&server).await?;
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                tracing::info!(server = %id, owner, image, "created server");
                Ok(server)
            }
            Err(e) => {
                tracing::warn!(server = %id, error = %e, "create failed; undoing");
                if made_container {
                    let opts = RemoveContainerOptions {
                        force: true,
                        ..Default::default()
                    };
                    if let Err(re) = self
                        .inner
                        .docker
                        .remove_container(&container, Some(opts))
                        .await
                    {
                        tracing::error!(container, error = %re, "cannot remove container after failed create");
                    }
                }
                if made_volume
                    && let Err(re) = self
                        .inner
                        .docker
                        .remove_volume(&volume, None::<RemoveVolumeOptions>)
                        .await
                {
                    tracing::error!(volume, error = %re, "cannot remove volume after failed create");
                }
                if let Err(se) = self.inner.store.forget_server(id).await {
                    tracing::error!(server = %id, error = %se, "cannot forget server row after failed create");
                }
                Err(e)
            }
        }
    }

    /// Makes sure server `id` runs and returns its address. Idempotent; concurrent callers for
    /// the same server share one attempt (one start) and get the same result. A missing
    /// container is recreated from the store with its volume intact. Sets desired state to
    /// running.
    pub async fn ensure_running(&self, id: ServerId) -> Result<RunningServer, ProvisionError> {
        let flight = {
            let mut map = self
                .inner
                .inflight
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(f) = map.get(&id) {
                f.clone()
            } else {
                let this = self.clone();
                // Spawned so a caller that gives up (client disconnect) does not abort a
                // half-done start for the others.
                let task = tokio::spawn(async move {
                    let r = this.ensure_running_once(id).await;
                    this.inner
                        .inflight
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&id);
                    r
                });
                let f: Flight = async move {
                    task.await.unwrap_or_else(|e| {
                        Err(ProvisionError::Internal(format!("start task failed: {e}")))
                    })
                }
                .boxed()
                .shared();
                map.insert(id, f.clone());
                f
            }
        };
        flight.await
    }

    async fn live_server(&self, id: ServerId) -> Result<Server, ProvisionError> {
        let server = self
            .inner
            .store
            .server(id)
            .await?
            .ok_or(ProvisionError::UnknownServer(id))?;
        if server.deleted.is_some() {
            return Err(ProvisionError::ServerDeleted(id));
        }
        Ok(server)
    }

    async fn ensure_running_once(&self, id: ServerId) -> Result<RunningServer, ProvisionError> {
        let server = self.live_server(id).await?;
        if server.desired != DesiredState::Running {
            self.inner
                .store
                .set_desired_state(id, DesiredState::Running)
                .await?;
        }
        match self.inspect(id).await? {
            // Docker reports a paused container as running; exec into it would hang.
            Some(c) if c.state.as_ref().and_then(|s| s.paused) == Some(true) => {
                self.check_ours(id, &c)?;
                let name = self.inner.names.container(id);
                self.inner
                    .docker
                    .unpause_container(&name)
                    .await
                    .map_err(|e| self.docker_err("unpause container", &name, e))?;
                self.audit(id, "unpause", "success", serde_json::Value::Null)
                    .await;
                self.running_from(id, &c, true)
            }
            Some(c) if c.state.as_ref().and_then(|s| s.running) == Some(true) => {
                self.check_ours(id, &c)?;
                self.running_from(id, &c, false)
            }
            Some(c) => {
                self.check_ours(id, &c)?;
                self.start_container(id).await?;
                let c = self.inspect(id).await?.ok_or_else(|| {
                    ProvisionError::Internal(format!("{id}'s container vanished right after start"))
                })?;
                self.audit(id, "start", "success", serde_json::Value::Null)
                    .await;
                tracing::info!(server = %id, "started server on demand");
                self.running_from(id, &c, true)
            }
            None => {
                let image = spec::image(&self.inner.cfg, &server).to_string();
                self.check_image(&image).await?;
                self.ensure_network().await?;
                let volume = self.inner.names.volume(id);
                let had_volume = self.volume_exists(&volume).await?;
                if !had_volume {
                    tracing::warn!(server = %id, volume, "data volume missing; recreating it empty");
                    self.create_volume(&server).await?;
                }
                self.create_container(&server).await?;
                self.start_container(id).await?;
                let c = self.inspect(id).await?.ok_or_else(|| {
                    ProvisionError::Internal(format!("{id}'s container vanished right after start"))
                })?;
                self.audit(
                    id,
                    "recreate",
                    "success",
                    serde_json::json!({ "volume_kept": had_volume }),
                )
                .await;
                tracing::info!(server = %id, volume_kept = had_volume, "recreated missing container");
                self.running_from(id, &c, true)
            }
        }
    }

    fn check_ours(&self, id: ServerId, c: &ContainerInspectResponse) -> Result<(), ProvisionError> {
        let label = c
            .config
            .as_ref()
            .and_then(|cfg| cfg.labels.as_ref())
            .and_then(|l| l.get(LABEL_SERVER));
        if label.map(String::as_str) == Some(id.get().to_string().as_str()) {
            Ok(())
        } else {
            Err(ProvisionError::Leftover {
                what: format!(
                    "container {} (not labelled {LABEL_SERVER}={})",
                    self.inner.names.container(id),
                    id.get()
                ),
            })
        }
    }

    /// Starts a server (same as [`Self::ensure_running`]).
    pub async fn start(&self, id: ServerId) -> Result<RunningServer, ProvisionError> {
        self.ensure_running(id).await
    }

    /// Stops a server and records it should stay stopped (until a login or `start`).
    pub async fn stop(&self, id: ServerId) -> Result<(), ProvisionError> {
        self.live_server(id).await?;
        self.inner
            .store
            .set_desired_state(id, DesiredState::Stopped)
            .await?;
        let name = self.inner.names.container(id);
        let t = i32::try_from(self.inner.cfg.stop_timeout_secs).unwrap_or(i32::MAX);
        match self
            .inner
            .docker
            .stop_container(
                &name,
                Some(StopContainerOptions {
                    t: Some(t),
                    signal: None,
                }),
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(self.docker_err("stop container", &name, e)),
        }
    }

    /// Restarts a server (recreating a missing container).
    pub async fn restart(&self, id: ServerId) -> Result<RunningServer, ProvisionError> {
        self.live_server(id).await?;
        let name = self.inner.names.container(id);
        let t = i32::try_from(self.inner.cfg.stop_timeout_secs).unwrap_or(i32::MAX);
        match self
            .inner
            .docker
            .restart_container(
                &name,
                Some(RestartContainerOptions {
                    t: Some(t),
                    signal: None,
                }),
            )
            .await
        {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(self.docker_err("restart container", &name, e)),
        }
        self.ensure_running(id).await
    }

    /// Deletes a server: removes its container, keeps its data volume unless `purge`, and marks
    /// the row deleted (the id is never reused). `purge` on an already deleted server removes
    /// the kept volume.
    pub async fn remove(&self, id: ServerId, purge: bool) -> Result<(), ProvisionError> {
        let server = self
            .inner
            .store
            .server(id)
            .await?
            .ok_or(ProvisionError::UnknownServer(id))?;
        let already_deleted = server.deleted.is_some();
        if already_deleted && !purge {
            return Err(ProvisionError::ServerDeleted(id));
        }
        let name = self.inner.names.container(id);
        let opts = RemoveContainerOptions {
            force: true,
            v: false,
            link: false,
        };
        match self.inner.docker.remove_container(&name, Some(opts)).await {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(self.docker_err("remove container", &name, e)),
        }
        if purge {
            let volume = self.inner.names.volume(id);
            match self
                .inner
                .docker
                .remove_volume(&volume, Some(RemoveVolumeOptions { force: false }))
                .await
            {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(self.docker_err("remove volume", &volume, e)),
            }
        }
        if !already_deleted {
            self.inner.store.mark_deleted(id).await?;
        }
        tracing::info!(server = %id, purge, "removed server");
        Ok(())
    }

    /// Docker's view of one server's container; `None` when it does not exist.
    pub async fn status(&self, id: ServerId) -> Result<Option<ContainerStatus>, ProvisionError> {
        Ok(self.inspect(id).await?.map(|c| {
            let state = c.state.as_ref();
            ContainerStatus {
                container_id: c.id.clone().unwrap_or_default(),
                state: state
                    .and_then(|s| s.status)
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
                running: state.and_then(|s| s.running).unwrap_or(false),
                address: container_address(&c, &self.inner.net.name),
            }
        }))
    }

    /// Every container labelled by this berth instance (running or not), by server id.
    pub async fn statuses(&self) -> Result<BTreeMap<ServerId, ContainerStatus>, ProvisionError> {
        let list = self.list_ours(true).await?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                let id = c.server?;
                Some((
                    id,
                    ContainerStatus {
                        container_id: c.container_id,
                        state: c.state.clone(),
                        running: c.state == "running",
                        address: c.address,
                    },
                ))
            })
            .collect())
    }

    async fn list_ours(&self, all: bool) -> Result<Vec<Listed>, ProvisionError> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{LABEL_MANAGED}=true"),
                format!("{LABEL_INSTANCE}={}", self.inner.names.prefix()),
            ],
        )]);
        let opts = ListContainersOptions {
            all,
            filters: Some(filters),
            ..Default::default()
        };
        let list = self
            .inner
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(|e| self.docker_err("list containers", "", e))?;
        Ok(list
            .into_iter()
            .map(|c| {
                let name = c
                    .names
                    .as_ref()
                    .and_then(|n| n.first())
                    .cloned()
                    .unwrap_or_default();
                let name = name.strip_prefix('/').unwrap_or(&name).to_string();
                let label = c
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_SERVER))
                    .and_then(|v| crate::name::parse_server_ref(v));
                let by_name = self.inner.names.parse_container(&name);
                Listed {
                    server: label.filter(|l| Some(*l) == by_name),
                    name,
                    container_id: c.id.unwrap_or_default(),
                    state: c.state.map(|s| s.to_string()).unwrap_or_default(),
                    address: c
                        .network_settings
                        .and_then(|n| n.networks)
                        .and_then(|n| {
                            n.get(&self.inner.net.name)
                                .and_then(|e| e.ip_address.clone())
                        })
                        .and_then(|ip| ip.parse().ok()),
                }
            })
            .collect())
    }

    /// Addresses of running servers on the tenant network (for the DNS local zone).
    pub async fn server_addresses(&self) -> Result<BTreeMap<ServerId, IpAddr>, ProvisionError> {
        Ok(self
            .list_ours(false)
            .await?
            .into_iter()
            .filter(|c| c.state == "running")
            .filter_map(|c| Some((c.server?, IpAddr::V4(c.address?))))
            .collect())
    }

    /// What the host needs to bind each running server's bridge port to its own addresses
    /// (netfilter's port map): the network namespace Docker holds for it (`SandboxKey`), its
    /// init's pid, and the MAC and addresses Docker assigned on the tenant network. All of it
    /// comes from Docker, none from inside the container. Servers Docker gives no MAC on the
    /// tenant network are left out.
    pub async fn server_endpoints(&self) -> Result<Vec<ServerEndpoint>, ProvisionError> {
        let mut out = Vec::new();
        for c in self.list_ours(false).await? {
            let Some(server) = c.server.filter(|_| c.state == "running") else {
                continue;
            };
            let info = match self
                .inner
                .docker
                .inspect_container(&c.container_id, None)
                .await
            {
                Ok(i) => i,
                // Gone between the list and the inspect: it is not running any more.
                Err(BollardError::DockerResponseServerError {
                    status_code: 404, ..
                }) => continue,
                Err(e) => return Err(self.docker_err("inspect container", &c.name, e)),
            };
            let ns = info.network_settings.as_ref();
            let ep = ns
                .and_then(|n| n.networks.as_ref())
                .and_then(|n| n.get(&self.inner.net.name));
            let Some(mac) = ep
                .and_then(|e| e.mac_address.clone())
                .filter(|m| !m.is_empty())
            else {
                continue;
            };
            out.push(ServerEndpoint {
                server,
                sandbox_key: ns
                    .and_then(|n| n.sandbox_key.clone())
                    .filter(|k| !k.is_empty()),
                pid: info
                    .state
                    .as_ref()
                    .and_then(|s| s.pid)
                    .and_then(|p| u32::try_from(p).ok())
                    .filter(|p| *p > 0),
                mac,
                ipv4: ep
                    .and_then(|e| e.ip_address.as_deref())
                    .and_then(|a| a.parse().ok()),
                ipv6: ep
                    .and_then(|e| e.global_ipv6_address.as_deref())
                    .and_then(|a| a.parse().ok()),
            });
        }
        out.sort_by_key(|e| e.server);
        Ok(out)
    }

    /// Follows [`Self::server_addresses`] through Docker events (container start/die/destroy,
    /// network connect/disconnect) until `shutdown` completes. The first value is loaded before
    /// returning when Docker answers; on stream errors it resubscribes after a second and
    /// re-lists, so a missed event costs at most one re-list.
    pub async fn watch_addresses(
        &self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> watch::Receiver<BTreeMap<ServerId, IpAddr>> {
        let initial = match self.server_addresses().await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list server addresses yet; will retry");
                BTreeMap::new()
            }
        };
        let (tx, rx) = watch::channel(initial);
        let this = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown => {}
                () = this.follow_events(tx) => {}
            }
        });
        rx
    }

    async fn follow_events(&self, tx: watch::Sender<BTreeMap<ServerId, IpAddr>>) {
        let prefix = self.inner.names.prefix().to_string();
        let net = self.inner.net.name.clone();
        loop {
            let filters = HashMap::from([(
                "type".to_string(),
                vec!["container".to_string(), "network".to_string()],
            )]);
            let mut events = self.inner.docker.events(Some(EventsOptions {
                filters: Some(filters),
                ..Default::default()
            }));
            // Re-list after (re)subscribing: events between the last list and now are covered.
            self.refresh(&tx).await;
            while let Some(ev) = events.next().await {
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(e) => {
                        tracing::warn!(error = %e, "docker event stream failed; resubscribing");
                        break;
                    }
                };
                let attrs = ev.actor.as_ref().and_then(|a| a.attributes.as_ref());
                let get = |k: &str| attrs.and_then(|a| a.get(k)).map(String::as_str);
                let relevant = match ev.typ.map(|t| t.to_string()).as_deref() {
                    Some("container") => get(LABEL_INSTANCE) == Some(prefix.as_str()),
                    Some("network") => get("name") == Some(net.as_str()),
                    _ => false,
                };
                if relevant {
                    self.refresh(&tx).await;
                }
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn refresh(&self, tx: &watch::Sender<BTreeMap<ServerId, IpAddr>>) {
        match self.server_addresses().await {
            Ok(m) => {
                tx.send_if_modified(|cur| {
                    if *cur == m {
                        false
                    } else {
                        *cur = m;
                        true
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "cannot list server addresses"),
        }
    }

    /// Compares the store with Docker. Reports live servers whose container is missing (they
    /// are recreated with their volume on next use), servers that should run but do not, and
    /// containers labelled by this instance that the store does not know or has deleted. It
    /// never deletes or starts anything.
    pub async fn reconcile(&self) -> Result<ReconcileReport, ProvisionError> {
        let servers = self.inner.store.servers(true).await?;
        let by_id: HashMap<ServerId, &Server> = servers.iter().map(|s| (s.id, s)).collect();
        let listed = self.list_ours(true).await?;
        let mut report = ReconcileReport::default();
        let mut seen = std::collections::HashSet::new();
        for c in listed {
            match c.server.and_then(|id| by_id.get(&id).map(|s| (id, s))) {
                Some((id, s)) if s.deleted.is_none() => {
                    seen.insert(id);
                    report.present.push(id);
                    if s.desired == DesiredState::Running && c.state != "running" {
                        report.stopped.push(id);
                    }
                }
                Some((id, _)) => report.unknown.push(ForeignContainer {
                    name: c.name,
                    container_id: c.container_id,
                    server: Some(id),
                    reason: format!("{id} is deleted in the store"),
                }),
                None => report.unknown.push(ForeignContainer {
                    reason: match c.server {
                        Some(id) => format!("{id} is not in the store"),
                        None => "name and berth.server label do not match".to_string(),
                    },
                    name: c.name,
                    container_id: c.container_id,
                    server: c.server,
                }),
            }
        }
        for s in servers.iter().filter(|s| s.deleted.is_none()) {
            if !seen.contains(&s.id) {
                report.missing.push(s.id);
            }
        }
        report.present.sort();
        report.stopped.sort();
        for u in &report.unknown {
            tracing::warn!(container = %u.name, reason = %u.reason, "berth-labelled container unknown to the store (left alone)");
        }
        Ok(report)
    }
}

struct Listed {
    name: String,
    container_id: String,
    server: Option<ServerId>,
    state: String,
    address: Option<Ipv4Addr>,
}

/// The container's IPv4 address on `network`, if attached.
fn container_address(c: &ContainerInspectResponse, network: &str) -> Option<Ipv4Addr> {
    c.network_settings
        .as_ref()?
        .networks
        .as_ref()?
        .get(network)?
        .ip_address
        .as_deref()
        .filter(|s| !s.is_empty())?
        .parse()
        .ok()
}

/// Makes `dir` (one server's agent directory) and its parent. The parent is `0700`: only the
/// gateway reaches the sockets from the host, while each container sees just its own directory
/// through its mount. When an admin command running as root makes the directory, it goes to
/// the parent's owner (the gateway's user), which must create its socket in it.
fn prepare_agent_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let Some(parent) = dir.parent() else {
        return Ok(());
    };
    if !parent.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    if !dir.exists() {
        std::fs::DirBuilder::new().mode(0o755).create(dir)?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    let owner = std::fs::metadata(parent)?;
    let meta = std::fs::metadata(dir)?;
    if meta.uid() != owner.uid() {
        std::os::unix::fs::chown(dir, Some(owner.uid()), Some(owner.gid()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{EndpointSettings, NetworkSettings};

    #[test]
    fn retryable_vs_final() {
        let unavailable = ProvisionError::DockerUnavailable {
            endpoint: "unix:///x".into(),
            message: "gone".into(),
        };
        assert!(unavailable.is_retryable());
        assert!(unavailable.to_string().contains("retry later"));
        let docker = |status| ProvisionError::Docker {
            action: "start container",
            object: "c".into(),
            status: Some(status),
            message: "m".into(),
        };
        assert!(!docker(500).is_retryable());
        assert!(!docker(409).is_retryable());
        assert!(docker(503).is_retryable());
        let id = ServerId::new(3).unwrap_or_else(|| unreachable!());
        assert!(!ProvisionError::UnknownServer(id).is_retryable());
        assert!(!ProvisionError::ImageMissing { image: "i".into() }.is_retryable());
        // Store errors keep their own classification; server lookups become our variants.
        let locked: ProvisionError = StoreError::Locked {
            url: "sqlite:x".into(),
        }
        .into();
        assert!(locked.is_retryable());
        let unknown: ProvisionError = StoreError::UnknownServer(id).into();
        assert!(matches!(unknown, ProvisionError::UnknownServer(_)));
        let deleted: ProvisionError = StoreError::ServerDeleted(id).into();
        assert!(matches!(deleted, ProvisionError::ServerDeleted(_)));
    }

    #[test]
    fn address_on_the_tenant_network_only() {
        let net = |ip: &str| EndpointSettings {
            ip_address: Some(ip.into()),
            ..Default::default()
        };
        let c = ContainerInspectResponse {
            network_settings: Some(NetworkSettings {
                networks: Some(HashMap::from([
                    ("bridge".to_string(), net("172.17.0.2")),
                    ("berth-tenants".to_string(), net("172.19.2.5")),
                    ("empty".to_string(), net("")),
                ])),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            container_address(&c, "berth-tenants"),
            Some(Ipv4Addr::new(172, 19, 2, 5))
        );
        assert_eq!(container_address(&c, "empty"), None);
        assert_eq!(container_address(&c, "other"), None);
        assert_eq!(
            container_address(&ContainerInspectResponse::default(), "berth-tenants"),
            None
        );
    }

    #[test]
    fn endpoint_prefers_config() {
        let cfg = Config {
            docker_host: Some("tcp://10.0.0.1:2375".into()),
            ..Config::default()
        };
        assert_eq!(docker_endpoint(&cfg), "tcp://10.0.0.1:2375");
    }
}
