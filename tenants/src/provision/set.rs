//! `server set`: changing a server after it exists, live (`docker update`) where Docker can and
//! by recreating the container (volume kept) where it cannot, with the old settings restored on
//! a failed recreate.
//!
//! A recreate holds the server's single-flight slot (starts in this process wait), stores the
//! new settings before it removes the old container (a start in another process then reads
//! them), accepts an existing container only when it matches them, and checks the container it
//! leaves behind. When restoring fails too, the error says what the store and Docker each hold.
//!
//! Deliberately not here: which settings are in effect (pure, in [`crate::spec`]).

use bollard::query_parameters::{RemoveContainerOptions, StopContainerOptions};
use futures::future::{BoxFuture, FutureExt, Shared};

use super::container::check_dind;
use super::error::is_not_found;
use super::lifecycle::{Slot, SlotGuard};
use super::users::check_user_name;
use super::{ProvisionError, Provisioner};
use crate::name::ServerId;
use crate::spec::{self, InitMode};
use crate::store::{DesiredState, Server};

pub(super) type ChangeFlight =
    Shared<BoxFuture<'static, Result<(Server, Applied), ProvisionError>>>;

/// How often a recreate replaces a container another process made from other settings in the
/// window between remove and create before giving up (one such start per process can be in
/// flight when the new settings are stored).
const RECREATE_ATTEMPTS: u32 = 3;

