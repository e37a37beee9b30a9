//! Address vocabulary of the policy: prefixes, allowlist entries (`address[/len][:port]`), the
//! built-in deny lists and the aggregation that turns overlapping prefixes into the disjoint
//! intervals an nftables interval set requires. The `[netfilter]` config parses with it; the
//! renderer and dns' rebind guard read its lists.
//!
//! Pure functions only; nothing here knows about nft or the kernel.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// One allowlist entry: a destination prefix and, optionally, one port (TCP and UDP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllowEntry {
    pub net: IpNet,
    pub port: Option<u16>,
}

/// "10.0.0.0/8", "fd00::/8" or a bare address (a /32 or /128); host bits must be zero.
pub fn parse_prefix(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    let net = if s.contains('/') {
        s.parse::<IpNet>()
            .map_err(|_| format!("{s:?} is not an address or prefix"))?
    } else {
        let ip: IpAddr = s
            .parse()
            .map_err(|_| format!("{s:?} is not an address or prefix"))?;
        IpNet::from(ip)
    };
    if net.trunc() != net {
        return Err(format!(
            "{s:?} has host bits set (did you mean {}?)",
            net.trunc()
        ));
    }
    Ok(net)
}

/// Parses `address[/len][:port]`; IPv6 needs brackets when a port is given:
/// "10.0.0.5", "10.0.0.0/24:443", "fd00::1", "fd00::/64", "[fd00::1]:443", "[fd00::/64]:53".
pub fn parse_allow_entry(s: &str) -> Result<AllowEntry, String> {
    let t = s.trim();
    let bad = || format!("{s:?} is not address[/len][:port] (IPv6 with a port needs brackets)");
    let (addr_part, port_part) = if let Some(rest) = t.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or_else(bad)?;
        match after {
            "" => (inside, None),
            _ => (inside, Some(after.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else if t.matches(':').count() == 1 {
        // Exactly one colon: IPv4 with a port (IPv6 has at least two).
        let (a, p) = t.split_once(':').ok_or_else(bad)?;
        (a, Some(p))
    } else {
        (t, None)
    };
    let net = parse_prefix(addr_part).map_err(|e| format!("{s:?}: {e}"))?;
    if matches!((&net, t.starts_with('[')), (IpNet::V4(_), true)) {
        return Err(bad());
    }
    let port = match port_part {
        None => None,
        Some(p) => {
            let port: u16 = p
                .parse()
                .map_err(|_| format!("{s:?}: port {p:?} is not a number 1-65535"))?;
            if port == 0 {
                return Err(format!("{s:?}: port 0 is not a destination"));
            }
            Some(port)
        }
    };
    Ok(AllowEntry { net, port })
}

const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), len)
}

/// IPv4 destinations no tenant may reach (RFC 6890 "not globally reachable" and friends).
pub const DENY4: &[Ipv4Net] = &[
    v4(0, 0, 0, 0, 8),       // "this network"
    v4(10, 0, 0, 0, 8),      // RFC 1918
    v4(100, 64, 0, 0, 10),   // shared address space (CGNAT)
    v4(127, 0, 0, 0, 8),     // loopback
    v4(169, 254, 0, 0, 16),  // link-local, cloud metadata (169.254.169.254)
    v4(172, 16, 0, 0, 12),   // RFC 1918
    v4(192, 0, 0, 0, 24),    // IETF protocol assignments
    v4(192, 0, 2, 0, 24),    // TEST-NET-1
    v4(192, 88, 99, 0, 24),  // 6to4 relay anycast (deprecated)
    v4(192, 168, 0, 0, 16),  // RFC 1918
    v4(198, 18, 0, 0, 15),   // benchmarking
    v4(198, 51, 100, 0, 24), // TEST-NET-2
    v4(203, 0, 113, 0, 24),  // TEST-NET-3
    v4(224, 0, 0, 0, 4),     // multicast
    v4(240, 0, 0, 0, 4),     // reserved + limited broadcast
];

const fn v6(segs: [u16; 8], len: u8) -> Ipv6Net {
    Ipv6Net::new_assert(
        Ipv6Addr::new(
            segs[0], segs[1], segs[2], segs[3], segs[4], segs[5], segs[6], segs[7],
        ),
        len,
    )
}

