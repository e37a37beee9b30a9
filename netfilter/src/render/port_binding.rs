//! The bridge-port binding part of the bridge table (layout in the module docs of
//! [`crate::bindings`]). Its shape does not depend on the number of ports: every per-port fact
//! is an element of a named set keyed by the port's interface name, so the rule count is fixed
//! and a port coming or going is a handful of element adds and deletes.
//!
//! - `ports`, a base chain at bridge `prerouting` (every frame entering the bridge from a port,
//!   whether it is then forwarded or delivered to the host): a frame from a port in
//!   `bound_ports` goes to `port_bound`, one from a port in `unbound_ports` (tenant-bridge ports
//!   the kernel lists without a binding) to `drop_unbound`; anything else from the tenant bridge
//!   goes to `drop_unbound` too (with bridge meta support: every such frame; without it the
//!   bridge of a port is unknown here, so only frames claiming a tenant-subnet address).
//! - `port_common`: what no tenant port may send whatever its binding — non-IP/ARP ethertypes
//!   (VLAN tags included), non-Ethernet/IPv4 ARP, router advertisements and redirects, ND
//!   messages with more than one option or an option other than the one link-layer address
//!   option, and anything but DAD/MLD from the unspecified address.
//! - `port_bound`: `port_common`, then lookups of `iifname . <field>` in the per-port sets —
//!   `port_mac` (Ethernet source and ARP sender MAC), `port_arp4` (ARP sender IP: own IPv4 or
//!   0.0.0.0), `port_ip4` (IPv4 source), `port_ip6` (IPv6 source: own IPv6, the link-local its
//!   MAC implies, `::`); a miss is `drop_spoof`.
//! - ND messages then go to one of [`ND_SHARDS`] chains `nd_<k>` by the port's membership of
//!   `nd_ports_<k>`: the NA target and the link-layer option are raw transport-header bits,
//!   which nft (up to 1.0.6 at least) cannot declare as the key of a named set in its JSON
//!   input, so these two facts live in anonymous sets inside the rules of the port's shard
//!   chain. A port coming or going rewrites its shard's chain only (about 1/16 of the ports);
//!   a port in no shard has its ND messages dropped.
//! - Without bridge meta, `forward` also drops frames forwarded in from any tenant-bridge port
//!   the map knows (`tenant_ports`): forwarding is port to port on one bridge.
//!
//! The `inet` table and the rest of the bridge `forward` chain are rendered elsewhere; this
//! file only adds what exists when a port map is given.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use nftables::expr::{Expression, MetaKey, NamedExpression, SetItem};
use nftables::schema::{SetType, SetTypeValue};
use nftables::stmt::{Operator, Statement};
use nftables::types::{NfFamily, NfHook};

use super::builder::Builder;
use super::expr::{anon_set, goto, jump, m, meta, num, payload, prefix, s, th_raw};
use super::model::{L2Match, Network, Reason};
use crate::bindings::PortBinding;
use crate::config::Policy;

const BRIDGE: NfFamily = NfFamily::Bridge;

/// How many `nd_<k>` chains the ports' ND facts are spread over (by a hash of the port name).
pub(super) const ND_SHARDS: usize = 16;

/// Named sets whose elements are the port map (every other object of the bridge table is the
/// same whatever the map holds, except the rules of the `nd_<k>` chains).
pub(super) const BOUND: &str = "bound_ports";
pub(super) const UNBOUND: &str = "unbound_ports";
pub(super) const TENANT_PORTS: &str = "tenant_ports";
const MAC: &str = "port_mac";
const ARP4: &str = "port_arp4";
const IP4: &str = "port_ip4";
const IP6: &str = "port_ip6";

/// The sets that hold port facts, in render order (without the per-shard ones).
pub(super) const PORT_SETS: [&str; 7] = [BOUND, UNBOUND, TENANT_PORTS, MAC, ARP4, IP4, IP6];

pub(super) fn nd_chain(shard: usize) -> String {
    format!("nd_{shard}")
}

pub(super) fn nd_set(shard: usize) -> String {
    format!("nd_ports_{shard}")
}

/// The shard of a port: FNV-1a of its name, so it never changes between runs or versions.
pub(super) fn shard_of(port: &str) -> usize {
    let mut h: u32 = 0x811c_9dc5;
    for b in port.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h as usize) % ND_SHARDS
}

