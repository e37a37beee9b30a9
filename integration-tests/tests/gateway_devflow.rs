//! Developer workflows through the gateway with the real OpenSSH client: remote forwards
//! (`-R`, port 0 and the bind policy), unix-socket forwards both ways, agent forwarding with a
//! real `ssh-agent` and a git clone over ssh, `::1` on the container's loopback, the operator
//! switches and the attach path's refusals. Every listener and socket is the container's own:
//! traffic goes only to loopback (the test's own 127.0.0.1 services) and to the container.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use integration_tests::gateway::{GatewayHarness, Options};

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// A TCP service on the test host's loopback that greets every connection with `msg`.
fn banner(msg: &'static str) -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let mut c = c;
            let _ = std::io::Write::write_all(&mut c, msg.as_bytes());
        }
    });
    Ok(port)
}

/// `ssh` to the harness's server with `args` before the destination (INFO logging so that
/// "Allocated port" lines reach stderr).
fn ssh_cmd(h: &GatewayHarness, args: &[&str]) -> Command {
    let mut c = Command::new("ssh");
    c.args(["-o", "LogLevel=INFO"])
        .args(h.ssh_opts())
        .arg("-p")
        .arg(h.addr.port().to_string())
        .args(args)
        .arg(format!("{}@127.0.0.1", h.user()));
    c.stdin(Stdio::null());
    c
}

