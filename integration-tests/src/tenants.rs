//! Tenants test harness: a throw-away database (SQLite in a temp dir, or a fresh PostgreSQL
//! database created on `BERTH_TEST_POSTGRES_URL`'s server), a unique Docker world per test
//! (name prefix, network, bridge, 10.213.X.0/24 subnet) and a real `Provisioner`.
//!
//! Cleanup runs in `Drop` with the docker and psql CLIs (synchronous, so it also runs when a
//! test panics): every container and volume labelled with the test's `berth.instance`
//! prefix, the network, and the Postgres database.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};
use tenants::{Config, NetworkConfig, ProvisionError, Provisioner, Store};

/// bcrypt cost for fixtures.
pub const TEST_COST: u32 = 4;

/// The tenant image tests run (`BERTH_TEST_IMAGE` overrides).
pub fn test_image() -> String {
    std::env::var("BERTH_TEST_IMAGE")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "berth/tenant:bookworm".into())
}

/// Fails with a clear message when dockerd or the test image is missing.
/// The tenant image of a build variant (`dind`, `systemd`, `rootless`): `$<env>`, else
/// `<test image>-<variant>`; an error saying how to build it when Docker does not have it.
pub fn variant_image(variant: &str, env: &str) -> Result<String> {
    let image = std::env::var(env).unwrap_or_else(|_| format!("{}-{variant}", test_image()));
    let ok = Command::new("docker")
        .args(["image", "inspect", &image])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        bail!(
            "the {variant} tenant image {image} is missing: build it with `berth image build --variant {variant} --tag {image}` (scripts/test does)"
        );
    }
    Ok(image)
}

