//! Where a new server goes: a pure decision over the nodes the store knows.
//!
//! Policy: among nodes that are ready (seen within the timeout), not drained, below capacity
//! and allowed what the server needs (a DinD mode only where the node's `dind` label lists it),
//! the one with the fewest live servers; ties go to the name that sorts first, so the answer
//! is deterministic. An operator naming a node skips "fewest" and "drained" but nothing else.
//! When nothing fits, the error says why each node was passed over.
//!
//! No IO and no clock of its own: the caller passes the nodes and the time.

use chrono::{DateTime, Utc};

use crate::config::DindMode;
use crate::store::Node;

/// The rule node (and front) names follow, for error messages.
pub const NODE_NAME_RULE: &str =
    "1-63 characters: lower-case letters, digits and '-', starting with a letter or digit";

/// Whether `name` is a valid node or front name.
pub fn valid_node_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// What a server asks of its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    /// The server's effective DinD mode (`Off` fits every node).
    pub dind: DindMode,
}

impl Default for Needs {
    fn default() -> Self {
        Self {
            dind: DindMode::Off,
        }
    }
}

/// Why a node was passed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unfit {
    NotReady,
    Drained,
    Full { capacity: u32 },
    Disallowed(String),
}

impl std::fmt::Display for Unfit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unfit::NotReady => f.write_str("not seen recently (node service down?)"),
            Unfit::Drained => f.write_str("drained"),
            Unfit::Full { capacity } => write!(f, "full ({capacity} servers)"),
            Unfit::Disallowed(what) => write!(f, "does not allow {what}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error(
        "no nodes are registered; start `berth run node` on a host or add one with `berth node add`"
    )]
    NoNodes,
    #[error("node {0} does not exist; `berth node list` shows the known nodes")]
    UnknownNode(String),
    #[error("node {name} cannot take the server: {why}")]
    Refused { name: String, why: Unfit },
    #[error("no node can take the server: {}", list(.0))]
    NoneFits(Vec<(String, Unfit)>),
}

