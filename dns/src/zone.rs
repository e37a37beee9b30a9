//! The local zone: `server<N>.<domain>` → the tenant's address(es), and the reverse map for PTR.
//!
//! [`LocalZone`] is the handle the binary feeds from the tenants crate (a full `replace` on every
//! change, or `follow` a `watch` channel). Readers take an `Arc` snapshot, so a lookup never waits
//! on a writer and a change is visible to the very next query — local names are never cached, so
//! a new server resolves immediately and a removed one stops resolving immediately. This module
//! knows nothing about Docker or the database.
//!
//! [`render_hosts`] / [`parse_hosts`] are the hosts-file form of the same map: the process that
//! has Docker publishes it, a resolver that has neither Docker nor the store (the split systemd
//! deployment) follows it.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use names::ServerId;
use tokio::sync::watch;

/// One immutable view of the zone.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ZoneData {
    by_id: BTreeMap<ServerId, Vec<IpAddr>>,
    by_ip: HashMap<IpAddr, ServerId>,
}

impl ZoneData {
    /// Builds the zone from every server's addresses (v4 and/or v6).
    pub fn from_addrs(map: BTreeMap<ServerId, Vec<IpAddr>>) -> Self {
        let mut by_ip = HashMap::new();
        for (id, addrs) in &map {
            for a in addrs {
                by_ip.insert(a.to_canonical(), *id);
            }
        }
        Self { by_id: map, by_ip }
    }

    /// Addresses of `server<N>`, `None` when there is no such server.
    pub fn addrs(&self, id: ServerId) -> Option<&[IpAddr]> {
        self.by_id.get(&id).map(Vec::as_slice)
    }

    /// The server an address belongs to (for PTR).
    pub fn server_of(&self, ip: IpAddr) -> Option<ServerId> {
        self.by_ip.get(&ip.to_canonical()).copied()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// Shared, live-updated handle on the local zone. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct LocalZone {
    inner: Arc<RwLock<Arc<ZoneData>>>,
    /// Bumped after every store: a reader that keeps a snapshot ([`ZoneView`]) compares one
    /// counter per query instead of taking the lock and a reference count.
    generation: Arc<AtomicU64>,
}

/// A reader's own copy of the zone, refreshed only when the zone changed: what the UDP
/// workers answer tenant names from. A change is seen by the first query after `store`
/// returned.
#[derive(Debug)]
pub struct ZoneView {
    generation: u64,
    data: Arc<ZoneData>,
}

impl ZoneView {
    pub fn new(zone: &LocalZone) -> Self {
        let generation = zone.generation.load(Ordering::Acquire);
        Self {
            generation,
            data: zone.snapshot(),
        }
    }

