//! Sockets and lifecycle: binding (IP_FREEBIND, so the tenant bridge may appear later; one UDP
//! socket per two cores through SO_REUSEPORT, see [`udp_workers`]), one `udp` worker thread
//! per UDP socket, hickory's `Server` for TCP, the blocklist file watcher, and shutdown.
//!
//! Listeners are bound by the caller ([`bind`]) and passed in, so tests use port 0 on loopback and
//! the daemon can be socket-activated later; nothing here reads global state.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use hickory_server::Server;
use ipnet::IpNet;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::DnsError;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::policy::Blocklist;
use crate::resolver::{Handler, Resolver};
use crate::zone::LocalZone;

/// UDP sockets ([`udp_workers`] of them, all on the same address; blocking, with a receive timeout, as
/// their worker threads want them) and one TCP listener on that address.
#[derive(Debug)]
pub struct Listener {
    pub udp: Vec<std::net::UdpSocket>,
    pub tcp: TcpListener,
}

impl Listener {
    /// The UDP address (the TCP listener's too).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// How many UDP sockets (and workers) [`bind`] opens per address: one per two cores (at least
/// one, at most 32). The resolver shares the host with its clients, and each query costs the
/// sender and the kernel's receive path about as much CPU as the worker's answer; a worker
/// that has a core to itself half the time sleeps between small batches, and every sleep and
/// wake-up costs more than an answer from memory. Measured on 2 cores with 64 clients
/// (bench/dns/run.sh): one worker answered as many queries as two, at 20–30 % less CPU each.
pub fn udp_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().div_ceil(2).min(32))
}

fn socket(addr: SocketAddr, ty: Type, proto: Protocol) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    // IP_FREEBIND: bind the tenant gateway address before the bridge exists; packets arrive
    // once it does.
    match addr {
        SocketAddr::V4(_) => s.set_freebind_v4(true)?,
        SocketAddr::V6(_) => {
            s.set_only_v6(true)?;
            s.set_freebind_v6(true)?;
        }
    }
    // SO_REUSEADDR only for TCP (restart while old connections sit in TIME_WAIT); on UDP it
    // would let any second socket bind the same address and steal queries. UDP gets
    // SO_REUSEPORT instead, for several sockets (see `udp_workers`): the kernel admits a socket to the group
    // only from the same effective user, so another service cannot join it.
    if ty == Type::STREAM {
        s.set_reuse_address(true)?;
    } else {
        s.set_reuse_port(true)?;
    }
    s.set_nonblocking(true)?;
    Ok(s)
}

/// Binds UDP and TCP on `addr`. With port 0 the TCP listener takes the UDP socket's port.
/// Must be called inside a tokio runtime.
pub fn bind(addr: SocketAddr) -> Result<Listener, DnsError> {
    // With port 0 the kernel picks a free UDP port, which may be taken for TCP: try again with
    // another one (a fixed port is tried once).
    let attempts = if addr.port() == 0 { 16 } else { 1 };
    let mut last = None;
    for _ in 0..attempts {
        match bind_once(addr) {
            Ok(l) => return Ok(l),
            Err(DnsError::Bind { source, .. })
                if addr.port() == 0 && source.kind() == std::io::ErrorKind::AddrInUse =>
            {
                last = Some(source);
            }
            Err(e) => return Err(e),
        }
    }
    Err(DnsError::Bind {
        addr,
        source: last.unwrap_or_else(|| std::io::Error::other("no free port")),
    })
}

fn bind_once(addr: SocketAddr) -> Result<Listener, DnsError> {
    let err = |e: std::io::Error| DnsError::Bind { addr, source: e };
    let udp_socket = |a: SocketAddr| -> Result<std::net::UdpSocket, DnsError> {
        let u = socket(a, Type::DGRAM, Protocol::UDP).map_err(err)?;
        u.set_recv_buffer_size(4 << 20).ok();
        u.bind(&a.into()).map_err(err)?;
        u.set_nonblocking(false).map_err(err)?;
        u.set_read_timeout(Some(crate::udp::RECV_TIMEOUT))
            .map_err(err)?;
        Ok(std::net::UdpSocket::from(u))
    };
    let first = udp_socket(addr)?;
    // With port 0 the first socket's port is the one every other socket (and TCP) takes.
    let udp_addr = first.local_addr().map_err(err)?;
    let t = socket(udp_addr, Type::STREAM, Protocol::TCP).map_err(err)?;
    t.bind(&udp_addr.into()).map_err(err)?;
    t.listen(1024).map_err(err)?;
    let mut udp = vec![first];
    for _ in 1..udp_workers() {
        udp.push(udp_socket(udp_addr)?);
    }
    let tcp = TcpListener::from_std(std::net::TcpListener::from(t)).map_err(err)?;
    Ok(Listener { udp, tcp })
}

