//! A multi-host testbed on one machine: N "hosts", each a network namespace with its own
//! dockerd, joined by a fabric bridge, forming a real Docker Swarm.
//!
//! ```text
//!        fabric netns bsw-<pid>-<seq>-f: bridge br0 10.213.0.1/24 (the "client" position)
//!          │ h0                    │ h1                    │ h2
//!        eth0 10.213.0.10        eth0 10.213.0.11        eth0 10.213.0.12
//!        netns bsw-<pid>-<seq>-0 netns …-1               netns …-2
//!        dockerd (private /run,  dockerd                 dockerd
//!        /var/lib/berth)
//! ```
//!
//! Why each piece is the way it is:
//! - The fabric bridge lives in a namespace of its own: a bridge in the root namespace would
//!   pass host↔host frames through br_netfilter into the main dockerd's `FORWARD DROP`.
//! - Each dockerd runs under `nsenter --net` (not `ip netns exec`, which remounts `/sys` and
//!   hides the cgroup tree) and `unshare --mount --uts`. The host has a name of its own (`n0`,
//!   `n1`, …, set with `hostname` before dockerd starts), which its engine reports to the swarm
//!   as the node's hostname, as distinct machines do. It gets a private `/run` (so
//!   `/var/run/docker.sock`, `/run/berth`, `/run/docker/netns` are its own, as on a real host,
//!   and no system containerd socket is inherited) and a private `/var/lib/berth`. The stack
//!   file therefore runs unchanged with the same bind paths as production. `/` is made rshared
//!   inside that mount namespace (as systemd does on a real host) so `rslave` binds work; the
//!   namespace is cut off from the root namespace's mounts first, so nothing propagates out.
//! - Each engine's data root is a tmpfs in that mount namespace: images load in seconds and
//!   vanish with the namespace (removing three unpacked image copies from a busy disk took
//!   longer than the whole test).
//! - The only directory created outside the testbed's own paths is the empty mount point
//!   `/var/lib/berth` when missing (it cannot be removed safely while another testbed may use
//!   it as a mount point in its own namespace).
//!
//! - [`Testbed::start_postgres`] runs a PostgreSQL server in the fabric namespace (the
//!   cluster's shared store), reachable from every host at `10.213.0.1:5432`.
//!
//! Everything (swarm membership, containers, daemons, the fabric's postgres, cgroups,
//! namespaces, directories) is removed in `Drop`, also when the test fails. Only addresses
//! inside these namespaces are ever contacted.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The fabric's address (on the bridge, inside the fabric namespace).
pub const FABRIC_ADDR: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);

/// How long a dockerd may take to answer, and the swarm to report every node Ready.
const DAEMON_TIMEOUT: Duration = Duration::from_secs(60);
/// Where Debian installs each PostgreSQL major version's binaries (`<version>/bin`).
/// How long dockerd gets for SIGTERM before SIGKILL (its own container stop timeout is 10 s).
const DAEMON_STOP: Duration = Duration::from_secs(15);

static SEQ: AtomicU32 = AtomicU32::new(0);

/// One simulated Docker host.
pub struct Host {
    pub index: usize,
    /// Its network namespace (`/run/netns/<netns>`).
    pub netns: String,
    /// Its address on the fabric.
    pub addr: Ipv4Addr,
    /// Its host name (`n<index>`, in a UTS namespace of its own): what its dockerd reports to
    /// the swarm as the node's hostname.
    pub hostname: String,
    /// Its private `/run`, as seen from the root namespace.
    pub run_dir: PathBuf,
    /// Its dockerd's socket, as seen from the root namespace.
    pub socket: PathBuf,
    data_dir: PathBuf,
    dockerd: Option<Child>,
}

impl Host {
    /// `docker -H <this host> args…`, failing with its stderr.
    pub fn docker(&self, args: &[&str]) -> Result<String> {
        let out = self
            .docker_cmd(args)
            .output()
            .context("cannot run docker")?;
        ok_stdout(
            &out,
            &format!("docker {} on host {}", args.join(" "), self.index),
        )
    }

