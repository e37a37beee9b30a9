//! The one TOML file: each library crate defines the section it consumes; this composes them.
//!
//! Every key has a default, unknown keys are an error naming the key (serde's
//! `deny_unknown_fields` message does that), and `BERTH_STATE_DIR` / `BERTH_DATABASE_URL` /
//! `BERTH_CLUSTER_NODE` / `BERTH_CLUSTER_ADVERTISE` / `BERTH_CLUSTER_FRONT` override the file
//! (validated like it).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/berth/berth.toml";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub state_dir: PathBuf,
    /// Defaults to `sqlite://<state_dir>/berth.db`.
    pub database_url: Option<String>,
    /// A file holding the database URL (a swarm secret, a systemd credential), so the password
    /// stays out of the shared config; not readable by others. Exclusive with `database_url`.
    pub database_url_file: Option<PathBuf>,
    pub ssh: gateway::Config,
    pub network: tenants::NetworkConfig,
    pub dns: dns::Config,
    pub tenants: tenants::Config,
    pub netfilter: netfilter::Config,
    pub metrics: MetricsConfig,
    pub publish: PublishConfig,
    pub cluster: ClusterConfig,
    /// Session recording (`gateway::recording::Config`); handed to the gateway inside its
    /// config by [`Config::gateway_config`].
    pub recording: gateway::recording::Config,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("/var/lib/berth"),
            database_url: None,
            database_url_file: None,
            ssh: Default::default(),
            network: Default::default(),
            dns: Default::default(),
            tenants: Default::default(),
            netfilter: Default::default(),
            metrics: Default::default(),
            publish: Default::default(),
            cluster: Default::default(),
            recording: Default::default(),
        }
    }
}

/// Where each process serves its metrics. One process serves one endpoint, chosen by the
/// components it runs, so the split deployment (one unit per component) never has two units
/// fighting over one port: a process running the gateway (including plain `berth run`) uses
/// `listen`; one running dns but no gateway uses `dns_listen`; one running only netfilter —
/// whose unit allows no IP sockets at all — writes `netfilter_textfile` (Prometheus text format,
/// for node_exporter's textfile collector). Empty strings disable.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Prometheus `/metrics` and `/healthz` of the gateway's process (or of the all-in-one one).
    pub listen: String,
    /// `/metrics` and `/healthz` of a resolver running without the gateway (`berth run dns`).
    pub dns_listen: String,
    /// File the netfilter-only process rewrites (atomically) every `textfile_interval_secs`.
    pub netfilter_textfile: String,
    pub textfile_interval_secs: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9477".into(),
            dns_listen: "127.0.0.1:9478".into(),
            netfilter_textfile: "/run/berth-netfilter/metrics.prom".into(),
            textfile_interval_secs: 15,
        }
    }
}

impl MetricsConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        for (key, value) in [("listen", &self.listen), ("dns_listen", &self.dns_listen)] {
            if !value.is_empty() && value.parse::<std::net::SocketAddr>().is_err() {
                return Err(format!(
                    "metrics.{key} {value:?} must be ADDRESS:PORT (or \"\" to disable)"
                ));
            }
        }
        if !self.listen.is_empty() && self.listen == self.dns_listen {
            return Err(format!(
                "metrics.listen and metrics.dns_listen are both {}: the gateway and the resolver units would fight over it",
                self.listen
            ));
        }
        if !self.netfilter_textfile.is_empty() && !self.netfilter_textfile.starts_with('/') {
            return Err(format!(
                "metrics.netfilter_textfile {:?} must be an absolute path",
                self.netfilter_textfile
            ));
        }
        if self.textfile_interval_secs == 0 {
            return Err("metrics.textfile_interval_secs must be at least 1".into());
        }
        Ok(())
    }
}

