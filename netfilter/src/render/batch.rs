//! The nft transactions made from a rendered [`Ruleset`]: replace both tables atomically,
//! move only the per-port chains when the port map changes, remove berth's tables; plus the
//! counts reported after an apply.
//!
//! Building the ruleset is the renderer's job; sending a batch to the kernel is
//! [`crate::nft`]'s.

use nftables::batch::Batch;
use nftables::schema::{Chain, FlushObject, NfCmd, NfListObject, Nftables, Rule, Table};
use nftables::types::NfFamily;

use super::model::Ruleset;
use super::port_binding::FORWARD_PORTS;

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

    /// Names of the per-port chains (`port_<ifname>`) in the bridge table; `None` when the
    /// ruleset was rendered without port binding.
    pub fn port_chains(&self) -> Option<Vec<String>> {
        let mut has_dispatch = false;
        let mut out = Vec::new();
        for o in &self.objects {
            if let NfListObject::Chain(c) = o
                && c.family == NfFamily::Bridge
            {
                if c.name == "ports" {
                    has_dispatch = true;
                } else if c.name.starts_with("port_") && c.name != "port_common" {
                    out.push(c.name.to_string());
                }
            }
        }
        has_dispatch.then_some(out)
    }

    fn has_bridge_chain(&self, name: &str) -> bool {
        self.objects.iter().any(|o| {
            matches!(o, NfListObject::Chain(c) if c.family == NfFamily::Bridge && c.name == name)
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

    /// One transaction that moves the live per-port chains from `previous` to `self` and
    /// touches nothing else (counters of the drop chains and the whole `inet` table stay):
    /// flush the dispatch chain, delete the chains of ports that left or changed, add those of
    /// ports that came or changed, re-add the dispatch rules. A server starting or stopping
    /// costs one chain plus the dispatch rule, whatever the number of other ports. `None` when
    /// either side has no port binding (a full apply is needed).
    pub fn ports_update_batch(&self, previous: &Ruleset) -> Option<Nftables<'static>> {
        let old = previous.port_chains()?;
        let new = self.port_chains()?;
        // The forward chain's list of tenant ports (kernels without bridge meta) moves with
        // the port map; a ruleset that has it on one side only needs a full apply.
        let forward_ports = self.has_bridge_chain(FORWARD_PORTS);
        if forward_ports != previous.has_bridge_chain(FORWARD_PORTS) {
            return None;
        }
        let same = |name: &String| {
            old.contains(name) && previous.bridge_rules(name) == self.bridge_rules(name)
        };
        let chain = |name: &str| Chain {
            family: NfFamily::Bridge,
            table: self.table.clone().into(),
            name: name.to_string().into(),
            newname: None,
            handle: None,
            _type: None,
            hook: None,
            prio: None,
            dev: None,
            policy: None,
        };
        let gone: Vec<&String> = old
            .iter()
            .filter(|n| !new.contains(n) || !same(n))
            .collect();
        let added: Vec<&String> = new.iter().filter(|n| !same(n)).collect();
        let mut batch = Batch::new();
        batch.add_cmd(NfCmd::Flush(FlushObject::Chain(chain("ports"))));
        if forward_ports {
            batch.add_cmd(NfCmd::Flush(FlushObject::Chain(chain(FORWARD_PORTS))));
        }
        for name in &gone {
            batch.add_cmd(NfCmd::Flush(FlushObject::Chain(chain(name))));
        }
        for name in &gone {
            batch.delete(NfListObject::Chain(chain(name)));
        }
        for name in &added {
            batch.add(NfListObject::Chain(chain(name)));
        }
        for o in &self.objects {
            if let NfListObject::Rule(r) = o
                && r.family == NfFamily::Bridge
                && (r.chain == "ports"
                    || r.chain == FORWARD_PORTS
                    || added.iter().any(|n| **n == r.chain))
            {
                batch.add(o.clone());
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
