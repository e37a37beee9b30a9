//! `berth run --demo`: the first five minutes. Makes sure a tenant image, an account `demo`
//! and one server owned by it exist, prints how to log in, and lets `run` start serving.
//!
//! Idempotent: a second `--demo` run reuses the account (its password is not printed again —
//! it was never stored in clear) and the server.

use std::process::Stdio;

use anyhow::{Context, Result};
use rand::Rng;
use tenants::store::redact_url;
use tenants::{Provisioner, ServerSpec, Store};

use crate::config::Config;

const DEMO_ACCOUNT: &str = "demo";

pub async fn prepare(cfg: &Config) -> Result<()> {
    let store = Store::connect(&cfg.database_url()).await.with_context(|| {
        format!(
            "cannot open the store at {}",
            redact_url(&cfg.database_url())
        )
    })?;
    let prov = Provisioner::connect(&cfg.network, &cfg.tenants, store.clone())
        .await
        .context("cannot reach Docker (is dockerd running?)")?;
    ensure_image(&prov, &cfg.tenants.image).await?;
    prov.ensure_network()
        .await
        .with_context(|| format!("cannot create the tenant network {}", cfg.network.name))?;

    let password = match store.account(DEMO_ACCOUNT).await? {
        Some(_) => None,
        None => {
            let pw = generate_password();
            let cost = tenants::password::DEFAULT_COST;
            let pw2 = pw.clone();
            let hash = tokio::task::spawn_blocking(move || tenants::password::hash(&pw2, cost))
                .await
                .context("password hashing task failed")??;
            store.add_account(DEMO_ACCOUNT, Some(hash)).await?;
            Some(pw)
        }
    };
    let existing = store
        .servers(false)
        .await?
        .into_iter()
        .find(|s| s.owner == DEMO_ACCOUNT);
    let server = match existing {
        Some(s) => {
            prov.ensure_running(s.id).await?;
            s
        }
        None => prov
            .create_server(DEMO_ACCOUNT, ServerSpec::default())
            .await
            .context("cannot create the demo server")?,
    };

    let port = cfg
        .ssh
        .listen
        .first()
        .and_then(|a| a.rsplit_once(':').map(|(_, p)| p.to_string()))
        .unwrap_or_else(|| "2222".into());
    let login = server.id.login_name();
    println!();
    println!("berth demo ready: account {DEMO_ACCOUNT}, server {login}");
    match &password {
        Some(pw) => println!("  password (shown once, not stored in clear): {pw}"),
        None => println!(
            "  account {DEMO_ACCOUNT} already existed: use its password, or set a new one with\n    berth account passwd {DEMO_ACCOUNT}"
        ),
    }
    println!("  ssh  -p {port} {login}@localhost");
    println!("  sftp -P {port} {login}@localhost");
    println!("  scp  -P {port} FILE {login}@localhost:/apps/");
    println!();
    Ok(())
}

/// Builds the configured image with `berth image build` when Docker does not have it,
/// streaming its progress to the terminal.
async fn ensure_image(prov: &Provisioner, image: &str) -> Result<()> {
    if prov.docker().inspect_image(image).await.is_ok() {
        return Ok(());
    }
    eprintln!("berth: tenant image {image} is missing; building it (takes a minute or two)");
    let exe = std::env::current_exe().context("cannot locate the berth binary")?;
    let status = tokio::process::Command::new(exe)
        .args(["image", "build", "--tag", image])
        .stdin(Stdio::null())
        .status()
        .await
        .context("cannot run berth image build")?;
    if !status.success() {
        anyhow::bail!("berth image build --tag {image} failed ({status})");
    }
    Ok(())
}

fn generate_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rng();
    (0..20)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_long_and_distinct() {
        let a = super::generate_password();
        let b = super::generate_password();
        assert_eq!(a.len(), 20);
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
    }
}