/// IPv6 destinations no tenant may reach. NAT64 (64:ff9b::/96) stays open for public IPv4, but
/// every IPv4 deny prefix is also denied in its NAT64-embedded form (see [`deny6`]).
pub const DENY6: &[Ipv6Net] = &[
    v6([0, 0, 0, 0, 0, 0, 0, 0], 96),         // ::, ::1, IPv4-compatible
    v6([0, 0, 0, 0, 0, 0xffff, 0, 0], 96),    // IPv4-mapped
    v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48), // local-use NAT64
    v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64),     // discard-only
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23),    // IETF protocol assignments (Teredo, ORCHID…)
    v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), // documentation
    v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16),    // 6to4 (embeds any IPv4, private included)
    v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20),    // documentation (RFC 9637)
    v6([0x5f00, 0, 0, 0, 0, 0, 0, 0], 16),    // SRv6 SIDs
    v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),     // unique local (ULA)
    v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),    // link-local
    v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10),    // site-local (deprecated)
    v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8),     // multicast
];

/// The NAT64 well-known prefix form of an IPv4 prefix (64:ff9b::a.b.c.d/(96+len)).
pub fn nat64(net: Ipv4Net) -> Ipv6Net {
    let o = net.network().octets();
    let addr = Ipv6Addr::new(
        0x64,
        0xff9b,
        0,
        0,
        0,
        0,
        u16::from_be_bytes([o[0], o[1]]),
        u16::from_be_bytes([o[2], o[3]]),
    );
    // 96 + at most 32 is at most 128: always a valid IPv6 prefix length.
    Ipv6Net::new(addr, 96 + net.prefix_len()).unwrap_or_else(|_| Ipv6Net::from(addr))
}

/// The effective IPv4 deny list: built-ins plus extras, aggregated (disjoint, sorted).
pub fn deny4(extra: &[IpNet]) -> Vec<Ipv4Net> {
    let mut all: Vec<Ipv4Net> = DENY4.to_vec();
    all.extend(extra.iter().filter_map(|n| match n {
        IpNet::V4(n) => Some(*n),
        IpNet::V6(_) => None,
    }));
    Ipv4Net::aggregate(&all)
}

/// The effective IPv6 deny list: built-ins, extras, and the NAT64 form of every IPv4 deny.
pub fn deny6(extra: &[IpNet]) -> Vec<Ipv6Net> {
    let mut all: Vec<Ipv6Net> = DENY6.to_vec();
    all.extend(extra.iter().filter_map(|n| match n {
        IpNet::V6(n) => Some(*n),
        IpNet::V4(_) => None,
    }));
    all.extend(deny4(extra).into_iter().map(nat64));
    Ipv6Net::aggregate(&all)
}

/// Allowlist split the way the sets want it: address-only entries, and per port the prefixes
/// (aggregated per port so no two interval elements overlap). Sorted for stable output.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AllowSets {
    pub any4: Vec<Ipv4Net>,
    pub any6: Vec<Ipv6Net>,
    pub port4: Vec<(Ipv4Net, u16)>,
    pub port6: Vec<(Ipv6Net, u16)>,
}

pub fn allow_sets(entries: &[AllowEntry]) -> AllowSets {
    let mut any4 = Vec::new();
    let mut any6 = Vec::new();
    let mut by_port4: BTreeMap<u16, Vec<Ipv4Net>> = BTreeMap::new();
    let mut by_port6: BTreeMap<u16, Vec<Ipv6Net>> = BTreeMap::new();
    for e in entries {
        match (e.net, e.port) {
            (IpNet::V4(n), None) => any4.push(n),
            (IpNet::V6(n), None) => any6.push(n),
            (IpNet::V4(n), Some(p)) => by_port4.entry(p).or_default().push(n),
            (IpNet::V6(n), Some(p)) => by_port6.entry(p).or_default().push(n),
        }
    }
    let mut port4: Vec<(Ipv4Net, u16)> = by_port4
        .into_iter()
        .flat_map(|(p, nets)| Ipv4Net::aggregate(&nets).into_iter().map(move |n| (n, p)))
        .collect();
    let mut port6: Vec<(Ipv6Net, u16)> = by_port6
        .into_iter()
        .flat_map(|(p, nets)| Ipv6Net::aggregate(&nets).into_iter().map(move |n| (n, p)))
        .collect();
    port4.sort();
    port6.sort();
    AllowSets {
        any4: Ipv4Net::aggregate(&any4),
        any6: Ipv6Net::aggregate(&any6),
        port4,
        port6,
    }
}

