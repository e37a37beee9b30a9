//! The `[network]` and `[tenants]` config sections (tenants owns the tenant network).

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

/// `[network]`: the Docker bridge every server joins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Docker network name.
    pub name: String,
    /// Linux bridge interface name (`com.docker.network.bridge.name`).
    pub bridge: String,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// Optional IPv6 subnet for the tenant network; off when absent.
    pub subnet6: Option<Ipv6Net>,
    pub gateway6: Option<Ipv6Addr>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            name: "berth-tenants".into(),
            bridge: "berth0".into(),
            // Literal, valid CIDR: parse cannot fail.
            subnet: Ipv4Net::new(Ipv4Addr::new(172, 19, 2, 0), 24).unwrap_or_default(),
            gateway: Ipv4Addr::new(172, 19, 2, 1),
            subnet6: None,
            gateway6: None,
        }
    }
}

impl NetworkConfig {
    /// Checks internal consistency; the message names the offending key.
    pub fn validate(&self) -> Result<(), String> {
        if !self.subnet.contains(&self.gateway) {
            return Err(format!(
                "network.gateway {} is not inside network.subnet {}",
                self.gateway, self.subnet
            ));
        }
        if self.bridge.is_empty() || self.bridge.len() > 15 {
            return Err(format!(
                "network.bridge {:?} must be 1-15 characters (a Linux interface name)",
                self.bridge
            ));
        }
        match (self.subnet6, self.gateway6) {
            (Some(net), Some(gw)) if !net.contains(&gw) => Err(format!(
                "network.gateway6 {gw} is not inside network.subnet6 {net}"
            )),
            (Some(_), None) | (None, Some(_)) => {
                Err("network.subnet6 and network.gateway6 must be set together".into())
            }
            _ => Ok(()),
        }
    }
}

/// `[tenants]`: how tenant containers are made.
///
/// Limits here are the defaults; a server created with its own `--memory/--cpus/--pids` keeps
/// those. `0` means "no limit" for each of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Default image for new servers (a server may name its own).
    pub image: String,
    /// Prefix of every Docker object berth makes: `<prefix>-server-<N>`, `<prefix>-server-<N>-data`.
    /// Change it only to run several independent berth instances (or tests) on one engine.
    pub name_prefix: String,
    /// Where the per-server data volume is mounted inside the container.
    pub volume_mount: String,
    /// The login user for servers that do not name their own (`server create --user`): the exec
    /// user for shells, commands and SFTP. `root` makes tenants root inside their container.
    pub user: String,
    /// Set `no-new-privileges` on tenant containers (no setuid escalation, e.g. no `sudo`). A
    /// separate choice from the login user: a root login needs no escalation either way.
    pub no_new_privileges: bool,
    /// Default memory limit, e.g. "1g", "512m", or a byte count; "0" = unlimited.
    pub memory: ByteSize,
    /// Default CPU limit in CPUs (fractions allowed); 0 = unlimited.
    pub cpus: f64,
    /// Default PIDs limit; 0 = unlimited.
    pub pids: i64,
    /// Docker restart policy for server containers.
    pub restart: RestartPolicy,
    /// Docker-in-Docker support: "off", "privileged" or "runtime" (uses `runtime`).
    pub dind: DindMode,
    /// OCI runtime for `dind = "runtime"` (e.g. "sysbox-runc"); also applied when set otherwise.
    pub runtime: Option<String>,
    /// Seconds Docker waits after SIGTERM before SIGKILL on stop/restart.
    pub stop_timeout_secs: u32,
    /// Docker endpoint; default: the `DOCKER_HOST` environment variable, else the local socket.
    pub docker_host: Option<String>,
    /// Host directory holding one subdirectory per server, mounted read-only at `/dev/berth` in
    /// that server's container: the gateway's socket for the in-container session agent (the
    /// fast session data path). Empty: no mount, every session goes through Docker's exec
    /// stream. Containers made before this key existed get the mount when recreated.
    pub agent_dir: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            image: "berth/tenant:bookworm".into(),
            name_prefix: "berth".into(),
            volume_mount: "/apps".into(),
            user: "tenant".into(),
            no_new_privileges: true,
            memory: ByteSize(1 << 30),
            cpus: 1.0,
            pids: 1024,
            restart: RestartPolicy::UnlessStopped,
            dind: DindMode::Off,
            runtime: None,
            stop_timeout_secs: 10,
            docker_host: None,
            agent_dir: "/var/lib/berth/agent".into(),
        }
    }
}

