//! The `bridge` table's `forward` chain: frames forwarded between two ports of the tenant
//! bridge are tenant ↔ tenant and dropped, with or without br_netfilter, recognised by bridge
//! name or by tenant addresses ([`L2Match`]).
//!
//! Which port may claim which address is port binding's business, not this file's.

use ipnet::IpNet;
use nftables::expr::MetaKey;
use nftables::stmt::Operator;
use nftables::types::{NfFamily, NfHook};

use super::builder::Builder;
use super::expr::{goto, m, meta, payload, prefix, s};
use super::model::{L2Match, Network, Reason};
use crate::config::Policy;

const BRIDGE: NfFamily = NfFamily::Bridge;

/// The `forward` base chain and its `drop_tenant` chain.
pub(super) fn render(b: &mut Builder, p: &Policy, net: &Network, l2: L2Match) {
    b.chain(
        BRIDGE,
        "forward",
        Some((NfHook::Forward, -200 + p.priority)),
    );
    match l2 {
        L2Match::Meta => b.rule(
            BRIDGE,
            "forward",
            vec![
                m(
                    meta(MetaKey::Ibridgename),
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
                    BRIDGE,
                    "forward",
                    vec![
                        m(payload(proto, field), Operator::EQ, sub4.clone()),
                        goto(Reason::Tenant),
                    ],
                );
            }
            if let Some((subnet6, _)) = net.subnet6.zip(net.gateway6) {
                for field in ["saddr", "daddr"] {
                    b.rule(
                        BRIDGE,
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
    b.drop_chain(BRIDGE, Reason::Tenant, p);
}
