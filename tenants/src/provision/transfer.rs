//! Moving a server's data between Docker hosts (`berth server move`): the source engine hands
//! out the data volume as a tar stream of a stopped container, the target engine makes the
//! server's volume and container and fills the volume from that stream. Each side only talks
//! to its own engine; what carries the stream between hosts is not this module's business.
//!
//! Deliberately not here: which node holds a server (the store's placements) and deciding when
//! a move may switch (the caller).

use std::io;

use bollard::query_parameters::{
    DownloadFromContainerOptions, RemoveContainerOptions, RemoveVolumeOptions,
    StopContainerOptions, TopOptions, UploadToContainerOptions,
};
use bytes::Bytes;
use futures::{Stream, StreamExt};

use super::error::{is_not_found, status_of};
use super::{ProvisionError, Provisioner};
use crate::name::ServerId;

/// What a process of the in-container agent looks like in `ps` (its copy's path).
const AGENT_MARK: &str = "/usr/lib/berth/berth-agent";

impl Provisioner {
    /// Sessions open in `id`'s container: processes the agent started that still run, plus
    /// running Docker execs other than the agent itself (the attach path). A container that
    /// is not running has none.
    pub async fn open_sessions(&self, id: ServerId) -> Result<usize, ProvisionError> {
        let name = self.inner.names.container(id);
        let opts = TopOptions {
            ps_args: "-o pid,ppid,args".into(),
        };
        let top = match self.inner.docker.top_processes(&name, Some(opts)).await {
            Ok(t) => t,
            // 404: no container; 409: not running.
            Err(e) if is_not_found(&e) || status_of(&e) == Some(409) => return Ok(0),
            Err(e) => return Err(self.docker_err("list processes of", &name, e)),
        };
        let rows: Vec<(String, String, String)> = top
            .processes
            .unwrap_or_default()
            .into_iter()
            .filter_map(|p| {
                let mut it = p.into_iter();
                Some((it.next()?, it.next()?, it.collect::<Vec<_>>().join(" ")))
            })
            .collect();
        let agents: Vec<&str> = rows
            .iter()
            .filter(|(_, _, args)| args.contains(AGENT_MARK))
            .map(|(pid, _, _)| pid.as_str())
            .collect();
        let mut sessions = rows
            .iter()
            .filter(|(_, ppid, args)| agents.contains(&ppid.as_str()) && !args.contains(AGENT_MARK))
            .count();
        if let Some(c) = self.inspect(id).await?
            && let Some(execs) = c.exec_ids
        {
            for exec in execs {
                match self.inner.docker.inspect_exec(&exec).await {
                    Ok(e) => {
                        let is_agent = e
                            .process_config
                            .as_ref()
                            .and_then(|p| p.entrypoint.as_deref())
                            .is_some_and(|ep| ep.contains(AGENT_MARK));
                        if e.running == Some(true) && !is_agent {
                            sessions += 1;
                        }
                    }
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => return Err(self.docker_err("inspect exec of", &name, e)),
                }
            }
        }
        Ok(sessions)
    }

