//! Prints the apply batch (nft JSON) for the default tenant network, optionally with N extra
//! deny prefixes and N allowlist entries — used by bench/netfilter to time `nft -j -f`.
//!
//! cargo run -p netfilter --example render -- [--entries N] [--l2 meta|addresses] [--check-lines]

use std::process::ExitCode;

use netfilter::{Config, L2Match, Network, render};

fn main() -> ExitCode {
    let mut entries = 0u32;
    let mut l2 = L2Match::Addresses;
    let mut lines = false;
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
            _ => {
                eprintln!("usage: render [--entries N] [--l2 meta|addresses] [--check-lines]");
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
    let rs = render(&policy, &net, l2);
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