pub fn require_docker() -> Result<()> {
    let ok = Command::new("docker")
        .args(["image", "inspect", &test_image()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        bail!(
            "these tests need a running dockerd and the image {} (run scripts/test --setup-only, or `berth image build`)",
            test_image()
        );
    }
    Ok(())
}

/// `BERTH_TEST_POSTGRES_URL`, or an error saying how to get one.
pub fn postgres_url() -> Result<String> {
    std::env::var("BERTH_TEST_POSTGRES_URL").ok().filter(|s| !s.is_empty()).context(
        "BERTH_TEST_POSTGRES_URL is not set: run scripts/test (or `scripts/test --setup-only` and export \
         BERTH_TEST_POSTGRES_URL=postgres://berth:berth-test@127.0.0.1/berth_test)",
    )
}

static SEQ: AtomicU32 = AtomicU32::new(0);

fn hash_of(s: &str) -> u64 {
    let mut h = DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

/// A short identifier unique to this test, process and call: `<tag><pid><seq>`.
pub fn unique(tag: &str) -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{tag}{}x{n}", std::process::id())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    Sqlite,
    Postgres,
}

/// A database that disappears with the value.
pub struct TestDb {
    pub url: String,
    pub kind: DbKind,
    /// The SQLite file (in `dir`).
    pub path: Option<PathBuf>,
    pg: Option<(String, String)>,
    pub dir: tempfile::TempDir,
}

impl TestDb {
    pub fn new(kind: DbKind, test: &str) -> Result<Self> {
        let dir = tempfile::tempdir().context("temp dir")?;
        match kind {
            DbKind::Sqlite => {
                let path = dir.path().join("state").join("berth.db");
                Ok(Self {
                    url: format!("sqlite://{}", path.display()),
                    kind,
                    path: Some(path),
                    pg: None,
                    dir,
                })
            }
            DbKind::Postgres => {
                let admin = postgres_url()?;
                let name = format!("bt_{}_{}", test.replace('-', "_"), unique("p"));
                psql(&admin, &format!("CREATE DATABASE {name}"))?;
                let url = match admin.rfind('/') {
                    Some(i) if i > admin.find("://").map_or(0, |j| j + 2) => {
                        format!("{}/{name}", &admin[..i])
                    }
                    _ => bail!("cannot derive a database url from {admin}"),
                };
                Ok(Self {
                    url,
                    kind,
                    path: None,
                    pg: Some((admin, name)),
                    dir,
                })
            }
        }
    }

    pub async fn store(&self) -> Result<Store> {
        Store::connect(&self.url)
            .await
            .with_context(|| format!("connect {}", self.url))
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((admin, name)) = &self.pg
            && let Err(e) = psql(
                admin,
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            )
        {
            eprintln!("cleanup: {e:#}");
        }
    }
}

fn psql(url: &str, sql: &str) -> Result<()> {
    let out = Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql])
        .stdin(Stdio::null())
        .output()
        .context("running psql")?;
    if !out.status.success() {
        bail!(
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Unique Docker names for one test; removes everything it names on drop.
pub struct DockerWorld {
    pub prefix: String,
    pub net: NetworkConfig,
}

impl DockerWorld {
    /// Attempt `attempt` picks another /24 (callers retry on "overlaps").
    pub fn new(test: &str, attempt: u32) -> Self {
        let prefix = format!("bt-{}", unique(&test.chars().take(12).collect::<String>()));
        let h = hash_of(&format!("{prefix}/{attempt}"));
        let third = (h % 250) as u8 + 2;
        let bridge = format!("bt{:08x}{}", (h >> 8) as u32, attempt % 10);
        let net = NetworkConfig {
            name: format!("{prefix}-net"),
            bridge,
            subnet: ipnet::Ipv4Net::new(Ipv4Addr::new(10, 213, third, 0), 24).unwrap_or_default(),
            gateway: Ipv4Addr::new(10, 213, third, 1),
            subnet6: None,
            gateway6: None,
        };
        Self { prefix, net }
    }

    pub fn tenants_config(&self) -> Config {
        Config {
            image: test_image(),
            name_prefix: self.prefix.clone(),
            memory: tenants::ByteSize(256 << 20),
            cpus: 0.5,
            pids: 256,
            stop_timeout_secs: 2,
            agent_dir: self.agent_dir().display().to_string(),
            ..Config::default()
        }
    }

    /// This world's `[tenants] agent_dir` (under the temp dir, removed with the world), so tests
    /// never write into the host's `/var/lib/berth`.
    pub fn agent_dir(&self) -> PathBuf {
        std::env::temp_dir().join(format!("{}-agent", self.prefix))
    }

    pub fn container(&self, n: u32) -> String {
        format!("{}-server-{n}", self.prefix)
    }

    pub fn volume(&self, n: u32) -> String {
        format!("{}-server-{n}-data", self.prefix)
    }
}

impl Drop for DockerWorld {
    fn drop(&mut self) {
        cleanup(&self.prefix, &self.net.name);
        let _ = std::fs::remove_dir_all(self.agent_dir());
    }
}

/// Removes containers and volumes labelled `berth.instance=<prefix>` (or named `<prefix>-…`)
/// and the network.
pub fn cleanup(prefix: &str, network: &str) {
    let label = format!("label=berth.instance={prefix}");
    let name = format!("name=^/?{prefix}-");
    let mut ids = Vec::new();
    for filter in [&label, &name] {
        if let Ok(out) = Command::new("docker")
            .args(["ps", "-aq", "--filter", filter])
            .output()
        {
            ids.extend(
                String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .map(String::from),
            );
        }
    }
    ids.sort();
    ids.dedup();
    if !ids.is_empty() {
        let _ = Command::new("docker")
            .args(["rm", "-f"])
            .args(&ids)
            .output();
    }
    let mut vols = Vec::new();
    for filter in [&label, &format!("name={prefix}-")] {
        if let Ok(out) = Command::new("docker")
            .args(["volume", "ls", "-q", "--filter", filter])
            .output()
        {
            vols.extend(
                String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .filter(|v| v.starts_with(prefix))
                    .map(String::from),
            );
        }
    }
    vols.sort();
    vols.dedup();
    if !vols.is_empty() {
        let _ = Command::new("docker")
            .args(["volume", "rm", "-f"])
            .args(&vols)
            .output();
    }
    let _ = Command::new("docker")
        .args(["network", "rm", network])
        .output();
}

/// Store + provisioner over a unique Docker world. Field order = drop order: the world's
/// cleanup runs before the database is dropped.
pub struct TenantsEnv {
    pub prov: Provisioner,
    pub store: Store,
    pub world: DockerWorld,
    pub db: TestDb,
}

impl TenantsEnv {
    pub async fn new(test: &str, kind: DbKind) -> Result<Self> {
        Self::with_config(test, kind, |_| {}).await
    }

    /// Like [`Self::new`], with a chance to adjust `[tenants]` first.
    pub async fn with_config(
        test: &str,
        kind: DbKind,
        tweak: impl Fn(&mut Config),
    ) -> Result<Self> {
        require_docker()?;
        let db = TestDb::new(kind, test)?;
        let store = db.store().await?;
        let mut last = None;
        for attempt in 0..8 {
            let world = DockerWorld::new(test, attempt);
            let mut cfg = world.tenants_config();
            tweak(&mut cfg);
            let prov = Provisioner::connect(&world.net, &cfg, store.clone()).await?;
            match prov.ensure_network().await {
                Ok(()) => {
                    return Ok(Self {
                        prov,
                        store,
                        world,
                        db,
                    });
                }
                Err(e @ ProvisionError::Docker { .. }) if e.to_string().contains("overlap") => {
                    last = Some(e);
                }
                Err(e) => return Err(e.into()),
            }
        }
        bail!("no free 10.213.X.0/24 subnet for the test network: {last:?}")
    }
}

/// `docker <args>` → output (stdout trimmed) or an error with stderr.
pub fn docker(args: &[&str]) -> Result<String> {
    let out: Output = Command::new("docker")
        .args(args)
        .output()
        .context("running docker")?;
    if !out.status.success() {
        bail!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The `berth` binary of this workspace build (target/<profile>/berth).
pub fn berth_bin() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("BERTH_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("current exe")?;
    // target/<profile>/deps/<test> → target/<profile>/berth
    let dir = exe.parent().and_then(Path::parent).context("target dir")?;
    let bin = dir.join("berth");
    if !bin.exists() {
        bail!(
            "{} is missing: build it first with `cargo build -p berth` (or set BERTH_BIN)",
            bin.display()
        );
    }
    Ok(bin)
}

/// Runs `berth --config <config> <args>` with `stdin` fed in; returns (exit code, stdout, stderr).
pub fn berth(config: &Path, args: &[&str], stdin: Option<&str>) -> Result<(i32, String, String)> {
    use std::io::Write;
    let mut child = Command::new(berth_bin()?)
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("BERTH_DATABASE_URL")
        .env_remove("BERTH_STATE_DIR")
        .env("BERTH_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn berth")?;
    if let Some(mut si) = child.stdin.take()
        && let Some(text) = stdin
    {
        si.write_all(text.as_bytes()).context("write stdin")?;
    }
    let out = child.wait_with_output().context("wait berth")?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// A config file for the CLI pointing at `db` and `world`.
pub fn write_cli_config(
    dir: &Path,
    db_url: &str,
    world: &DockerWorld,
    extra_tenants: &str,
) -> Result<PathBuf> {
    let path = dir.join("berth.toml");
    let text = format!(
        r#"state_dir = "{state}"
database_url = "{db_url}"
[network]
name = "{name}"
bridge = "{bridge}"
subnet = "{subnet}"
gateway = "{gateway}"
[tenants]
image = "{image}"
name_prefix = "{prefix}"
memory = "256m"
cpus = 0.5
pids = 256
stop_timeout_secs = 2
agent_dir = "{agent_dir}"
{extra_tenants}
"#,
        agent_dir = world.agent_dir().display(),
        state = dir.join("state").display(),
        name = world.net.name,
        bridge = world.net.bridge,
        subnet = world.net.subnet,
        gateway = world.net.gateway,
        image = test_image(),
        prefix = world.prefix,
    );
    std::fs::write(&path, text).context("write config")?;
    Ok(path)
}
