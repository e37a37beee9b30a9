//! `berth server move`: a server's data from one cluster node to another over the internal
//! hop (docs/CLUSTER.md, "Moving a server").
//!
//! The mover is this host with its front's hop key: it marks the move in the store (logins to
//! the server are refused from then on), asks the source node to stop the server and stream
//! its data volume, pipes that stream into the target node's import, and only then switches
//! the server's node. Any failure before the switch removes the target's copy and clears the
//! mark, so the server stays where it was with its data; the source's copy is removed only on
//! `--purge` / `--purge-from`, never implicitly.

use anyhow::Result;
use hop::transfer::{EXIT_SESSIONS_OPEN, Op, TransferClient};
use tenants::{AuditEvent, AuditKind, DesiredState, ServerId, Store};

use super::account::{audit, exit, fail, store_error};

/// What the operator asked for.
pub enum How {
    To {
        node: String,
        force: bool,
        purge: bool,
    },
    PurgeFrom(String),
    Abort,
}

fn hop_key(cfg: &crate::config::Config) -> Result<russh::keys::PrivateKey> {
    let path = cfg.state_dir.join(super::cluster::HOP_CLIENT_KEY);
    russh::keys::load_secret_key(&path, None).map_err(|e| {
        fail(
            exit::USAGE,
            format!(
                "cannot read this host's front key {} ({e}); run `berth server move` on a host that runs `berth run front` (its key is registered in `berth node fronts`)",
                path.display()
            ),
        )
    })
}

pub(crate) async fn client(
    cfg: &crate::config::Config,
    store: &Store,
    node: &str,
    id: ServerId,
) -> Result<TransferClient> {
    let row = store
        .node(node)
        .await
        .map_err(store_error)?
        .ok_or_else(|| store_error(tenants::StoreError::UnknownNode(node.to_string())))?;
    TransferClient::connect(node, &row.advertise, &row.host_key, hop_key(cfg)?, id)
        .await
        .map_err(|e| fail(exit::UNAVAILABLE, e.message))
}

