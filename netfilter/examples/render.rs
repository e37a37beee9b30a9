//! Prints the apply batch (nft JSON) for the default tenant network, optionally with N extra
//! deny prefixes and N allowlist entries — used by bench/netfilter to time `nft -j -f`.
//!
//! cargo run -p netfilter --example render -- [--entries N] [--ports N] [--l2 meta|addresses]
//!     [--check-lines] [--apply-check] [--update]
//!
//! `--ports N` adds N synthetic port bindings; `--apply-check` (root, in a scratch netns) applies
//! the batch, times it again over the live tables (re-apply), times two port-map update
//! transactions (the first port's server gone, then back),
//! and diffs the kernel's listing against the rendered lines after each step. `--update` prints
//! the port-map update that brings the first port back (repeatable over the full ruleset, for
//! timing with hyperfine).

use std::process::ExitCode;

use netfilter::{Config, L2Match, Network, render};

fn main() -> ExitCode {
    let mut entries = 0u32;
    let mut l2 = L2Match::Addresses;
    let mut lines = false;
    let mut ports: Option<u32> = None;
    let mut apply_check = false;
    let mut update = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--entries" => entries = args.next().and_then(|v| v.parse().ok()).unwrap_or(0),
            "--l2" => {
                l2 = match args.next().as_deref() {
                    Some("meta") => L2Match::Meta,
                    _ => L2Match::Addresses,
                }
            }
            "--check-lines" => lines = true,
            "--ports" => ports = args.next().and_then(|v| v.parse().ok()),
            "--apply-check" => apply_check = true,
            "--update" => update = true,
            _ => {
                eprintln!(
                    "usage: render [--entries N] [--ports N] [--l2 meta|addresses] [--check-lines] [--apply-check] [--update]"
                );
                return ExitCode::from(2);
            }
        }
    }
    let mut cfg = Config::default();
    for i in 0..entries {
        // Public-looking, non-adjacent prefixes so aggregation keeps all of them.
        cfg.extra_deny
            .push(format!("45.{}.{}.0/24", i / 100, (i % 100) * 2));
        cfg.allow
            .push(format!("46.{}.{}.7:{}", i / 100, (i % 100) * 2, 1000 + i));
    }
    let policy = match cfg.policy() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("render: {e}");
            return ExitCode::from(1);
        }
    };
    let net = Network {
        bridge: "berth0".into(),
        subnet: "172.19.2.0/24".parse().unwrap_or_default(),
        gateway: [172, 19, 2, 1].into(),
        subnet6: None,
        gateway6: None,
    };
    if std::env::var_os("RENDER_CHECK_LIVE").is_some() {
        let fw = match netfilter::Firewall::new(&cfg, net.clone()) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("render: {e}");
                return ExitCode::from(1);
            }
        };
        let rt = match tokio::runtime::Runtime::new() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("render: {e}");
                return ExitCode::from(1);
            }
        };
        return match rt.block_on(fw.check()) {
            Ok(None) => {
                println!("live == rendered");
                ExitCode::SUCCESS
            }
            Ok(Some(d)) => {
                println!("{d}");
                ExitCode::from(1)
            }
            Err(e) => {
                eprintln!("render: {e}");
                ExitCode::from(1)
            }
        };
    }
    let bindings: Option<Vec<netfilter::bindings::PortBinding>> = ports.map(|n| {
        (0..n)
            .map(|i| netfilter::bindings::PortBinding {
                port: format!("bvp{i}"),
                mac: netfilter::bindings::Mac([2, 0, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8]),
                ipv4: vec![std::net::Ipv4Addr::from(0x0a00_0000 + i)],
                ipv6: vec![std::net::Ipv6Addr::from(
                    0xfd19_0002_u128 << 96 | u128::from(i),
                )],
            })
            .collect()
    });
    let rs = render(&policy, &net, l2, bindings.as_deref());
    if apply_check {
        return apply_and_check(&rs, &policy, &net, l2, bindings.as_deref());
    }
    if let Some(b) = bindings.as_deref().filter(|b| update && !b.is_empty()) {
        // The port-map update that brings the first port back (idempotent over the full
        // ruleset: its elements are added again, its ND shard refilled).
        let gone = render(&policy, &net, l2, Some(&b[1..]));
        let Some(batch) = rs.ports_update_batch(&gone) else {
            eprintln!("render: no incremental update");
            return ExitCode::from(1);
        };
        println!("{}", netfilter::render::to_nft_json(&batch));
        return ExitCode::SUCCESS;
    }
    if lines {
        for l in netfilter::diff::expected_lines(&rs.objects) {
            println!("{l}");
        }
        return ExitCode::SUCCESS;
    }
    match serde_json::to_string(&netfilter::render::to_nft_json(&rs.apply_batch())) {
        Ok(s) => {
            println!("{s}");
            eprintln!("rules={} elements={}", rs.rule_count(), rs.element_count());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("render: {e}");
            ExitCode::from(1)
        }
    }
}

