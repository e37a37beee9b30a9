//! berth's resolver for the tenant network: a dnsmasq-class forwarder with an O(1)-eviction
//! cache, a live local zone (`server<N>.<domain>`), dnsmasq's safety switches (domain-needed,
//! bogus-priv, rebind protection), a blocklist, serve-stale, in-flight merging and caps.
//!
//! hickory provides the wire format for everything but UDP cache hits, and the TCP server; the
//! UDP sockets and workers (`udp`), the hit path on raw bytes (`wire`), the decisions
//! (`policy`), the cache (`cache`) and the upstream client (`upstream`) are ours. DNSSEC: the DO
//! bit is passed upstream and RRSIG/NSEC/NSEC3 are kept (and cached) for clients that set it;
//! we do not validate. The crate knows nothing about Docker or the database (it links `names`,
//! not `tenants`): the binary feeds [`LocalZone`] with tenant addresses.
//!
//! Typical use (see `src/commands/dns.rs` in the binary):
//! ```text
//! let zone = dns::LocalZone::new();
//! let svc = dns::Service::new(&cfg.dns, &[tenant_subnet], zone.clone())?;
//! let listeners = cfg.dns.listen.iter().map(|a| dns::bind(*a)).collect::<Result<_, _>>()?;
//! tokio::spawn(async move { zone.follow(rx).await });
//! svc.serve(listeners, shutdown).await?;
//! ```

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod cache;
pub mod config;
pub mod metrics;
pub mod policy;
pub mod ratelimit;
pub mod resolver;
pub mod service;
pub mod udp;
pub mod upstream;
pub mod wire;
pub mod zone;

pub use config::{BlocklistMode, Config};
pub use metrics::Metrics;
pub use service::{Listener, Service, bind, read_resolv_file};
pub use zone::{LocalZone, ZoneData};

/// Errors the resolver's owner branches on or reports.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("invalid dns config: {0}")]
    Config(String),
    #[error("cannot bind dns listener {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot read {what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("dns server stopped: {0}")]
    Serve(String),
}
