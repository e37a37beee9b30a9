//! The production assembly of a gateway: the tenants-backed [`Backend`], the
//! [`Authenticator`] over it and the [`Shared`] state `serve` runs on. One function, so `berth
//! run` and the integration harness start the same gateway; the harness's only difference (a
//! wrapper around the backend for fault injection) is a parameter.

use std::sync::Arc;

use russh::keys::PrivateKey;
use tenants::{Provisioner, Store};

use crate::auth::Authenticator;
use crate::backend::Backend;
use crate::config::Config;
use crate::conn::{Shared, Stats};
use crate::tenants_backend::TenantsBackend;

/// Wraps the backend before anything uses it (identity in production).
pub type WrapBackend = Box<dyn FnOnce(Arc<dyn Backend>) -> Arc<dyn Backend> + Send>;

/// Builds the gateway's shared state from the tenant store, the Docker provisioner and the
/// host keys. `wrap` sees the backend before the authenticator and the sessions do.
pub fn build(
    cfg: Config,
    store: Store,
    provisioner: Provisioner,
    keys: Vec<PrivateKey>,
    wrap: Option<WrapBackend>,
) -> Arc<Shared> {
    let mut backend: Arc<dyn Backend> = Arc::new(TenantsBackend::new(store, provisioner, &cfg));
    if let Some(wrap) = wrap {
        backend = wrap(backend);
    }
    let auth = Authenticator::new(&cfg, backend.clone());
    Shared::new(
        cfg,
        backend,
        Arc::new(auth),
        keys,
        Arc::new(Stats::default()),
    )
}
