//! The internal SSH hop end to end on one Docker host: a node's hop endpoint (`gateway::serve`
//! with `hop::HopGate` over the real tenants backend) and a front (`gateway::serve` with the
//! real authenticator over `hop::RelayBackend`), both in-process on loopback; the server is
//! placed on the node in the store, so every login to it through the front crosses the hop.
//! Real OpenSSH clients, real Docker tenant, real SQLite store.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use gateway::tenants_backend::TenantsBackend;
use gateway::{Backend, Shared, Stats};
use integration_tests::gateway::{GatewayHarness, Options};
use russh::keys::{PrivateKey, ssh_key::LineEnding};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn ed25519() -> Result<PrivateKey> {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!("berth-hop-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!("key{n}"));
    let _ = std::fs::remove_file(&path);
    let key =
        gateway::hostkeys::load_or_generate_one(&path, gateway::hostkeys::KeyKind::Ed25519, true)
            .map_err(|e| anyhow::anyhow!("generate key: {e}"))?;
    let _ = std::fs::remove_file(&path);
    Ok(key)
}

fn public_line(k: &PrivateKey) -> Result<String> {
    k.public_key().to_openssh().context("encode public key")
}

struct Cluster {
    h: GatewayHarness,
    front: std::net::SocketAddr,
    node: std::net::SocketAddr,
    node_key: PrivateKey,
    front_key: PrivateKey,
    stop: CancellationToken,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A node "n2" serving the harness's server through its hop endpoint, and a front that is node
/// "n1" (so the server is not local to it).
async fn cluster(test: &str, node_policy: impl FnOnce(&mut gateway::Config)) -> Result<Cluster> {
    let h = GatewayHarness::start_with(test, Options::default()).await?;
    let server = h.server.context("server")?;
    let mut cfg = Options::default().ssh;
    if std::env::var("BERTH_TEST_DATA_PATH").as_deref() != Ok("attach") {
        cfg.agent_binary = integration_tests::gateway::agent_binary()?
            .display()
            .to_string();
    }
    let stop = CancellationToken::new();

    // The node: hop endpoint over the real tenants backend.
    let node_key = ed25519()?;
    let node_backend: Arc<dyn Backend> = Arc::new(TenantsBackend::new(
        h.store.clone(),
        h.provisioner.clone(),
        &cfg,
    ));
    let gate = Arc::new(hop::HopGate::new(h.store.clone(), node_backend.clone()));
    let mut node_cfg = cfg.clone();
    node_policy(&mut node_cfg);
    let node_shared = Shared::new(
        node_cfg,
        node_backend,
        gate,
        vec![node_key.clone()],
        Arc::new(Stats::default()),
    );
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let node = l.local_addr()?;
    tokio::spawn(gateway::serve(node_shared, vec![l], stop.clone()));
    h.store
        .register_node("n2", &node.to_string(), &public_line(&node_key)?)
        .await?;
    h.store.place_server(server, "n2").await?;

    // The front: the real authenticator over the relay.
    let front_key = ed25519()?;
    h.store
        .register_front("f1", &public_line(&front_key)?)
        .await?;
    let local: Arc<dyn Backend> = Arc::new(TenantsBackend::new(
        h.store.clone(),
        h.provisioner.clone(),
        &cfg,
    ));
    let relay: Arc<dyn Backend> = Arc::new(hop::RelayBackend::new(
        local,
        h.store.clone(),
        "n1".into(),
        front_key.clone(),
    ));
    let auth = gateway::auth::Authenticator::new(&cfg, relay.clone());
    let front_host_key = ed25519()?;
    let front_shared = Shared::new(
        cfg,
        relay,
        Arc::new(auth),
        vec![front_host_key],
        Arc::new(Stats::default()),
    );
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let front = l.local_addr()?;
    tokio::spawn(gateway::serve(front_shared, vec![l], stop.clone()));
    Ok(Cluster {
        h,
        front,
        node,
        node_key,
        front_key,
        stop,
    })
}

fn ssh(c: &Cluster, port: u16) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.args(c.h.ssh_opts()).arg("-p").arg(port.to_string());
    cmd
}

fn run(mut cmd: Command, stdin: &[u8]) -> Result<Output> {
    use std::io::Write;
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().context("spawn ssh")?;
    if let Some(mut si) = child.stdin.take() {
        let data = stdin.to_vec();
        std::thread::spawn(move || {
            let _ = si.write_all(&data);
        });
    }
    child.wait_with_output().context("wait ssh")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout {}\nstderr {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_files_and_forwards_cross_the_hop() -> Result<()> {
    let c = cluster("hopdata", |_| {}).await?;
    let user = format!("{}@127.0.0.1", c.h.user());
    let port = c.front.port();

    // exec: stdout, stderr, exit status, stdin to EOF, and it ran in the server's container.
    let mut cmd = ssh(&c, port);
    cmd.arg(&user)
        .arg("--")
        .arg("echo out:$BERTH_SERVER:$(hostname); echo err >&2; wc -c; exit 7");
    let out = blocking(|| run(cmd, &vec![b'x'; 300_000]))?;
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("out:{}:{}", c.h.user(), c.h.user())),
        "{}",
        text(&out)
    );
    assert!(stdout.contains("300000"), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("err"));

    // A child killed by a signal: the shell's status (128 + 9) comes back as the exit status.
    let mut cmd = ssh(&c, port);
    cmd.arg(&user).arg("--").arg("sh -c 'kill -KILL $$'");
    let out = blocking(|| run(cmd, b""))?;
    assert_eq!(out.status.code(), Some(137), "{}", text(&out));

    // PTY: the session has a terminal of the requested type.
    let mut cmd = ssh(&c, port);
    cmd.arg("-tt")
        .arg(&user)
        .arg("--")
        .arg("tty; echo term=$TERM");
    cmd.env("TERM", "vt100");
    let out = blocking(|| run(cmd, b""))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("/dev/pts/") && stdout.contains("term=vt100"),
        "{}",
        text(&out)
    );

    // SFTP: put and get a file, data intact.
    let dir = c.h.dir.path();
    let src = dir.join("up.bin");
    let data: Vec<u8> = (0..2_000_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
    std::fs::write(&src, &data)?;
    let back = dir.join("down.bin");
    let batch = dir.join("batch");
    std::fs::write(
        &batch,
        format!(
            "put {} up.bin\nget up.bin {}\n",
            src.display(),
            back.display()
        ),
    )?;
    let mut sftp = Command::new("sftp");
    sftp.args(c.h.ssh_opts())
        .arg("-P")
        .arg(port.to_string())
        .arg("-b")
        .arg(&batch)
        .arg(&user);
    let out = blocking(|| run(sftp, b""))?;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read(&back)?, data);

    // scp (its SFTP mode and the legacy -O one) and rsync over ssh, both ways, data intact.
    for mode in [None, Some("-O")] {
        let name = format!("scp{}.bin", mode.map_or("", |_| "-legacy"));
        let mut up = Command::new("scp");
        up.args(c.h.ssh_opts()).arg("-P").arg(port.to_string());
        up.args(mode).arg(&src).arg(format!("{user}:{name}"));
        let out = blocking(|| run(up, b""))?;
        assert!(out.status.success(), "scp {mode:?} up: {}", text(&out));
        let got = dir.join(format!("{name}.back"));
        let mut down = Command::new("scp");
        down.args(c.h.ssh_opts()).arg("-P").arg(port.to_string());
        down.args(mode).arg(format!("{user}:{name}")).arg(&got);
        let out = blocking(|| run(down, b""))?;
        assert!(out.status.success(), "scp {mode:?} down: {}", text(&out));
        assert_eq!(std::fs::read(&got)?, data, "scp {mode:?}");
    }
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("sub"))?;
    std::fs::write(tree.join("sub/x.bin"), &data)?;
    let ssh_e = format!("ssh -p {port} {}", c.h.ssh_opts().join(" "));
    let mut up = Command::new("rsync");
    up.args(["-a", "-e", &ssh_e])
        .arg(format!("{}/", tree.display()))
        .arg(format!("{user}:tree/"));
    let out = blocking(|| run(up, b""))?;
    assert!(out.status.success(), "rsync up: {}", text(&out));
    let tree_back = dir.join("tree-back");
    let mut down = Command::new("rsync");
    down.args(["-a", "-e", &ssh_e])
        .arg(format!("{user}:tree/"))
        .arg(format!("{}/", tree_back.display()));
    let out = blocking(|| run(down, b""))?;
    assert!(out.status.success(), "rsync down: {}", text(&out));
    assert_eq!(std::fs::read(tree_back.join("sub/x.bin"))?, data);

    // On-demand start across the hop: the server's container stopped, a login through the
    // front starts it on its node.
    let id = c.h.server.context("server")?;
    let st = Command::new("docker")
        .args(["stop", "-t", "1", &c.h.container(id)])
        .status()?;
    anyhow::ensure!(st.success(), "could not stop the server's container");
    let mut cmd = ssh(&c, port);
    cmd.arg(&user).arg("--").arg("echo started-on-demand");
    let out = blocking(|| run(cmd, b""))?;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("started-on-demand"),
        "{}",
        text(&out)
    );

    // direct-tcpip to the container's loopback, named as the client named it.
    let serve = "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('127.0.0.1',8081))\ns.listen(8)\nwhile True:\n  c,_=s.accept()\n  c.sendall(b'hello over the hop\\n')\n  c.close()\n";
    let st = Command::new("docker")
        .args(["exec", "-d", &c.h.container(id), "python3", "-c", serve])
        .status()?;
    anyhow::ensure!(st.success(), "could not start the test service");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut cmd = ssh(&c, port);
        cmd.arg("-W").arg("localhost:8081").arg(&user);
        let out = blocking(|| run(cmd, b""))?;
        if String::from_utf8_lossy(&out.stdout) == "hello over the hop\n" {
            break;
        }
        assert!(Instant::now() < deadline, "-W never worked: {}", text(&out));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // ssh -R 0 and a unix-socket -R across the hop: the node binds them in the container, the
    // allocated port reaches the client, and connections from inside the tenant reach the
    // client's side with bytes checked both ways.
    let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let echo = echo_service(received.clone())?;
    let greeting = banner("hello through a unix -R over the hop\n")?;
    let mut fwd = forwarding(
        &c,
        &[
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-R",
            &format!("0:127.0.0.1:{echo}"),
            "-R",
            &format!("/tmp/hop-fwd.sock:127.0.0.1:{greeting}"),
        ],
    )
    .stderr(Stdio::piped())
    .stdout(Stdio::null())
    .spawn()?;
    let allocated = blocking(|| allocated_port(&mut fwd))?;
    let container = c.h.container(id);
    let out = blocking(|| {
        Command::new("docker")
            .args(["exec", &container, "python3", "-c", ECHO_PY])
            .arg(allocated.to_string())
            .output()
    })?;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "echoed\n",
        "{}",
        text(&out)
    );
    assert_eq!(
        received.load(std::sync::atomic::Ordering::SeqCst),
        ECHO_BYTES,
        "the client's side got other bytes than the tenant sent"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let out = loop {
        let out = blocking(|| {
            Command::new("docker")
                .args(["exec", &container, "python3", "-c", CONNECT_UNIX_PY])
                .arg("/tmp/hop-fwd.sock")
                .output()
        })?;
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello through a unix -R over the hop\n",
        "{}",
        text(&out)
    );
    stop(fwd);

    // ssh -A: the tenant's ssh-add lists the key held by the client's agent.
    let (agent, agent_sock) = start_agent(dir, "hop-agent.sock").await?;
    let key = dir.join("agentkey");
    let fingerprint = blocking(|| -> Result<String> {
        let st = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key)
            .status()?;
        anyhow::ensure!(st.success(), "ssh-keygen failed");
        let st = Command::new("ssh-add")
            .arg(&key)
            .env("SSH_AUTH_SOCK", &agent_sock)
            .stderr(Stdio::null())
            .status()?;
        anyhow::ensure!(st.success(), "ssh-add failed");
        let out = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(key.with_extension("pub"))
            .output()?;
        let line = String::from_utf8_lossy(&out.stdout).to_string();
        line.split_whitespace()
            .nth(1)
            .map(str::to_string)
            .context("no fingerprint")
    })?;
    let mut cmd = ssh(&c, port);
    cmd.env("SSH_AUTH_SOCK", &agent_sock)
        .arg("-A")
        .arg(&user)
        .arg("--")
        .arg("ssh-add -l; echo rc=$?");
    let out = blocking(|| run(cmd, b""));
    stop(agent);
    let out = out?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&fingerprint) && stdout.contains("rc=0"),
        "{}",
        text(&out)
    );
    Ok(())
}

