//! berth on a user-namespaced engine (a dockerd of the test's own with `--userns-remap`): a
//! tenant's uid 0 is an unprivileged host uid, tenant root cannot write a host sysctl, load a
//! module or mount the host's file systems (not even with the `caps` grant), and the gateway's
//! features work there: sessions on the agent path, SFTP, forwards, on-demand start,
//! `server set`, the resolver's local names, and the engine's mode is detected.
//!
//! Each test starts its own engine ([`RemappedDaemon`]) and removes it in `Drop`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use integration_tests::gateway::{GatewayHarness, Options, sha256_file};
use integration_tests::userns::{RemappedDaemon, host_uids};
use tenants::{DindMode, ServerChange, ServerId};

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// A remapped engine holding the test image, and a gateway on it with one running server.
async fn gateway_on_remapped(
    test: &str,
    dind: DindMode,
) -> Result<(RemappedDaemon, GatewayHarness)> {
    let daemon = blocking(RemappedDaemon::start)?;
    let image = integration_tests::gateway::test_image();
    blocking(|| daemon.load_images(&[&image]))?;
    let opts = Options {
        docker_host: Some(daemon.host()),
        dind,
        ..Options::default()
    };
    let h = GatewayHarness::start_with(test, opts).await?;
    Ok((daemon, h))
}

