//! Docker inside a server, `dind = "caps"` (the machine's own engine) beside `dind = "rootless"`
//! (a `--userns-remap` engine of its own), through the gateway: nested engine start (server
//! restart → the tenant's `docker info` answers), `docker run --rm` latency (timed inside the
//! server, so SSH set-up is not in it) and a `docker load` of a generated image streamed
//! through the gateway. Rounds alternate the modes; medians over successful answers only.
//!
//! ```text
//! cargo run --release -p integration-tests --example dind_modes            # 3 rounds, 1 GiB
//! ROUNDS=1 LOAD_MIB=32 RUNS=5 cargo run -p integration-tests --example dind_modes
//! ```
//!
//! `MEMORY_MIB` (default: the server default, 1 GiB) sets both servers' memory limit: the
//! remapped engine keeps its data root on a tmpfs, so a rootless server's nested images are
//! shmem charged to the server's memory cgroup, and a 1 GiB load needs more than 1 GiB there.
//!
//! Needs root, dockerd, the dind and rootless tenant images (`scripts/test --setup-only` builds
//! them) and the `berth-userns` remap user. Not a test: `bench/tenants/dind_modes.sh` runs it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use integration_tests::gateway::{GatewayHarness, Options, test_image};
use integration_tests::tenants::variant_image;
use integration_tests::userns::RemappedDaemon;
use tenants::DindMode;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// One mode's server and what was measured on it.
struct Mode {
    name: &'static str,
    h: GatewayHarness,
    start_s: Vec<f64>,
    run_ms: Vec<f64>,
    load_s: Vec<f64>,
    failures: u32,
}