fn list(passed: &[(String, Unfit)]) -> String {
    passed
        .iter()
        .map(|(n, why)| format!("{n} {why}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// True when `node` was seen within `ready_within` of `now`.
pub fn is_ready(node: &Node, now: DateTime<Utc>, ready_within: std::time::Duration) -> bool {
    let Some(seen) = node.last_seen else {
        return false;
    };
    let window = chrono::Duration::from_std(ready_within).unwrap_or(chrono::Duration::MAX);
    now.signed_duration_since(seen) <= window
}

/// The time placement decisions are made at.
pub type Now = DateTime<Utc>;

/// The wall clock's now, for callers that do not carry a clock of their own.
pub fn now() -> Now {
    Utc::now()
}

/// [`is_ready`] at the wall clock's now.
pub fn is_ready_now(node: &Node, ready_within: std::time::Duration) -> bool {
    is_ready(node, Utc::now(), ready_within)
}

/// The DinD modes a node allows: its `dind` label, comma-separated (`"caps,sysbox"`).
pub fn allowed_dind(node: &Node) -> Vec<DindMode> {
    node.labels
        .get("dind")
        .map(|v| {
            v.split(',')
                .filter_map(|m| DindMode::parse(m.trim()))
                .collect()
        })
        .unwrap_or_default()
}

/// Why `node` cannot take a server with `needs`, or `None` when it can. `explicit`: an
/// operator named this node (drained is then no obstacle).
pub fn unfit(
    node: &Node,
    needs: Needs,
    now: DateTime<Utc>,
    ready_within: std::time::Duration,
    explicit: bool,
) -> Option<Unfit> {
    if !is_ready(node, now, ready_within) {
        return Some(Unfit::NotReady);
    }
    if node.drained && !explicit {
        return Some(Unfit::Drained);
    }
    if node.capacity != 0 && node.servers >= node.capacity {
        return Some(Unfit::Full {
            capacity: node.capacity,
        });
    }
    if needs.dind != DindMode::Off && !allowed_dind(node).contains(&needs.dind) {
        return Some(Unfit::Disallowed(format!(
            "dind = {:?}",
            needs.dind.as_str()
        )));
    }
    None
}

/// Picks the node for a new server. `requested`: the operator's `--node`.
pub fn place<'a>(
    nodes: &'a [Node],
    needs: Needs,
    requested: Option<&str>,
    now: DateTime<Utc>,
    ready_within: std::time::Duration,
) -> Result<&'a Node, PlacementError> {
    if let Some(name) = requested {
        let node = nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| PlacementError::UnknownNode(name.to_string()))?;
        return match unfit(node, needs, now, ready_within, true) {
            None => Ok(node),
            Some(why) => Err(PlacementError::Refused {
                name: node.name.clone(),
                why,
            }),
        };
    }
    if nodes.is_empty() {
        return Err(PlacementError::NoNodes);
    }
    let mut passed = Vec::new();
    let mut best: Option<&Node> = None;
    for node in nodes {
        match unfit(node, needs, now, ready_within, false) {
            Some(why) => passed.push((node.name.clone(), why)),
            None => {
                let better = best.is_none_or(|b| {
                    (node.servers, node.name.as_str()) < (b.servers, b.name.as_str())
                });
                if better {
                    best = Some(node);
                }
            }
        }
    }
    best.ok_or(PlacementError::NoneFits(passed))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap_or_default()
    }

    fn node(name: &str, servers: u32) -> Node {
        Node {
            name: name.into(),
            advertise: String::new(),
            host_key: String::new(),
            labels: BTreeMap::new(),
            capacity: 0,
            drained: false,
            last_seen: Some(t(1_000)),
            created: t(0),
            servers,
        }
    }

    const READY: Duration = Duration::from_secs(30);

    fn pick(nodes: &[Node], needs: Needs, requested: Option<&str>) -> Result<String, String> {
        place(nodes, needs, requested, t(1_010), READY)
            .map(|n| n.name.clone())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn node_names() {
        for ok in ["n1", "a", "host-2", "0node"] {
            assert!(valid_node_name(ok), "{ok}");
        }
        let long = "a".repeat(64);
        for bad in ["", "-n", "N1", "n_1", "n.1", "n 1", long.as_str()] {
            assert!(!valid_node_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn fewest_servers_wins_and_ties_go_by_name() {
        let nodes = [node("n3", 2), node("n2", 1), node("n1", 1)];
        assert_eq!(pick(&nodes, Needs::default(), None), Ok("n1".into()));
        let nodes = [node("n3", 0), node("n2", 1), node("n1", 1)];
        assert_eq!(pick(&nodes, Needs::default(), None), Ok("n3".into()));
    }

    #[test]
    fn stale_drained_and_full_nodes_are_passed_over_with_reasons() {
        let mut stale = node("a-stale", 0);
        stale.last_seen = Some(t(900));
        let mut never = node("b-never", 0);
        never.last_seen = None;
        let mut drained = node("c-drained", 0);
        drained.drained = true;
        let mut full = node("d-full", 3);
        full.capacity = 3;
        let ok = node("e-ok", 10);
        let nodes = [
            stale.clone(),
            never.clone(),
            drained.clone(),
            full.clone(),
            ok,
        ];
        assert_eq!(pick(&nodes, Needs::default(), None), Ok("e-ok".into()));
        let err = pick(&[stale, never, drained, full], Needs::default(), None)
            .err()
            .unwrap_or_default();
        for want in [
            "a-stale not seen recently",
            "b-never not seen recently",
            "c-drained drained",
            "d-full full (3 servers)",
        ] {
            assert!(err.contains(want), "{err:?} lacks {want:?}");
        }
        assert!(pick(&[], Needs::default(), None).is_err());
    }

    #[test]
    fn dind_needs_a_node_that_allows_it() {
        let plain = node("a-plain", 0);
        let mut caps = node("b-caps", 5);
        caps.labels.insert("dind".into(), "sysbox, caps".into());
        let needs = Needs {
            dind: DindMode::Caps,
        };
        let nodes = [plain.clone(), caps.clone()];
        assert_eq!(pick(&nodes, needs, None), Ok("b-caps".into()));
        // A plain server still goes to the emptier node.
        assert_eq!(pick(&nodes, Needs::default(), None), Ok("a-plain".into()));
        let err = pick(&[plain], needs, None).err().unwrap_or_default();
        assert!(err.contains("does not allow dind"), "{err}");
    }

    #[test]
    fn an_operator_may_name_a_drained_node_but_not_a_full_or_unknown_one() {
        let mut drained = node("n1", 7);
        drained.drained = true;
        let mut full = node("n2", 1);
        full.capacity = 1;
        let nodes = [drained, full, node("n3", 0)];
        assert_eq!(pick(&nodes, Needs::default(), Some("n1")), Ok("n1".into()));
        let err = pick(&nodes, Needs::default(), Some("n2"))
            .err()
            .unwrap_or_default();
        assert!(
            err.contains("node n2 cannot take the server: full"),
            "{err}"
        );
        let err = pick(&nodes, Needs::default(), Some("n9"))
            .err()
            .unwrap_or_default();
        assert!(err.contains("node n9 does not exist"), "{err}");
    }
}
