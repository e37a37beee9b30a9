//! `berth netfilter apply|show|check|flush` and the `netfilter` component of `berth run`.
//!
//! Thin wiring: converts `[network]` + `[netfilter]` into a `netfilter::Firewall` and maps its
//! results to output and exit codes. All policy lives in the `netfilter` crate.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use netfilter::{Firewall, L2Match};

use crate::commands::{Exit, load_config};
use crate::config::Config;

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Replace berth's nftables tables with what the config renders (one atomic transaction).
    Apply,
    /// Print berth's live tables (or, with --rendered, the JSON batch apply would send).
    Show {
        /// Print the rendered nft JSON batch instead of the live tables (needs no privileges
        /// when --bridge-match is given).
        #[arg(long)]
        rendered: bool,
        /// With --rendered: render for this bridge match instead of probing the kernel.
        #[arg(long, value_parser = ["meta", "addresses"])]
        bridge_match: Option<String>,
    },
    /// Exit 0 when the live tables equal the rendered ruleset, else print the difference and
    /// exit 1 (`-` expected but missing, `+` live but not expected).
    Check,
    /// Remove berth's tables (only those) and clear bridge-port isolation.
    Flush,
}

/// The firewall for this config: `[network]` gives the tenant network, `[netfilter]` the policy.
pub fn firewall(cfg: &Config) -> Result<Firewall> {
    let n = &cfg.network;
    let net = netfilter::Network {
        bridge: n.bridge.clone(),
        subnet: n.subnet,
        gateway: n.gateway,
        subnet6: n.subnet6,
        gateway6: n.gateway6,
    };
    Ok(Firewall::new(&cfg.netfilter, net)?)
}

pub async fn run(path: Option<&Path>, cmd: Cmd) -> Result<ExitCode> {
    let cfg = load_config(path)?;
    let fw = firewall(&cfg)?;
    match cmd {
        Cmd::Apply => {
            let a = fw
                .apply()
                .await
                .context("cannot apply the netfilter ruleset")?;
            println!(
                "applied table inet {0} and table bridge {0}: {1} rules, {2} set elements, bridge match {3}, {4:.1} ms",
                a.ruleset.table,
                a.ruleset.rule_count(),
                a.ruleset.element_count(),
                match a.l2 {
                    L2Match::Meta => "meta",
                    L2Match::Addresses => "addresses",
                },
                a.elapsed.as_secs_f64() * 1000.0
            );
            if let Some(ports) = a.ruleset.bound_ports() {
                println!(
                    "bridge ports bound to their own addresses: {}",
                    if ports.is_empty() {
                        "none (every tenant port gets nothing)".to_string()
                    } else {
                        ports.join(" ")
                    }
                );
            }
            if !a.isolated.is_empty() {
                println!("isolated bridge ports: {}", a.isolated.join(" "));
            }
            if let Some(e) = &a.isolation_error {
                eprintln!("berth: warning: {e}; tenant separation relies on the bridge table");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Show {
            rendered: true,
            bridge_match,
        } => {
            if fw.binds_ports() {
                let map = fw.load_ports().await.context("cannot load the port map")?;
                for p in &map.problems {
                    eprintln!("berth: warning: port map: {p}");
                }
            }
            let ruleset = match bridge_match.as_deref() {
                Some("meta") => fw.render_with(L2Match::Meta),
                Some(_) => fw.render_with(L2Match::Addresses),
                None => fw
                    .render()
                    .await
                    .context("cannot render the netfilter ruleset")?,
            };
            let json = netfilter::render::to_nft_json(&ruleset.apply_batch());
            println!("{}", serde_json::to_string_pretty(&json)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Show {
            rendered: false, ..
        } => {
            print!(
                "{}",
                fw.show()
                    .await
                    .context("cannot show the netfilter ruleset")?
            );
            let counters = fw
                .drop_counters()
                .await
                .context("cannot read the netfilter drop counters")?;
            if !counters.is_empty() {
                println!("# drops since the last apply (table family, reason, packets, bytes)");
                for c in counters {
                    println!(
                        "# {:<7} {:<8} {:>12} {:>14}",
                        c.family, c.reason, c.packets, c.bytes
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Check => match fw
            .check()
            .await
            .context("cannot check the netfilter ruleset")?
        {
            None => {
                println!(
                    "table inet {0} and table bridge {0} match the config",
                    fw.table()
                );
                Ok(ExitCode::SUCCESS)
            }
            Some(d) => {
                print!("{d}");
                Err(Exit {
                    code: 1,
                    message: "the live netfilter ruleset differs from the config (run `berth netfilter apply`)"
                        .into(),
                }
                .into())
            }
        },
        Cmd::Flush => {
            fw.flush()
                .await
                .context("cannot flush the netfilter ruleset")?;
            println!("removed table inet {0} and table bridge {0}", fw.table());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `berth run netfilter`: apply, then watch for drift and re-apply until `shutdown` fires;
/// sends on `ready` after the first successful apply.
pub async fn run_daemon(
    cfg: &crate::config::Config,
    path: Option<std::path::PathBuf>,
    shutdown: tokio_util::sync::CancellationToken,
    ready: tokio::sync::oneshot::Sender<()>,
) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut fw = firewall(cfg)?;
    let mut ready = Some(ready);
    // SIGHUP (`systemctl reload`): read the config again and re-apply. A config that does not
    // load keeps the running policy; the ruleset stays in place across the switch.
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; netfilter config reloads need a restart");
            None
        }
    };
    loop {
        let reload = tokio_util::sync::CancellationToken::new();
        let stop = {
            let shutdown = shutdown.clone();
            let reload = reload.clone();
            async move {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = reload.cancelled() => {}
                }
            }
        };
        {
            let watch = fw.watch(stop, || {
                // The receiver may have given up waiting; the firewall is up either way.
                if let Some(r) = ready.take() {
                    let _ = r.send(());
                }
            });
            tokio::pin!(watch);
            tokio::select! {
                r = &mut watch => {
                    // Only shutdown ends the watch (or an error).
                    r.context("netfilter component failed")?;
                    return Ok(());
                }
                _ = next_hup(&mut hup) => reload.cancel(),
            }
            // The watch returns as soon as its stop future fires; the rules stay in place.
            (&mut watch).await.context("netfilter component failed")?;
        }
        if shutdown.is_cancelled() {
            return Ok(());
        }
        match load_config(path.as_deref()).and_then(|c| firewall(&c)) {
            Ok(new) => {
                tracing::info!("netfilter config reloaded on SIGHUP; re-applying");
                fw = new;
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "netfilter config reload failed; keeping the running policy");
            }
        }
    }
}

async fn next_hup(hup: &mut Option<tokio::signal::unix::Signal>) {
    match hup.as_mut() {
        Some(h) => {
            if h.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}