fn ssh(h: &GatewayHarness, cmd: &str, stdin: &[u8]) -> Result<String> {
    let out = h.ssh_exec(cmd, stdin)?;
    if !out.status.success() {
        bail!(
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .chars()
                .take(300)
                .collect::<String>()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Restart → the nested engine answers the tenant (seconds).
async fn nested_start(m: &Mode) -> Result<f64> {
    let id = m.h.server.context("server")?;
    let t = Instant::now();
    m.h.provisioner
        .restart(id)
        .await
        .map_err(|e| anyhow::anyhow!("restart: {e}"))?;
    let deadline = t + Duration::from_secs(120);
    loop {
        let out = tokio::task::block_in_place(|| m.h.ssh_exec("docker info >/dev/null 2>&1", b""))?;
        if out.status.success() {
            return Ok(t.elapsed().as_secs_f64());
        }
        if Instant::now() > deadline {
            bail!("nested engine did not answer within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A tar of an image holding `mib` MiB of random bytes (one layer), from the host's engine.
fn load_image_tar(mib: u64) -> Result<Vec<u8>> {
    let dir = tempfile::tempdir()?;
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "set -e; mkdir -p {d}/root; head -c {b} /dev/urandom > {d}/root/blob; \
             tar -C {d}/root -cf - . | docker import - berth-bench/load:{mib} >/dev/null; \
             docker save -o {d}/image.tar berth-bench/load:{mib}; docker rmi berth-bench/load:{mib} >/dev/null",
            d = dir.path().display(),
            b = mib * 1024 * 1024,
        ))
        .status()?;
    if !st.success() {
        bail!("could not make the {mib} MiB load image");
    }
    Ok(std::fs::read(dir.path().join("image.tar"))?)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> Result<()> {
    let rounds = env_num("ROUNDS", 3);
    let runs = env_num("RUNS", 10);
    let load_mib = env_num("LOAD_MIB", 1024);
    let base = test_image();
    let dind = variant_image("dind", "BERTH_TEST_DIND_IMAGE")?;
    let rootless = variant_image("rootless", "BERTH_TEST_ROOTLESS_IMAGE")?;
    let daemon = RemappedDaemon::start()?;
    daemon.load_images(&[&rootless])?;

    let caps = GatewayHarness::start_with(
        "benchcaps",
        Options {
            image: dind,
            dind: DindMode::Caps,
            ..Options::default()
        },
    )
    .await?;
    let rl = GatewayHarness::start_with(
        "benchrootless",
        Options {
            image: rootless,
            dind: DindMode::Rootless,
            docker_host: Some(daemon.host()),
            ..Options::default()
        },
    )
    .await?;
    let mut modes = [caps, rl].map(|h| Mode {
        name: "",
        h,
        start_s: Vec::new(),
        run_ms: Vec::new(),
        load_s: Vec::new(),
        failures: 0,
    });
    modes[0].name = "caps";
    modes[1].name = "rootless";
    if let Some(mib) = std::env::var("MEMORY_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        for m in &modes {
            let id = m.h.server.context("the harness made a server")?;
            let change = tenants::ServerChange {
                memory: Some(mib << 20),
                ..Default::default()
            };
            m.h.provisioner
                .set_server(id, change)
                .await
                .map_err(|e| anyhow::anyhow!("{}: set memory: {e}", m.name))?;
        }
        eprintln!("both servers' memory limit: {mib} MiB");
    }

    // Each nested engine gets the base image once (for `docker run`).
    let saved = Command::new("docker")
        .args(["save", &base])
        .stderr(Stdio::inherit())
        .output()?;
    for m in &modes {
        let deadline = Instant::now() + Duration::from_secs(120);
        while tokio::task::block_in_place(|| m.h.ssh_exec("docker info >/dev/null 2>&1", b""))
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            if Instant::now() > deadline {
                bail!("{}: nested engine never answered", m.name);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::task::block_in_place(|| ssh(&m.h, "docker load -q", &saved.stdout))?;
    }
    eprintln!("making the {load_mib} MiB load image");
    let tar = load_image_tar(load_mib)?;

    for round in 0..rounds {
        // Alternate which mode goes first.
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let m = &mut modes[i];
            match nested_start(m).await {
                Ok(s) => m.start_s.push(s),
                Err(e) => {
                    m.failures += 1;
                    eprintln!("{} start: {e:#}", m.name);
                }
            }
            let script = format!(
                "for i in $(seq {runs}); do s=$(date +%s%N); docker run --rm {base} true >/dev/null 2>&1 \
                 && echo $(( ($(date +%s%N) - s) / 1000 )); done"
            );
            match tokio::task::block_in_place(|| ssh(&m.h, &script, b"")) {
                Ok(out) => {
                    let got: Vec<f64> = out
                        .lines()
                        .filter_map(|l| l.trim().parse::<f64>().ok())
                        .map(|us| us / 1000.0)
                        .collect();
                    m.failures += (runs as usize).saturating_sub(got.len()) as u32;
                    m.run_ms.extend(got);
                }
                Err(e) => {
                    m.failures += 1;
                    eprintln!("{} run: {e:#}", m.name);
                }
            }
            let t = Instant::now();
            match tokio::task::block_in_place(|| ssh(&m.h, "docker load -q", &tar)) {
                Ok(_) => m.load_s.push(t.elapsed().as_secs_f64()),
                Err(e) => {
                    m.failures += 1;
                    eprintln!("{} load: {e:#}", m.name);
                }
            }
            let _ = tokio::task::block_in_place(|| {
                ssh(
                    &m.h,
                    &format!("docker rmi berth-bench/load:{load_mib}"),
                    b"",
                )
            });
        }
    }

    println!(
        "rounds {rounds}, docker run x{runs} per round, docker load {load_mib} MiB through the gateway"
    );
    println!(
        "| mode | nested engine start (s) | docker run --rm (ms) | docker load (s) | failures |"
    );
    println!("|---|---:|---:|---:|---:|");
    let f = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |x| format!("{x:.p$}"));
    for m in &mut modes {
        println!(
            "| {} | {} | {} | {} | {} |",
            m.name,
            f(median(&mut m.start_s), 2),
            f(median(&mut m.run_ms), 0),
            f(median(&mut m.load_s), 1),
            m.failures
        );
    }
    drop(modes);
    drop(daemon);
    Ok(())
}
