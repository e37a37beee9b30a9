//! Tenant containers through the Docker Engine API (bollard), kept consistent with the store.
//!
//! The store is the source of truth for which servers exist; Docker holds what runs. Every
//! operation is written so a failure leaves the two consistent: a failed create removes what
//! it made and forgets the row; a container removed behind berth's back is recreated (with
//! its volume) the next time the server is needed; containers berth labelled but the store
//! does not know are reported, never deleted.
//!
//! `ensure_running` is single-flight per server inside this process (a shared, spawned
//! future), and `server set` holds the same slot while it replaces a container, so no start in
//! this process makes a container from settings being replaced. Across processes it relies on
//! Docker's own idempotence (create → 409, start of a running container → 304) and on one
//! rule: a 409 counts as made only when the existing container matches the settings the store
//! holds now (`server set` stores the new settings before it removes the old container, and
//! checks the container it leaves running against them).
//!
//! Deliberately not here: session execs (the gateway drives `docker()` itself) and
//! firewalling. The only execs here are root helpers at create/recreate time (does the login
//! user exist in the image, does it own the data volume).
//!
//! Files: this one holds [`Provisioner`] itself (connection, accessors, the store helpers every
//! operation shares); `error.rs` says what went wrong and sorts Docker's answers into outage vs
//! final; `engine.rs` finds and reaches the Docker endpoint; `network.rs` keeps the tenant
//! network; `container.rs` makes, inspects and starts one server's container and volume;
//! `agent_dir.rs` prepares the host directory mounted as `/dev/berth`; `users.rs` checks the
//! login user inside a new container; `create.rs` registers a new server; `lifecycle.rs` runs,
//! stops and removes servers (single-flight `ensure_running`); `set.rs` changes one afterwards;
//! `status.rs` reports what Docker holds; `watch.rs` follows addresses through Docker events;
//! `reconcile.rs` compares the store with Docker.

mod agent_dir;
mod container;
mod create;
mod engine;
mod error;
mod heal;
mod lifecycle;
mod network;
mod reconcile;
mod set;
mod status;
mod transfer;
mod users;
mod watch;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bollard::Docker;

use crate::config::{Config, NetworkConfig};
use crate::name::ServerId;
use crate::spec::Names;
use crate::store::{AuditEvent, AuditKind, Server, Store};

pub use engine::{
    EngineIsolation, ExecFailed, connect_docker, docker_endpoint, engine_isolation, exec_as_root,
    swarm_node_addr,
};
pub use error::{DockerError, ProvisionError};
pub use heal::{HealReport, create_grace};
pub use lifecycle::RunningServer;
pub use reconcile::{DriftedContainer, ForeignContainer, ReconcileReport};
pub use set::{Applied, ServerChange};
pub use status::{ContainerStatus, ServerEndpoint};
pub use watch::Statuses;

use lifecycle::Slot;

struct Inner {
    docker: Docker,
    endpoint: String,
    net: NetworkConfig,
    cfg: Config,
    names: Names,
    store: Store,
    inflight: Mutex<HashMap<ServerId, Slot>>,
    recreate_hook: Mutex<Option<RecreateHook>>,
}

/// Called by `server set` between removing a server's container and creating its replacement
/// (see [`Provisioner::set_recreate_hook`]).
pub type RecreateHook =
    Arc<dyn Fn(ServerId) -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

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
                recreate_hook: Mutex::new(None),
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

    /// How the engine keeps container root from being host root (asked each call: a daemon
    /// restarted with other flags is seen at once).
    pub async fn engine_isolation(&self) -> Result<EngineIsolation, ProvisionError> {
        engine_isolation(&self.inner.docker)
            .await
            .map_err(|e| self.docker_err("read the engine's info", "/info", e))
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

    /// Runs `hook` in every recreate of `server set`, after the old container is removed and
    /// before the new one is created: lets tests put a concurrent process's container in that
    /// window deterministically. Not for production use.
    #[doc(hidden)]
    pub fn set_recreate_hook(&self, hook: Option<RecreateHook>) {
        *self
            .inner
            .recreate_hook
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = hook;
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
}
