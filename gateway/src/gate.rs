//! The session code's view of authentication: the [`Gate`] a connection asks (admission, then
//! each method), what it answers ([`Login`]), and the unauthenticated slot ([`Permit`],
//! [`PermitCell`]) held from accept until authentication.
//!
//! A trait rather than [`crate::auth::Authenticator`] itself so the SSH code can be driven by a
//! test gate; the production implementation (below) only translates the authenticator's
//! answers. Nothing here decides anything.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use russh::keys::PublicKey;
use tenants::ServerId;

/// Who logged in.
#[derive(Debug, Clone)]
pub struct Login {
    pub server: ServerId,
    pub owner: String,
    /// The client's address when the connection is relayed (its peer is then the relay, and
    /// the relay vouched for this address); audit records name it instead of the peer.
    pub client: Option<IpAddr>,
}

/// Held from accept until authentication (admission accounting: see [`crate::auth::Permit`]).
pub trait Permit: Send {
    fn authenticated(self: Box<Self>);
    /// When the login grace time runs out (the connection is closed if still unauthenticated).
    fn grace_deadline(&self) -> Option<tokio::time::Instant> {
        None
    }
    /// An authentication request for `user`: false when the connection must be dropped (a
    /// reserve slot naming no server its source is trusted for).
    fn claim(&mut self, _user: &str) -> bool {
        true
    }
}

/// The session code's view of authentication (implemented over `auth::Authenticator`).
#[async_trait::async_trait]
pub trait Gate: Send + Sync + 'static {
    /// `None`: close the socket now.
    fn admit(&self, peer: IpAddr) -> Option<Box<dyn Permit>>;
    async fn password(&self, peer: IpAddr, user: &str, password: &str) -> Option<Login>;
    /// The answer to the keyboard-interactive password prompt.
    async fn keyboard_interactive(&self, peer: IpAddr, user: &str, answer: &[u8]) -> Option<Login> {
        let pw = std::str::from_utf8(answer).ok()?;
        self.password(peer, user, pw).await
    }
    async fn public_key(
        &self,
        peer: IpAddr,
        user: &str,
        key: &PublicKey,
        verified: bool,
    ) -> Option<Login>;
    /// Applies the gate's settings (methods, attempts, rejection timing) to russh's config.
    fn configure(&self, _config: &mut russh::server::Config) {}
    /// A line shown to the client before authentication (an SSH banner), if any.
    fn banner(&self) -> Option<String> {
        None
    }
}

/// The production gate: [`crate::auth::Authenticator`].
#[async_trait::async_trait]
impl Gate for crate::auth::Authenticator {
    fn admit(&self, peer: IpAddr) -> Option<Box<dyn Permit>> {
        match crate::auth::Authenticator::admit(self, peer) {
            crate::auth::Admission::Accept(p) => Some(Box::new(p)),
            crate::auth::Admission::Reject(_) => None,
        }
    }
    async fn password(&self, peer: IpAddr, user: &str, password: &str) -> Option<Login> {
        login(crate::auth::Authenticator::password(self, peer, user, password).await)
    }
    async fn keyboard_interactive(&self, peer: IpAddr, user: &str, answer: &[u8]) -> Option<Login> {
        login(self.keyboard_interactive_answer(peer, user, answer).await)
    }
    async fn public_key(
        &self,
        peer: IpAddr,
        user: &str,
        key: &PublicKey,
        verified: bool,
    ) -> Option<Login> {
        login(crate::auth::Authenticator::public_key(self, peer, user, key, verified).await)
    }
    fn configure(&self, config: &mut russh::server::Config) {
        self.configure_russh(config);
    }
    fn banner(&self) -> Option<String> {
        crate::auth::Authenticator::banner(self)
    }
}

fn login(d: crate::auth::Decision) -> Option<Login> {
    match d {
        crate::auth::Decision::Accept { server, owner } => Some(Login {
            server,
            owner,
            client: None,
        }),
        crate::auth::Decision::Reject => None,
    }
}

impl Permit for crate::auth::Permit {
    fn authenticated(self: Box<Self>) {
        crate::auth::Permit::authenticated(*self);
    }
    fn grace_deadline(&self) -> Option<tokio::time::Instant> {
        Some(crate::auth::Permit::grace_deadline(self))
    }
    fn claim(&mut self, user: &str) -> bool {
        crate::auth::Permit::claim(self, user)
    }
}

/// The connection's unauthenticated slot, shared by the connection task (which drops it at
/// the pre-auth deadline) and the handler (which hands it back on successful auth).
#[derive(Clone)]
pub struct PermitCell(Arc<Mutex<Option<Box<dyn Permit>>>>);

impl PermitCell {
    pub(crate) fn new(p: Box<dyn Permit>) -> Self {
        Self(Arc::new(Mutex::new(Some(p))))
    }

    fn take(&self) -> Option<Box<dyn Permit>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// The connection authenticated: its slot no longer counts as unauthenticated.
    pub fn authenticated(&self) {
        if let Some(p) = self.take() {
            p.authenticated();
        }
    }

    /// An authentication request for `user`: false when the connection must be dropped (see
    /// [`Permit::claim`]). True once the slot is gone (authenticated or released).
    pub fn claim(&self, user: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_mut()
            .is_none_or(|p| p.claim(user))
    }

    /// Frees the slot (no-op after [`PermitCell::authenticated`]).
    pub fn release(&self) {
        drop(self.take());
    }
}
