//! The values the renderer takes and gives: the tenant network and the resolved L2 match mode
//! going in, the drop reasons that name its chains, and the rendered [`Ruleset`] coming out.
//!
//! Types only; building rules is the job of the other files of this module.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use nftables::schema::NfListObject;

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