    /// A `docker` command addressed to this host's engine.
    pub fn docker_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("docker");
        c.arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args)
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT");
        c
    }

    /// Runs `args` inside this host's network namespace (`nsenter --net`).
    pub fn in_netns(&self, args: &[&str]) -> Result<Output> {
        nsenter(&self.netns, args)
    }

    /// Its dockerd's pid while the testbed runs.
    pub fn dockerd_pid(&self) -> Option<u32> {
        self.dockerd.as_ref().map(Child::id)
    }

    fn dockerd_log(&self) -> String {
        let log = self.run_dir.parent().map(|p| p.join("dockerd.log"));
        let text = log
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

/// How long each phase took, for docs/MULTIHOST.md.
#[derive(Debug, Default, Clone)]
pub struct Timings {
    /// Namespaces, fabric and veths.
    pub network: Duration,
    /// From spawning the daemons until every one answers `docker info`.
    pub daemons: Duration,
    /// `swarm init` + joins until every node is Ready.
    pub swarm: Duration,
    /// `docker save` once + `docker load` on every host.
    pub image_load: Duration,
}

/// The testbed; see the module docs.
pub struct Testbed {
    pub name: String,
    pub fabric: String,
    pub hosts: Vec<Host>,
    pub timings: Timings,
    root: PathBuf,
    data_root: PathBuf,
    swarm: bool,
    postgres: Option<Child>,
}

/// Fails with a clear message when the testbed cannot exist here (CI installs all of it).
pub fn require_tools() -> Result<()> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .context("cannot run id")?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        bail!("the swarm testbed needs root (network and mount namespaces, dockerd)");
    }
    for (tool, pkg) in [
        ("ip", "iproute2"),
        ("nsenter", "util-linux"),
        ("unshare", "util-linux"),
        ("dockerd", "docker.io"),
        ("docker", "docker.io"),
        ("nft", "nftables"),
    ] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            bail!("the swarm testbed needs `{tool}` (apt-get install {pkg})");
        }
    }
    Ok(())
}

impl Testbed {
    /// Creates `n` hosts with their daemons running (not yet a swarm).
    pub fn start(n: usize) -> Result<Testbed> {
        require_tools()?;
        if n == 0 || n > 200 {
            bail!("a testbed has 1 to 200 hosts, not {n}");
        }
        let name = format!(
            "bsw-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let mut tb = Testbed {
            fabric: format!("{name}-f"),
            root: PathBuf::from("/run").join(&name),
            data_root: PathBuf::from("/var/lib").join(&name),
            name,
            hosts: Vec::new(),
            timings: Timings::default(),
            swarm: false,
            postgres: None,
        };
        let t = Instant::now();
        tb.build_network(n)?;
        tb.timings.network = t.elapsed();
        let t = Instant::now();
        tb.start_daemons()?;
        tb.timings.daemons = t.elapsed();
        Ok(tb)
    }

    fn build_network(&mut self, n: usize) -> Result<()> {
        let fab = self.fabric.clone();
        run(&["ip", "netns", "add", &fab])?;
        ip_in(&fab, &["link", "set", "lo", "up"])?;
        ip_in(&fab, &["link", "add", "br0", "type", "bridge"])?;
        ip_in(
            &fab,
            &["addr", "add", &format!("{FABRIC_ADDR}/24"), "dev", "br0"],
        )?;
        ip_in(&fab, &["link", "set", "br0", "up"])?;
        for i in 0..n {
            let netns = format!("{}-{i}", self.name);
            let addr = Ipv4Addr::new(10, 213, 0, 10 + i as u8);
            let dir = self.root.join(i.to_string());
            let host = Host {
                index: i,
                run_dir: dir.join("run"),
                socket: dir.join("run/docker.sock"),
                data_dir: self.data_root.join(i.to_string()),
                netns: netns.clone(),
                addr,
                hostname: format!("n{i}"),
                dockerd: None,
            };
            // Pushed before anything can fail, so Drop removes what exists.
            self.hosts.push(host);
            run(&["ip", "netns", "add", &netns])?;
            let veth = format!("h{i}");
            ip_in(
                &fab,
                &[
                    "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &netns,
                ],
            )?;
            ip_in(&fab, &["link", "set", &veth, "master", "br0", "up"])?;
            ip_in(&netns, &["link", "set", "lo", "up"])?;
            ip_in(
                &netns,
                &["addr", "add", &format!("{addr}/24"), "dev", "eth0"],
            )?;
            ip_in(&netns, &["link", "set", "eth0", "up"])?;
        }
        Ok(())
    }

