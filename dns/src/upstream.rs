//! Our own forwarding client: UDP from a pool of sockets (each on its own kernel-chosen random
//! port, used by one attempt at a time with a random ID, retired after [`MAX_USES`] attempts or
//! a timeout), TCP when the upstream truncates, upstreams tried in order, each attempt bounded.
//!
//! Deliberately not hickory's resolver: we need failover order, bounded attempts and exact control
//! over what is retried, and nothing more. Responses are accepted only from the address we asked,
//! with our ID and our question (each pooled socket is connected to one upstream, so the kernel
//! filters the source and reports ICMP errors); anything else (a late answer to an earlier
//! attempt on the same socket, a spoofing attempt) is ignored until the attempt times out.
//! Why a pool: a fresh socket per attempt cost five system calls and a reactor registration per
//! miss; why retire sockets: a port that lives forever gives a spoofer one less thing to guess.
//! This module knows nothing about caching or policy.

use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::metrics::Metrics;

pub use crate::wire::EDNS_PAYLOAD;

/// Attempts one pooled socket serves before it is closed (and its port with it).
pub const MAX_USES: u32 = 64;
/// Idle sockets kept per address family; more concurrent attempts open more, closed after.
pub const MAX_IDLE: usize = 64;

/// A UDP socket for upstream queries and how many attempts it has served.
#[derive(Debug)]
struct Pooled {
    sock: UdpSocket,
    uses: u32,
}

/// Idle sockets, one list per upstream. Each socket is connected to its upstream: the kernel
/// then drops datagrams from any other source and reports ICMP errors (a closed port fails the
/// attempt at once, so failover does not wait for the timeout).
#[derive(Debug)]
struct Pool {
    idle: Vec<Mutex<Vec<Pooled>>>,
}

impl Pool {
    fn new(upstreams: usize) -> Self {
        Self {
            idle: (0..upstreams).map(|_| Mutex::new(Vec::new())).collect(),
        }
    }

    async fn take(&self, slot: usize, server: SocketAddr) -> io::Result<Pooled> {
        let idle = self.idle.get(slot).and_then(|l| {
            match l.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            }
            .pop()
        });
        if let Some(p) = idle {
            return Ok(p);
        }
        let bind: SocketAddr = if server.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let sock = UdpSocket::bind(bind).await?;
        sock.connect(server).await?;
        Ok(Pooled { sock, uses: 0 })
    }

    fn give_back(&self, slot: usize, mut p: Pooled) {
        p.uses += 1;
        if p.uses >= MAX_USES {
            return;
        }
        let Some(l) = self.idle.get(slot) else {
            return;
        };
        let mut l = match l.lock() {
            Ok(g) => g,
            Err(e) => e.into_inner(),
        };
        if l.len() < MAX_IDLE {
            l.push(p);
        }
    }
}

#[derive(Debug, thiserror::Error, Clone)]
pub enum UpstreamError {
    #[error("no upstream answered within the attempt timeouts")]
    AllFailed,
    #[error("upstream {0} answered {1}")]
    Rcode(SocketAddr, ResponseCode),
}

#[derive(Debug)]
pub struct Upstreams {
    servers: Vec<SocketAddr>,
    attempt_timeout: Duration,
    pool: Pool,
}

impl Upstreams {
    pub fn new(servers: Vec<SocketAddr>, attempt_timeout: Duration) -> Self {
        Self {
            pool: Pool::new(servers.len()),
            servers,
            attempt_timeout,
        }
    }

