//! The pure renderer: policy + tenant network → the nftables objects of berth's two tables.
//!
//! Layout (names relative to the configured table name `T`, bridge `B`):
//! - `table inet T` — base chains `forward` and `input` hooked at `filter + priority` (before
//!   Docker's filter chains at 0; in nftables a drop in any base chain is final, so Docker's own
//!   ACCEPTs cannot undo ours). Each holds one rule, `iifname B jump tenant_*`: traffic that does
//!   not come from the tenant bridge is never touched. `tenant_forward` covers tenant → anywhere
//!   routed (internet, private ranges, other tenants routed through the host); `tenant_input`
//!   covers tenant → any address of the host itself (only the resolver, ICMP echo to the
//!   gateway, neighbour discovery and the allowlist get through). Deny and allow prefixes live
//!   in interval sets, so the rule count does not grow with the number of entries.
//! - `table bridge T` — a `forward` chain at bridge `filter + priority` that drops frames
//!   forwarded between two ports of the tenant bridge (tenant ↔ tenant without br_netfilter).
//! - Established/related packets in the *reply* direction (answers to connections others opened
//!   towards a tenant, or that the host opened) are accepted first. A tenant's own flows are
//!   re-judged on every packet — a few set lookups — so a flow opened while the table was
//!   missing (between a flush and the drift watch's re-apply) is cut as soon as it is back.
//! - Every drop goes through a `drop_<reason>` chain: counter, rate-limited log with the
//!   configured prefix and the reason, drop.
//!
//! This module builds values only; applying them is [`crate::nft`]'s job.

use std::borrow::Cow;
use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use nftables::batch::Batch;
use nftables::expr::{
    CT, Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, SetItem,
};
use nftables::schema::{
    Chain, NfListObject, Nftables, Rule, Set, SetFlag, SetType, SetTypeValue, Table,
};
use nftables::stmt::{
    AnonymousCounter, Counter, JumpTarget, Limit, Log, Match, Operator, Statement,
};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use crate::addr::{allow_sets, deny4, deny6};
use crate::bindings::PortBinding;
use crate::config::Policy;

/// The tenant network as this crate needs it (converted from `[network]` by the binary).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    /// Linux bridge interface of the tenant network.
    pub bridge: String,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// IPv6 for tenants is optional; when absent, all tenant IPv6 is dropped.
    pub subnet6: Option<Ipv6Net>,
    pub gateway6: Option<Ipv6Addr>,
}

/// How the bridge table recognises tenant ↔ tenant frames (resolved, unlike the config's
/// `auto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L2Match {
    /// `meta ibrname B`: every protocol; needs kernel bridge meta support.
    Meta,
    /// Tenant-subnet IPv4/IPv6/ARP addresses: any kernel.
    Addresses,
}

/// Why a packet is dropped; each reason has its own chain, counter and log prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Source address outside the tenant subnet(s).
    Spoof,
    /// Conntrack says invalid.
    Invalid,
    /// Destination in a denied (private, special-purpose or configured) range.
    Private,
    /// Destination is another tenant (routed or bridged).
    Tenant,
    /// Destination is the host itself (control plane) and not the resolver/allowlist.
    Host,
    /// ICMP type tenants have no business sending.
    Icmp,
    /// IPv6 while the tenant network has no IPv6.
    Ipv6,
    /// A frame from a tenant bridge port that is in no port binding (bridge table only).
    Unbound,
}

impl Reason {
    pub const ALL: [Reason; 8] = [
        Reason::Spoof,
        Reason::Invalid,
        Reason::Private,
        Reason::Tenant,
        Reason::Host,
        Reason::Icmp,
        Reason::Ipv6,
        Reason::Unbound,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Reason::Spoof => "spoof",
            Reason::Invalid => "invalid",
            Reason::Private => "private",
            Reason::Tenant => "tenant",
            Reason::Host => "host",
            Reason::Icmp => "icmp",
            Reason::Ipv6 => "ipv6",
            Reason::Unbound => "unbound",
        }
    }
    pub fn chain(self) -> String {
        format!("drop_{}", self.name())
    }
}

/// berth's rendered ruleset: the objects of its two tables, in the order nft needs them
/// (tables, sets, chains, rules).
#[derive(Debug, Clone, PartialEq)]
pub struct Ruleset {
    pub table: String,
    pub objects: Vec<NfListObject<'static>>,
}

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

struct Builder {
    table: String,
    objects_sets: Vec<NfListObject<'static>>,
    objects_chains: Vec<NfListObject<'static>>,
    objects_rules: Vec<NfListObject<'static>>,
}

