//! Stand-alone resolver for benchmarks and manual testing, without Docker or the database:
//! `serve CONFIG.toml [--servers N]`, where the TOML holds `[dns]` keys at top level and
//! `--servers N` fills the local zone with server1..serverN → 172.19.2.(10+i).
//! Logs at `warn` unless RUST_LOG says otherwise (hickory logs every query at `info`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .get(1)
        .ok_or("usage: serve CONFIG.toml [--servers N]")?;
    let cfg: dns::Config = toml::from_str(&std::fs::read_to_string(path)?)?;
    let servers: u32 = match args.iter().position(|a| a == "--servers") {
        Some(i) => args.get(i + 1).ok_or("--servers needs a number")?.parse()?,
        None => 0,
    };
    let zone = dns::LocalZone::new();
    let map: BTreeMap<_, _> = (1..=servers)
        .filter_map(|n| {
            let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 19, 2, 10)) + n);
            Some((names::ServerId::new(n)?, IpAddr::V4(ip)))
        })
        .collect();
    zone.replace(map);
    let nets = ["172.19.2.0/24".parse()?];
    let svc = dns::Service::new(&cfg, &nets, zone)?;
    let listeners = cfg
        .listen
        .iter()
        .map(|a| dns::bind(*a))
        .collect::<Result<Vec<_>, _>>()?;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stop = shutdown.clone();
    tokio::spawn(async move {
        term.recv().await;
        stop.cancel();
    });
    eprintln!("serving on {:?}", cfg.listen);
    svc.serve(listeners, shutdown).await?;
    let mut m = String::new();
    svc.render_metrics(&mut m);
    if std::env::var_os("SERVE_PRINT_METRICS").is_some() {
        eprintln!("{m}");
    }
    Ok(())
}
