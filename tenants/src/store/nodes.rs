//! Queries on the cluster tables: nodes (their hop address, pinned host key, labels, capacity,
//! drain flag, last seen), fronts (the keys nodes accept on their hop endpoint) and placements
//! (which node holds a server).
//!
//! A store without node rows is a single-host store: nothing outside this file reads these
//! tables, and no placement row means "local". Uniqueness, one home per server and no
//! placement on an unknown node are the schema's job (`0004_cluster.sql`), so several fronts
//! and nodes can write concurrently.

use std::collections::BTreeMap;

use super::connection::{Store, with_pool};
use super::error::StoreError;
use super::model::{Front, Node, Placement};
use super::row::{now, server_id, time};
use crate::name::ServerId;
use crate::placement::valid_node_name;

type NodeRow = (
    String,
    String,
    String,
    String,
    i64,
    bool,
    Option<i64>,
    i64,
    i64,
);

/// The node columns with the count of live servers placed on each (a literal, so queries stay
/// `&'static str`).
macro_rules! node_select {
    () => {
        "SELECT n.name, n.advertise, n.host_key, n.labels, n.capacity, n.drained, \
                n.last_seen, n.created_at, \
                (SELECT COUNT(*) FROM placements p JOIN servers s ON s.id = p.server_id \
                  WHERE p.node_id = n.id AND s.deleted_at IS NULL) \
         FROM nodes n"
    };
}

fn node_from_row(r: NodeRow) -> Node {
    let (name, advertise, host_key, labels, capacity, drained, last_seen, created, servers) = r;
    Node {
        name,
        advertise,
        host_key,
        // Labels are written only by this module as a JSON object of strings; anything else
        // (a hand edit) reads as no labels, which allows nothing beyond a plain server.
        labels: serde_json::from_str(&labels).unwrap_or_default(),
        capacity: u32::try_from(capacity).unwrap_or(u32::MAX),
        drained,
        last_seen: last_seen.map(time),
        created: time(created),
        servers: u32::try_from(servers).unwrap_or(u32::MAX),
    }
}

/// A statement on one node by name touched `rows` rows: none means no such node.
fn node_found(name: &str, rows: u64) -> Result<(), StoreError> {
    if rows == 0 {
        return Err(StoreError::UnknownNode(name.to_string()));
    }
    Ok(())
}

fn labels_json(labels: &BTreeMap<String, String>) -> String {
    serde_json::to_string(labels).unwrap_or_else(|_| "{}".into())
}

