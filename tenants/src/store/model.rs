//! The store's records as callers see them: accounts, keys, servers and their spec, the
//! gateway's login view of a server, audit events. Plain data with serde derives; no SQL.

use chrono::{DateTime, Utc};
use russh::keys::PublicKey;
use serde::{Deserialize, Serialize};

use crate::name::ServerId;

/// An account as listed (no secrets).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Account {
    pub name: String,
    pub enabled: bool,
    pub has_password: bool,
    pub keys: u32,
    pub created: DateTime<Utc>,
}

/// One authorized public key of an account.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuthorizedKey {
    pub fingerprint: String,
    pub algorithm: String,
    pub comment: String,
    /// Normalised OpenSSH line.
    pub line: String,
    pub created: DateTime<Utc>,
}

/// What a server should be doing; `ensure_running` turns it to `Running`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DesiredState {
    Running,
    Stopped,
}

impl DesiredState {
    pub fn as_str(self) -> &'static str {
        match self {
            DesiredState::Running => "running",
            DesiredState::Stopped => "stopped",
        }
    }
}

/// Per-server overrides; `None` follows `[tenants]` defaults at container-creation time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerSpec {
    pub image: Option<String>,
    /// Memory limit in bytes (0 = unlimited).
    pub memory: Option<u64>,
    /// CPU limit in billionths of a CPU (Docker's NanoCpus; 0 = unlimited).
    pub nano_cpus: Option<i64>,
    /// PIDs limit (0 = unlimited).
    pub pids: Option<i64>,
    /// The login user inside the container (`root` or a name the image has).
    #[serde(default)]
    pub user: Option<String>,
    /// Docker-in-Docker mode of this server (`None`: `[tenants] dind`).
    #[serde(default)]
    pub dind: Option<crate::config::DindMode>,
    /// What runs as PID 1 (`None`: tini, as [`crate::spec::InitMode::Default`]). Only this
    /// grants systemd's privileges, never an image label.
    #[serde(default)]
    pub init: Option<crate::spec::InitMode>,
}

/// A server row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Server {
    pub id: ServerId,
    pub owner: String,
    #[serde(flatten)]
    pub spec: ServerSpec,
    pub desired: DesiredState,
    pub created: DateTime<Utc>,
    pub deleted: Option<DateTime<Utc>>,
}

/// Everything the gateway needs to authenticate a login as `server<N>`, in one query.
#[derive(Debug, Clone)]
pub struct ServerAuth {
    pub server: ServerId,
    pub owner: String,
    pub owner_enabled: bool,
    /// bcrypt hash, `None` when the owner has no password (keys only).
    pub password_hash: Option<String>,
    pub authorized_keys: Vec<PublicKey>,
    pub deleted: bool,
}

impl ServerAuth {
    /// Whether anyone may log in at all (server live and owner enabled).
    pub fn login_allowed(&self) -> bool {
        !self.deleted && self.owner_enabled
    }
}

/// Category of an audit event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditKind {
    /// A login attempt (password or key), any outcome.
    Auth,
    /// A session/channel ended (bytes, duration in `detail`).
    Session,
    /// An admin action through the CLI.
    Admin,
    /// A container lifecycle action (start on demand, recreate).
    Provision,
}

impl AuditKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::Auth => "auth",
            AuditKind::Session => "session",
            AuditKind::Admin => "admin",
            AuditKind::Provision => "provision",
        }
    }

    pub(super) fn parse(s: &str) -> Self {
        match s {
            "auth" => AuditKind::Auth,
            "session" => AuditKind::Session,
            "provision" => AuditKind::Provision,
            _ => AuditKind::Admin,
        }
    }
}

/// One audit event to record. Never put secrets in it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEvent {
    pub kind: AuditKind,
    pub server: Option<ServerId>,
    pub account: Option<String>,
    /// Remote address, e.g. "203.0.113.9:50122".
    pub peer: Option<String>,
    /// e.g. "password", "publickey", "shell", "exec", "sftp", "direct-tcpip", "server create".
    pub method: Option<String>,
    /// e.g. "success", "failure", "rate-limited", "error".
    pub outcome: String,
    pub detail: serde_json::Value,
}

impl AuditEvent {
    /// An event with only kind and outcome set; fill the rest with struct update syntax.
    pub fn new(kind: AuditKind, outcome: impl Into<String>) -> Self {
        Self {
            kind,
            server: None,
            account: None,
            peer: None,
            method: None,
            outcome: outcome.into(),
            detail: serde_json::Value::Null,
        }
    }
}

/// An audit event as stored: its row id and the time it was recorded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    #[serde(flatten)]
    pub event: AuditEvent,
}

/// A Docker host that runs tenants (a cluster node). `labels` say what the node allows
/// (`dind = "caps,sysbox"`) and anything else the operator wants to see.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Node {
    pub name: String,
    /// `address:port` of the node's hop endpoint (empty until the node has started once).
    pub advertise: String,
    /// The node's hop host key as an OpenSSH line: the pin fronts check (empty until the node
    /// has started once; a front refuses a node without one).
    pub host_key: String,
    pub labels: std::collections::BTreeMap<String, String>,
    /// Most servers placed here (0 = no limit).
    pub capacity: u32,
    /// No new servers are placed here (existing ones keep running).
    pub drained: bool,
    pub last_seen: Option<DateTime<Utc>>,
    pub created: DateTime<Utc>,
    /// Live (not deleted) servers placed on this node.
    pub servers: u32,
}

/// A front: a process that terminates client SSH and relays to nodes with its own key.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Front {
    pub name: String,
    /// Its hop client key (OpenSSH line), accepted by every node's hop endpoint.
    pub key_line: String,
    pub last_seen: Option<DateTime<Utc>>,
    pub created: DateTime<Utc>,
}

/// Where a server lives (`node`) and, while `berth server move` runs, where it is going.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Placement {
    pub node: String,
    pub moving_to: Option<String>,
}
