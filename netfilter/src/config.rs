//! The `[netfilter]` config section: what the operator may tune about the egress filter.
//!
//! The tenant network itself (bridge, subnets, gateways) is not configured here: it lives in
//! `[network]` and reaches this crate as a plain [`crate::Network`]. This module only parses and
//! validates; it never touches the kernel.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::addr::{AllowEntry, parse_allow_entry, parse_prefix};

/// How tenant↔tenant frames on the same bridge are recognised in the `bridge` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum BridgeMatch {
    /// `meta` when the kernel supports bridge meta expressions (probed with `nft -c`), else
    /// `addresses`.
    #[default]
    Auto,
    /// `meta ibrname "<bridge>" drop`: every frame forwarded between two ports of the tenant
    /// bridge, whatever its protocol. Needs CONFIG_NFT_BRIDGE_META (stock distribution kernels).
    Meta,
    /// Frames whose IPv4/IPv6/ARP source or destination is in a tenant subnet. Works on every
    /// kernel; pair it with `isolate_ports` to also stop link-local IPv6 and raw Ethernet.
    Addresses,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Name of berth's own `inet` table and `bridge` table (nothing else is ever touched).
    pub table: String,
    /// Hook priority of our base chains relative to `filter` (0). Negative runs before Docker's
    /// filter chains; must stay above conntrack (-200) so `ct state` works.
    pub priority: i32,
    /// Prefixes tenants may never reach, on top of the built-in private/special-purpose list
    /// (IPv4 or IPv6, e.g. "203.0.113.0/24", "2001:db8:1::/48", "192.0.2.7").
    pub extra_deny: Vec<String>,
    /// Destinations tenants may reach even though they are denied otherwise:
    /// `address[/len][:port]`, IPv6 in brackets when a port is given ("[fd00::5]:443").
    /// A port allows TCP and UDP to that port. Host addresses may be listed too (e.g. a
    /// registry cache on the host); tenant↔tenant traffic can never be allowlisted.
    pub allow: Vec<String>,
    /// Port of the resolver on the tenant gateway address (UDP and TCP).
    pub resolver_port: u16,
    /// Kernel log prefix for dropped packets; the reason is appended ("berth-drop private: ").
    pub log_prefix: String,
    /// Logged drops per second (token bucket); 0 disables logging (counters stay).
    pub log_rate: u32,
    /// Burst of logged drops above `log_rate`.
    pub log_burst: u32,
    /// Seconds between drift checks in `berth run netfilter`.
    pub check_interval_secs: u64,
    /// Also re-check immediately on `nft monitor` events (polling still runs).
    pub monitor: bool,
    /// How the bridge table recognises tenant↔tenant frames.
    pub bridge_match: BridgeMatch,
    /// Set the kernel's bridge-port `isolated` flag on every port of the tenant bridge (closes
    /// L2 between tenants for every protocol, independent of nftables). Re-applied by the drift
    /// watch as containers come and go.
    pub isolate_ports: bool,
    /// The `nft` executable (looked up in PATH when not absolute).
    pub nft: String,
    /// The port map: a JSON file of tenant endpoints (see `netfilter::bindings::PortsFile`)
    /// the process with Docker access rewrites atomically. Each bridge port leading into a
    /// listed tenant's namespace may then claim only that tenant's MAC and addresses (ARP, ND,
    /// IP source); ports of the tenant bridge that are not listed get nothing. Followed every
    /// `ports_poll_ms` by `berth run netfilter`. Empty disables port binding (anti-spoofing is
    /// then only "source inside the tenant subnet").
    pub ports_file: String,
    /// How often the netfilter daemon re-reads the port map and the bridge's ports.
    pub ports_poll_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            table: "berth".into(),
            priority: -10,
            extra_deny: Vec::new(),
            allow: Vec::new(),
            resolver_port: 53,
            log_prefix: "berth-drop".into(),
            log_rate: 10,
            log_burst: 20,
            check_interval_secs: 10,
            monitor: true,
            bridge_match: BridgeMatch::Auto,
            isolate_ports: true,
            nft: "nft".into(),
            ports_file: "/run/berth/ports.json".into(),
            ports_poll_ms: 500,
        }
    }
}

/// The validated, parsed form of [`Config`] that the renderer consumes.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub table: String,
    pub priority: i32,
    pub extra_deny: Vec<IpNet>,
    pub allow: Vec<AllowEntry>,
    pub resolver_port: u16,
    pub log_prefix: String,
    pub log_rate: u32,
    pub log_burst: u32,
}

