//! `berth config check|show`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use tenants::store::redact_url;

use crate::config::Config;

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Validate the config and exit (0 valid, 64 invalid).
    Check,
    /// Print the effective config (defaults filled in, secrets redacted) as TOML.
    Show,
}

pub async fn run(path: Option<&Path>, cmd: Cmd) -> Result<ExitCode> {
    let (cfg, source) = Config::load(path)?;
    match cmd {
        Cmd::Check => println!("config ok ({source})"),
        Cmd::Show => {
            println!("# effective configuration from {source}");
            print!("{}", redact(&cfg).to_toml()?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Secrets never leave through `show`: a database password in the URL is masked.
fn redact(cfg: &Config) -> Config {
    let mut c = cfg.clone();
    if let Some(url) = &c.database_url {
        c.database_url = Some(redact_url(url));
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_masks_the_database_password() {
        let cfg = Config {
            database_url: Some("postgres://berth:hunter2@db/berth".into()),
            ..Config::default()
        };
        assert_eq!(
            redact(&cfg).database_url.as_deref(),
            Some("postgres://berth:<secret>@db/berth")
        );
    }
}
