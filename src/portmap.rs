//! The port-map feed for netfilter's per-port binding: the process that has the Docker socket
//! (the gateway's, or the all-in-one `berth run`) publishes every running server's endpoint —
//! Docker's netns handle (`SandboxKey`), init pid, MAC and addresses on the tenant network — as
//! `[netfilter] ports_file` (default `/run/berth/ports.json`, 0644 in a 0755 directory,
//! replaced by rename). `berth run netfilter` follows the file and asks the kernel which bridge
//! port leads into each namespace (`netfilter::netns`), so the netfilter process needs neither
//! Docker nor the store, and nothing the tenant controls is read.
//!
//! Deliberately not here: any nftables or netlink logic (netfilter's), or deciding who
//! publishes (that is `commands::run`).

use std::path::PathBuf;
use std::time::Duration;

use netfilter::bindings::{Endpoint, Mac, PortsFile};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// Re-publishes at least this often, in case an event was missed.
const SAFETY_REFRESH: Duration = Duration::from_secs(30);

/// Converts Docker's view into the file's shape; servers with an unparsable MAC are skipped
/// (netfilter then leaves their port unbound: deny).
pub fn ports_file(endpoints: &[tenants::ServerEndpoint]) -> PortsFile {
    PortsFile {
        endpoints: endpoints
            .iter()
            .filter_map(|e| {
                let mac: Mac = e.mac.parse().ok()?;
                Some(Endpoint {
                    name: e.server.to_string(),
                    netns: e.sandbox_key.as_ref().map(PathBuf::from),
                    pid: e.pid,
                    mac,
                    ipv4: e.ipv4.into_iter().collect(),
                    ipv6: e.ipv6.into_iter().collect(),
                })
            })
            .collect(),
    }
}

/// Publisher: connects to the store and Docker (retrying every 5 s), then rewrites the file on
/// every change of the running servers (Docker events through `watch_addresses`: a start,
/// stop or restart changes the map at least once) and every 30 s, until `shutdown`. The file
/// stays on exit: netfilter keeps the last bindings while the gateway restarts.
pub async fn publish(cfg: Config, shutdown: CancellationToken) {
    let path = PathBuf::from(&cfg.netfilter.ports_file);
    let Some(provisioner) =
        crate::hostsfile::provisioner_when_ready(&cfg, "port map", &shutdown).await
    else {
        return;
    };
    let stop = shutdown.clone();
    let mut rx = provisioner
        .watch_addresses(async move { stop.cancelled().await })
        .await;
    let mut last: Option<String> = None;
    let mut last_error = None;
    loop {
        rx.borrow_and_update();
        match provisioner.server_endpoints().await {
            Ok(eps) => {
                let text = ports_file(&eps).to_json();
                if last.as_ref() != Some(&text) {
                    match crate::hostsfile::write_atomically(&path, &text) {
                        Ok(()) => {
                            tracing::info!(file = %path.display(), servers = eps.len(), "port map written");
                            last = Some(text);
                            last_error = None;
                        }
                        Err(e) => {
                            let msg = format!("{e:#}");
                            if last_error.as_ref() != Some(&msg) {
                                tracing::warn!(error = %msg, "cannot publish the port map");
                                last_error = Some(msg);
                            }
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "port map: cannot list server endpoints"),
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(SAFETY_REFRESH) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn docker_view_becomes_the_ports_file() {
        let eps = vec![
            tenants::ServerEndpoint {
                server: tenants::ServerId::new(7).unwrap(),
                sandbox_key: Some("/var/run/docker/netns/abc".into()),
                pid: Some(1234),
                mac: "02:42:ac:13:02:07".into(),
                ipv4: Some("172.19.2.7".parse().unwrap()),
                ipv6: None,
            },
            tenants::ServerEndpoint {
                server: tenants::ServerId::new(8).unwrap(),
                sandbox_key: None,
                pid: None,
                mac: "not-a-mac".into(),
                ipv4: None,
                ipv6: None,
            },
        ];
        let f = ports_file(&eps);
        assert_eq!(f.endpoints.len(), 1);
        let e = &f.endpoints[0];
        assert_eq!(e.name, "server7");
        assert_eq!(e.pid, Some(1234));
        assert_eq!(
            e.ipv4,
            vec!["172.19.2.7".parse::<std::net::Ipv4Addr>().unwrap()]
        );
        assert_eq!(PortsFile::parse(&f.to_json()).unwrap(), f);
    }
}
