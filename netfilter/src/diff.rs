//! Comparing the live tables with the rendered ruleset, without the kernel.
//!
//! Both sides become canonical lines — one per table, set, chain and rule — after dropping what
//! the kernel adds or changes on its own (handles, counter values, set element order). Rules
//! keep their order inside their chain; everything else is sorted. The difference is shown as
//! `-` (expected, missing live) and `+` (live, not expected) lines.

use std::collections::BTreeMap;

use nftables::schema::NfListObject;
use serde_json::Value;

/// One canonical line with the key that orders it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Line {
    key: (u8, String, String, String, usize),
    text: String,
}

/// Canonical lines for the objects we render.
pub fn expected_lines(objects: &[NfListObject<'_>]) -> Vec<String> {
    let values: Vec<Value> = objects.iter().map(crate::render::to_nft_json).collect();
    canonical(&values)
}

/// Canonical lines for `nft -j list table …` output (the objects inside `"nftables"`).
pub fn live_lines(objects: &[Value]) -> Vec<String> {
    canonical(objects)
}

fn canonical(objects: &[Value]) -> Vec<String> {
    let mut rule_index: BTreeMap<(String, String, String), usize> = BTreeMap::new();
    let mut lines = Vec::new();
    for obj in objects {
        let Some(map) = obj.as_object() else { continue };
        let Some((kind, body)) = map.iter().next() else {
            continue;
        };
        let mut body = body.clone();
        strip(&mut body, true);
        let field = |b: &Value, k: &str| b.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let family = field(&body, "family");
        let table = field(&body, "table");
        let obj_name = field(&body, "name");
        let (rank, name) = match kind.as_str() {
            "table" => (0, obj_name.clone()),
            "set" => {
                if let Some(Value::Array(elems)) = body.get_mut("elem") {
                    elems.sort_by_key(|e| e.to_string());
                }
                if let Some(Value::Array(flags)) = body.get_mut("flags") {
                    flags.sort_by_key(|e| e.to_string());
                }
                (1, obj_name.clone())
            }
            "chain" => (2, obj_name.clone()),
            "rule" => (3, field(&body, "chain")),
            _ => continue, // metainfo and anything we never create
        };
        let table_name = if kind == "table" { obj_name } else { table };
        let idx = if rank == 3 {
            let i = rule_index
                .entry((family.clone(), table_name.clone(), name.clone()))
                .or_insert(0);
            *i += 1;
            *i
        } else {
            0
        };
        let detail = describe(kind, &body);
        let text = match kind.as_str() {
            "table" => format!("table {family} {table_name}"),
            "rule" => format!("rule {family} {table_name} {name} #{idx}: {detail}"),
            _ => format!("{kind} {family} {table_name} {name} {detail}"),
        };
        lines.push(Line {
            key: (rank, family, table_name, name, idx),
            text,
        });
    }
    lines.sort();
    lines.into_iter().map(|l| l.text).collect()
}

/// What identifies the object's content (everything but its address).
fn describe(kind: &str, body: &Value) -> String {
    let mut v = body.clone();
    if let Some(m) = v.as_object_mut() {
        for k in ["family", "table", "name"] {
            m.remove(k);
        }
        if kind == "rule" {
            m.remove("chain");
            if let Some(expr) = m.remove("expr") {
                return expr.to_string();
            }
        }
    }
    v.to_string()
}

/// Drops handles (top level only) and counter values (anywhere).
fn strip(v: &mut Value, top: bool) {
    match v {
        Value::Object(m) => {
            if top {
                m.remove("handle");
            }
            if let Some(c) = m.get_mut("counter")
                && (c.is_object() || c.is_null())
            {
                *c = serde_json::json!({"packets": 0, "bytes": 0});
            }
            // Anonymous sets (and verdict maps) come back in the kernel's hash order once
            // they are large; their order means nothing.
            if !top && let Some(Value::Array(elems)) = m.get_mut("set") {
                elems.sort_by_key(|e| e.to_string());
            }
            for (_, child) in m.iter_mut() {
                strip(child, false);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|c| strip(c, false)),
        _ => {}
    }
}

/// Packets and bytes dropped for one reason in one of berth's tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropCounter {
    pub family: String,
    pub reason: String,
    pub packets: u64,
    pub bytes: u64,
}

/// Reads the counters of the `drop_<reason>` chains out of a table listing.
pub fn drop_counters(family: &str, objects: &[Value]) -> Vec<DropCounter> {
    let mut out: Vec<DropCounter> = Vec::new();
    for obj in objects {
        let Some(rule) = obj.get("rule") else {
            continue;
        };
        let Some(reason) = rule
            .get("chain")
            .and_then(Value::as_str)
            .and_then(|c| c.strip_prefix("drop_"))
        else {
            continue;
        };
        let Some(exprs) = rule.get("expr").and_then(Value::as_array) else {
            continue;
        };
        for e in exprs {
            if let Some(c) = e.get("counter") {
                let n = |k: &str| c.get(k).and_then(Value::as_u64).unwrap_or(0);
                out.push(DropCounter {
                    family: family.to_string(),
                    reason: reason.to_string(),
                    packets: n("packets"),
                    bytes: n("bytes"),
                });
            }
        }
    }
    out
}

/// `None` when equal, else a unified-style listing of the differing lines.
pub fn diff(expected: &[String], live: &[String]) -> Option<String> {
    if expected == live {
        return None;
    }
    // LCS on lines: rulesets are a few hundred lines at most.
    let (n, m) = (expected.len(), live.len());
    let mut dp = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            dp[i][j] = if expected[i] == live[j] {
                dp[i + 1][j + 1] + 1
            } else {
                dp[i + 1][j].max(dp[i][j + 1])
            };
        }
    }
    let mut out = String::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && expected[i] == live[j] {
            i += 1;
            j += 1;
        } else if j < m && (i == n || dp[i][j + 1] >= dp[i + 1][j]) {
            out.push_str(&format!("+ {}\n", live[j]));
            j += 1;
        } else {
            out.push_str(&format!("- {}\n", expected[i]));
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn handles_counters_and_element_order_do_not_matter() {
        let a = vec![
            json!({"table": {"family": "inet", "name": "t", "handle": 1}}),
            json!({"set": {"family": "inet", "table": "t", "name": "s", "handle": 3,
                   "type": "ipv4_addr", "flags": ["interval"], "elem": ["1.2.3.4", "10.0.0.1"]}}),
            json!({"rule": {"family": "inet", "table": "t", "chain": "c", "handle": 9,
                   "expr": [{"counter": {"packets": 5, "bytes": 100}}, {"drop": null}]}}),
        ];
        let b = vec![
            json!({"metainfo": {"version": "1.0.6"}}),
            json!({"rule": {"family": "inet", "table": "t", "chain": "c",
                   "expr": [{"counter": {"packets": 0, "bytes": 0}}, {"drop": null}]}}),
            json!({"set": {"family": "inet", "table": "t", "name": "s",
                   "type": "ipv4_addr", "flags": ["interval"], "elem": ["10.0.0.1", "1.2.3.4"]}}),
            json!({"table": {"family": "inet", "name": "t"}}),
        ];
        assert_eq!(diff(&live_lines(&a), &live_lines(&b)), None);
    }

    #[test]
    fn anonymous_set_order_does_not_matter_but_content_does() {
        let r = |elems: serde_json::Value| {
            json!({"rule": {"family": "bridge", "table": "t", "chain": "nd_3",
                   "expr": [{"match": {"op": "!=", "left": {"meta": {"key": "iifname"}},
                             "right": {"set": elems}}}, {"drop": null}]}})
        };
        let a = vec![r(json!([{"concat": ["b", 2]}, {"concat": ["a", 1]}]))];
        let b = vec![r(json!([{"concat": ["a", 1]}, {"concat": ["b", 2]}]))];
        assert_eq!(diff(&live_lines(&a), &live_lines(&b)), None);
        let c = vec![r(json!([{"concat": ["a", 1]}, {"concat": ["b", 3]}]))];
        assert!(diff(&live_lines(&a), &live_lines(&c)).is_some());
    }

    #[test]
    fn rule_order_matters_and_is_shown() {
        let r = |chain: &str, verdict: &str| {
            json!({"rule": {"family": "inet", "table": "t", "chain": chain,
                   "expr": [{verdict: null}]}})
        };
        let a = vec![r("c", "accept"), r("c", "drop")];
        let b = vec![r("c", "drop"), r("c", "accept")];
        let d = diff(&live_lines(&a), &live_lines(&b)).unwrap();
        assert!(d.contains("- rule inet t c #1: [{\"accept\":null}]"), "{d}");
        assert!(d.contains("+ rule inet t c #1: [{\"drop\":null}]"), "{d}");
    }

    #[test]
    fn drop_counters_are_read_per_reason() {
        let objs = vec![
            json!({"rule": {"family": "inet", "table": "t", "chain": "drop_private",
                   "expr": [{"counter": {"packets": 5, "bytes": 300}}, {"log": {"prefix": "x"}}]}}),
            json!({"rule": {"family": "inet", "table": "t", "chain": "drop_private",
                   "expr": [{"drop": null}]}}),
            json!({"rule": {"family": "inet", "table": "t", "chain": "tenant_forward",
                   "expr": [{"counter": {"packets": 9, "bytes": 9}}]}}),
        ];
        let c = drop_counters("inet", &objs);
        assert_eq!(
            c,
            vec![DropCounter {
                family: "inet".into(),
                reason: "private".into(),
                packets: 5,
                bytes: 300
            }]
        );
    }

    #[test]
    fn missing_table_shows_every_line() {
        let a = vec![json!({"table": {"family": "inet", "name": "t"}})];
        let d = diff(&live_lines(&a), &[]).unwrap();
        assert_eq!(d, "- table inet t\n");
    }
}
