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
    // The forward chain's list of tenant ports follows: vethB in, vethA out.
    assert!(
        cmds.iter()
            .any(|c| c.starts_with(r#"{"flush":{"chain""#) && c.contains("forward_ports")),
        "{cmds:#?}"
    );
    let fwd: Vec<&String> = cmds
        .iter()
        .filter(|c| c.contains(r#""chain":"forward_ports""#))
        .collect();
    assert!(
        fwd.len() == 1 && fwd[0].contains("vethB") && !fwd[0].contains("vethA"),
        "{fwd:#?}"
    );
    // With bridge meta the forward chain needs no port list (`ibrname` covers every port).
    let meta = render(&p, &net(false), L2Match::Meta, Some(&bindings()));
    assert!(
        !to_nft_json(&meta.apply_batch())
            .to_string()
            .contains("forward_ports")
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
