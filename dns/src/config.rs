//! The `[dns]` config section: what the resolver listens on, forwards to, caches and refuses.
//!
//! Every key has a default; unknown keys are an error. Durations are integer milliseconds (or
//! seconds where the key says so) so the TOML stays plain. `validate` checks consistency only; it
//! does no IO.

use std::net::SocketAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// What a blocked name resolves to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BlocklistMode {
    /// NXDOMAIN for every type.
    #[default]
    Nxdomain,
    /// `0.0.0.0` for A, `::` for AAAA, an empty answer for other types.
    Sinkhole,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// UDP and TCP listen addresses (operator contract). Bound with IP_FREEBIND, so the tenant
    /// bridge address may appear later.
    pub listen: Vec<SocketAddr>,
    /// Upstream resolvers, tried in order (operator contract).
    pub upstreams: Vec<SocketAddr>,
    /// When set, upstreams are read from the `nameserver` lines of this file instead (e.g.
    /// `/etc/resolv.conf`); never read unless configured.
    pub resolv_file: Option<PathBuf>,
    /// Local zone: `server<N>.<domain>` (operator contract).
    pub domain: String,
    /// TTL of local answers, seconds (short: servers come and go).
    pub local_ttl: u32,
    /// Cache capacity in entries (one entry = one name/type/class); 0 disables the cache.
    pub cache_size: usize,
    /// Cache budget in (estimated) bytes: old entries are evicted (about least recently used first) until the
    /// cache is under it, whatever the entry count (a hostile zone can answer 64 KiB a name).
    pub cache_max_bytes: usize,
    /// Answers estimated above this many bytes are served but never cached.
    pub cache_max_entry_bytes: usize,
    /// Clamp for positive TTLs, seconds.
    pub min_ttl: u32,
    pub max_ttl: u32,
    /// Upper bound for negative-caching TTLs (taken from the SOA), seconds.
    pub negative_ttl_max: u32,
    /// How long past expiry an entry may still be served when every upstream fails, seconds
    /// (0 disables serve-stale).
    pub stale_max_secs: u32,
    /// TTL given to a stale answer (RFC 8767 suggests 30), seconds.
    pub stale_answer_ttl: u32,
    /// How long a client waits for a refresh of an expired entry before it gets the stale one, ms.
    pub stale_wait_ms: u64,
    /// Per-upstream attempt timeout, ms.
    pub upstream_timeout_ms: u64,
    /// Overall bound on a forwarded query; SERVFAIL after it, ms.
    pub query_timeout_ms: u64,
    /// Global cap on distinct queries outstanding upstream (like dnsmasq's dns-forward-max).
    pub max_inflight: usize,
    /// Per-client queries per second (token bucket); 0 disables.
    pub rate_limit_qps: u32,
    /// Per-client burst.
    pub rate_limit_burst: u32,
    /// Extra client networks allowed besides the tenant subnet(s); others get REFUSED.
    pub allow_from: Vec<IpNet>,
    /// File with one blocked domain a line (subdomains included; `#` comments; hosts-file
    /// lines `0.0.0.0 name` accepted). Reloaded on SIGHUP and when it changes.
    pub blocklist: Option<PathBuf>,
    pub blocklist_mode: BlocklistMode,
    /// Single-label names are never forwarded (dnsmasq `domain-needed`).
    pub domain_needed: bool,
    /// Reverse lookups of private ranges are never forwarded (dnsmasq `bogus-priv`).
    pub bogus_priv: bool,
    /// Private-range addresses in upstream answers are stripped (dnsmasq `stop-dns-rebind`).
    pub rebind_protection: bool,
    /// Domains (and their subdomains) whose upstream answers may contain private addresses.
    pub rebind_allowlist: Vec<String>,
    /// Log every query (target `berth::dns::query`); off by default, it costs throughput.
    pub query_log: bool,
    /// Idle TCP client connections are closed after this many seconds.
    pub tcp_idle_timeout_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from(([172, 19, 2, 1], 53))],
            upstreams: vec![
                SocketAddr::from(([1, 1, 1, 1], 53)),
                SocketAddr::from(([8, 8, 8, 8], 53)),
            ],
            resolv_file: None,
            domain: "berth.internal".into(),
            local_ttl: 5,
            cache_size: 100_000,
            cache_max_bytes: crate::cache::DEFAULT_MAX_BYTES,
            cache_max_entry_bytes: crate::cache::DEFAULT_MAX_ENTRY_BYTES,
            min_ttl: 0,
            max_ttl: 86_400,
            negative_ttl_max: 3_600,
            stale_max_secs: 86_400,
            stale_answer_ttl: 30,
            stale_wait_ms: 1_500,
            upstream_timeout_ms: 1_000,
            query_timeout_ms: 2_500,
            max_inflight: 1_024,
            rate_limit_qps: 2_000,
            rate_limit_burst: 4_000,
            allow_from: Vec::new(),
            blocklist: None,
            blocklist_mode: BlocklistMode::Nxdomain,
            domain_needed: true,
            bogus_priv: true,
            rebind_protection: true,
            rebind_allowlist: Vec::new(),
            query_log: false,
            tcp_idle_timeout_secs: 10,
        }
    }
}

