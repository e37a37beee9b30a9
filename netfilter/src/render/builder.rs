//! Collects the objects of berth's two tables as the renderer emits them and puts them in the
//! order nft needs (tables, then sets, then chains, then rules), so each part of the ruleset
//! can be written in the order that reads best.
//!
//! Also the one shape every drop takes (`drop_<reason>`: counter, rate-limited log, drop).

use std::collections::HashSet;

use nftables::expr::Expression;
use nftables::schema::{Chain, NfListObject, Rule, Set, SetFlag, SetTypeValue, Table};
use nftables::stmt::{AnonymousCounter, Counter, Limit, Log, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use super::model::{Reason, Ruleset};
use crate::config::Policy;

pub(super) struct Builder {
    table: String,
    objects_sets: Vec<NfListObject<'static>>,
    objects_chains: Vec<NfListObject<'static>>,
    objects_rules: Vec<NfListObject<'static>>,
}

impl Builder {
    pub(super) fn new(table: &str) -> Self {
        Self {
            table: table.to_string(),
            objects_sets: Vec::new(),
            objects_chains: Vec::new(),
            objects_rules: Vec::new(),
        }
    }

    /// An interval set of the `inet` table.
    pub(super) fn set(
        &mut self,
        name: &str,
        ty: SetTypeValue<'static>,
        elems: Vec<Expression<'static>>,
    ) {
        self.named_set(NfFamily::INet, name, ty, true, elems);
    }

    /// A set of exact keys in the `bridge` table (hash lookups; elements added and deleted
    /// one by one when the port map changes).
    pub(super) fn bridge_set(
        &mut self,
        name: &str,
        ty: SetTypeValue<'static>,
        elems: Vec<Expression<'static>>,
    ) {
        self.named_set(NfFamily::Bridge, name, ty, false, elems);
    }

    fn named_set(
        &mut self,
        family: NfFamily,
        name: &str,
        ty: SetTypeValue<'static>,
        interval: bool,
        elems: Vec<Expression<'static>>,
    ) {
        self.objects_sets.push(NfListObject::Set(Box::new(Set {
            family,
            table: self.table.clone().into(),
            name: name.to_string().into(),
            handle: None,
            set_type: ty,
            policy: None,
            flags: interval.then(|| HashSet::from([SetFlag::Interval])),
            elem: if elems.is_empty() {
                None
            } else {
                Some(elems.into())
            },
            timeout: None,
            gc_interval: None,
            size: None,
            comment: None,
        })));
    }

    pub(super) fn chain(&mut self, family: NfFamily, name: &str, hook: Option<(NfHook, i32)>) {
        self.objects_chains.push(NfListObject::Chain(Chain {
            family,
            table: self.table.clone().into(),
            name: name.to_string().into(),
            newname: None,
            handle: None,
            _type: hook.map(|_| NfChainType::Filter),
            hook: hook.map(|(h, _)| h),
            prio: hook.map(|(_, p)| p),
            dev: None,
            policy: hook.map(|_| NfChainPolicy::Accept),
        }));
    }

    pub(super) fn rule(&mut self, family: NfFamily, chain: &str, expr: Vec<Statement<'static>>) {
        self.objects_rules.push(NfListObject::Rule(Rule {
            family,
            table: self.table.clone().into(),
            chain: chain.to_string().into(),
            expr: expr.into(),
            handle: None,
            index: None,
            comment: None,
        }));
    }

    /// A `drop_<reason>` chain: counter, optional rate-limited log, drop.
    pub(super) fn drop_chain(&mut self, family: NfFamily, reason: Reason, p: &Policy) {
        let chain = reason.chain();
        self.chain(family, &chain, None);
        let counter = Statement::Counter(Counter::Anonymous(Some(AnonymousCounter::default())));
        if p.log_rate > 0 {
            self.rule(
                family,
                &chain,
                vec![
                    counter,
                    Statement::Limit(Limit {
                        rate: p.log_rate,
                        rate_unit: None,
                        per: Some("second".into()),
                        burst: Some(p.log_burst),
                        burst_unit: None,
                        inv: None,
                    }),
                    Statement::Log(Some(Log {
                        prefix: Some(format!("{} {}: ", p.log_prefix, reason.name()).into()),
                        ..Log::new(None)
                    })),
                ],
            );
        } else {
            self.rule(family, &chain, vec![counter]);
        }
        self.rule(family, &chain, vec![Statement::Drop(None)]);
    }

    /// Both tables, then everything added so far in its category's order.
    pub(super) fn finish(self) -> Ruleset {
        let mut objects = vec![
            NfListObject::Table(Table {
                family: NfFamily::INet,
                name: self.table.clone().into(),
                handle: None,
            }),
            NfListObject::Table(Table {
                family: NfFamily::Bridge,
                name: self.table.clone().into(),
                handle: None,
            }),
        ];
        objects.extend(self.objects_sets);
        objects.extend(self.objects_chains);
        objects.extend(self.objects_rules);
        Ruleset {
            table: self.table,
            objects,
        }
    }
}
