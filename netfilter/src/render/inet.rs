//! The `inet` table: what a tenant may send to routed destinations (`tenant_forward`) and to
//! the host itself (`tenant_input`), the interval sets of denied and allowed prefixes those
//! chains look up, and their `drop_<reason>` chains.
//!
//! The bridge table (tenant ↔ tenant frames, port binding) is rendered elsewhere.

use std::net::Ipv6Addr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use nftables::expr::{CT, Expression, MetaKey, NamedExpression};
use nftables::schema::{SetType, SetTypeValue};
use nftables::stmt::{Operator, Statement};
use nftables::types::{NfFamily, NfHook};

use super::builder::Builder;
use super::expr::{
    accept, anon_set, ct_state, dport, goto, jump, l4_tcp_udp, m, meta, payload, prefix, s,
};
use super::model::{Network, Reason};
use crate::addr::{allow_sets, deny4, deny6};
use crate::config::Policy;

const INET: NfFamily = NfFamily::INet;

/// Essential ICMP tenants may send to routed destinations (numeric order, as nft lists them).
const ICMP4_FORWARD: &[&str] = &[
    "echo-reply",
    "destination-unreachable",
    "echo-request",
    "time-exceeded",
    "parameter-problem",
];
const ICMP6_FORWARD: &[&str] = &[
    "destination-unreachable",
    "packet-too-big",
    "time-exceeded",
    "parameter-problem",
    "echo-request",
    "echo-reply",
];
/// ICMPv6 a tenant needs to send to the host for IPv6 to work at all (router/neighbour
/// discovery, multicast listener reports), accepted from link-local sources too.
const ICMP6_TO_HOST: &[&str] = &[
    "mld-listener-report",
    "nd-router-solicit",
    "nd-neighbor-solicit",
    "nd-neighbor-advert",
    "mld2-listener-report",
];

/// Everything of the `inet` table except the table object itself, in the order nft lists it.
pub(super) fn render(b: &mut Builder, p: &Policy, net: &Network) {
    sets(b, p);

    // Base chains: only traffic arriving from the tenant bridge is ours to judge.
    let from_bridge = || m(meta(MetaKey::Iifname), Operator::EQ, s(net.bridge.clone()));
    b.chain(INET, "forward", Some((NfHook::Forward, p.priority)));
    b.chain(INET, "input", Some((NfHook::Input, p.priority)));
    b.chain(INET, "tenant_forward", None);
    b.chain(INET, "tenant_input", None);
    b.rule(INET, "forward", vec![from_bridge(), jump("tenant_forward")]);
    b.rule(INET, "input", vec![from_bridge(), jump("tenant_input")]);

    tenant_forward(b, net);
    tenant_input(b, p, net);

    for reason in Reason::ALL {
        if reason != Reason::Unbound {
            b.drop_chain(INET, reason, p);
        }
    }
}

/// The deny and allow prefixes as interval sets, so the rule count does not grow with the
/// number of entries.
fn sets(b: &mut Builder, p: &Policy) {
    let allow = allow_sets(&p.allow);
    let elems4 = |v: &[Ipv4Net]| v.iter().map(|n| prefix(IpNet::V4(*n))).collect::<Vec<_>>();
    let elems6 = |v: &[Ipv6Net]| v.iter().map(|n| prefix(IpNet::V6(*n))).collect::<Vec<_>>();
    let concat = |n: IpNet, port: u16| {
        Expression::Named(NamedExpression::Concat(vec![
            prefix(n),
            Expression::Number(u32::from(port)),
        ]))
    };
    let t4 = || SetTypeValue::Single(SetType::Ipv4Addr);
    let t6 = || SetTypeValue::Single(SetType::Ipv6Addr);
    b.set("deny4", t4(), elems4(&deny4(&p.extra_deny)));
    b.set("deny6", t6(), elems6(&deny6(&p.extra_deny)));
    b.set("allow4", t4(), elems4(&allow.any4));
    b.set("allow6", t6(), elems6(&allow.any6));
    b.set(
        "allow4_port",
        SetTypeValue::Concatenated(vec![SetType::Ipv4Addr, SetType::InetService].into()),
        allow
            .port4
            .iter()
            .map(|(n, port)| concat(IpNet::V4(*n), *port))
            .collect(),
    );
    b.set(
        "allow6_port",
        SetTypeValue::Concatenated(vec![SetType::Ipv6Addr, SetType::InetService].into()),
        allow
            .port6
            .iter()
            .map(|(n, port)| concat(IpNet::V6(*n), *port))
            .collect(),
    );
}

/// Tenant → routed destinations: replies and invalid first, then spoofing, other tenants, the
/// allowlist, denied ranges and unexpected ICMP.
fn tenant_forward(b: &mut Builder, net: &Network) {
    let fwd = "tenant_forward";
    conntrack_rules(b, fwd);
    spoof_rules(b, fwd, net);
    b.rule(
        INET,
        fwd,
        vec![
            m(
                payload("ip", "daddr"),
                Operator::EQ,
                prefix(IpNet::V4(net.subnet)),
            ),
            goto(Reason::Tenant),
        ],
    );
    if let Some((subnet6, _)) = ipv6(net) {
        b.rule(
            INET,
            fwd,
            vec![
                m(
                    payload("ip6", "daddr"),
                    Operator::EQ,
                    prefix(IpNet::V6(subnet6)),
                ),
                goto(Reason::Tenant),
            ],
        );
    }
    allow_rules(b, fwd);
    b.rule(
        INET,
        fwd,
        vec![
            m(payload("ip", "daddr"), Operator::EQ, s("@deny4")),
            goto(Reason::Private),
        ],
    );
    b.rule(
        INET,
        fwd,
        vec![
            m(payload("ip6", "daddr"), Operator::EQ, s("@deny6")),
            goto(Reason::Private),
        ],
    );
    b.rule(
        INET,
        fwd,
        vec![
            m(
                payload("icmp", "type"),
                Operator::NEQ,
                anon_set(ICMP4_FORWARD),
            ),
            goto(Reason::Icmp),
        ],
    );
    b.rule(
        INET,
        fwd,
        vec![
            m(
                payload("icmpv6", "type"),
                Operator::NEQ,
                anon_set(ICMP6_FORWARD),
            ),
            goto(Reason::Icmp),
        ],
    );
}