impl Config {
    /// Checks internal consistency; the message names the offending key.
    pub fn validate(&self) -> Result<(), String> {
        if self.image.trim().is_empty() {
            return Err("tenants.image must not be empty".into());
        }
        let p = self.name_prefix.as_bytes();
        if p.is_empty()
            || p.len() > 32
            || !p[0].is_ascii_alphanumeric()
            || !p
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
        {
            return Err(format!(
                "tenants.name_prefix {:?} must be 1-32 characters of [a-zA-Z0-9_.-] starting with a letter or digit",
                self.name_prefix
            ));
        }
        if !self.volume_mount.starts_with('/') || self.volume_mount == "/" {
            return Err(format!(
                "tenants.volume_mount {:?} must be an absolute path other than /",
                self.volume_mount
            ));
        }
        if !(self.cpus.is_finite() && self.cpus >= 0.0) {
            return Err(format!("tenants.cpus {} must be a number >= 0", self.cpus));
        }
        if self.pids < 0 {
            return Err(format!("tenants.pids {} must be >= 0", self.pids));
        }
        if self.dind == DindMode::Runtime && self.runtime.as_deref().is_none_or(str::is_empty) {
            return Err(
                "tenants.dind = \"runtime\" needs tenants.runtime (e.g. \"sysbox-runc\")".into(),
            );
        }
        if !crate::spec::valid_user(&self.user) {
            return Err(format!(
                "tenants.user {:?} must be root or a login name of [a-z0-9_-] starting with a letter or _",
                self.user
            ));
        }
        Ok(())
    }
}

/// Docker restart policy names, as Docker spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    No,
    UnlessStopped,
    Always,
    OnFailure,
}

/// How a server container gets what a nested Docker engine needs.
///
/// `privileged` is what stock Docker-in-Docker images expect; `runtime` delegates isolation to
/// a runtime such as sysbox-runc (no privileged flag). Neither works on hosts whose bounding set
/// lacks CAP_SYS_RESOURCE (like berth's CI machine): there, creating such a server fails cleanly
/// (tested). Checked by hand on that machine: the `berth image build --variant dind` image's
/// dockerd starts and the `tenant` user (docker group) reaches it when run with only
/// `--cap-add SYS_ADMIN --cap-add NET_ADMIN` and unconfined seccomp/AppArmor, but nested
/// containers need `privileged` or a runtime such as sysbox-runc.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DindMode {
    Off,
    Privileged,
    Runtime,
    /// Without `--privileged`: SYS_ADMIN, NET_ADMIN, SYS_PTRACE and MKNOD, a private cgroup
    /// namespace, seccomp and AppArmor unconfined; the image's init remounts cgroups read-write.
    /// Not a security boundary against a hostile tenant (see docs/SECURITY.md).
    Caps,
    /// A rootless nested dockerd started by the image's init as the tenant user, with no
    /// capability beyond Docker's defaults: a seccomp profile that allows namespaces and mounts
    /// (`spec::rootless_seccomp_profile`), `systempaths=unconfined`, `/dev/net/tun`. Only on an
    /// engine whose container root is not host root (`--userns-remap` or a rootless engine):
    /// berth refuses to create such a container anywhere else (docs/SECURITY.md).
    Rootless,
}