/// Bytes the tenant sends through the remote forward (and gets back).
const ECHO_BYTES: usize = 256 * 400;
const ECHO_PY: &str = "import socket,sys\ns=socket.create_connection(('127.0.0.1',int(sys.argv[1])),timeout=20)\nd=bytes(range(256))*400\ns.sendall(d)\ns.shutdown(socket.SHUT_WR)\nb=b''\nwhile True:\n  x=s.recv(65536)\n  if not x: break\n  b+=x\nprint('echoed' if b==d else 'differs %d'%len(b))\n";
const CONNECT_UNIX_PY: &str = "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.settimeout(20)\ns.connect(sys.argv[1])\nprint(s.makefile().read(),end='')\n";

/// A TCP service on the client's loopback that sends back what it reads, once the peer's side
/// ends; `received` counts the bytes it got.
fn echo_service(received: Arc<std::sync::atomic::AtomicUsize>) -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let mut buf = Vec::new();
            if c.read_to_end(&mut buf).is_ok() {
                received.fetch_add(buf.len(), std::sync::atomic::Ordering::SeqCst);
                let _ = std::io::Write::write_all(&mut c, &buf);
            }
        }
    });
    Ok(port)
}

/// A TCP service on the client's loopback that greets every connection with `msg`.
fn banner(msg: &'static str) -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let _ = std::io::Write::write_all(&mut c, msg.as_bytes());
        }
    });
    Ok(port)
}

