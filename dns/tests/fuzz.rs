//! A bounded fuzz run of the whole resolver (no cargo-fuzz: it needs nightly). Thousands of
//! random and mutated packets go over UDP and TCP to a real `dns::Service` on loopback whose only
//! upstream is hostile (it answers with random records, 10 KiB TXT sets, private addresses,
//! wrong ids, wrong questions, truncation, garbage or nothing). Asserted: the service never
//! stops answering, every datagram it sends is a well-formed response to an id we sent, and
//! every packet that decodes as a plain one-question query gets exactly such a response. Plus
//! property tests over the pure decision path with arbitrary wire input.
//!
//! A second run points the resolver at an upstream that truncates every UDP answer, so each
//! miss is asked again over TCP, where the upstream's answers are hostile (64 KiB answers,
//! lying length prefixes, garbage, wrong ids, silence).
//!
//! `BERTH_DNS_FUZZ_CASES` (default 3000) and `BERTH_DNS_FUZZ_SEED` (default: random, printed)
//! bound and reproduce the run; CI runs the default (a few seconds).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, SOA, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::BinEncodable;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

const TYPES: &[RecordType] = &[
    RecordType::A,
    RecordType::AAAA,
    RecordType::TXT,
    RecordType::PTR,
    RecordType::MX,
    RecordType::NS,
    RecordType::SOA,
    RecordType::CNAME,
    RecordType::SRV,
    RecordType::ANY,
    RecordType::AXFR,
    RecordType::Unknown(65280),
];

fn random_name(rng: &mut StdRng) -> Name {
    let pick = rng.random_range(0..10);
    let base = match pick {
        0 => "server1.berth.internal.".to_string(),
        1 => "1.2.19.172.in-addr.arpa.".to_string(),
        2 => "10.0.0.10.in-addr.arpa.".to_string(),
        3 => "localhost.".to_string(),
        4 => ".".to_string(),
        _ => {
            let labels = rng.random_range(1..5);
            let mut s = String::new();
            for _ in 0..labels {
                let len = rng.random_range(1..20);
                for _ in 0..len {
                    s.push(char::from(
                        b"abcdefghijklmnopqrstuvwxyz0123456789-"[rng.random_range(0..37)],
                    ));
                }
                s.push('.');
            }
            s
        }
    };
    Name::from_ascii(&base).unwrap_or_else(|_| Name::root())
}

/// A plausible query (then maybe mutated).
fn query_bytes(rng: &mut StdRng, id: u16) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.recursion_desired = rng.random_bool(0.9);
    if rng.random_bool(0.05) {
        m.metadata.op_code = match rng.random_range(0..4) {
            0 => OpCode::Status,
            1 => OpCode::Notify,
            2 => OpCode::Update,
            _ => OpCode::Unknown(rng.random_range(6..16)),
        };
    }
    let qtype = TYPES[rng.random_range(0..TYPES.len())];
    let class = if rng.random_bool(0.95) {
        DNSClass::IN
    } else {
        DNSClass::CH
    };
    m.add_query(
        Query::query(random_name(rng), qtype)
            .set_query_class(class)
            .clone(),
    );
    if rng.random_bool(0.3) {
        let mut e = hickory_proto::op::Edns::new();
        e.set_max_payload(rng.random_range(0..5000));
        e.set_dnssec_ok(rng.random_bool(0.5));
        m.set_edns(e);
    }
    m.to_bytes().unwrap_or_default()
}

fn mutate(rng: &mut StdRng, mut b: Vec<u8>) -> Vec<u8> {
    for _ in 0..rng.random_range(0..4) {
        if b.is_empty() {
            break;
        }
        match rng.random_range(0..6) {
            0 => {
                let i = rng.random_range(0..b.len());
                b[i] ^= 1 << rng.random_range(0..8);
            }
            1 => {
                let n = rng.random_range(0..b.len());
                b.truncate(n);
            }
            2 => {
                let i = rng.random_range(0..=b.len());
                let extra: Vec<u8> = (0..rng.random_range(1..40)).map(|_| rng.random()).collect();
                b.splice(i..i, extra);
            }
            3 if b.len() >= 12 => {
                // Header section counts: the classic parser trap.
                let i = 4 + 2 * rng.random_range(0..4);
                b[i] = rng.random();
                b[i + 1] = rng.random();
            }
            4 if b.len() > 12 => {
                // A compression pointer somewhere in the body (loops, forward refs).
                let i = rng.random_range(12..b.len());
                b[i] = 0xc0 | (rng.random::<u8>() & 0x3f);
            }
            _ => {
                let i = rng.random_range(0..b.len());
                b[i] = rng.random();
            }
        }
    }
    b
}

