//! placeholder
pub mod dns;
pub mod gateway;
pub mod netfilter;
pub mod tenants;