/// `ssh` through the front with `args` before the destination, at INFO so that the
/// "Allocated port" line reaches stderr.
fn forwarding(c: &Cluster, args: &[&str]) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.args(["-o", "LogLevel=INFO"])
        .args(c.h.ssh_opts())
        .arg("-p")
        .arg(c.front.port().to_string())
        .args(args)
        .arg(format!("{}@127.0.0.1", c.h.user()));
    cmd.stdin(Stdio::null());
    cmd
}

/// Reads the client's stderr until it reports the port allocated for its remote forward.
fn allocated_port(child: &mut Child) -> Result<u16> {
    let err = child.stderr.take().context("stderr")?;
    let mut lines = BufReader::new(err).lines();
    loop {
        let line = lines
            .next()
            .context("ssh ended before reporting its port")??;
        if let Some(rest) = line.strip_prefix("Allocated port ") {
            let p = rest.split_whitespace().next().unwrap_or_default().parse()?;
            std::thread::spawn(move || for _ in lines {});
            return Ok(p);
        }
    }
}

/// A real `ssh-agent` listening at `dir/name`.
async fn start_agent(dir: &std::path::Path, name: &str) -> Result<(Child, std::path::PathBuf)> {
    let sock = dir.join(name);
    let agent = Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&sock)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        anyhow::ensure!(Instant::now() < deadline, "ssh-agent never listened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((agent, sock))
}

