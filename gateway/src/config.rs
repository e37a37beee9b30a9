//! The `[ssh]` section of the one TOML file: listeners, SSH tuning, session limits and the
//! in-container exec policy. Every key has a default; unknown keys are an error.
//!
//! Authentication settings are the nested `[ssh.auth]` table ([`crate::auth::AuthConfig`]),
//! defined in `auth/config.rs` next to the code that reads them, so the brute-force defence's
//! knobs and their validation are read in one place.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Addresses to listen on (`host:port`).
    pub listen: Vec<String>,
    /// SSH identification string sent to clients (must start with `SSH-2.0-`).
    pub server_id: String,
    /// Per-channel receive window in bytes (also the bound of the per-channel input buffer).
    /// 2 MiB by default, OpenSSH's own: 60 concurrent uploads through an 8 MiB window took 4–8×
    /// as long on a two-core host and parked up to the whole window per channel in the gateway
    /// (docs/BENCHMARKS.md, issue 25).
    pub window_size: u32,
    /// Largest SSH packet payload we accept.
    pub max_packet_size: u32,
    /// Replenish a channel's receive window only when its bytes have been written into the
    /// container: this is what bounds the gateway's per-channel input buffer by `window_size`.
    /// Must be `true` in a config file ([`Config::validate`] refuses `false`). `false` restores
    /// russh's acknowledge-on-receipt behaviour, under which a client may legitimately send
    /// without limit while the container reads slowly, so no bound can hold without dropping a
    /// well-behaved client's data; it exists only for the flow test to demonstrate that failure.
    pub consumption_window: bool,
    /// User inside the container; empty = `tenant` when the image has it, else `root`.
    pub exec_user: String,
    /// Working directory for execs; empty = the user's home directory.
    pub exec_workdir: String,
    /// Client environment variables passed on besides `LANG`, `LC_*` and `TERM`
    /// (exact names, or a prefix ending in `*`).
    pub env_allow: Vec<String>,
    /// Where to look for the image's `sftp-server`, in order.
    pub sftp_server_paths: Vec<String>,
    /// Close a connection with no channel data in either direction for this long (0 = never).
    pub idle_timeout_secs: u64,
    /// Send an SSH keepalive after this many silent seconds (0 = never).
    pub keepalive_interval_secs: u64,
    /// Close the connection after this many unanswered keepalives.
    pub keepalive_max: usize,
    /// Close a session this many seconds after it started (0 = never); a server's or its
    /// account's own `--max-duration` replaces it.
    pub max_session_secs: u64,
    /// Audit SFTP sessions per operation (open/close with bytes, remove, rename, …).
    pub sftp_audit: bool,
    /// Concurrent channels (sessions and forwards) per connection.
    pub max_sessions_per_connection: usize,
    /// Concurrent channels per tenant server over all connections.
    pub max_sessions_per_server: usize,
    /// On SIGTERM, how long remaining sessions may continue before they are closed.
    pub drain_timeout_secs: u64,
    /// Tell the user on stderr when their login had to start the server.
    pub start_note: bool,
    /// The static `berth-agent` binary copied into containers for the fast session data path.
    /// Empty: `/usr/lib/berth/berth-agent`, else the one next to the `berth` binary. `"off"`:
    /// every session goes through Docker's exec stream.
    pub agent_binary: String,
    /// Agent forwarding (`ssh -A`): a socket in the session's container relays to the client's
    /// agent.
    pub allow_agent_forwarding: bool,
    /// Remote forwards (`ssh -R`, `tcpip-forward`): listeners inside the tenant's container.
    pub allow_remote_forwarding: bool,
    /// Unix-socket forwards (`direct-streamlocal` and `streamlocal-forward`) inside the container.
    pub allow_streamlocal_forwarding: bool,
    /// Where remote-forward listeners may bind inside the container: `loopback` (its
    /// 127.0.0.1/::1 only, whatever the client asks) or `container` (also its own address and
    /// the wildcard). Never the host's addresses: the listener lives in the container.
    pub remote_forward_bind: RemoteForwardBind,
    /// Remote-forward listeners (TCP and unix) one connection may hold at once.
    pub max_remote_listeners_per_connection: usize,
    /// Connections accepted on a connection's listeners that wait for the client to confirm
    /// their channel; beyond this, new ones are closed at once.
    pub max_pending_forwarded_per_connection: usize,
    /// The local control socket of `berth session list|kill` (root only, 0600). Empty:
    /// `<state_dir>/control.sock`; `"off"`: none.
    pub control_socket: String,
    /// `[ssh.auth]`: admission caps, brute-force budgets and bans, bcrypt, host keys
    /// (`[ssh.auth.host_keys]`). See `auth::AuthConfig`.
    pub auth: crate::auth::AuthConfig,
    /// The top-level `[recording]` section, set by the binary (with `dir` resolved against the
    /// state directory): not an `[ssh]` key.
    #[serde(skip)]
    pub recording: crate::recording::Config,
}