impl Builder {
    fn set(&mut self, name: &str, ty: SetTypeValue<'static>, elems: Vec<Expression<'static>>) {
        self.objects_sets.push(NfListObject::Set(Box::new(Set {
            family: NfFamily::INet,
            table: self.table.clone().into(),
            name: name.to_string().into(),
            handle: None,
            set_type: ty,
            policy: None,
            flags: Some(HashSet::from([SetFlag::Interval])),
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

    fn chain(&mut self, family: NfFamily, name: &str, hook: Option<(NfHook, i32)>) {
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

    fn rule(&mut self, family: NfFamily, chain: &str, expr: Vec<Statement<'static>>) {
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
    fn drop_chain(&mut self, family: NfFamily, reason: Reason, p: &Policy) {
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
}

fn s(v: impl Into<String>) -> Expression<'static> {
    Expression::String(Cow::Owned(v.into()))
}
fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}
fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: field.into(),
        },
    )))
}
fn ct_state() -> Expression<'static> {
    Expression::Named(NamedExpression::CT(CT {
        key: "state".into(),
        family: None,
        dir: None,
    }))
}
fn m(left: Expression<'static>, op: Operator, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}
fn anon_set(items: &[&str]) -> Expression<'static> {
    Expression::Named(NamedExpression::Set(
        items.iter().map(|i| SetItem::Element(s(*i))).collect(),
    ))
}
fn goto(reason: Reason) -> Statement<'static> {
    Statement::Goto(JumpTarget {
        target: reason.chain().into(),
    })
}
fn jump(chain: &str) -> Statement<'static> {
    Statement::Jump(JumpTarget {
        target: chain.to_string().into(),
    })
}
fn accept() -> Statement<'static> {
    Statement::Accept(None)
}
/// A prefix the way nft lists it back: a bare address for /32 and /128.
fn prefix(net: IpNet) -> Expression<'static> {
    if net.prefix_len() == net.max_prefix_len() {
        s(net.addr().to_string())
    } else {
        Expression::Named(NamedExpression::Prefix(Prefix {
            addr: Box::new(s(net.network().to_string())),
            len: u32::from(net.prefix_len()),
        }))
    }
}
fn l4_tcp_udp() -> Statement<'static> {
    m(
        meta(MetaKey::L4proto),
        Operator::EQ,
        anon_set(&["tcp", "udp"]),
    )
}
fn dport(port: u16) -> Statement<'static> {
    m(
        payload("th", "dport"),
        Operator::EQ,
        Expression::Number(u32::from(port)),
    )
}

/// Renders the full ruleset. Pure and deterministic: the same inputs give byte-identical JSON.
/// `ports` is the port map (see [`crate::bindings`]); `None` renders no per-port chains (port
/// binding disabled: anti-spoofing is then only "source inside the tenant subnet").
pub fn render(p: &Policy, net: &Network, l2: L2Match, ports: Option<&[PortBinding]>) -> Ruleset {
    render_full(p, net, l2, ports, &[])
}