fn random_packet(rng: &mut StdRng, id: u16) -> Vec<u8> {
    match rng.random_range(0..10) {
        0 => {
            let mut v = vec![0u8; rng.random_range(0..600)];
            rng.fill_bytes(&mut v);
            v
        }
        1..=3 => query_bytes(rng, id),
        _ => {
            let q = query_bytes(rng, id);
            mutate(rng, q)
        }
    }
}

/// Would hickory's server treat this as a query it must answer?
fn expects_answer(b: &[u8]) -> Option<u16> {
    let m = Message::from_vec(b).ok()?;
    (m.metadata.message_type == MessageType::Query
        && m.metadata.op_code == OpCode::Query
        && m.queries.len() == 1)
        .then_some(m.metadata.id)
}

/// A hostile upstream's reply to `query`.
fn hostile_reply(rng: &mut StdRng, query: &[u8]) -> Option<Vec<u8>> {
    let choice = rng.random_range(0..12);
    if choice == 0 {
        return None; // silence: the resolver must time out
    }
    if choice == 1 {
        let mut v = vec![0u8; rng.random_range(0..700)];
        rng.fill_bytes(&mut v);
        return Some(v); // garbage
    }
    let q = Message::from_vec(query).ok()?;
    let mut r = Message::response(q.metadata.id, q.metadata.op_code);
    r.metadata.recursion_available = true;
    if choice == 2 {
        r.metadata.id = q.metadata.id.wrapping_add(1); // wrong id
    }
    let question = q.queries.first().cloned();
    if let Some(qq) = &question {
        if choice == 3 {
            r.add_query(Query::query(
                Name::from_ascii("other.example.").unwrap(),
                qq.query_type(),
            ));
        } else {
            r.add_query(qq.clone());
        }
    }
    r.metadata.response_code = match rng.random_range(0..8) {
        0 => ResponseCode::ServFail,
        1 => ResponseCode::NXDomain,
        2 => ResponseCode::Refused,
        _ => ResponseCode::NoError,
    };
    if choice == 4 {
        r.metadata.truncation = true;
    }
    let owner = question
        .map(|q| q.name().clone())
        .unwrap_or_else(Name::root);
    for _ in 0..rng.random_range(0..40) {
        let ttl = rng.random_range(0..200_000);
        let data = match rng.random_range(0..7) {
            0 => RData::A(A(Ipv4Addr::from(rng.random::<u32>()))),
            1 => RData::A(A(Ipv4Addr::new(10, 0, 0, rng.random()))),
            2 => RData::AAAA(AAAA(Ipv6Addr::from(rng.random::<u128>()))),
            3 => RData::AAAA(AAAA(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0xc0a8, 1))),
            4 => RData::CNAME(CNAME(random_name(rng))),
            5 => RData::TXT(TXT::new(
                (0..rng.random_range(1..40))
                    .map(|_| "x".repeat(250))
                    .collect(),
            )),
            _ => {
                let n = Name::from_ascii("example.").unwrap();
                RData::SOA(SOA::new(n.clone(), n, 1, 2, 3, 4, rng.random()))
            }
        };
        let rec = Record::from_rdata(owner.clone(), ttl, data);
        match rng.random_range(0..3) {
            0 => r.add_answer(rec),
            1 => r.add_authority(rec),
            _ => r.add_additional(rec),
        };
    }
    let mut bytes = r.to_bytes().ok()?;
    if choice == 5 {
        bytes = mutate(rng, bytes);
    }
    bytes.truncate(65_000);
    Some(bytes)
}

async fn hostile_upstream(seed: u64, stop: CancellationToken) -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
        let mut buf = vec![0u8; 65_535];
        loop {
            let (n, from) = tokio::select! {
                r = sock.recv_from(&mut buf) => match r { Ok(x) => x, Err(_) => continue },
                _ = stop.cancelled() => return,
            };
            if let Some(reply) = hostile_reply(&mut rng, &buf[..n]) {
                let _ = sock.send_to(&reply, from).await;
            }
        }
    });
    addr
}

fn well_formed_reply(b: &[u8]) -> Result<Message, String> {
    let m = Message::from_vec(b).map_err(|e| format!("undecodable reply: {e}"))?;
    if m.metadata.message_type != MessageType::Response {
        return Err("reply is not a response".into());
    }
    Ok(m)
}

