//! `berth node …`: the hosts of a cluster as the store sees them — list, add, change, drain,
//! undrain, remove, re-pin a host key — and the fronts allowed on their hop endpoints.
//!
//! Nodes register themselves when their node service starts (pinning their hop host key);
//! `add` lets an operator announce a host, its capacity and labels beforehand. On a single
//! host the store has no nodes and none of this is needed. Exit codes as in
//! [`super::account::exit`].

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use tenants::{AuditEvent, AuditKind, Node, Store};

use super::account::{audit, exit, fail, open_store, print_table, store_error};

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// List nodes: address, state, servers, free capacity, last seen.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Announce a node before its node service first starts.
    Add {
        name: String,
        /// Most servers placed on it (0 = no limit).
        #[arg(long, default_value_t = 0)]
        capacity: u32,
        /// A label KEY=VALUE (repeatable); `dind=caps,sysbox` allows those DinD modes there.
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
    },
    /// Change a node's capacity or labels.
    Set {
        name: String,
        #[arg(long)]
        capacity: Option<u32>,
        /// Set a label KEY=VALUE (repeatable).
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Remove a label (repeatable).
        #[arg(long = "unlabel")]
        unlabels: Vec<String>,
    },
    /// Place no new servers on a node (its servers keep running).
    Drain { name: String },
    /// Place servers on a node again.
    Undrain { name: String },
    /// Remove a node (refused while servers are placed on it).
    Rm { name: String },
    /// Forget a node's pinned hop host key: its next start pins the key it presents (after a
    /// reinstall). Until then, fronts refuse to relay to it.
    ForgetKey { name: String },
    /// List the fronts whose keys nodes accept on their hop endpoints.
    Fronts {
        #[arg(long)]
        json: bool,
    },
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("invalid label {s:?}: use KEY=VALUE, e.g. dind=caps"))?;
    let valid_key = !k.is_empty()
        && k.len() <= 63
        && k.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c));
    if !valid_key {
        return Err(format!(
            "invalid label key {k:?}: 1-63 letters, digits, '-', '_' or '.'"
        ));
    }
    if v.len() > 256 || v.chars().any(char::is_control) {
        return Err(format!(
            "invalid label value for {k}: at most 256 characters, no control characters"
        ));
    }
    Ok((k.to_string(), v.to_string()))
}

/// One row of `list`: the stored node plus what follows from it.
#[derive(serde::Serialize)]
struct View {
    #[serde(flatten)]
    node: Node,
    /// "ready", "drained", "down" (not seen within `[cluster] node_timeout_secs`) or "new"
    /// (never started).
    state: &'static str,
    /// Servers that may still be placed here (`null`: no limit).
    free: Option<u32>,
}

fn view(node: Node, timeout: Duration) -> View {
    let ready = tenants::placement::is_ready_now(&node, timeout);
    let state = match (node.last_seen, ready, node.drained) {
        (_, _, true) => "drained",
        (None, _, _) => "new",
        (Some(_), false, _) => "down",
        (Some(_), true, false) => "ready",
    };
    let free = (node.capacity != 0).then(|| node.capacity.saturating_sub(node.servers));
    View { node, state, free }
}

pub async fn run(path: Option<&Path>, cmd: Cmd) -> Result<ExitCode> {
    let (cfg, store) = open_store(path).await?;
    let code = run_with(&cfg, &store, cmd).await;
    store.close().await;
    code
}

async fn admin(store: &Store, node: &str, what: &str) {
    audit(
        store,
        AuditEvent {
            method: Some(what.into()),
            detail: serde_json::json!({ "node": node }),
            ..AuditEvent::new(AuditKind::Admin, "success")
        },
    )
    .await;
}

