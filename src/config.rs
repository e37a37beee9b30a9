//! The one TOML file: each library crate defines the section it consumes; this composes them.
//!
//! Every key has a default, unknown keys are an error naming the key (serde's
//! `deny_unknown_fields` message does that), and `BERTH_STATE_DIR` / `BERTH_DATABASE_URL`
//! override the file.

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
    pub ssh: gateway::Config,
    pub network: tenants::NetworkConfig,
    pub dns: dns::Config,
    pub tenants: tenants::Config,
    pub netfilter: netfilter::Config,
    pub metrics: MetricsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("/var/lib/berth"),
            database_url: None,
            ssh: Default::default(),
            network: Default::default(),
            dns: Default::default(),
            tenants: Default::default(),
            netfilter: Default::default(),
            metrics: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Prometheus `/metrics` and `/healthz`; empty string disables.
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9477".into(),
        }
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

impl Config {
    /// Loads from an explicit path (must exist), else a systemd credential named `berth.toml`
    /// (`LoadCredential=`, how the unprivileged units receive the root-only file), else the
    /// default path if it exists, else defaults. Env overrides are applied last.
    pub fn load(explicit: Option<&Path>) -> Result<(Self, Source)> {
        let credential = std::env::var_os("CREDENTIALS_DIRECTORY")
            .map(|d| PathBuf::from(d).join("berth.toml"))
            .filter(|p| p.exists());
        let (mut cfg, source) = match explicit.map(Path::to_path_buf).or(credential) {
            Some(p) => (Self::from_file(&p)?, Source::File(p)),
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => (
                Self::from_file(Path::new(DEFAULT_CONFIG_PATH))?,
                Source::File(DEFAULT_CONFIG_PATH.into()),
            ),
            None => (Self::default(), Source::Defaults),
        };
        if let Some(dir) = std::env::var_os("BERTH_STATE_DIR").filter(|v| !v.is_empty()) {
            cfg.state_dir = PathBuf::from(dir);
        }
        if let Ok(url) = std::env::var("BERTH_DATABASE_URL")
            && !url.is_empty()
        {
            cfg.database_url = Some(url);
        }
        cfg.validate()
            .map_err(|e| ConfigError(format!("{source}: {e}")))?;
        Ok((cfg, source))
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
        Ok(())
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
    fn unknown_key_is_named() {
        let err = Config::from_toml("[network]\nbrige = \"x\"\n").unwrap_err();
        assert!(err.contains("brige"), "{err}");
        let err = Config::from_toml("statedir = \"/x\"\n").unwrap_err();
        assert!(err.contains("statedir"), "{err}");
    }

    #[test]
    fn defaults_roundtrip() {
        let cfg = Config::default();
        let text = cfg.to_toml().unwrap();
        let back = Config::from_toml(&text).unwrap();
        assert_eq!(back.to_toml().unwrap(), text);
    }
}
