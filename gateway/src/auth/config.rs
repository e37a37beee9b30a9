//! `[ssh.auth]`: every brute-force and admission limit, with defaults an operator can live with.
//!
//! Plain data only; the decisions that read it live in `limits.rs` (pure) and `mod.rs` (IO).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::hostkeys::HostKeyConfig;

/// Authentication, admission and host-key settings (`[ssh.auth]` in the TOML file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Concurrent connections that have not authenticated yet, whole gateway.
    pub max_unauthenticated: usize,
    /// Concurrent unauthenticated connections from one source address.
    pub max_unauthenticated_per_ip: usize,
    /// New connections per source address: burst …
    pub connections_per_ip_burst: u32,
    /// … then one more every this many milliseconds.
    pub connections_per_ip_interval_ms: u64,
    /// Seconds a connection may take from accept to successful authentication.
    pub login_grace_time_secs: u64,
    /// Failed authentication requests per connection before it is closed.
    pub max_auth_attempts: usize,
    /// Seconds every failed attempt takes to be answered (russh pads rejections to this).
    pub rejection_delay_ms: u64,
    /// Password attempts per source address: burst …
    pub ip_attempts_burst: u32,
    /// … then one more every this many milliseconds.
    pub ip_attempts_interval_ms: u64,
    /// Password failures from one address within `ban_window_secs` that start a ban.
    pub ban_after_failures: u32,
    pub ban_window_secs: u64,
    /// First ban length; each further ban doubles it, up to `ban_max_secs`.
    pub ban_base_secs: u64,
    pub ban_max_secs: u64,
    /// Seconds without a new ban after which an address's ban history is forgotten.
    pub ban_forget_secs: u64,
    /// Password attempts against one server from addresses without a recent success there:
    /// burst …
    pub server_attempts_burst: u32,
    /// … then one more every this many milliseconds.
    pub server_attempts_interval_ms: u64,
    /// Password attempts against one server from an address that logged in there successfully
    /// within `trusted_for_secs` (the owner's usual address): a separate budget, burst …
    pub trusted_attempts_burst: u32,
    /// … then one more every this many milliseconds.
    pub trusted_attempts_interval_ms: u64,
    /// How long a successful login makes its source address "usual" for that server.
    pub trusted_for_secs: u64,
    /// Most bcrypt verifications running at once (0 = half the CPUs, at least 1).
    pub bcrypt_concurrency: usize,
    /// Password attempts (from addresses without a recent success) that may wait for a bcrypt
    /// slot; more are refused at once, so a distributed storm cannot queue without bound.
    pub bcrypt_queue: usize,
    /// Cost of the dummy hash used for unknown servers; must equal the cost of real hashes
    /// (the store's cost) so that timing does not tell them apart.
    pub bcrypt_dummy_cost: u32,
    /// Seconds between sweeps of idle limiter state (`retain_recent`).
    pub sweep_interval_secs: u64,
    /// Per-source limits (caps, connection rate, attempt budgets, bans, queues) count every
    /// IPv4 address in the same `/source_prefix_v4` as one source.
    pub source_prefix_v4: u8,
    /// Likewise for IPv6: one subscriber usually holds a whole /64 (or more), so counting single
    /// addresses would give an attacker an unlimited supply of sources.
    pub source_prefix_v6: u8,
    pub host_keys: HostKeyConfig,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            max_unauthenticated: 512,
            max_unauthenticated_per_ip: 16,
            connections_per_ip_burst: 32,
            connections_per_ip_interval_ms: 250,
            login_grace_time_secs: 60,
            max_auth_attempts: 6,
            rejection_delay_ms: 300,
            ip_attempts_burst: 10,
            ip_attempts_interval_ms: 6_000,
            ban_after_failures: 10,
            ban_window_secs: 600,
            ban_base_secs: 60,
            ban_max_secs: 86_400,
            ban_forget_secs: 86_400,
            server_attempts_burst: 20,
            server_attempts_interval_ms: 3_000,
            trusted_attempts_burst: 10,
            trusted_attempts_interval_ms: 6_000,
            trusted_for_secs: 30 * 86_400,
            bcrypt_concurrency: 0,
            bcrypt_queue: 64,
            bcrypt_dummy_cost: bcrypt::DEFAULT_COST,
            sweep_interval_secs: 60,
            source_prefix_v4: 32,
            source_prefix_v6: 64,
            host_keys: HostKeyConfig::default(),
        }
    }
}

impl AuthConfig {
    pub fn login_grace_time(&self) -> Duration {
        Duration::from_secs(self.login_grace_time_secs)
    }

