//! placeholder
pub mod gateway;
pub mod dns;
pub mod tenants;
pub mod netfilter;
