//! Tenant control: accounts, servers and keys in a database, tenant containers through the
//! Docker Engine API, and the `server<N>` vocabulary shared by every other crate.

pub mod config;
pub mod name;

pub use config::{Config, NetworkConfig};
pub use name::{ServerId, parse_login, parse_server_ref};
