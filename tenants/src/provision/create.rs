//! Registering a new server: row, volume and container made and started together, or none of
//! them left behind.
//!
//! Deliberately not here: starting existing servers ([`super::lifecycle`]).

use bollard::query_parameters::{RemoveContainerOptions, RemoveVolumeOptions};

use super::container::check_dind;
use super::set::not_granted;
use super::users::check_user_name;
use super::{ProvisionError, Provisioner};
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
        if let Some(u) = &spec.user {
            check_user_name(u)?;
        }
        check_dind(&self.inner.cfg, &spec)?;
        self.check_image(&image).await?;
        if spec.init.is_none() && self.image_asks_systemd(&image).await {
            return Err(not_granted(&image, "`--init systemd`"));
        }
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
}