    /// Stops `id`'s container for a transfer, leaving its desired state alone (the target
    /// starts it when the server was meant to run). No container is fine.
    pub async fn halt_for_transfer(&self, id: ServerId) -> Result<(), ProvisionError> {
        self.live_server(id).await?;
        let name = self.inner.names.container(id);
        let t = i32::try_from(self.inner.cfg.stop_timeout_secs).unwrap_or(i32::MAX);
        let opts = StopContainerOptions {
            t: Some(t),
            signal: None,
        };
        match self.inner.docker.stop_container(&name, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) || status_of(&e) == Some(304) => Ok(()),
            Err(e) => Err(self.docker_err("stop container", &name, e)),
        }
    }

    /// The data volume of `id` as a tar stream whose entries sit under the mount point's last
    /// component (`apps/…`), read through its (stopped) container. A server without a
    /// container here has nothing to hand out.
    pub async fn export_data(
        &self,
        id: ServerId,
    ) -> Result<impl Stream<Item = Result<Bytes, ProvisionError>> + Send + 'static, ProvisionError>
    {
        self.live_server(id).await?;
        let name = self.inner.names.container(id);
        let Some(c) = self.inspect(id).await? else {
            return Err(ProvisionError::Invalid(format!(
                "{} has no container on this host ({name}); nothing to move",
                id.login_name()
            )));
        };
        self.check_ours(id, &c)?;
        if c.state.as_ref().and_then(|s| s.running) == Some(true) {
            return Err(ProvisionError::Invalid(format!(
                "{name} is running; stop it before exporting its data"
            )));
        }
        let opts = DownloadFromContainerOptions {
            path: self.inner.cfg.volume_mount.clone(),
        };
        let this = self.clone();
        Ok(self
            .inner
            .docker
            .download_from_container(&name, Some(opts))
            .map(move |r| r.map_err(|e| this.docker_err("read the data of", &name, e))))
    }

    /// Makes `id`'s volume and container on this engine (not started) and fills the volume
    /// from `tar` (as [`Provisioner::export_data`] writes it). Refuses when this engine already
    /// holds either; on any failure removes what it made, so a failed import leaves nothing.
    pub async fn import_data<S>(&self, id: ServerId, tar: S) -> Result<(), ProvisionError>
    where
        S: Stream<Item = Result<Bytes, io::Error>> + Send + 'static,
    {
        let server = self.live_server(id).await?;
        let container = self.inner.names.container(id);
        let volume = self.inner.names.volume(id);
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
        let image = crate::spec::image(&self.inner.cfg, &server).to_string();
        self.check_image(&image).await?;
        self.ensure_network().await?;
        let mut made_volume = false;
        let result: Result<(), ProvisionError> = async {
            self.create_volume(&server).await?;
            made_volume = true;
            self.create_container(&server).await?;
            let parent = std::path::Path::new(&self.inner.cfg.volume_mount)
                .parent()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|| "/".into());
            let opts = UploadToContainerOptions {
                path: parent,
                ..Default::default()
            };
            self.inner
                .docker
                .upload_to_container(&container, Some(opts), bollard::body_try_stream(tar))
                .await
                .map_err(|e| self.docker_err("write the data of", &container, e))
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(server = %id, error = %e, "import failed; removing what it made");
            if let Err(re) = self.discard_copy_inner(id, made_volume).await {
                tracing::error!(server = %id, error = %re, "cannot clean up after a failed import");
            }
            return Err(e);
        }
        self.audit(id, "import", "success", serde_json::Value::Null)
            .await;
        tracing::info!(server = %id, "imported server data");
        Ok(())
    }

    /// Removes this engine's copy of `id` (container and data volume). Only for a copy the
    /// store does not serve from here: the caller checks the placement.
    pub async fn discard_copy(&self, id: ServerId) -> Result<(), ProvisionError> {
        self.discard_copy_inner(id, true).await?;
        self.audit(id, "discard-copy", "success", serde_json::Value::Null)
            .await;
        tracing::info!(server = %id, "removed this host's copy of the server");
        Ok(())
    }

    async fn discard_copy_inner(&self, id: ServerId, volume: bool) -> Result<(), ProvisionError> {
        let container = self.inner.names.container(id);
        let opts = RemoveContainerOptions {
            force: true,
            v: false,
            link: false,
        };
        match self
            .inner
            .docker
            .remove_container(&container, Some(opts))
            .await
        {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(self.docker_err("remove container", &container, e)),
        }
        if volume {
            let name = self.inner.names.volume(id);
            match self
                .inner
                .docker
                .remove_volume(&name, Some(RemoveVolumeOptions { force: false }))
                .await
            {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(self.docker_err("remove volume", &name, e)),
            }
        }
        Ok(())
    }
}
