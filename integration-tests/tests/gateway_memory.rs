//! Memory returned after load: a burst of concurrent transfers (ssh uploads and downloads, sftp
//! puts and gets, each on its own connection) through a real gateway, then the gateway must give
//! what the burst took back to the kernel while it sits idle (`gateway::memory`).
//!
//! One test function on purpose: this binary's RSS is the gateway's RSS, so nothing else may
//! run in it at the same time. The bound is the (2× the idle RSS), polled for up to 120 s
//! so a slow machine makes the test slower, never red. Without the trimmer a burst of 60 such
//! transfers left the gateway at 3.2–3.5× its idle RSS for good (bench/gateway/memory.sh on the
//! commit before it), which this bound catches.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use integration_tests::gateway::GatewayHarness;

/// Transfers at once (a quarter of each kind) and the size of each.
const TRANSFERS: usize = 48;
const SIZE_MIB: u64 = 16;
/// After the burst, the RSS must come back under this multiple of the idle RSS …
const BOUND_FACTOR: u64 = 3;
/// … within this long (polled every second).
const DEADLINE: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_returns_memory_after_a_burst_of_concurrent_transfers() -> Result<()> {
    // The gateway runs in this process: give it the allocator settings `berth run` gives it.
    gateway::memory::limit_arenas();
    // Admission sized for the burst (as bench/gateway/memory.sh): all clients share 127.0.0.1.
    let mut opts = integration_tests::gateway::Options::default();
    opts.ssh.auth.max_unauthenticated_per_ip = 512;
    opts.ssh.auth.connections_per_ip_burst = 1000;
    let h = GatewayHarness::start_with("memory", opts).await?;
    let target = format!("{}@127.0.0.1", h.user());
    let port = h.addr.port();
    let bytes = SIZE_MIB * 1024 * 1024;

    // Source files: one on the host (sftp put), one in the container (sftp get).
    let host_blob = h.path("blob");
    std::fs::write(&host_blob, vec![7u8; bytes as usize]).context("write host blob")?;
    let out = tokio::task::block_in_place(|| {
        h.ssh_exec(
            &format!("head -c {bytes} /dev/zero > blob && wc -c < blob"),
            b"",
        )
    })?;
    anyhow::ensure!(
        String::from_utf8_lossy(&out.stdout).trim() == bytes.to_string(),
        "container blob: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let put = h.path("put");
    let get = h.path("get");
    std::fs::write(&put, format!("put {} /dev/null\n", host_blob.display()))?;
    std::fs::write(&get, "get blob /dev/null\n")?;

    // Warm-up done (first exec, agent started, user probed); let the gateway settle.
    tokio::time::sleep(Duration::from_secs(1)).await;
    gateway::memory::trim();
    let idle = GatewayHarness::rss_kib()?;
    let peak = Arc::new(AtomicU64::new(idle));
    let stop = tokio_util::sync::CancellationToken::new();
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                peak.fetch_max(GatewayHarness::rss_kib()?, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            anyhow::Ok(())
        })
    };

    let ssh = format!("ssh {} -p {port} {target}", h.ssh_opts().join(" "));
    let sftp = format!("sftp {} -q -P {port}", h.ssh_opts().join(" "));
    let t0 = Instant::now();
    let children = (0..TRANSFERS)
        .map(|i| {
            let (what, line) = match i % 4 {
                0 => (
                    "ssh upload",
                    format!("head -c {bytes} /dev/zero | {ssh} 'wc -c'"),
                ),
                1 => (
                    "ssh download",
                    format!("{ssh} 'head -c {bytes} /dev/zero' | wc -c"),
                ),
                2 => ("sftp put", format!("{sftp} -b {} {target}", put.display())),
                _ => ("sftp get", format!("{sftp} -b {} {target}", get.display())),
            };
            let child = Command::new("sh")
                .arg("-c")
                .arg(&line)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .with_context(|| format!("spawn {what}"))?;
            Ok((what, child))
        })
        .collect::<Result<Vec<_>>>()?;
    for (what, child) in children {
        let out = tokio::task::block_in_place(|| child.wait_with_output())?;
        anyhow::ensure!(
            out.status.success(),
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if what.starts_with("ssh") {
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                bytes.to_string(),
                "{what}: bytes moved"
            );
        }
    }
    let burst = t0.elapsed();
    stop.cancel();
    sampler.await??;
    let peak = peak.load(Ordering::Relaxed);
    let bound = BOUND_FACTOR * idle;

    let t1 = Instant::now();
    let mut now = GatewayHarness::rss_kib()?;
    while now >= bound && t1.elapsed() < DEADLINE {
        tokio::time::sleep(Duration::from_secs(1)).await;
        now = GatewayHarness::rss_kib()?;
    }
    eprintln!(
        "{TRANSFERS} × {SIZE_MIB} MiB in {burst:?}: gateway RSS idle {idle} KiB, peak {peak} KiB, \
         {now} KiB {:?} after the burst (bound {bound} KiB)",
        t1.elapsed()
    );
    assert!(
        now < bound,
        "the gateway kept {now} KiB resident {DEADLINE:?} after the burst (idle {idle} KiB, \
         peak {peak} KiB): freed memory was not returned"
    );
    Ok(())
}
