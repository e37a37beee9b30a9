//! Registering a new server: row, volume and container made and started together, or none of
//! them left behind.
//!
//! Deliberately not here: starting existing servers ([`super::lifecycle`]).

use bollard::query_parameters::{RemoveContainerOptions, RemoveVolumeOptions};

use super::container::check_dind;
use super::set::not_granted;
use super::users::check_user_name;
use super::{ProvisionError, Provisioner};
use crate::name::ServerId;
use crate::store::{Server, ServerSpec};

impl Provisioner {
    /// Registers a server for `owner`, creates its volume and container, and starts it.
    /// On any failure the container, volume and row made here are removed again, so the store
    /// and Docker stay consistent (the id is still never reused). An image labelled
    /// `berth.init=systemd` is refused unless `spec.init` says what to do: the label never
    /// grants systemd's privileges by itself.
    pub async fn create_server(
        &self,
        owner: &str,
        spec: ServerSpec,
    ) -> Result<Server, ProvisionError> {
        let image = spec
            .image
            .clone()
            .unwrap_or_else(|| self.inner.cfg.image.clone());
        self.check_new(&spec, &image).await?;
        let server = self.inner.store.insert_server(owner, &spec).await?;
        let id = server.id;
        match self.make(&server).await {
            Ok(()) => {
                tracing::info!(server = %id, owner, image, "created server");
                Ok(server)
            }
            Err(e) => {
                if let Err(se) = self.inner.store.forget_server(id).await {
                    tracing::error!(server = %id, error = %se, "cannot forget server row after failed create");
                }
                Err(e)
            }
        }
    }

    /// Makes the volume and container of a server already in the store (registered on
    /// another host of a cluster and placed on this node) and starts it, with the checks and
    /// the undo of [`Provisioner::create_server`]; the row is the caller's to forget.
    pub async fn create_registered(&self, id: ServerId) -> Result<Server, ProvisionError> {
        let server = self.live_server(id).await?;
        let image = crate::spec::image(&self.inner.cfg, &server).to_string();
        self.check_new(&server.spec, &image).await?;
        self.make(&server).await?;
        tracing::info!(server = %id, owner = %server.owner, image, "created server");
        Ok(server)
    }

    async fn check_new(&self, spec: &ServerSpec, image: &str) -> Result<(), ProvisionError> {
        if let Some(u) = &spec.user {
            check_user_name(u)?;
        }
        check_dind(&self.inner.cfg, spec)?;
        self.check_image(image).await?;
        if spec.init.is_none() && self.image_asks_systemd(image).await {
            return Err(not_granted(image, "`--init systemd`"));
        }
        self.ensure_network().await
    }

    /// Volume, container, start and login user for `server`; on failure removes the container
    /// and volume it made.
    async fn make(&self, server: &Server) -> Result<(), ProvisionError> {
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
            self.create_volume(server).await?;
            made_volume = true;
            self.create_container(server).await?;
            made_container = true;
            self.start_container(id).await?;
            self.prepare_user(server).await?;
            Ok(())
        }
        .await;
        if let Err(e) = &result {
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
        }
        result
    }
}
