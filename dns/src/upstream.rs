//! Our own forwarding client: one fresh UDP socket (random port, random ID) per attempt, TCP
//! when the upstream truncates, upstreams tried in order, each attempt bounded.
//!
//! Deliberately not hickory's resolver: we need failover order, bounded attempts and exact control
//! over what is retried, and nothing more. Responses are accepted only from the upstream we asked
//! (connected socket), with our ID and our question; anything else is ignored until the attempt
//! times out. This module knows nothing about caching or policy.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::metrics::Metrics;

/// EDNS payload size we advertise upstream (the DNS flag day 2020 value).
pub const EDNS_PAYLOAD: u16 = 1232;

#[derive(Debug, thiserror::Error, Clone)]
pub enum UpstreamError {
    #[error("no upstream answered within the attempt timeouts")]
    AllFailed,
    #[error("upstream {0} answered {1}")]
    Rcode(SocketAddr, ResponseCode),
}

#[derive(Debug, Clone)]
pub struct Upstreams {
    servers: Vec<SocketAddr>,
    attempt_timeout: Duration,
}

impl Upstreams {
    pub fn new(servers: Vec<SocketAddr>, attempt_timeout: Duration) -> Self {
        Self {
            servers,
            attempt_timeout,
        }
    }

    pub fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }

    /// Asks each upstream in order; returns the first usable answer. SERVFAIL/REFUSED/NOTIMP
    /// move on to the next upstream; if every upstream answered that way the last such answer is
    /// returned as an error.
    pub async fn resolve(
        &self,
        query: &Query,
        metrics: &Metrics,
    ) -> Result<Message, UpstreamError> {
        let mut last = UpstreamError::AllFailed;
        for &server in &self.servers {
            metrics.upstream_queries.inc();
            let start = Instant::now();
            let res = tokio::time::timeout(self.attempt_timeout, ask(server, query)).await;
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
}

fn build_query(query: &Query) -> (u16, Vec<u8>) {
    let id: u16 = rand::random();
    let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.add_query(query.clone());
    let mut edns = Edns::new();
    edns.set_max_payload(EDNS_PAYLOAD);
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

/// One attempt at one upstream: UDP, then TCP if the answer is truncated.
pub async fn ask(server: SocketAddr, query: &Query) -> io::Result<Message> {
    let (id, wire) = build_query(query);
    if wire.is_empty() {
        return Err(io::Error::other("could not encode the upstream query"));
    }
    let bind: SocketAddr = if server.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(server).await?;
    sock.send(&wire).await?;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = sock.recv(&mut buf).await?;
        let Ok(resp) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        if !matches(&resp, id, query) {
            continue;
        }
        if resp.metadata.truncation {
            return ask_tcp(server, query).await;
        }
        return Ok(resp);
    }
}

/// One attempt over TCP (RFC 1035 two-byte length framing).
pub async fn ask_tcp(server: SocketAddr, query: &Query) -> io::Result<Message> {
    let (id, wire) = build_query(query);
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
