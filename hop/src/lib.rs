//! The internal SSH hop between a front and the node that holds a server (docs/CLUSTER.md).
//!
//! Both ends reuse the single-host gateway through its two seams and add nothing to it:
//! - a node's hop endpoint is `gateway::serve` with [`HopGate`]: only registered fronts' keys,
//!   and the SSH user name is the front's [`Assertion`] of server, account and client address;
//! - a front is `gateway::serve` with the ordinary authenticator and [`RelayBackend`]: a server
//!   placed on another node gets one internal SSH connection per client connection, with each
//!   session and `direct-tcpip` channel mapped one to one; a local server takes the local backend.
//!
//! This crate knows nothing about Docker and does not decide who may log in to a server: the
//! front's authenticator does that, and the node re-checks the asserted owner against the store.

mod assertion;
mod forwards;
mod gate;
mod relay;
pub mod transfer;

pub use assertion::Assertion;
pub use gate::HopGate;
pub use relay::{HOP_CONNECT_TIMEOUT, RelayBackend};
pub use transfer::NodeBackend;
