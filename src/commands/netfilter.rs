//! `berth netfilter …` (to be filled in by the owner of this area).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Not implemented yet.
    Todo,
}

pub async fn run(_path: Option<&Path>, _cmd: Cmd) -> Result<ExitCode> {
    anyhow::bail!("berth netfilter is not implemented yet")
}

/// `berth run netfilter`: apply, then watch for drift and re-apply until `shutdown` fires;
/// sends on `ready` after the first successful apply.
pub async fn run_daemon(
    _cfg: &crate::config::Config,
    _shutdown: tokio_util::sync::CancellationToken,
    _ready: tokio::sync::oneshot::Sender<()>,
) -> Result<()> {
    anyhow::bail!("the netfilter component is not implemented yet")
}
