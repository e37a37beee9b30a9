//! The tenant network: created when missing, checked against `[network]` when present.
//!
//! Deliberately not here: deciding what a conflict is (pure, in [`crate::spec`]) and
//! firewalling the bridge (netfilter's job).

use super::error::{is_not_found, status_of};
use super::{ProvisionError, Provisioner};
use crate::spec::{self, ExistingNetwork};

impl Provisioner {
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
}
