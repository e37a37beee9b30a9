//! Maps kept current from Docker events (the address map, and every container's state), with a
//! re-list after every (re)subscribe so a missed event costs one listing.
//!
//! Deliberately not here: publishing the maps (the DNS zone, hosts file and the gateway's
//! control socket are the binary's and the gateway's).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use bollard::query_parameters::EventsOptions;
use futures::{FutureExt, StreamExt};
use tokio::sync::watch;

use super::{ContainerStatus, ProvisionError, Provisioner};
use crate::name::ServerId;
use crate::spec::LABEL_INSTANCE;

/// Every container of this instance by server, as of Docker's last answer; `None` while Docker
/// cannot be listed (never a stale map presented as current).
pub type Statuses = Option<BTreeMap<ServerId, ContainerStatus>>;

impl Provisioner {
    /// Follows [`Self::server_addresses`] through Docker events (container start/die/destroy,
    /// network connect/disconnect) until `shutdown` completes. The first value is loaded before
    /// returning when Docker answers; on stream errors it resubscribes after a second and
    /// re-lists, so a missed event costs at most one re-list. When a listing fails the last
    /// map stays (a resolver keeps answering while Docker restarts).
    pub async fn watch_addresses(
        &self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> watch::Receiver<BTreeMap<ServerId, IpAddr>> {
        self.watch_with(
            shutdown,
            BTreeMap::new(),
            None,
            |p: Provisioner| async move { p.server_addresses().await },
        )
        .await
    }

    /// Follows [`Self::statuses`] the same way: every container of this instance, running or
    /// not. A failed listing sets `None`, so a reader can tell "Docker did not answer" from
    /// "no containers". A running gateway serves this map on its control socket, so
    /// `berth server list` need not list every container through Docker itself.
    pub async fn watch_statuses(
        &self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> watch::Receiver<Statuses> {
        self.watch_with(shutdown, None, Some(None), |p: Provisioner| async move {
            p.statuses().await.map(Some)
        })
        .await
    }

    /// The follower both watches share: `first` is the value while Docker has not answered yet,
    /// `on_error` what a failed listing publishes (`None`: the last value stays).
    async fn watch_with<T, F, Fut>(
        &self,
        shutdown: impl Future<Output = ()> + Send + 'static,
        first: T,
        on_error: Option<T>,
        load: F,
    ) -> watch::Receiver<T>
    where
        T: PartialEq + Clone + Send + Sync + 'static,
        F: Fn(Provisioner) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, ProvisionError>> + Send,
    {
        let initial = match load(self.clone()).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list server containers yet; will retry");
                first
            }
        };
        let (tx, rx) = watch::channel(initial);
        let this = self.clone();
        let follower = Follower { load, on_error };
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown => {}
                () = this.follow_events(&tx, &follower) => {}
            }
        });
        rx
    }

    async fn follow_events<T, F, Fut>(&self, tx: &watch::Sender<T>, f: &Follower<T, F>)
    where
        T: PartialEq + Clone,
        F: Fn(Provisioner) -> Fut,
        Fut: Future<Output = Result<T, ProvisionError>>,
    {
        let prefix = self.inner.names.prefix().to_string();
        let net = self.inner.net.name.clone();
        loop {
            let filters = HashMap::from([(
                "type".to_string(),
                vec!["container".to_string(), "network".to_string()],
            )]);
            let mut events = self.inner.docker.events(Some(EventsOptions {
                filters: Some(filters),
                ..Default::default()
            }));
            // Re-list after (re)subscribing: events between the last list and now are covered.
            f.refresh(self, tx).await;
            let relevant = |ev: &bollard::models::EventMessage| {
                let attrs = ev.actor.as_ref().and_then(|a| a.attributes.as_ref());
                let get = |k: &str| attrs.and_then(|a| a.get(k)).map(String::as_str);
                match ev.typ.map(|t| t.to_string()).as_deref() {
                    Some("container") => get(LABEL_INSTANCE) == Some(prefix.as_str()),
                    Some("network") => get("name") == Some(net.as_str()),
                    _ => false,
                }
            };
            'stream: while let Some(ev) = events.next().await {
                let mut changed = match ev {
                    Ok(ev) => relevant(&ev),
                    Err(e) => {
                        tracing::warn!(error = %e, "docker event stream failed; resubscribing");
                        break;
                    }
                };
                // One listing covers every event already delivered: a burst (a server's
                // create, connect and start; a hundred servers starting) costs one list, not
                // one per event, which on a host with many servers would be a list of all of
                // them per event.
                while let Some(more) = events.next().now_or_never() {
                    match more {
                        Some(Ok(ev)) => changed |= relevant(&ev),
                        // The re-list after resubscribing covers this burst too.
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "docker event stream failed; resubscribing");
                            break 'stream;
                        }
                        None => break,
                    }
                }
                if changed {
                    f.refresh(self, tx).await;
                }
            }
            if tx.is_closed() {
                return;
            }
            // The stream ended or failed (dockerd restarting): say so to readers that want to
            // know, then try again.
            if let Some(v) = &f.on_error {
                publish(tx, v.clone());
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// How one watch loads its value and what a failure publishes.
struct Follower<T, F> {
    load: F,
    on_error: Option<T>,
}

impl<T: PartialEq + Clone, F> Follower<T, F> {
    async fn refresh<Fut>(&self, p: &Provisioner, tx: &watch::Sender<T>)
    where
        F: Fn(Provisioner) -> Fut,
        Fut: Future<Output = Result<T, ProvisionError>>,
    {
        match (self.load)(p.clone()).await {
            Ok(m) => publish(tx, m),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list server containers");
                if let Some(v) = &self.on_error {
                    publish(tx, v.clone());
                }
            }
        }
    }
}

fn publish<T: PartialEq>(tx: &watch::Sender<T>, m: T) {
    tx.send_if_modified(|cur| {
        if *cur == m {
            false
        } else {
            *cur = m;
            true
        }
    });
}
