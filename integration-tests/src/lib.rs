//! Harnesses for berth's whole-system tests (`integration-tests/tests/<area>*.rs`), one module
//! per area: each builds the real thing — Docker containers and networks, network namespaces
//! with nftables, a resolver and its upstreams on loopback, a gateway with OpenSSH clients —
//! under names unique to the test, and removes it again in `Drop`, so a failing test leaves
//! nothing behind.
//!
//! Nothing here is used by berth itself; the crate exists so the test files share set-up
//! instead of each growing its own.

pub mod cluster;
pub mod dns;
pub mod gateway;
pub mod netfilter;
pub mod postgres;
pub mod swarm;
pub mod tenants;
pub mod userns;