async fn start_service(upstream: SocketAddr, stop: CancellationToken) -> SocketAddr {
    let cfg = dns::Config {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        upstreams: vec![upstream],
        upstream_timeout_ms: 100,
        query_timeout_ms: 250,
        stale_wait_ms: 50,
        rate_limit_qps: 0,
        // Small budgets, so the byte bound and eviction run all the time.
        cache_size: 200,
        cache_max_bytes: 64 << 10,
        cache_max_entry_bytes: 8 << 10,
        ..Default::default()
    };
    let zone = dns::LocalZone::new();
    let svc = dns::Service::new(&cfg, &["127.0.0.0/8".parse().unwrap()], zone).unwrap();
    let l = dns::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { svc.serve(vec![l], stop).await });
    addr
}

async fn alive(addr: SocketAddr) -> bool {
    let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut q = Message::query();
    q.metadata.id = 4242;
    q.add_query(Query::query(
        Name::from_str("localhost.").unwrap(),
        RecordType::A,
    ));
    let _ = c.send_to(&q.to_bytes().unwrap(), addr).await;
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(Duration::from_secs(2), c.recv(&mut buf)).await {
        Ok(Ok(n)) => well_formed_reply(&buf[..n]).is_ok_and(|m| m.metadata.id == 4242),
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_and_mutated_packets_against_the_whole_resolver() {
    let cases: usize = std::env::var("BERTH_DNS_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let seed: u64 = std::env::var("BERTH_DNS_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("dns fuzz: {cases} cases, BERTH_DNS_FUZZ_SEED={seed}");
    let stop = CancellationToken::new();
    let upstream = hostile_upstream(seed, stop.clone()).await;
    let addr = start_service(upstream, stop.clone()).await;
    assert!(alive(addr).await, "service does not answer before the run");
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();

    // UDP: batches of 100 packets, each batch from its own socket, replies collected until the
    // socket is quiet past the resolver's query timeout.
    let mut expected_total = 0usize;
    let mut answered_total = 0usize;
    let mut missing = Vec::new();
    let mut sent_ids = HashSet::new();
    let udp_cases = cases * 3 / 4;
    for batch_start in (0..udp_cases).step_by(100) {
        let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut expected: HashMap<u16, usize> = HashMap::new();
        for i in batch_start..(batch_start + 100).min(udp_cases) {
            let p = random_packet(&mut rng, i as u16);
            if p.len() >= 2 {
                sent_ids.insert(u16::from_be_bytes([p[0], p[1]]));
            }
            if let Some(id) = expects_answer(&p) {
                *expected.entry(id).or_default() += 1;
            }
            let _ = c.send_to(&p, addr).await;
        }
        let mut buf = vec![0u8; 65_535];
        let mut got: HashMap<u16, usize> = HashMap::new();
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(600), c.recv(&mut buf)).await
        {
            let m = well_formed_reply(&buf[..n])
                .unwrap_or_else(|e| panic!("seed {seed}: {e}: {:02x?}", &buf[..n.min(64)]));
            assert!(
                sent_ids.contains(&m.metadata.id),
                "seed {seed}: reply with an id never sent: {}",
                m.metadata.id
            );
            *got.entry(m.metadata.id).or_default() += 1;
        }
        for (id, n) in &expected {
            expected_total += n;
            let g = got.get(id).copied().unwrap_or(0);
            answered_total += g.min(*n);
            if g < *n {
                missing.push(*id);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "seed {seed}: {} of {expected_total} well-formed queries got no reply (ids {:?})",
        missing.len(),
        &missing[..missing.len().min(20)]
    );

    // TCP: the rest, each on its own connection with a length prefix that may lie, 32 at a time.
    let mut tcp_answered = 0;
    let tcp: Vec<(usize, Vec<u8>, u16)> = (udp_cases..cases)
        .map(|i| {
            let p = random_packet(&mut rng, i as u16);
            let len = if rng.random_bool(0.1) {
                rng.random::<u16>()
            } else {
                p.len() as u16
            };
            (i, p, len)
        })
        .collect();
    for chunk in tcp.chunks(32) {
        let mut set = tokio::task::JoinSet::new();
        for (i, p, len) in chunk.iter().cloned() {
            set.spawn(async move {
                let mut s = TcpStream::connect(addr)
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
                let _ = s.write_all(&len.to_be_bytes()).await;
                let _ = s.write_all(&p).await;
                let read = tokio::time::timeout(Duration::from_millis(800), async {
                    let mut lb = [0u8; 2];
                    s.read_exact(&mut lb).await?;
                    let mut body = vec![0u8; usize::from(u16::from_be_bytes(lb))];
                    s.read_exact(&mut body).await?;
                    Ok::<_, std::io::Error>(body)
                })
                .await;
                let honest = usize::from(len) == p.len();
                match (expects_answer(&p), read) {
                    (want, Ok(Ok(body))) => {
                        let m = well_formed_reply(&body).map_err(|e| format!("tcp {i}: {e}"))?;
                        if let Some(id) = want.filter(|_| honest)
                            && m.metadata.id != id
                        {
                            return Err(format!("tcp {i}: reply id {} for {id}", m.metadata.id));
                        }
                        Ok(true)
                    }
                    (Some(_), _) if honest => {
                        Err(format!("well-formed TCP query {i} got no reply"))
                    }
                    _ => Ok(false),
                }
            });
        }
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Ok(answered)) => tcp_answered += usize::from(answered),
                Ok(Err(e)) => panic!("seed {seed}: {e}"),
                Err(e) => panic!("seed {seed}: tcp task: {e}"),
            }
        }
    }

    assert!(alive(addr).await, "seed {seed}: service stopped answering");
    eprintln!(
        "dns fuzz: {answered_total}/{expected_total} well-formed UDP queries answered, {tcp_answered} TCP replies, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    stop.cancel();
}

/// An upstream whose every UDP answer is truncated (TC, no records), so the resolver asks
/// again over TCP on the same port, where it gets a hostile answer: up to 64 KiB of valid
/// records, a length prefix that lies (longer or shorter than what follows, 0, 65535 of
/// garbage), half a prefix, frames with the wrong id or question before or instead of the
/// right one, mutated bytes, silence, or a closed connection. Returns its address and the
/// number of framed queries its TCP side read.
async fn hostile_tcp_upstream(
    seed: u64,
    stop: CancellationToken,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    // One port for both transports: take a free TCP port, then its UDP twin (retry if taken).
    let (tcp, udp) = loop {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        if let Ok(udp) = UdpSocket::bind(addr).await {
            break (tcp, udp);
        }
    };
    let addr = tcp.local_addr().unwrap();
    let tcp_queries = Arc::new(AtomicUsize::new(0));
    let stop_udp = stop.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let (n, from) = tokio::select! {
                r = udp.recv_from(&mut buf) => match r { Ok(x) => x, Err(_) => continue },
                _ = stop_udp.cancelled() => return,
            };
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut r = Message::response(q.metadata.id, q.metadata.op_code);
            r.metadata.truncation = true;
            for qq in &q.queries {
                r.add_query(qq.clone());
            }
            if let Ok(b) = r.to_bytes() {
                let _ = udp.send_to(&b, from).await;
            }
        }
    });
    let counter = tcp_queries.clone();
    tokio::spawn(async move {
        let mut conn = 0u64;
        loop {
            let s = tokio::select! {
                r = tcp.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
                _ = stop.cancelled() => return,
            };
            conn += 1;
            let rng = StdRng::seed_from_u64(seed ^ 0x7c9 ^ conn.wrapping_mul(0x9e37_79b9));
            let counter = counter.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = hostile_tcp_conn(s, rng, counter) => {}
                    _ = stop.cancelled() => {}
                }
            });
        }
    });
    (addr, tcp_queries)
}