/// The port binding sets, chains and rules, and their drop chains (`drop_spoof`,
/// `drop_unbound`). `unbound` are tenant-bridge ports known to have no binding: they are sent
/// to `drop_unbound` by name.
pub(super) fn render(
    b: &mut Builder,
    p: &Policy,
    net: &Network,
    l2: L2Match,
    ports: &[PortBinding],
    unbound: &[String],
) {
    let mut ports: Vec<&PortBinding> = ports.iter().collect();
    ports.sort_by(|a, b| a.port.cmp(&b.port));
    let unbound: Vec<String> = {
        let mut u: Vec<String> = unbound
            .iter()
            .filter(|u| crate::bindings::valid_ifname(u) && !ports.iter().any(|pb| pb.port == **u))
            .cloned()
            .collect();
        u.sort();
        u.dedup();
        u
    };
    sets(b, l2, &ports, &unbound);
    b.chain(
        BRIDGE,
        "ports",
        Some((NfHook::Prerouting, -200 + p.priority)),
    );
    b.chain(BRIDGE, "port_common", None);
    b.chain(BRIDGE, "port_bound", None);
    for k in 0..ND_SHARDS {
        b.chain(BRIDGE, &nd_chain(k), None);
    }
    if l2 == L2Match::Addresses {
        b.rule(
            BRIDGE,
            "forward",
            vec![
                m(
                    meta(MetaKey::Iifname),
                    Operator::EQ,
                    s(format!("@{TENANT_PORTS}")),
                ),
                goto(Reason::Tenant),
            ],
        );
    }
    dispatch(b, net, l2);
    port_common(b);
    port_bound(b);
    for k in 0..ND_SHARDS {
        let shard: Vec<&PortBinding> = ports
            .iter()
            .copied()
            .filter(|pb| shard_of(&pb.port) == k)
            .collect();
        nd_shard(b, k, &shard);
    }
    b.drop_chain(BRIDGE, Reason::Spoof, p);
    b.drop_chain(BRIDGE, Reason::Unbound, p);
}

