//! A cluster node acting on its own reconcile report: servers that should run are started, and
//! a lost container is made again from the store when its data volume is still there.
//!
//! A single host leaves this to Docker's restart policy and the next login (`ensure_running`);
//! a node heals because a front's login to a server behind a dead container would otherwise
//! pay the whole recreate, and because nobody logs in to a server that runs a web site.
//!
//! Deliberately never done here: deleting anything, making an empty volume (a missing volume
//! is the operator's to explain: a disk not mounted, a move half done), changing a server's
//! desired state (an operator's `server stop` racing a heal must win), or touching a server
//! that is moving or placed on another node.

use super::{ProvisionError, Provisioner};
use crate::name::ServerId;
use crate::store::DesiredState;

/// How long a new server is left to its `server create` (which makes the volume, then the
/// container, then starts it, and undoes everything if a step fails — a heal acting half-way
/// through would make that create fail): twice the healing interval, at least 10 s.
pub fn create_grace(interval_secs: u64) -> std::time::Duration {
    std::time::Duration::from_secs(interval_secs.saturating_mul(2).max(10))
}

/// What one [`Provisioner::heal_on`] pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct HealReport {
    /// Desired running, container stopped: started.
    pub started: Vec<ServerId>,
    /// Desired running, container gone, volume kept: container made again and started.
    pub recreated: Vec<ServerId>,
    /// Needed healing but were left alone, with why (volume missing, moving, busy).
    pub left: Vec<(ServerId, String)>,
    /// Docker or the store refused; tried again on the next pass.
    pub failed: Vec<(ServerId, String)>,
}

impl HealReport {
    pub fn is_quiet(&self) -> bool {
        self.started.is_empty()
            && self.recreated.is_empty()
            && self.left.is_empty()
            && self.failed.is_empty()
    }
}

enum Outcome {
    /// Meant to be stopped: nothing to heal (made again at its next start, as on one host).
    NotWanted,
    Started,
    Recreated,
    Left(String),
}

impl Provisioner {
    /// One healing pass for node `node` (`None`: a single host, every server is this
    /// engine's): the store against Docker's container list (without the reconcile report's
    /// drift inspections), then each stopped or missing server whose desired state is running
    /// is started or recreated, re-checked against the store just before.
    /// Servers younger than `grace` are their `server create`'s ([`create_grace`]).
    pub async fn heal_on(
        &self,
        node: Option<&str>,
        grace: std::time::Duration,
    ) -> Result<HealReport, ProvisionError> {
        let report = self.compare(node, false).await?;
        let mut out = HealReport::default();
        let candidates = report
            .stopped
            .iter()
            .map(|&id| (id, false))
            .chain(report.missing.iter().map(|&id| (id, true)));
        for (id, missing) in candidates {
            match self.heal_one(id, node, missing, grace).await {
                Ok(Outcome::Started) => out.started.push(id),
                Ok(Outcome::Recreated) => out.recreated.push(id),
                Ok(Outcome::Left(why)) => out.left.push((id, why)),
                Ok(Outcome::NotWanted) => {}
                Err(e) => out.failed.push((id, e.to_string())),
            }
        }
        for id in &out.started {
            tracing::info!(server = %id, "heal: started a server that should run");
        }
        for id in &out.recreated {
            tracing::warn!(server = %id, "heal: recreated a lost container with its volume");
        }
        for (id, why) in &out.failed {
            tracing::warn!(server = %id, error = %why, "heal: failed; trying again next pass");
        }
        Ok(out)
    }

    async fn heal_one(
        &self,
        id: ServerId,
        node: Option<&str>,
        missing: bool,
        grace: std::time::Duration,
    ) -> Result<Outcome, ProvisionError> {
        let server = self.live_server(id).await?;
        if server.desired != DesiredState::Running {
            return Ok(Outcome::NotWanted);
        }
        let age = chrono::Utc::now().signed_duration_since(server.created);
        if age.to_std().map_or(true, |age| age < grace) {
            return Ok(Outcome::Left("just created".into()));
        }
        if let Some(node) = node {
            match self.inner.store.server_placement(id).await? {
                Some(p) if p.moving_to.is_some() => {
                    return Ok(Outcome::Left("a move is in progress".into()));
                }
                Some(p) if p.node != node => {
                    return Ok(Outcome::Left(format!("placed on node {}", p.node)));
                }
                _ => {}
            }
        }
        // A login or `server set` in this process holds the server: it is theirs to finish.
        let busy = self
            .inner
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&id);
        if busy {
            return Ok(Outcome::Left("a start or change is in progress".into()));
        }
        let outcome = if missing {
            let volume = self.inner.names.volume(id);
            if !self.volume_exists(&volume).await? {
                return Ok(Outcome::Left(format!(
                    "its data volume {volume} is missing: left for the operator (`berth server start {id}` makes it empty)"
                )));
            }
            self.create_container(&server).await?;
            self.start_container(id).await?;
            self.audit(
                id,
                "heal",
                "success",
                serde_json::json!({ "recreated": true }),
            )
            .await;
            Outcome::Recreated
        } else {
            self.start_container(id).await?;
            self.audit(
                id,
                "heal",
                "success",
                serde_json::json!({ "recreated": false }),
            )
            .await;
            Outcome::Started
        };
        // An operator's `server stop` that landed meanwhile wins: stop what was just started.
        if self.live_server(id).await?.desired != DesiredState::Running {
            self.stop_container_only(id).await?;
            return Ok(Outcome::Left("stopped by the operator meanwhile".into()));
        }
        Ok(outcome)
    }
}
