//! One file per subcommand; each exposes its clap args and an async `run`.

pub mod account;
pub mod activation;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod dns;
pub mod gateway;
pub mod image;
pub mod moving;
pub mod netfilter;
pub mod node;
pub mod run;
pub mod server;

use std::path::Path;

use anyhow::Result;

use crate::config::{Config, ConfigError};

/// Exit code for a user-facing failure that a command wants to choose itself.
#[derive(Debug)]
pub struct Exit {
    pub code: u8,
    pub message: String,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}
impl std::error::Error for Exit {}

/// Loads the config for a command (errors exit 64).
pub fn load_config(path: Option<&Path>) -> Result<Config> {
    Ok(Config::load(path)?.0)
}

/// Maps an error chain to the process exit code: config problems 64, chosen codes as given,
/// everything else 1.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.downcast_ref::<ConfigError>().is_some() {
            return 64;
        }
        if let Some(exit) = cause.downcast_ref::<Exit>() {
            return exit.code;
        }
    }
    1
}

/// "outer: inner: innermost" — the operator reads the chain top to bottom.
pub fn format_error(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for (i, cause) in e.chain().enumerate() {
        if i > 0 {
            out.push_str(": ");
        }
        out.push_str(&cause.to_string());
    }
    out
}
