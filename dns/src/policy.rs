//! The pure decision: query + state → refuse / answer locally / block / NXDOMAIN / forward.
//!
//! No sockets, no clocks, no locks: the handler gathers the facts and a snapshot of the state,
//! calls [`decide`], and acts on the [`Decision`]. Rate limiting is decided elsewhere
//! (`ratelimit`), the cache only ever sees queries this function chose to forward, and the
//! rebind filter for upstream answers ([`strip_rebind`]) lives here too because it is policy.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::op::OpCode;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use ipnet::IpNet;

use crate::config::BlocklistMode;
use crate::zone::ZoneData;

/// Why a name got NXDOMAIN without being forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NxReason {
    /// `domain-needed`: a single-label name.
    DomainNeeded,
    /// `bogus-priv`: reverse lookup of a private range.
    BogusPriv,
}

/// A locally answered query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalAnswer {
    /// Addresses of the requested family (never empty).
    Addrs(Vec<IpAddr>),
    /// PTR target.
    Ptr(Name),
    /// The zone's SOA (query for the apex SOA).
    Soa,
    /// The name exists but has no record of this type.
    NoData,
    /// No such name in the local zone.
    NxDomain,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Client outside the allowed networks, zone transfer, or non-IN class.
    Refuse,
    /// Opcode other than QUERY.
    NotImp,
    Local(LocalAnswer),
    Blocked(BlocklistMode),
    NxDomain(NxReason),
    Forward,
}

/// The question, as the handler saw it. `name` is lower-case.
#[derive(Debug, Clone)]
pub struct Query<'a> {
    pub src: IpAddr,
    pub op_code: OpCode,
    pub name: &'a Name,
    pub qtype: RecordType,
    pub qclass: DNSClass,
}

/// Everything [`decide`] reads besides the query.
#[derive(Debug)]
pub struct State<'a> {
    pub allowed: &'a [IpNet],
    /// Lower-case local domain.
    pub domain: &'a Name,
    pub zone: &'a ZoneData,
    pub blocklist: &'a Blocklist,
    pub blocklist_mode: BlocklistMode,
    pub domain_needed: bool,
    pub bogus_priv: bool,
}

/// The decision for one query.
pub fn decide(q: &Query<'_>, st: &State<'_>) -> Decision {
    let src = q.src.to_canonical();
    if !st.allowed.iter().any(|n| n.contains(&src)) {
        return Decision::Refuse;
    }
    if q.op_code != OpCode::Query {
        return Decision::NotImp;
    }
    if q.qclass != DNSClass::IN || matches!(q.qtype, RecordType::AXFR | RecordType::IXFR) {
        return Decision::Refuse;
    }
    if st.domain.zone_of(q.name) {
        return Decision::Local(local_answer(q, st));
    }
    if q.qtype == RecordType::PTR
        && let Some(ip) = arpa_host(q.name)
        && let Some(id) = st.zone.server_of(ip)
    {
        return match server_name(id, st.domain) {
            Some(n) => Decision::Local(LocalAnswer::Ptr(n)),
            None => Decision::Local(LocalAnswer::NxDomain),
        };
    }
    if st.blocklist.matches(q.name) {
        return Decision::Blocked(st.blocklist_mode);
    }
    if st.domain_needed && q.name.num_labels() == 1 {
        return Decision::NxDomain(NxReason::DomainNeeded);
    }
    if st.bogus_priv && is_private_reverse(q.name) {
        return Decision::NxDomain(NxReason::BogusPriv);
    }
    Decision::Forward
}

fn local_answer(q: &Query<'_>, st: &State<'_>) -> LocalAnswer {
    let labels = q.name.num_labels();
    let apex = st.domain.num_labels();
    if labels == apex {
        return if q.qtype == RecordType::SOA {
            LocalAnswer::Soa
        } else {
            LocalAnswer::NoData
        };
    }
    if labels != apex + 1 {
        return LocalAnswer::NxDomain;
    }
    let Some(first) = q.name.iter().next() else {
        return LocalAnswer::NxDomain;
    };
    let Some(id) = std::str::from_utf8(first).ok().and_then(names::parse_login) else {
        return LocalAnswer::NxDomain;
    };
    let Some(addrs) = st.zone.addrs(id) else {
        return LocalAnswer::NxDomain;
    };
    let want: Vec<IpAddr> = addrs
        .iter()
        .copied()
        .filter(|a| match q.qtype {
            RecordType::A => a.is_ipv4(),
            RecordType::AAAA => a.is_ipv6(),
            RecordType::ANY => true,
            _ => false,
        })
        .collect();
    if want.is_empty() {
        LocalAnswer::NoData
    } else {
        LocalAnswer::Addrs(want)
    }
}

