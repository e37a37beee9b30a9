//! A virtual server with Docker inside, without `--privileged` (`[tenants] dind = "caps"`): the
//! tenant logs in with `ssh`, loads an image into the nested engine, runs a nested container and
//! a two-service `docker-compose` file, and after a stop/start of the server finds its images
//! still there (the nested engine keeps its data on the server's volume).
//!
//! Needs the dind tenant image (`berth image build --variant dind`, `<test image>-dind`;
//! `scripts/test` builds it when missing).

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use integration_tests::gateway::{GatewayHarness, Options};

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `ssh … server<N> -- cmd`, failing the test with the output when it fails.
fn ssh_ok(h: &GatewayHarness, cmd: &str) -> Result<String> {
    let out = tokio::task::block_in_place(|| h.ssh_exec(cmd, b""))?;
    if !out.status.success() {
        bail!("ssh {cmd:?}: {}", text(&out));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

const WAIT_FOR_DOCKER: &str = "for i in $(seq 1 120); do docker info >/dev/null 2>&1 && exit 0; sleep 0.5; done; \
     tail -n 20 /var/log/dockerd.log >&2 2>/dev/null; exit 1";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_inside_a_server_without_privileged() -> Result<()> {
    let image = integration_tests::tenants::variant_image("dind", "BERTH_TEST_DIND_IMAGE")?;
    let opts = Options {
        image: image.clone(),
        dind: tenants::DindMode::Caps,
        ..Default::default()
    };
    let started = Instant::now();
    let h = GatewayHarness::start_with("dindcaps", opts).await?;
    let id = h.server.context("server")?;

    // The nested engine comes up on its own, and the tenant may use it.
    ssh_ok(&h, WAIT_FOR_DOCKER)?;
    let info = ssh_ok(&h, "docker info --format '{{.DockerRootDir}} {{.Driver}}'")?;
    assert!(info.starts_with("/apps/.docker "), "{info}");

    // docker load: the test image, streamed through the gateway into the nested engine.
    let nested = "berth-nested:test";
    let t = Instant::now();
    tokio::task::block_in_place(|| -> Result<()> {
        let save = Command::new("docker")
            .args(["save", &integration_tests::tenants::test_image()])
            .stdout(Stdio::piped())
            .spawn()
            .context("docker save")?;
        let mut ssh = h.ssh();
        ssh.arg(format!("{}@127.0.0.1", h.user()))
            .arg("--")
            .arg(format!(
                "docker load && docker tag {} {nested}",
                integration_tests::tenants::test_image()
            ))
            .stdin(save.stdout.context("save stdout")?)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = ssh.output().context("ssh docker load")?;
        if !out.status.success() {
            bail!("docker load through the gateway: {}", text(&out));
        }
        Ok(())
    })?;
    let load_time = t.elapsed();

    // A nested container; with the tenant's network it has the tenant's own address.
    let t = Instant::now();
    let out = ssh_ok(
        &h,
        &format!("docker run --rm --network host {nested} sh -c 'echo nested-ok; hostname -I'"),
    )?;
    let run_time = t.elapsed();
    assert!(out.starts_with("nested-ok\n"), "{out}");
    let own = ssh_ok(&h, "hostname -I")?;
    assert_eq!(
        out.lines().nth(1).map(str::trim),
        Some(own.trim()),
        "a nested container on the host network uses the server's own interface (berth's filter sees its traffic)"
    );
    let create_to_nested_run = started.elapsed();

    // Nested traffic enters the host through the tenant's own bridge port with the tenant's own
    // address, so it meets exactly the per-port and egress rules the tenant's own traffic meets:
    // a listener on the tenant network's gateway address sees the server's address as the peer.
    let gw = h.provisioner.network().gateway;
    let listener = tokio::net::TcpListener::bind((gw, 0)).await?;
    let port = listener.local_addr()?.port();
    let accepted = tokio::spawn(async move {
        tokio::time::timeout(Duration::from_secs(30), listener.accept()).await
    });
    ssh_ok(
        &h,
        &format!(
            "docker run --rm --network host {nested} python3 -c \
             'import socket; socket.create_connection((\"{gw}\", {port}), timeout=10).close()'"
        ),
    )?;
    let (_, peer) = accepted
        .await?
        .context("the nested container never connected")??;
    assert_eq!(
        Some(peer.ip().to_string().as_str()),
        own.split_whitespace().next(),
        "nested traffic must carry the server's own address"
    );

    // Two services with docker-compose (Debian's): a web server and a probe that fetches from it.
    let compose = format!(
        r#"version: "3"
services:
  web:
    image: {nested}
    network_mode: host
    command: python3 -m http.server 18080 --bind 127.0.0.1
  probe:
    image: {nested}
    network_mode: host
    depends_on: [web]
    command: sh -c 'for i in $$(seq 1 60); do python3 -c "import urllib.request; print(urllib.request.urlopen(\"http://127.0.0.1:18080/\").status)" && exit 0; sleep 0.5; done; exit 1'
"#
    );
    tokio::task::block_in_place(|| -> Result<()> {
        let mut c = h.ssh();
        c.arg(format!("{}@127.0.0.1", h.user()))
            .arg("--")
            .arg("mkdir -p ~/app && cat > ~/app/docker-compose.yml")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = c.spawn()?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(compose.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("write compose file: {}", text(&out));
        }
        Ok(())
    })?;
    let out = ssh_ok(
        &h,
        "cd ~/app && docker-compose up --abort-on-container-exit --exit-code-from probe 2>&1; \
         rc=$?; docker-compose down >/dev/null 2>&1; exit $rc",
    )?;
    assert!(
        out.contains("200"),
        "the probe never reached the web service: {out}"
    );

    // Stop and start the server: the nested engine's images are still there.
    h.provisioner
        .stop(id)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    h.provisioner
        .ensure_running(id)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    ssh_ok(&h, WAIT_FOR_DOCKER)?;
    let images = ssh_ok(&h, "docker images --format '{{.Repository}}:{{.Tag}}'")?;
    assert!(
        images.lines().any(|l| l == nested),
        "images after stop/start: {images}"
    );
    eprintln!(
        "dind caps: create → nested docker run answered in {create_to_nested_run:?} \
         (docker load of the test image through the gateway {load_time:?}, nested run {run_time:?})"
    );
    // No privileged container was needed.
    let privileged = Command::new("docker")
        .args([
            "inspect",
            "-f",
            "{{.HostConfig.Privileged}}",
            &h.container(id),
        ])
        .output()?;
    assert_eq!(String::from_utf8_lossy(&privileged.stdout).trim(), "false");
    Ok(())
}
