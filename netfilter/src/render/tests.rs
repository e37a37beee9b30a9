//! The renderer's tests: golden files for whole rulesets (`BLESS=1 cargo test -p netfilter`
//! rewrites them after a deliberate change) and properties every rendering must keep.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use nftables::schema::NfListObject;
use nftables::types::{NfChainPolicy, NfFamily};

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
        .filter(|l| {
            l.starts_with("rule bridge")
                || l.starts_with("chain bridge")
                || l.starts_with("set bridge")
        })
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

/// The elements of a named bridge set, as JSON text.
fn elements(rs: &Ruleset, name: &str) -> Vec<String> {
    rs.objects
        .iter()
        .find_map(|o| match o {
            NfListObject::Set(s) if s.family == NfFamily::Bridge && s.name == name => Some(
                s.elem
                    .iter()
                    .flat_map(|e| e.iter())
                    .map(|e| to_nft_json(e).to_string())
                    .collect(),
            ),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no bridge set {name}"))
}

fn pair(port: &str, v: &str) -> String {
    format!(r#"{{"concat":["{port}","{v}"]}}"#)
}

#[test]
fn every_bound_port_is_held_to_its_mac_arp_ip_and_nd() {
    let p = Config::default().policy().unwrap();
    let rs = render(&p, &net(true), L2Match::Addresses, Some(&bindings()));
    assert_eq!(elements(&rs, "bound_ports"), [r#""vethA""#, r#""vethB""#]);
    assert!(elements(&rs, "port_mac").contains(&pair("vethA", "02:42:ac:13:02:05")));
    let arp4 = elements(&rs, "port_arp4");
    assert!(
        arp4.contains(&pair("vethA", "0.0.0.0")) && arp4.contains(&pair("vethA", "172.19.2.5"))
    );
    assert_eq!(
        elements(&rs, "port_ip4"),
        [pair("vethA", "172.19.2.5"), pair("vethB", "172.19.2.6")]
    );
    let ip6 = elements(&rs, "port_ip6");
    for a in ["::", "fd19:2::5", "fe80::42:acff:fe13:205"] {
        assert!(ip6.contains(&pair("vethA", a)), "{a} missing in {ip6:#?}");
    }
    // Nothing of one port is filed under another.
    assert!(!ip6.contains(&pair("vethB", "fd19:2::5")), "{ip6:#?}");
    // The ND facts sit in the port's shard: its chain lists the port's NA targets and MAC.
    let shard = port_binding::shard_of("vethA");
    assert!(elements(&rs, &port_binding::nd_set(shard)).contains(&r#""vethA""#.to_string()));
    let nd = rules_of(&rs, NfFamily::Bridge, &port_binding::nd_chain(shard)).join("\n");
    for needle in [
        pair("vethA", "0xfd190002000000000000000000000005"),
        pair("vethA", "0xfe800000000000000042acfffe130205"),
        r#"{"concat":["vethA",578]}"#.to_string(),
        format!(r#"{{"concat":["vethA",{}]}}"#, 0xac13_0205u32),
    ] {
        assert!(nd.contains(&needle), "{needle} missing in {nd}");
    }
    // Every check of port_bound sends a miss to drop_spoof; it never accepts.
    let a = rules_of(&rs, NfFamily::Bridge, "port_bound");
    assert!(a[0].contains("port_common"));
    assert!(a[1..].iter().all(|r| !r.contains("accept")));
    for set in ["@port_mac", "@port_arp4", "@port_ip4", "@port_ip6"] {
        assert!(
            a.iter()
                .any(|r| r.contains(set) && r.contains(r#""op":"!=""#) && r.contains("drop_spoof")),
            "{set} not checked: {a:#?}"
        );
    }
    // A bound port found in no shard has its ND dropped (the last rule).
    assert!(
        a.last().unwrap().contains("nd-neighbor-advert")
            && a.last().unwrap().contains("drop_spoof")
            && !a.last().unwrap().contains("@nd_ports"),
        "{a:#?}"
    );
    // No IPv4 bound: no element for the port, so every IPv4 source from it misses.
    let mut b = bindings();
    b[1].ipv4.clear();
    let rs = render(&p, &net(true), L2Match::Addresses, Some(&b));
    assert!(
        elements(&rs, "port_ip4")
            .iter()
            .all(|e| !e.contains("vethB")),
    );
    assert_eq!(
        elements(&rs, "port_arp4")
            .iter()
            .filter(|e| e.contains("vethB"))
            .collect::<Vec<_>>(),
        [&pair("vethB", "0.0.0.0")]
    );
    // Known-unbound ports of the bridge are sent to drop_unbound by name.
    let rs = render_full(
        &p,
        &net(true),
        L2Match::Addresses,
        Some(&bindings()),
        &["vethZ".into(), "vethA".into(), "bad.name".into()],
    );
    assert_eq!(elements(&rs, "unbound_ports"), [r#""vethZ""#]);
    assert_eq!(
        elements(&rs, "tenant_ports"),
        [r#""vethA""#, r#""vethB""#, r#""vethZ""#]
    );
    let d = rules_of(&rs, NfFamily::Bridge, "ports");
    assert!(
        d[0].contains("@bound_ports") && d[0].contains("port_bound"),
        "{d:#?}"
    );
    assert!(
        d[1].contains("@unbound_ports") && d[1].contains("drop_unbound"),
        "{d:#?}"
    );
    // Without port binding there is no port part at all.
    let none = render(&p, &net(true), L2Match::Meta, None);
    assert!(none.bound_ports().is_none());
    assert!(
        !to_nft_json(&none.apply_batch())
            .to_string()
            .contains("port_bound")
    );
}

/// `n` synthetic bindings, like the bench's.
fn many(n: u32) -> Vec<PortBinding> {
    (0..n)
        .map(|i| PortBinding {
            port: format!("bvp{i}"),
            mac: crate::bindings::Mac([2, 0, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8]),
            ipv4: vec![std::net::Ipv4Addr::from(0xac13_0000 + i)],
            ipv6: vec![std::net::Ipv6Addr::from(
                0xfd19_0002_u128 << 96 | u128::from(i),
            )],
        })
        .collect()
}

#[test]
fn rules_and_chains_do_not_grow_with_ports() {
    let p = Config::default().policy().unwrap();
    let count = |n: u32| {
        let rs = render(&p, &net(true), L2Match::Addresses, Some(&many(n)));
        let chains = rs
            .objects
            .iter()
            .filter(|o| matches!(o, NfListObject::Chain(_)))
            .count();
        (rs.rule_count(), chains, rs.element_count())
    };
    let (r0, c0, _) = count(0);
    let (r1000, c1000, e1000) = count(1000);
    assert_eq!(c0, c1000, "a chain per port");
    // Only the ND shards gain rules (three each, once they hold a port).
    assert!(
        r1000 <= r0 + 3 * port_binding::ND_SHARDS,
        "{r0} rules → {r1000}"
    );
    // The port facts are set elements: MAC, ARP (own + 0.0.0.0), IPv4, IPv6 (own, link-local,
    // ::), bound, tenant and shard membership.
    assert!(e1000 >= 1000 * 10, "{e1000} elements");
    // Every shard is used by a thousand ports, none holds a third of them.
    for k in 0..port_binding::ND_SHARDS {
        let n = many(1000)
            .iter()
            .filter(|b| port_binding::shard_of(&b.port) == k)
            .count();
        assert!(n > 0 && n < 333, "shard {k} holds {n}");
    }
}

/// The commands of a batch, as JSON text.
fn commands(batch: &nftables::schema::Nftables<'static>) -> Vec<String> {
    to_nft_json(batch)["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.to_string())
        .collect()
}

#[test]
fn ports_update_touches_only_port_sets_and_one_shard() {
    let p = Config::default().policy().unwrap();
    let before = render(&p, &net(false), L2Match::Addresses, Some(&bindings()[..1]));
    let after = render(&p, &net(false), L2Match::Addresses, Some(&bindings()[1..]));
    let cmds = commands(&after.ports_update_batch(&before).unwrap());
    let shard_a = port_binding::nd_chain(port_binding::shard_of("vethA"));
    let shard_b = port_binding::nd_chain(port_binding::shard_of("vethB"));
    for c in &cmds {
        // Element adds and deletes, and the flush and rules of the shards that changed.
        let element =
            c.starts_with(r#"{"add":{"element""#) || c.starts_with(r#"{"delete":{"element""#);
        let shard = (c.starts_with(r#"{"flush":{"chain""#) || c.starts_with(r#"{"add":{"rule""#))
            && (c.contains(&format!(r#""{shard_a}""#)) || c.contains(&format!(r#""{shard_b}""#)));
        assert!(element || shard, "unexpected command {c}");
        assert!(c.contains(r#""family":"bridge""#), "{c}");
    }
    // The leaver's elements are all deleted (no stale element stays), the newcomer's added.
    for set in [
        "bound_ports",
        "tenant_ports",
        "port_mac",
        "port_arp4",
        "port_ip4",
        "port_ip6",
    ] {
        let name = format!(r#""name":"{set}""#);
        assert!(
            cmds.iter().any(|c| c.starts_with(r#"{"delete":{"element""#)
                && c.contains(&name)
                && c.contains("vethA")
                && !c.contains("vethB")),
            "{set}: vethA not deleted: {cmds:#?}"
        );
        assert!(
            cmds.iter().any(|c| c.starts_with(r#"{"add":{"element""#)
                && c.contains(&name)
                && c.contains("vethB")
                && !c.contains("vethA")),
            "{set}: vethB not added: {cmds:#?}"
        );
    }
    // Deletes come before adds, so a changed address is never held twice.
    let last_delete = cmds
        .iter()
        .rposition(|c| c.starts_with(r#"{"delete""#))
        .unwrap();
    let first_add = cmds
        .iter()
        .position(|c| c.starts_with(r#"{"add""#))
        .unwrap();
    assert!(last_delete < first_add, "{cmds:#?}");
    // A port that did not change is left alone: only the newcomer's elements are added.
    let both = render(&p, &net(false), L2Match::Addresses, Some(&bindings()));
    let cmds = commands(&both.ports_update_batch(&before).unwrap());
    assert!(
        cmds.iter().all(|c| !c.starts_with(r#"{"delete""#)),
        "{cmds:#?}"
    );
    assert!(
        cmds.iter()
            .filter(|c| c.starts_with(r#"{"add":{"element""#))
            .all(|c| c.contains("vethB") && !c.contains("vethA")),
        "{cmds:#?}"
    );
    // A changed address: the stale element is deleted, the new one added.
    let mut moved = bindings();
    moved[0].ipv4 = vec!["172.19.2.9".parse().unwrap()];
    let moved = render(&p, &net(false), L2Match::Addresses, Some(&moved));
    let cmds = commands(&moved.ports_update_batch(&both).unwrap());
    assert!(
        cmds.iter().any(|c| c.starts_with(r#"{"delete":{"element""#)
            && c.contains(r#""name":"port_ip4""#)
            && c.contains("172.19.2.5")),
        "{cmds:#?}"
    );
    assert!(
        cmds.iter().any(|c| c.starts_with(r#"{"add":{"element""#)
            && c.contains(r#""name":"port_ip4""#)
            && c.contains("172.19.2.9")),
        "{cmds:#?}"
    );
    // Nothing to do: an empty transaction.
    assert!(commands(&both.ports_update_batch(&both).unwrap()).is_empty());
    // With bridge meta there is no tenant_ports set (`ibrname` covers every port).
    let meta = render(&p, &net(false), L2Match::Meta, Some(&bindings()));
    assert!(
        !to_nft_json(&meta.apply_batch())
            .to_string()
            .contains("tenant_ports")
    );
    // Anything beyond the port map changed: a full apply is needed.
    assert!(
        after
            .ports_update_batch(&render(&p, &net(false), L2Match::Addresses, None))
            .is_none()
    );
    assert!(meta.ports_update_batch(&both).is_none());
    let other = Config {
        log_rate: 0,
        ..Default::default()
    }
    .policy()
    .unwrap();
    assert!(
        render(&other, &net(false), L2Match::Addresses, Some(&bindings()))
            .ports_update_batch(&both)
            .is_none()
    );
}

#[test]
fn ports_update_at_a_thousand_ports_stays_small() {
    let p = Config::default().policy().unwrap();
    let all = many(1000);
    let before = render(&p, &net(true), L2Match::Addresses, Some(&all));
    let after = render(&p, &net(true), L2Match::Addresses, Some(&all[1..]));
    let cmds = commands(&after.ports_update_batch(&before).unwrap());
    // One flush (the leaver's shard), its few rules, and the element deletes.
    assert_eq!(
        cmds.iter().filter(|c| c.starts_with(r#"{"flush""#)).count(),
        1,
        "{cmds:#?}"
    );
    assert!(cmds.iter().all(|c| !c.starts_with(r#"{"delete":{"chain""#)));
    let deleted: Vec<&String> = cmds
        .iter()
        .filter(|c| c.starts_with(r#"{"delete""#))
        .collect();
    assert!(
        deleted.iter().all(|c| c.contains(r#""bvp0""#)),
        "{deleted:#?}"
    );
    let text: usize = cmds.iter().map(|c| c.len()).sum();
    let full: usize = to_nft_json(&before.apply_batch()).to_string().len();
    assert!(text * 10 < full, "update {text} bytes, full apply {full}");
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
    let json = to_nft_json(&render(&p, &net(false), L2Match::Meta, None).apply_batch()).to_string();
    assert!(!json.contains("\"log\""));
    assert!(json.contains("\"counter\""));
    let p = Config {
        log_prefix: "xyz".into(),
        ..Default::default()
    }
    .policy()
    .unwrap();
    let json = to_nft_json(&render(&p, &net(false), L2Match::Meta, None).apply_batch()).to_string();
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
