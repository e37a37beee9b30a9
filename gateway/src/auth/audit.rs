//! What every attempt leaves behind: its counters, a log line on target `berth::auth`
//! (rate-limited, so a storm cannot flood the journal) and an audit record sent to the backend
//! through a bounded queue (a slow database never delays a login; overflow is counted in
//! `berth_gateway_audit_dropped_total`). No decision is taken here.

use std::net::IpAddr;

use tenants::ServerId;
use tokio::sync::mpsc;

use super::limits::{AttemptDenied, Method, Recorded};
use super::{Authenticator, Decision, Inner};
use crate::backend::AuditRecord;
use crate::metrics::{self, AuthResult};

/// Audit records waiting for the backend; beyond this they are dropped and counted.
const AUDIT_QUEUE: usize = 4096;

/// Longest user name kept verbatim in audit records and logs.
const MAX_LOGGED_USER: usize = 64;

impl Authenticator {
    /// Records an attempt that passed the budgets and returns its decision.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn finish(
        &self,
        peer: IpAddr,
        user: &str,
        parsed: Option<ServerId>,
        method: Method,
        decision: Decision,
        reason: String,
        fingerprint: Option<&str>,
    ) -> Decision {
        let success = decision.is_accept();
        let recorded = self.inner.limits().record(peer, parsed, method, success);
        metrics::auth_outcome(
            method.as_str(),
            if success {
                AuthResult::Success
            } else {
                AuthResult::Failure
            },
        );
        if let Recorded::Banned(length) = recorded {
            metrics::BANS.inc();
            tracing::warn!(
                target: "berth::auth",
                peer = %peer,
                ban_secs = length.as_secs(),
                "address banned after repeated password failures"
            );
            self.audit(AuditRecord {
                kind: "auth",
                server: None,
                account: None,
                peer: Some(peer),
                method: Some("ban".into()),
                outcome: "banned".into(),
                detail: serde_json::json!({ "ban_secs": length.as_secs() }),
            });
        }
        let shown = loggable_user(user);
        let (account, outcome) = match &decision {
            Decision::Accept { owner, .. } => (Some(owner.clone()), "success"),
            Decision::Reject => (None, "failure"),
        };
        if success || self.inner.log_budget().allow() {
            tracing::info!(
                target: "berth::auth",
                peer = %peer,
                user = %shown,
                method = method.as_str(),
                outcome,
                reason = %reason,
                key = fingerprint.unwrap_or(""),
                "auth attempt"
            );
        }
        let mut detail = serde_json::json!({ "user": shown });
        if !reason.is_empty() {
            detail["reason"] = reason.into();
        }
        if let Some(fp) = fingerprint {
            detail["key"] = fp.into();
        }
        self.audit(AuditRecord {
            kind: "auth",
            server: parsed,
            account,
            peer: Some(peer),
            method: Some(method.as_str().into()),
            outcome: outcome.into(),
            detail,
        });
        decision
    }

    /// An attempt refused by the budgets before any credential check.
    pub(super) fn refused(
        &self,
        peer: IpAddr,
        user: &str,
        parsed: Option<ServerId>,
        method: Method,
        denied: AttemptDenied,
        fingerprint: Option<&str>,
    ) {
        metrics::auth_outcome(method.as_str(), AuthResult::RateLimited);
        metrics::rate_limited(denied.as_str());
        let shown = loggable_user(user);
        if self.inner.log_budget().allow() {
            tracing::info!(
                target: "berth::auth",
                peer = %peer,
                user = %shown,
                method = method.as_str(),
                outcome = "rejected",
                reason = denied.as_str(),
                "auth attempt refused by rate limit"
            );
        }
        let mut detail = serde_json::json!({ "user": shown, "reason": denied.as_str() });
        if let Some(fp) = fingerprint {
            detail["key"] = fp.into();
        }
        self.audit(AuditRecord {
            kind: "auth",
            server: parsed,
            account: None,
            peer: Some(peer),
            method: Some(method.as_str().into()),
            outcome: "rejected".into(),
            detail,
        });
    }

    pub(super) fn audit(&self, record: AuditRecord) {
        let tx = self.inner.audit_tx.get_or_init(|| {
            let (tx, mut rx) = mpsc::channel::<AuditRecord>(AUDIT_QUEUE);
            let backend = self.inner.backend.clone();
            tokio::spawn(async move {
                while let Some(r) = rx.recv().await {
                    backend.audit(r).await;
                }
            });
            tx
        });
        if tx.try_send(record).is_err() {
            metrics::AUDIT_DROPPED.inc();
        }
    }
}

impl Inner {
    pub(super) fn log_budget(&self) -> std::sync::MutexGuard<'_, LogBudget> {
        self.log_budget
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// At most `PER_SECOND` failure log lines per second; the rest are counted in metrics only.
#[derive(Debug, Default)]
pub(super) struct LogBudget {
    second: u64,
    used: u32,
    suppressed: u64,
}

impl LogBudget {
    const PER_SECOND: u32 = 20;

    pub(super) fn allow(&mut self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if now != self.second {
            if self.suppressed > 0 {
                tracing::info!(
                    target: "berth::auth",
                    suppressed = self.suppressed,
                    "auth log lines suppressed in the last second"
                );
            }
            self.second = now;
            self.used = 0;
            self.suppressed = 0;
        }
        if self.used < Self::PER_SECOND {
            self.used += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

/// The user name as typed, made safe for logs: control characters escaped, length capped.
pub fn loggable_user(user: &str) -> String {
    crate::audit::loggable(user, MAX_LOGGED_USER)
}
