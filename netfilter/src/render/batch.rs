//! The nft transactions made from a rendered [`Ruleset`]: replace both tables atomically,
//! move only the port sets' elements (and the rules of the ND shards that changed) when the
//! port map changes, remove berth's tables; plus the counts reported after an apply.
//!
//! Building the ruleset is the renderer's job; sending a batch to the kernel is
//! [`crate::nft`]'s.

use nftables::batch::Batch;
use nftables::expr::Expression;
use nftables::schema::{
    Chain, Element, FlushObject, NfCmd, NfListObject, Nftables, Rule, Set, Table,
};
use nftables::types::NfFamily;

use super::json::to_nft_json;
use super::model::Ruleset;
use super::port_binding::{BOUND, ND_SHARDS, PORT_SETS, nd_chain, nd_set};

impl Ruleset {
    /// One transaction that replaces both tables wholesale: add (so delete cannot fail),
    /// delete, re-create with all contents. The kernel commits it atomically, so packets see
    /// either the old ruleset or the new one, never an empty or half-built table.
    pub fn apply_batch(&self) -> Nftables<'static> {
        let mut batch = Batch::new();
        reset_tables(&mut batch, &self.table);
        for o in &self.objects {
            batch.add(o.clone());
        }
        batch.to_nftables()
    }

    /// The bound ports (interface names) in the bridge table; `None` when the ruleset was
    /// rendered without port binding.
    pub fn bound_ports(&self) -> Option<Vec<String>> {
        self.bridge_set(BOUND).map(|s| {
            s.elem
                .iter()
                .flat_map(|e| e.iter())
                .filter_map(|e| match e {
                    Expression::String(name) => Some(name.to_string()),
                    _ => None,
                })
                .collect()
        })
    }

    fn bridge_set(&self, name: &str) -> Option<&Set<'static>> {
        self.objects.iter().find_map(|o| match o {
            NfListObject::Set(s) if s.family == NfFamily::Bridge && s.name == name => Some(&**s),
            _ => None,
        })
    }

    /// The rules of one chain of the bridge table, in order.
    fn bridge_rules(&self, chain: &str) -> Vec<&Rule<'static>> {
        self.objects
            .iter()
            .filter_map(|o| match o {
                NfListObject::Rule(r) if r.family == NfFamily::Bridge && r.chain == chain => {
                    Some(r)
                }
                _ => None,
            })
            .collect()
    }

    /// Whether `name` is one of the sets whose elements are the port map.
    fn is_port_set(name: &str) -> bool {
        PORT_SETS.contains(&name) || (0..ND_SHARDS).any(|k| nd_set(k) == name)
    }

    /// Whether `chain` is one of the `nd_<k>` chains whose rules carry port facts.
    fn is_nd_chain(chain: &str) -> bool {
        (0..ND_SHARDS).any(|k| nd_chain(k) == chain)
    }

    /// Everything that does not depend on the port map, as comparable JSON: the objects in
    /// order, the port sets without their elements, the rules of the `nd_<k>` chains left out.
    fn fixed_part(&self) -> Vec<serde_json::Value> {
        self.objects
            .iter()
            .filter_map(|o| match o {
                NfListObject::Set(s)
                    if s.family == NfFamily::Bridge && Self::is_port_set(&s.name) =>
                {
                    let mut s = (**s).clone();
                    s.elem = None;
                    Some(to_nft_json(&NfListObject::Set(Box::new(s))))
                }
                NfListObject::Rule(r)
                    if r.family == NfFamily::Bridge && Self::is_nd_chain(&r.chain) =>
                {
                    None
                }
                o => Some(to_nft_json(o)),
            })
            .collect()
    }

    /// The elements of a bridge set, each with its JSON text (for set differences).
    fn elements(&self, name: &str) -> Vec<(String, Expression<'static>)> {
        self.bridge_set(name)
            .and_then(|s| s.elem.as_ref())
            .map(|e| {
                e.iter()
                    .map(|x| (to_nft_json(x).to_string(), x.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// One transaction that moves the live port map from `previous` to `self` and touches
    /// nothing else (counters of the drop chains and the whole `inet` table stay): the
    /// elements of the port sets that went are deleted, those that came are added, and the
    /// `nd_<k>` chains whose rules changed (the shards of ports that came, went or changed)
    /// are flushed and refilled. A server starting or stopping costs a few elements plus one
    /// shard's rules, whatever the number of other ports. `None` when anything else differs
    /// (port binding on one side only, another bridge match or policy): a full apply is needed.
    pub fn ports_update_batch(&self, previous: &Ruleset) -> Option<Nftables<'static>> {
        self.bridge_set(BOUND)?;
        previous.bridge_set(BOUND)?;
        if self.table != previous.table || self.fixed_part() != previous.fixed_part() {
            return None;
        }
        let mut sets: Vec<String> = PORT_SETS.iter().map(|s| s.to_string()).collect();
        sets.extend((0..ND_SHARDS).map(nd_set));
        let element = |name: &str, elem: Vec<Expression<'static>>| {
            NfListObject::Element(Element {
                family: NfFamily::Bridge,
                table: self.table.clone().into(),
                name: name.to_string().into(),
                elem: elem.into(),
            })
        };
        let mut batch = Batch::new();
        let mut adds = Vec::new();
        for name in &sets {
            let old = previous.elements(name);
            let new = self.elements(name);
            let old_keys: std::collections::HashSet<&str> =
                old.iter().map(|(k, _)| k.as_str()).collect();
            let new_keys: std::collections::HashSet<&str> =
                new.iter().map(|(k, _)| k.as_str()).collect();
            let gone: Vec<Expression<'static>> = old
                .iter()
                .filter(|(k, _)| !new_keys.contains(k.as_str()))
                .map(|(_, e)| e.clone())
                .collect();
            let came: Vec<Expression<'static>> = new
                .iter()
                .filter(|(k, _)| !old_keys.contains(k.as_str()))
                .map(|(_, e)| e.clone())
                .collect();
            // Deletes first: a port whose address changed loses the old one before it gains
            // the new one.
            if !gone.is_empty() {
                batch.delete(element(name, gone));
            }
            if !came.is_empty() {
                adds.push(element(name, came));
            }
        }
        for a in adds {
            batch.add(a);
        }
        for k in 0..ND_SHARDS {
            let chain = nd_chain(k);
            let new = self.bridge_rules(&chain);
            if previous.bridge_rules(&chain) == new {
                continue;
            }
            batch.add_cmd(NfCmd::Flush(FlushObject::Chain(Chain {
                family: NfFamily::Bridge,
                table: self.table.clone().into(),
                name: chain.clone().into(),
                newname: None,
                handle: None,
                _type: None,
                hook: None,
                prio: None,
                dev: None,
                policy: None,
            })));
            for r in new {
                batch.add(NfListObject::Rule(r.clone()));
            }
        }
        Some(batch.to_nftables())
    }

    pub fn rule_count(&self) -> usize {
        self.objects
            .iter()
            .filter(|o| matches!(o, NfListObject::Rule(_)))
            .count()
    }

    pub fn element_count(&self) -> usize {
        self.objects
            .iter()
            .map(|o| match o {
                NfListObject::Set(s) => s.elem.as_ref().map_or(0, |e| e.len()),
                _ => 0,
            })
            .sum()
    }
}

/// The transaction that removes berth's tables (and nothing else); fine when they are absent.
pub fn delete_batch(table: &str) -> Nftables<'static> {
    let mut batch = Batch::new();
    reset_tables(&mut batch, table);
    batch.to_nftables()
}

/// `add table` then `delete table` for both of berth's tables: removes them whether or not
/// they exist, without an error when they do not.
fn reset_tables(batch: &mut Batch<'static>, table: &str) {
    for family in [NfFamily::INet, NfFamily::Bridge] {
        let t = Table {
            family,
            name: table.to_string().into(),
            handle: None,
        };
        batch.add(NfListObject::Table(t.clone()));
        batch.delete(NfListObject::Table(t));
    }
}