    /// The zone as of now (a counter compare; the lock only after a change).
    pub fn current(&mut self, zone: &LocalZone) -> &ZoneData {
        let g = zone.generation.load(Ordering::Acquire);
        if g != self.generation {
            // The snapshot taken after reading `g` is at least as new as generation `g`.
            self.data = zone.snapshot();
            self.generation = g;
        }
        &self.data
    }
}

impl LocalZone {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the whole zone with one address per server (the tenants crate's shape).
    pub fn replace(&self, map: BTreeMap<ServerId, IpAddr>) {
        self.replace_addrs(map.into_iter().map(|(id, ip)| (id, vec![ip])).collect());
    }

    /// Replaces the whole zone with any number of addresses per server (A and AAAA).
    pub fn replace_addrs(&self, map: BTreeMap<ServerId, Vec<IpAddr>>) {
        self.store(ZoneData::from_addrs(map));
    }

    /// Sets (or replaces) one server's addresses.
    pub fn set(&self, id: ServerId, addrs: Vec<IpAddr>) {
        let mut map = self.snapshot().by_id.clone();
        map.insert(id, addrs);
        self.replace_addrs(map);
    }

    /// Removes one server.
    pub fn remove(&self, id: ServerId) {
        let mut map = self.snapshot().by_id.clone();
        map.remove(&id);
        self.replace_addrs(map);
    }

    /// The current view.
    pub fn snapshot(&self) -> Arc<ZoneData> {
        // A poisoned lock only means a writer panicked between two whole-Arc swaps; the Arc
        // inside is always a complete zone, so reading it is sound.
        match self.inner.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn store(&self, data: ZoneData) {
        let data = Arc::new(data);
        match self.inner.write() {
            Ok(mut g) => *g = data,
            Err(p) => *p.into_inner() = data,
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Applies every value a `watch` channel publishes (e.g.
    /// `tenants::Provisioner::watch_addresses`), starting with the current one, until the
    /// sender is dropped.
    pub async fn follow(&self, mut rx: watch::Receiver<BTreeMap<ServerId, IpAddr>>) {
        loop {
            let map = rx.borrow_and_update().clone();
            tracing::debug!(servers = map.len(), "local zone updated");
            self.replace(map);
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}

/// The hosts-file form of a zone: one line per address, `ADDRESS server<N>.<domain> server<N>`,
/// sorted by server. What the gateway's process publishes for a resolver in another process.
pub fn render_hosts(map: &BTreeMap<ServerId, Vec<IpAddr>>, domain: &str) -> String {
    let domain = domain.trim_matches('.');
    let mut out = String::from("# berth tenant addresses; written by the gateway, do not edit\n");
    for (id, addrs) in map {
        for a in addrs {
            if domain.is_empty() {
                out.push_str(&format!("{a} {id}\n"));
            } else {
                out.push_str(&format!("{a} {id}.{domain} {id}\n"));
            }
        }
    }
    out
}

/// Reads a hosts-format text back into a zone map. Only names of the form `server<N>` or
/// `server<N>.<anything>` count (the zone serves `server<N>.<domain>` only); other names,
/// comments and malformed lines are skipped and counted, never fatal, so one bad line cannot
/// blank the zone.
pub fn parse_hosts(text: &str) -> (BTreeMap<ServerId, Vec<IpAddr>>, usize) {
    let mut map: BTreeMap<ServerId, Vec<IpAddr>> = BTreeMap::new();
    let mut skipped = 0;
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let mut fields = line.split_whitespace();
        let Some(Ok(ip)) = fields.next().map(str::parse::<IpAddr>) else {
            skipped += 1;
            continue;
        };
        let id = fields.find_map(|name| {
            let label = name.split('.').next().unwrap_or_default();
            names::parse_login(label)
        });
        match id {
            Some(id) => {
                let addrs = map.entry(id).or_default();
                if !addrs.contains(&ip) {
                    addrs.push(ip);
                }
            }
            None => skipped += 1,
        }
    }
    (map, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_roundtrip_and_tolerance() {
        let a: IpAddr = "172.19.2.5".parse().unwrap();
        let v6: IpAddr = "fd00::5".parse().unwrap();
        let b: IpAddr = "172.19.2.9".parse().unwrap();
        let map = BTreeMap::from([(id(5), vec![a, v6]), (id(9), vec![b])]);
        let text = render_hosts(&map, "berth.internal.");
        assert!(
            text.contains("172.19.2.5 server5.berth.internal server5\n"),
            "{text}"
        );
        assert_eq!(parse_hosts(&text), (map.clone(), 0));
        assert_eq!(parse_hosts(&render_hosts(&map, "")), (map, 0));

        let cases = [
            ("", 0, 0),
            ("# only a comment\n\n", 0, 0),
            ("172.19.2.5 server5.x # trailing\n", 1, 0),
            ("not-an-ip server5\n", 0, 1),
            ("172.19.2.5 gateway.local\n", 0, 1),
            ("172.19.2.5 server05\n172.19.2.6 server0\n", 0, 2),
            ("172.19.2.5\n", 0, 1),
            ("172.19.2.5 server5\n172.19.2.5 server5.d\n", 1, 0),
        ];
        for (text, servers, skipped) in cases {
            let (map, n) = parse_hosts(text);
            assert_eq!((map.len(), n), (servers, skipped), "{text:?}");
        }
    }

    fn id(n: u32) -> ServerId {
        ServerId::new(n).unwrap()
    }

    #[test]
    fn replace_set_remove() {
        let z = LocalZone::new();
        let a: IpAddr = "172.19.2.5".parse().unwrap();
        z.replace(BTreeMap::from([(id(5), a)]));
        assert_eq!(z.snapshot().addrs(id(5)), Some(&[a][..]));
        assert_eq!(z.snapshot().server_of(a), Some(id(5)));
        let v6: IpAddr = "fd00::5".parse().unwrap();
        z.set(id(5), vec![a, v6]);
        assert_eq!(z.snapshot().server_of(v6), Some(id(5)));
        z.remove(id(5));
        assert!(z.snapshot().is_empty());
        assert_eq!(z.snapshot().server_of(a), None);
    }

    #[test]
    fn a_view_sees_every_change_at_the_next_read() {
        let z = LocalZone::new();
        let mut v = ZoneView::new(&z);
        assert!(v.current(&z).is_empty());
        let a: IpAddr = "172.19.2.5".parse().unwrap();
        z.replace(BTreeMap::from([(id(5), a)]));
        assert_eq!(v.current(&z).addrs(id(5)), Some(&[a][..]));
        z.remove(id(5));
        assert_eq!(v.current(&z).addrs(id(5)), None);
        // A clone of the handle feeds the same views.
        z.clone().set(id(6), vec![a]);
        assert_eq!(v.current(&z).addrs(id(6)), Some(&[a][..]));
    }

    #[tokio::test]
    async fn follow_applies_updates() {
        let z = LocalZone::new();
        let (tx, rx) = watch::channel(BTreeMap::new());
        let task = tokio::spawn({
            let z = z.clone();
            async move { z.follow(rx).await }
        });
        let a: IpAddr = "172.19.2.7".parse().unwrap();
        tx.send(BTreeMap::from([(id(7), a)])).unwrap();
        for _ in 0..100 {
            if !z.snapshot().is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(z.snapshot().addrs(id(7)), Some(&[a][..]));
        drop(tx);
        task.await.unwrap();
    }
}
