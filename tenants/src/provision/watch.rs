//! The address map kept current from Docker events, with a re-list after every (re)subscribe
//! so a missed event costs one listing.
//!
//! Deliberately not here: publishing the map (the DNS zone and hosts file are the binary's).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use bollard::query_parameters::EventsOptions;
use futures::StreamExt;
use tokio::sync::watch;

use super::Provisioner;
use crate::name::ServerId;
use crate::spec::LABEL_INSTANCE;

impl Provisioner {
    /// Follows [`Self::server_addresses`] through Docker events (container start/die/destroy,
    /// network connect/disconnect) until `shutdown` completes. The first value is loaded before
    /// returning when Docker answers; on stream errors it resubscribes after a second and
    /// re-lists, so a missed event costs at most one re-list.
    pub async fn watch_addresses(
        &self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> watch::Receiver<BTreeMap<ServerId, IpAddr>> {
        let initial = match self.server_addresses().await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list server addresses yet; will retry");
                BTreeMap::new()
            }
        };
        let (tx, rx) = watch::channel(initial);
        let this = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown => {}
                () = this.follow_events(tx) => {}
            }
        });
        rx
    }

    async fn follow_events(&self, tx: watch::Sender<BTreeMap<ServerId, IpAddr>>) {
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
            self.refresh(&tx).await;
            while let Some(ev) = events.next().await {
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(e) => {
                        tracing::warn!(error = %e, "docker event stream failed; resubscribing");
                        break;
                    }
                };
                let attrs = ev.actor.as_ref().and_then(|a| a.attributes.as_ref());
                let get = |k: &str| attrs.and_then(|a| a.get(k)).map(String::as_str);
                let relevant = match ev.typ.map(|t| t.to_string()).as_deref() {
                    Some("container") => get(LABEL_INSTANCE) == Some(prefix.as_str()),
                    Some("network") => get("name") == Some(net.as_str()),
                    _ => false,
                };
                if relevant {
                    self.refresh(&tx).await;
                }
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn refresh(&self, tx: &watch::Sender<BTreeMap<ServerId, IpAddr>>) {
        match self.server_addresses().await {
            Ok(m) => {
                tx.send_if_modified(|cur| {
                    if *cur == m {
                        false
                    } else {
                        *cur = m;
                        true
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "cannot list server addresses"),
        }
    }
}
