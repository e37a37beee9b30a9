//! Running, stopping and removing existing servers. `ensure_running` is the login path: one
//! shared, spawned attempt per server in this process, recreating a missing container with its
//! volume.
//!
//! Deliberately not here: making new servers ([`super::create`]) and changing their settings
//! ([`super::set`]).

use std::net::Ipv4Addr;

use bollard::query_parameters::{
    RemoveContainerOptions, RemoveVolumeOptions, RestartContainerOptions, StopContainerOptions,
};
use futures::future::{BoxFuture, FutureExt, Shared};

use super::error::is_not_found;
use super::set::ChangeFlight;
use super::{ProvisionError, Provisioner};
use crate::name::ServerId;
use crate::spec;
use crate::store::DesiredState;

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

pub(super) type Flight = Shared<BoxFuture<'static, Result<RunningServer, ProvisionError>>>;

/// What holds a server's single-flight slot in this process.
#[derive(Clone)]
pub(super) enum Slot {
    /// An on-demand start: callers join it and share its result.
    Start(Flight),
    /// A change that may replace the container (`server set`): a start waits until it is done
    /// and then starts from the settings it left in the store, so no start in this process can
    /// make a container from settings the change is replacing.
    Change(ChangeFlight),
}

/// Frees a server's slot when the task holding it ends, also when it panics.
pub(super) struct SlotGuard {
    pub(super) prov: Provisioner,
    pub(super) id: ServerId,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.prov
            .inner
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

impl Provisioner {
    /// Makes sure server `id` runs and returns its address. Idempotent; concurrent callers for
    /// the same server share one attempt (one start) and get the same result. A missing
    /// container is recreated from the store with its volume intact. Sets desired state to
    /// running.
    pub async fn ensure_running(&self, id: ServerId) -> Result<RunningServer, ProvisionError> {
        loop {
            let held = {
                let mut map = self
                    .inner
                    .inflight
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                match map.get(&id) {
                    Some(slot) => slot.clone(),
                    None => {
                        let this = self.clone();
                        // Spawned so a caller that gives up (client disconnect) does not abort
                        // a half-done start for the others.
                        let task = tokio::spawn(async move {
                            let _slot = SlotGuard {
                                prov: this.clone(),
                                id,
                            };
                            this.ensure_running_once(id).await
                        });
                        let f: Flight = async move {
                            task.await.unwrap_or_else(|e| {
                                Err(ProvisionError::Internal(format!("start task failed: {e}")))
                            })
                        }
                        .boxed()
                        .shared();
                        map.insert(id, Slot::Start(f.clone()));
                        Slot::Start(f)
                    }
                }
            };
            match held {
                Slot::Start(f) => return f.await,
                // Its outcome is the change's caller's business; start afresh once it is done.
                Slot::Change(c) => {
                    let _ = c.await;
                }
            }
        }
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
        self.stop_container_only(id).await
    }

    /// Stops the container, leaving the desired state as it is (gone already is stopped).
    pub(super) async fn stop_container_only(&self, id: ServerId) -> Result<(), ProvisionError> {
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
}
