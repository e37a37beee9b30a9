//! The SSH gateway: `ssh server<N>@host` → auth → a shell, command, SFTP session or port forward
//! inside container N, through the Docker exec API (no sshd and no credentials in tenants).

pub mod auth;
pub mod backend;
pub mod config;

pub use backend::{AuditRecord, Backend, BackendError, Credentials, Target};
pub use config::Config;