/// Tenant → the host itself: only the resolver, ICMP echo to the gateway, neighbour discovery
/// and the allowlist; everything else is `drop_host`.
fn tenant_input(b: &mut Builder, p: &Policy, net: &Network) {
    let inp = "tenant_input";
    let v6 = ipv6(net);
    conntrack_rules(b, inp);
    if v6.is_some() {
        // Before the source check: these come from link-local or unspecified sources.
        b.rule(
            INET,
            inp,
            vec![
                m(
                    payload("icmpv6", "type"),
                    Operator::EQ,
                    anon_set(ICMP6_TO_HOST),
                ),
                accept(),
            ],
        );
    }
    spoof_rules(b, inp, net);
    b.rule(
        INET,
        inp,
        vec![
            m(
                payload("ip", "daddr"),
                Operator::EQ,
                s(net.gateway.to_string()),
            ),
            l4_tcp_udp(),
            dport(p.resolver_port),
            accept(),
        ],
    );
    b.rule(
        INET,
        inp,
        vec![
            m(
                payload("ip", "daddr"),
                Operator::EQ,
                s(net.gateway.to_string()),
            ),
            m(payload("icmp", "type"), Operator::EQ, s("echo-request")),
            accept(),
        ],
    );
    if let Some((_, gw6)) = v6 {
        b.rule(
            INET,
            inp,
            vec![
                m(payload("ip6", "daddr"), Operator::EQ, s(gw6.to_string())),
                l4_tcp_udp(),
                dport(p.resolver_port),
                accept(),
            ],
        );
        b.rule(
            INET,
            inp,
            vec![
                m(payload("ip6", "daddr"), Operator::EQ, s(gw6.to_string())),
                m(payload("icmpv6", "type"), Operator::EQ, s("echo-request")),
                accept(),
            ],
        );
    }
    allow_rules(b, inp);
    b.rule(INET, inp, vec![goto(Reason::Host)]);
}

/// The tenant network's IPv6 subnet and gateway, when it has IPv6 at all.
fn ipv6(net: &Network) -> Option<(Ipv6Net, Ipv6Addr)> {
    net.subnet6.zip(net.gateway6)
}

/// Accept what the allowlist sets hold (address-only entries, then address + port).
fn allow_rules(b: &mut Builder, chain: &str) {
    b.rule(
        INET,
        chain,
        vec![
            m(payload("ip", "daddr"), Operator::EQ, s("@allow4")),
            accept(),
        ],
    );
    b.rule(
        INET,
        chain,
        vec![
            m(payload("ip6", "daddr"), Operator::EQ, s("@allow6")),
            accept(),
        ],
    );
    for (fam, set) in [("ip", "@allow4_port"), ("ip6", "@allow6_port")] {
        b.rule(
            INET,
            chain,
            vec![
                l4_tcp_udp(),
                m(
                    Expression::Named(NamedExpression::Concat(vec![
                        payload(fam, "daddr"),
                        payload("th", "dport"),
                    ])),
                    Operator::EQ,
                    s(set),
                ),
                accept(),
            ],
        );
    }
}

/// Replies to flows others opened are accepted; conntrack-invalid packets dropped. A tenant's
/// own flows get no shortcut (see the module docs of [`super`]).
fn conntrack_rules(b: &mut Builder, chain: &str) {
    b.rule(
        INET,
        chain,
        vec![
            m(
                ct_state(),
                Operator::IN,
                Expression::List(vec![s("established"), s("related")]),
            ),
            m(
                Expression::Named(NamedExpression::CT(CT {
                    key: "direction".into(),
                    family: None,
                    dir: None,
                })),
                Operator::EQ,
                s("reply"),
            ),
            accept(),
        ],
    );
    b.rule(
        INET,
        chain,
        vec![
            m(ct_state(), Operator::IN, s("invalid")),
            goto(Reason::Invalid),
        ],
    );
}

/// A source outside the tenant subnet is spoofed; without tenant IPv6, any IPv6 is dropped.
fn spoof_rules(b: &mut Builder, chain: &str, net: &Network) {
    b.rule(
        INET,
        chain,
        vec![
            m(
                payload("ip", "saddr"),
                Operator::NEQ,
                prefix(IpNet::V4(net.subnet)),
            ),
            goto(Reason::Spoof),
        ],
    );
    let rule: Vec<Statement<'static>> = match ipv6(net) {
        Some((subnet6, _)) => vec![
            m(
                payload("ip6", "saddr"),
                Operator::NEQ,
                prefix(IpNet::V6(subnet6)),
            ),
            goto(Reason::Spoof),
        ],
        None => vec![
            m(meta(MetaKey::Nfproto), Operator::EQ, s("ipv6")),
            goto(Reason::Ipv6),
        ],
    };
    b.rule(INET, chain, rule);
}
