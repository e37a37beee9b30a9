//! Port forwarding through the gateway: `-L`/`-W` to the tenant's own container works
//! (`localhost` means the container); another tenant, the host and the internet are refused;
//! X11 is refused cleanly. Remote, unix-socket and agent forwards: `gateway_devflow.rs`.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use integration_tests::gateway::GatewayHarness;
use tenants::ServerSpec;

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

const SERVE: &str = "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('0.0.0.0',8080))\ns.listen(8)\nwhile True:\n  c,_=s.accept()\n  c.sendall(b'hello from container\\n')\n  c.close()\n";

fn serve_in(h: &GatewayHarness, id: tenants::ServerId) -> Result<()> {
    let st = Command::new("docker")
        .args(["exec", "-d", &h.container(id), "python3", "-c", SERVE])
        .status()?;
    anyhow::ensure!(st.success(), "could not start the test service");
    std::thread::sleep(Duration::from_millis(500));
    Ok(())
}

fn ssh_w(h: &GatewayHarness, dest: &str) -> Result<std::process::Output> {
    let mut c = h.ssh();
    c.arg("-W").arg(dest).arg(format!("{}@127.0.0.1", h.user()));
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = c.spawn()?;
    child.wait_with_output().context("ssh -W")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forward_reaches_own_container_only() -> Result<()> {
    let h = GatewayHarness::start("forward").await?;
    let id = h.server.context("server")?;
    serve_in(&h, id)?;

    // -W localhost:8080 → the container itself.
    let out = blocking(|| ssh_w(&h, "localhost:8080"))?;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from container\n",
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // -L with a local port.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let mut fwd = h
        .ssh()
        .args(["-N", "-o", "ExitOnForwardFailure=yes", "-L"])
        .arg(format!("127.0.0.1:{port}:127.0.0.1:8080"))
        .arg(format!("{}@127.0.0.1", h.user()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let got = loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let mut buf = String::new();
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = s.read_to_string(&mut buf);
            if !buf.is_empty() {
                break buf;
            }
        }
        assert!(Instant::now() < deadline, "-L never worked");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let _ = fwd.kill();
    let _ = fwd.wait();
    assert_eq!(got, "hello from container\n");

    // Another tenant's container: refused.
    let other = "other";
    let hash =
        tenants::password::hash("x-other-password", 4).map_err(|e| anyhow::anyhow!("{e}"))?;
    h.store.add_account(other, Some(&hash)).await?;
    let s2 = h
        .provisioner
        .create_server(other, ServerSpec::default())
        .await
        .map_err(|e| anyhow::anyhow!("create: {e}"))?;
    serve_in(&h, s2.id)?;
    let addr2 = h
        .provisioner
        .ensure_running(s2.id)
        .await
        .map_err(|e| anyhow::anyhow!("ensure: {e}"))?
        .address;
    let own = h
        .provisioner
        .ensure_running(id)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .address;
    let host_gw = h.provisioner.network().gateway;
    for dest in [
        format!("{addr2}:8080"),
        format!("{}:8080", s2.id.login_name()),
        format!("{host_gw}:22"),
        "10.255.255.1:80".to_string(),
        "example.com:80".to_string(),
    ] {
        let out = blocking(|| ssh_w(&h, &dest))?;
        assert!(!out.status.success(), "{dest} was allowed");
        assert!(out.stdout.is_empty(), "{dest} returned data");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("prohibited") || err.contains("forwarding failed"),
            "{dest}: unexpected error {err}"
        );
    }
    // Refused by policy (audited as "rejected"), not merely unreachable.
    let events = h.store.audit_events(500).await?;
    let rejected = events
        .iter()
        .filter(|e| {
            e.event.method.as_deref() == Some("direct-tcpip") && e.event.outcome == "rejected"
        })
        .count();
    assert_eq!(
        rejected, 5,
        "every foreign destination must be refused by policy"
    );
    // The container's own address works too.
    let out = blocking(|| ssh_w(&h, &format!("{own}:8080")))?;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from container\n"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn x11_is_refused_and_the_session_works() -> Result<()> {
    // Remote forwards and agent forwarding: gateway_devflow.rs.
    let h = GatewayHarness::start("nox11").await?;
    let out = blocking(|| {
        h.ssh()
            .args(["-X"])
            .arg(format!("{}@127.0.0.1", h.user()))
            .arg("echo ${DISPLAY:-no-x11}")
            .output()
    })?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "no-x11\n");
    Ok(())
}