    pub fn rejection_delay(&self) -> Duration {
        Duration::from_millis(self.rejection_delay_ms)
    }

    /// Checks relations serde cannot express; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        let positive: &[(&str, u64)] = &[
            (
                "ssh.auth.max_unauthenticated",
                self.max_unauthenticated as u64,
            ),
            (
                "ssh.auth.max_unauthenticated_per_ip",
                self.max_unauthenticated_per_ip as u64,
            ),
            (
                "ssh.auth.connections_per_ip_burst",
                self.connections_per_ip_burst.into(),
            ),
            (
                "ssh.auth.connections_per_ip_interval_ms",
                self.connections_per_ip_interval_ms,
            ),
            ("ssh.auth.login_grace_time_secs", self.login_grace_time_secs),
            ("ssh.auth.max_auth_attempts", self.max_auth_attempts as u64),
            ("ssh.auth.ip_attempts_burst", self.ip_attempts_burst.into()),
            (
                "ssh.auth.ip_attempts_interval_ms",
                self.ip_attempts_interval_ms,
            ),
            (
                "ssh.auth.ban_after_failures",
                self.ban_after_failures.into(),
            ),
            ("ssh.auth.ban_window_secs", self.ban_window_secs),
            ("ssh.auth.ban_base_secs", self.ban_base_secs),
            (
                "ssh.auth.server_attempts_burst",
                self.server_attempts_burst.into(),
            ),
            (
                "ssh.auth.server_attempts_interval_ms",
                self.server_attempts_interval_ms,
            ),
            (
                "ssh.auth.trusted_attempts_burst",
                self.trusted_attempts_burst.into(),
            ),
            (
                "ssh.auth.trusted_attempts_interval_ms",
                self.trusted_attempts_interval_ms,
            ),
            ("ssh.auth.sweep_interval_secs", self.sweep_interval_secs),
            ("ssh.auth.bcrypt_queue", self.bcrypt_queue as u64),
        ];
        for (key, value) in positive {
            if *value == 0 {
                return Err(format!("{key} must be greater than 0"));
            }
        }
        if !(1..=32).contains(&self.source_prefix_v4) {
            return Err(format!(
                "ssh.auth.source_prefix_v4 must be between 1 and 32, got {}",
                self.source_prefix_v4
            ));
        }
        if !(1..=128).contains(&self.source_prefix_v6) {
            return Err(format!(
                "ssh.auth.source_prefix_v6 must be between 1 and 128, got {}",
                self.source_prefix_v6
            ));
        }
        if self.ban_max_secs < self.ban_base_secs {
            return Err("ssh.auth.ban_max_secs must be at least ssh.auth.ban_base_secs".into());
        }
        if !(4..=31).contains(&self.bcrypt_dummy_cost) {
            return Err("ssh.auth.bcrypt_dummy_cost must be between 4 and 31".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        assert_eq!(AuthConfig::default().validate(), Ok(()));
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let bad: Result<AuthConfig, _> = serde_json::from_str(r#"{"max_auth_attemps": 3}"#);
        assert!(bad.is_err_and(|e| e.to_string().contains("max_auth_attemps")));
        let nested: Result<AuthConfig, _> =
            serde_json::from_str(r#"{"host_keys": {"ed25519_path": "/x"}}"#);
        assert!(nested.is_err_and(|e| e.to_string().contains("ed25519_path")));
        let partial: AuthConfig =
            serde_json::from_str(r#"{"ban_base_secs": 5, "host_keys": {"rsa_bits": 4096}}"#)
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(partial.ban_base_secs, 5);
        assert_eq!(partial.host_keys.rsa_bits, 4096);
        assert_eq!(
            partial.max_auth_attempts,
            AuthConfig::default().max_auth_attempts
        );
        for (cfg, key) in [
            (
                AuthConfig {
                    ip_attempts_burst: 0,
                    ..Default::default()
                },
                "ip_attempts_burst",
            ),
            (
                AuthConfig {
                    bcrypt_queue: 0,
                    ..Default::default()
                },
                "bcrypt_queue",
            ),
            (
                AuthConfig {
                    ban_max_secs: 1,
                    ..Default::default()
                },
                "ban_max_secs",
            ),
            (
                AuthConfig {
                    bcrypt_dummy_cost: 3,
                    ..Default::default()
                },
                "bcrypt_dummy_cost",
            ),
        ] {
            let err = cfg.validate().err().unwrap_or_default();
            assert!(err.contains(key), "{key}: {err}");
        }
    }
}