impl DindMode {
    pub fn as_str(self) -> &'static str {
        match self {
            DindMode::Off => "off",
            DindMode::Privileged => "privileged",
            DindMode::Runtime => "runtime",
            DindMode::Caps => "caps",
            DindMode::Rootless => "rootless",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            DindMode::Off,
            DindMode::Privileged,
            DindMode::Runtime,
            DindMode::Caps,
            DindMode::Rootless,
        ]
        .into_iter()
        .find(|m| m.as_str() == s)
    }
}

/// A byte count written as Docker does: `512m`, `1g`, `1.5g`, `2048k`, or plain bytes.
/// Units are binary (k = 1024). Serialised back in the shortest exact form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `512m`, `1g`, `1.5G`, `100` (bytes), `64kb`, `1gib`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim().to_ascii_lowercase();
        let num_end = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(num_end);
        let mult: u64 = match unit.trim() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            "t" | "tb" | "tib" => 1 << 40,
            other => {
                return Err(format!(
                    "unknown size unit {other:?} in {s:?} (use b, k, m, g or t)"
                ));
            }
        };
        if num.is_empty() {
            return Err(format!("size {s:?} has no number (e.g. 512m, 1g)"));
        }
        let bytes = if num.contains('.') {
            let f: f64 = num.parse().map_err(|_| format!("invalid size {s:?}"))?;
            let v = f * mult as f64;
            if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
                return Err(format!("size {s:?} is out of range"));
            }
            v.round() as u64
        } else {
            let n: u64 = num.parse().map_err(|_| format!("invalid size {s:?}"))?;
            n.checked_mul(mult)
                .ok_or_else(|| format!("size {s:?} is out of range"))?
        };
        Ok(Self(bytes))
    }
}

impl std::fmt::Display for ByteSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0;
        for (unit, m) in [
            ("t", 1u64 << 40),
            ("g", 1 << 30),
            ("m", 1 << 20),
            ("k", 1 << 10),
        ] {
            if n != 0 && n.is_multiple_of(m) {
                return write!(f, "{}{unit}", n / m);
            }
        }
        write!(f, "{n}")
    }
}

impl std::str::FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes() {
        let cases: &[(&str, Option<u64>)] = &[
            ("0", Some(0)),
            ("100", Some(100)),
            ("512m", Some(512 << 20)),
            ("1g", Some(1 << 30)),
            ("1G", Some(1 << 30)),
            ("1.5g", Some(3 << 29)),
            ("64kb", Some(64 << 10)),
            ("2GiB", Some(2 << 30)),
            (" 3m ", Some(3 << 20)),
            ("", None),
            ("m", None),
            ("1x", None),
            ("-1", None),
            ("99999999999999999999", None),
            ("20000000000t", None),
        ];
        for (input, want) in cases {
            assert_eq!(
                ByteSize::parse(input).ok().map(|b| b.0),
                *want,
                "input {input:?}"
            );
        }
        for n in [0u64, 1, 1023, 1024, 512 << 20, 3 << 29, 1 << 40] {
            assert_eq!(ByteSize::parse(&ByteSize(n).to_string()), Ok(ByteSize(n)));
        }
    }

    #[test]
    fn config_roundtrip_and_validate() {
        let cfg = Config::default();
        cfg.validate().unwrap();
        let text = toml::to_string(&cfg).unwrap();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back, cfg);
        let c: Config =
            toml::from_str("memory = \"512m\"\ndind = \"runtime\"\nruntime = \"sysbox-runc\"")
                .unwrap();
        assert_eq!(c.memory, ByteSize(512 << 20));
        c.validate().unwrap();
        let c: Config = toml::from_str("dind = \"runtime\"").unwrap();
        assert!(c.validate().unwrap_err().contains("tenants.runtime"));
        let e = toml::from_str::<Config>("memroy = 1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("memroy"), "{e}");
        let e = toml::from_str::<Config>("memory = \"1q\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unit"), "{e}");
        let c = Config {
            name_prefix: "bad/prefix".into(),
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().contains("name_prefix"));
    }
}
