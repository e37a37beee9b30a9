//! In-process latency of `Provisioner::ensure_running` next to the raw Docker API calls it is
//! built from, in the same run (used by bench/tenants/run.sh):
//!
//! - running server: `ensure_running` (store read + inspect) vs bollard `inspect_container`;
//! - stopped server: `ensure_running` (store read + inspect + start + inspect) vs bollard
//!   `start_container` + `inspect_container` on an identical peer container.
//!
//! Usage: bench_ensure_running [ITERATIONS] [STOPPED_ITERATIONS]   (needs root + dockerd)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use bollard::query_parameters::{
    CreateContainerOptions, RemoveContainerOptions, StopContainerOptions,
};
use tenants::{Config, NetworkConfig, Provisioner, ServerSpec, Store};

fn stats(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let n = v.len();
    let mean = v.iter().sum::<Duration>() / n as u32;
    let p = |q: f64| v[((n as f64 * q) as usize).min(n - 1)];
    println!(
        "{name:<48} n={n:<5} mean={:>9.3?} p50={:>9.3?} p90={:>9.3?} p99={:>9.3?}",
        mean,
        p(0.5),
        p(0.9),
        p(0.99)
    );
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let iters: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let stopped_iters: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let image =
        std::env::var("BERTH_TEST_IMAGE").unwrap_or_else(|_| "berth/tenant:bookworm".into());

    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&format!("sqlite://{}/bench.db", dir.path().display()))
        .await
        .unwrap();
    let prefix = format!("bench{}", std::process::id());
    let net = NetworkConfig {
        name: format!("{prefix}-net"),
        bridge: format!("bb{}", std::process::id() % 1_000_000),
        subnet: "10.213.251.0/24".parse().unwrap(),
        gateway: "10.213.251.1".parse().unwrap(),
        subnet6: None,
        gateway6: None,
    };
    let cfg = Config {
        image: image.clone(),
        name_prefix: prefix.clone(),
        stop_timeout_secs: 0,
        ..Config::default()
    };
    let prov = Provisioner::connect(&net, &cfg, store.clone())
        .await
        .unwrap();
    store.add_account("bench", None::<&str>).await.unwrap();
    let server = prov
        .create_server("bench", ServerSpec::default())
        .await
        .unwrap();
    let id = server.id;
    let container = prov.names().container(id);

    // The peer: an identical container made straight through the API, never through berth.
    let peer = format!("{prefix}-peer");
    let peer_server = tenants::Server {
        id: tenants::ServerId::new(999_999).unwrap(),
        ..server.clone()
    };
    let mut body = tenants::spec::container_body(&cfg, &net, prov.names(), &peer_server);
    body.labels = None;
    let docker = prov.docker().clone();
    docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(peer.clone()),
                ..Default::default()
            }),
            body,
        )
        .await
        .unwrap();
    docker.start_container(&peer, None).await.unwrap();

    // Warm up both paths.
    for _ in 0..20 {
        prov.ensure_running(id).await.unwrap();
        docker.inspect_container(&peer, None).await.unwrap();
    }
    let mut berth = Vec::with_capacity(iters);
    let mut raw = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        let r = prov.ensure_running(id).await.unwrap();
        berth.push(t.elapsed());
        assert!(!r.started_now);
        let t = Instant::now();
        docker.inspect_container(&peer, None).await.unwrap();
        raw.push(t.elapsed());
    }
    println!("# running server, {iters} iterations each, interleaved");
    stats("berth ensure_running (running)", berth);
    stats("bollard inspect_container (peer)", raw);

    let mut berth = Vec::new();
    let mut raw = Vec::new();
    let stop = || {
        Some(StopContainerOptions {
            t: Some(0),
            signal: None,
        })
    };
    for _ in 0..stopped_iters {
        docker.stop_container(&container, stop()).await.unwrap();
        let t = Instant::now();
        let r = prov.ensure_running(id).await.unwrap();
        berth.push(t.elapsed());
        assert!(r.started_now);
        docker.stop_container(&peer, stop()).await.unwrap();
        let t = Instant::now();
        docker.start_container(&peer, None).await.unwrap();
        docker.inspect_container(&peer, None).await.unwrap();
        raw.push(t.elapsed());
    }
    println!("# stopped server, {stopped_iters} iterations each, interleaved");
    stats("berth ensure_running (stopped -> running)", berth);
    stats("bollard start + inspect (peer)", raw);

    // Concurrency: 100 callers on a running server.
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let p = prov.clone();
        tasks.push(tokio::spawn(async move {
            p.ensure_running(id).await.map(|_| ())
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    println!(
        "# 100 concurrent ensure_running (running): {:.3?} total",
        t.elapsed()
    );

    let rm = || {
        Some(RemoveContainerOptions {
            force: true,
            ..Default::default()
        })
    };
    let _ = docker.remove_container(&peer, rm()).await;
    let _ = docker
        .remove_volume(
            &prov.names().volume(peer_server.id),
            None::<bollard::query_parameters::RemoveVolumeOptions>,
        )
        .await;
    prov.remove(id, true).await.unwrap();
    let _ = prov.remove_network().await;
}
