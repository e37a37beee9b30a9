//! Between database columns and [`super::model`]: unix-second timestamps, ids checked against
//! the `server<N>` range, and the row tuples the queries select.

use chrono::{DateTime, Utc};

use super::error::StoreError;
use super::model::{Account, DesiredState, Server, ServerSpec};
use crate::name::ServerId;

pub(super) fn now() -> i64 {
    Utc::now().timestamp()
}

pub(super) fn time(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).unwrap_or_default()
}

pub(super) fn server_id(raw: i64) -> Result<ServerId, StoreError> {
    u32::try_from(raw)
        .ok()
        .and_then(ServerId::new)
        .ok_or(StoreError::IdOutOfRange(raw))
}

pub(super) type ServerRow = (
    i64,
    String,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    String,
    i64,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
);

pub(super) fn server_from_row(r: ServerRow) -> Result<Server, StoreError> {
    let (id, owner, image, memory, nano_cpus, pids, desired, created, deleted, user, dind, init) =
        r;
    Ok(Server {
        id: server_id(id)?,
        owner,
        spec: ServerSpec {
            image,
            memory: memory.map(|m| u64::try_from(m).unwrap_or(0)),
            nano_cpus,
            pids,
            user,
            // A value this version does not know follows the config, like NULL.
            dind: dind.and_then(|d| crate::config::DindMode::parse(&d)),
            // A value this version does not know grants nothing.
            init: init.and_then(|i| crate::spec::InitMode::parse(&i)),
        },
        desired: if desired == "stopped" {
            DesiredState::Stopped
        } else {
            DesiredState::Running
        },
        created: time(created),
        deleted: deleted.map(time),
    })
}

pub(super) fn account_from_row(r: (String, bool, bool, i64, i64)) -> Account {
    Account {
        name: r.0,
        enabled: r.1,
        has_password: r.2,
        keys: u32::try_from(r.3).unwrap_or(u32::MAX),
        created: time(r.4),
    }
}
