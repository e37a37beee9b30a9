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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Default image for new servers.
    pub image: String,
}

impl Default for Config {
    fn default() -> Self {
        Self { image: "berth/tenant:bookworm".into() }
    }
}