pub async fn run(cfg: &crate::config::Config, store: &Store, id: ServerId, how: How) -> Result<()> {
    let name = id.login_name();
    let server = store
        .server(id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| store_error(tenants::StoreError::UnknownServer(id)))?;
    if server.deleted.is_some() {
        return Err(store_error(tenants::StoreError::ServerDeleted(id)));
    }
    let Some(placed) = store.server_placement(id).await.map_err(store_error)? else {
        return Err(fail(
            exit::CANTCREAT,
            format!(
                "{name} has no cluster node (a single-host server); `berth server move` moves servers between nodes of a cluster"
            ),
        ));
    };
    match how {
        How::Abort => {
            let Some(to) = placed.moving_to.clone() else {
                return Err(fail(
                    exit::CANTCREAT,
                    format!("{name} is not moving (it is on {})", placed.node),
                ));
            };
            // Remove the half-made copy first: once the mark is gone the target would refuse.
            let discarded = match client(cfg, store, &to, id).await {
                Ok(c) => c.step(Op::Discard).await.map_err(|e| e.message),
                Err(e) => Err(e.to_string()),
            };
            store.abort_move(id).await.map_err(store_error)?;
            match discarded {
                Ok(()) => println!(
                    "aborted the move of {name}: it stays on {}; its copy on {to} was removed",
                    placed.node
                ),
                Err(e) => println!(
                    "aborted the move of {name}: it stays on {}; its copy on {to} could not be removed ({e}); remove it later with `berth server move {name} --purge-from {to}`",
                    placed.node
                ),
            }
            admin(
                store,
                &server.owner,
                id,
                "server move abort",
                serde_json::json!({ "from": placed.node, "to": to }),
            )
            .await;
            Ok(())
        }
        How::PurgeFrom(node) => {
            if node == placed.node {
                return Err(fail(
                    exit::CANTCREAT,
                    format!(
                        "{name} lives on {node}; its copy there is the server itself (remove it with `berth server rm`)"
                    ),
                ));
            }
            if placed.moving_to.as_deref() == Some(node.as_str()) {
                return Err(fail(
                    exit::CANTCREAT,
                    format!(
                        "{name} is moving to {node}; finish or abort that move (`berth server move {name} --abort`)"
                    ),
                ));
            }
            let c = client(cfg, store, &node, id).await?;
            c.step(Op::Discard).await.map_err(|e| fail(1, e.message))?;
            admin(
                store,
                &server.owner,
                id,
                "server move purge",
                serde_json::json!({ "node": node }),
            )
            .await;
            println!("removed the copy of {name} on {node}");
            Ok(())
        }
        How::To {
            node: to,
            force,
            purge,
        } => {
            let from = placed.node.clone();
            if let Some(m) = &placed.moving_to {
                return Err(fail(
                    exit::CANTCREAT,
                    format!(
                        "{name} is already moving to {m}; run `berth server move {name} --abort` first"
                    ),
                ));
            }
            if to == from {
                return Err(fail(exit::CANTCREAT, format!("{name} is already on {to}")));
            }
            let nodes = store.nodes().await.map_err(store_error)?;
            let needs = tenants::placement::Needs {
                dind: server.spec.dind.unwrap_or(cfg.tenants.dind),
            };
            let timeout = std::time::Duration::from_secs(cfg.cluster.node_timeout_secs);
            tenants::placement::place(&nodes, needs, Some(&to), tenants::placement::now(), timeout)
                .map_err(|e| {
                    let code = match e {
                        tenants::placement::PlacementError::UnknownNode(_) => exit::NOUSER,
                        _ => exit::CANTCREAT,
                    };
                    fail(code, e.to_string())
                })?;
            let source = client(cfg, store, &from, id).await?;
            let target = client(cfg, store, &to, id).await?;
            store
                .begin_move(id, &from, &to)
                .await
                .map_err(store_error)?;
            let copied = source.export_into(&target, force).await;
            let switched = match copied {
                Ok(bytes) => store
                    .finish_move(id, &from, &to)
                    .await
                    .map(|()| bytes)
                    .map_err(|e| (None, e.to_string())),
                Err(e) => Err((e.status, e.message)),
            };
            let bytes = match switched {
                Ok(bytes) => bytes,
                Err((status, why)) => {
                    let cleanup = target.step(Op::Discard).await;
                    let aborted = store.abort_move(id).await;
                    if server.desired == DesiredState::Running {
                        let _ = source.step(Op::Start).await;
                    }
                    let mut msg = format!("moving {name} from {from} to {to} failed: {why}");
                    match (cleanup, aborted) {
                        (Ok(()), Ok(_)) => msg.push_str(&format!(
                            "; nothing changed: {name} stays on {from} with its data"
                        )),
                        (c, a) => {
                            msg.push_str(&format!("; {name} stays on {from} with its data"));
                            if let Err(e) = c {
                                msg.push_str(&format!(", but its partial copy on {to} could not be removed ({}); run `berth server move {name} --purge-from {to}`", e.message));
                            }
                            if let Err(e) = a {
                                msg.push_str(&format!(", and the move mark could not be cleared ({e}); run `berth server move {name} --abort`"));
                            }
                        }
                    }
                    let code = if status == Some(EXIT_SESSIONS_OPEN) {
                        exit::TEMPFAIL
                    } else {
                        1
                    };
                    return Err(fail(code, msg));
                }
            };
            admin(
                store,
                &server.owner,
                id,
                "server move",
                serde_json::json!({ "from": from, "to": to, "bytes": bytes, "force": force }),
            )
            .await;
            if server.desired == DesiredState::Running
                && let Err(e) = target.step(Op::Start).await
            {
                println!(
                    "moved, but starting {name} on {to} failed ({}); it starts at its owner's next login",
                    e.message
                );
            }
            if purge {
                match source.step(Op::Discard).await {
                    Ok(()) => println!("removed the old copy of {name} on {from}"),
                    Err(e) => println!(
                        "could not remove the old copy of {name} on {from} ({}); run `berth server move {name} --purge-from {from}`",
                        e.message
                    ),
                }
            } else {
                println!(
                    "the old copy of {name} stays on {from} (stopped, with its data volume); remove it with `berth server move {name} --purge-from {from}`"
                );
            }
            println!("moved {name} from {from} to {to} ({bytes} bytes of data)");
            Ok(())
        }
    }
}

async fn admin(store: &Store, owner: &str, id: ServerId, method: &str, detail: serde_json::Value) {
    audit(
        store,
        AuditEvent {
            server: Some(id),
            account: Some(owner.to_string()),
            method: Some(method.to_string()),
            detail,
            ..AuditEvent::new(AuditKind::Admin, "success")
        },
    )
    .await;
}
