//! The login user: a valid name before anything is made, present in the image and owning the
//! data volume once the container runs. These root execs are the only ones provisioning does.
//!
//! Deliberately not here: session execs (the gateway's Docker backend); the exec-and-wait itself
//! is `engine::exec_as_root`, shared with the gateway.

use std::time::Duration;

use super::{ProvisionError, Provisioner};
use crate::name::ServerId;
use crate::spec;
use crate::store::Server;

pub(super) fn check_user_name(u: &str) -> Result<(), ProvisionError> {
    if spec::valid_user(u) {
        Ok(())
    } else {
        Err(ProvisionError::Invalid(format!(
            "user {u:?} must be root or a login name of [a-z0-9_-] starting with a letter or _"
        )))
    }
}

impl Provisioner {
    /// Runs `argv` as root in server `id`'s (running) container; its exit code.
    async fn exec_root(&self, id: ServerId, argv: Vec<String>) -> Result<i64, ProvisionError> {
        let name = self.inner.names.container(id);
        match super::exec_as_root(&self.inner.docker, &name, argv, Duration::from_secs(5)).await {
            Ok(Some(code)) => Ok(code),
            Ok(None) => Err(ProvisionError::Internal(format!(
                "a helper command in {name} did not finish within 5 s"
            ))),
            Err(e) => Err(self.docker_err(e.step, &name, e.source)),
        }
    }

    /// The server's login user must exist in its image, and a non-root user must own the data
    /// volume (Docker seeds a new volume with the image's directory, which may be root's).
    pub(super) async fn prepare_user(&self, server: &Server) -> Result<(), ProvisionError> {
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
}