/// This host's place in a cluster (docs/CLUSTER.md). Empty `node`: a single host, whose
/// servers are all local and whose store has no node rows.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// This host's node name (`berth node list`); empty on a single host.
    pub node: String,
    /// `address:port` of this node's internal SSH endpoint, as fronts reach it; `berth run
    /// node` listens there. Empty on a swarm member: the engine's swarm address
    /// (`docker info`'s `Swarm.NodeAddr`) with `hop_port`.
    pub advertise: String,
    /// The hop endpoint's port when `advertise` is derived from the engine's swarm address.
    pub hop_port: u16,
    /// This host's front name (`berth node fronts`); empty: the node name.
    pub front: String,
    /// A node not seen for this long gets no new servers.
    pub node_timeout_secs: u64,
    /// How often a node starts its servers that should run and recreates lost containers
    /// whose volume is kept (`berth server reconcile --heal`); 0 turns healing off.
    pub heal_interval_secs: u64,
    /// Where `node` came from, for error messages: the environment's `BERTH_CLUSTER_NODE`
    /// (which the swarm stack sets to the host's name) or the file.
    #[serde(skip)]
    pub node_from_env: bool,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            node: String::new(),
            advertise: String::new(),
            hop_port: 2200,
            front: String::new(),
            node_timeout_secs: 60,
            heal_interval_secs: 30,
            node_from_env: false,
        }
    }
}

impl ClusterConfig {
    /// The name this host's front registers under.
    pub fn front_name(&self) -> &str {
        if self.front.is_empty() {
            &self.node
        } else {
            &self.front
        }
    }

    fn validate(&self, database_url: &str) -> std::result::Result<(), String> {
        if self.node.is_empty() {
            if !self.advertise.is_empty() {
                return Err(
                    "cluster.advertise is set but cluster.node is empty: name this node too".into(),
                );
            }
            return Ok(());
        }
        if !tenants::placement::valid_node_name(&self.node) {
            if self.node_from_env {
                return Err(format!(
                    "cluster.node {:?} (from BERTH_CLUSTER_NODE, which deploy/swarm/stack.yml sets to \
                     the host's name) is not a valid node name ({}): give the host a valid name, \
                     or set BERTH_CLUSTER_NODE to one",
                    self.node,
                    tenants::placement::NODE_NAME_RULE
                ));
            }
            return Err(format!(
                "cluster.node {:?} is not a valid node name ({})",
                self.node,
                tenants::placement::NODE_NAME_RULE
            ));
        }
        if !self.front.is_empty() && !tenants::placement::valid_node_name(&self.front) {
            return Err(format!(
                "cluster.front {:?} is not a valid front name ({})",
                self.front,
                tenants::placement::NODE_NAME_RULE
            ));
        }
        if !database_url.starts_with("postgres") {
            return Err(format!(
                "cluster.node is set but the database is {}: nodes and fronts of one cluster share \
                 one PostgreSQL database (database_url = \"postgres://…\"); SQLite serves a single host",
                tenants::store::redact_url(database_url)
            ));
        }
        if !self.advertise.is_empty() && self.advertise.parse::<std::net::SocketAddr>().is_err() {
            return Err(format!(
                "cluster.advertise {:?} must be ADDRESS:PORT",
                self.advertise
            ));
        }
        if self.hop_port == 0 {
            return Err("cluster.hop_port must be a port number (1-65535)".into());
        }
        if self.node_timeout_secs == 0 {
            return Err("cluster.node_timeout_secs must be at least 1".into());
        }
        Ok(())
    }
}

/// What the gateway's process publishes for processes that have no store and no Docker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublishConfig {
    /// Hosts-format file (`ADDRESS server<N>.<domain> server<N>`) the process running the
    /// gateway rewrites atomically whenever a tenant's address changes; a resolver running
    /// without the gateway (`berth run dns`, the split deployment) serves its local zone from
    /// it instead of opening the store. Empty disables both sides.
    pub hosts_file: String,
}

impl Default for PublishConfig {
    fn default() -> Self {
        Self {
            hosts_file: "/run/berth/hosts".into(),
        }
    }
}

