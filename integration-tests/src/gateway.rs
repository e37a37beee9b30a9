//! Gateway test harness: a real gateway in-process on 127.0.0.1:0, with a real tenants `Store`
//! (SQLite in a temp dir), a real `Provisioner` (real Docker, unique name prefix and a unique
//! Docker network per test), the real `Authenticator`, one account with a password and an
//! Ed25519 key, and one running server. Helpers drive the real OpenSSH clients.
//!
//! Cleanup is a `Drop` guard (containers, volumes and network removed with the docker CLI), so
//! it also runs when a test fails.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tenants::{NetworkConfig, Provisioner, ServerId, ServerSpec, Store};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// bcrypt cost for fixtures (the dummy hash uses the same cost so timing stays equal).
pub const TEST_BCRYPT_COST: u32 = 4;

// One definition of the test image and the Docker precondition, shared with the tenants tests.
pub use crate::tenants::{require_docker, test_image};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Knobs for [`GatewayHarness::start_with`].
pub struct Options {
    /// Gateway config (`listen` is ignored: the harness binds 127.0.0.1:0).
    pub ssh: gateway::Config,
    /// Create (and start) one server owned by the test account.
    pub create_server: bool,
    /// Image for created servers.
    pub image: String,
    /// Wraps the real backend (fault injection: Docker down, slow starts, …).
    pub wrap_backend: Option<BackendWrapper>,
    /// `[tenants] dind` for the harness's servers.
    pub dind: tenants::DindMode,
    /// Give containers the agent mount (`[tenants] agent_dir`): sessions take the agent path.
    /// Off, or with `BERTH_TEST_DATA_PATH=attach`, they take Docker's exec stream.
    pub agent_mount: bool,
    /// Give the tenant network an IPv6 subnet (containers then have `::1` and an IPv6 address).
    pub ipv6: bool,
    /// The engine berth talks to (`[tenants] docker_host`); the machine's own when `None`.
    pub docker_host: Option<String>,
}

/// See [`Options::wrap_backend`].
pub type BackendWrapper = gateway::build::WrapBackend;

impl Default for Options {
    fn default() -> Self {
        let mut ssh = gateway::Config::default();
        ssh.auth.bcrypt_dummy_cost = TEST_BCRYPT_COST;
        ssh.drain_timeout_secs = 5;
        Self {
            ssh,
            create_server: true,
            image: test_image(),
            wrap_backend: None,
            dind: tenants::DindMode::Off,
            agent_mount: std::env::var("BERTH_TEST_DATA_PATH").as_deref() != Ok("attach"),
            ipv6: false,
            docker_host: None,
        }
    }
}

/// The static agent binary the tests copy into containers: `BERTH_TEST_AGENT`, else the one
/// `scripts/test` builds (`target/x86_64-unknown-linux-gnu/release/berth-agent`).
pub fn agent_binary() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("BERTH_TEST_AGENT") {
        return Ok(PathBuf::from(p));
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/x86_64-unknown-linux-gnu/release/berth-agent");
    if !p.is_file() {
        bail!(
            "{} is missing: build it with `make agent` (or run scripts/test, which does)",
            p.display()
        );
    }
    Ok(p)
}

