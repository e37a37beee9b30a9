//! berth's egress filter for the tenant network, as nftables rules in berth's own `inet` and
//! `bridge` tables: tenants reach the internet, the resolver and an explicit allowlist — never
//! private or special-purpose ranges, the host's control plane, cloud metadata or each other.
//!
//! Layers: [`config`] and [`addr`] parse, [`render`] turns policy + network into nftables JSON
//! objects (pure), [`diff`] compares live and rendered (pure), [`nft`] runs the `nft` binary,
//! [`ports`] sets bridge-port isolation, [`engine`] ties them into apply/check/flush/watch.
//! This crate knows nothing about Docker, SQL or the other berth crates.

pub mod addr;
pub mod bindings;
pub mod config;
pub mod diff;
pub mod engine;
pub mod netns;
pub mod nft;
pub mod ports;
pub mod render;

pub use config::{BridgeMatch, Config, Policy};
pub use engine::{Applied, Error, Firewall, WatchStats, watch_stats};
pub use nft::NftError;
pub use render::{L2Match, Network, Reason, Ruleset, render};
