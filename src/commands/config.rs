//! `berth config check|show`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

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

pub fn redact_url(url: &str) -> String {
    // scheme://user:password@host/... → scheme://user:<secret>@host/...
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:<secret>@{host}"),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_password() {
        assert_eq!(
            super::redact_url("postgres://berth:hunter2@db/berth"),
            "postgres://berth:<secret>@db/berth"
        );
        assert_eq!(
            super::redact_url("sqlite:///var/lib/berth/berth.db"),
            "sqlite:///var/lib/berth/berth.db"
        );
    }
}
