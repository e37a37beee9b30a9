//! placeholder
pub mod gateway;
pub mod dns;
pub mod tenants;
