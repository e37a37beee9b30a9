//! The bridge-port binding chains (layout in the module docs of [`crate::bindings`]):
//! - `ports`, a base chain at bridge `prerouting` (every frame entering the bridge from a port,
//!   whether it is then forwarded or delivered to the host): dispatches by input port to that
//!   port's chain; a frame from a tenant-bridge port with no binding goes to `drop_unbound`
//!   (with bridge meta support: every such frame; without it the bridge of a port is unknown
//!   here, so only frames claiming a tenant-subnet address are dropped).
//! - `port_common`: what no tenant port may send whatever its binding — non-IP/ARP ethertypes
//!   (VLAN tags included), non-Ethernet/IPv4 ARP, router advertisements and redirects, ND
//!   messages with more than one option or an option other than the one link-layer address
//!   option, and anything but DAD/MLD from the unspecified address.
//! - `port_<ifname>`: the port's own MAC as Ethernet and ARP sender, its own IPv4 as ARP
//!   sender and IP source, its own IPv6 (or the link-local its MAC implies) as IPv6 source and
//!   NA target, its own MAC in the ND link-layer option.
//!
//! The `inet` table and the bridge `forward` chain are rendered elsewhere; this file only adds
//! the chains that exist when a port map is given.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use nftables::expr::{Expression, MetaKey, NamedExpression, SetItem};
use nftables::stmt::{JumpTarget, Operator, Statement};
use nftables::types::{NfFamily, NfHook};

use super::builder::Builder;
use super::expr::{anon_set, goto, jump, m, meta, num, payload, prefix, s, th_raw, values};
use super::model::{L2Match, Network, Reason};
use crate::bindings::PortBinding;
use crate::config::Policy;

const BRIDGE: NfFamily = NfFamily::Bridge;

/// The port binding chains, their rules and their drop chains (`drop_spoof`, `drop_unbound`).
/// `unbound` are tenant-bridge ports known to have no binding: they get an explicit
/// `drop_unbound` entry in the dispatch map.
pub(super) fn render(
    b: &mut Builder,
    p: &Policy,
    net: &Network,
    l2: L2Match,
    ports: &[PortBinding],
    unbound: &[String],
) {
    b.chain(
        BRIDGE,
        "ports",
        Some((NfHook::Prerouting, -200 + p.priority)),
    );
    b.chain(BRIDGE, "port_common", None);
    if l2 == L2Match::Addresses {
        forward_ports(b, ports, unbound);
    }
    dispatch(b, net, l2, ports, unbound);
    port_common(b);
    for pb in ports {
        port_chain(b, pb);
    }
    b.drop_chain(BRIDGE, Reason::Spoof, p);
    b.drop_chain(BRIDGE, Reason::Unbound, p);
}

/// Without bridge meta the `forward` chain recognises tenant ↔ tenant frames by tenant-subnet
/// address only, which misses link-local IPv6 (and anything else a port's binding lets it send
/// outside the subnet). With the port map the tenant bridge's ports are known by name: a frame
/// forwarded in from any of them is tenant ↔ tenant (forwarding is port to port on one bridge),
/// whatever its addresses. `forward_ports` holds that one rule and moves with the port map.
fn forward_ports(b: &mut Builder, ports: &[PortBinding], unbound: &[String]) {
    b.chain(BRIDGE, FORWARD_PORTS, None);
    b.rule(BRIDGE, "forward", vec![jump(FORWARD_PORTS)]);
    let mut names: Vec<String> = ports
        .iter()
        .map(|pb| pb.port.clone())
        .chain(
            unbound
                .iter()
                .filter(|u| crate::bindings::valid_ifname(u))
                .cloned(),
        )
        .collect();
    names.sort();
    names.dedup();
    if !names.is_empty() {
        b.rule(
            BRIDGE,
            FORWARD_PORTS,
            vec![
                m(
                    meta(MetaKey::Iifname),
                    Operator::EQ,
                    values(names.into_iter()),
                ),
                goto(Reason::Tenant),
            ],
        );
    }
}

/// The chain of [`forward_ports`] (kernels without bridge meta only).
pub(super) const FORWARD_PORTS: &str = "forward_ports";

/// `ports`: each bound port to its own chain, a port known to be unbound to `drop_unbound`,
/// and then whatever else comes from the tenant bridge (or claims a tenant address) to
/// `drop_unbound` too.
fn dispatch(
    b: &mut Builder,
    net: &Network,
    l2: L2Match,
    ports: &[PortBinding],
    unbound: &[String],
) {
    if l2 == L2Match::Meta {
        b.rule(
            BRIDGE,
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
            BRIDGE,
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
        L2Match::Meta => b.rule(BRIDGE, "ports", vec![goto(Reason::Unbound)]),
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
                    BRIDGE,
                    "ports",
                    vec![m(left, Operator::EQ, right), goto(Reason::Unbound)],
                );
            }
        }
    }
}

/// `port_common`: the frames no tenant port may send whatever its binding.
fn port_common(b: &mut Builder) {
    let pc = "port_common";
    b.rule(
        BRIDGE,
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
        BRIDGE,
        pc,
        vec![
            m(payload("arp", "htype"), Operator::NEQ, num(1)),
            goto(Reason::Spoof),
        ],
    );
    b.rule(
        BRIDGE,
        pc,
        vec![
            m(payload("arp", "ptype"), Operator::NEQ, s("ip")),
            goto(Reason::Spoof),
        ],
    );
    b.rule(
        BRIDGE,
        pc,
        vec![
            m(payload("arp", "hlen"), Operator::NEQ, num(6)),
            goto(Reason::Spoof),
        ],
    );
    b.rule(
        BRIDGE,
        pc,
        vec![
            m(payload("arp", "plen"), Operator::NEQ, num(4)),
            goto(Reason::Spoof),
        ],
    );
    b.rule(
        BRIDGE,
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
        BRIDGE,
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
    // At most one option (24 bytes of NS/NA, plus one 8-byte option)…
    b.rule(
        BRIDGE,
        pc,
        vec![
            nd_message(),
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
        rule.push(m(th_raw(192, 16), Operator::NEQ, num(opt)));
        rule.push(goto(Reason::Spoof));
        b.rule(BRIDGE, pc, rule);
    }
}

/// `port_<ifname>`: the port's own MAC, IPv4 and IPv6 addresses, and nothing else.
fn port_chain(b: &mut Builder, pb: &PortBinding) {
    let chain = pb.chain();
    b.chain(BRIDGE, &chain, None);
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
            th_raw(64, 128),
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
            nd_message(),
            m(payload("ip6", "saddr"), Operator::NEQ, unspec()),
            m(ip6_len(), Operator::EQ, num(32)),
            m(th_raw(off, len), Operator::NEQ, num(v)),
            goto(Reason::Spoof),
        ]);
    }
    for r in rules {
        b.rule(BRIDGE, &chain, r);
    }
}

/// A neighbour solicitation or advertisement.
fn nd_message() -> Statement<'static> {
    m(
        payload("icmpv6", "type"),
        Operator::EQ,
        anon_set(&["nd-neighbor-solicit", "nd-neighbor-advert"]),
    )
}

fn ip6_len() -> Expression<'static> {
    payload("ip6", "length")
}

/// The unspecified address `::` (the source of duplicate address detection).
fn unspec() -> Expression<'static> {
    s("::")
}