/// Reads the client's stderr until it has reported `n` allocated ports (in request order).
fn allocated_ports(child: &mut Child, n: usize) -> Result<Vec<u16>> {
    let err = child.stderr.take().context("stderr")?;
    let mut lines = BufReader::new(err).lines();
    let mut ports = Vec::new();
    while ports.len() < n {
        let line = lines
            .next()
            .context("ssh ended before reporting its ports")??;
        if let Some(rest) = line.strip_prefix("Allocated port ") {
            let p = rest.split_whitespace().next().unwrap_or_default();
            ports.push(p.parse()?);
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Ok(ports)
}

const CONNECT_PY: &str = "import socket,sys\ntry:\n  s=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=20)\nexcept OSError as e:\n  print('refused',type(e).__name__);sys.exit(1)\nprint(s.makefile().read(),end='')\n";
const CONNECT_UNIX_PY: &str = "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.settimeout(20)\ns.connect(sys.argv[1])\nprint(s.makefile().read(),end='')\n";

fn user_of(h: &GatewayHarness) -> Result<String> {
    let out = blocking(|| h.ssh_exec("id -un", b""))?;
    anyhow::ensure!(out.status.success(), "id -un failed");
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `docker exec [-u user] container ARGS…` bypassing the gateway.
fn in_container(h: &GatewayHarness, user: Option<&str>, args: &[&str]) -> Result<Output> {
    let id = h.server.context("server")?;
    let mut c = Command::new("docker");
    c.arg("exec");
    if let Some(u) = user {
        c.args(["-u", u]);
    }
    c.arg(h.container(id)).args(args);
    blocking(|| c.output()).context("docker exec")
}

/// Polls `cond` (a command in the container exiting 0) until it holds.
async fn wait_in_container(h: &GatewayHarness, what: &str, args: &[&str]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if in_container(h, None, args)?.status.success() {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{what} never happened");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn audits(h: &GatewayHarness, method: &str, outcome: &str) -> Result<Vec<String>> {
    Ok(h.store
        .audit_events(5000)
        .await?
        .into_iter()
        .filter(|e| e.event.method.as_deref() == Some(method) && e.event.outcome == outcome)
        .map(|e| e.event.detail.to_string())
        .collect())
}

/// Waits until an audit record of `method` with `outcome` exists (some are written by a task
/// of their own, after the client has its answer).
async fn wait_audit(h: &GatewayHarness, method: &str, outcome: &str) -> Result<Vec<String>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = audits(h, method, outcome).await?;
        if !found.is_empty() {
            return Ok(found);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no {method} {outcome} audit record"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A real `ssh-agent` listening at `dir/name` (OpenSSH's client only asks for agent
/// forwarding when it can reach an agent).
async fn start_agent(dir: &Path, name: &str) -> Result<(Child, std::path::PathBuf)> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn remote_forwards_listen_in_the_container_on_its_loopback() -> Result<()> {
    let h = GatewayHarness::start("devflow-r").await?;
    let id = h.server.context("server")?;
    let own = h
        .provisioner
        .ensure_running(id)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .address;
    let p1 = banner("hello through -R\n")?;
    let p2 = banner("hello through a wildcard -R\n")?;

    // Port 0 (the allocated port comes back) and the wildcard, which the loopback policy binds
    // to the container's loopback.
    let mut fwd = ssh_cmd(
        &h,
        &[
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-R",
            &format!("0:127.0.0.1:{p1}"),
            "-R",
            &format!("0.0.0.0:0:127.0.0.1:{p2}"),
        ],
    )
    .stderr(Stdio::piped())
    .stdout(Stdio::null())
    .spawn()?;
    let ports = blocking(|| allocated_ports(&mut fwd, 2))?;
    let (a, b) = (ports[0].to_string(), ports[1].to_string());
    let out = in_container(&h, None, &["python3", "-c", CONNECT_PY, "127.0.0.1", &a])?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello through -R\n");
    let out = in_container(&h, None, &["python3", "-c", CONNECT_PY, "127.0.0.1", &b])?;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello through a wildcard -R\n"
    );
    // Not on the container's network address: the loopback policy holds for the wildcard.
    let own_s = own.to_string();
    let out = in_container(&h, None, &["python3", "-c", CONNECT_PY, &own_s, &b])?;
    assert!(
        !out.status.success(),
        "the wildcard listener answered on {own}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    stop(fwd);

    // A host address and the container's own address (not allowed under `loopback`): refused.
    let host_gw = h.provisioner.network().gateway;
    for bind in [host_gw.to_string(), own.to_string()] {
        let out = blocking(|| {
            ssh_cmd(
                &h,
                &[
                    "-o",
                    "ExitOnForwardFailure=yes",
                    "-R",
                    &format!("{bind}:18082:127.0.0.1:{p1}"),
                ],
            )
            .arg("echo should-not-run")
            .output()
        })?;
        assert!(!out.status.success(), "-R on {bind} was accepted");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("forwarding failed"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rejected = audits(&h, "tcpip-forward", "rejected").await?;
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    assert_eq!(audits(&h, "tcpip-forward", "listening").await?.len(), 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn remote_forwards_under_the_container_policy_and_a_flood() -> Result<()> {
    let mut opts = Options::default();
    opts.ssh.remote_forward_bind = gateway::config::RemoteForwardBind::Container;
    let h = GatewayHarness::start_with("devflow-rc", opts).await?;
    let id = h.server.context("server")?;
    let own = h
        .provisioner
        .ensure_running(id)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .address;
    let p = banner("hello on the container address\n")?;
    let mut fwd = ssh_cmd(
        &h,
        &[
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-R",
            &format!("{own}:0:127.0.0.1:{p}"),
        ],
    )
    .stderr(Stdio::piped())
    .stdout(Stdio::null())
    .spawn()?;
    let ports = blocking(|| allocated_ports(&mut fwd, 1))?;
    let (own_s, port_s) = (own.to_string(), ports[0].to_string());
    let out = in_container(&h, None, &["python3", "-c", CONNECT_PY, &own_s, &port_s])?;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello on the container address\n"
    );
    stop(fwd);

    // Thousands of tcpip-forward requests on one connection: at most the per-connection
    // listener limit exist in the container, the rest are refused, and the connection still
    // serves its session.
    let max = h.shared.cfg.max_remote_listeners_per_connection;
    let mut args: Vec<String> = vec!["-o".into(), "ExitOnForwardFailure=no".into()];
    for i in 0..2000u32 {
        args.push("-R".into());
        args.push(format!("127.0.0.1:{}:127.0.0.1:9", 20000 + i));
    }
    let count = "import sys\nn=0\nfor f in ('/proc/net/tcp','/proc/net/tcp6'):\n  for l in open(f).readlines()[1:]:\n    x=l.split()\n    p=int(x[1].split(':')[1],16)\n    if x[3]=='0A' and 20000<=p<22000: n+=1\nprint('listeners',n)";
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = blocking(|| {
        ssh_cmd(&h, &refs)
            .arg(format!("python3 -c \"{count}\""))
            .output()
    })?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .last()
            .unwrap_or_default()
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("listeners {max}")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unix_socket_forwards_both_ways_as_the_session_user() -> Result<()> {
    let h = GatewayHarness::start("devflow-unix").await?;
    let user = user_of(&h)?;
    let serve = "import socket,os,sys\np=sys.argv[1]\ns=socket.socket(socket.AF_UNIX)\ns.bind(p)\ns.listen(8)\nwhile True:\n  c,_=s.accept()\n  c.sendall(b'hello over a unix socket\\n')\n  c.close()\n";
    // One socket the session user owns, one only root may open.
    in_container(
        &h,
        Some(&user),
        &[
            "sh",
            "-c",
            &format!("nohup python3 -c \"{serve}\" /tmp/app.sock >/dev/null 2>&1 &"),
        ],
    )?;
    in_container(
        &h,
        None,
        &[
            "sh",
            "-c",
            &format!(
                "mkdir -m 700 -p /run/private && nohup python3 -c \"{serve}\" /run/private/s.sock >/dev/null 2>&1 &"
            ),
        ],
    )?;
    wait_in_container(&h, "app socket", &["test", "-S", "/tmp/app.sock"]).await?;
    wait_in_container(&h, "root socket", &["test", "-S", "/run/private/s.sock"]).await?;

    let dir = h.dir.path();
    let (a, b) = (dir.join("a.sock"), dir.join("b.sock"));
    let fwd = ssh_cmd(
        &h,
        &[
            "-N",
            "-L",
            &format!("{}:/tmp/app.sock", a.display()),
            "-L",
            &format!("{}:/run/private/s.sock", b.display()),
        ],
    )
    .stderr(Stdio::null())
    .stdout(Stdio::null())
    .spawn()?;
    let read_unix = |p: &Path| -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut s = loop {
            match std::os::unix::net::UnixStream::connect(p) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(e) => return Err(e.into()),
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut buf = String::new();
        s.read_to_string(&mut buf)?;
        Ok(buf)
    };
    assert_eq!(blocking(|| read_unix(&a))?, "hello over a unix socket\n");
    // The root-only socket: the channel is refused (closed at once, nothing read), not hung.
    assert_eq!(blocking(|| read_unix(&b))?, "");
    stop(fwd);
    // The refusal is audited after the client has its answer: poll.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let failures = audits(&h, "direct-streamlocal", "failure").await?;
        if failures.iter().any(|d| d.contains("ermission denied")) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no permission-denied failure audited: {failures:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // streamlocal-forward: a socket in the container, owned by the session user, that reaches
    // the client's side; removed when the client goes.
    let p = banner("hello through a remote unix socket\n")?;
    let fwd = ssh_cmd(
        &h,
        &[
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-R",
            &format!("/tmp/rev.sock:127.0.0.1:{p}"),
        ],
    )
    .stderr(Stdio::null())
    .stdout(Stdio::null())
    .spawn()?;
    wait_in_container(&h, "remote unix socket", &["test", "-S", "/tmp/rev.sock"]).await?;
    let out = in_container(&h, None, &["stat", "-c", "%U", "/tmp/rev.sock"])?;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), user);
    let out = in_container(
        &h,
        Some(&user),
        &["python3", "-c", CONNECT_UNIX_PY, "/tmp/rev.sock"],
    )?;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello through a remote unix socket\n"
    );
    // A path the user may not create: refused.
    let out = blocking(|| {
        ssh_cmd(
            &h,
            &[
                "-o",
                "ExitOnForwardFailure=yes",
                "-R",
                &format!("/run/private/x.sock:127.0.0.1:{p}"),
            ],
        )
        .arg("echo should-not-run")
        .output()
    })?;
    assert!(!out.status.success());
    stop(fwd);
    wait_in_container(
        &h,
        "removal of the remote socket",
        &["sh", "-c", "! test -e /tmp/rev.sock"],
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_container_loopback_has_ipv6() -> Result<()> {
    let h = GatewayHarness::start("devflow-v6").await?;
    let user = user_of(&h)?;
    let serve = "import socket\ns=socket.socket(socket.AF_INET6)\ns.bind(('::1',8081))\ns.listen(8)\nwhile True:\n  c,_=s.accept()\n  c.sendall(b'hello on ::1\\n')\n  c.close()\n";
    in_container(
        &h,
        Some(&user),
        &[
            "sh",
            "-c",
            &format!("nohup python3 -c \"{serve}\" >/dev/null 2>&1 &"),
        ],
    )?;
    wait_in_container(
        &h,
        "::1 service",
        &[
            "sh",
            "-c",
            "grep -q ' 00000000000000000000000001000000:1F91 ' /proc/net/tcp6",
        ],
    )
    .await?;
    for dest in ["[::1]:8081", "localhost:8081"] {
        let out = blocking(|| {
            ssh_cmd(&h, &["-W", dest])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .output()
        })?;
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "hello on ::1\n",
            "{dest}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A free port on the test host's loopback.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn run(c: &mut Command) -> Result<()> {
    let out = c.output()?;
    anyhow::ensure!(
        out.status.success(),
        "{:?}: {}",
        c,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_forwarding_clones_over_ssh_with_a_key_only_the_client_holds() -> Result<()> {
    let h = GatewayHarness::start("devflow-agent").await?;
    let id = h.server.context("server")?;
    let user = user_of(&h)?;
    let dir = h.dir.path().to_path_buf();

    // The client's agent, holding a key that exists nowhere else.
    let (agent, agent_sock) = start_agent(&dir, "client-agent.sock").await?;
    let key = dir.join("gitkey");
    blocking(|| {
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key))
    })?;
    blocking(|| {
        run(Command::new("ssh-add")
            .arg(&key)
            .env("SSH_AUTH_SOCK", &agent_sock))
    })?;

    // A git server over ssh: an sshd of the test's own on the host's loopback, which the
    // container reaches through a remote forward of the same connection.
    let sshd_port = free_port()?;
    let host_key = dir.join("sshd_host_key");
    blocking(|| {
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&host_key))
    })?;
    std::fs::copy(dir.join("gitkey.pub"), dir.join("git_authorized_keys"))?;
    let cfg = dir.join("sshd_config");
    std::fs::write(
        &cfg,
        format!(
            "Port {sshd_port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nPermitRootLogin prohibit-password\nStrictModes no\nPidFile none\n",
            host_key.display(),
            dir.join("git_authorized_keys").display()
        ),
    )?;
    std::fs::create_dir_all("/run/sshd")?;
    let sshd = Command::new("/usr/sbin/sshd")
        .args(["-D", "-e", "-f"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let repo = dir.join("repo.git");
    let work = dir.join("work");
    blocking(|| -> Result<()> {
        run(Command::new("git")
            .args(["init", "-q", "--bare"])
            .arg(&repo))?;
        run(Command::new("git").args(["init", "-q"]).arg(&work))?;
        std::fs::write(work.join("README"), "cloned through a forwarded agent\n")?;
        let git = |args: &[&str]| {
            run(Command::new("git")
                .arg("-C")
                .arg(&work)
                .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
                .args(args))
        };
        git(&["add", "README"])?;
        git(&["commit", "-q", "-m", "one"])?;
        git(&[
            "push",
            "-q",
            &repo.display().to_string(),
            "HEAD:refs/heads/main",
        ])?;
        Ok(())
    })?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", sshd_port)).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "sshd never listened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // git in the container (the image gains it from its package list; copied for older ones).
    if !in_container(&h, None, &["sh", "-c", "command -v git"])?
        .status
        .success()
    {
        blocking(|| {
            run(Command::new("docker")
                .arg("cp")
                .arg("/usr/local/bin/git")
                .arg(format!("{}:/usr/local/bin/git", h.container(id))))
        })?;
    }

    let script = format!(
        "set -e; ssh-add -l >/dev/null; echo agent-ok; \
         stat -c 'sock %a %U' \"$SSH_AUTH_SOCK\"; stat -c 'dir %a %U' \"$(dirname \"$SSH_AUTH_SOCK\")\"; \
         echo \"$SSH_AUTH_SOCK\" > /tmp/last-agent-sock; \
         GIT_SSH_COMMAND='ssh -p 2022 -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes' \
         git clone -q -b main root@127.0.0.1:{} /tmp/clone-$$ 2>&1; cat /tmp/clone-$$/README",
        repo.display()
    );
    let out = blocking(|| {
        ssh_cmd(
            &h,
            &["-A", "-R", &format!("127.0.0.1:2022:127.0.0.1:{sshd_port}")],
        )
        .env("SSH_AUTH_SOCK", &agent_sock)
        .arg(&script)
        .output()
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("agent-ok"), "{stdout}");
    assert!(stdout.contains(&format!("sock 600 {user}")), "{stdout}");
    assert!(stdout.contains(&format!("dir 700 {user}")), "{stdout}");
    assert!(
        stdout.contains("cloned through a forwarded agent"),
        "{stdout}"
    );
    // The socket and its directory go with the session.
    let sock = in_container(&h, None, &["cat", "/tmp/last-agent-sock"])?;
    let sock = String::from_utf8_lossy(&sock.stdout).trim().to_string();
    let parent = Path::new(&sock)
        .parent()
        .context("socket dir")?
        .display()
        .to_string();
    wait_in_container(
        &h,
        "removal of the agent socket",
        &["sh", "-c", &format!("! test -e {parent}")],
    )
    .await?;

    // A client that refuses the agent channel (its agent went away after the session asked for
    // forwarding): the tool in the container gets an error at once, not a hang, and the
    // refusal is audited.
    let (gone, gone_sock) = start_agent(&dir, "short-lived-agent.sock").await?;
    let waiting = ssh_cmd(&h, &["-A"])
        .env("SSH_AUTH_SOCK", &gone_sock)
        .arg("while [ ! -e /tmp/go ]; do sleep 0.1; done; ssh-add -l; echo rc=$?")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    wait_in_container(
        &h,
        "a session waiting",
        &["sh", "-c", "ls -d /tmp/ssh-* >/dev/null 2>&1"],
    )
    .await?;
    stop(gone);
    in_container(&h, None, &["touch", "/tmp/go"])?;
    let out = blocking(|| waiting.wait_with_output())?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("rc=") && !stdout.contains("rc=0"),
        "{stdout}"
    );
    let refused = wait_audit(&h, "auth-agent", "rejected").await?;
    assert!(refused[0].contains("refused"), "{refused:?}");
    stop(sshd);
    stop(agent);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn switches_off_and_the_attach_path_refuse_clearly() -> Result<()> {
    // Operator switches off: each refusal audited, the session itself works.
    let mut opts = Options::default();
    opts.ssh.allow_agent_forwarding = false;
    opts.ssh.allow_remote_forwarding = false;
    opts.ssh.allow_streamlocal_forwarding = false;
    let h = GatewayHarness::start_with("devflow-off", opts).await?;
    let out = blocking(|| {
        ssh_cmd(
            &h,
            &[
                "-o",
                "ExitOnForwardFailure=yes",
                "-R",
                "127.0.0.1:0:127.0.0.1:9",
            ],
        )
        .arg("echo should-not-run")
        .output()
    })?;
    assert!(!out.status.success(), "-R was accepted");
    let out = blocking(|| {
        ssh_cmd(
            &h,
            &[
                "-o",
                "ExitOnForwardFailure=yes",
                "-R",
                "/tmp/r.sock:127.0.0.1:9",
            ],
        )
        .arg("echo should-not-run")
        .output()
    })?;
    assert!(!out.status.success(), "-R to a socket was accepted");
    let agent_dir = tempfile::tempdir()?;
    let (agent, agent_sock) = start_agent(agent_dir.path(), "agent.sock").await?;
    let out = blocking(|| {
        ssh_cmd(&h, &["-A"])
            .env("SSH_AUTH_SOCK", &agent_sock)
            .arg("echo ${SSH_AUTH_SOCK:-no-agent}")
            .output()
    })?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "no-agent\n");
    assert_eq!(audits(&h, "tcpip-forward", "rejected").await?.len(), 1);
    assert_eq!(
        audits(&h, "streamlocal-forward", "rejected").await?.len(),
        1
    );
    let refused = wait_audit(&h, "auth-agent", "rejected").await?;
    assert!(refused[0].contains("disabled"), "{refused:?}");
    drop(h);

    // The attach path (no agent in the container): a clear refusal, never a hang.
    let opts = Options {
        agent_mount: false,
        ..Options::default()
    };
    let h = GatewayHarness::start_with("devflow-attach", opts).await?;
    let out = blocking(|| {
        ssh_cmd(
            &h,
            &[
                "-o",
                "ExitOnForwardFailure=yes",
                "-R",
                "127.0.0.1:0:127.0.0.1:9",
            ],
        )
        .arg("echo should-not-run")
        .output()
    })?;
    assert!(!out.status.success(), "-R was accepted on the attach path");
    let failures = audits(&h, "tcpip-forward", "failure").await?;
    assert!(
        failures.iter().any(|d| d.contains("session agent")),
        "{failures:?}"
    );
    let out = blocking(|| {
        ssh_cmd(&h, &["-A"])
            .env("SSH_AUTH_SOCK", &agent_sock)
            .arg("echo ${SSH_AUTH_SOCK:-no-agent}")
            .output()
    })?;
    stop(agent);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "no-agent\n");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("agent forwarding unavailable"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A remote forward whose reader in the container never reads: the client's side can only send
/// one channel window ahead, so the gateway holds no more than that, and it keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_remote_forward_into_a_reader_that_never_reads_is_bounded() -> Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let h = GatewayHarness::start("devflow-slow").await?;
    // The client's side: a source that writes as fast as it is allowed to.
    let written = Arc::new(AtomicU64::new(0));
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let src = l.local_addr()?.port();
    {
        let written = written.clone();
        std::thread::spawn(move || {
            if let Ok((mut c, _)) = l.accept() {
                let chunk = vec![0u8; 1 << 20];
                while std::io::Write::write_all(&mut c, &chunk).is_ok() {
                    written.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
            }
        });
    }
    let mut fwd = ssh_cmd(
        &h,
        &[
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-R",
            &format!("127.0.0.1:0:127.0.0.1:{src}"),
        ],
    )
    .stderr(Stdio::piped())
    .stdout(Stdio::null())
    .spawn()?;
    let port = blocking(|| allocated_ports(&mut fwd, 1))?[0];
    let before = GatewayHarness::rss_kib()?;
    // In the container: connect, never read.
    let idle = format!(
        "import socket,time\ns=socket.create_connection(('127.0.0.1',{port}))\nprint('connected',flush=True)\ntime.sleep(600)\n"
    );
    let mut reader = Command::new("docker")
        .args(["exec", "-i", &h.container(h.server.context("server")?)])
        .args(["python3", "-c", &idle])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    let stdout = reader.stdout.take().context("stdout")?;
    blocking(|| BufReader::new(stdout).read_line(&mut line))?;
    assert_eq!(line, "connected\n");
    // The source stalls once the window and the socket buffers are full: wait until its count
    // stops moving (or passes what any bound allows, which fails below).
    let limit: u64 = 256 << 20;
    let mut last = 0;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = written.load(Ordering::Relaxed);
        if now >= limit || (now > 0 && now == last) {
            break;
        }
        last = now;
    }
    let sent = written.load(Ordering::Relaxed);
    let grown = GatewayHarness::rss_kib()?.saturating_sub(before);
    let window = u64::from(h.shared.cfg.window_size);
    assert!(
        sent < limit,
        "the client side sent {sent} bytes into a reader that never reads"
    );
    assert!(
        grown * 1024 < 4 * window + (32 << 20),
        "the gateway grew by {grown} KiB (window {window})"
    );
    // The gateway still serves sessions meanwhile.
    let out = blocking(|| h.ssh_exec("echo alive", b""))?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "alive\n");
    let _ = reader.kill();
    let _ = reader.wait();
    stop(fwd);
    Ok(())
}

/// Connections accepted on a remote forward's listener that the client has not confirmed yet
/// are bounded per connection: beyond the limit they are closed at once and the refusal is
/// audited. The client's target here never completes a TCP handshake (a listener whose accept
/// queue is full drops SYNs), so OpenSSH keeps each `forwarded-tcpip` open unanswered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_waiting_for_the_client_are_bounded() -> Result<()> {
    let mut opts = Options::default();
    opts.ssh.max_pending_forwarded_per_connection = 2;
    let h = GatewayHarness::start_with("devflow-pending", opts).await?;
    let stuck = tokio::net::TcpSocket::new_v4()?;
    stuck.bind("127.0.0.1:0".parse()?)?;
    let stuck = stuck.listen(0)?;
    let target = stuck.local_addr()?.port();
    let mut fwd = ssh_cmd(
        &h,
        &[
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-R",
            &format!("127.0.0.1:0:127.0.0.1:{target}"),
        ],
    )
    .stderr(Stdio::piped())
    .stdout(Stdio::null())
    .spawn()?;
    let port = blocking(|| allocated_ports(&mut fwd, 1))?[0];
    // In the container: eight connections held open until one is closed by the gateway.
    let many = format!(
        "import socket,select\ncs=[socket.create_connection(('127.0.0.1',{port})) for _ in range(8)]\nr,_,_=select.select(cs,[],[],120)\nprint('closed',len(r))\n"
    );
    let out = in_container(&h, None, &["python3", "-c", &many])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("closed ") && !stdout.starts_with("closed 0"),
        "{stdout}"
    );
    let rejected = wait_audit(&h, "forwarded-tcpip", "rejected").await?;
    assert!(
        rejected
            .iter()
            .any(|d| d.contains("too many connections waiting for the client")),
        "{rejected:?}"
    );
    // The gateway keeps serving.
    let out = blocking(|| h.ssh_exec("echo alive", b""))?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "alive\n");
    stop(fwd);
    drop(stuck);
    Ok(())
}
