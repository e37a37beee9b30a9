//! The gateway's narrow view of tenant control: credentials, "make it run", audit.
//!
//! A trait so the SSH code never touches SQL and so a Kubernetes backend can slot in later.
//! The production implementation (`TenantsBackend`, over `tenants::Store` +
//! `tenants::Provisioner`) lives in `tenants_backend.rs`.
//!
//! CONTRACT shared by the session and auth work areas — do not change signatures without telling
//! the coordinator.

use std::net::IpAddr;

use tenants::ServerId;

/// What auth needs about one server and its owner.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub server: ServerId,
    pub owner: String,
    /// False when the owner is disabled or the server is deleted: auth must fail like a wrong
    /// password.
    pub login_allowed: bool,
    pub password_hash: Option<String>,
    pub authorized_keys: Vec<russh::keys::PublicKey>,
}

/// A running tenant container the gateway can exec into and forward to.
#[derive(Debug, Clone)]
pub struct Target {
    pub server: ServerId,
    pub container_id: String,
    pub address: IpAddr,
    /// True when this call had to start (or recreate) the container.
    pub started_now: bool,
    /// The server's login user when the backend knows it; `None`: `tenant` if the image has
    /// it, else `root`.
    pub user: Option<String>,
}

/// One audit record (never a password).
#[derive(Debug, Clone, Default)]
pub struct AuditRecord {
    /// "auth" | "session" | "forward"
    pub kind: &'static str,
    pub server: Option<ServerId>,
    pub account: Option<String>,
    pub peer: Option<IpAddr>,
    /// "password" | "publickey" | "keyboard-interactive" | "shell" | "exec" | "sftp" | …
    pub method: Option<String>,
    /// "success" | "failure" | "rejected" | "closed" | …
    pub outcome: String,
    /// Free-form JSON: reason, username as typed, bytes in/out, exit status, …
    pub detail: serde_json::Value,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Docker (or the database) is unreachable: tell the client to retry later.
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
    /// Anything final (server deleted, image missing, …).
    #[error("{0}")]
    Failed(String),
}

#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// `Ok(None)` when the server does not exist (never reused ids, deleted rows included).
    async fn credentials(&self, server: ServerId) -> Result<Option<Credentials>, BackendError>;
    /// Idempotent and single-flight: starts or recreates the container if needed.
    async fn ensure_running(&self, server: ServerId) -> Result<Target, BackendError>;
    /// The Docker client for execs.
    fn docker(&self) -> &bollard::Docker;
    /// Best effort: failures are logged, never surfaced to the client.
    async fn audit(&self, record: AuditRecord);
}