impl Store {
    /// Adds a node by name (an operator announcing a host before its node service first runs).
    pub async fn add_node(
        &self,
        name: &str,
        capacity: u32,
        labels: &BTreeMap<String, String>,
    ) -> Result<Node, StoreError> {
        if !valid_node_name(name) {
            return Err(StoreError::InvalidNodeName {
                name: name.to_string(),
            });
        }
        let res = with_pool!(self, p => sqlx::query(
            "INSERT INTO nodes (name, labels, capacity, drained, created_at) \
             VALUES ($1, $2, $3, FALSE, $4)",
        )
        .bind(name)
        .bind(labels_json(labels))
        .bind(i64::from(capacity))
        .bind(now())
        .execute(p)
        .await
        .map(|_| ()));
        match res {
            Ok(()) => {}
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                return Err(StoreError::DuplicateNode(name.to_string()));
            }
            Err(e) => return Err(self.err(e)),
        }
        self.node(name)
            .await?
            .ok_or_else(|| StoreError::UnknownNode(name.to_string()))
    }

    /// A node's own start: creates its row if missing, records its hop address and marks it
    /// seen. The host key is pinned by the first registration; a different key later is refused
    /// (a reinstalled host must be re-pinned by an operator with [`Store::forget_node_key`]), so
    /// nobody can take over a node's name by registering a key of their own.
    pub async fn register_node(
        &self,
        name: &str,
        advertise: &str,
        host_key: &str,
    ) -> Result<Node, StoreError> {
        if !valid_node_name(name) {
            return Err(StoreError::InvalidNodeName {
                name: name.to_string(),
            });
        }
        let t = now();
        with_pool!(self, p => sqlx::query(
            "INSERT INTO nodes (name, advertise, host_key, labels, capacity, drained, last_seen, created_at) \
             VALUES ($1, $2, $3, '{}', 0, FALSE, $4, $4) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(advertise)
        .bind(host_key)
        .bind(t)
        .execute(p)
        .await
        .map(|_| ()))
        .map_err(|e| self.err(e))?;
        // Pin on first use by the node itself; never overwrite a different pin.
        let n = with_pool!(self, p => sqlx::query(
            "UPDATE nodes SET advertise = $2, host_key = $3, last_seen = $4 \
             WHERE name = $1 AND (host_key = '' OR host_key = $3)",
        )
        .bind(name)
        .bind(advertise)
        .bind(host_key)
        .bind(t)
        .execute(p)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| self.err(e))?;
        if n == 0 {
            return Err(StoreError::NodeKeyMismatch(name.to_string()));
        }
        self.node(name)
            .await?
            .ok_or_else(|| StoreError::UnknownNode(name.to_string()))
    }

    /// Clears a node's pinned host key, so its next start pins the key it presents.
    pub async fn forget_node_key(&self, name: &str) -> Result<(), StoreError> {
        self.update_node_where(name, "UPDATE nodes SET host_key = '' WHERE name = $1")
            .await
    }

    /// Marks a node alive now.
    pub async fn node_seen(&self, name: &str) -> Result<(), StoreError> {
        let n =
            with_pool!(self, p => sqlx::query("UPDATE nodes SET last_seen = $2 WHERE name = $1")
            .bind(name)
            .bind(now())
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
            .map_err(|e| self.err(e))?;
        node_found(name, n)
    }

    /// One node, or `None`.
    pub async fn node(&self, name: &str) -> Result<Option<Node>, StoreError> {
        let row: Option<NodeRow> = with_pool!(self, p => sqlx::query_as(
            concat!(node_select!(), " WHERE n.name = $1"))
            .bind(name)
            .fetch_optional(p)
            .await)
        .map_err(|e| self.err(e))?;
        Ok(row.map(node_from_row))
    }

    /// Every node by name.
    pub async fn nodes(&self) -> Result<Vec<Node>, StoreError> {
        let rows: Vec<NodeRow> = with_pool!(self, p => sqlx::query_as(
            concat!(node_select!(), " ORDER BY n.name"))
            .fetch_all(p)
            .await)
        .map_err(|e| self.err(e))?;
        Ok(rows.into_iter().map(node_from_row).collect())
    }

    /// Drains (no new servers placed) or undrains a node.
    pub async fn set_node_drained(&self, name: &str, drained: bool) -> Result<(), StoreError> {
        let n = with_pool!(self, p => sqlx::query("UPDATE nodes SET drained = $2 WHERE name = $1")
            .bind(name)
            .bind(drained)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(|e| self.err(e))?;
        node_found(name, n)
    }

    /// Changes a node's capacity and/or labels (`None` keeps the current value).
    pub async fn update_node(
        &self,
        name: &str,
        capacity: Option<u32>,
        labels: Option<&BTreeMap<String, String>>,
    ) -> Result<(), StoreError> {
        let n = with_pool!(self, p => sqlx::query(
            "UPDATE nodes SET capacity = COALESCE($2, capacity), labels = COALESCE($3, labels) \
             WHERE name = $1",
        )
        .bind(name)
        .bind(capacity.map(i64::from))
        .bind(labels.map(labels_json))
        .execute(p)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| self.err(e))?;
        node_found(name, n)
    }

    /// Removes a node; refused while live servers are placed on it.
    pub async fn remove_node(&self, name: &str) -> Result<(), StoreError> {
        let held = self.node_servers(name).await?;
        if !held.is_empty() {
            return Err(StoreError::NodeHasServers {
                name: name.to_string(),
                servers: held,
            });
        }
        // Placements of deleted servers go with the node.
        let res = with_pool!(self, p => sqlx::query(
            "DELETE FROM placements WHERE node_id = (SELECT id FROM nodes WHERE name = $1)",
        )
        .bind(name)
        .execute(p)
        .await
        .map(|_| ()));
        res.map_err(|e| self.err(e))?;
        self.update_node_where(name, "DELETE FROM nodes WHERE name = $1")
            .await
    }

    /// Live servers placed on a node.
    pub async fn node_servers(&self, name: &str) -> Result<Vec<ServerId>, StoreError> {
        let rows: Vec<(i64,)> = with_pool!(self, p => sqlx::query_as(
            "SELECT s.id FROM placements p JOIN nodes n ON n.id = p.node_id \
             JOIN servers s ON s.id = p.server_id \
             WHERE n.name = $1 AND s.deleted_at IS NULL ORDER BY s.id",
        )
        .bind(name)
        .fetch_all(p)
        .await)
        .map_err(|e| self.err(e))?;
        rows.into_iter().map(|(id,)| server_id(id)).collect()
    }

    /// Every placed server's node (deleted servers included: their containers are still
    /// the node's to account for).
    pub async fn placements(&self) -> Result<BTreeMap<ServerId, String>, StoreError> {
        let rows: Vec<(i64, String)> = with_pool!(self, p => sqlx::query_as(
            "SELECT p.server_id, n.name FROM placements p JOIN nodes n ON n.id = p.node_id",
        )
        .fetch_all(p)
        .await)
        .map_err(|e| self.err(e))?;
        rows.into_iter()
            .map(|(id, node)| Ok((server_id(id)?, node)))
            .collect()
    }

    /// Records that `server` lives on `node` (first placement, or a move's switch).
    pub async fn place_server(&self, server: ServerId, node: &str) -> Result<(), StoreError> {
        let res = with_pool!(self, p => sqlx::query(
            "INSERT INTO placements (server_id, node_id, placed_at) \
             SELECT $1, id, $3 FROM nodes WHERE name = $2 \
             ON CONFLICT (server_id) DO UPDATE SET node_id = excluded.node_id, \
                                                   placed_at = excluded.placed_at",
        )
        .bind(i64::from(server.get()))
        .bind(node)
        .bind(now())
        .execute(p)
        .await
        .map(|r| r.rows_affected()));
        match res {
            Ok(0) => Err(StoreError::UnknownNode(node.to_string())),
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(db)) if db.is_foreign_key_violation() => {
                Err(StoreError::UnknownServer(server))
            }
            Err(e) => Err(self.err(e)),
        }
    }

    /// Where `server` lives and, during `berth server move`, where it is going.
    pub async fn server_placement(
        &self,
        server: ServerId,
    ) -> Result<Option<Placement>, StoreError> {
        let row: Option<(String, Option<String>)> = with_pool!(self, p => sqlx::query_as(
            "SELECT n.name, m.name FROM placements p JOIN nodes n ON n.id = p.node_id \
             LEFT JOIN nodes m ON m.id = p.moving_to WHERE p.server_id = $1",
        )
        .bind(i64::from(server.get()))
        .fetch_optional(p)
        .await)
        .map_err(|e| self.err(e))?;
        Ok(row.map(|(node, moving_to)| Placement { node, moving_to }))
    }

    /// Marks `server` (placed on `from`) as moving to `to`; from now on logins to it are
    /// refused until [`Store::finish_move`] or [`Store::abort_move`]. Fails when the server is
    /// not on `from` or already moving.
    pub async fn begin_move(
        &self,
        server: ServerId,
        from: &str,
        to: &str,
    ) -> Result<(), StoreError> {
        let res = with_pool!(self, p => sqlx::query(
            "UPDATE placements SET moving_to = (SELECT id FROM nodes WHERE name = $3) \
             WHERE server_id = $1 AND moving_to IS NULL \
               AND node_id = (SELECT id FROM nodes WHERE name = $2) \
               AND EXISTS (SELECT 1 FROM nodes WHERE name = $3)",
        )
        .bind(i64::from(server.get()))
        .bind(from)
        .bind(to)
        .execute(p)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| self.err(e))?;
        if res == 1 {
            return Ok(());
        }
        Err(self.move_conflict(server, from, to).await)
    }

    /// The switch: `server` now lives on `to`. Only from the state [`Store::begin_move`] left.
    pub async fn finish_move(
        &self,
        server: ServerId,
        from: &str,
        to: &str,
    ) -> Result<(), StoreError> {
        let res = with_pool!(self, p => sqlx::query(
            "UPDATE placements SET node_id = moving_to, moving_to = NULL, placed_at = $4 \
             WHERE server_id = $1 AND node_id = (SELECT id FROM nodes WHERE name = $2) \
               AND moving_to = (SELECT id FROM nodes WHERE name = $3)",
        )
        .bind(i64::from(server.get()))
        .bind(from)
        .bind(to)
        .bind(now())
        .execute(p)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| self.err(e))?;
        if res == 1 {
            return Ok(());
        }
        Err(self.move_conflict(server, from, to).await)
    }

    /// Ends a move without switching: `server` stays where it was and takes logins again.
    /// Returns whether a move was in progress.
    pub async fn abort_move(&self, server: ServerId) -> Result<bool, StoreError> {
        let res = with_pool!(self, p => sqlx::query(
            "UPDATE placements SET moving_to = NULL WHERE server_id = $1 AND moving_to IS NOT NULL",
        )
        .bind(i64::from(server.get()))
        .execute(p)
        .await
        .map(|r| r.rows_affected()))
        .map_err(|e| self.err(e))?;
        Ok(res == 1)
    }

    async fn move_conflict(&self, server: ServerId, from: &str, to: &str) -> StoreError {
        let found = match self.server_placement(server).await {
            Ok(None) => "it has no node".to_string(),
            Ok(Some(Placement {
                node,
                moving_to: None,
            })) => format!("it is on {node}"),
            Ok(Some(Placement {
                node,
                moving_to: Some(m),
            })) => format!(
                "it is on {node} and moving to {m} (finish or abort that move: `berth server move {} --abort`)",
                server.login_name()
            ),
            Err(e) => return e,
        };
        match self.node(to).await {
            Ok(None) => StoreError::UnknownNode(to.to_string()),
            _ => StoreError::MoveConflict {
                server,
                from: from.to_string(),
                to: to.to_string(),
                found,
            },
        }
    }

    /// The node holding `server`, or `None` (a single-host store, or not placed).
    pub async fn server_node(&self, server: ServerId) -> Result<Option<String>, StoreError> {
        let row: Option<(String,)> = with_pool!(self, p => sqlx::query_as(
            "SELECT n.name FROM placements p JOIN nodes n ON n.id = p.node_id WHERE p.server_id = $1",
        )
        .bind(i64::from(server.get()))
        .fetch_optional(p)
        .await)
        .map_err(|e| self.err(e))?;
        Ok(row.map(|(n,)| n))
    }

    /// A front's own start: records (or replaces) its hop client key and marks it seen. Unlike
    /// node host keys, a front's key is not pinned: nodes trust whatever key the row holds, and
    /// writing the row needs the database credential, the cluster's root of trust.
    pub async fn register_front(&self, name: &str, key_line: &str) -> Result<Front, StoreError> {
        if !valid_node_name(name) {
            return Err(StoreError::InvalidFrontName {
                name: name.to_string(),
            });
        }
        let t = now();
        with_pool!(self, p => sqlx::query(
            "INSERT INTO fronts (name, key_line, last_seen, created_at) VALUES ($1, $2, $3, $3) \
             ON CONFLICT (name) DO UPDATE SET key_line = excluded.key_line, \
                                              last_seen = excluded.last_seen",
        )
        .bind(name)
        .bind(key_line)
        .bind(t)
        .execute(p)
        .await
        .map(|_| ()))
        .map_err(|e| self.err(e))?;
        let front = self.fronts().await?.into_iter().find(|f| f.name == name);
        front.ok_or_else(|| StoreError::UnknownFront(name.to_string()))
    }

    /// Every front by name.
    pub async fn fronts(&self) -> Result<Vec<Front>, StoreError> {
        let rows: Vec<(String, String, Option<i64>, i64)> = with_pool!(self, p => sqlx::query_as(
            "SELECT name, key_line, last_seen, created_at FROM fronts ORDER BY name",
        )
        .fetch_all(p)
        .await)
        .map_err(|e| self.err(e))?;
        Ok(rows
            .into_iter()
            .map(|(name, key_line, last_seen, created)| Front {
                name,
                key_line,
                last_seen: last_seen.map(time),
                created: time(created),
            })
            .collect())
    }

    /// Removes a front: nodes stop accepting its key.
    pub async fn remove_front(&self, name: &str) -> Result<(), StoreError> {
        let n = with_pool!(self, p => sqlx::query("DELETE FROM fronts WHERE name = $1")
            .bind(name)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(|e| self.err(e))?;
        if n == 0 {
            return Err(StoreError::UnknownFront(name.to_string()));
        }
        Ok(())
    }

    /// Runs a one-parameter statement on a node by name; no row touched → unknown node.
    async fn update_node_where(&self, name: &str, sql: &'static str) -> Result<(), StoreError> {
        let n = with_pool!(self, p => sqlx::query(sql)
            .bind(name)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(|e| self.err(e))?;
        node_found(name, n)
    }
}
