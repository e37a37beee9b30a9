//! This crate's config section (extend freely; keep `deny_unknown_fields` and defaults).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {}

impl Default for Config {
    fn default() -> Self {
        Self {}
    }
}