/// `ssh server<N> -- cmd` → stdout, failing with stderr when the command fails.
fn ssh_ok(h: &GatewayHarness, cmd: &str) -> Result<String> {
    let out = h.ssh_exec(cmd, b"")?;
    if !out.status.success() {
        bail!(
            "ssh -- {cmd} failed ({}): {} {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// The host pids whose user namespace is the one of `pid`.
fn pids_in_userns_of(pid: u32) -> Result<Vec<u32>> {
    let target = std::fs::read_link(format!("/proc/{pid}/ns/user"))
        .with_context(|| format!("read /proc/{pid}/ns/user"))?;
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").context("read /proc")?.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if std::fs::read_link(format!("/proc/{p}/ns/user"))
            .ok()
            .as_ref()
            == Some(&target)
        {
            out.push(p);
        }
    }
    Ok(out)
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenant_root_is_an_unprivileged_host_uid_and_sessions_take_the_agent_path() -> Result<()> {
    let (daemon, h) = gateway_on_remapped("usernsuid", DindMode::Off).await?;
    let id = h.server.context("server")?;
    let range = daemon.range;

    // Inside, the tenant's namespace maps 0 to the engine's range.
    let map = blocking(|| ssh_ok(&h, "cat /proc/self/uid_map"))?;
    let fields: Vec<&str> = map.split_whitespace().collect();
    assert_eq!(
        fields,
        ["0", &range.start.to_string(), &range.count.to_string()],
        "uid_map inside: {map}"
    );
    // The session runs under the agent (its parent), not Docker's exec stream.
    let parent = blocking(|| ssh_ok(&h, "cat /proc/$PPID/comm"))?;
    assert!(
        parent.starts_with("berth-agent"),
        "session parent: {parent}"
    );

    // From the host: PID 1 (root inside) is the range's first uid, and every process of the
    // tenant — the agent and a live session's process included — is a uid of the range.
    let pid1 = blocking(|| daemon.pid_of(&h.container(id)))?;
    assert_eq!(host_uids(pid1)?, [range.start; 4], "PID 1's host uids");
    assert_ne!(range.start, 0);
    let mut session = h
        .ssh()
        .arg(format!("{}@127.0.0.1", h.user()))
        .args(["--", "exec sleep 300"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let pids = loop {
        let pids = pids_in_userns_of(pid1)?;
        let names: Vec<String> = pids.iter().map(|p| comm(*p)).collect();
        if names.iter().any(|n| n == "sleep") && names.iter().any(|n| n.starts_with("berth-agent"))
        {
            break pids;
        }
        ensure!(
            Instant::now() < deadline,
            "no sleep session and agent in the tenant's namespace: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for p in &pids {
        let uids = host_uids(*p)?;
        assert!(
            uids.iter().all(|u| range.contains(*u)),
            "{} (pid {p}) runs as host uids {uids:?}, outside {range:?}",
            comm(*p)
        );
    }
    let _ = session.kill();
    let _ = session.wait();
    Ok(())
}

/// What tenant root tries against the host (`DEV` is the host root file system's device
/// number, `MAJ MIN`), printing a word for each attempt that succeeds.
const ESCAPES: &str = r#"
set +e
# Each write puts back the value already there: a success proves access and changes nothing.
v=$(cat /proc/sys/kernel/sysrq)
echo "$v" > /proc/sys/kernel/sysrq 2>/dev/null && echo sysctl-written
# A procfs of its own (possible with SYS_ADMIN in its own namespaces): host sysctls stay
# checked against the host's namespace.
mkdir -p /tmp/p && mount -t proc proc /tmp/p 2>/dev/null && { echo "$v" > /tmp/p/sys/kernel/sysrq 2>/dev/null && echo own-procfs-sysctl-written; }
python3 -c 'import ctypes,os,sys
libc=ctypes.CDLL(None,use_errno=True)
# finit_module: the capability check comes before the file is read.
fd=os.open("/etc/hostname",os.O_RDONLY)
r=libc.syscall(313,fd,b"",0)
sys.exit(0 if r==0 else ctypes.get_errno())'
echo "module-errno=$?"
mkdir -p /mnt/host
mknod /tmp/hostdisk b DEV 2>/dev/null && echo mknod-made
mount -t ext4 -o ro /tmp/hostdisk /mnt/host 2>/dev/null && echo host-mounted
mount -t ext4 -o ro /dev/vda /mnt/host 2>/dev/null && echo host-mounted
grep -q ' /mnt/host ' /proc/self/mounts && echo host-mounted
echo done
"#;

/// The host root file system's device as `MAJ MIN` (from `/proc/self/mountinfo`).
fn host_root_dev() -> Result<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").context("read mountinfo")?;
    let line = info
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .context("no / in mountinfo")?;
    let dev = line.split_whitespace().nth(2).context("mountinfo line")?;
    Ok(dev.replace(':', " "))
}

/// Runs [`ESCAPES`] as root in the server's container (Docker exec as root: the strongest
/// position a tenant can reach inside) and checks every attempt failed.
fn assert_escapes_fail(h: &GatewayHarness, id: ServerId, what: &str) -> Result<()> {
    let script = ESCAPES.replace("DEV", &host_root_dev()?);
    let out = h.docker_exec(id, &["sh", "-c", &script])?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains("done"),
        "{what}: escapes script did not finish: {text}"
    );
    for bad in [
        "sysctl-written",
        "own-procfs-sysctl-written",
        "mknod-made",
        "host-mounted",
    ] {
        assert!(!text.contains(bad), "{what}: {bad}: {text}");
    }
    // EPERM: CAP_SYS_MODULE is checked against the host's namespace (or seccomp refuses
    // first); ENOSYS only on a kernel built without modules (no /proc/modules on the host).
    let no_modules = !std::path::Path::new("/proc/modules").exists();
    assert!(
        text.contains("module-errno=1") || (no_modules && text.contains("module-errno=38")),
        "{what}: loading a module was not refused: {text}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenant_root_cannot_touch_sysctls_modules_or_host_filesystems() -> Result<()> {
    let (daemon, h) = gateway_on_remapped("usernsesc", DindMode::Off).await?;
    let id = h.server.context("server")?;
    blocking(|| assert_escapes_fail(&h, id, "default mode"))?;

    // The caps grant (SYS_ADMIN, NET_ADMIN, …, seccomp off) is held in the tenant's own user
    // namespace only: still no host sysctl, module or host file system.
    let change = ServerChange {
        dind: Some(DindMode::Caps),
        ..Default::default()
    };
    h.provisioner
        .set_server(id, change)
        .await
        .map_err(|e| anyhow::anyhow!("set --dind caps: {e}"))?;
    let caps =
        blocking(|| daemon.docker(&["inspect", "-f", "{{.HostConfig.CapAdd}}", &h.container(id)]))?;
    assert!(caps.contains("SYS_ADMIN"), "caps not granted: {caps}");
    blocking(|| assert_escapes_fail(&h, id, "caps mode"))?;

    // `privileged` is refused by the engine; the server keeps its caps settings.
    let change = ServerChange {
        dind: Some(DindMode::Privileged),
        ..Default::default()
    };
    let err = h
        .provisioner
        .set_server(id, change)
        .await
        .err()
        .context("a privileged container was made on a remapped engine")?;
    assert!(err.to_string().contains("privileged"), "{err}");
    let stored = h.store.server(id).await?.context("server vanished")?;
    assert_eq!(stored.spec.dind, Some(DindMode::Caps));
    let privileged = blocking(|| {
        daemon.docker(&[
            "inspect",
            "-f",
            "{{.HostConfig.Privileged}}",
            &h.container(id),
        ])
    })?;
    assert_eq!(privileged, "false");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sftp_forwards_on_demand_start_and_set_work_remapped() -> Result<()> {
    let (daemon, h) = gateway_on_remapped("usernsfeat", DindMode::Off).await?;
    let id = h.server.context("server")?;

    // SFTP: a file up and back, byte-identical, owned by the login user inside.
    let src = h.path("src.bin");
    std::fs::write(
        &src,
        (0..200_000u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    )?;
    let back = h.path("back.bin");
    let batch = h.path("batch");
    std::fs::write(
        &batch,
        format!(
            "put {} /apps/up.bin\nget /apps/up.bin {}\n",
            src.display(),
            back.display()
        ),
    )?;
    let out = blocking(|| {
        Command::new("sftp")
            .args(h.ssh_opts())
            .arg("-P")
            .arg(h.addr.port().to_string())
            .arg("-b")
            .arg(&batch)
            .arg(format!("{}@127.0.0.1", h.user()))
            .stdin(Stdio::null())
            .output()
    })?;
    assert!(
        out.status.success(),
        "sftp failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sha256_file(&src)?, sha256_file(&back)?);
    let owner = blocking(|| ssh_ok(&h, "stat -c %U /apps/up.bin"))?;
    assert_eq!(owner.trim(), "tenant");

    // A forward to the container's own loopback.
    let serve = "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('127.0.0.1',8080))\ns.listen(8)\nwhile True:\n  c,_=s.accept()\n  c.sendall(b'hello remapped\\n')\n  c.close()\n";
    blocking(|| daemon.docker(&["exec", "-d", &h.container(id), "python3", "-c", serve]))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = blocking(|| {
            let mut c = h.ssh();
            c.arg("-W")
                .arg("localhost:8080")
                .arg(format!("{}@127.0.0.1", h.user()))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            c.spawn()?.wait_with_output().context("ssh -W")
        })?;
        if String::from_utf8_lossy(&out.stdout) == "hello remapped\n" {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the forward never answered: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // On-demand start: a stopped server runs again at the next login.
    h.provisioner
        .stop(id)
        .await
        .map_err(|e| anyhow::anyhow!("stop: {e}"))?;
    let state =
        blocking(|| daemon.docker(&["inspect", "-f", "{{.State.Running}}", &h.container(id)]))?;
    assert_eq!(state, "false");
    let again = blocking(|| ssh_ok(&h, "cat /apps/up.bin | sha256sum"))?;
    let want = sha256_file(&src)?;
    assert!(again.starts_with(&want), "after on-demand start: {again}");

    // `server set`: a live limit change and a recreate (login user) keep the volume.
    let change = ServerChange {
        pids: Some(300),
        ..Default::default()
    };
    h.provisioner
        .set_server(id, change)
        .await
        .map_err(|e| anyhow::anyhow!("set --pids: {e}"))?;
    let pids = blocking(|| {
        daemon.docker(&[
            "inspect",
            "-f",
            "{{.HostConfig.PidsLimit}}",
            &h.container(id),
        ])
    })?;
    assert_eq!(pids, "300");
    let change = ServerChange {
        user: Some("root".into()),
        ..Default::default()
    };
    h.provisioner
        .set_server(id, change)
        .await
        .map_err(|e| anyhow::anyhow!("set --user root: {e}"))?;
    let who = blocking(|| ssh_ok(&h, "id -u; cat /apps/up.bin | sha256sum"))?;
    assert!(
        who.starts_with("0\n") && who.contains(&want),
        "after set --user root: {who}"
    );
    let parent = blocking(|| ssh_ok(&h, "cat /proc/$PPID/comm"))?;
    assert!(
        parent.starts_with("berth-agent"),
        "session parent after recreate: {parent}"
    );

    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn config_check_and_server_show_report_the_engine_mode() -> Result<()> {
    use integration_tests::tenants::{DbKind, DockerWorld, TestDb, berth, write_cli_config};
    let daemon = blocking(RemappedDaemon::start)?;
    let image = integration_tests::gateway::test_image();
    blocking(|| daemon.load_images(&[&image]))?;
    let db = TestDb::new(DbKind::Sqlite, "usernsreport")?;
    let world = DockerWorld::new("usernsreport", 0);
    let remapped = write_cli_config(
        db.dir.path(),
        &db.url,
        &world,
        &format!("docker_host = \"{}\"", daemon.host()),
    )?;
    let run = |args: &[&str], stdin: Option<&str>| -> Result<String> {
        let (code, out, err) = berth(&remapped, args, stdin)?;
        ensure!(code == 0, "berth {args:?} exited {code}: {err}");
        Ok(out)
    };
    let check = blocking(|| run(&["config", "check"], None))?;
    assert!(
        check.contains("engine: user-namespaced (--userns-remap"),
        "config check: {check}"
    );
    blocking(|| {
        run(
            &["account", "add", "alice", "--password-stdin"],
            Some("correct horse battery\n"),
        )
    })?;
    let created = blocking(|| run(&["server", "create", "--owner", "alice"], None))?;
    let name = created
        .lines()
        .last()
        .context("server create printed nothing")?
        .trim()
        .to_string();
    let show = blocking(|| run(&["server", "show", &name], None))?;
    assert!(
        show.contains("engine:    user-namespaced"),
        "server show: {show}"
    );
    let json = blocking(|| run(&["server", "show", &name, "--json"], None))?;
    let v: serde_json::Value = serde_json::from_str(&json)?;
    assert_eq!(v["engine_isolation"], "userns", "{json}");

    // The machine's own engine: said plainly, and a rootless default is warned about.
    let plain_dir = tempfile::tempdir()?;
    let plain = write_cli_config(plain_dir.path(), &db.url, &world, "dind = \"rootless\"")?;
    let (code, out, err) = blocking(|| berth(&plain, &["config", "check"], None))?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("engine: not user-namespaced"), "{out}");
    assert!(
        out.contains("warning: tenants.dind = \"rootless\" needs a user-namespaced engine"),
        "{out}"
    );
    Ok(())
}

/// `ip -n <netns> -o link show …` → the first field (ifindex) of each line, with the names.
fn links_in(netns: &str, args: &[&str]) -> Result<Vec<(u32, String)>> {
    let mut cmd = vec!["-n", netns, "-o", "link", "show"];
    cmd.extend_from_slice(args);
    let out = Command::new("ip").args(&cmd).output().context("run ip")?;
    ensure!(
        out.status.success(),
        "ip {cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split(": ");
            let idx = f.next()?.trim().parse().ok()?;
            let name = f.next()?.split('@').next()?.to_string();
            Some((idx, name))
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn port_map_binds_remapped_servers_to_their_own_bridge_ports() -> Result<()> {
    use integration_tests::tenants::{DbKind, TenantsEnv};
    use netfilter::bindings::{Endpoint, Mac};
    let daemon = blocking(RemappedDaemon::start)?;
    let image = integration_tests::gateway::test_image();
    blocking(|| daemon.load_images(&[&image]))?;
    let host = daemon.host();
    let env = TenantsEnv::with_config("usernsports", DbKind::Sqlite, move |c| {
        c.docker_host = Some(host.clone());
    })
    .await?;
    env.store.add_account("alice", None::<&str>).await?;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let s = env
            .prov
            .create_server("alice", tenants::ServerSpec::default())
            .await
            .map_err(|e| anyhow::anyhow!("create: {e}"))?;
        ids.push(s.id);
    }
    let eps = env
        .prov
        .server_endpoints()
        .await
        .map_err(|e| anyhow::anyhow!("endpoints: {e}"))?;
    assert_eq!(eps.len(), 2, "{eps:?}");
    // By pid (the host's /proc): the daemon's netns files live in its own mount namespace here,
    // as they would not on a real host.
    let list: Vec<Endpoint> = eps
        .iter()
        .map(|e| {
            Ok(Endpoint {
                name: e.server.to_string(),
                netns: None,
                pid: Some(e.pid.context("a running server has a pid")?),
                mac: e
                    .mac
                    .parse::<Mac>()
                    .map_err(|e| anyhow::anyhow!("mac: {e:?}"))?,
                ipv4: e.ipv4.into_iter().collect(),
                ipv6: e.ipv6.into_iter().collect(),
            })
        })
        .collect::<Result<_>>()?;
    let bridge = env.world.net.bridge.clone();
    let b = bridge.clone();
    let resolved = integration_tests::netfilter::in_netns(&daemon.netns, move || {
        netfilter::netns::resolve(&b, &list)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("netns thread panicked"))???;
    assert!(resolved.unresolved.is_empty(), "{:?}", resolved.unresolved);
    assert_eq!(resolved.bindings.len(), 2, "{:?}", resolved.bindings);
    let on_bridge = links_in(&daemon.netns, &["master", &bridge])?;
    for e in &eps {
        let binding = resolved
            .bindings
            .iter()
            .find(|x| x.mac.to_string() == e.mac)
            .context("a binding per server")?;
        let container = env.world.container(e.server.get());
        let iflink: u32 = daemon
            .docker(&["exec", &container, "cat", "/sys/class/net/eth0/iflink"])?
            .parse()?;
        let port = on_bridge
            .iter()
            .find(|(_, n)| *n == binding.port)
            .with_context(|| format!("{} is not on {bridge}: {on_bridge:?}", binding.port))?;
        assert_eq!(port.0, iflink, "{} is not {container}'s port", binding.port);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_without_the_agent_take_the_exec_stream_remapped() -> Result<()> {
    let daemon = blocking(RemappedDaemon::start)?;
    let image = integration_tests::gateway::test_image();
    blocking(|| daemon.load_images(&[&image]))?;
    let opts = Options {
        docker_host: Some(daemon.host()),
        agent_mount: false,
        ..Options::default()
    };
    let h = GatewayHarness::start_with("usernsattach", opts).await?;
    let out = blocking(|| {
        ssh_ok(
            &h,
            // An exec'd process's parent is outside the container (PPID 0); on the agent
            // path it would be berth-agent.
            "id -un; echo \"parent=$(cat /proc/$PPID/comm 2>/dev/null)\"; head -c 5 /dev/zero | wc -c",
        )
    })?;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first(), Some(&"tenant"), "{out}");
    assert!(
        lines
            .get(1)
            .is_some_and(|l| l.starts_with("parent=") && !l.contains("berth-agent")),
        "took the agent path: {out}"
    );
    assert_eq!(lines.get(2).map(|l| l.trim()), Some("5"), "{out}");
    // Exit status through the exec stream.
    let st = blocking(|| h.ssh_exec("exit 7", b""))?;
    assert_eq!(st.status.code(), Some(7));
    Ok(())
}

/// Local names on a remapped engine: `berth run gateway dns` in the engine's network namespace
/// (where the tenant bridge is) publishes the hosts file from that engine's containers and
/// answers on the bridge address that every container is given as its resolver.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn servers_resolve_each_other_by_name_remapped() -> Result<()> {
    use integration_tests::cluster::{Daemon, free_port};
    use integration_tests::tenants::{DbKind, DockerWorld, TestDb, berth_bin, write_cli_config};
    let daemon = blocking(RemappedDaemon::start)?;
    let image = integration_tests::gateway::test_image();
    blocking(|| daemon.load_images(&[&image]))?;
    let db = TestDb::new(DbKind::Sqlite, "usernsdns")?;
    let world = DockerWorld::new("usernsdns", 0);
    let dir = db.dir.path();
    let cfg = write_cli_config(
        dir,
        &db.url,
        &world,
        &format!("docker_host = \"{}\"", daemon.host()),
    )?;
    let mut text = std::fs::read_to_string(&cfg)?;
    // The ssh port is the namespace's loopback: nothing here logs in.
    text.push_str(&format!(
        "[ssh]\nlisten = [\"127.0.0.1:{port}\"]\nagent_binary = \"{agent}\"\n\
         [dns]\nlisten = [\"{gw}:53\"]\nupstreams = [\"127.0.0.1:9\"]\ndomain = \"berth.internal\"\n\
         [metrics]\nlisten = \"\"\ndns_listen = \"\"\n[publish]\nhosts_file = \"{hosts}\"\n\
         [netfilter]\nports_file = \"\"\n",
        port = free_port()?,
        agent = integration_tests::gateway::agent_binary()?.display(),
        gw = world.net.gateway,
        hosts = dir.join("hosts").display(),
    ));
    std::fs::write(&cfg, text)?;
    let run = |args: &[&str]| -> Result<String> {
        let (code, out, err) = integration_tests::tenants::berth(&cfg, args, None)?;
        ensure!(code == 0, "berth {args:?} failed ({code}): {err}");
        Ok(out)
    };
    run(&["account", "add", "alice", "--no-password"])?;
    run(&["server", "create", "--owner", "alice"])?;
    run(&["server", "create", "--owner", "alice"])?;
    let log = dir.join("run.log");
    let child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", daemon.netns))
        .arg(berth_bin()?)
        .arg("--config")
        .arg(&cfg)
        .args(["run", "gateway", "dns"])
        .env_remove("BERTH_DATABASE_URL")
        .env_remove("BERTH_STATE_DIR")
        .env("BERTH_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("spawn berth run in the engine's netns")?;
    let _run = Daemon(child);
    let address = |n: u32| {
        daemon.docker(&[
            "inspect",
            "--format",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &world.container(n),
        ])
    };
    let (a1, a2) = (address(1)?, address(2)?);
    ensure!(!a1.is_empty() && !a2.is_empty(), "addresses {a1:?} {a2:?}");
    let resolve = |from: u32, name: &str| -> String {
        daemon
            .docker(&["exec", &world.container(from), "getent", "hosts", name])
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = resolve(1, "server2.berth.internal");
        if got.split_whitespace().next() == Some(a2.as_str()) {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "server1 never resolved server2.berth.internal to {a2} (last: {got:?}); berth run's log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let own = resolve(2, "server1.berth.internal");
    assert_eq!(own.split_whitespace().next(), Some(a1.as_str()), "{own}");
    assert_eq!(
        resolve(1, "server9.berth.internal"),
        "",
        "a server that does not exist has no address"
    );
    Ok(())
}