/// `server<N>.<domain>.`
pub fn server_name(id: names::ServerId, domain: &Name) -> Option<Name> {
    Name::from_ascii(id.login_name())
        .ok()?
        .append_domain(domain)
        .ok()
}

/// The host address a full reverse name points at (`4.3.2.1.in-addr.arpa.` → 1.2.3.4).
pub fn arpa_host(name: &Name) -> Option<IpAddr> {
    let net = name.parse_arpa_name().ok()?;
    (net.prefix_len() == net.max_prefix_len()).then(|| net.addr())
}

/// True when the reverse name lies wholly inside a private range.
pub fn is_private_reverse(name: &Name) -> bool {
    let Ok(net) = name.parse_arpa_name() else {
        return false;
    };
    private_nets().iter().any(|p| p.contains(&net))
}

/// The ranges rebind protection and bogus-priv treat as private: netfilter's built-in deny
/// lists (`netfilter::addr`), the one list both share — RFC 1918 and other special-purpose
/// IPv4 (198.18.0.0/15, multicast 224.0.0.0/4 and 240/4 included), ULA, link-local, multicast
/// ff00::/8, IPv4-mapped, 6to4 (2002::/16, which embeds any IPv4), local-use NAT64
/// (64:ff9b:1::/48) and the well-known NAT64 form (64:ff9b::/96) of every denied IPv4 range.
/// A name that resolves into any of them would let a tenant's browser or client reach what
/// the firewall forbids it to address directly.
pub fn private_nets() -> &'static [IpNet] {
    use std::sync::OnceLock;
    static NETS: OnceLock<Vec<IpNet>> = OnceLock::new();
    NETS.get_or_init(|| {
        netfilter::addr::deny4(&[])
            .into_iter()
            .map(IpNet::V4)
            .chain(netfilter::addr::deny6(&[]).into_iter().map(IpNet::V6))
            .collect()
    })
}

/// Private (rebind-relevant) address, IPv4-mapped IPv6 included.
pub fn is_private(ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    private_nets().iter().any(|n| n.contains(&ip))
}

/// Removes A/AAAA records with private addresses from an upstream answer unless `qname` is under
/// an allowlisted domain. Returns how many were removed.
pub fn strip_rebind(answers: &mut Vec<Record>, qname: &Name, allowlist: &[Name]) -> usize {
    if allowlist.iter().any(|d| d.zone_of(qname)) {
        return 0;
    }
    let before = answers.len();
    answers.retain(|r| match &r.data {
        RData::A(a) => !is_private(IpAddr::V4(a.0)),
        RData::AAAA(a) => !is_private(IpAddr::V6(a.0)),
        _ => true,
    });
    before - answers.len()
}

/// Sinkhole address for a blocked name.
pub fn sinkhole(qtype: RecordType) -> Option<IpAddr> {
    match qtype {
        RecordType::A => Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        RecordType::AAAA => Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        _ => None,
    }
}

/// Blocked domains; a name matches when it or any parent is listed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Blocklist {
    domains: HashSet<String>,
}