impl PublishConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        if !self.hosts_file.is_empty() && !self.hosts_file.starts_with('/') {
            return Err(format!(
                "publish.hosts_file {:?} must be an absolute path",
                self.hosts_file
            ));
        }
        Ok(())
    }
}

/// Where the config came from, for messages.
#[derive(Debug, Clone)]
pub enum Source {
    File(PathBuf),
    Defaults,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Defaults => f.write_str("built-in defaults"),
        }
    }
}

/// A config problem: exits 64 (EX_USAGE-style, like linkerd) instead of 1.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for ConfigError {}

/// `$CREDENTIALS_DIRECTORY/berth.toml`. systemd sets the variable only for a unit with
/// credentials; a berth unit's only credential is the config, so a directory without it (or one
/// that cannot be looked into) is a broken unit, reported as such instead of read as "no config".
fn credential_path(dir: &Path) -> Result<Option<PathBuf>> {
    let path = dir.join("berth.toml");
    match std::fs::metadata(&path) {
        Ok(_) => Ok(Some(path)),
        Err(e) => Err(ConfigError(format!(
            "cannot read config credential {}: {e} (the unit needs LoadCredential=berth.toml:/etc/berth/berth.toml)",
            path.display()
        ))
        .into()),
    }
}

impl Config {
    /// Loads from an explicit path (must exist), else a systemd credential named `berth.toml`
    /// (`LoadCredential=`, how the unprivileged units receive the root-only file), else the
    /// default path if it exists, else defaults. Env overrides are applied last.
    ///
    /// Only a default path that does not exist falls back to the built-in defaults: a file that
    /// exists but cannot be read (permissions, a credential directory without `berth.toml`) is
    /// an error, so a unit never silently serves a configuration nobody wrote.
    pub fn load(explicit: Option<&Path>) -> Result<(Self, Source)> {
        let credential = match std::env::var_os("CREDENTIALS_DIRECTORY").filter(|d| !d.is_empty()) {
            Some(dir) if explicit.is_none() => credential_path(Path::new(&dir))?,
            _ => None,
        };
        let (mut cfg, source) = match explicit.map(Path::to_path_buf).or(credential) {
            Some(p) => (Self::from_file(&p)?, Source::File(p)),
            None => match std::fs::metadata(DEFAULT_CONFIG_PATH) {
                Ok(_) => (
                    Self::from_file(Path::new(DEFAULT_CONFIG_PATH))?,
                    Source::File(DEFAULT_CONFIG_PATH.into()),
                ),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    (Self::default(), Source::Defaults)
                }
                Err(e) => {
                    return Err(ConfigError(format!(
                        "cannot read config file {DEFAULT_CONFIG_PATH}: {e} (pass --config PATH or set BERTH_CONFIG)"
                    ))
                    .into());
                }
            },
        };
        if let Some(dir) = std::env::var_os("BERTH_STATE_DIR").filter(|v| !v.is_empty()) {
            cfg.state_dir = PathBuf::from(dir);
        }
        if cfg.database_url.is_some() && cfg.database_url_file.is_some() {
            return Err(ConfigError(format!(
                "{source}: set one of database_url and database_url_file, not both"
            ))
            .into());
        }
        cfg.apply_env(|name| std::env::var(name).ok());
        cfg.read_database_url_file()
            .map_err(|e| ConfigError(format!("{source}: {e}")))?;
        cfg.validate()
            .map_err(|e| ConfigError(format!("{source}: {e}")))?;
        Ok((cfg, source))
    }

    /// The string overrides (`BERTH_DATABASE_URL`, `BERTH_CLUSTER_NODE`,
    /// `BERTH_CLUSTER_ADVERTISE`, `BERTH_CLUSTER_FRONT`), read through `get`; an unset or empty
    /// variable leaves the file's value. The cluster ones give each task of one shared config
    /// (a swarm config) its own node identity. Validation runs afterwards, on the result.
    fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) {
        let get = |name: &str| get(name).filter(|v| !v.is_empty());
        if let Some(url) = get("BERTH_DATABASE_URL") {
            self.database_url = Some(url);
            self.database_url_file = None;
        } else if let Some(file) = get("BERTH_DATABASE_URL_FILE") {
            self.database_url = None;
            self.database_url_file = Some(PathBuf::from(file));
        }
        if let Some(node) = get("BERTH_CLUSTER_NODE") {
            self.cluster.node = node;
            self.cluster.node_from_env = true;
        }
        if let Some(advertise) = get("BERTH_CLUSTER_ADVERTISE") {
            self.cluster.advertise = advertise;
        }
        if let Some(front) = get("BERTH_CLUSTER_FRONT") {
            self.cluster.front = front;
        }
    }

    /// Fills `database_url` from `database_url_file`, if set: the file's first line, from a
    /// file others cannot read.
    fn read_database_url_file(&mut self) -> std::result::Result<(), String> {
        let Some(path) = &self.database_url_file else {
            return Ok(());
        };
        use std::os::unix::fs::PermissionsExt;
        let shown = path.display();
        let meta = std::fs::metadata(path)
            .map_err(|e| format!("cannot read database_url_file {shown}: {e}"))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o007 != 0 {
            return Err(format!(
                "database_url_file {shown} is open to others (mode {mode:04o}); it holds the database password: chmod o-rwx {shown}"
            ));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read database_url_file {shown}: {e}"))?;
        let url = text.lines().next().unwrap_or("").trim();
        if url.is_empty() {
            return Err(format!(
                "database_url_file {shown} is empty; put the database URL on its first line"
            ));
        }
        self.database_url = Some(url.to_string());
        Ok(())
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(format!(
                "cannot read config file {}: {e} (pass --config PATH or set BERTH_CONFIG)",
                path.display()
            ))
        })?;
        Self::from_toml(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())).into())
    }

    pub fn from_toml(text: &str) -> std::result::Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        if !self.state_dir.is_absolute() {
            return Err(format!(
                "state_dir {} must be an absolute path",
                self.state_dir.display()
            ));
        }
        self.network.validate()?;
        self.ssh.validate()?;
        self.dns.validate()?;
        self.tenants.validate()?;
        self.netfilter.validate()?;
        self.metrics.validate()?;
        self.publish.validate()?;
        self.cluster.validate(&self.database_url())?;
        self.recording.validate()?;
        Ok(())
    }

    /// `[ssh]` as the gateway runs it: with `[recording]`, whose empty `dir` means
    /// `<state_dir>/recordings`.
    pub fn gateway_config(&self) -> gateway::Config {
        let mut ssh = self.ssh.clone();
        ssh.recording = self.recording.clone();
        if ssh.recording.dir.is_empty() {
            ssh.recording.dir = self.state_dir.join("recordings").display().to_string();
        }
        if ssh.control_socket.is_empty() {
            ssh.control_socket = self.state_dir.join("control.sock").display().to_string();
        }
        ssh
    }

    /// The effective database URL.
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}/berth.db", self.state_dir.display()))
    }

    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).context("cannot render config as toml")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn brief_example_parses() {
        let text = r#"
state_dir    = "/var/lib/berth"
database_url = "sqlite:///var/lib/berth/berth.db"
[ssh]
listen = ["0.0.0.0:2222"]
[network]
name = "berth-tenants"
bridge = "berth0"
subnet = "172.19.2.0/24"
gateway = "172.19.2.1"
[dns]
listen = ["172.19.2.1:53"]
upstreams = ["1.1.1.1:53", "8.8.8.8:53"]
domain = "berth.internal"
[tenants]
image = "berth/tenant:bookworm"
[metrics]
listen = "127.0.0.1:9477"
"#;
        let cfg = Config::from_toml(text).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.database_url(), "sqlite:///var/lib/berth/berth.db");
    }

    #[test]
    fn cluster_needs_a_node_name_and_postgres() {
        let mut cfg = Config::default();
        cfg.validate().unwrap();
        cfg.cluster.advertise = "10.0.0.1:2200".into();
        assert!(
            cfg.validate()
                .unwrap_err()
                .contains("cluster.node is empty")
        );
        cfg.cluster.node = "n1".into();
        let err = cfg.validate().unwrap_err();
        assert!(
            err.contains("PostgreSQL") && err.contains("sqlite://"),
            "{err}"
        );
        cfg.database_url = Some("postgres://berth:secret@db/berth".into());
        cfg.validate().unwrap();
        cfg.cluster.node = "N 1".into();
        assert!(
            cfg.validate()
                .unwrap_err()
                .contains("not a valid node name")
        );
        cfg.cluster.node = "n1".into();
        cfg.cluster.advertise = "somewhere".into();
        assert!(cfg.validate().unwrap_err().contains("ADDRESS:PORT"));
        // The password never shows in the message.
        cfg.database_url = Some("sqlite:///x.db".into());
        assert!(!cfg.validate().unwrap_err().contains("secret"));
    }

    #[test]
    fn cluster_identity_comes_from_the_environment_and_is_validated() {
        let shared =
            "database_url = \"postgres://berth@db/berth\"\n[cluster]\nnode_timeout_secs = 30\n";
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let mut cfg = Config::from_toml(shared).unwrap();
        cfg.apply_env(env(&[
            ("BERTH_CLUSTER_NODE", "n2"),
            ("BERTH_CLUSTER_ADVERTISE", "10.0.0.2:2200"),
            ("BERTH_CLUSTER_FRONT", "f2"),
        ]));
        cfg.validate().unwrap();
        assert_eq!(cfg.cluster.node, "n2");
        assert_eq!(cfg.cluster.advertise, "10.0.0.2:2200");
        assert_eq!(cfg.cluster.front_name(), "f2");
        assert_eq!(cfg.cluster.node_timeout_secs, 30);

        // An empty variable leaves the file's value.
        let mut cfg = Config::from_toml(&format!("{shared}node = \"n1\"\n")).unwrap();
        cfg.apply_env(env(&[
            ("BERTH_CLUSTER_NODE", ""),
            ("BERTH_CLUSTER_FRONT", ""),
        ]));
        assert_eq!(cfg.cluster.node, "n1");
        assert_eq!(cfg.cluster.front_name(), "n1");

        // Overrides are held to the file's rules.
        for (vars, want) in [
            (
                &[("BERTH_CLUSTER_NODE", "N 1")][..],
                "not a valid node name",
            ),
            (
                &[
                    ("BERTH_CLUSTER_NODE", "n1"),
                    ("BERTH_CLUSTER_ADVERTISE", "somewhere"),
                ][..],
                "ADDRESS:PORT",
            ),
            (
                &[("BERTH_CLUSTER_ADVERTISE", "10.0.0.2:2200")][..],
                "cluster.node is empty",
            ),
            (
                &[("BERTH_CLUSTER_NODE", "n1"), ("BERTH_CLUSTER_FRONT", "f/1")][..],
                "not a valid front name",
            ),
        ] {
            let mut cfg = Config::from_toml(shared).unwrap();
            cfg.apply_env(env(vars));
            let err = cfg.validate().unwrap_err();
            assert!(err.contains(want), "{vars:?}: {err}");
        }
        // A host name that is no node name (the swarm stack's `{{.Node.Hostname}}`) says where
        // it came from and what to do; the file's own bad name does not blame the host.
        let mut cfg = Config::from_toml(shared).unwrap();
        cfg.apply_env(env(&[("BERTH_CLUSTER_NODE", "Web1.example.com")]));
        let err = cfg.validate().unwrap_err();
        assert!(
            err.contains("\"Web1.example.com\" (from BERTH_CLUSTER_NODE")
                && err.contains("host's name")
                && err.contains("give the host a valid name"),
            "{err}"
        );
        let mut cfg = Config::from_toml(&format!("{shared}node = \"N 1\"\n")).unwrap();
        cfg.apply_env(env(&[]));
        let err = cfg.validate().unwrap_err();
        assert!(!err.contains("BERTH_CLUSTER_NODE"), "{err}");
        // Without advertise the hop port is the default's, and must be a port.
        let mut cfg = Config::from_toml(shared).unwrap();
        cfg.apply_env(env(&[("BERTH_CLUSTER_NODE", "n1")]));
        assert_eq!(cfg.cluster.hop_port, 2200);
        cfg.cluster.hop_port = 0;
        assert!(cfg.validate().unwrap_err().contains("cluster.hop_port"));

        // A node named by the environment on SQLite is refused like one named in the file.
        let mut cfg = Config::default();
        cfg.apply_env(env(&[("BERTH_CLUSTER_NODE", "n1")]));
        assert!(cfg.validate().unwrap_err().contains("PostgreSQL"));
    }

    #[test]
    fn the_database_url_can_come_from_a_private_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("db");
        std::fs::write(&file, "postgres://berth:s3cret@db/berth\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let chmod = |mode| {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode))
                .unwrap_or_else(|e| panic!("{e}"))
        };
        chmod(0o600);
        let mut cfg = Config::default();
        let var = |key: &'static str, value: String| {
            move |name: &str| (name == key).then(|| value.clone())
        };
        cfg.apply_env(var("BERTH_DATABASE_URL_FILE", file.display().to_string()));
        assert_eq!(cfg.read_database_url_file(), Ok(()));
        assert_eq!(cfg.database_url(), "postgres://berth:s3cret@db/berth");
        // Open to others: refused, and the message names the file, not what it holds.
        chmod(0o644);
        let mut cfg = Config {
            database_url_file: Some(file.clone()),
            ..Config::default()
        };
        let e = cfg.read_database_url_file().unwrap_err();
        assert!(e.contains("mode 0644") && e.contains("chmod o-rwx"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
        chmod(0o600);
        std::fs::write(&file, "\n").unwrap_or_else(|e| panic!("{e}"));
        assert!(
            cfg.read_database_url_file()
                .unwrap_err()
                .contains("is empty")
        );
        // The URL from the environment wins over any file.
        let mut cfg = Config {
            database_url_file: Some(file.clone()),
            ..Config::default()
        };
        cfg.apply_env(var("BERTH_DATABASE_URL", "postgres://env/berth".into()));
        assert_eq!(cfg.read_database_url_file(), Ok(()));
        assert_eq!(cfg.database_url(), "postgres://env/berth");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml("[network]\nbrige = \"x\"\n").unwrap_err();
        assert!(err.contains("brige"), "{err}");
        let err = Config::from_toml("statedir = \"/x\"\n").unwrap_err();
        assert!(err.contains("statedir"), "{err}");
    }

    #[test]
    fn credential_without_config_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = credential_path(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("berth.toml") && err.contains("LoadCredential"),
            "{err}"
        );
        std::fs::write(dir.path().join("berth.toml"), "").unwrap();
        assert_eq!(
            credential_path(dir.path()).unwrap(),
            Some(dir.path().join("berth.toml"))
        );
    }

    #[test]
    fn metrics_endpoints_must_differ() {
        let mut cfg = Config::default();
        cfg.validate().unwrap();
        cfg.metrics.dns_listen = cfg.metrics.listen.clone();
        assert!(cfg.validate().unwrap_err().contains("fight"));
        cfg.metrics.dns_listen = "localhost".into();
        assert!(cfg.validate().unwrap_err().contains("dns_listen"));
        cfg.metrics.dns_listen = String::new();
        cfg.publish.hosts_file = "run/hosts".into();
        assert!(cfg.validate().unwrap_err().contains("hosts_file"));
    }

    #[test]
    fn defaults_roundtrip() {
        let cfg = Config::default();
        let text = cfg.to_toml().unwrap();
        let back = Config::from_toml(&text).unwrap();
        assert_eq!(back.to_toml().unwrap(), text);
    }
}