/// `iifname . value` as a set element.
fn concat(port: &str, v: Expression<'static>) -> Expression<'static> {
    Expression::Named(NamedExpression::Concat(vec![s(port.to_string()), v]))
}

/// The addresses a port may use as IPv6 source or NA target: its own, and the link-local its
/// MAC implies.
fn own6(pb: &PortBinding) -> Vec<Ipv6Addr> {
    let mut v = pb.ipv6.clone();
    v.push(pb.mac.link_local());
    v.sort();
    v.dedup();
    v
}

fn sets(b: &mut Builder, l2: L2Match, ports: &[&PortBinding], unbound: &[String]) {
    let ifname = || SetTypeValue::Single(SetType::Ifname);
    let pair = |t: SetType| SetTypeValue::Concatenated(vec![SetType::Ifname, t].into());
    let names = |v: &mut dyn Iterator<Item = &str>| v.map(s).collect::<Vec<_>>();
    b.bridge_set(
        BOUND,
        ifname(),
        names(&mut ports.iter().map(|pb| pb.port.as_str())),
    );
    b.bridge_set(
        UNBOUND,
        ifname(),
        names(&mut unbound.iter().map(|u| u.as_str())),
    );
    if l2 == L2Match::Addresses {
        let mut all: Vec<&str> = ports
            .iter()
            .map(|pb| pb.port.as_str())
            .chain(unbound.iter().map(|u| u.as_str()))
            .collect();
        all.sort();
        b.bridge_set(TENANT_PORTS, ifname(), names(&mut all.into_iter()));
    }
    b.bridge_set(
        MAC,
        pair(SetType::EtherAddr),
        ports
            .iter()
            .map(|pb| concat(&pb.port, s(pb.mac.to_string())))
            .collect(),
    );
    let mut arp4 = Vec::new();
    let mut ip4 = Vec::new();
    let mut ip6 = Vec::new();
    for pb in ports {
        let mut v4: Vec<Ipv4Addr> = pb.ipv4.clone();
        v4.sort();
        v4.dedup();
        // ARP probes (RFC 5227) claim nothing.
        arp4.push(concat(&pb.port, s(Ipv4Addr::UNSPECIFIED.to_string())));
        for a in v4 {
            arp4.push(concat(&pb.port, s(a.to_string())));
            ip4.push(concat(&pb.port, s(a.to_string())));
        }
        // Duplicate address detection comes from `::`.
        ip6.push(concat(&pb.port, s(Ipv6Addr::UNSPECIFIED.to_string())));
        for a in own6(pb) {
            ip6.push(concat(&pb.port, s(a.to_string())));
        }
    }
    b.bridge_set(ARP4, pair(SetType::Ipv4Addr), arp4);
    b.bridge_set(IP4, pair(SetType::Ipv4Addr), ip4);
    b.bridge_set(IP6, pair(SetType::Ipv6Addr), ip6);
    for k in 0..ND_SHARDS {
        b.bridge_set(
            &nd_set(k),
            ifname(),
            names(
                &mut ports
                    .iter()
                    .filter(|pb| shard_of(&pb.port) == k)
                    .map(|pb| pb.port.as_str()),
            ),
        );
    }
}

/// `ports`: bound ports to `port_bound`, known-unbound ones to `drop_unbound`, and then
/// whatever else comes from the tenant bridge (or claims a tenant address) to `drop_unbound`.
fn dispatch(b: &mut Builder, net: &Network, l2: L2Match) {
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
    b.rule(
        BRIDGE,
        "ports",
        vec![
            m(meta(MetaKey::Iifname), Operator::EQ, s(format!("@{BOUND}"))),
            Statement::Goto(nftables::stmt::JumpTarget {
                target: "port_bound".into(),
            }),
        ],
    );
    b.rule(
        BRIDGE,
        "ports",
        vec![
            m(
                meta(MetaKey::Iifname),
                Operator::EQ,
                s(format!("@{UNBOUND}")),
            ),
            goto(Reason::Unbound),
        ],
    );
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

/// `iifname . <what>`, the key every per-port lookup uses.
fn by_port(what: Expression<'static>) -> Expression<'static> {
    Expression::Named(NamedExpression::Concat(vec![meta(MetaKey::Iifname), what]))
}

/// `port_bound`: the port's own MAC, IPv4 and IPv6 addresses and nothing else; ND messages
/// on to the port's shard.
fn port_bound(b: &mut Builder) {
    let pb = "port_bound";
    b.rule(BRIDGE, pb, vec![jump("port_common")]);
    for (proto, field, set) in [
        ("ether", "saddr", MAC),
        ("arp", "saddr ether", MAC),
        ("arp", "saddr ip", ARP4),
        ("ip", "saddr", IP4),
        ("ip6", "saddr", IP6),
    ] {
        b.rule(
            BRIDGE,
            pb,
            vec![
                m(
                    by_port(payload(proto, field)),
                    Operator::NEQ,
                    s(format!("@{set}")),
                ),
                goto(Reason::Spoof),
            ],
        );
    }
    for k in 0..ND_SHARDS {
        b.rule(
            BRIDGE,
            pb,
            vec![
                nd_message(),
                m(
                    meta(MetaKey::Iifname),
                    Operator::EQ,
                    s(format!("@{}", nd_set(k))),
                ),
                Statement::Goto(nftables::stmt::JumpTarget {
                    target: nd_chain(k).into(),
                }),
            ],
        );
    }
    // A bound port in no shard (never rendered so): its ND is not checked, so it is dropped.
    b.rule(BRIDGE, pb, vec![nd_message(), goto(Reason::Spoof)]);
}

/// `nd_<k>`: for the ports of shard `k`, the NA target is one of the port's own IPv6
/// addresses and the ND link-layer option carries the port's own MAC. No rules when the shard
/// has no port (nothing reaches the chain then).
fn nd_shard(b: &mut Builder, k: usize, ports: &[&PortBinding]) {
    if ports.is_empty() {
        return;
    }
    let chain = nd_chain(k);
    let set = |elems: Vec<Expression<'static>>| {
        Expression::Named(NamedExpression::Set(
            elems.into_iter().map(SetItem::Element).collect(),
        ))
    };
    let targets = ports
        .iter()
        .flat_map(|pb| {
            own6(pb)
                .into_iter()
                .map(|a| concat(&pb.port, s(format!("{:#x}", u128::from(a)))))
        })
        .collect();
    b.rule(
        BRIDGE,
        &chain,
        vec![
            m(
                payload("icmpv6", "type"),
                Operator::EQ,
                s("nd-neighbor-advert"),
            ),
            m(by_port(th_raw(64, 128)), Operator::NEQ, set(targets)),
            goto(Reason::Spoof),
        ],
    );
    // The link-layer option's address (48 bits, compared as 16 + 32 so both fit the numbers
    // nft lists back); each port has one MAC, so the two halves pair up per port.
    for (off, len) in [(208u32, 16u32), (224, 32)] {
        let elems = ports
            .iter()
            .map(|pb| {
                let mb = pb.mac.0;
                let v = if len == 16 {
                    u32::from(u16::from_be_bytes([mb[0], mb[1]]))
                } else {
                    u32::from_be_bytes([mb[2], mb[3], mb[4], mb[5]])
                };
                concat(&pb.port, num(v))
            })
            .collect();
        b.rule(
            BRIDGE,
            &chain,
            vec![
                nd_message(),
                m(payload("ip6", "saddr"), Operator::NEQ, unspec()),
                m(ip6_len(), Operator::EQ, num(32)),
                m(by_port(th_raw(off, len)), Operator::NEQ, set(elems)),
                goto(Reason::Spoof),
            ],
        );
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
