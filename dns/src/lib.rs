//! placeholder — see config.rs

pub mod config;
pub use config::Config;
