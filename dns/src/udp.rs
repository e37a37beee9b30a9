//! The UDP side of the server: one worker thread per socket (the sockets share one address
//! through `SO_REUSEPORT`, one per two cores; see `service::udp_workers`), each a loop that
//! blocks in `recvmmsg` for up to [`BATCH`] datagrams, answers the tenant names and cache hits
//! among them inline — parse in place, write the zone's addresses or patch a copy of the cached
//! bytes — with one `sendmmsg`, and hands every other datagram to the general path as a task on
//! the tokio runtime. The client's rate limit is checked on the worker for those others: a
//! client over it gets REFUSED written inline (or nothing, for a packet that is not a plain
//! query), never a task.
//!
//! Why not hickory's `Server` for UDP: its per-datagram path (decode into owned types, a task,
//! a channel to a sender task, clone the cached records, encode them again) cost more than the
//! kernel's share of a cache hit; a hit here allocates nothing. The general path still uses
//! hickory's request parsing and response encoding, through [`UdpResponse`], and decides
//! exactly as for TCP ([`crate::resolver::Resolver::handle`]). TCP stays on hickory's `Server`.
//!
//! Why a thread of its own rather than a task: a task waits for the socket through the runtime's
//! epoll, so every datagram woke the reactor, then a worker, often another core's; every answer
//! sent woke the reactor again (write space). A thread blocked in `recvmmsg` is woken by the
//! kernel directly, and the socket is in no epoll set at all. The socket stays in blocking mode
//! with a receive timeout so the thread sees its stop flag; the general path sends with
//! `MSG_DONTWAIT` and so never blocks a runtime thread.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::{Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::Record;
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};
use hickory_server::net::NetError;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg};
use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny, sendmmsg};
use tokio::runtime::Handle;
use tokio_util::task::TaskTracker;

use crate::resolver::{HitTally, Resolver};
use crate::wire;
use crate::zone::ZoneView;

/// Largest query datagram read; anything longer is cut and answered FORMERR by the general path.
const MAX_QUERY: usize = 4096;

/// Distance between two receive buffers: a cache line more than [`MAX_QUERY`]. At a stride of
/// exactly 4096 bytes every datagram would start at the same offset in its page, so the 32
/// first lines the kernel writes and the worker then parses would all compete for one set of
/// the L1 cache (it is indexed by the address bits below 4096); one line more spreads them.
const STRIDE: usize = MAX_QUERY + 64;

/// Datagrams taken per `recvmmsg` (and answers given per `sendmmsg`). Under load the kernel's
/// per-syscall cost and the wake-ups, not the hit itself, dominate a cache hit; one call per
/// batch spreads them. Idle, a batch is one datagram (`MSG_WAITFORONE`).
const BATCH: usize = 32;

/// How long a worker blocks in `recvmmsg` before it looks at its stop flag again. Stopping also
/// shuts the socket's receive side down, which wakes the worker at once; this bounds the wait
/// if that wake-up is missed.
pub const RECV_TIMEOUT: Duration = Duration::from_millis(500);

/// A worker's buffers, reused from batch to batch.
struct Batch {
    /// `BATCH` receive buffers of `MAX_QUERY` bytes, [`STRIDE`] bytes apart.
    bufs: Vec<u8>,
    /// Per received datagram: its length and sender (`None`: not an IP address).
    got: Vec<(usize, Option<SocketAddr>)>,
    /// Responses to send and their destinations; `outs[..dsts.len()]` are in use.
    outs: Vec<Vec<u8>>,
    dsts: Vec<SocketAddrAny>,
    tally: HitTally,
    /// The worker's copy of the local zone.
    zone: ZoneView,
}

/// Where a worker sends what it does not answer itself: tasks on this runtime, tracked so the
/// caller can wait for them to drain.
#[derive(Clone)]
pub struct GeneralPath {
    pub runtime: Handle,
    pub tracker: TaskTracker,
}

/// Serves one UDP socket (blocking mode, receive timeout set: see [`RECV_TIMEOUT`]) on the
/// calling thread until `stop` is set.
pub fn serve(
    sock: Arc<UdpSocket>,
    resolver: Arc<Resolver>,
    general: GeneralPath,
    stop: &AtomicBool,
) {
    let mut b = Batch {
        bufs: vec![0u8; BATCH * STRIDE],
        got: Vec::with_capacity(BATCH),
        outs: (0..BATCH).map(|_| Vec::with_capacity(1500)).collect(),
        dsts: Vec::with_capacity(BATCH),
        tally: HitTally::default(),
        zone: ZoneView::new(resolver.zone()),
    };
    let mut hdrs = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    while !stop.load(Ordering::Acquire) {
        match recv_batch(&sock, &mut hdrs, &mut b.bufs, &mut b.got) {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) => {
                // ICMP errors reported on the socket and the like: nothing to answer. A short
                // pause keeps an error that repeats from spinning a core.
                tracing::debug!(error = %e, "dns udp receive failed");
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
        }
        b.dsts.clear();
        // One clock read per batch: TTLs count in seconds, rate-limit buckets refill per
        // microsecond, and a batch takes a few.
        let now = Instant::now();
        for (i, &(n, src)) in b.got.iter().enumerate() {
            // Port 0 cannot be answered (and is a reflection trick); hickory drops it too.
            let Some(src) = src.filter(|s| s.port() != 0) else {
                continue;
            };
            let packet = &b.bufs[i * STRIDE..i * STRIDE + n];
            // As hickory's server: under 12 bytes there is nothing to answer, and responses
            // are never answered (reflection). Neither costs a token or a task.
            if packet.len() < 12 || packet[2] & 0x80 != 0 {
                continue;
            }
            let k = b.dsts.len();
            let query = wire::parse_query(packet);
            // Tenant names and fresh cache hits are answered here, from memory, without a
            // rate-limit token (see `Resolver::answer_fast` for why).
            if let Some(q) = query
                && resolver.answer_fast(
                    src.ip(),
                    &q,
                    now,
                    &mut b.zone,
                    &mut b.outs[k],
                    &mut b.tally,
                )
            {
                b.dsts.push(SocketAddrAny::from(src));
                continue;
            }
            // Everything else spends a token first: a client over its limit gets REFUSED
            // written here (a plain query) or nothing, and never a task on the runtime.
            if !resolver.admit_at(src.ip(), now) {
                if let Some(q) = query {
                    wire::write_refused(&q, &mut b.outs[k]);
                    b.dsts.push(SocketAddrAny::from(src));
                }
                continue;
            }
            let packet = packet.to_vec();
            let sock = sock.clone();
            let resolver = resolver.clone();
            resolver.metrics().udp_tasks.inc();
            general.tracker.spawn_on(
                async move { general_path(packet, src, sock, resolver).await },
                &general.runtime,
            );
        }
        if b.dsts.is_empty() {
            continue;
        }
        resolver.count_hits(&mut b.tally);
        send_batch(&sock, &b.outs[..b.dsts.len()], &b.dsts);
    }
}

