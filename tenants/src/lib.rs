//! Tenant control: accounts, servers and keys in a database, tenant containers through the
//! Docker Engine API, and the `server<N>` vocabulary shared by every other crate.
//!
//! # Public API (what gateway, dns and the CLI call)
//!
//! Vocabulary ([`name`], pure; defined in the `names` crate and re-exported here):
//! - [`ServerId`] (`new(u32) -> Option`, `get`, `login_name()` = `server<N>`),
//!   [`parse_login`] (strict, for SSH user names), [`parse_server_ref`] (`server<N>` or `N`).
//!
//! Passwords ([`password`], sync — run on the blocking pool):
//! - `password::hash(&str, cost) -> Result<String, PasswordError>` (rejects empty and > 72 bytes),
//!   `password::verify(&str, hash) -> bool`, `password::verify_dummy(&str) -> bool` (always
//!   false, same cost: the unknown-user path), `password::DEFAULT_COST` = 12.
//!
//! Store ([`Store`], Clone + Send + Sync):
//! - `Store::connect(url) -> Result<Store, StoreError>` — `sqlite:///path` (file 0600, new
//!   parent dirs 0700, WAL, foreign keys) or `postgres://…`; embedded migrations run.
//! - accounts: `add_account(name, Option<hash>)`, `set_password(name, Option<hash>)`,
//!   `set_enabled(name, bool)`, `remove_account(name)`, `account(name) -> Option<Account>`,
//!   `accounts() -> Vec<Account>` (hash arguments are `Option<impl AsRef<str>>`).
//! - keys: `add_key(account, openssh_line) -> AuthorizedKey`, `remove_key(account, fingerprint)`,
//!   `keys(account) -> Vec<AuthorizedKey>`.
//! - servers: `insert_server(owner, &ServerSpec) -> Server`, `server(id) -> Option<Server>`,
//!   `servers(include_deleted) -> Vec<Server>`, `set_desired_state(id, DesiredState)`,
//!   `mark_deleted(id)`.
//! - auth: `server_auth(id) -> Option<ServerAuth>` — `ServerAuth { server, owner, owner_enabled,
//!   password_hash: Option<String>, authorized_keys: Vec<russh::keys::PublicKey>, deleted }`
//!   with `login_allowed()`.
//! - audit: `record_audit(AuditEvent)`, `audit_events(limit) -> Vec<AuditEntry>`;
//!   `AuditEvent { kind: AuditKind, server, account, peer, method, outcome, detail: Value }`,
//!   `AuditEvent::new(kind, outcome)`.
//! - `StoreError::is_retryable()` — database unreachable or locked.
//!
//! Provisioning ([`Provisioner`], Clone + Send + Sync):
//! - `Provisioner::connect(&NetworkConfig, &Config, Store) -> Result<_, DockerError>` (the error
//!   names the endpoint tried), `docker() -> &bollard::Docker`, `ensure_network()`,
//!   `create_server(owner, ServerSpec) -> Server` (creates + starts), `start/restart(id) ->
//!   RunningServer`, `stop(id)`, `remove(id, purge)`, `ensure_running(id) -> RunningServer
//!   { id, container_id, address: Ipv4Addr, started_now }` (idempotent, single-flight,
//!   recreates a missing container with its volume), `status(id)`, `statuses()`,
//!   `server_addresses() -> BTreeMap<ServerId, IpAddr>`, `watch_addresses(shutdown) ->
//!   watch::Receiver<BTreeMap<ServerId, IpAddr>>` (Docker-event driven), `reconcile() ->
//!   ReconcileReport` (never deletes).
//! - `ProvisionError::is_retryable()` — "docker/database unreachable, retry later" vs final.
//!
//! Images ([`image`]): `image::build(&Config, &BuildOptions, progress)` — debootstrap + docker
//! import of the tenant image (`berth image build`).
//!
//! Container naming follows `[tenants] name_prefix` (default `berth`): `berth-server-<N>`,
//! `berth-server-<N>-data`; [`spec::Names`] computes them.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod config;
pub mod image;
pub mod keys;
pub mod name;
pub mod password;
pub mod placement;
pub mod provision;
pub mod spec;
pub mod store;

pub use config::{ByteSize, Config, DindMode, NetworkConfig, RestartPolicy};
pub use name::{ACCOUNT_NAME_RULE, ServerId, parse_login, parse_server_ref, valid_account_name};
pub use password::PasswordError;
pub use provision::{
    Applied, ContainerStatus, DockerError, EngineIsolation, ForeignContainer, HealReport,
    ProvisionError, Provisioner, ReconcileReport, RunningServer, ServerChange, ServerEndpoint,
    Statuses,
};
pub use store::{
    Account, AuditEntry, AuditEvent, AuditKind, AuthorizedKey, DesiredState, Dialect, Front,
    LiveSelector, LiveSession, LiveSessionRow, Node, Placement, Recording, Server, ServerAuth,
    ServerOperations, ServerSpec, SessionLimitSettings, Store, StoreError,
};
