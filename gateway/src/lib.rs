//! The SSH gateway: `ssh server<N>@host` → auth → a shell, command, SFTP session or port forward
//! inside container N, through the Docker exec API (no sshd and no credentials in tenants).

pub mod auth;
pub mod backend;
pub mod config;
pub mod forward;
pub mod handler;
pub mod hostkeys;
pub mod metrics;
pub mod pipe;
pub mod policy;
pub mod server;
pub mod session;
pub mod tenants_backend;

pub use backend::{AuditRecord, Backend, BackendError, Credentials, Target};
/// Re-exported so backends outside this crate name the same Docker client type.
pub use bollard;
pub use config::Config;
pub use server::{Gate, Login, Permit, Shared, Stats, serve};