/// [`render`], plus the tenant-bridge ports known to have no binding (`unbound`, from the
/// kernel's port list): they get an explicit `drop_unbound` entry in the dispatch map, which
/// matters where bridge meta expressions are missing and a port's bridge is otherwise unknown.
pub fn render_full(
    p: &Policy,
    net: &Network,
    l2: L2Match,
    ports: Option<&[PortBinding]>,
    unbound: &[String],
) -> Ruleset {
    let mut b = Builder {
        table: p.table.clone(),
        objects_sets: Vec::new(),
        objects_chains: Vec::new(),
        objects_rules: Vec::new(),
    };
    let inet = NfFamily::INet;
    let bridge = NfFamily::Bridge;
    let v6 = net.subnet6.zip(net.gateway6);

    // Sets.
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

    // Base chains: only traffic arriving from the tenant bridge is ours to judge.
    let from_bridge = || m(meta(MetaKey::Iifname), Operator::EQ, s(net.bridge.clone()));
    b.chain(inet, "forward", Some((NfHook::Forward, p.priority)));
    b.chain(inet, "input", Some((NfHook::Input, p.priority)));
    b.chain(inet, "tenant_forward", None);
    b.chain(inet, "tenant_input", None);
    b.rule(inet, "forward", vec![from_bridge(), jump("tenant_forward")]);
    b.rule(inet, "input", vec![from_bridge(), jump("tenant_input")]);

    let allow_rules = |b: &mut Builder, chain: &str| {
        b.rule(
            inet,
            chain,
            vec![
                m(payload("ip", "daddr"), Operator::EQ, s("@allow4")),
                accept(),
            ],
        );
        b.rule(
            inet,
            chain,
            vec![
                m(payload("ip6", "daddr"), Operator::EQ, s("@allow6")),
                accept(),
            ],
        );
        for (fam, set) in [("ip", "@allow4_port"), ("ip6", "@allow6_port")] {
            b.rule(
                inet,
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
    };
    let conntrack_rules = |b: &mut Builder, chain: &str| {
        b.rule(
            inet,
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
            inet,
            chain,
            vec![
                m(ct_state(), Operator::IN, s("invalid")),
                goto(Reason::Invalid),
            ],
        );
    };
    let spoof_rules = |b: &mut Builder, chain: &str| {
        b.rule(
            inet,
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
        match v6 {
            Some((subnet6, _)) => b.rule(
                inet,
                chain,
                vec![
                    m(
                        payload("ip6", "saddr"),
                        Operator::NEQ,
                        prefix(IpNet::V6(subnet6)),
                    ),
                    goto(Reason::Spoof),
                ],
            ),
            None => b.rule(
                inet,
                chain,
                vec![
                    m(meta(MetaKey::Nfproto), Operator::EQ, s("ipv6")),
                    goto(Reason::Ipv6),
                ],
            ),
        }
    };

    // tenant → routed destinations.
    let fwd = "tenant_forward";
    conntrack_rules(&mut b, fwd);
    spoof_rules(&mut b, fwd);
    b.rule(
        inet,
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
    if let Some((subnet6, _)) = v6 {
        b.rule(
            inet,
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
    allow_rules(&mut b, fwd);
    b.rule(
        inet,
        fwd,
        vec![
            m(payload("ip", "daddr"), Operator::EQ, s("@deny4")),
            goto(Reason::Private),
        ],
    );
    b.rule(
        inet,
        fwd,
        vec![
            m(payload("ip6", "daddr"), Operator::EQ, s("@deny6")),
            goto(Reason::Private),
        ],
    );
    b.rule(
        inet,
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
        inet,
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

    // tenant → the host itself.
    let inp = "tenant_input";
    conntrack_rules(&mut b, inp);
    if v6.is_some() {
        // Before the source check: these come from link-local or unspecified sources.
        b.rule(
            inet,
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
    spoof_rules(&mut b, inp);
    b.rule(
        inet,
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
        inet,
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
            inet,
            inp,
            vec![
                m(payload("ip6", "daddr"), Operator::EQ, s(gw6.to_string())),
                l4_tcp_udp(),
                dport(p.resolver_port),
                accept(),
            ],
        );
        b.rule(
            inet,
            inp,
            vec![
                m(payload("ip6", "daddr"), Operator::EQ, s(gw6.to_string())),
                m(payload("icmpv6", "type"), Operator::EQ, s("echo-request")),
                accept(),
            ],
        );
    }
    allow_rules(&mut b, inp);
    b.rule(inet, inp, vec![goto(Reason::Host)]);

    for reason in Reason::ALL {
        if reason != Reason::Unbound {
            b.drop_chain(inet, reason, p);
        }
    }

    // The bridge table: tenant ↔ tenant on the same bridge, with or without br_netfilter.
    b.chain(
        bridge,
        "forward",
        Some((NfHook::Forward, -200 + p.priority)),
    );
    match l2 {
        L2Match::Meta => b.rule(
            bridge,
            "forward",
            vec![
                m(
                    Expression::Named(NamedExpression::Meta(Meta {
                        key: MetaKey::Ibridgename,
                    })),
                    Operator::EQ,
                    s(net.bridge.clone()),
                ),
                goto(Reason::Tenant),
            ],
        ),
        L2Match::Addresses => {
            // A frame forwarded port-to-port (never via the host) whose address is a tenant's
            // can only be tenant ↔ tenant: tenant subnets exist on the tenant bridge only.
            let sub4 = prefix(IpNet::V4(net.subnet));
            for (proto, field) in [
                ("ip", "saddr"),
                ("ip", "daddr"),
                ("arp", "saddr ip"),
                ("arp", "daddr ip"),
            ] {
                b.rule(
                    bridge,
                    "forward",
                    vec![
                        m(payload(proto, field), Operator::EQ, sub4.clone()),
                        goto(Reason::Tenant),
                    ],
                );
            }
            if let Some((subnet6, _)) = v6 {
                for field in ["saddr", "daddr"] {
                    b.rule(
                        bridge,
                        "forward",
                        vec![
                            m(
                                payload("ip6", field),
                                Operator::EQ,
                                prefix(IpNet::V6(subnet6)),
                            ),
                            goto(Reason::Tenant),
                        ],
                    );
                }
            }
        }
    }
    b.drop_chain(bridge, Reason::Tenant, p);
    if let Some(ports) = ports {
        port_rules(&mut b, p, net, l2, ports, unbound);
        b.drop_chain(bridge, Reason::Spoof, p);
        b.drop_chain(bridge, Reason::Unbound, p);
    }

    let mut objects = vec![
        NfListObject::Table(Table {
            family: inet,
            name: p.table.clone().into(),
            handle: None,
        }),
        NfListObject::Table(Table {
            family: bridge,
            name: p.table.clone().into(),
            handle: None,
        }),
    ];
    objects.extend(b.objects_sets);
    objects.extend(b.objects_chains);
    objects.extend(b.objects_rules);
    Ruleset {
        table: p.table.clone(),
        objects,
    }
}

/// The bridge-port binding chains (layout in the module docs of [`crate::bindings`]):
/// - `ports`, a base chain at bridge `prerouting` (every frame entering the bridge from a port,
///   whether it is then forwarded or delivered to the host): dispatches by input port to that
///   port's chain; a frame from a tenant-bridge port with no binding goes to `drop_unbound`
///   (with bridge meta support: every such frame; without it the bridge of a port is unknown
///   here, so only frames claiming a tenant-subnet address are dropped).
/// - `port_common`: what no tenant port may send whatever its binding — non-IP/ARP ethertypes
///   (VLAN tags included), non-Ethernet/IPv4 ARP, router advertisements and redirects, ND
///   messages with more than one option or an option other than the one link-layer address
///   option, and anything but DAD/MLD from the unspecified address.
/// - `port_<ifname>`: the port's own MAC as Ethernet and ARP sender, its own IPv4 as ARP
///   sender and IP source, its own IPv6 (or the link-local its MAC implies) as IPv6 source and
///   NA target, its own MAC in the ND link-layer option.
fn port_rules(
    b: &mut Builder,
    p: &Policy,
    net: &Network,
    l2: L2Match,
    ports: &[PortBinding],
    unbound: &[String],
) {
    let bridge = NfFamily::Bridge;
    b.chain(
        bridge,
        "ports",
        Some((NfHook::Prerouting, -200 + p.priority)),
    );
    b.chain(bridge, "port_common", None);
    if l2 == L2Match::Meta {
        b.rule(
            bridge,
            "ports",
            vec![
                m(
                    meta(MetaKey::Ibridgename),
                    Operator::NEQ,
                    s(net.bridge.clone()),
                ),
                Statement::Return(None),
            ],
        );
    }
    let mut targets: Vec<(String, String)> = ports
        .iter()
        .map(|pb| (pb.port.clone(), pb.chain()))
        .collect();
    targets.extend(
        unbound
            .iter()
            .filter(|u| crate::bindings::valid_ifname(u) && !ports.iter().any(|pb| pb.port == **u))
            .map(|u| (u.clone(), Reason::Unbound.chain())),
    );
    targets.sort();
    targets.dedup();
    if !targets.is_empty() {
        b.rule(
            bridge,
            "ports",
            vec![Statement::VerdictMap(nftables::stmt::VerdictMap {
                key: meta(MetaKey::Iifname),
                data: Expression::Named(NamedExpression::Set(
                    targets
                        .into_iter()
                        .map(|(port, chain)| {
                            SetItem::Mapping(
                                s(port),
                                Expression::Verdict(nftables::expr::Verdict::Goto(JumpTarget {
                                    target: chain.into(),
                                })),
                            )
                        })
                        .collect(),
                )),
            })],
        );
    }
    match l2 {
        L2Match::Meta => b.rule(bridge, "ports", vec![goto(Reason::Unbound)]),
        L2Match::Addresses => {
            let mut claims = vec![
                (payload("arp", "saddr ip"), prefix(IpNet::V4(net.subnet))),
                (payload("ip", "saddr"), prefix(IpNet::V4(net.subnet))),
            ];
            if let Some(sub6) = net.subnet6 {
                claims.push((payload("ip6", "saddr"), prefix(IpNet::V6(sub6))));
            }
            for (left, right) in claims {
                b.rule(
                    bridge,
                    "ports",
                    vec![m(left, Operator::EQ, right), goto(Reason::Unbound)],
                );
            }
        }
    }

    // port_common.
    let pc = "port_common";
    let num = |v: u32| Expression::Number(v);
    let raw = |offset: u32, len: u32| {
        Expression::Named(NamedExpression::Payload(Payload::PayloadRaw(
            nftables::expr::PayloadRaw {
                base: nftables::expr::PayloadBase::TH,
                offset,
                len,
            },
        )))
    };
    let unspec = || s("::");
    b.rule(
        bridge,
        pc,
        vec![
            m(
                payload("ether", "type"),
                Operator::NEQ,
                anon_set(&["ip", "arp", "ip6"]),
            ),
            goto(Reason::Spoof),
        ],
    );
    b.rule(
        bridge,
        pc,
        vec![
            m(payload("arp", "htype"), Operator::NEQ, num(1)),
            goto(Reason::Spoof),
        ],
    );
    b.rule(
        bridge,
        pc,
        vec![
            m(payload("arp", "ptype"), Operator::NEQ, s("ip")),
            goto(Reason::Spoof),
        ],
    );
    b.rule(
        bridge,
        pc,
        vec![
            m(payload("arp", "hlen"), Operator::NEQ, num(6)),
            goto(Reason::Spoof),
        ],
    );
    b.rule(
        bridge,
        pc,
        vec![
            m(payload("arp", "plen"), Operator::NEQ, num(4)),
            goto(Reason::Spoof),
        ],
    );
    b.rule(
        bridge,
        pc,
        vec![
            m(
                payload("icmpv6", "type"),
                Operator::EQ,
                anon_set(&["nd-router-advert", "nd-redirect"]),
            ),
            goto(Reason::Spoof),
        ],
    );
    // nft lists the set in numeric order (131, 135, 143).
    b.rule(
        bridge,
        pc,
        vec![
            m(payload("ip6", "saddr"), Operator::EQ, unspec()),
            m(
                payload("icmpv6", "type"),
                Operator::NEQ,
                anon_set(&[
                    "mld-listener-report",
                    "nd-neighbor-solicit",
                    "mld2-listener-report",
                ]),
            ),
            goto(Reason::Spoof),
        ],
    );
    let nd = || {
        m(
            payload("icmpv6", "type"),
            Operator::EQ,
            anon_set(&["nd-neighbor-solicit", "nd-neighbor-advert"]),
        )
    };
    let ip6_len = || payload("ip6", "length");
    // At most one option (24 bytes of NS/NA, plus one 8-byte option)…
    b.rule(
        bridge,
        pc,
        vec![
            nd(),
            m(payload("ip6", "saddr"), Operator::NEQ, unspec()),
            m(
                ip6_len(),
                Operator::NEQ,
                Expression::Named(NamedExpression::Set(vec![
                    SetItem::Element(num(24)),
                    SetItem::Element(num(32)),
                ])),
            ),
            goto(Reason::Spoof),
        ],
    );
    // …and that option is the link-layer address one (type 1 in NS, 2 in NA; length 1).
    for (ty, opt) in [
        ("nd-neighbor-solicit", 0x0101u32),
        ("nd-neighbor-advert", 0x0201),
    ] {
        let mut rule = vec![m(payload("icmpv6", "type"), Operator::EQ, s(ty))];
        if ty == "nd-neighbor-solicit" {
            rule.push(m(payload("ip6", "saddr"), Operator::NEQ, unspec()));
        }
        rule.push(m(ip6_len(), Operator::EQ, num(32)));
        rule.push(m(raw(192, 16), Operator::NEQ, num(opt)));
        rule.push(goto(Reason::Spoof));
        b.rule(bridge, pc, rule);
    }

    // One chain per port.
    for pb in ports {
        let chain = pb.chain();
        b.chain(bridge, &chain, None);
        let mac = s(pb.mac.to_string());
        let mut rules: Vec<Vec<Statement<'static>>> = vec![
            vec![jump("port_common")],
            vec![
                m(payload("ether", "saddr"), Operator::NEQ, mac.clone()),
                goto(Reason::Spoof),
            ],
            vec![
                m(payload("arp", "saddr ether"), Operator::NEQ, mac),
                goto(Reason::Spoof),
            ],
        ];
        let mut arp_ips: Vec<Ipv4Addr> = pb.ipv4.clone();
        arp_ips.push(Ipv4Addr::UNSPECIFIED); // ARP probes (RFC 5227) claim nothing
        arp_ips.sort();
        arp_ips.dedup();
        rules.push(vec![
            m(
                payload("arp", "saddr ip"),
                Operator::NEQ,
                values(arp_ips.iter().map(|a| a.to_string())),
            ),
            goto(Reason::Spoof),
        ]);
        if pb.ipv4.is_empty() {
            rules.push(vec![
                m(payload("ether", "type"), Operator::EQ, s("ip")),
                goto(Reason::Spoof),
            ]);
        } else {
            let mut v4 = pb.ipv4.clone();
            v4.sort();
            rules.push(vec![
                m(
                    payload("ip", "saddr"),
                    Operator::NEQ,
                    values(v4.iter().map(|a| a.to_string())),
                ),
                goto(Reason::Spoof),
            ]);
        }
        let mut own6: Vec<Ipv6Addr> = pb.ipv6.clone();
        own6.push(pb.mac.link_local());
        own6.sort();
        own6.dedup();
        let mut src6 = own6.clone();
        src6.push(Ipv6Addr::UNSPECIFIED);
        src6.sort();
        rules.push(vec![
            m(
                payload("ip6", "saddr"),
                Operator::NEQ,
                values(src6.iter().map(|a| a.to_string())),
            ),
            goto(Reason::Spoof),
        ]);
        rules.push(vec![
            m(
                payload("icmpv6", "type"),
                Operator::EQ,
                s("nd-neighbor-advert"),
            ),
            m(
                raw(64, 128),
                Operator::NEQ,
                values(own6.iter().map(|a| format!("{:#x}", u128::from(*a)))),
            ),
            goto(Reason::Spoof),
        ]);
        // The link-layer option's address (48 bits, compared as 16 + 32 so both fit the
        // numbers nft lists back).
        let mb = pb.mac.0;
        let hi = u32::from(u16::from_be_bytes([mb[0], mb[1]]));
        let lo = u32::from_be_bytes([mb[2], mb[3], mb[4], mb[5]]);
        for (off, len, v) in [(208u32, 16u32, hi), (224, 32, lo)] {
            rules.push(vec![
                nd(),
                m(payload("ip6", "saddr"), Operator::NEQ, unspec()),
                m(ip6_len(), Operator::EQ, num(32)),
                m(raw(off, len), Operator::NEQ, num(v)),
                goto(Reason::Spoof),
            ]);
        }
        for r in rules {
            b.rule(bridge, &chain, r);
        }
    }
}

/// One value as itself, several as an anonymous set (the way nft lists them back).
fn values(v: impl Iterator<Item = String>) -> Expression<'static> {
    let mut v: Vec<Expression<'static>> = v.map(s).collect();
    if v.len() == 1 {
        v.remove(0)
    } else {
        Expression::Named(NamedExpression::Set(
            v.into_iter().map(SetItem::Element).collect(),
        ))
    }
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
        batch.add_cmd(nftables::schema::NfCmd::Flush(
            nftables::schema::FlushObject::Chain(chain("ports")),
        ));
        for name in &gone {
            batch.add_cmd(nftables::schema::NfCmd::Flush(
                nftables::schema::FlushObject::Chain(chain(name)),
            ));
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
                && (r.chain == "ports" || added.iter().any(|n| **n == r.chain))
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

/// Serialises objects or a batch the way nft reads them. The `nftables` crate names two bridge
/// meta keys after their long forms, which nft 1.0 rejects; this maps them to `ibrname` and
/// `obrname`.
pub fn to_nft_json<T: serde::Serialize>(value: &T) -> serde_json::Value {
    let mut v = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
    fix_meta_keys(&mut v);
    v
}

fn fix_meta_keys(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Object(m) => {
            if let Some(Value::Object(meta)) = m.get_mut("meta")
                && let Some(Value::String(key)) = meta.get_mut("key")
            {
                match key.as_str() {
                    "ibridgename" => *key = "ibrname".into(),
                    "obridgename" => *key = "obrname".into(),
                    _ => {}
                }
            }
            m.values_mut().for_each(fix_meta_keys);
        }
        Value::Array(a) => a.iter_mut().for_each(fix_meta_keys),
        _ => {}
    }
}

/// The transaction that removes berth's tables (and nothing else); fine when they are absent.
pub fn delete_batch(table: &str) -> Nftables<'static> {
    let mut batch = Batch::new();
    reset_tables(&mut batch, table);
    batch.to_nftables()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::diff::expected_lines;

    fn net(v6: bool) -> Network {
        Network {
            bridge: "berth0".into(),
            subnet: "172.19.2.0/24".parse().unwrap(),
            gateway: "172.19.2.1".parse().unwrap(),
            subnet6: v6.then(|| "fd19:2::/64".parse().unwrap()),
            gateway6: v6.then(|| "fd19:2::1".parse().unwrap()),
        }
    }

    fn rules_of(rs: &Ruleset, family: NfFamily, chain: &str) -> Vec<String> {
        rs.objects
            .iter()
            .filter_map(|o| match o {
                NfListObject::Rule(r) if r.family == family && r.chain == chain => {
                    Some(to_nft_json(&r.expr).to_string())
                }
                _ => None,
            })
            .collect()
    }

    fn position(rules: &[String], needle: &str) -> usize {
        rules
            .iter()
            .position(|r| r.contains(needle))
            .unwrap_or_else(|| panic!("no rule contains {needle}: {rules:#?}"))
    }

    /// Golden files: `BLESS=1 cargo test -p netfilter` rewrites them after a deliberate change.
    fn golden(name: &str, actual: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(name);
        if std::env::var_os("BLESS").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, actual).unwrap();
        }
        let expected = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run with BLESS=1 to create)", path.display()));
        assert_eq!(
            expected, actual,
            "golden file {name} differs (BLESS=1 to update)"
        );
    }

    #[test]
    fn golden_default_ipv4_only() {
        let p = Config::default().policy().unwrap();
        let rs = render(&p, &net(false), L2Match::Addresses, None);
        golden(
            "default-ipv4.txt",
            &(expected_lines(&rs.objects).join("\n") + "\n"),
        );
    }

    #[test]
    fn golden_dual_stack_with_allowlist() {
        let cfg = Config {
            allow: vec![
                "10.0.0.5:5000".into(),
                "[fd00::5]:443".into(),
                "192.168.7.0/24".into(),
            ],
            extra_deny: vec!["45.0.0.0/24".into()],
            ..Default::default()
        };
        let rs = render(&cfg.policy().unwrap(), &net(true), L2Match::Meta, None);
        golden(
            "dual-stack-allowlist.txt",
            &(expected_lines(&rs.objects).join("\n") + "\n"),
        );
    }

    fn bindings() -> Vec<PortBinding> {
        vec![
            PortBinding {
                port: "vethA".into(),
                mac: "02:42:ac:13:02:05".parse().unwrap(),
                ipv4: vec!["172.19.2.5".parse().unwrap()],
                ipv6: vec!["fd19:2::5".parse().unwrap()],
            },
            PortBinding {
                port: "vethB".into(),
                mac: "02:42:ac:13:02:06".parse().unwrap(),
                ipv4: vec!["172.19.2.6".parse().unwrap()],
                ipv6: vec![],
            },
        ]
    }

    #[test]
    fn golden_port_bindings() {
        let p = Config::default().policy().unwrap();
        let rs = render(&p, &net(true), L2Match::Addresses, Some(&bindings()));
        let lines: Vec<String> = expected_lines(&rs.objects)
            .into_iter()
            .filter(|l| l.starts_with("rule bridge") || l.starts_with("chain bridge"))
            .collect();
        golden("port-bindings.txt", &(lines.join("\n") + "\n"));
        let meta = render(&p, &net(true), L2Match::Meta, Some(&bindings()));
        let r = rules_of(&meta, NfFamily::Bridge, "ports");
        assert!(
            r[0].contains("ibrname") && r[0].contains("return"),
            "{r:#?}"
        );
        assert!(r.last().unwrap().contains("drop_unbound"), "{r:#?}");
    }

    #[test]
    fn every_port_chain_checks_mac_arp_ip_and_nd() {
        let p = Config::default().policy().unwrap();
        let rs = render(&p, &net(true), L2Match::Addresses, Some(&bindings()));
        let a = rules_of(&rs, NfFamily::Bridge, "port_vethA");
        assert!(a[0].contains("port_common"));
        for needle in [
            r#""field":"saddr","protocol":"ether"}},"op":"!=","right":"02:42:ac:13:02:05""#,
            r#""saddr ether","protocol":"arp"}},"op":"!=","right":"02:42:ac:13:02:05""#,
            r#"{"set":["0.0.0.0","172.19.2.5"]}"#,
            r#""protocol":"ip"}},"op":"!=","right":"172.19.2.5""#,
            r#"{"set":["::","fd19:2::5","fe80::42:acff:fe13:205"]}"#,
            r#"{"set":["0xfd190002000000000000000000000005","0xfe800000000000000042acfffe130205"]}"#,
        ] {
            assert!(
                a.iter().any(|r| r.contains(needle)),
                "{needle} missing in {a:#?}"
            );
        }
        // Every rule but the first sends to drop_spoof: a port chain never accepts.
        assert!(
            a[1..]
                .iter()
                .all(|r| r.contains("drop_spoof") && !r.contains("accept"))
        );
        // No IPv4 bound: IPv4 from the port is refused outright.
        let mut b = bindings();
        b[1].ipv4.clear();
        let rs = render(&p, &net(true), L2Match::Addresses, Some(&b));
        let r = rules_of(&rs, NfFamily::Bridge, "port_vethB");
        assert!(
            r.iter()
                .any(|r| r.contains(r#""right":"ip"}},{"goto":{"target":"drop_spoof"}}"#)),
            "{r:#?}"
        );
        // Known-unbound ports of the bridge are sent to drop_unbound by name.
        let rs = render_full(
            &p,
            &net(true),
            L2Match::Addresses,
            Some(&bindings()),
            &["vethZ".into(), "vethA".into(), "bad.name".into()],
        );
        let d = rules_of(&rs, NfFamily::Bridge, "ports");
        assert!(
            d[0].contains(r#"["vethZ",{"goto":{"target":"drop_unbound"}}]"#),
            "{d:#?}"
        );
        assert!(!d[0].contains("bad.name"), "{d:#?}");
        assert!(
            !d[0].contains(r#"["vethA",{"goto":{"target":"drop_unbound"#),
            "{d:#?}"
        );
        // Without port binding there is no dispatch chain.
        assert!(
            render(&p, &net(true), L2Match::Meta, None)
                .port_chains()
                .is_none()
        );
    }

    #[test]
    fn ports_update_touches_only_port_chains() {
        let p = Config::default().policy().unwrap();
        let before = render(&p, &net(false), L2Match::Addresses, Some(&bindings()[..1]));
        let after = render(&p, &net(false), L2Match::Addresses, Some(&bindings()[1..]));
        let batch = to_nft_json(&after.ports_update_batch(&before).unwrap());
        let cmds: Vec<String> = batch["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert!(
            cmds[0].starts_with(r#"{"flush":{"chain":{"family":"bridge""#)
                && cmds[0].contains(r#""name":"ports""#)
        );
        assert!(
            cmds.iter()
                .any(|c| c.starts_with(r#"{"delete":{"chain""#) && c.contains("port_vethA"))
        );
        assert!(
            cmds.iter()
                .any(|c| c.starts_with(r#"{"add":{"chain""#) && c.contains("port_vethB"))
        );
        for c in &cmds {
            assert!(!c.contains(r#""family":"inet""#), "{c}");
            assert!(!c.contains("drop_") || c.contains(r#""rule""#), "{c}");
            assert!(!c.contains("port_common\",\"newname"), "{c}");
        }
        assert!(
            after
                .ports_update_batch(&render(&p, &net(false), L2Match::Addresses, None))
                .is_none()
        );
        // A port that did not change is left alone: only the newcomer's chain is added.
        let both = render(&p, &net(false), L2Match::Addresses, Some(&bindings()));
        let batch = to_nft_json(&both.ports_update_batch(&before).unwrap()).to_string();
        assert!(!batch.contains(r#""chain":"port_vethA""#), "{batch}");
        assert!(batch.contains(r#""name":"port_vethB""#), "{batch}");
    }

    #[test]
    fn deterministic() {
        let p = Config::default().policy().unwrap();
        let a = to_nft_json(&render(&p, &net(true), L2Match::Meta, None).apply_batch());
        let b = to_nft_json(&render(&p, &net(true), L2Match::Meta, None).apply_batch());
        assert_eq!(a, b);
    }

    #[test]
    fn rule_count_does_not_grow_with_entries() {
        let count = |n: u32| {
            let mut cfg = Config::default();
            for i in 0..n {
                cfg.extra_deny
                    .push(format!("45.{}.{}.0/24", i / 100, (i % 100) * 2));
                cfg.allow
                    .push(format!("46.{}.{}.7:{}", i / 100, (i % 100) * 2, 1000 + i));
            }
            let rs = render(
                &cfg.policy().unwrap(),
                &net(false),
                L2Match::Addresses,
                None,
            );
            (rs.rule_count(), rs.element_count())
        };
        let (r1, e1) = count(1);
        let (r1000, e1000) = count(1000);
        assert_eq!(r1, r1000);
        assert!(e1000 >= e1 + 1998, "{e1} → {e1000}");
    }

    #[test]
    fn forward_order_is_conntrack_spoof_tenant_allow_deny() {
        let p = Config::default().policy().unwrap();
        let rs = render(&p, &net(true), L2Match::Meta, None);
        let r = rules_of(&rs, NfFamily::INet, "tenant_forward");
        let est = position(&r, "established");
        let spoof = position(&r, "drop_spoof");
        let tenant = position(&r, "drop_tenant");
        let allow = position(&r, "@allow4");
        let deny = position(&r, "@deny4");
        let deny6 = position(&r, "@deny6");
        assert!(est < spoof && spoof < tenant && tenant < allow && allow < deny && deny < deny6);
        // Only replies skip the checks: a tenant's own established flows are re-judged.
        assert!(r[est].contains(r#""right":"reply""#), "{}", r[est]);
        // Nothing in the forward path accepts without first passing the checks above, except
        // established traffic and the allowlist.
        for (i, rule) in r.iter().enumerate() {
            if rule.contains("\"accept\"") {
                assert!(
                    i == est || rule.contains("@allow"),
                    "unexpected accept: {rule}"
                );
            }
        }
    }

    #[test]
    fn input_only_lets_resolver_icmp_nd_and_allowlist_through() {
        let p = Config::default().policy().unwrap();
        let rs = render(&p, &net(true), L2Match::Meta, None);
        let r = rules_of(&rs, NfFamily::INet, "tenant_input");
        assert!(r.last().unwrap().contains("drop_host"), "{r:#?}");
        for rule in &r {
            if rule.contains("\"accept\"") {
                let ok = rule.contains("established")
                    || rule.contains("@allow")
                    || (rule.contains("172.19.2.1") || rule.contains("fd19:2::1"))
                        && (rule.contains("\"right\":53}") || rule.contains("echo-request"))
                    || rule.contains("nd-neighbor-solicit");
                assert!(ok, "unexpected accept on the input path: {rule}");
            }
        }
        let nd = position(&r, "nd-neighbor-solicit");
        let spoof = position(&r, "drop_spoof");
        assert!(
            nd < spoof,
            "neighbour discovery comes from link-local sources"
        );
    }

    #[test]
    fn ipv6_off_drops_ipv6() {
        let p = Config::default().policy().unwrap();
        let rs = render(&p, &net(false), L2Match::Addresses, None);
        for chain in ["tenant_forward", "tenant_input"] {
            let r = rules_of(&rs, NfFamily::INet, chain);
            let v6drop = position(&r, "drop_ipv6");
            assert!(r[v6drop].contains("\"nfproto\""), "{}", r[v6drop]);
            assert!(
                v6drop < position(&r, "@allow6"),
                "ipv6 drop must precede any ipv6 accept"
            );
        }
    }

    #[test]
    fn bridge_table_matches_the_bridge() {
        let p = Config::default().policy().unwrap();
        let meta = rules_of(
            &render(&p, &net(false), L2Match::Meta, None),
            NfFamily::Bridge,
            "forward",
        );
        assert_eq!(meta.len(), 1);
        assert!(
            meta[0].contains(r#"{"meta":{"key":"ibrname"}}"#),
            "{}",
            meta[0]
        );
        let addr = rules_of(
            &render(&p, &net(true), L2Match::Addresses, None),
            NfFamily::Bridge,
            "forward",
        );
        assert_eq!(addr.len(), 6, "{addr:#?}");
        assert!(addr.iter().all(|r| r.contains("drop_tenant")));
    }

    #[test]
    fn base_chains_run_before_docker() {
        let p = Config {
            priority: -25,
            table: "bf".into(),
            ..Default::default()
        }
        .policy()
        .unwrap();
        let rs = render(&p, &net(false), L2Match::Meta, None);
        let mut hooks = 0;
        for o in &rs.objects {
            match o {
                NfListObject::Chain(c) if c.hook.is_some() => {
                    hooks += 1;
                    let expect = if c.family == NfFamily::Bridge {
                        -225
                    } else {
                        -25
                    };
                    assert_eq!(c.prio, Some(expect), "{}", c.name);
                    assert_eq!(c.policy, Some(NfChainPolicy::Accept));
                }
                NfListObject::Chain(c) => assert_eq!(c.table, "bf"),
                NfListObject::Rule(r) => assert_eq!(r.table, "bf"),
                NfListObject::Set(s) => assert_eq!(s.table, "bf"),
                NfListObject::Table(t) => assert_eq!(t.name, "bf"),
                _ => {}
            }
        }
        assert_eq!(hooks, 3);
    }

    #[test]
    fn log_rate_zero_keeps_counters_without_logging() {
        let p = Config {
            log_rate: 0,
            ..Default::default()
        }
        .policy()
        .unwrap();
        let json =
            to_nft_json(&render(&p, &net(false), L2Match::Meta, None).apply_batch()).to_string();
        assert!(!json.contains("\"log\""));
        assert!(json.contains("\"counter\""));
        let p = Config {
            log_prefix: "xyz".into(),
            ..Default::default()
        }
        .policy()
        .unwrap();
        let json =
            to_nft_json(&render(&p, &net(false), L2Match::Meta, None).apply_batch()).to_string();
        assert!(json.contains("xyz private: "));
    }

    #[test]
    fn apply_batch_replaces_both_tables_first() {
        let p = Config::default().policy().unwrap();
        let batch = to_nft_json(&render(&p, &net(false), L2Match::Meta, None).apply_batch());
        let cmds = batch["nftables"].as_array().unwrap();
        let head: Vec<String> = cmds[..4].iter().map(|c| c.to_string()).collect();
        assert!(
            head[0].starts_with(r#"{"add":{"table":{"family":"inet""#),
            "{head:?}"
        );
        assert!(
            head[1].starts_with(r#"{"delete":{"table":{"family":"inet""#),
            "{head:?}"
        );
        assert!(
            head[2].starts_with(r#"{"add":{"table":{"family":"bridge""#),
            "{head:?}"
        );
        assert!(
            head[3].starts_with(r#"{"delete":{"table":{"family":"bridge""#),
            "{head:?}"
        );
        assert!(cmds[4..].iter().all(|c| c.get("add").is_some()));
        let del = to_nft_json(&delete_batch("berth"));
        assert_eq!(del["nftables"].as_array().unwrap().len(), 4);
    }
}
