//! The tenant vocabulary: `server<N>` login names and account names.
//!
//! Lives in the `names` crate (pure, no dependencies worth mentioning) so the resolver and other
//! light users need not link the store and Docker client; re-exported here so `tenants::name::*`
//! keeps working.

pub use names::{ACCOUNT_NAME_RULE, ServerId, parse_login, parse_server_ref, valid_account_name};