/// `[ssh] remote_forward_bind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RemoteForwardBind {
    Loopback,
    Container,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: vec!["0.0.0.0:2222".into()],
            server_id: "SSH-2.0-berth".into(),
            window_size: 2 * 1024 * 1024,
            max_packet_size: 65535,
            consumption_window: true,
            exec_user: String::new(),
            exec_workdir: String::new(),
            env_allow: Vec::new(),
            sftp_server_paths: vec![
                "/usr/lib/openssh/sftp-server".into(),
                "/usr/lib/ssh/sftp-server".into(),
                "/usr/libexec/openssh/sftp-server".into(),
                "/usr/libexec/sftp-server".into(),
                "/usr/lib/sftp-server".into(),
            ],
            idle_timeout_secs: 3600,
            keepalive_interval_secs: 30,
            keepalive_max: 4,
            max_session_secs: 0,
            sftp_audit: true,
            max_sessions_per_connection: 10,
            max_sessions_per_server: 64,
            drain_timeout_secs: 30,
            start_note: true,
            agent_binary: String::new(),
            allow_agent_forwarding: true,
            allow_remote_forwarding: true,
            allow_streamlocal_forwarding: true,
            remote_forward_bind: RemoteForwardBind::Loopback,
            max_remote_listeners_per_connection: 16,
            max_pending_forwarded_per_connection: 16,
            control_socket: String::new(),
            auth: crate::auth::AuthConfig::default(),
            recording: crate::recording::Config::default(),
        }
    }
}

impl Config {
    /// Checks values serde cannot (called by `berth config check` through the root config).
    pub fn validate(&self) -> Result<(), String> {
        if !self.server_id.starts_with("SSH-2.0-") || self.server_id.contains(['\r', '\n']) {
            return Err(format!(
                "ssh.server_id must start with \"SSH-2.0-\" and be one line, got {:?}",
                self.server_id
            ));
        }
        if self.window_size < 65536 {
            return Err(format!(
                "ssh.window_size must be at least 65536, got {}",
                self.window_size
            ));
        }
        if !(4096..=262144).contains(&self.max_packet_size) {
            return Err(format!(
                "ssh.max_packet_size must be within 4096..=262144, got {}",
                self.max_packet_size
            ));
        }
        if !self.consumption_window {
            return Err(
                "ssh.consumption_window = false is not supported: it replenishes channel \
                 windows on receipt, which removes the per-channel memory bound (a fast client \
                 could fill the gateway's memory); remove the key or set it to true"
                    .into(),
            );
        }
        self.auth.validate()?;
        if self.max_sessions_per_connection == 0 || self.max_sessions_per_server == 0 {
            return Err("ssh.max_sessions_per_connection and ssh.max_sessions_per_server must be at least 1".into());
        }
        if self.max_remote_listeners_per_connection == 0
            || self.max_pending_forwarded_per_connection == 0
        {
            return Err("ssh.max_remote_listeners_per_connection and ssh.max_pending_forwarded_per_connection must be at least 1 (use allow_remote_forwarding = false to refuse remote forwards)".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_unknown_keys_fail() {
        assert_eq!(Config::default().validate(), Ok(()));
        let bad: Result<Config, _> = serde_json::from_str(r#"{"nope": 1}"#);
        assert!(bad.is_err_and(|e| e.to_string().contains("nope")));
        let cfg = Config {
            server_id: "OpenSSH".into(),
            ..Default::default()
        };
        assert!(cfg.validate().is_err());
    }

    #[test]
    fn remote_forward_bind_takes_the_two_documented_values() {
        let cfg: Config = serde_json::from_str(r#"{"remote_forward_bind": "container"}"#)
            .unwrap_or_else(|e| panic!("parses: {e}"));
        assert_eq!(cfg.remote_forward_bind, RemoteForwardBind::Container);
        assert_eq!(
            Config::default().remote_forward_bind,
            RemoteForwardBind::Loopback
        );
        assert!(serde_json::from_str::<Config>(r#"{"remote_forward_bind": "host"}"#).is_err());
        let d = Config::default();
        assert!(d.allow_agent_forwarding && d.allow_remote_forwarding);
        assert!(d.allow_streamlocal_forwarding);
    }

    #[test]
    fn acknowledge_on_receipt_windows_are_refused() {
        let cfg: Config = serde_json::from_str(r#"{"consumption_window": false}"#)
            .unwrap_or_else(|e| panic!("the key itself parses: {e}"));
        let err = cfg.validate().err().unwrap_or_default();
        assert!(
            err.contains("ssh.consumption_window") && err.contains("memory bound"),
            "a clear refusal naming the key: {err:?}"
        );
        let cfg: Config = serde_json::from_str(r#"{"consumption_window": true}"#)
            .unwrap_or_else(|e| panic!("the key itself parses: {e}"));
        assert_eq!(cfg.validate(), Ok(()));
    }
}