    fn start_daemons(&mut self) -> Result<()> {
        std::fs::create_dir_all("/var/lib/berth").context("create /var/lib/berth")?;
        for h in &mut self.hosts {
            // /run/berth exists on a real host (tmpfiles.d); the stack binds it.
            for d in [
                h.run_dir.join("berth"),
                h.data_dir.join("berth"),
                h.data_dir.join("docker"),
            ] {
                std::fs::create_dir_all(&d).with_context(|| format!("create {}", d.display()))?;
            }
            std::fs::write(h.run_dir.join("daemon.json"), "{}\n").context("write daemon.json")?;
            let log_path = h.run_dir.parent().context("host dir")?.join("dockerd.log");
            let log = std::fs::File::create(&log_path)
                .with_context(|| format!("create {}", log_path.display()))?;
            let i = h.index;
            let script = format!(
                "set -e; hostname {hostname}; mount -t tmpfs -o size=4g,mode=0711 {netns} {data}; \
                 mount --bind {lib} /var/lib/berth; mount --bind {run} /run; \
                 mount --make-rshared /; exec dockerd --config-file /run/daemon.json \
                 -H unix:///run/docker.sock --data-root {data} --exec-root /run/docker \
                 --pidfile /run/docker.pid --cgroup-parent /{netns} --bip 10.214.{i}.1/24 \
                 --default-address-pool base=10.215.0.0/16,size=24 --log-level warn",
                lib = h.data_dir.join("berth").display(),
                run = h.run_dir.display(),
                data = h.data_dir.join("docker").display(),
                netns = h.netns,
                hostname = h.hostname,
            );
            // nsenter (no --pid) and unshare (no --fork) exec, so the child is dockerd itself.
            let child = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", h.netns))
                .args(["unshare", "--mount", "--uts", "--propagation", "private"])
                .args(["sh", "-c", &script])
                .stdin(Stdio::null())
                .stdout(log.try_clone().context("dup log")?)
                .stderr(log)
                .spawn()
                .context("cannot spawn dockerd")?;
            h.dockerd = Some(child);
        }
        let deadline = Instant::now() + DAEMON_TIMEOUT;
        for h in &mut self.hosts {
            loop {
                let up = h
                    .docker_cmd(&["info", "--format", "{{.ServerVersion}}"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false);
                if up {
                    break;
                }
                if let Some(c) = h.dockerd.as_mut()
                    && let Ok(Some(st)) = c.try_wait()
                {
                    bail!(
                        "dockerd of host {} exited ({st}):\n{}",
                        h.index,
                        h.dockerd_log()
                    );
                }
                if Instant::now() > deadline {
                    bail!(
                        "dockerd of host {} did not answer within {DAEMON_TIMEOUT:?}:\n{}",
                        h.index,
                        h.dockerd_log()
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// `swarm init` on host 0 (the manager), `swarm join` as workers on the others; returns when
    /// every node is Ready and each engine reports itself an active member.
    pub fn form_swarm(&mut self) -> Result<()> {
        let t = Instant::now();
        let first = self.hosts.first().context("no hosts")?;
        let lead = format!("{}:2377", first.addr);
        self.swarm = true;
        first.docker(&[
            "swarm",
            "init",
            "--advertise-addr",
            &first.addr.to_string(),
            "--listen-addr",
            &lead,
        ])?;
        let token = first.docker(&["swarm", "join-token", "-q", "worker"])?;
        for h in &self.hosts[1..] {
            h.docker(&[
                "swarm",
                "join",
                "--token",
                token.trim(),
                "--advertise-addr",
                &h.addr.to_string(),
                "--listen-addr",
                &format!("{}:2377", h.addr),
                &lead,
            ])?;
        }
        let n = self.hosts.len();
        wait_for(DAEMON_TIMEOUT, "every swarm node Ready", || {
            let ls = first.docker(&["node", "ls", "--format", "{{.Status}}"])?;
            Ok(ls.lines().filter(|l| l.trim() == "Ready").count() == n)
        })?;
        for h in &self.hosts {
            let state = h.docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"])?;
            if state.trim() != "active" {
                bail!("host {} reports swarm state {:?}", h.index, state.trim());
            }
        }
        self.timings.swarm = t.elapsed();
        Ok(())
    }

    /// The swarm node ids, host by host.
    pub fn node_ids(&self) -> Result<Vec<String>> {
        self.hosts
            .iter()
            .map(|h| {
                Ok(h.docker(&["info", "--format", "{{.Swarm.NodeID}}"])?
                    .trim()
                    .into())
            })
            .collect()
    }

    /// Copies `image` from the machine's own engine into every host (`docker save` once,
    /// `docker load` per engine, in parallel).
    pub fn load_image(&mut self, image: &str) -> Result<()> {
        self.load_images(&[image])
    }

    /// Like [`Testbed::load_image`] for several images in one archive (layers they share,
    /// such as the daemon image's tenant base, are saved and loaded once).
    pub fn load_images(&mut self, images: &[&str]) -> Result<()> {
        let t = Instant::now();
        let tar = self.root.join("image.tar");
        let tar_s = tar.to_string_lossy().to_string();
        let out = Command::new("docker")
            .args(["save", "-o", &tar_s])
            .args(images)
            .output()
            .context("cannot run docker save")?;
        ok_stdout(&out, &format!("docker save {}", images.join(" ")))?;
        std::thread::scope(|s| -> Result<()> {
            let jobs: Vec<_> = self
                .hosts
                .iter()
                .map(|h| {
                    let tar_s = &tar_s;
                    s.spawn(move || h.docker(&["load", "-q", "-i", tar_s]))
                })
                .collect();
            for j in jobs {
                match j.join() {
                    Ok(r) => {
                        r?;
                    }
                    Err(_) => bail!("docker load thread panicked"),
                }
            }
            Ok(())
        })?;
        let _ = std::fs::remove_file(&tar);
        self.timings.image_load = t.elapsed();
        Ok(())
    }

    /// Starts a PostgreSQL server (the machine's newest PostgreSQL binaries, a fresh cluster in
    /// the testbed's directory) inside the fabric namespace, listening only on
    /// [`FABRIC_ADDR`]`:5432`, with a database `berth` owned by superuser `berth`; password
    /// authentication from the fabric's subnet. Returns its URL. Stopped by Drop.
    pub fn start_postgres(&mut self) -> Result<String> {
        const PASSWORD: &str = "berth-testbed";
        let bin = crate::postgres::bin_dir()?;
        let bin = bin.as_path();
        let dir = self.root.join("pg");
        let data = dir.join("data");
        std::fs::create_dir_all(&dir).context("create the postgres dir")?;
        let pwfile = dir.join("pw");
        std::fs::write(&pwfile, format!("{PASSWORD}\n")).context("write the postgres pwfile")?;
        run(&["chown", "-R", "postgres:postgres", &dir.to_string_lossy()])?;
        let as_postgres = |args: &[&str]| crate::postgres::as_postgres(&dir, args);
        let initdb = bin.join("initdb").to_string_lossy().to_string();
        let out = as_postgres(&[
            &initdb,
            "-D",
            &data.to_string_lossy(),
            "-U",
            "berth",
            &format!("--pwfile={}", pwfile.display()),
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--no-sync",
        ])
        .output()
        .context("cannot run initdb")?;
        ok_stdout(&out, "initdb")?;
        let mut hba = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("pg_hba.conf"))
            .context("open pg_hba.conf")?;
        use std::io::Write;
        writeln!(hba, "host all all 10.213.0.0/24 scram-sha-256").context("write pg_hba.conf")?;
        let log = std::fs::File::create(dir.join("postgres.log")).context("postgres log")?;
        let postgres = bin.join("postgres").to_string_lossy().to_string();
        let cmd = as_postgres(&[
            &postgres,
            "-D",
            &data.to_string_lossy(),
            "-k",
            &dir.to_string_lossy(),
            "-c",
            &format!("listen_addresses={FABRIC_ADDR}"),
            "-c",
            "port=5432",
            "-c",
            "fsync=off",
        ]);
        // setpriv and nsenter (no --fork) exec: the child is postgres itself.
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.fabric))
            .arg(cmd.get_program())
            .args(cmd.get_args())
            .env("HOME", &dir)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("dup log")?)
            .stderr(log)
            .spawn()
            .context("cannot spawn postgres")?;
        self.postgres = Some(child);
        let sock = dir.to_string_lossy().to_string();
        wait_for(DAEMON_TIMEOUT, "the fabric's postgres", || {
            let out = Command::new(bin.join("pg_isready"))
                .args(["-q", "-h", &sock, "-U", "berth"])
                .output()?;
            Ok(out.status.success())
        })
        .with_context(|| std::fs::read_to_string(dir.join("postgres.log")).unwrap_or_default())?;
        let out = Command::new(bin.join("createdb"))
            .args(["-h", &sock, "-U", "berth", "berth"])
            .output()
            .context("cannot run createdb")?;
        ok_stdout(&out, "createdb berth")?;
        Ok(format!(
            "postgres://berth:{PASSWORD}@{FABRIC_ADDR}:5432/berth"
        ))
    }

    /// The fabric's postgres pid while it runs.
    pub fn postgres_pid(&self) -> Option<u32> {
        self.postgres.as_ref().map(Child::id)
    }

    /// The directories the testbed owns (`/run/bsw-…` and `/var/lib/bsw-…`), removed by Drop.
    pub fn dirs(&self) -> [&Path; 2] {
        [&self.root, &self.data_root]
    }

    /// A directory for the test's own files (removed with the testbed).
    pub fn scratch(&self) -> PathBuf {
        self.root.join("scratch")
    }

    fn teardown(&mut self) {
        // Swarm first, so no orchestrator restarts what is stopped next; workers before the
        // manager.
        if self.swarm {
            if let Some(first) = self.hosts.first() {
                let stacks = first
                    .docker(&["stack", "ls", "--format", "{{.Name}}"])
                    .unwrap_or_default();
                for s in stacks.lines().filter(|s| !s.trim().is_empty()) {
                    let _ = first.docker(&["stack", "rm", s.trim()]);
                }
            }
            for h in self.hosts.iter().rev() {
                let _ = h.docker(&["swarm", "leave", "--force"]);
            }
        }
        // Containers before their daemon (dockerd would stop each with its own timeout).
        std::thread::scope(|s| {
            for h in &self.hosts {
                s.spawn(move || {
                    let ids = h.docker(&["ps", "-aq"]).unwrap_or_default();
                    let ids: Vec<&str> = ids.split_whitespace().collect();
                    if !ids.is_empty() {
                        let mut args = vec!["rm", "-f"];
                        args.extend(ids);
                        let _ = h.docker(&args);
                    }
                });
            }
        });
        if let Some(mut pg) = self.postgres.take() {
            // SIGINT: postgres' fast shutdown (sessions rolled back, no checkpoint wait).
            let _ = Command::new("kill")
                .args(["-INT", &pg.id().to_string()])
                .status();
            stop_child(&mut pg, DAEMON_STOP);
        }
        kill_in_netns(&self.fabric);
        for h in &mut self.hosts {
            if let Some(c) = h.dockerd.as_ref() {
                let _ = Command::new("kill")
                    .args(["-TERM", &c.id().to_string()])
                    .status();
            }
        }
        for h in &mut self.hosts {
            if let Some(mut c) = h.dockerd.take() {
                stop_child(&mut c, DAEMON_STOP);
            }
            // Whatever the daemon started and left behind in the host's namespace (a
            // containerd or shim after a SIGKILL) is ours by construction.
            kill_in_netns(&h.netns);
        }
        for h in &self.hosts {
            remove_cgroups(&h.netns);
            let _ = Command::new("ip").args(["netns", "del", &h.netns]).output();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.fabric])
            .output();
        // The hosts' mounts lived in their own mount namespaces, gone with their processes.
        let _ = std::fs::remove_dir_all(&self.data_root);
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Polls `f` every 200 ms until it returns true; fails naming `what` after `timeout`, with the
/// last error when there was one.
pub fn wait_for(timeout: Duration, what: &str, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match f() {
            Ok(true) => return Ok(()),
            Ok(false) => None,
            Err(e) => Some(e),
        };
        if Instant::now() > deadline {
            match last {
                Some(e) => bail!("timed out after {timeout:?} waiting for {what}: {e:#}"),
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs `args` inside network namespace `netns` (`nsenter --net`), returning its output
/// whatever its exit status.
pub fn nsenter(netns: &str, args: &[&str]) -> Result<Output> {
    Command::new("nsenter")
        .arg(format!("--net=/run/netns/{netns}"))
        .args(args)
        .output()
        .with_context(|| format!("cannot run nsenter into {netns}"))
}

/// Connects to `addr` from inside network namespace `netns` and returns the first line the
/// server sends (an SSH identification string), waiting up to `timeout` for it to listen.
pub fn banner_from(netns: &str, addr: SocketAddr, timeout: Duration) -> Result<String> {
    let netns = netns.to_string();
    let h = crate::netfilter::in_netns(&netns, move || -> Result<String> {
        let deadline = Instant::now() + timeout;
        let mut stream = loop {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => bail!("connect {addr}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while line.len() < 255 {
            match stream.read(&mut b) {
                Ok(0) => break,
                Ok(_) if b[0] == b'\n' => break,
                Ok(_) => line.push(b[0]),
                Err(e) => bail!("read from {addr}: {e}"),
            }
        }
        Ok(String::from_utf8_lossy(&line).trim_end().to_string())
    });
    match h.join() {
        Ok(r) => r?,
        Err(_) => bail!("netns thread panicked"),
    }
}

fn ok_stdout(out: &Output, what: &str) -> Result<String> {
    if !out.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

fn run(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("cannot run {}", args[0]))?;
    ok_stdout(&out, &args.join(" "))
}

fn ip_in(netns: &str, args: &[&str]) -> Result<String> {
    let mut v = vec!["ip", "-n", netns];
    v.extend_from_slice(args);
    run(&v)
}

/// Waits up to `grace` for `c` (already signalled) to exit, then SIGKILLs it.
fn stop_child(c: &mut Child, grace: Duration) {
    let deadline = Instant::now() + grace;
    loop {
        match c.try_wait() {
            Ok(Some(_)) | Err(_) => break,
            Ok(None) if Instant::now() > deadline => {
                let _ = c.kill();
                let _ = c.wait();
                break;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// SIGKILLs every process whose network namespace is `netns`.
pub fn kill_in_netns(netns: &str) {
    let Ok(target) = std::fs::metadata(Path::new("/run/netns").join(netns)) else {
        return;
    };
    use std::os::unix::fs::MetadataExt;
    let (dev, ino) = (target.dev(), target.ino());
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for p in procs.flatten() {
        let name = p.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Ok(m) = std::fs::metadata(p.path().join("ns/net"))
            && m.dev() == dev
            && m.ino() == ino
        {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .output();
        }
    }
}

/// Removes the cgroup `/<name>` (dockerd's `--cgroup-parent`) from every hierarchy, children
/// first (cgroupfs directories are removed with rmdir alone).
pub fn remove_cgroups(name: &str) {
    fn rmdir_tree(dir: &Path) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    rmdir_tree(&e.path());
                }
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
    let root = Path::new("/sys/fs/cgroup");
    let direct = root.join(name);
    if direct.is_dir() {
        rmdir_tree(&direct);
    }
    if let Ok(hier) = std::fs::read_dir(root) {
        for h in hier.flatten() {
            let d = h.path().join(name);
            if d.is_dir() {
                rmdir_tree(&d);
            }
        }
    }
}