/// A valid answer to `q` of about `size` bytes (TXT records of 250-byte strings; A records
/// for other types), cut below 64 KiB.
fn big_answer(q: &Message, size: usize) -> Vec<u8> {
    let mut r = Message::response(q.metadata.id, q.metadata.op_code);
    r.metadata.recursion_available = true;
    let Some(question) = q.queries.first() else {
        return Vec::new();
    };
    r.add_query(question.clone());
    let owner = question.name().clone();
    let mut total = 0;
    let mut i = 0u32;
    while total < size {
        let data = if question.query_type() == RecordType::TXT {
            total += 270;
            RData::TXT(TXT::new(vec!["y".repeat(250)]))
        } else {
            total += 16 + owner.len();
            i += 1;
            RData::A(A(Ipv4Addr::from(0x2d00_0000 | i)))
        };
        r.add_answer(Record::from_rdata(owner.clone(), 60, data));
    }
    let mut b = r.to_bytes().unwrap_or_default();
    while b.len() > 65_535 {
        r.answers.pop();
        b = r.to_bytes().unwrap_or_default();
    }
    b
}

async fn hostile_tcp_conn(
    mut s: TcpStream,
    mut rng: StdRng,
    counter: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let frame = |b: &[u8]| {
        let mut f = (b.len() as u16).to_be_bytes().to_vec();
        f.extend_from_slice(b);
        f
    };
    let Ok(n) = s.read_u16().await else { return };
    let mut q = vec![0u8; usize::from(n)];
    if s.read_exact(&mut q).await.is_err() {
        return;
    }
    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let Ok(query) = Message::from_vec(&q) else {
        return;
    };
    let size = match rng.random_range(0..3) {
        0 => rng.random_range(0..2_000),
        1 => rng.random_range(2_000..20_000),
        _ => rng.random_range(60_000..70_000),
    };
    let good = big_answer(&query, size);
    let mut wrong_id = Message::from_vec(&good).ok();
    if let Some(w) = wrong_id.as_mut() {
        w.metadata.id = w.metadata.id.wrapping_add(1);
    }
    let wrong_id = wrong_id.and_then(|w| w.to_bytes().ok()).unwrap_or_default();
    let out: Vec<u8> = match rng.random_range(0..14) {
        0 | 1 => frame(&good),
        // The prefix promises more than follows, then the connection closes.
        2 => {
            let mut f = frame(&good);
            f[..2].copy_from_slice(
                &((good.len() + 1 + rng.random_range(0..1000)) as u16).to_be_bytes(),
            );
            f
        }
        // The prefix promises less: a cut message, then trailing bytes.
        3 => {
            let cut = rng.random_range(0..good.len().max(1));
            let mut f = (cut as u16).to_be_bytes().to_vec();
            f.extend_from_slice(&good);
            f
        }
        4 => vec![0, 0],
        5 => vec![rng.random()],
        6 => {
            let mut g = vec![0u8; 65_535];
            rng.fill_bytes(&mut g);
            frame(&g)
        }
        7 => {
            let mut g = vec![0u8; rng.random_range(0..3_000)];
            rng.fill_bytes(&mut g);
            frame(&g)
        }
        // A stale frame with the wrong id before the right answer (must be skipped).
        8 => {
            let mut f = frame(&wrong_id);
            f.extend(frame(&good));
            f
        }
        // Nothing but wrong ids, then silence: the resolver must give up on its own.
        9 => {
            let mut f = Vec::new();
            for _ in 0..rng.random_range(1..20) {
                f.extend(frame(&wrong_id));
            }
            f
        }
        10 => frame(&mutate(&mut rng, good.clone())),
        // The same answer for another question.
        11 => {
            let mut other = query.clone();
            if let Some(qq) = other.queries.first_mut() {
                qq.set_name(Name::from_ascii("other.example.").unwrap());
            }
            frame(&big_answer(&other, size))
        }
        12 => return,    // closed without a word
        _ => Vec::new(), // silence until the resolver gives up
    };
    let _ = s.write_all(&out).await;
    let _ = s.flush().await;
    // Hold the connection open (silence) until the resolver closes it or the test stops.
    let mut sink = [0u8; 512];
    while let Ok(n) = s.read(&mut sink).await {
        if n == 0 {
            break;
        }
    }
}