/// Applies `rs`, then re-renders with the first port dropped and applies that as a port-map
/// update; prints both timings and any difference between the kernel's listing and the render.
fn apply_and_check(
    rs: &netfilter::Ruleset,
    policy: &netfilter::Policy,
    net: &Network,
    l2: L2Match,
    bindings: Option<&[netfilter::bindings::PortBinding]>,
) -> ExitCode {
    use netfilter::render::to_nft_json;
    let Ok(rt) = tokio::runtime::Runtime::new() else {
        return ExitCode::from(1);
    };
    let nft = netfilter::nft::Nft::new("nft");
    let live = |nft: &netfilter::nft::Nft| -> Result<Vec<String>, String> {
        let mut objs = Vec::new();
        for fam in ["inet", "bridge"] {
            if let Some(o) = rt
                .block_on(nft.list_table(fam, &policy.table))
                .map_err(|e| e.to_string())?
            {
                objs.extend(o);
            }
        }
        Ok(netfilter::diff::live_lines(&objs))
    };
    let t = std::time::Instant::now();
    if let Err(e) = rt.block_on(nft.apply(&to_nft_json(&rs.apply_batch()), "apply")) {
        eprintln!("render: {e}");
        return ExitCode::from(1);
    }
    println!("full apply: {:.1} ms", t.elapsed().as_secs_f64() * 1000.0);
    let mut status = ExitCode::SUCCESS;
    let mut compare = |rs: &netfilter::Ruleset, what: &str| match live(&nft) {
        Ok(l) => match netfilter::diff::diff(&netfilter::diff::expected_lines(&rs.objects), &l) {
            None => println!("{what}: live == rendered"),
            Some(d) => {
                println!("{what}: live differs:\n{d}");
                status = ExitCode::from(1);
            }
        },
        Err(e) => {
            eprintln!("render: {e}");
            status = ExitCode::from(1);
        }
    };
    compare(rs, "after full apply");
    // The same again over the live tables: what a drift repair or a config reload pays.
    let t = std::time::Instant::now();
    if let Err(e) = rt.block_on(nft.apply(&to_nft_json(&rs.apply_batch()), "re-apply")) {
        eprintln!("render: {e}");
        return ExitCode::from(1);
    }
    println!(
        "full re-apply: {:.1} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    compare(rs, "after full re-apply");
    if let Some(b) = bindings.filter(|b| !b.is_empty()) {
        // One server gone (the first port), then back: the two halves of a restart.
        let gone = render(policy, net, l2, Some(&b[1..]));
        let back = render(policy, net, l2, Some(b));
        for (what, from, to) in [("server gone", rs, &gone), ("server back", &gone, &back)] {
            let Some(batch) = to.ports_update_batch(from) else {
                eprintln!("render: no incremental update from the previous ruleset");
                return ExitCode::from(1);
            };
            let t = std::time::Instant::now();
            if let Err(e) = rt.block_on(nft.apply(&to_nft_json(&batch), "update")) {
                eprintln!("render: {e}");
                return ExitCode::from(1);
            }
            println!(
                "port-map update ({what}): {:.1} ms",
                t.elapsed().as_secs_f64() * 1000.0
            );
            compare(to, &format!("after port-map update ({what})"));
        }
    }
    status
}
