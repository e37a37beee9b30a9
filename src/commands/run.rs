//! `berth run [gateway|dns|netfilter]…`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    /// Components to run (all when none named).
    #[arg(value_enum)]
    components: Vec<Component>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Component {
    Gateway,
    Dns,
    Netfilter,
}

pub async fn run(_path: Option<&Path>, _args: Args) -> Result<ExitCode> {
    anyhow::bail!("berth run is not implemented yet")
}