impl Blocklist {
    /// Parses the file format: one domain a line, `#` comments, blank lines ignored; a hosts-file
    /// line (`0.0.0.0 ads.example`) contributes its last field. Invalid names are skipped and
    /// counted.
    pub fn parse(text: &str) -> (Self, usize) {
        let mut domains = HashSet::new();
        let mut invalid = 0;
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            let Some(field) = line.split_whitespace().last() else {
                continue;
            };
            let d = field.trim_end_matches('.').to_ascii_lowercase();
            if d.is_empty() || Name::from_ascii(&d).is_err() {
                invalid += 1;
                continue;
            }
            domains.insert(d);
        }
        (Self { domains }, invalid)
    }

    pub fn len(&self) -> usize {
        self.domains.len()
    }

    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }

    /// True when `name` (lower-case) or one of its parents is listed.
    pub fn matches(&self, name: &Name) -> bool {
        if self.domains.is_empty() {
            return false;
        }
        let s = name.to_ascii().to_ascii_lowercase();
        let mut rest = s.trim_end_matches('.');
        loop {
            if self.domains.contains(rest) {
                return true;
            }
            match rest.split_once('.') {
                Some((_, tail)) => rest = tail,
                None => return false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use names::ServerId;
    use std::collections::BTreeMap;

    fn n(s: &str) -> Name {
        Name::from_ascii(s).unwrap().to_lowercase()
    }

    struct Fixture {
        allowed: Vec<IpNet>,
        domain: Name,
        zone: ZoneData,
        blocklist: Blocklist,
    }

    fn fixture() -> Fixture {
        let zone = ZoneData::from_addrs(BTreeMap::from([
            (
                ServerId::new(1).unwrap(),
                vec!["172.19.2.11".parse().unwrap()],
            ),
            (
                ServerId::new(2).unwrap(),
                vec!["172.19.2.12".parse().unwrap(), "fd19::12".parse().unwrap()],
            ),
        ]));
        Fixture {
            allowed: vec![
                "172.19.2.0/24".parse().unwrap(),
                "fd19::/64".parse().unwrap(),
            ],
            domain: n("berth.internal."),
            zone,
            blocklist: Blocklist::parse("ads.example\n0.0.0.0 track.example.org # hosts\n").0,
        }
    }

    fn check(src: &str, name: &str, qtype: RecordType, want: Decision) {
        let f = fixture();
        let st = State {
            allowed: &f.allowed,
            domain: &f.domain,
            zone: &f.zone,
            blocklist: &f.blocklist,
            blocklist_mode: BlocklistMode::Nxdomain,
            domain_needed: true,
            bogus_priv: true,
        };
        let name = n(name);
        let q = Query {
            src: src.parse().unwrap(),
            op_code: OpCode::Query,
            name: &name,
            qtype,
            qclass: DNSClass::IN,
        };
        assert_eq!(decide(&q, &st), want, "{src} {name} {qtype}");
    }

    #[test]
    fn decision_table() {
        use Decision::*;
        use LocalAnswer as L;
        use RecordType::*;
        let t = "172.19.2.50";
        check("10.0.0.1", "example.com.", A, Refuse);
        check("::ffff:172.19.2.50", "example.com.", A, Forward);
        check(t, "example.com.", A, Forward);
        check(t, "example.com.", AXFR, Refuse);
        check(
            t,
            "server1.berth.internal.",
            A,
            Local(L::Addrs(vec!["172.19.2.11".parse().unwrap()])),
        );
        check(
            t,
            "SERVER2.Berth.Internal.",
            AAAA,
            Local(L::Addrs(vec!["fd19::12".parse().unwrap()])),
        );
        check(t, "server1.berth.internal.", AAAA, Local(L::NoData));
        check(t, "server1.berth.internal.", MX, Local(L::NoData));
        check(t, "server3.berth.internal.", A, Local(L::NxDomain));
        check(t, "server01.berth.internal.", A, Local(L::NxDomain));
        check(t, "server0.berth.internal.", A, Local(L::NxDomain));
        check(t, "www.server1.berth.internal.", A, Local(L::NxDomain));
        check(t, "other.berth.internal.", A, Local(L::NxDomain));
        check(t, "berth.internal.", A, Local(L::NoData));
        check(t, "berth.internal.", SOA, Local(L::Soa));
        check(
            t,
            "11.2.19.172.in-addr.arpa.",
            PTR,
            Local(L::Ptr(n("server1.berth.internal."))),
        );
        check(
            t,
            "2.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.9.1.d.f.ip6.arpa.",
            PTR,
            Local(L::Ptr(n("server2.berth.internal."))),
        );
        check(
            t,
            "99.2.19.172.in-addr.arpa.",
            PTR,
            NxDomain(NxReason::BogusPriv),
        );
        check(
            t,
            "1.0.168.192.in-addr.arpa.",
            PTR,
            NxDomain(NxReason::BogusPriv),
        );
        check(t, "1.1.1.1.in-addr.arpa.", PTR, Forward);
        check(t, "ads.example.", A, Blocked(BlocklistMode::Nxdomain));
        check(
            t,
            "x.y.ads.example.",
            AAAA,
            Blocked(BlocklistMode::Nxdomain),
        );
        check(t, "track.example.org.", A, Blocked(BlocklistMode::Nxdomain));
        check(t, "notads.example.", A, Forward);
        check(t, "example.", A, NxDomain(NxReason::DomainNeeded));
        check(t, "printer.", A, NxDomain(NxReason::DomainNeeded));
        check(t, ".", NS, Forward);
    }

    #[test]
    fn rebind_strip() {
        use hickory_proto::rr::rdata::{A, AAAA, CNAME};
        let q = n("evil.example.");
        let rec = |d: RData| Record::from_rdata(q.clone(), 60, d);
        let mut answers = vec![
            rec(RData::CNAME(CNAME(n("x.example.")))),
            rec(RData::A(A("192.168.1.1".parse().unwrap()))),
            rec(RData::A(A("93.184.216.34".parse().unwrap()))),
            rec(RData::AAAA(AAAA("::ffff:10.0.0.1".parse().unwrap()))),
            rec(RData::AAAA(AAAA("fe80::1".parse().unwrap()))),
            rec(RData::A(A("127.0.0.1".parse().unwrap()))),
        ];
        let mut copy = answers.clone();
        assert_eq!(strip_rebind(&mut answers, &q, &[]), 4);
        // The shared deny list: benchmarking, multicast, NAT64 and 6to4 embeddings of private
        // ranges are stripped; public addresses and NAT64 of public ones are kept.
        for (ip, private) in [
            ("198.18.0.1", true),
            ("198.19.255.254", true),
            ("224.0.0.251", true),
            ("239.1.2.3", true),
            ("ff02::1", true),
            ("ff0e::1", true),
            ("64:ff9b::a00:1", true),
            ("64:ff9b::c0a8:101", true),
            ("64:ff9b::7f00:1", true),
            ("64:ff9b::a9fe:a9fe", true),
            ("64:ff9b:1::1", true),
            ("2002:a00:1::1", true),
            ("2002:c0a8:101::1", true),
            ("::ffff:192.168.1.1", true),
            ("100.64.0.1", true),
            ("93.184.216.34", false),
            ("1.1.1.1", false),
            ("64:ff9b::808:808", false),
            ("2606:4700::1111", false),
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(is_private(ip), private, "{ip}");
            let mut one = vec![match ip {
                IpAddr::V4(a) => rec(RData::A(A(a))),
                IpAddr::V6(a) => rec(RData::AAAA(AAAA(a))),
            }];
            assert_eq!(
                strip_rebind(&mut one, &q, &[]),
                usize::from(private),
                "{ip}"
            );
        }
        // …and the reverse zones of those ranges are never forwarded (bogus-priv).
        assert!(is_private_reverse(&n("1.0.18.198.in-addr.arpa.")));
        assert!(!is_private_reverse(&n("1.1.1.1.in-addr.arpa.")));
        assert_eq!(answers.len(), 2);
        assert_eq!(strip_rebind(&mut copy, &q, &[n("example.")]), 0);
    }

    #[test]
    fn blocklist_parse_counts_invalid() {
        let (b, bad) = Blocklist::parse("# c\n\nGood.Example.\nbad..name\n");
        assert_eq!(b.len(), 1);
        assert_eq!(bad, 1);
        assert!(b.matches(&n("good.example.")));
        assert!(!b.matches(&n("example.")));
    }

    proptest::proptest! {
        #[test]
        fn decide_never_panics(labels in proptest::collection::vec("[a-z0-9-]{1,12}", 0..6), t in 0u16..300) {
            let f = fixture();
            let st = State { allowed: &f.allowed, domain: &f.domain, zone: &f.zone,
                blocklist: &f.blocklist, blocklist_mode: BlocklistMode::Sinkhole,
                domain_needed: true, bogus_priv: true };
            if let Ok(name) = Name::from_labels(labels.iter().map(|s| s.as_bytes())) {
                let name = name.to_lowercase();
                let q = Query { src: "172.19.2.9".parse().unwrap(), op_code: OpCode::Query,
                    name: &name, qtype: RecordType::from(t), qclass: DNSClass::IN };
                let _ = decide(&q, &st);
            }
        }
    }
}
