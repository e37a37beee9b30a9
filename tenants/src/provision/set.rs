//! `server set`: changing a server after it exists, live (`docker update`) where Docker can and
//! by recreating the container (volume kept) where it cannot, with the old settings restored on
//! a failed recreate.
//!
//! Deliberately not here: which settings are in effect (pure, in [`crate::spec`]).

use bollard::query_parameters::{RemoveContainerOptions, StopContainerOptions};

use super::container::check_dind;
use super::error::is_not_found;
use super::users::check_user_name;
use super::{ProvisionError, Provisioner};
use crate::name::ServerId;
use crate::spec;
use crate::store::{DesiredState, Server};

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

impl Provisioner {
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
}
