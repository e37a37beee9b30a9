//! One server's Docker objects: its image check, data volume and container (create, inspect,
//! start), whether a container is really the server's, and what a running one reports.
//!
//! Deliberately not here: the container's body (pure, in [`crate::spec`]) and when to create or
//! start it ([`super::create`], [`super::lifecycle`], [`super::set`]).

use std::net::Ipv4Addr;
use std::time::Duration;

use bollard::models::{ContainerInspectResponse, VolumeCreateRequest};
use bollard::query_parameters::CreateContainerOptions;

use super::agent_dir::prepare_agent_dir;
use super::error::{is_not_found, message_of, status_of};
use super::{ProvisionError, Provisioner, RunningServer};
use crate::config::Config;
use crate::name::ServerId;
use crate::spec::{self, LABEL_SERVER};
use crate::store::{Server, ServerSpec};

pub(super) fn check_dind(cfg: &Config, spec: &ServerSpec) -> Result<(), ProvisionError> {
    if spec.dind == Some(crate::config::DindMode::Runtime)
        && cfg.runtime.as_deref().is_none_or(str::is_empty)
    {
        return Err(ProvisionError::Invalid(
            "dind mode runtime needs tenants.runtime (e.g. \"sysbox-runc\") in the config".into(),
        ));
    }
    Ok(())
}

impl Provisioner {
    pub(super) async fn check_image(&self, image: &str) -> Result<(), ProvisionError> {
        match self.inner.docker.inspect_image(image).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Err(ProvisionError::ImageMissing {
                image: image.to_string(),
            }),
            Err(e) => Err(self.docker_err("inspect image", image, e)),
        }
    }

    pub(super) async fn inspect(
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

    pub(super) async fn volume_exists(&self, name: &str) -> Result<bool, ProvisionError> {
        match self.inner.docker.inspect_volume(name).await {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(self.docker_err("inspect volume", name, e)),
        }
    }

    pub(super) async fn create_volume(&self, server: &Server) -> Result<(), ProvisionError> {
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

    /// Creates the container from `server`'s settings (the volume must exist or Docker creates
    /// it unlabelled). A 409 (a container of that name exists: another process's start, or an
    /// on-demand start that read older settings) counts as made only when the existing container
    /// matches what the store holds now; otherwise [`ProvisionError::Drift`], never a silent
    /// success with other privileges.
    pub(super) async fn create_container(&self, server: &Server) -> Result<(), ProvisionError> {
        let name = self.inner.names.container(server.id);
        if let Some(dir) = spec::agent_dir(&self.inner.cfg, server.id)
            && let Err(e) = prepare_agent_dir(&dir)
        {
            // Docker creates it (root-owned) at start; sessions then use Docker's exec stream
            // when the gateway cannot make its socket there.
            tracing::warn!(dir = %dir.display(), error = %e, "cannot prepare the agent directory");
        }
        let image = spec::image(&self.inner.cfg, server);
        if spec::init(server) != spec::InitMode::Systemd && self.image_asks_systemd(image).await {
            tracing::warn!(
                server = %server.id,
                image,
                "image asks for systemd as PID 1 (berth.init=systemd) but the server is not granted it; \
                 it runs without systemd's privileges (grant with `berth server set {} --init systemd`)",
                server.id
            );
        }
        if spec::dind(&self.inner.cfg, server) == crate::config::DindMode::Rootless {
            self.check_rootless_engine(server.id).await?;
        }
        let body = self.body(server);
        let opts = CreateContainerOptions {
            name: Some(name.clone()),
            ..Default::default()
        };
        match self.inner.docker.create_container(Some(opts), body).await {
            Ok(_) => Ok(()),
            Err(e) if status_of(&e) == Some(409) => self.existing_matches_store(server.id).await,
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

    /// `dind = "rootless"` unmasks `/proc` (`systempaths=unconfined`) and allows setuid files:
    /// safe only where the container's uid 0 is not host uid 0. Asked of the engine before every
    /// create, failing closed when it cannot answer.
    async fn check_rootless_engine(&self, id: ServerId) -> Result<(), ProvisionError> {
        let iso = self.engine_isolation().await?;
        if iso.root_is_unprivileged() {
            return Ok(());
        }
        tracing::warn!(server = %id, engine = iso.as_str(), "refused a rootless dind container");
        Err(ProvisionError::Invalid(format!(
            "dind mode rootless needs a user-namespaced engine (dockerd --userns-remap) or a rootless \
             engine; docker at {} is {}",
            self.inner.endpoint,
            iso.describe()
        )))
    }

    /// The create body for `server` under this provisioner's config.
    pub(super) fn body(&self, server: &Server) -> bollard::models::ContainerCreateBody {
        spec::container_body(&self.inner.cfg, &self.inner.net, &self.inner.names, server)
    }

    /// Whether `image`'s labels ask for systemd as PID 1 (false when it cannot be inspected).
    /// Informational: it never changes the container berth makes.
    pub async fn image_asks_systemd(&self, image: &str) -> bool {
        match self.inner.docker.inspect_image(image).await {
            Ok(i) => spec::image_asks_systemd(i.config.as_ref().and_then(|c| c.labels.as_ref())),
            Err(_) => false,
        }
    }

    /// How server `id`'s container differs from its stored settings (empty = it matches);
    /// `None` when it has no container.
    pub async fn drift(&self, id: ServerId) -> Result<Option<Vec<String>>, ProvisionError> {
        let server = self.live_server(id).await?;
        let Some(c) = self.inspect(id).await? else {
            return Ok(None);
        };
        self.check_ours(id, &c)?;
        Ok(Some(spec::container_drift(&self.body(&server), &c)))
    }

    /// Ok when server `id`'s existing container matches the settings the store holds now.
    pub(super) async fn existing_matches_store(&self, id: ServerId) -> Result<(), ProvisionError> {
        let name = self.inner.names.container(id);
        // Right after another process's create, the engine may answer 409 before an inspect
        // finds the container: ask again briefly (as `start_container` does for its 404).
        let mut attempt = 0;
        loop {
            match self.drift(id).await? {
                Some(d) if d.is_empty() => return Ok(()),
                Some(drift) => {
                    return Err(ProvisionError::Drift {
                        server: id,
                        container: name,
                        drift,
                    });
                }
                None if attempt < 30 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                None => {
                    return Err(ProvisionError::Docker {
                        action: "create container",
                        object: name,
                        status: Some(409),
                        message:
                            "docker reports a container of that name but none can be inspected"
                                .into(),
                    });
                }
            }
        }
    }

    pub(super) async fn start_container(&self, id: ServerId) -> Result<(), ProvisionError> {
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

    pub(super) fn check_ours(
        &self,
        id: ServerId,
        c: &ContainerInspectResponse,
    ) -> Result<(), ProvisionError> {
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

    pub(super) fn running_from(
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
}

/// The container's IPv4 address on `network`, if attached.
pub(super) fn container_address(c: &ContainerInspectResponse, network: &str) -> Option<Ipv4Addr> {
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use bollard::models::{EndpointSettings, NetworkSettings};

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
}
