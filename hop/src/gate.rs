//! The node's side of the hop: who may log in to the internal endpoint.
//!
//! Only public keys, and only the keys of registered fronts (the `fronts` table, re-read at
//! most every [`FRONTS_TTL`], so a removed front is refused within seconds). The user name is
//! the front's [`Assertion`]; the node accepts it only when the asserted account really owns
//! the server and may log in (owner enabled, server live), so a front with a stale view or a
//! bug cannot open another tenant's server. Everything unreadable (the store down, a key line
//! that does not parse) refuses.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gateway::{Backend, Gate, Login, Permit};
use russh::keys::PublicKey;
use tenants::Store;
use tracing::{info, warn};

use crate::assertion::Assertion;

/// How long the list of front keys is trusted before it is read again.
pub const FRONTS_TTL: Duration = Duration::from_secs(5);

/// Connections that have not authenticated yet, across the endpoint: fronts are few and
/// authenticate at once, so anything beyond this is noise or an attack.
const MAX_UNAUTHENTICATED: usize = 64;

/// How long a connection may take to authenticate.
const GRACE: Duration = Duration::from_secs(10);

/// Registered fronts by name with their keys.
type FrontKeys = Arc<Vec<(String, PublicKey)>>;

pub struct HopGate {
    store: Store,
    backend: Arc<dyn Backend>,
    fronts: Mutex<Option<(Instant, FrontKeys)>>,
    unauthenticated: Arc<AtomicUsize>,
}

impl HopGate {
    /// `backend` answers whether the asserted account owns the server (its credentials).
    pub fn new(store: Store, backend: Arc<dyn Backend>) -> Self {
        Self {
            store,
            backend,
            fronts: Mutex::new(None),
            unauthenticated: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The registered fronts' keys, or `None` when the store cannot say (refuse).
    async fn fronts(&self) -> Option<FrontKeys> {
        if let Some((at, keys)) = self
            .fronts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            && at.elapsed() < FRONTS_TTL
        {
            return Some(keys.clone());
        }
        let rows = match self.store.fronts().await {
            Ok(rows) => rows,
            Err(e) => {
                warn!(target: "berth::hop", error = %e, "cannot read the fronts; refusing hop logins");
                return None;
            }
        };
        let keys: Vec<(String, PublicKey)> = rows
            .into_iter()
            .filter_map(|f| match PublicKey::from_openssh(&f.key_line) {
                Ok(k) => Some((f.name, k)),
                Err(e) => {
                    warn!(target: "berth::hop", front = %f.name, error = %e, "front key does not parse; ignored");
                    None
                }
            })
            .collect();
        let keys = Arc::new(keys);
        *self
            .fronts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((Instant::now(), keys.clone()));
        Some(keys)
    }

    async fn front_of(&self, key: &PublicKey) -> Option<String> {
        let fronts = self.fronts().await?;
        fronts
            .iter()
            .find(|(_, k)| k.key_data() == key.key_data())
            .map(|(name, _)| name.clone())
    }
}

struct HopPermit {
    count: Arc<AtomicUsize>,
    deadline: tokio::time::Instant,
}

impl Drop for HopPermit {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Permit for HopPermit {
    fn authenticated(self: Box<Self>) {}
    fn grace_deadline(&self) -> Option<tokio::time::Instant> {
        Some(self.deadline)
    }
}

#[async_trait::async_trait]
impl Gate for HopGate {
    fn admit(&self, _peer: IpAddr) -> Option<Box<dyn Permit>> {
        let n = self.unauthenticated.fetch_add(1, Ordering::Relaxed);
        let permit = HopPermit {
            count: self.unauthenticated.clone(),
            deadline: tokio::time::Instant::now() + GRACE,
        };
        (n < MAX_UNAUTHENTICATED).then(|| Box::new(permit) as Box<dyn Permit>)
    }

    async fn password(&self, _peer: IpAddr, _user: &str, _password: &str) -> Option<Login> {
        None
    }

    async fn keyboard_interactive(&self, _: IpAddr, _: &str, _: &[u8]) -> Option<Login> {
        None
    }

    async fn public_key(
        &self,
        peer: IpAddr,
        user: &str,
        key: &PublicKey,
        verified: bool,
    ) -> Option<Login> {
        if let Some(server) = crate::transfer::parse_transfer_user(user) {
            let front = self.front_of(key).await?;
            if verified {
                info!(target: "berth::hop", front = %front, peer = %peer, server = %server.login_name(), "hop transfer login");
            }
            return Some(Login {
                server,
                owner: crate::transfer::TRANSFER_OWNER.to_string(),
                client: None,
            });
        }
        let assertion = Assertion::parse(user)?;
        let front = self.front_of(key).await?;
        if !verified {
            return Some(Login {
                server: assertion.server,
                owner: assertion.account,
                client: Some(assertion.client),
            });
        }
        let owned = match self.backend.credentials(assertion.server).await {
            Ok(Some(c)) => c.login_allowed && c.owner == assertion.account,
            Ok(None) => false,
            Err(e) => {
                warn!(target: "berth::hop", front = %front, error = %e, "cannot check the asserted owner; refusing");
                false
            }
        };
        if !owned {
            warn!(
                target: "berth::hop",
                front = %front,
                peer = %peer,
                server = %assertion.server.login_name(),
                account = %assertion.account,
                "front asserted a login the store does not allow; refused"
            );
            return None;
        }
        info!(
            target: "berth::hop",
            front = %front,
            peer = %peer,
            client = %assertion.client,
            server = %assertion.server.login_name(),
            account = %assertion.account,
            "hop login"
        );
        Some(Login {
            server: assertion.server,
            owner: assertion.account,
            client: Some(assertion.client),
        })
    }

    fn configure(&self, config: &mut russh::server::Config) {
        config.methods = russh::MethodSet::from(&[russh::MethodKind::PublicKey][..]);
        config.max_auth_attempts = 2;
        config.auth_rejection_time = Duration::from_millis(200);
        config.auth_rejection_time_initial = Some(Duration::ZERO);
    }
}