async fn run_with(cfg: &crate::config::Config, store: &Store, cmd: Cmd) -> Result<ExitCode> {
    let timeout = Duration::from_secs(cfg.cluster.node_timeout_secs);
    match cmd {
        Cmd::List { json } => {
            let views: Vec<View> = store
                .nodes()
                .await
                .map_err(store_error)?
                .into_iter()
                .map(|n| view(n, timeout))
                .collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&views)?);
            } else if views.is_empty() {
                println!(
                    "no nodes: this store serves a single host (a node registers when `berth run node` starts)"
                );
            } else {
                let rows: Vec<Vec<String>> = views
                    .iter()
                    .map(|v| {
                        vec![
                            v.node.name.clone(),
                            if v.node.advertise.is_empty() {
                                "-".into()
                            } else {
                                v.node.advertise.clone()
                            },
                            v.state.to_string(),
                            v.node.servers.to_string(),
                            v.free.map_or("-".into(), |f| f.to_string()),
                            v.node.last_seen.map_or("never".into(), |t| {
                                t.format("%Y-%m-%d %H:%M:%S").to_string()
                            }),
                        ]
                    })
                    .collect();
                print_table(
                    &["NODE", "ADDRESS", "STATE", "SERVERS", "FREE", "LAST SEEN"],
                    &rows,
                );
            }
        }
        Cmd::Add {
            name,
            capacity,
            labels,
        } => {
            let labels: BTreeMap<String, String> = labels.into_iter().collect();
            check_dind_label(&labels)?;
            store
                .add_node(&name, capacity, &labels)
                .await
                .map_err(store_error)?;
            admin(store, &name, "node add").await;
            println!("added node {name}; it becomes ready when its node service starts");
        }
        Cmd::Set {
            name,
            capacity,
            labels,
            unlabels,
        } => {
            if capacity.is_none() && labels.is_empty() && unlabels.is_empty() {
                return Err(fail(
                    exit::USAGE,
                    "nothing to change: give --capacity, --label or --unlabel",
                ));
            }
            let node = store
                .node(&name)
                .await
                .map_err(store_error)?
                .ok_or_else(|| store_error(tenants::StoreError::UnknownNode(name.clone())))?;
            let new_labels = (!labels.is_empty() || !unlabels.is_empty()).then(|| {
                let mut l = node.labels.clone();
                for k in &unlabels {
                    l.remove(k);
                }
                l.extend(labels);
                l
            });
            if let Some(l) = &new_labels {
                check_dind_label(l)?;
            }
            store
                .update_node(&name, capacity, new_labels.as_ref())
                .await
                .map_err(store_error)?;
            admin(store, &name, "node set").await;
            println!("node {name} changed");
        }
        Cmd::Drain { name } => {
            store
                .set_node_drained(&name, true)
                .await
                .map_err(store_error)?;
            admin(store, &name, "node drain").await;
            println!(
                "node {name} drained: no new servers are placed there; its servers keep running"
            );
        }
        Cmd::Undrain { name } => {
            store
                .set_node_drained(&name, false)
                .await
                .map_err(store_error)?;
            admin(store, &name, "node undrain").await;
            println!("node {name} takes new servers again");
        }
        Cmd::Rm { name } => {
            store.remove_node(&name).await.map_err(store_error)?;
            admin(store, &name, "node rm").await;
            println!("removed node {name}");
        }
        Cmd::ForgetKey { name } => {
            store.forget_node_key(&name).await.map_err(store_error)?;
            admin(store, &name, "node forget-key").await;
            println!(
                "node {name}'s host key is no longer pinned; its next start pins the key it presents"
            );
        }
        Cmd::Fronts { json } => {
            let fronts = store.fronts().await.map_err(store_error)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&fronts)?);
            } else if fronts.is_empty() {
                println!("no fronts: a front registers its key when `berth run front` starts");
            } else {
                let rows: Vec<Vec<String>> = fronts
                    .iter()
                    .map(|f| {
                        vec![
                            f.name.clone(),
                            key_fingerprint(&f.key_line),
                            f.last_seen.map_or("never".into(), |t| {
                                t.format("%Y-%m-%d %H:%M:%S").to_string()
                            }),
                        ]
                    })
                    .collect();
                print_table(&["FRONT", "KEY", "LAST SEEN"], &rows);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A `dind` label must name modes berth knows, or placement would silently ignore them.
fn check_dind_label(labels: &BTreeMap<String, String>) -> Result<()> {
    if let Some(v) = labels.get("dind") {
        for m in v.split(',').map(str::trim).filter(|m| !m.is_empty()) {
            if tenants::DindMode::parse(m).is_none() {
                return Err(fail(
                    exit::DATAERR,
                    format!(
                        "invalid dind label {v:?}: {m:?} is not a DinD mode (off, caps, rootless, privileged, runtime)"
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn key_fingerprint(line: &str) -> String {
    tenants::keys::parse_key_line(line)
        .map(|k| k.fingerprint)
        .unwrap_or_else(|_| "(unreadable key)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_strictly() {
        assert_eq!(
            parse_label("dind=caps,sysbox"),
            Ok(("dind".into(), "caps,sysbox".into()))
        );
        assert_eq!(parse_label("zone="), Ok(("zone".into(), String::new())));
        for bad in ["nokey", "=v", "a b=c", "k=\u{7}"] {
            assert!(parse_label(bad).is_err(), "{bad:?}");
        }
    }
}
