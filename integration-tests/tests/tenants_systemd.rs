//! A virtual server that boots systemd as PID 1 (`berth image build --variant systemd`): with
//! the operator's per-server grant (`--init systemd`; the image's `berth.init=systemd` label
//! alone grants nothing) berth runs the container the way systemd needs (no tini, tmpfs on
//! /run, a private cgroup namespace and the `caps` grant). The tenant logs in through the
//! gateway, finds systemd running, and a stop is a clean systemd shutdown.
//!
//! Needs the systemd tenant image (`<test image>-systemd`; `scripts/test` builds it).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use integration_tests::gateway::{GatewayHarness, Options};

/// Waits for systemd inside the server to finish booting (asked as root over systemd's private
/// socket: the tenant has no D-Bus session for `systemctl`); returns its state and PID 1's name
/// as the tenant sees it through the gateway.
fn booted(h: &GatewayHarness, id: tenants::ServerId) -> Result<(String, String)> {
    // Right after the start, systemd may not have its socket (or /run/systemd/system, then
    // systemctl says "offline") yet, and `--wait` gives up at once: ask again.
    let state = h.docker_exec(
        id,
        &[
            "sh",
            "-c",
            "for i in $(seq 1 120); do s=$(timeout 60 systemctl is-system-running --wait 2>/dev/null); \
             case \"$s\" in ''|offline) sleep 0.5 ;; *) break ;; esac; done; echo \"$s\"",
        ],
    )?;
    if !state.stderr.is_empty() {
        eprintln!(
            "is-system-running: {}",
            String::from_utf8_lossy(&state.stderr).trim()
        );
    }
    let state = String::from_utf8_lossy(&state.stdout).trim().to_string();
    let failed = h.docker_exec(id, &["systemctl", "--failed", "--no-legend"])?;
    let pid1 = tokio::task::block_in_place(|| h.ssh_exec("ps -o comm= -p 1", b""))?;
    let pid1 = String::from_utf8_lossy(&pid1.stdout).trim().to_string();
    eprintln!(
        "systemd state {state:?}, pid 1 {pid1:?}; failed units: {}",
        String::from_utf8_lossy(&failed.stdout).trim()
    );
    Ok((state, pid1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_can_boot_systemd_as_pid_1() -> Result<()> {
    let image = integration_tests::tenants::variant_image("systemd", "BERTH_TEST_SYSTEMD_IMAGE")?;
    let opts = Options {
        image: image.clone(),
        create_server: false,
        ..Default::default()
    };
    let mut h = GatewayHarness::start_with("systemd", opts).await?;
    let spec = tenants::ServerSpec {
        image: Some(image),
        init: Some(tenants::spec::InitMode::Systemd),
        ..Default::default()
    };
    let server = h
        .provisioner
        .create_server(&h.account, spec)
        .await
        .map_err(|e| anyhow::anyhow!("create server: {e}"))?;
    h.server = Some(server.id);
    let id = h.server.context("server")?;
    let (state, pid1) = booted(&h, id)?;
    assert_eq!(pid1, "systemd", "PID 1 inside the server");
    assert!(
        state == "running" || state == "degraded",
        "systemd did not finish booting: {state:?}"
    );
    // The login still lands as the tenant user, in its home.
    let who = tokio::task::block_in_place(|| h.ssh_exec("id -un; pwd", b""))?;
    assert_eq!(
        String::from_utf8_lossy(&who.stdout),
        "tenant\n/home/tenant\n"
    );

    // A stop is systemd's own shutdown (SIGRTMIN+3), well inside the stop timeout.
    let t = Instant::now();
    h.provisioner
        .stop(id)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(9),
        "stop took {took:?}: systemd ignored its stop signal and was killed"
    );
    h.provisioner
        .ensure_running(id)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let (state, pid1) = booted(&h, id)?;
    assert_eq!(pid1, "systemd");
    assert!(state == "running" || state == "degraded", "{state:?}");
    eprintln!("systemd server stopped in {took:?} and booted again");
    Ok(())
}