/// Reads upstreams from the `nameserver` lines of a resolv.conf-style file (port 53).
pub fn read_resolv_file(path: &Path) -> Result<Vec<SocketAddr>, DnsError> {
    let text = std::fs::read_to_string(path).map_err(|e| DnsError::Io {
        what: format!("resolv file {}", path.display()),
        source: e,
    })?;
    let out: Vec<SocketAddr> = text
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            (it.next() == Some("nameserver"))
                .then(|| it.next())
                .flatten()
        })
        .filter_map(|a| a.parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect();
    if out.is_empty() {
        return Err(DnsError::Config(format!(
            "resolv file {} names no nameserver",
            path.display()
        )));
    }
    Ok(out)
}

/// A configured resolver, ready to serve.
#[derive(Debug, Clone)]
pub struct Service {
    resolver: Arc<Resolver>,
    blocklist_path: Option<PathBuf>,
    tcp_idle: Duration,
}

impl Service {
    /// Builds the resolver. `tenant_nets` are the tenant subnet(s), always allowed as clients;
    /// `zone` is the handle the caller keeps feeding. Loads the blocklist (an unreadable file is
    /// an error here, at start; later reload failures keep the previous list).
    pub fn new(cfg: &Config, tenant_nets: &[IpNet], zone: LocalZone) -> Result<Self, DnsError> {
        let upstreams = match &cfg.resolv_file {
            Some(p) => read_resolv_file(p)?,
            None => cfg.upstreams.clone(),
        };
        let resolver = Resolver::new(cfg, tenant_nets, upstreams, zone)?;
        let svc = Self {
            resolver,
            blocklist_path: cfg.blocklist.clone(),
            tcp_idle: Duration::from_secs(cfg.tcp_idle_timeout_secs.max(1)),
        };
        svc.reload_blocklist()?;
        Ok(svc)
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.resolver.metrics()
    }

    /// Appends Prometheus text for this resolver.
    pub fn render_metrics(&self, out: &mut String) {
        self.resolver.update_gauges();
        self.resolver.metrics().render(out);
    }

    pub fn zone(&self) -> &LocalZone {
        self.resolver.zone()
    }

    /// (Re)reads the blocklist file; returns the number of domains. No file configured → 0.
    pub fn reload_blocklist(&self) -> Result<usize, DnsError> {
        let Some(path) = &self.blocklist_path else {
            return Ok(0);
        };
        let text = std::fs::read_to_string(path).map_err(|e| DnsError::Io {
            what: format!("blocklist {}", path.display()),
            source: e,
        })?;
        let (list, invalid) = Blocklist::parse(&text);
        if invalid > 0 {
            tracing::warn!(path = %path.display(), invalid, "blocklist lines skipped (not domain names)");
        }
        let n = list.len();
        self.resolver.set_blocklist(list);
        tracing::info!(path = %path.display(), domains = n, "blocklist loaded");
        Ok(n)
    }

