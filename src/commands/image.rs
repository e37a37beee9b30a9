//! `berth image …` (to be filled in by the owner of this area).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Not implemented yet.
    Todo,
}

pub async fn run(_path: Option<&Path>, _cmd: Cmd) -> Result<ExitCode> {
    anyhow::bail!("berth image is not implemented yet")
}
