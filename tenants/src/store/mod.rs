//! The tenant store: accounts, their public keys, servers and audit events, in SQLite (default,
//! one file in the state dir) or PostgreSQL (shared by many gateways).
//!
//! Both dialects run the same SQL text (`$N` placeholders work in both) through one
//! [`with_pool!`] dispatch; only the embedded migrations differ (`migrations/{sqlite,postgres}`).
//! Invariants live in the schema, not in this process: unique account names, server ids from
//! AUTOINCREMENT / an identity sequence (never reused, safe across gateways), a live server
//! always has an owner (CHECK + `ON DELETE SET NULL`). Times are unix seconds.
//!
//! This module knows nothing about Docker; [`crate::provision`] keeps the two consistent.
//!
//! Files: [`connection`] opens the database ([`Store`], [`Dialect`]), [`url`] reads database
//! URLs, [`error`] says what went wrong, [`model`] holds the records callers see and [`row`]
//! converts them from columns; the queries are grouped by what they touch: [`accounts`],
//! [`account_keys`], [`servers`], [`auth`] (the gateway's login view), [`audit`] and [`nodes`]
//! (the cluster tables: nodes, fronts, placements; empty on a single host) and [`operations`]
//! (per-server recording and bandwidth settings, recorded sessions' metadata) and [`live`]
//! (the live sessions fronts publish for `berth session list|kill` across hosts).

mod account_keys;
mod accounts;
mod audit;
mod auth;
mod connection;
mod error;
mod live;
mod model;
mod nodes;
mod operations;
mod row;
mod servers;
mod url;

pub use connection::{Dialect, Store};
pub use error::StoreError;
pub use live::{LiveSelector, LiveSession, LiveSessionRow};
pub use model::{
    Account, AuditEntry, AuditEvent, AuditKind, AuthorizedKey, DesiredState, Front, Node,
    Placement, Recording, Server, ServerAuth, ServerOperations, ServerSpec, SessionLimitSettings,
};

pub use url::redact_url;