    /// Serves on `listeners` until `shutdown` fires, then drains. Also watches the blocklist file
    /// (every `poll`, reloads when its mtime or size changes).
    pub async fn serve(
        &self,
        listeners: Vec<Listener>,
        shutdown: CancellationToken,
    ) -> Result<(), DnsError> {
        let mut server = Server::new(Handler(self.resolver.clone()));
        let tracker = TaskTracker::new();
        let general = crate::udp::GeneralPath {
            runtime: tokio::runtime::Handle::current(),
            tracker: tracker.clone(),
        };
        let mut udp = UdpWorkers::default();
        for l in listeners {
            for u in l.udp {
                udp.spawn(u, &self.resolver, &general)?;
            }
            server.register_listener(l.tcp, self.tcp_idle, 64);
        }
        let watcher = self.blocklist_path.clone().map(|p| {
            let svc = self.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move { svc.watch_blocklist(p, Duration::from_secs(2), stop).await })
        });
        let token = server.shutdown_token().clone();
        let res = tokio::select! {
            r = server.block_until_done() => r.map_err(|e| DnsError::Serve(e.to_string())),
            _ = shutdown.cancelled() => {
                token.cancel();
                server.block_until_done().await.map_err(|e| DnsError::Serve(e.to_string()))
            }
        };
        // UDP: stop reading, then let the queries already taken finish (each is bounded by the
        // query timeout).
        udp.stop();
        let _ = tokio::task::spawn_blocking(move || udp.join()).await;
        tracker.close();
        tracker.wait().await;
        if let Some(w) = watcher {
            w.abort();
        }
        res
    }

    async fn watch_blocklist(&self, path: PathBuf, poll: Duration, stop: CancellationToken) {
        let stamp = |p: &Path| -> Option<(SystemTime, u64)> {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len()))
        };
        let mut last = stamp(&path);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(poll) => {}
            }
            let now = stamp(&path);
            if now != last && now.is_some() {
                last = now;
                if let Err(e) = self.reload_blocklist() {
                    tracing::warn!(error = %e, "blocklist reload failed; keeping the previous list");
                }
            }
        }
    }
}

/// The UDP worker threads of one [`Service::serve`]. Dropped without [`UdpWorkers::join`] (the
/// serve future cancelled), they are still told to stop, so no thread outlives its server for
/// longer than one receive timeout.
#[derive(Default)]
struct UdpWorkers {
    stop: Arc<AtomicBool>,
    socks: Vec<Arc<std::net::UdpSocket>>,
    threads: Vec<JoinHandle<()>>,
}

impl UdpWorkers {
    fn spawn(
        &mut self,
        sock: std::net::UdpSocket,
        resolver: &Arc<Resolver>,
        general: &crate::udp::GeneralPath,
    ) -> Result<(), DnsError> {
        let sock = Arc::new(sock);
        let (s, r, g, stop) = (
            sock.clone(),
            resolver.clone(),
            general.clone(),
            self.stop.clone(),
        );
        let thread = std::thread::Builder::new()
            .name(format!("dns-udp-{}", self.threads.len()))
            .spawn(move || crate::udp::serve(s, r, g, &stop))
            .map_err(|e| DnsError::Io {
                what: "a dns udp worker thread (cannot start it)".into(),
                source: e,
            })?;
        self.socks.push(sock);
        self.threads.push(thread);
        Ok(())
    }

    /// Tells every worker to stop and wakes those blocked in `recvmmsg`: shutting a UDP
    /// socket's receive side makes a blocked receive return at once (Linux answers `ENOTCONN`
    /// for an unconnected socket, but does it).
    fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        for s in &self.socks {
            let _ = rustix::net::shutdown(s, rustix::net::Shutdown::Read);
        }
    }

    fn join(mut self) {
        for t in std::mem::take(&mut self.threads) {
            let _ = t.join();
        }
    }
}

impl Drop for UdpWorkers {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_file_nameservers() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("resolv.conf");
        std::fs::write(&p, "# x\nsearch lan\nnameserver 192.0.2.53\nnameserver ::1\nnameserver bogus\noptions ndots:1\n").unwrap();
        let got = read_resolv_file(&p).unwrap();
        assert_eq!(
            got,
            vec![
                "192.0.2.53:53".parse().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
        std::fs::write(&p, "search lan\n").unwrap();
        assert!(
            read_resolv_file(&p)
                .unwrap_err()
                .to_string()
                .contains("names no nameserver")
        );
        assert!(
            read_resolv_file(&dir.path().join("missing"))
                .unwrap_err()
                .to_string()
                .contains("resolv file")
        );
    }

    #[tokio::test]
    async fn binds_an_address_that_does_not_exist_yet() {
        // IP_FREEBIND: the tenant gateway address may not be configured when berth starts.
        // 192.0.2.1 (TEST-NET-1) is on no interface here.
        let l = bind("192.0.2.1:0".parse().unwrap()).unwrap();
        assert_eq!(
            l.local_addr().unwrap().ip(),
            "192.0.2.1".parse::<std::net::IpAddr>().unwrap()
        );
        assert_eq!(
            l.tcp.local_addr().unwrap().port(),
            l.local_addr().unwrap().port()
        );
    }
}
