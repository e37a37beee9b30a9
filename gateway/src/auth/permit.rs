//! The admission slot of one connection between accept and authentication: held while the
//! client negotiates, freed when it authenticates or goes, so the unauthenticated caps in
//! [`super::limits`] count only connections that have not proved anything yet.

use std::net::IpAddr;
use std::sync::Weak;

use super::Inner;
use super::limits::Admitted;
use crate::metrics;

/// An admitted, not yet authenticated connection's slot. Dropping it (connection closed) or
/// calling [`Permit::authenticated`] frees the slot.
#[derive(Debug)]
pub struct Permit {
    pub(super) inner: Weak<Inner>,
    pub(super) peer: IpAddr,
    pub(super) deadline: tokio::time::Instant,
    pub(super) released: bool,
    /// The pool the slot came from (a reserve slot: the server it is charged to).
    pub(super) slot: Admitted,
}

impl Permit {
    /// The connection authenticated: it no longer counts against the unauthenticated caps, and
    /// its source gets back the connection cell it was admitted with.
    pub fn authenticated(mut self) {
        if std::mem::replace(&mut self.released, true) {
            return;
        }
        metrics::UNAUTHENTICATED.dec();
        if let Some(inner) = self.inner.upgrade() {
            inner.limits().authenticated(self.peer, self.slot);
        }
    }

    /// An authentication request for `user` on this connection: true when it may proceed. A
    /// connection admitted through the owners' reserve must name a server its source logged in
    /// to recently (see [`super::limits::Limits::claim`]); when it does not, the caller drops
    /// the connection (and this slot with it).
    pub fn claim(&mut self, user: &str) -> bool {
        if self.released {
            return true;
        }
        let Some(inner) = self.inner.upgrade() else {
            return true;
        };
        let claimed = inner
            .limits()
            .claim(self.peer, self.slot, tenants::parse_login(user));
        match claimed {
            Ok(slot) => {
                self.slot = slot;
                true
            }
            Err(_) => false,
        }
    }

    /// When the login grace time runs out.
    pub fn grace_deadline(&self) -> tokio::time::Instant {
        self.deadline
    }

    /// Completes when the login grace time has run out (counts the expiry in metrics).
    pub async fn grace_expired(&self) {
        tokio::time::sleep_until(self.deadline).await;
        metrics::LOGIN_GRACE_EXPIRED.inc();
    }

    pub fn peer(&self) -> IpAddr {
        self.peer
    }

    fn release(&mut self) {
        if std::mem::replace(&mut self.released, true) {
            return;
        }
        metrics::UNAUTHENTICATED.dec();
        if let Some(inner) = self.inner.upgrade() {
            inner.limits().release(self.peer, self.slot);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.release();
    }
}