/// The TCP side of the upstream client: every miss is truncated over UDP and asked again over
/// TCP, where the answers are hostile. Asserted: the service never stops, and every query —
/// over UDP or TCP — gets a well-formed response with its id and question, never FORMERR
/// (a bad upstream answer is SERVFAIL, a good one passes whole up to 64 KiB over TCP).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_tcp_upstream_answers() {
    let cases: usize = std::env::var("BERTH_DNS_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let seed: u64 = std::env::var("BERTH_DNS_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    let queries = (cases / 15).max(20);
    eprintln!("dns tcp upstream fuzz: {queries} queries, BERTH_DNS_FUZZ_SEED={seed}");
    let stop = CancellationToken::new();
    let (upstream, tcp_queries) = hostile_tcp_upstream(seed, stop.clone()).await;
    let cfg = dns::Config {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        upstreams: vec![upstream],
        // Long enough that a 64 KiB answer on a slow machine is not cut by the clock; the
        // silent cases cost this much per batch.
        upstream_timeout_ms: 1_000,
        query_timeout_ms: 1_500,
        stale_wait_ms: 50,
        rate_limit_qps: 0,
        cache_size: 200,
        cache_max_bytes: 64 << 10,
        cache_max_entry_bytes: 8 << 10,
        ..Default::default()
    };
    let svc = dns::Service::new(
        &cfg,
        &["127.0.0.0/8".parse().unwrap()],
        dns::LocalZone::new(),
    )
    .unwrap();
    let l = dns::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = l.local_addr().unwrap();
    let stop_svc = stop.clone();
    tokio::spawn(async move { svc.serve(vec![l], stop_svc).await });
    assert!(alive(addr).await, "service does not answer before the run");

    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();
    let mut big = 0usize;
    let mut servfail = 0usize;
    let all: Vec<(u16, Vec<u8>, Name, bool)> = (0..queries)
        .map(|i| {
            let id = i as u16;
            let name =
                Name::from_ascii(format!("q{i}-{}.tcp.example.", rng.random::<u32>())).unwrap();
            let qtype = if rng.random_bool(0.5) {
                RecordType::TXT
            } else {
                RecordType::A
            };
            let mut m = Message::query();
            m.metadata.id = id;
            m.metadata.recursion_desired = true;
            m.add_query(Query::query(name.clone(), qtype));
            if rng.random_bool(0.5) {
                let mut e = hickory_proto::op::Edns::new();
                e.set_max_payload(4096);
                m.set_edns(e);
            }
            (id, m.to_bytes().unwrap(), name, rng.random_bool(0.5))
        })
        .collect();
    for chunk in all.chunks(50) {
        let mut set = tokio::task::JoinSet::new();
        for (id, q, name, over_tcp) in chunk.iter().cloned() {
            set.spawn(async move {
                let reply = tokio::time::timeout(Duration::from_secs(10), async {
                    if over_tcp {
                        let mut s = TcpStream::connect(addr).await?;
                        s.write_all(&(q.len() as u16).to_be_bytes()).await?;
                        s.write_all(&q).await?;
                        let n = s.read_u16().await?;
                        let mut body = vec![0u8; usize::from(n)];
                        s.read_exact(&mut body).await?;
                        Ok::<_, std::io::Error>(body)
                    } else {
                        let c = UdpSocket::bind("127.0.0.1:0").await?;
                        c.send_to(&q, addr).await?;
                        let mut buf = vec![0u8; 65_535];
                        let n = c.recv(&mut buf).await?;
                        buf.truncate(n);
                        Ok(buf)
                    }
                })
                .await
                .map_err(|_| format!("query {id} (tcp: {over_tcp}) got no reply"))?
                .map_err(|e| format!("query {id} (tcp: {over_tcp}): {e}"))?;
                let m = well_formed_reply(&reply).map_err(|e| format!("query {id}: {e}"))?;
                if m.metadata.id != id {
                    return Err(format!("query {id}: reply id {}", m.metadata.id));
                }
                if m.queries.len() != 1 || m.queries[0].name() != &name {
                    return Err(format!(
                        "query {id}: reply for another question: {:?}",
                        m.queries
                    ));
                }
                if m.metadata.response_code == ResponseCode::FormErr {
                    return Err(format!("query {id}: FORMERR for a well-formed query"));
                }
                Ok((reply.len(), m.metadata.response_code))
            });
        }
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Ok((len, rcode))) => {
                    big += usize::from(len > 16_384);
                    servfail += usize::from(rcode == ResponseCode::ServFail);
                }
                Ok(Err(e)) => panic!("seed {seed}: {e}"),
                Err(e) => panic!("seed {seed}: client task: {e}"),
            }
        }
    }
    let asked = tcp_queries.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        asked >= queries / 2,
        "seed {seed}: only {asked} of {queries} misses reached the upstream over TCP"
    );
    assert!(alive(addr).await, "seed {seed}: service stopped answering");
    eprintln!(
        "dns tcp upstream fuzz: {queries} answered ({big} over 16 KiB, {servfail} SERVFAIL), {asked} upstream TCP queries, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    stop.cancel();
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

    /// Arbitrary bytes through hickory's decoder and, when a question comes out, through the
    /// pure policy with names no test author would write.
    #[test]
    fn decoder_and_policy_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
        if let Ok(m) = Message::from_vec(&bytes) {
            for q in &m.queries {
                let name = q.name().to_lowercase();
                let _ = dns::policy::arpa_host(&name);
                let _ = dns::policy::is_private_reverse(&name);
            }
            for r in m.answers.iter().chain(&m.additionals) {
                if let RData::A(a) = &r.data {
                    let _ = dns::policy::is_private(IpAddr::V4(a.0));
                }
            }
            let mut answers = m.answers.clone();
            let _ = dns::policy::strip_rebind(&mut answers, &Name::root(), &[]);
        }
    }
}
