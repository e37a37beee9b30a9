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
        Cmd::Check => {
            println!("config ok ({source})");
            engine_report(&cfg).await;
            cluster_report(&cfg).await;
        }
        Cmd::Show => {
            println!("# effective configuration from {source}");
            print!("{}", redact(&cfg).to_toml()?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// How long `config check` waits for the engine's answer.
const ENGINE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// One line on the engine the config names: how it keeps container root from being host root,
/// and a warning when `[tenants] dind = "rootless"` would be refused there. An engine that
/// cannot be asked is reported, not an invalid config.
async fn engine_report(cfg: &Config) {
    let asked = tokio::time::timeout(ENGINE_TIMEOUT, async {
        let (docker, endpoint) = tenants::provision::connect_docker(&cfg.tenants)
            .await
            .map_err(|e| e.to_string())?;
        tenants::provision::engine_isolation(&docker)
            .await
            .map(|i| (i, endpoint.clone()))
            .map_err(|e| format!("cannot read docker's info at {endpoint}: {e}"))
    })
    .await
    .unwrap_or_else(|_| Err(format!("docker did not answer within {ENGINE_TIMEOUT:?}")));
    match asked {
        Ok((iso, endpoint)) => {
            println!("engine: {} at {endpoint}", iso.describe());
            if cfg.tenants.dind == tenants::DindMode::Rootless && !iso.root_is_unprivileged() {
                println!(
                    "warning: tenants.dind = \"rootless\" needs a user-namespaced engine \
                     (dockerd --userns-remap); servers in that mode will not be created here"
                );
            }
        }
        Err(e) => println!("engine: unknown ({e})"),
    }
}

/// On a cluster host, one line with its node name and the hop endpoint address the node
/// component will register and listen on, and where that address comes from (`[cluster]
/// advertise`, or the engine's swarm address). An address that cannot be derived is reported
/// here and refused by `berth run node`.
async fn cluster_report(cfg: &Config) {
    let node = &cfg.cluster.node;
    if node.is_empty() {
        return;
    }
    match crate::commands::cluster::hop_address(cfg).await {
        Ok((addr, from)) => println!("cluster: node {node}, hop endpoint {addr} (from {from})"),
        Err(e) => println!(
            "cluster: node {node}, hop endpoint unknown ({})",
            crate::commands::format_error(&e)
        ),
    }
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