/// What `server set` changes; `None` leaves a setting as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerChange {
    pub image: Option<String>,
    pub memory: Option<u64>,
    pub nano_cpus: Option<i64>,
    pub pids: Option<i64>,
    pub user: Option<String>,
    pub dind: Option<crate::config::DindMode>,
    /// What runs as PID 1; `Some(InitMode::Systemd)` is the only way to grant systemd's
    /// privileges.
    pub init: Option<InitMode>,
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
    ///
    /// Holds the server's single-flight slot throughout: an on-demand start in this process
    /// waits for the change and then starts from the settings it stored. Runs in a spawned task,
    /// so a caller that gives up does not abort a half-done recreate.
    pub async fn set_server(
        &self,
        id: ServerId,
        change: ServerChange,
    ) -> Result<(Server, Applied), ProvisionError> {
        loop {
            // (mine, slot): the change this call started, or someone else's start or change.
            let (mine, held) = {
                let mut map = self
                    .inner
                    .inflight
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                match map.get(&id) {
                    Some(slot) => (false, slot.clone()),
                    None => {
                        let this = self.clone();
                        let change = change.clone();
                        let task = tokio::spawn(async move {
                            let _slot = SlotGuard {
                                prov: this.clone(),
                                id,
                            };
                            this.set_server_held(id, change).await
                        });
                        let f: ChangeFlight = async move {
                            task.await.unwrap_or_else(|e| {
                                Err(ProvisionError::Internal(format!("change task failed: {e}")))
                            })
                        }
                        .boxed()
                        .shared();
                        map.insert(id, Slot::Change(f.clone()));
                        (true, Slot::Change(f))
                    }
                }
            };
            match held {
                Slot::Change(c) if mine => return c.await,
                // Someone else's start or change: wait for it, then take the slot.
                Slot::Change(c) => {
                    let _ = c.await;
                }
                Slot::Start(f) => {
                    let _ = f.await;
                }
            }
        }
    }

    async fn set_server_held(
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
        if let Some(i) = change.init {
            spec.init = Some(i);
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
            || spec::dind(cfg, &new) != spec::dind(cfg, &server)
            || spec::init(&new) != spec::init(&server);
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
            "init": spec::init(&new).as_str(),
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
        let image = spec::image(cfg, &new);
        self.check_image(image).await?;
        if change.init.is_none()
            && spec::init(&new) != InitMode::Systemd
            && self.image_asks_systemd(image).await
        {
            return Err(not_granted(
                image,
                &format!("`berth server set {id} --init systemd`"),
            ));
        }
        // Stored first: a start in another process that reads the store from now on makes the
        // new container, and one that read it before is caught by the 409 rule.
        self.inner.store.set_server_spec(id, &new.spec).await?;
        match self.recreate_with(&new).await {
            Ok(()) => {
                self.audit(id, "set", "success", detail).await;
                tracing::info!(server = %id, "recreated with new settings, volume kept");
                Ok((new, Applied::Recreated))
            }
            Err(e) => {
                tracing::warn!(server = %id, error = %e, "recreate failed; restoring the old settings");
                let restored = match self.inner.store.set_server_spec(id, &server.spec).await {
                    Ok(()) => self.recreate_with(&server).await,
                    Err(se) => Err(se.into()),
                };
                self.audit(
                    id,
                    "set",
                    "failure",
                    serde_json::json!({
                        "error": e.to_string(),
                        "rollback": restored.as_ref().err().map(ToString::to_string),
                    }),
                )
                .await;
                match restored {
                    Ok(()) => Err(e),
                    Err(re) => {
                        let (store, docker) = self.describe_state(id).await;
                        tracing::error!(server = %id, error = %e, rollback_error = %re, store, docker, "server set failed and so did restoring the old settings");
                        Err(ProvisionError::RollbackFailed {
                            server: id,
                            error: e.to_string(),
                            rollback: re.to_string(),
                            store,
                            docker,
                        })
                    }
                }
            }
        }
    }

    /// What the store and Docker hold for server `id` now, in words, for an error that has to
    /// tell the operator where things stand.
    async fn describe_state(&self, id: ServerId) -> (String, String) {
        let cfg = &self.inner.cfg;
        let store = match self.inner.store.server(id).await {
            Ok(Some(s)) => format!(
                "image {}, user {}, dind {}, init {}",
                spec::image(cfg, &s),
                spec::login_user(cfg, &s),
                spec::dind(cfg, &s).as_str(),
                spec::init(&s).as_str()
            ),
            Ok(None) => "no such server".to_string(),
            Err(e) => format!("unknown settings (cannot read the store: {e})"),
        };
        let name = self.inner.names.container(id);
        let docker = match self.drift(id).await {
            Ok(None) => format!("no container {name} (the next start creates it from the store)"),
            Ok(Some(d)) if d.is_empty() => format!("container {name} matching the store"),
            Ok(Some(d)) => format!("container {name} that differs: {}", d.join("; ")),
            Err(e) => format!("an unknown state of container {name} ({e})"),
        };
        (store, docker)
    }

    /// Replaces server `new.id`'s container with one made from `new` (volume kept; the store
    /// must already hold `new`'s spec), starts it (and stops it again when it should not run),
    /// and checks that the container left behind matches `new`.
    async fn recreate_with(&self, new: &Server) -> Result<(), ProvisionError> {
        let id = new.id;
        let name = self.inner.names.container(id);
        let mut attempt = 0;
        loop {
            attempt += 1;
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
            let hook = self
                .inner
                .recreate_hook
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if let Some(hook) = hook {
                hook(id).await;
            }
            match self.create_container(new).await {
                Ok(()) => break,
                Err(ProvisionError::Drift { drift, .. }) if attempt < RECREATE_ATTEMPTS => {
                    tracing::warn!(server = %id, attempt, drift = %drift.join("; "), "a container from other settings appeared while recreating; replacing it");
                }
                Err(e) => return Err(e),
            }
        }
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
        prepared?;
        match self.drift(id).await? {
            Some(d) if d.is_empty() => Ok(()),
            Some(drift) => Err(ProvisionError::Drift {
                server: id,
                container: name,
                drift,
            }),
            None => Err(ProvisionError::Internal(format!(
                "{name} vanished right after it was recreated"
            ))),
        }
    }
}

/// The refusal when a create or change would run an image that asks for systemd without the
/// operator's grant: what was wrong and both ways forward (`fix` is the granting command).
pub(super) fn not_granted(image: &str, fix: &str) -> ProvisionError {
    ProvisionError::Invalid(format!(
        "image {image} boots systemd as PID 1 (label berth.init=systemd), and berth never grants \
         systemd's privileges from an image label: grant them with {fix} (adds SYS_ADMIN, \
         NET_ADMIN, SYS_PTRACE, MKNOD and unconfined seccomp/AppArmor, see docs/SECURITY.md), or \
         pass --init default to run the image without them (systemd will not boot)"
    ))
}