/// The OpenSSH client options every test uses: no host key checks, key auth with `key` only,
/// batch mode, quiet. (OpenSSH takes an option's first value: put overrides before these.)
pub fn client_opts(key: &Path) -> Vec<String> {
    [
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "ConnectTimeout=20",
        "-o",
        "PreferredAuthentications=publickey",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(["-i".to_string(), key.display().to_string()])
    .collect()
}

pub struct GatewayHarness {
    /// Where the gateway listens.
    pub addr: SocketAddr,
    pub store: Store,
    pub provisioner: Provisioner,
    pub shared: Arc<gateway::Shared>,
    /// The test account (owner of `server`).
    pub account: String,
    pub password: String,
    /// Private key file authorized for `account` (public key next to it, `.pub`).
    pub key: PathBuf,
    /// The server created at start (if `create_server`).
    pub server: Option<ServerId>,
    /// Docker object prefix (`<prefix>-server-<N>`).
    pub prefix: String,
    pub network: String,
    /// The engine berth talks to (`None`: the machine's own).
    pub docker_host: Option<String>,
    pub dir: tempfile::TempDir,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl GatewayHarness {
    pub async fn start(test: &str) -> Result<Self> {
        Self::start_with(test, Options::default()).await
    }

    pub async fn start_with(test: &str, opts: Options) -> Result<Self> {
        require_docker()?;
        if let Ok(filter) = std::env::var("BERTH_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .try_init();
        }
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag: String = test
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(12)
            .collect::<String>()
            .to_lowercase();
        let prefix = format!("bgt-{tag}-{pid}-{n}");
        let dir = tempfile::tempdir().context("temp dir")?;
        let db = dir.path().join("berth.db");
        let store = Store::connect(&format!("sqlite://{}", db.display()))
            .await
            .context("open test store")?;

        let mut tcfg = tenants::Config {
            image: opts.image.clone(),
            dind: opts.dind,
            agent_dir: if opts.agent_mount {
                dir.path().join("agent").display().to_string()
            } else {
                String::new()
            },
            docker_host: opts.docker_host.clone(),
            ..Default::default()
        };
        tcfg.name_prefix = prefix.clone();

        // A unique bridge network: retry other /24s when Docker reports an overlap.
        let mut last_err = None;
        let mut provisioner = None;
        let mut network = String::new();
        for attempt in 0..24u32 {
            let h = (pid.wrapping_mul(31).wrapping_add(n * 7 + attempt * 13)) % 250;
            let second = 100 + (pid.wrapping_add(attempt) % 28) as u8; // 10.100-127.x.0/24
            let third = h as u8 + 2;
            let net = NetworkConfig {
                name: format!("{prefix}-net"),
                bridge: format!("bg{}", (pid % 100_000) * 100 + (n % 10) * 10 + attempt % 10),
                subnet: ipnet::Ipv4Net::new(Ipv4Addr::new(10, second, third, 0), 24)
                    .context("subnet")?,
                gateway: Ipv4Addr::new(10, second, third, 1),
                subnet6: opts
                    .ipv6
                    .then(|| {
                        let net = format!(
                            "fd42:{:x}:{:x}::/64",
                            pid % 0xffff,
                            (n * 16 + attempt) % 0xffff
                        );
                        net.parse::<ipnet::Ipv6Net>().ok()
                    })
                    .flatten(),
                gateway6: opts
                    .ipv6
                    .then(|| {
                        format!(
                            "fd42:{:x}:{:x}::1",
                            pid % 0xffff,
                            (n * 16 + attempt) % 0xffff
                        )
                        .parse::<std::net::Ipv6Addr>()
                        .ok()
                    })
                    .flatten(),
            };
            network = net.name.clone();
            let p = Provisioner::connect(&net, &tcfg, store.clone())
                .await
                .map_err(|e| anyhow::anyhow!("connect docker: {e}"))?;
            match p.ensure_network().await {
                Ok(()) => {
                    provisioner = Some(p);
                    break;
                }
                Err(e) => last_err = Some(e.to_string()),
            }
        }
        let Some(provisioner) = provisioner else {
            bail!(
                "could not create a test network: {}",
                last_err.unwrap_or_default()
            );
        };

        let account = format!("acct{n}");
        let password = format!("pw-{pid}-{n}-correct horse");
        let hash = tenants::password::hash(&password, TEST_BCRYPT_COST)
            .map_err(|e| anyhow::anyhow!("hash: {e}"))?;
        store
            .add_account(&account, Some(&hash))
            .await
            .context("add account")?;
        let key = dir.path().join("id_ed25519");
        let st = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "test", "-f"])
            .arg(&key)
            .status()
            .context("ssh-keygen")?;
        if !st.success() {
            bail!("ssh-keygen failed");
        }
        let pubkey = std::fs::read_to_string(key.with_extension("pub")).context("read pubkey")?;
        store
            .add_key(&account, pubkey.trim())
            .await
            .context("add key")?;

        let mut me_guard = Cleanup {
            prefix: prefix.clone(),
            network: network.clone(),
            docker_host: opts.docker_host.clone(),
            armed: true,
        };
        let server = if opts.create_server {
            let s = provisioner
                .create_server(&account, ServerSpec::default())
                .await
                .map_err(|e| anyhow::anyhow!("create server: {e}"))?;
            Some(s.id)
        } else {
            None
        };

        let mut ssh = opts.ssh;
        if ssh.agent_binary.is_empty() {
            ssh.agent_binary = agent_binary()?.display().to_string();
        }
        ssh.auth.host_keys.ed25519 = Some(dir.path().join("ssh_host_ed25519_key"));
        ssh.auth.host_keys.enable_rsa = false;
        let keys = gateway::hostkeys::load_or_generate(dir.path(), &ssh.auth.host_keys)
            .map_err(|e| anyhow::anyhow!("host keys: {e}"))?;
        let shared = gateway::build(
            ssh,
            store.clone(),
            provisioner.clone(),
            keys,
            opts.wrap_backend,
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.context("bind")?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(gateway::serve(
            shared.clone(),
            vec![listener],
            shutdown.clone(),
        ));
        me_guard.armed = false;
        Ok(Self {
            addr,
            store,
            provisioner,
            shared,
            account,
            password,
            key,
            server,
            prefix,
            network,
            docker_host: opts.docker_host,
            dir,
            shutdown,
            task: Some(task),
        })
    }

    /// `server<N>` of the harness's server.
    pub fn user(&self) -> String {
        self.server
            .map(|s| s.login_name())
            .unwrap_or_else(|| "server0".into())
    }

    /// Container name of `id`.
    pub fn container(&self, id: ServerId) -> String {
        format!("{}-server-{}", self.prefix, id.get())
    }

    /// Common OpenSSH client options with the test key: see [`client_opts`].
    pub fn ssh_opts(&self) -> Vec<String> {
        client_opts(&self.key)
    }

    /// `ssh -p PORT <opts> server<N>@127.0.0.1` — append `-T`/`-tt`, command, etc.
    pub fn ssh(&self) -> Command {
        let mut c = Command::new("ssh");
        c.args(self.ssh_opts())
            .arg("-p")
            .arg(self.addr.port().to_string());
        c.stdin(Stdio::null());
        c
    }

    /// Runs `ssh ... server<N>@127.0.0.1 -- CMD` with `stdin`; returns the output.
    pub fn ssh_exec(&self, cmd: &str, stdin: &[u8]) -> Result<Output> {
        use std::io::Write;
        let mut c = self.ssh();
        c.arg(format!("{}@127.0.0.1", self.user()))
            .arg("--")
            .arg(cmd);
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().context("spawn ssh")?;
        if let Some(mut si) = child.stdin.take() {
            let data = stdin.to_vec();
            std::thread::spawn(move || {
                let _ = si.write_all(&data);
            });
        }
        child.wait_with_output().context("wait ssh")
    }

    /// Runs a command in the server's container with `docker exec` (bypassing the gateway).
    pub fn docker_exec(&self, id: ServerId, args: &[&str]) -> Result<Output> {
        docker_on(self.docker_host.as_deref())
            .arg("exec")
            .arg(self.container(id))
            .args(args)
            .output()
            .context("docker exec")
    }

    /// The gateway's resident set size in KiB (the test process is the gateway). An error when
    /// it cannot be read, so a memory bound can never pass by measuring nothing.
    pub fn rss_kib() -> Result<u64> {
        let status =
            std::fs::read_to_string("/proc/self/status").context("read /proc/self/status")?;
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .context("no VmRSS line in /proc/self/status")?
            .split_whitespace()
            .next()
            .context("empty VmRSS line in /proc/self/status")?
            .parse::<u64>()
            .context("VmRSS in /proc/self/status is not a number")?;
        if kib == 0 {
            bail!("VmRSS in /proc/self/status is 0");
        }
        Ok(kib)
    }

    /// Path helper for files in the harness temp dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts draining (like SIGTERM) and waits for the gateway to finish (bounded).
    pub async fn shutdown(&mut self) -> Result<()> {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .context("gateway did not stop")?
                .context("gateway task")?
                .context("gateway serve")?;
        }
        Ok(())
    }

    /// Cancels shutdown without waiting (for drain tests).
    pub fn begin_shutdown(&self) -> tokio::task::JoinHandle<()> {
        self.shutdown.cancel();
        tokio::spawn(async {})
    }

    /// Waits for the serve task after [`Self::begin_shutdown`].
    pub async fn wait_stopped(&mut self, limit: Duration) -> Result<()> {
        if let Some(t) = self.task.take() {
            tokio::time::timeout(limit, t)
                .await
                .context("gateway did not stop in time")?
                .context("gateway task")?
                .context("gateway serve")?;
        }
        Ok(())
    }
}

