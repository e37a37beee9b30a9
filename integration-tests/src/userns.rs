//! A second Docker engine started with `--userns-remap`, on which berth's features are tested
//! when every tenant's uid 0 is an unprivileged host uid.
//!
//! ```text
//!   root netns: the test process (gateway, OpenSSH clients), the machine's own dockerd
//!   netns buns-<pid>-<seq>: dockerd --userns-remap berth-userns
//!        socket   /run/buns-…/docker.sock     exec-root /run/buns-…/exec (its own containerd)
//!        data     /var/lib/buns-… (a tmpfs in the daemon's private mount namespace)
//!        bridge   docker0 10.216.0.1/24, pools 10.217.0.0/16 — only inside its netns
//! ```
//!
//! Why each piece is the way it is:
//! - One remap range for the whole engine: Docker 20.10 takes a single user
//!   (`--userns-remap USER`) whose first `/etc/subuid` and `/etc/subgid` ranges map every
//!   container. The user is [`REMAP_USER`]; `scripts/test` creates it with a range of its own
//!   ([`require_remap_user`] says how when it is missing).
//! - The daemon lives in a network namespace of its own, so its bridge and iptables rules never
//!   meet the machine's dockerd; the gateway reaches containers only through the Docker API
//!   and the agent's socket directory, which is a file-system path and crosses namespaces.
//! - `unshare --mount --propagation private` (not a private `/run`): the daemon's own mounts
//!   (its tmpfs data root, overlay layers) vanish with it, while it still sees the host's paths,
//!   so the agent directory berth binds into containers is the one the gateway listens in.
//! - Its containerd is its own (no system containerd socket is present here; when one is,
//!   `--containerd-namespace`/`--containerd-plugins-namespace` keep its objects apart).
//! - `--cgroup-parent /<name>`: the daemon's containers sit in cgroups the Drop can remove.
//! - `/dev/net/tun` is `0666` in the daemon's mount namespace (a node of its own bound over
//!   the host's, which may be `0600` on a machine without udev): a `rootless` server's tenant
//!   user opens it, as on a host where udev made it. The host's node is not touched.
//! - The remap range is 200000 ids: a `rootless` server's nested engine maps the tenant user's
//!   subordinate range (100000..165535 inside the server) and needs it mapped.
//!
//! Everything (containers, daemon, namespace, cgroups, directories) is removed in `Drop`, also
//! when the test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The user whose subordinate ranges the test engine maps containers into.
pub const REMAP_USER: &str = "berth-userns";

/// The smallest remap range the tests accept (a rootless server's nested range included).
pub const MIN_RANGE: u32 = 200_000;

/// How long the daemon may take to answer.
const DAEMON_TIMEOUT: Duration = Duration::from_secs(60);
/// How long dockerd gets for SIGTERM before SIGKILL.
const DAEMON_STOP: Duration = Duration::from_secs(15);

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A subordinate id range (`/etc/subuid` or `/etc/subgid` line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub start: u32,
    pub count: u32,
}

impl IdRange {
    pub fn contains(&self, id: u32) -> bool {
        id >= self.start && id - self.start < self.count
    }
}

/// The first range of `user` in a subuid/subgid file's text.
pub fn first_range(text: &str, user: &str) -> Option<IdRange> {
    text.lines().find_map(|l| {
        let mut f = l.trim().split(':');
        if f.next()? != user {
            return None;
        }
        let start = f.next()?.parse().ok()?;
        let count = f.next()?.parse().ok()?;
        Some(IdRange { start, count })
    })
}