fn stop(mut c: Child) {
    let _ = c.kill();
    let _ = c.wait();
}

/// Only registered fronts get in, only as the server's owner, and the front refuses a node
/// whose host key is not the pinned one or that does not answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_hop_trusts_only_pinned_nodes_and_registered_fronts() -> Result<()> {
    // The node forbids remote and unix-socket forwards and agent forwarding; the front allows
    // them.
    let c = cluster("hoptrust", |cfg| {
        cfg.allow_remote_forwarding = false;
        cfg.allow_streamlocal_forwarding = false;
        cfg.allow_agent_forwarding = false;
    })
    .await?;
    let user = c.h.user();

    // Forwards the node's policy refuses are refused at the client, not hung.
    for fwd in ["0:127.0.0.1:9", "/tmp/hop-refused.sock:127.0.0.1:9"] {
        let mut cmd = forwarding(&c, &["-o", "ExitOnForwardFailure=yes", "-R", fwd]);
        cmd.arg("echo should-not-run");
        let out = blocking(|| run(cmd, b""))?;
        assert!(!out.status.success(), "-R {fwd}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("forwarding failed"),
            "-R {fwd}: {}",
            text(&out)
        );
    }
    // Agent forwarding the node refuses: the session runs without it and says why.
    let dir = c.h.dir.path();
    let (agent, agent_sock) = start_agent(dir, "refused-agent.sock").await?;
    let mut cmd = ssh(&c, c.front.port());
    cmd.env("SSH_AUTH_SOCK", &agent_sock)
        .arg("-A")
        .arg(format!("{user}@127.0.0.1"))
        .arg("echo sock=${SSH_AUTH_SOCK:-none}");
    let out = blocking(|| run(cmd, b""));
    stop(agent);
    let out = out?;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "sock=none\n",
        "{}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("agent forwarding unavailable"),
        "{}",
        text(&out)
    );

    // A tenant's own key straight at the hop endpoint: refused whatever the user name says.
    for name in [user.clone(), format!("{user}/{}/127.0.0.1", c.h.account)] {
        let mut cmd = ssh(&c, c.node.port());
        cmd.arg(format!("{name}@127.0.0.1")).arg("true");
        let out = blocking(|| run(cmd, b""))?;
        assert!(!out.status.success(), "{name}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
            "{}",
            text(&out)
        );
    }

    // The front's key, asserting an account that does not own the server: refused.
    let key_file = c.h.dir.path().join("front_key");
    std::fs::write(
        &key_file,
        c.front_key
            .to_openssh(LineEnding::LF)
            .context("encode front key")?
            .as_bytes(),
    )?;
    std::fs::set_permissions(
        &key_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    let with_front_key = |name: &str| {
        let mut cmd = Command::new("ssh");
        cmd.args(integration_tests::gateway::client_opts(&key_file))
            .arg("-p")
            .arg(c.node.port().to_string())
            .arg(format!("{name}@127.0.0.1"))
            .arg("echo via-hop");
        cmd
    };
    let out = blocking(|| run(with_front_key(&format!("{user}/mallory/127.0.0.1")), b""))?;
    assert!(!out.status.success(), "{}", text(&out));
    // The same key with the true owner works (this is what the front does).
    let out = blocking(|| {
        run(
            with_front_key(&format!("{user}/{}/127.0.0.1", c.h.account)),
            b"",
        )
    })?;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "via-hop\n");

    // A removed front is refused within the key cache's lifetime.
    c.h.store.remove_front("f1").await?;
    let deadline = Instant::now() + hop_ttl() + Duration::from_secs(10);
    loop {
        let out = blocking(|| c.h.ssh_exec_at(c.front.port(), "true"))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("refused the login relay"), "{}", text(&out));
            break;
        }
        assert!(Instant::now() < deadline, "a removed front still relays");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    c.h.store
        .register_front("f1", &public_line(&c.front_key)?)
        .await?;

    // A node presenting another host key than the pin: the front will not talk to it.
    c.h.store.forget_node_key("n2").await?;
    let other = ed25519()?;
    c.h.store
        .register_node("n2", &c.node.to_string(), &public_line(&other)?)
        .await?;
    let out = blocking(|| c.h.ssh_exec_at(c.front.port(), "true"))?;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is unreachable; try again later"),
        "{}",
        text(&out)
    );

    // A node that does not answer: one clear line, within the hop's connect bound.
    c.h.store.forget_node_key("n2").await?;
    c.h.store
        .register_node("n2", "127.0.0.1:9", &public_line(&c.node_key)?)
        .await?;
    let t = Instant::now();
    let out = blocking(|| c.h.ssh_exec_at(c.front.port(), "true"))?;
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{user}'s host n2 is unreachable; try again later")),
        "{}",
        text(&out)
    );
    assert!(
        t.elapsed() < hop::HOP_CONNECT_TIMEOUT + Duration::from_secs(15),
        "took {:?}",
        t.elapsed()
    );
    Ok(())
}

fn hop_ttl() -> Duration {
    Duration::from_secs(5)
}

trait At {
    fn ssh_exec_at(&self, port: u16, cmd: &str) -> Result<Output>;
}

impl At for GatewayHarness {
    fn ssh_exec_at(&self, port: u16, cmd: &str) -> Result<Output> {
        let mut c = Command::new("ssh");
        c.args(self.ssh_opts())
            .arg("-p")
            .arg(port.to_string())
            .arg(format!("{}@127.0.0.1", self.user()))
            .arg("--")
            .arg(cmd)
            .stdin(Stdio::null());
        let mut child = c
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn ssh")?;
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        let out = child.wait_with_output().context("wait ssh")?;
        Ok(Output {
            stderr: err.into_bytes(),
            ..out
        })
    }
}
