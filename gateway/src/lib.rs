//! The SSH gateway: `ssh server<N>@host` → auth → a shell, command, SFTP session or port forward
//! inside container N (no sshd and no credentials in tenants). Processes start through an
//! in-container agent that hands the gateway their pipes (`docker/agent.rs`), or through Docker's
//! exec stream where the agent cannot run (`docker/attach.rs`).

pub mod audit;
pub mod auth;
pub mod backend;
pub mod build;
pub mod channel;
pub mod config;
pub mod conn;
pub mod control;
pub mod devflow;
pub mod docker;
pub mod forward;
pub mod gate;
pub mod handler;
pub mod hostkeys;
pub mod limits;
pub mod memory;
pub mod metrics;
pub mod pipe;
pub mod policy;
pub mod publish;
pub mod recording;
pub mod server;
pub mod session;
pub mod sftp_audit;
pub mod tenants_backend;

pub use backend::{
    AuditRecord, Backend, BackendError, Chunk, Credentials, ExecRequest, Process, ProcessControl,
    ProcessOutput, Stream, Target,
};
pub use build::build;
pub use config::Config;
pub use conn::{Shared, Stats};
pub use gate::{Gate, Login, Permit};
pub use server::serve;