/// One `recvmmsg` into `bufs`, blocking until at least one datagram arrives (or the receive
/// timeout passes: `WouldBlock`); fills `got` with what arrived.
fn recv_batch(
    sock: &UdpSocket,
    hdrs: &mut MultiHeaders<SockaddrStorage>,
    bufs: &mut [u8],
    got: &mut Vec<(usize, Option<SocketAddr>)>,
) -> io::Result<()> {
    got.clear();
    // The kernel writes each sender's address length back into its header and takes it as the
    // room for the next one: harmless here, as every datagram on one socket comes from the same
    // address family.
    let mut iovs: Vec<[IoSliceMut<'_>; 1]> = bufs
        .chunks_mut(STRIDE)
        .map(|c| [IoSliceMut::new(&mut c[..MAX_QUERY])])
        .collect();
    let msgs = recvmmsg(
        sock.as_raw_fd(),
        hdrs,
        iovs.iter_mut(),
        MsgFlags::MSG_WAITFORONE,
        None,
    )?;
    got.extend(msgs.map(|m| (m.bytes, m.address.and_then(socket_addr))));
    Ok(())
}

fn socket_addr(a: SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    a.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
}

/// Sends `outs[i]` to `dsts[i]` with as few `sendmmsg` calls as the socket allows (blocking
/// while its buffer is full). A datagram the kernel refuses outright is logged and skipped, as a
/// failed `send_to` was.
fn send_batch(sock: &UdpSocket, outs: &[Vec<u8>], dsts: &[SocketAddrAny]) {
    let mut from = 0;
    while from < outs.len() {
        match send_some(sock, &outs[from..], &dsts[from..]) {
            Ok(n) => from += n.max(1),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::debug!(error = %e, peer = ?dsts[from], "could not send a dns response");
                from += 1;
            }
        }
    }
}

/// One `sendmmsg`: how many of the datagrams the kernel took (at least one, else an error about
/// the first).
fn send_some(sock: &UdpSocket, outs: &[Vec<u8>], dsts: &[SocketAddrAny]) -> io::Result<usize> {
    let iovs: Vec<[IoSlice<'_>; 1]> = outs.iter().map(|o| [IoSlice::new(o)]).collect();
    let mut ctl: Vec<SendAncillaryBuffer<'_, '_, '_>> = (0..outs.len())
        .map(|_| SendAncillaryBuffer::default())
        .collect();
    let mut msgs: Vec<MMsgHdr<'_>> = dsts
        .iter()
        .zip(&iovs)
        .zip(ctl.iter_mut())
        .map(|((a, iov), c)| MMsgHdr::new_with_addr(a, iov, c))
        .collect();
    Ok(sendmmsg(sock.as_fd(), &mut msgs, SendFlags::empty())?)
}

/// Sends one general-path response without ever blocking the runtime thread: `MSG_DONTWAIT`,
/// and while the socket's buffer is full, short sleeps (about 60 ms in all, then the datagram
/// is given up, as a full queue on the way would drop it too).
async fn send_nonblocking(sock: &UdpSocket, bytes: &[u8], dst: SocketAddr) -> io::Result<()> {
    let mut pause = Duration::from_millis(1);
    for _ in 0..6 {
        match rustix::net::sendto(sock.as_fd(), bytes, SendFlags::DONTWAIT, &dst) {
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => {
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::WouldBlock,
        "udp send buffer stayed full",
    ))
}

/// Everything that is not a fresh cache hit: hickory parses, [`Resolver::handle`] decides.
async fn general_path(
    packet: Vec<u8>,
    src: SocketAddr,
    sock: Arc<UdpSocket>,
    resolver: Arc<Resolver>,
) {
    // The worker dropped packets under 12 bytes and responses; an undecodable query gets
    // FORMERR. The worker also admitted the client (rate limit) already.
    let Some(head) = packet.get(..12).and_then(|h| <[u8; 12]>::try_from(h).ok()) else {
        return;
    };
    if head[2] & 0x80 != 0 {
        return;
    }
    match Request::from_bytes(packet, src, Protocol::Udp) {
        Ok(request) => {
            let rh = UdpResponse { sock, dst: src };
            resolver.handle_admitted(&request, rh).await;
        }
        Err(_) => {
            let formerr = formerr(&head);
            if let Err(e) = send_nonblocking(&sock, &formerr, src).await {
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
        send_nonblocking(&self.sock, &bytes, self.dst).await?;
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