impl Drop for GatewayHarness {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            t.abort();
        }
        cleanup_on(self.docker_host.as_deref(), &self.prefix, &self.network);
    }
}

struct Cleanup {
    prefix: String,
    network: String,
    docker_host: Option<String>,
    armed: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.armed {
            cleanup_on(self.docker_host.as_deref(), &self.prefix, &self.network);
        }
    }
}

/// A `docker` command addressed to `host` (the machine's own engine when `None`).
pub fn docker_on(host: Option<&str>) -> Command {
    let mut c = Command::new("docker");
    if let Some(h) = host {
        c.arg("-H").arg(h).env_remove("DOCKER_CONTEXT");
    }
    c
}

/// Removes every container and volume named `<prefix>-…` and the network.
pub fn cleanup(prefix: &str, network: &str) {
    cleanup_on(None, prefix, network)
}

/// [`cleanup`] on the engine `host` (the machine's own when `None`).
pub fn cleanup_on(host: Option<&str>, prefix: &str, network: &str) {
    let list = |what: &[&str]| -> Vec<String> {
        docker_on(host)
            .args(what)
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let filter = format!("name=^/?{prefix}-");
    let containers = list(&["ps", "-aq", "--filter", &filter]);
    if !containers.is_empty() {
        let _ = docker_on(host)
            .args(["rm", "-f", "-v"])
            .args(&containers)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    let vfilter = format!("name={prefix}-");
    let volumes = list(&["volume", "ls", "-q", "--filter", &vfilter]);
    let volumes: Vec<_> = volumes
        .into_iter()
        .filter(|v| v.starts_with(prefix))
        .collect();
    if !volumes.is_empty() {
        let _ = docker_on(host)
            .args(["volume", "rm", "-f"])
            .args(&volumes)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    let _ = docker_on(host)
        .args(["network", "rm", network])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// sha256 of a file, via `sha256sum`.
pub fn sha256_file(p: &Path) -> Result<String> {
    let o = Command::new("sha256sum")
        .arg(p)
        .output()
        .context("sha256sum")?;
    Ok(String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string())
}