/// True when `ip` falls in any of `nets` (used by tests and `explain`-style checks).
pub fn covered(nets: &[IpNet], ip: IpAddr) -> bool {
    nets.iter().any(|n| n.contains(&ip))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn ok(s: &str) -> AllowEntry {
        parse_allow_entry(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn allow_entries_parse() {
        let cases: &[(&str, &str, Option<u16>)] = &[
            ("10.0.0.5", "10.0.0.5/32", None),
            ("10.0.0.5:5000", "10.0.0.5/32", Some(5000)),
            ("10.0.0.0/24", "10.0.0.0/24", None),
            ("10.0.0.0/24:443", "10.0.0.0/24", Some(443)),
            ("fd00::1", "fd00::1/128", None),
            ("fd00::/64", "fd00::/64", None),
            ("[fd00::1]", "fd00::1/128", None),
            ("[fd00::1]:443", "fd00::1/128", Some(443)),
            ("[fd00::/64]:53", "fd00::/64", Some(53)),
            (" 192.168.1.1:22 ", "192.168.1.1/32", Some(22)),
        ];
        for (s, net, port) in cases {
            let e = ok(s);
            assert_eq!(e.net.to_string(), *net, "{s}");
            assert_eq!(e.port, *port, "{s}");
        }
    }

    #[test]
    fn allow_entries_reject() {
        for s in [
            "",
            "x",
            "10.0.0.5:",
            "10.0.0.5:0",
            "10.0.0.5:65536",
            "10.0.0.5:http",
            "10.0.0.1/24",
            "[10.0.0.1]:80",
            "[fd00::1]443",
            "[fd00::1",
            "fd00::1:443x",
            "10.0.0.0/33",
        ] {
            assert!(parse_allow_entry(s).is_err(), "{s:?} should be rejected");
        }
    }

    #[test]
    fn deny_lists_cover_the_brief() {
        let d4: Vec<IpNet> = deny4(&[]).into_iter().map(IpNet::V4).collect();
        for ip in [
            "0.1.2.3",
            "10.1.2.3",
            "100.64.0.1",
            "127.0.0.1",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "172.19.2.5",
            "192.0.0.8",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
        ] {
            assert!(covered(&d4, ip.parse().unwrap()), "{ip} must be denied");
        }
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "11.0.0.44",
            "172.32.0.1",
            "100.128.0.1",
            "192.169.0.1",
        ] {
            assert!(
                !covered(&d4, ip.parse().unwrap()),
                "{ip} must stay reachable"
            );
        }
        let d6: Vec<IpNet> = deny6(&[]).into_iter().map(IpNet::V6).collect();
        for ip in [
            "::",
            "::1",
            "::ffff:10.0.0.1",
            "::ffff:8.8.8.8",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "2002:a00::1",
            "64:ff9b::a00:1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::7f00:1",
        ] {
            assert!(covered(&d6, ip.parse().unwrap()), "{ip} must be denied");
        }
        for ip in [
            "2606:4700::1111",
            "2a00:1450::1",
            "64:ff9b::808:808",
            "2a10:ffff::44",
        ] {
            assert!(
                !covered(&d6, ip.parse().unwrap()),
                "{ip} must stay reachable"
            );
        }
    }

    #[test]
    fn extras_are_added_and_aggregated() {
        let extra = vec![
            "11.0.0.0/8".parse().unwrap(),
            "10.1.0.0/16".parse().unwrap(),
            "2a10::/16".parse().unwrap(),
        ];
        let d4 = deny4(&extra);
        assert!(d4.contains(&"10.0.0.0/7".parse().unwrap()), "{d4:?}");
        assert!(!d4.contains(&"10.1.0.0/16".parse().unwrap()));
        let d6 = deny6(&extra);
        assert!(d6.contains(&"2a10::/16".parse().unwrap()));
        assert!(
            d6.contains(&"64:ff9b::a00:0/103".parse().unwrap()),
            "{d6:?}"
        );
    }

    #[test]
    fn aggregated_lists_are_disjoint() {
        fn disjoint<T: Copy + Into<IpNet>>(v: &[T]) {
            for (i, a) in v.iter().enumerate() {
                for b in &v[i + 1..] {
                    let (a, b): (IpNet, IpNet) = ((*a).into(), (*b).into());
                    assert!(!a.contains(&b) && !b.contains(&a), "{a} overlaps {b}");
                }
            }
        }
        disjoint(&deny4(&[]));
        disjoint(&deny6(&[]));
    }

    #[test]
    fn allow_sets_group_by_port() {
        let entries: Vec<AllowEntry> = [
            "10.0.0.0/8:443",
            "10.1.0.0/16:443",
            "10.1.0.0/16:80",
            "192.168.0.1",
            "192.168.0.0/24",
            "[fd00::1]:53",
        ]
        .iter()
        .map(|s| ok(s))
        .collect();
        let s = allow_sets(&entries);
        assert_eq!(s.any4, vec!["192.168.0.0/24".parse::<Ipv4Net>().unwrap()]);
        assert_eq!(
            s.port4,
            vec![
                ("10.0.0.0/8".parse().unwrap(), 443),
                ("10.1.0.0/16".parse().unwrap(), 80)
            ]
        );
        assert_eq!(s.port6, vec![("fd00::1/128".parse().unwrap(), 53)]);
        assert!(s.any6.is_empty());
    }

    proptest::proptest! {
        #[test]
        fn v4_with_port_roundtrips(a: std::net::Ipv4Addr, port in 1u16..) {
            let e = parse_allow_entry(&format!("{a}:{port}")).unwrap();
            proptest::prop_assert_eq!(e.net, IpNet::from(IpAddr::V4(a)));
            proptest::prop_assert_eq!(e.port, Some(port));
        }

        #[test]
        fn v6_with_port_roundtrips(a: std::net::Ipv6Addr, port in 1u16..) {
            let e = parse_allow_entry(&format!("[{a}]:{port}")).unwrap();
            proptest::prop_assert_eq!(e.net, IpNet::from(IpAddr::V6(a)));
            proptest::prop_assert_eq!(e.port, Some(port));
            let bare = parse_allow_entry(&a.to_string()).unwrap();
            proptest::prop_assert_eq!(bare.port, None);
        }

        #[test]
        fn arbitrary_input_never_panics(s in "\\PC{0,40}") {
            let _ = parse_allow_entry(&s);
            let _ = parse_prefix(&s);
        }

        #[test]
        fn deny_lists_with_extras_stay_disjoint(extra in proptest::collection::vec((0u32.., 8u8..=32), 0..50)) {
            let extra: Vec<IpNet> = extra
                .into_iter()
                .map(|(a, l)| IpNet::V4(Ipv4Net::new(Ipv4Addr::from(a), l).unwrap().trunc()))
                .collect();
            let d = deny4(&extra);
            for (i, a) in d.iter().enumerate() {
                for b in &d[i + 1..] {
                    proptest::prop_assert!(!a.contains(b) && !b.contains(a), "{} overlaps {}", a, b);
                }
            }
            for e in &extra {
                proptest::prop_assert!(covered(&d.iter().map(|n| IpNet::V4(*n)).collect::<Vec<_>>(), e.addr()));
            }
        }
    }

    #[test]
    fn nat64_embeds() {
        assert_eq!(nat64(v4(10, 0, 0, 0, 8)).to_string(), "64:ff9b::a00:0/104");
        assert_eq!(
            nat64(v4(169, 254, 169, 254, 32)).to_string(),
            "64:ff9b::a9fe:a9fe/128"
        );
    }
}