    pub fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }

    /// Asks each upstream in order; returns the first usable answer. SERVFAIL/REFUSED/NOTIMP
    /// move on to the next upstream; if every upstream answered that way the last such answer is
    /// returned as an error. `dnssec_ok` sets the DO bit (the answer then carries RRSIG & co.
    /// when the zone is signed).
    pub async fn resolve(
        &self,
        query: &Query,
        dnssec_ok: bool,
        metrics: &Metrics,
    ) -> Result<Message, UpstreamError> {
        let mut last = UpstreamError::AllFailed;
        for (slot, &server) in self.servers.iter().enumerate() {
            metrics.upstream_queries.inc();
            let start = Instant::now();
            let res = tokio::time::timeout(
                self.attempt_timeout,
                self.ask_pooled(slot, server, query, dnssec_ok),
            )
            .await;
            match res {
                Ok(Ok(msg)) => {
                    metrics.upstream_latency.observe(start.elapsed());
                    match msg.metadata.response_code {
                        ResponseCode::ServFail | ResponseCode::Refused | ResponseCode::NotImp => {
                            metrics.upstream_errors.inc();
                            last = UpstreamError::Rcode(server, msg.metadata.response_code);
                        }
                        _ => return Ok(msg),
                    }
                }
                Ok(Err(e)) => {
                    metrics.upstream_errors.inc();
                    tracing::debug!(upstream = %server, error = %e, "upstream attempt failed");
                }
                Err(_) => {
                    metrics.upstream_timeouts.inc();
                    tracing::debug!(upstream = %server, "upstream attempt timed out");
                }
            }
        }
        Err(last)
    }

    /// One UDP attempt on a pooled socket (TCP if truncated). The socket goes back to the pool
    /// only after a matching answer: a timed-out attempt drops it, late answer and all.
    async fn ask_pooled(
        &self,
        slot: usize,
        server: SocketAddr,
        query: &Query,
        dnssec_ok: bool,
    ) -> io::Result<Message> {
        let (id, wire) = build_query(query, dnssec_ok);
        if wire.is_empty() {
            return Err(io::Error::other("could not encode the upstream query"));
        }
        let pooled = self.pool.take(slot, server).await?;
        let resp = exchange(&pooled.sock, id, &wire, query).await?;
        self.pool.give_back(slot, pooled);
        if resp.metadata.truncation {
            return ask_tcp(server, query, dnssec_ok).await;
        }
        Ok(resp)
    }
}

/// Sends `wire` on a connected socket (so only its upstream's datagrams arrive) and waits for
/// the answer with `id` and `query`.
async fn exchange(sock: &UdpSocket, id: u16, wire: &[u8], query: &Query) -> io::Result<Message> {
    sock.send(wire).await?;
    let mut buf = [0u8; 4096];
    loop {
        let n = sock.recv(&mut buf).await?;
        let Ok(resp) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        if matches(&resp, id, query) {
            return Ok(resp);
        }
    }
}

fn build_query(query: &Query, dnssec_ok: bool) -> (u16, Vec<u8>) {
    let id: u16 = rand::random();
    let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.add_query(query.clone());
    let mut edns = Edns::new();
    edns.set_max_payload(EDNS_PAYLOAD);
    edns.set_dnssec_ok(dnssec_ok);
    msg.set_edns(edns);
    // Encoding a single well-formed question cannot fail in practice; map it to an io error anyway.
    (id, msg.to_vec().unwrap_or_default())
}

fn matches(resp: &Message, id: u16, query: &Query) -> bool {
    resp.metadata.id == id
        && resp.metadata.message_type == MessageType::Response
        && resp.queries.len() == 1
        && resp.queries[0].name() == query.name()
        && resp.queries[0].query_type() == query.query_type()
        && resp.queries[0].query_class() == query.query_class()
}

/// One attempt at one upstream on a fresh socket: UDP, then TCP if the answer is truncated.
pub async fn ask(server: SocketAddr, query: &Query, dnssec_ok: bool) -> io::Result<Message> {
    Upstreams::new(vec![server], Duration::MAX)
        .ask_pooled(0, server, query, dnssec_ok)
        .await
}

/// One attempt over TCP (RFC 1035 two-byte length framing).
pub async fn ask_tcp(server: SocketAddr, query: &Query, dnssec_ok: bool) -> io::Result<Message> {
    let (id, wire) = build_query(query, dnssec_ok);
    let len = u16::try_from(wire.len()).map_err(|_| io::Error::other("query too long"))?;
    let mut s = TcpStream::connect(server).await?;
    s.set_nodelay(true)?;
    let mut framed = Vec::with_capacity(wire.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(&wire);
    s.write_all(&framed).await?;
    loop {
        let n = s.read_u16().await?;
        let mut buf = vec![0u8; usize::from(n)];
        s.read_exact(&mut buf).await?;
        let resp = Message::from_vec(&buf).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("upstream {server} sent a malformed answer: {e}"),
            )
        })?;
        if matches(&resp, id, query) {
            return Ok(resp);
        }
    }
}