impl Config {
    /// Checks internal consistency; the message names the offending key.
    pub fn validate(&self) -> Result<(), String> {
        if self.listen.is_empty() {
            return Err("dns.listen must name at least one address".into());
        }
        if self.upstreams.is_empty() && self.resolv_file.is_none() {
            return Err(
                "dns.upstreams must name at least one upstream (or set dns.resolv_file)".into(),
            );
        }
        if let Err(e) = hickory_proto::rr::Name::from_ascii(&self.domain) {
            return Err(format!(
                "dns.domain {:?} is not a domain name: {e}",
                self.domain
            ));
        }
        if self.domain.trim_matches('.').is_empty() {
            return Err("dns.domain must not be the root".into());
        }
        if self.min_ttl > self.max_ttl {
            return Err(format!(
                "dns.min_ttl {} is larger than dns.max_ttl {}",
                self.min_ttl, self.max_ttl
            ));
        }
        if self.upstream_timeout_ms == 0 || self.query_timeout_ms == 0 {
            return Err("dns.upstream_timeout_ms and dns.query_timeout_ms must be positive".into());
        }
        if self.max_inflight == 0 {
            return Err("dns.max_inflight must be positive".into());
        }
        if self.cache_size > 0 && self.cache_max_entry_bytes > self.cache_max_bytes {
            return Err(format!(
                "dns.cache_max_entry_bytes {} is larger than dns.cache_max_bytes {}",
                self.cache_max_entry_bytes, self.cache_max_bytes
            ));
        }
        if self.rate_limit_qps > 0 && self.rate_limit_burst == 0 {
            return Err(
                "dns.rate_limit_burst must be positive when dns.rate_limit_qps is set".into(),
            );
        }
        for d in &self.rebind_allowlist {
            if let Err(e) = hickory_proto::rr::Name::from_ascii(d) {
                return Err(format!(
                    "dns.rebind_allowlist entry {d:?} is not a domain name: {e}"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_keys_parse_and_defaults_hold() {
        let c: Config = toml::from_str(
            r#"
listen = ["172.19.2.1:53"]
upstreams = ["1.1.1.1:53", "8.8.8.8:53"]
domain = "berth.internal"
"#,
        )
        .unwrap();
        assert_eq!(c, Config::default());
        assert!(c.validate().is_ok());
    }

    #[test]
    fn unknown_key_is_named() {
        let e = toml::from_str::<Config>("cache_sise = 5")
            .err()
            .map(|e| e.to_string());
        assert!(e.unwrap_or_default().contains("cache_sise"));
    }

    #[test]
    fn validation_names_keys() {
        let c = Config {
            min_ttl: 10,
            max_ttl: 5,
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().contains("dns.min_ttl"));
        let c = Config {
            listen: vec![],
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().contains("dns.listen"));
        let c = Config {
            domain: ".".into(),
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().contains("dns.domain"));
        let c: Config = toml::from_str("blocklist_mode = \"sinkhole\"").unwrap();
        assert_eq!(c.blocklist_mode, BlocklistMode::Sinkhole);
    }
}