/// The uid range containers of the test engine map into; an error saying how to make it when
/// [`REMAP_USER`] or its ranges are missing.
pub fn require_remap_user() -> Result<IdRange> {
    let how = format!(
        "the user-namespace tests need user {REMAP_USER} with /etc/subuid and /etc/subgid ranges \
         (scripts/test makes them: useradd --system {REMAP_USER}; echo {REMAP_USER}:300000:200000 \
         >> /etc/subuid and /etc/subgid)"
    );
    let passwd = std::fs::read_to_string("/etc/passwd").context("read /etc/passwd")?;
    if !passwd
        .lines()
        .any(|l| l.split(':').next() == Some(REMAP_USER))
    {
        bail!("{how}");
    }
    let sub = |f: &str| -> Result<IdRange> {
        let text = std::fs::read_to_string(f).with_context(|| format!("read {f}"))?;
        first_range(&text, REMAP_USER).with_context(|| how.clone())
    };
    let uids = sub("/etc/subuid")?;
    let gids = sub("/etc/subgid")?;
    if uids != gids {
        bail!("{REMAP_USER}'s subuid range {uids:?} and subgid range {gids:?} differ");
    }
    if uids.count < MIN_RANGE {
        bail!("{REMAP_USER}'s range {uids:?} is smaller than {MIN_RANGE} ids: {how}");
    }
    Ok(uids)
}

/// The user-namespaced engine; see the module docs.
pub struct RemappedDaemon {
    pub name: String,
    /// Its network namespace (`/run/netns/<name>`).
    pub netns: String,
    /// The host range its containers' ids map into.
    pub range: IdRange,
    /// Its socket.
    pub socket: PathBuf,
    root: PathBuf,
    data: PathBuf,
    dockerd: Option<Child>,
}

