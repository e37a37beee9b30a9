//! What provisioning can fail with, and the one translation of Docker's answers into it: an
//! unreachable engine is an outage ("retry later"), a status code is Docker's final word.
//!
//! Deliberately not here: deciding what to do about a failure (callers branch on
//! [`ProvisionError::is_retryable`] and the variants).

use std::sync::Arc;

use bollard::errors::Error as BollardError;

use super::Provisioner;
use crate::name::ServerId;
use crate::store::StoreError;

/// Connecting to the engine failed.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error(
        "cannot reach docker at {endpoint}: {source} (is dockerd running? set tenants.docker_host or DOCKER_HOST)"
    )]
    Unreachable {
        endpoint: String,
        #[source]
        source: BollardError,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// A provisioning failure. [`ProvisionError::is_retryable`] separates outages ("docker or the
/// database is unreachable — retry later") from final answers. Clone so one single-flight
/// result can be handed to every waiter.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProvisionError {
    #[error("docker at {endpoint} is unreachable, retry later: {message}")]
    DockerUnavailable { endpoint: String, message: String },
    #[error("{0} does not exist")]
    UnknownServer(ServerId),
    #[error("{0} is deleted")]
    ServerDeleted(ServerId),
    #[error(
        "image {image} is not on the docker host; build it with `berth image build --tag {image}` (or pull it)"
    )]
    ImageMissing { image: String },
    #[error("docker network {name} exists but conflicts with [network]: {}", .conflicts.join("; "))]
    NetworkConflict {
        name: String,
        conflicts: Vec<String>,
    },
    #[error(
        "{what} already exists in docker but the store does not know it; remove it or change tenants.name_prefix"
    )]
    Leftover { what: String },
    #[error("docker could not {action} {object}: {message}")]
    Docker {
        action: &'static str,
        object: String,
        status: Option<u16>,
        message: String,
    },
    #[error(
        "image {image} has no user {user}; choose one it has (e.g. --user root) or build the image with that user"
    )]
    UserMissing { user: String, image: String },
    #[error("{0}")]
    Invalid(String),
    /// Docker holds a container for the server that was made from other settings than the
    /// store's (a concurrent start that read older settings, a failed rollback, a change made
    /// behind berth's back). Never treated as success.
    #[error(
        "container {container} does not match {server}'s settings ({}); replace it with `berth server set {server} --recreate`",
        .drift.join("; ")
    )]
    Drift {
        server: ServerId,
        container: String,
        drift: Vec<String>,
    },
    /// `server set` failed and so did restoring the old settings: the message says what the
    /// store and Docker each hold and the command that makes them agree.
    #[error(
        "changing {server} failed: {error}; restoring its old settings failed too: {rollback}. Now the store holds {store}; docker holds {docker}. Run `berth server set {server} --recreate` to make docker match the store (or `berth server set {server}` with the settings you want), then check with `berth server show {server}`"
    )]
    RollbackFailed {
        server: ServerId,
        error: String,
        rollback: String,
        store: String,
        docker: String,
    },
    #[error("{server} is running but has no address on network {network}")]
    NoAddress { server: ServerId, network: String },
    #[error(transparent)]
    Store(Arc<StoreError>),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ProvisionError {
    /// True when the caller should tell the user "temporarily unavailable, retry later".
    pub fn is_retryable(&self) -> bool {
        match self {
            ProvisionError::DockerUnavailable { .. } => true,
            ProvisionError::Store(e) => e.is_retryable(),
            // Docker answers 500 for OCI/runtime refusals too: final, not an outage.
            ProvisionError::Docker { status, .. } => *status == Some(503),
            _ => false,
        }
    }
}

impl From<StoreError> for ProvisionError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UnknownServer(id) => ProvisionError::UnknownServer(id),
            StoreError::ServerDeleted(id) => ProvisionError::ServerDeleted(id),
            e => ProvisionError::Store(Arc::new(e)),
        }
    }
}

pub(super) fn status_of(e: &BollardError) -> Option<u16> {
    match e {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

pub(super) fn is_not_found(e: &BollardError) -> bool {
    status_of(e) == Some(404)
}

pub(super) fn message_of(e: &BollardError) -> String {
    match e {
        BollardError::DockerResponseServerError { message, .. } => message.clone(),
        e => e.to_string(),
    }
}

impl Provisioner {
    pub(super) fn docker_err(
        &self,
        action: &'static str,
        object: &str,
        e: BollardError,
    ) -> ProvisionError {
        match status_of(&e) {
            Some(status) => ProvisionError::Docker {
                action,
                object: object.to_string(),
                status: Some(status),
                message: message_of(&e),
            },
            None => match e {
                BollardError::JsonDataError { .. }
                | BollardError::JsonSerdeError { .. }
                | BollardError::APIVersionParseError {} => ProvisionError::Docker {
                    action,
                    object: object.to_string(),
                    status: None,
                    message: e.to_string(),
                },
                e => ProvisionError::DockerUnavailable {
                    endpoint: self.inner.endpoint.clone(),
                    message: e.to_string(),
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_vs_final() {
        let unavailable = ProvisionError::DockerUnavailable {
            endpoint: "unix:///x".into(),
            message: "gone".into(),
        };
        assert!(unavailable.is_retryable());
        assert!(unavailable.to_string().contains("retry later"));
        let docker = |status| ProvisionError::Docker {
            action: "start container",
            object: "c".into(),
            status: Some(status),
            message: "m".into(),
        };
        assert!(!docker(500).is_retryable());
        assert!(!docker(409).is_retryable());
        assert!(docker(503).is_retryable());
        let id = ServerId::new(3).unwrap_or_else(|| unreachable!());
        assert!(!ProvisionError::UnknownServer(id).is_retryable());
        assert!(!ProvisionError::ImageMissing { image: "i".into() }.is_retryable());
        // Store errors keep their own classification; server lookups become our variants.
        let locked: ProvisionError = StoreError::Locked {
            url: "sqlite:x".into(),
        }
        .into();
        assert!(locked.is_retryable());
        let unknown: ProvisionError = StoreError::UnknownServer(id).into();
        assert!(matches!(unknown, ProvisionError::UnknownServer(_)));
        let deleted: ProvisionError = StoreError::ServerDeleted(id).into();
        assert!(matches!(deleted, ProvisionError::ServerDeleted(_)));
    }
}
