//! Flow control with bounded memory (the crux of the gateway): 1 GiB through `cat` into a
//! consumer that stalls, and 1 GiB into a container process that stalls, keep the gateway's
//! RSS bounded while another channel of the same connection answers promptly.
//!
//! One test function on purpose: this binary's RSS is the gateway's RSS, so nothing else may
//! run in it at the same time.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use integration_tests::gateway::GatewayHarness;

const GIB: u64 = 1024 * 1024 * 1024;
/// Growth of the gateway's RSS allowed over its idle baseline while 1 GiB is in flight.
const RSS_CEILING_KIB: u64 = 96 * 1024;
/// A second channel must answer within this while the first one is stalled.
const LATENCY_CEILING: Duration = Duration::from_secs(2);

fn python() -> &'static str {
    if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// Reads stdin after sleeping `stall` seconds; prints the byte count.
const SLOW_READER: &str = "import sys,time\ntime.sleep(float(sys.argv[1]))\nn=0\nb=sys.stdin.buffer\nwhile True:\n  d=b.read1(1<<20)\n  if not d: break\n  n+=len(d)\nprint(n)\n";

struct Master {
    sock: std::path::PathBuf,
    target: String,
}
impl Drop for Master {
    fn drop(&mut self) {
        let _ = Command::new("ssh")
            .arg("-S")
            .arg(&self.sock)
            .args(["-O", "exit"])
            .arg(&self.target)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn ping_latency(m: &Master) -> Result<Duration> {
    let t0 = Instant::now();
    let out = Command::new("ssh")
        .arg("-S")
        .arg(&m.sock)
        .arg(&m.target)
        .arg("echo pong")
        .stdin(Stdio::null())
        .output()?;
    anyhow::ensure!(
        String::from_utf8_lossy(&out.stdout) == "pong\n",
        "ping failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(t0.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_gib_with_stalled_consumers_keeps_rss_bounded_and_channels_responsive() -> Result<()> {
    // `BERTH_FLOW_UPSTREAM=1` runs the same test with russh's acknowledge-on-receipt window
    // (`ssh.consumption_window = false`, which config validation refuses; the harness does not
    // validate) to show that it fails without the patch.
    let mut opts = integration_tests::gateway::Options::default();
    opts.ssh.consumption_window = std::env::var_os("BERTH_FLOW_UPSTREAM").is_none();
    let h = GatewayHarness::start_with("flow", opts).await?;
    let sock = h.path("ctl.sock");
    let target = format!("{}@127.0.0.1", h.user());
    let st = tokio::task::block_in_place(|| {
        h.ssh()
            .args(["-M", "-S"])
            .arg(&sock)
            .args(["-f", "-N"])
            .arg(&target)
            .status()
    })?;
    anyhow::ensure!(st.success(), "control master failed");
    let m = Master {
        sock: sock.clone(),
        target: target.clone(),
    };
    // Warm up (first exec, user probe) before taking the baseline.
    tokio::task::block_in_place(|| ping_latency(&m))?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let baseline = GatewayHarness::rss_kib()?;
    let peak = Arc::new(AtomicU64::new(baseline));
    let stop = tokio_util::sync::CancellationToken::new();
    // Ends with an error when RSS cannot be read: the bound below is then not checked.
    let sampler = {
        let peak = peak.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                peak.fetch_max(GatewayHarness::rss_kib()?, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            anyhow::Ok(())
        })
    };

    let ssh_s = format!("ssh -S {} {}", sock.display(), target);
    // Case 1: container → client, client stalls 6 s (download into a slow consumer).
    // Case 2: client → container, the container process stalls 6 s (upload into a slow sink).
    let cases = [
        (
            "download into a stalled reader",
            format!(
                "head -c {GIB} /dev/zero | {ssh_s} cat | {} -c '{SLOW_READER}' 6",
                python()
            ),
            GIB.to_string(),
        ),
        (
            "upload into a stalled container process",
            format!("head -c {GIB} /dev/zero | {ssh_s} 'sleep 6; wc -c'"),
            GIB.to_string(),
        ),
    ];
    for (name, pipeline, want) in cases {
        let t0 = Instant::now();
        let child = Command::new("sh")
            .arg("-c")
            .arg(&pipeline)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("pipeline")?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut worst = Duration::ZERO;
        for _ in 0..3 {
            worst = worst.max(tokio::task::block_in_place(|| ping_latency(&m))?);
        }
        let out = tokio::task::block_in_place(|| child.wait_with_output())?;
        let took = t0.elapsed();
        assert!(
            out.status.success(),
            "{name}: pipeline failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            want,
            "{name}: byte count"
        );
        anyhow::ensure!(
            !sampler.is_finished(),
            "{name}: the RSS sampler stopped: {:?}",
            sampler.await
        );
        let grown = peak.load(Ordering::Relaxed).saturating_sub(baseline);
        eprintln!(
            "{name}: 1 GiB in {took:?} ({:.0} MiB/s incl. 6 s stall), second-channel worst latency {worst:?}, RSS growth {} KiB",
            1024.0 / took.as_secs_f64(),
            grown
        );
        assert!(
            worst < LATENCY_CEILING,
            "{name}: second channel took {worst:?}"
        );
        assert!(
            grown < RSS_CEILING_KIB,
            "{name}: gateway RSS grew by {grown} KiB"
        );
    }
    stop.cancel();
    sampler.await??;
    Ok(())
}
