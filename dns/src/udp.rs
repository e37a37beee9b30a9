//! The UDP side of the server: one worker per socket (the sockets share one address through
//! `SO_REUSEPORT`, one per core; see `service::bind`), each a loop that answers cache hits inline
//! — parse in place, patch a copy of the cached bytes, send — and hands every other datagram to
//! the general path as a task of its own.
//!
//! Why not hickory's `Server` for UDP: its per-datagram path (decode into owned types, a task,
//! a channel to a sender task, clone the cached records, encode them again) cost more than the
//! kernel's share of a cache hit; a hit here allocates nothing. The general path still uses
//! hickory's request parsing and response encoding, through [`UdpResponse`], and decides
//! exactly as for TCP ([`crate::resolver::Resolver::handle`]). TCP stays on hickory's `Server`.

use std::net::SocketAddr;
use std::sync::Arc;

use hickory_proto::op::{Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::Record;
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};
use hickory_server::net::NetError;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::resolver::Resolver;
use crate::wire;

/// Largest query datagram read; anything longer is cut and answered FORMERR by the general path.
const MAX_QUERY: usize = 4096;

/// Serves one UDP socket until `shutdown`; general-path tasks are spawned on `tracker` (the
/// caller waits for them to drain).
pub async fn serve(
    sock: Arc<UdpSocket>,
    resolver: Arc<Resolver>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let mut buf = vec![0u8; MAX_QUERY];
    let mut out = Vec::with_capacity(1500);
    loop {
        let (n, src) = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            r = sock.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    // ICMP errors reported on the socket and the like: nothing to answer.
                    tracing::debug!(error = %e, "dns udp receive failed");
                    tokio::task::yield_now().await;
                    continue;
                }
            },
        };
        let packet = &buf[..n];
        // Port 0 cannot be answered (and is a reflection trick); hickory drops it too.
        if src.port() == 0 {
            continue;
        }
        if let Some(q) = wire::parse_query(packet)
            && resolver.answer_hit(src.ip(), &q, &mut out)
        {
            if let Err(e) = sock.send_to(&out, src).await {
                tracing::debug!(error = %e, peer = %src, "could not send a dns response");
            }
            continue;
        }
        let packet = packet.to_vec();
        let sock = sock.clone();
        let resolver = resolver.clone();
        tracker.spawn(async move { general(packet, src, sock, resolver).await });
    }
}

/// Everything that is not a fresh cache hit: hickory parses, [`Resolver::handle`] decides.
async fn general(packet: Vec<u8>, src: SocketAddr, sock: Arc<UdpSocket>, resolver: Arc<Resolver>) {
    // As hickory's server: under 12 bytes there is nothing to answer, responses are never
    // answered (reflection), an undecodable query gets FORMERR.
    let Some(head) = packet.get(..12).and_then(|h| <[u8; 12]>::try_from(h).ok()) else {
        return;
    };
    if head[2] & 0x80 != 0 {
        return;
    }
    match Request::from_bytes(packet, src, Protocol::Udp) {
        Ok(request) => {
            let rh = UdpResponse { sock, dst: src };
            resolver.handle(&request, rh).await;
        }
        Err(_) => {
            let formerr = formerr(&head);
            if let Err(e) = sock.send_to(&formerr, src).await {
                tracing::debug!(error = %e, peer = %src, "could not send a dns response");
            }
            resolver.metrics().outcome(crate::metrics::Outcome::FormErr);
        }
    }
}

/// FORMERR for a query header: its ID, opcode and RD, no sections.
fn formerr(head: &[u8]) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[..2].copy_from_slice(&head[..2]);
    out[2] = 0x80 | (head[2] & 0x79);
    out[3] = 0x80 | 1; // RA, FORMERR
    out
}

/// Sends a hickory response on a worker's socket, cut to the client's payload size (512 without
/// EDNS) the way hickory's own UDP handle does.
#[derive(Clone)]
pub struct UdpResponse {
    sock: Arc<UdpSocket>,
    dst: SocketAddr,
}

#[async_trait::async_trait]
impl ResponseHandler for UdpResponse {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let id = response.metadata().id;
        let max = response.edns().map_or(512, |e| e.max_payload().max(512));
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(max);
        let info = match response.destructive_emit(&mut encoder) {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "cannot encode a dns response; SERVFAIL instead");
                bytes.clear();
                let mut metadata = Metadata::new(id, MessageType::Response, OpCode::Query);
                metadata.response_code = ResponseCode::ServFail;
                let header = Header {
                    metadata,
                    counts: HeaderCounts::default(),
                };
                let mut encoder = BinEncoder::new(&mut bytes);
                header.emit(&mut encoder)?;
                ResponseInfo::from(header)
            }
        };
        self.sock.send_to(&bytes, self.dst).await?;
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formerr_keeps_id_opcode_and_rd() {
        let head = [
            0x12,
            0x34,
            0x01 | (2 << 3) | 0x04,
            0x20,
            0,
            1,
            0,
            0,
            0,
            0,
            0,
            0,
        ];
        let f = formerr(&head);
        assert_eq!(&f[..2], &[0x12, 0x34]);
        assert_eq!(f[2], 0x80 | (2 << 3) | 0x01, "QR, opcode, RD; no AA");
        assert_eq!(f[3], 0x80 | 1);
        assert_eq!(&f[4..], &[0; 8]);
    }
}