impl RemappedDaemon {
    /// Starts the daemon and waits until it answers.
    pub fn start() -> Result<Self> {
        crate::swarm::require_tools()?;
        let range = require_remap_user()?;
        let name = format!(
            "buns-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let root = PathBuf::from("/run").join(&name);
        let mut d = RemappedDaemon {
            netns: name.clone(),
            socket: root.join("docker.sock"),
            data: PathBuf::from("/var/lib").join(&name),
            root,
            name,
            range,
            dockerd: None,
        };
        run(&["ip", "netns", "add", &d.netns])?;
        run(&["ip", "-n", &d.netns, "link", "set", "lo", "up"])?;
        for dir in [&d.root, &d.data] {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        let config = d.root.join("daemon.json");
        std::fs::write(&config, "{}\n").context("write daemon.json")?;
        let log_path = d.root.join("dockerd.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("create {}", log_path.display()))?;
        // Fixed addresses are safe: they exist only inside the daemon's own network namespace.
        // A system containerd would otherwise be shared; its own namespaces keep it apart.
        let containerd_ns = if Path::new("/run/containerd/containerd.sock").exists() {
            format!(
                " --containerd-namespace {n} --containerd-plugins-namespace {n}-plugins",
                n = d.name
            )
        } else {
            String::new()
        };
        let script = format!(
            "set -e; mount -t tmpfs -o size=6g,mode=0711 {name} {data}; \
             mkdir -p {dev}; mount -t tmpfs -o mode=0755 {name}-dev {dev}; \
             mknod -m 0666 {dev}/tun c 10 200; mount --bind {dev}/tun /dev/net/tun; \
             exec dockerd --config-file {config} -H unix://{sock} --data-root {data} \
             --exec-root {exec} --pidfile {pid} --cgroup-parent /{name} \
             --bip 10.216.0.1/24 --default-address-pool base=10.217.0.0/16,size=24 \
             --userns-remap {REMAP_USER} --log-level warn{containerd_ns}",
            name = d.name,
            data = d.data.display(),
            dev = d.root.join("dev").display(),
            config = config.display(),
            sock = d.socket.display(),
            exec = d.root.join("exec").display(),
            pid = d.root.join("docker.pid").display(),
        );
        // nsenter (no --pid) and unshare (no --fork) exec, so the child is dockerd itself.
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", d.netns))
            .args(["unshare", "--mount", "--propagation", "private"])
            .args(["sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("dup log")?)
            .stderr(log)
            .spawn()
            .context("cannot spawn dockerd")?;
        d.dockerd = Some(child);
        let deadline = Instant::now() + DAEMON_TIMEOUT;
        loop {
            let up = d
                .docker_cmd(&["info", "--format", "{{.ServerVersion}}"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if up {
                break;
            }
            if let Some(c) = d.dockerd.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                bail!("the remapped dockerd exited ({st}):\n{}", d.log_tail());
            }
            if Instant::now() > deadline {
                bail!(
                    "the remapped dockerd did not answer within {DAEMON_TIMEOUT:?}:\n{}",
                    d.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(d)
    }

    /// The endpoint berth is given (`[tenants] docker_host`).
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// A `docker` command addressed to this engine.
    pub fn docker_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("docker");
        c.arg("-H")
            .arg(self.host())
            .args(args)
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT");
        c
    }

    /// `docker -H <this engine> args…` → stdout, failing with its stderr.
    pub fn docker(&self, args: &[&str]) -> Result<String> {
        let out = self
            .docker_cmd(args)
            .output()
            .context("cannot run docker")?;
        if !out.status.success() {
            bail!(
                "docker {} on the remapped engine failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Copies `images` from the machine's own engine (`docker save | docker load`).
    pub fn load_images(&self, images: &[&str]) -> Result<()> {
        let mut save = Command::new("docker")
            .arg("save")
            .args(images)
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot run docker save")?;
        let stdout = save.stdout.take().context("docker save stdout")?;
        let load = self
            .docker_cmd(&["load", "-q"])
            .stdin(stdout)
            .output()
            .context("cannot run docker load")?;
        let saved = save.wait().context("wait docker save")?;
        if !saved.success() {
            bail!("docker save {} failed ({saved})", images.join(" "));
        }
        if !load.status.success() {
            bail!(
                "docker load into the remapped engine failed: {}",
                String::from_utf8_lossy(&load.stderr).trim()
            );
        }
        Ok(())
    }

    /// The host pid of a running container's PID 1.
    pub fn pid_of(&self, container: &str) -> Result<u32> {
        let pid = self.docker(&["inspect", "-f", "{{.State.Pid}}", container])?;
        let pid: u32 = pid
            .parse()
            .with_context(|| format!("pid of {container}: {pid:?}"))?;
        if pid == 0 {
            bail!("{container} is not running");
        }
        Ok(pid)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.root.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    fn teardown(&mut self) {
        let ids = self.docker(&["ps", "-aq"]).unwrap_or_default();
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(ids);
            let _ = self.docker(&args);
        }
        if let Some(mut c) = self.dockerd.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + DAEMON_STOP;
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
        crate::swarm::kill_in_netns(&self.netns);
        crate::swarm::remove_cgroups(&self.name);
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
        let _ = std::fs::remove_dir_all(&self.data);
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

impl Drop for RemappedDaemon {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// The uids of `/proc/<pid>/status` (real, effective, saved, filesystem).
pub fn host_uids(pid: u32) -> Result<[u32; 4]> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .with_context(|| format!("no Uid line in /proc/{pid}/status"))?;
    let v: Vec<u32> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("Uid line of /proc/{pid}/status: {line:?}"))?;
    v.try_into()
        .map_err(|v| anyhow::anyhow!("Uid line of /proc/{pid}/status has {v:?}"))
}

fn run(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("cannot run {}", args[0]))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_range_reads_the_users_line() {
        let text = "a:100000:65536\nberth-userns:300000:65536\nberth-userns:1:2\n";
        assert_eq!(
            first_range(text, "berth-userns"),
            Some(IdRange {
                start: 300000,
                count: 65536
            })
        );
        assert_eq!(first_range(text, "berth"), None);
        let r = IdRange {
            start: 10,
            count: 5,
        };
        assert!(r.contains(10) && r.contains(14) && !r.contains(15) && !r.contains(9));
    }
}