impl Config {
    /// Checks every key and returns the parsed policy; messages name the offending key.
    pub fn policy(&self) -> Result<Policy, String> {
        let valid_name = !self.table.is_empty()
            && self.table.len() <= 64
            && self
                .table
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            && self.table.starts_with(|c: char| c.is_ascii_alphabetic());
        if !valid_name {
            return Err(format!(
                "netfilter.table {:?} must start with a letter and contain only letters, digits, '_' or '-' (at most 64)",
                self.table
            ));
        }
        if !(-199..=-1).contains(&self.priority) {
            return Err(format!(
                "netfilter.priority {} must be between -199 and -1 (before Docker's filter chains at 0, after conntrack at -200)",
                self.priority
            ));
        }
        let mut extra_deny = Vec::with_capacity(self.extra_deny.len());
        for s in &self.extra_deny {
            extra_deny.push(parse_prefix(s).map_err(|e| format!("netfilter.extra_deny: {e}"))?);
        }
        let mut allow = Vec::with_capacity(self.allow.len());
        for s in &self.allow {
            allow.push(parse_allow_entry(s).map_err(|e| format!("netfilter.allow: {e}"))?);
        }
        if self.resolver_port == 0 {
            return Err("netfilter.resolver_port must not be 0".into());
        }
        if self.log_prefix.is_empty()
            || self.log_prefix.len() > 64
            || !self
                .log_prefix
                .chars()
                .all(|c| c.is_ascii_graphic() && c != '"')
        {
            return Err(format!(
                "netfilter.log_prefix {:?} must be 1-64 printable ASCII characters without spaces or quotes",
                self.log_prefix
            ));
        }
        if self.log_rate > 0 && self.log_burst == 0 {
            return Err("netfilter.log_burst must be at least 1 when log_rate is set".into());
        }
        if self.check_interval_secs == 0 {
            return Err("netfilter.check_interval_secs must be at least 1".into());
        }
        if !self.ports_file.is_empty() && !self.ports_file.starts_with('/') {
            return Err(format!(
                "netfilter.ports_file {:?} must be an absolute path (or \"\" to disable port binding)",
                self.ports_file
            ));
        }
        if !(50..=60_000).contains(&self.ports_poll_ms) {
            return Err(format!(
                "netfilter.ports_poll_ms {} must be between 50 and 60000",
                self.ports_poll_ms
            ));
        }
        if self.nft.is_empty() {
            return Err("netfilter.nft must name the nft executable".into());
        }
        Ok(Policy {
            table: self.table.clone(),
            priority: self.priority,
            extra_deny,
            allow,
            resolver_port: self.resolver_port,
            log_prefix: self.log_prefix.clone(),
            log_rate: self.log_rate,
            log_burst: self.log_burst,
        })
    }

    /// Validation only (for `berth config check`).
    pub fn validate(&self) -> Result<(), String> {
        self.policy().map(|_| ())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let p = Config::default().policy().unwrap();
        assert_eq!(p.table, "berth");
        assert_eq!(p.priority, -10);
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases: Vec<(Config, &str)> = vec![
            (
                Config {
                    table: "".into(),
                    ..Default::default()
                },
                "netfilter.table",
            ),
            (
                Config {
                    table: "a b".into(),
                    ..Default::default()
                },
                "netfilter.table",
            ),
            (
                Config {
                    priority: 0,
                    ..Default::default()
                },
                "netfilter.priority",
            ),
            (
                Config {
                    priority: -200,
                    ..Default::default()
                },
                "netfilter.priority",
            ),
            (
                Config {
                    extra_deny: vec!["10.0.0.1/8".into()],
                    ..Default::default()
                },
                "netfilter.extra_deny",
            ),
            (
                Config {
                    extra_deny: vec!["nonsense".into()],
                    ..Default::default()
                },
                "netfilter.extra_deny",
            ),
            (
                Config {
                    allow: vec!["1.2.3.4:0".into()],
                    ..Default::default()
                },
                "netfilter.allow",
            ),
            (
                Config {
                    resolver_port: 0,
                    ..Default::default()
                },
                "netfilter.resolver_port",
            ),
            (
                Config {
                    log_prefix: "a\"b".into(),
                    ..Default::default()
                },
                "netfilter.log_prefix",
            ),
            (
                Config {
                    log_burst: 0,
                    ..Default::default()
                },
                "netfilter.log_burst",
            ),
            (
                Config {
                    check_interval_secs: 0,
                    ..Default::default()
                },
                "check_interval_secs",
            ),
            (
                Config {
                    ports_file: "run/ports.json".into(),
                    ..Default::default()
                },
                "netfilter.ports_file",
            ),
            (
                Config {
                    ports_poll_ms: 0,
                    ..Default::default()
                },
                "netfilter.ports_poll_ms",
            ),
        ];
        for (cfg, key) in cases {
            let err = cfg.policy().unwrap_err();
            assert!(err.contains(key), "{err} should name {key}");
        }
    }

    #[test]
    fn unknown_key_is_rejected() {
        let err = toml::from_str::<Config>("tabel = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("tabel"), "{err}");
    }

    #[test]
    fn toml_roundtrip() {
        let text = r#"
table = "bf"
priority = -20
extra_deny = ["203.0.113.0/24", "2001:db8::/32"]
allow = ["10.0.0.5:5000", "[fd00::5]:443", "192.168.7.0/24"]
resolver_port = 5353
log_prefix = "bf-drop"
log_rate = 0
check_interval_secs = 3
monitor = false
bridge_match = "addresses"
isolate_ports = false
nft = "/usr/sbin/nft"
ports_file = ""
ports_poll_ms = 1000
"#;
        let cfg: Config = toml::from_str(text).unwrap();
        let p = cfg.policy().unwrap();
        assert_eq!(p.extra_deny.len(), 2);
        assert_eq!(p.allow.len(), 3);
        assert_eq!(cfg.bridge_match, BridgeMatch::Addresses);
        let back: Config = toml::from_str(&toml::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);
    }
}
