//! What Docker holds for this instance: container states, the address map the DNS zone serves
//! and the per-server network endpoints netfilter's port map needs.
//!
//! Deliberately not here: following changes ([`super::watch`]) and judging them against the
//! store ([`super::reconcile`]).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};

use bollard::errors::Error as BollardError;
use bollard::query_parameters::ListContainersOptions;

use super::container::container_address;
use super::{ProvisionError, Provisioner};
use crate::name::ServerId;
use crate::spec::{LABEL_INSTANCE, LABEL_MANAGED, LABEL_SERVER};

/// One running server's attachment to the tenant network, as Docker reports it (see
/// [`Provisioner::server_endpoints`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerEndpoint {
    pub server: ServerId,
    /// Docker's handle on the container's network namespace (`/var/run/docker/netns/<id>`).
    pub sandbox_key: Option<String>,
    /// The container's init process as the host sees it.
    pub pid: Option<u32>,
    pub mac: String,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<std::net::Ipv6Addr>,
}

/// What Docker says about one server's container.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ContainerStatus {
    pub container_id: String,
    /// Docker's state word: running, exited, created, restarting, paused, dead…
    pub state: String,
    pub running: bool,
    pub address: Option<Ipv4Addr>,
}

pub(super) struct Listed {
    pub(super) name: String,
    pub(super) container_id: String,
    pub(super) server: Option<ServerId>,
    pub(super) state: String,
    pub(super) address: Option<Ipv4Addr>,
}

impl Provisioner {
    /// Docker's view of one server's container; `None` when it does not exist.
    pub async fn status(&self, id: ServerId) -> Result<Option<ContainerStatus>, ProvisionError> {
        Ok(self.inspect(id).await?.map(|c| {
            let state = c.state.as_ref();
            ContainerStatus {
                container_id: c.id.clone().unwrap_or_default(),
                state: state
                    .and_then(|s| s.status)
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
                running: state.and_then(|s| s.running).unwrap_or(false),
                address: container_address(&c, &self.inner.net.name),
            }
        }))
    }

    /// Every container labelled by this berth instance (running or not), by server id.
    pub async fn statuses(&self) -> Result<BTreeMap<ServerId, ContainerStatus>, ProvisionError> {
        let list = self.list_ours(true).await?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                let id = c.server?;
                Some((
                    id,
                    ContainerStatus {
                        container_id: c.container_id,
                        state: c.state.clone(),
                        running: c.state == "running",
                        address: c.address,
                    },
                ))
            })
            .collect())
    }

    pub(super) async fn list_ours(&self, all: bool) -> Result<Vec<Listed>, ProvisionError> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{LABEL_MANAGED}=true"),
                format!("{LABEL_INSTANCE}={}", self.inner.names.prefix()),
            ],
        )]);
        let opts = ListContainersOptions {
            all,
            filters: Some(filters),
            ..Default::default()
        };
        let list = self
            .inner
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(|e| self.docker_err("list containers", "", e))?;
        Ok(list
            .into_iter()
            .map(|c| {
                let name = c
                    .names
                    .as_ref()
                    .and_then(|n| n.first())
                    .cloned()
                    .unwrap_or_default();
                let name = name.strip_prefix('/').unwrap_or(&name).to_string();
                let label = c
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_SERVER))
                    .and_then(|v| crate::name::parse_server_ref(v));
                let by_name = self.inner.names.parse_container(&name);
                Listed {
                    server: label.filter(|l| Some(*l) == by_name),
                    name,
                    container_id: c.id.unwrap_or_default(),
                    state: c.state.map(|s| s.to_string()).unwrap_or_default(),
                    address: c
                        .network_settings
                        .and_then(|n| n.networks)
                        .and_then(|n| {
                            n.get(&self.inner.net.name)
                                .and_then(|e| e.ip_address.clone())
                        })
                        .and_then(|ip| ip.parse().ok()),
                }
            })
            .collect())
    }

    /// Addresses of running servers on the tenant network (for the DNS local zone).
    pub async fn server_addresses(&self) -> Result<BTreeMap<ServerId, IpAddr>, ProvisionError> {
        Ok(self
            .list_ours(false)
            .await?
            .into_iter()
            .filter(|c| c.state == "running")
            .filter_map(|c| Some((c.server?, IpAddr::V4(c.address?))))
            .collect())
    }

    /// What the host needs to bind each running server's bridge port to its own addresses
    /// (netfilter's port map): the network namespace Docker holds for it (`SandboxKey`), its
    /// init's pid, and the MAC and addresses Docker assigned on the tenant network. All of it
    /// comes from Docker, none from inside the container. Servers Docker gives no MAC on the
    /// tenant network are left out.
    pub async fn server_endpoints(&self) -> Result<Vec<ServerEndpoint>, ProvisionError> {
        let mut out = Vec::new();
        for c in self.list_ours(false).await? {
            let Some(server) = c.server.filter(|_| c.state == "running") else {
                continue;
            };
            let info = match self
                .inner
                .docker
                .inspect_container(&c.container_id, None)
                .await
            {
                Ok(i) => i,
                // Gone between the list and the inspect: it is not running any more.
                Err(BollardError::DockerResponseServerError {
                    status_code: 404, ..
                }) => continue,
                Err(e) => return Err(self.docker_err("inspect container", &c.name, e)),
            };
            let ns = info.network_settings.as_ref();
            let ep = ns
                .and_then(|n| n.networks.as_ref())
                .and_then(|n| n.get(&self.inner.net.name));
            let Some(mac) = ep
                .and_then(|e| e.mac_address.clone())
                .filter(|m| !m.is_empty())
            else {
                continue;
            };
            out.push(ServerEndpoint {
                server,
                sandbox_key: ns
                    .and_then(|n| n.sandbox_key.clone())
                    .filter(|k| !k.is_empty()),
                pid: info
                    .state
                    .as_ref()
                    .and_then(|s| s.pid)
                    .and_then(|p| u32::try_from(p).ok())
                    .filter(|p| *p > 0),
                mac,
                ipv4: ep
                    .and_then(|e| e.ip_address.as_deref())
                    .and_then(|a| a.parse().ok()),
                ipv6: ep
                    .and_then(|e| e.global_ipv6_address.as_deref())
                    .and_then(|a| a.parse().ok()),
            });
        }
        out.sort_by_key(|e| e.server);
        Ok(out)
    }
}
