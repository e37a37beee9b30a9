//! Comparing the store with Docker: missing, stopped and unknown containers, and containers
//! that differ from their server's settings, reported, never deleted, started or replaced.
//!
//! Deliberately not here: acting on the report (a missing container is recreated by the next
//! `ensure_running`, or by a cluster node's healing pass in `heal.rs`; unknown ones are for
//! the operator).

use std::collections::HashMap;

use super::{ProvisionError, Provisioner};
use crate::name::ServerId;
use crate::store::{DesiredState, Server};

/// A container berth labelled that the store does not account for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ForeignContainer {
    pub name: String,
    pub container_id: String,
    pub server: Option<ServerId>,
    pub reason: String,
}

/// A live server's container made from other settings than the store holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DriftedContainer {
    pub server: ServerId,
    pub name: String,
    /// What differs, as phrases ("added capabilities are SYS_ADMIN, settings grant none").
    pub differences: Vec<String>,
}

/// Result of [`Provisioner::reconcile`]. Nothing is deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReconcileReport {
    /// Live servers with a container.
    pub present: Vec<ServerId>,
    /// Live servers whose container is gone: recreated (volume intact) on next use.
    pub missing: Vec<ServerId>,
    /// Desired running but the container is not running.
    pub stopped: Vec<ServerId>,
    /// Labelled containers of this instance unknown to the store (or of deleted servers).
    pub unknown: Vec<ForeignContainer>,
    /// Live servers whose container differs from their settings (privileges, user, image,
    /// limits): `berth server set <server> --recreate` replaces it.
    pub drift: Vec<DriftedContainer>,
}

impl Provisioner {
    /// Compares the store with Docker. Reports live servers whose container is missing (they
    /// are recreated with their volume on next use), servers that should run but do not, and
    /// containers labelled by this instance that the store does not know or has deleted, and
    /// containers that differ from their server's settings. It never deletes, starts or
    /// replaces anything.
    pub async fn reconcile(&self) -> Result<ReconcileReport, ProvisionError> {
        self.reconcile_on(None).await
    }

    /// [`Self::reconcile`] as the cluster node `node` sees it: servers placed on another node
    /// are that node's to report (never "missing" here), and a container here of a server
    /// placed elsewhere (a copy a move left behind, say) is reported unknown with where the
    /// server lives. Unplaced servers are checked here, as a login to them is served here.
    /// `None` is the single host: every server is this engine's.
    pub async fn reconcile_on(
        &self,
        node: Option<&str>,
    ) -> Result<ReconcileReport, ProvisionError> {
        self.compare(node, true).await
    }

    /// The store against Docker's one container list. `thorough` adds what a report for an
    /// operator wants and a periodic pass must not pay: the drift check (an inspect per
    /// container) and a warning per unknown container.
    pub(super) async fn compare(
        &self,
        node: Option<&str>,
        thorough: bool,
    ) -> Result<ReconcileReport, ProvisionError> {
        let mut servers = self.inner.store.servers(true).await?;
        let elsewhere: HashMap<ServerId, String> = match node {
            None => HashMap::new(),
            Some(node) => self
                .inner
                .store
                .placements()
                .await?
                .into_iter()
                .filter(|(_, n)| n != node)
                .collect(),
        };
        servers.retain(|s| !elsewhere.contains_key(&s.id));
        let by_id: HashMap<ServerId, &Server> = servers.iter().map(|s| (s.id, s)).collect();
        let listed = self.list_ours(true).await?;
        let mut report = ReconcileReport::default();
        let mut seen = std::collections::HashSet::new();
        for c in listed {
            match c.server.and_then(|id| by_id.get(&id).map(|s| (id, s))) {
                Some((id, s)) if s.deleted.is_none() => {
                    seen.insert(id);
                    report.present.push(id);
                    if s.desired == DesiredState::Running && c.state != "running" {
                        report.stopped.push(id);
                    }
                }
                Some((id, _)) => report.unknown.push(ForeignContainer {
                    name: c.name,
                    container_id: c.container_id,
                    server: Some(id),
                    reason: format!("{id} is deleted in the store"),
                }),
                None => report.unknown.push(ForeignContainer {
                    reason: match c.server {
                        Some(id) if elsewhere.contains_key(&id) => format!(
                            "{id} is placed on node {}",
                            elsewhere.get(&id).map_or("?", String::as_str)
                        ),
                        Some(id) => format!("{id} is not in the store"),
                        None => "name and berth.server label do not match".to_string(),
                    },
                    name: c.name,
                    container_id: c.container_id,
                    server: c.server,
                }),
            }
        }
        for s in servers.iter().filter(|s| s.deleted.is_none()) {
            if !seen.contains(&s.id) {
                report.missing.push(s.id);
            }
        }
        report.present.sort();
        report.stopped.sort();
        if !thorough {
            return Ok(report);
        }
        for &id in &report.present {
            let Some(c) = self.inspect(id).await? else {
                continue;
            };
            let Some(s) = by_id.get(&id) else { continue };
            let differences = crate::spec::container_drift(&self.body(s), &c);
            if !differences.is_empty() {
                let name = self.inner.names.container(id);
                tracing::warn!(server = %id, container = %name, drift = %differences.join("; "), "container differs from the server's settings");
                report.drift.push(DriftedContainer {
                    server: id,
                    name,
                    differences,
                });
            }
        }
        for u in &report.unknown {
            tracing::warn!(container = %u.name, reason = %u.reason, "berth-labelled container unknown to the store (left alone)");
        }
        Ok(report)
    }
}
