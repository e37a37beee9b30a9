//! DNS test fixtures: a scriptable upstream on loopback, a berth resolver on port 0, and a `dig`
//! runner whose output is parsed into something assertable.
//!
//! Everything binds 127.0.0.1 port 0 (never the internet, never a fixed port), and every fixture
//! stops its tasks on drop so a failing test leaves nothing behind.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, NULL, SOA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;

type Records = Arc<Mutex<HashMap<(Name, RecordType), Vec<Record>>>>;

/// A tiny authoritative server for `test.` with records the test sets.
/// Unknown names → NXDOMAIN with an SOA (TTL 300, MINIMUM 60); known name, other type → NODATA.
pub struct FakeUpstream {
    pub addr: SocketAddr,
    queries: Arc<AtomicUsize>,
    do_queries: Arc<AtomicUsize>,
    delay_ms: Arc<AtomicU64>,
    records: Records,
    stop: CancellationToken,
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn name(s: &str) -> Name {
    // Test-authored literal names only.
    Name::from_ascii(s)
        .map(|n| n.to_lowercase())
        .unwrap_or_else(|e| panic!("bad test name {s}: {e}"))
}

impl FakeUpstream {
    /// Binds UDP and TCP on 127.0.0.1 (same port) and starts answering.
    pub async fn start() -> FakeUpstream {
        // Find a port free for both protocols.
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0")
                .await
                .unwrap_or_else(|e| panic!("bind fake upstream udp: {e}"));
            let addr = udp.local_addr().unwrap_or_else(|e| panic!("{e}"));
            if let Ok(tcp) = TcpListener::bind(addr).await {
                break (udp, tcp);
            }
        };
        let addr = udp.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let up = FakeUpstream {
            addr,
            queries: Arc::default(),
            do_queries: Arc::default(),
            delay_ms: Arc::default(),
            records: Arc::default(),
            stop: CancellationToken::new(),
        };
        let udp = Arc::new(udp);
        let st = up.state();
        let stop = up.stop.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let (n, peer) = tokio::select! {
                    r = udp.recv_from(&mut buf) => match r { Ok(x) => x, Err(_) => continue },
                    _ = stop.cancelled() => return,
                };
                let req = buf[..n].to_vec();
                let st = st.clone();
                let udp = udp.clone();
                tokio::spawn(async move {
                    if let Some(resp) = st.answer(&req, true).await {
                        let _ = udp.send_to(&resp, peer).await;
                    }
                });
            }
        });
        let st = up.state();
        let stop = up.stop.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = tokio::select! {
                    r = tcp.accept() => match r { Ok(x) => x, Err(_) => continue },
                    _ = stop.cancelled() => return,
                };
                let st = st.clone();
                tokio::spawn(async move {
                    while let Ok(len) = s.read_u16().await {
                        let mut req = vec![0u8; usize::from(len)];
                        if s.read_exact(&mut req).await.is_err() {
                            return;
                        }
                        if let Some(resp) = st.answer(&req, false).await {
                            let mut out = (resp.len() as u16).to_be_bytes().to_vec();
                            out.extend_from_slice(&resp);
                            if s.write_all(&out).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        up
    }

    fn state(&self) -> UpState {
        UpState {
            queries: self.queries.clone(),
            do_queries: self.do_queries.clone(),
            delay_ms: self.delay_ms.clone(),
            records: self.records.clone(),
        }
    }

    /// Queries received so far (UDP and TCP).
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }

    /// Queries received with the DNSSEC OK bit set.
    pub fn do_queries(&self) -> usize {
        self.do_queries.load(Ordering::SeqCst)
    }

    /// Delay every answer by this long.
    pub fn set_delay(&self, d: Duration) {
        self.delay_ms.store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// Stops answering and closes the sockets.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    pub fn add(&self, owner: &str, ttl: u32, data: RData) {
        let n = name(owner);
        let t = data.record_type();
        let mut m = self.records.lock().unwrap_or_else(|p| p.into_inner());
        m.entry((n.clone(), t))
            .or_default()
            .push(Record::from_rdata(n, ttl, data));
    }

    pub fn add_a(&self, owner: &str, ttl: u32, ip: &str) {
        match ip.parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) => self.add(owner, ttl, RData::A(A(v4))),
            Ok(IpAddr::V6(v6)) => self.add(owner, ttl, RData::AAAA(AAAA(v6))),
            Err(e) => panic!("bad test address {ip}: {e}"),
        }
    }

    /// Replaces every record of `owner`'s type with one address.
    pub fn set_a(&self, owner: &str, ttl: u32, ip: &str) {
        let t = if ip.contains(':') {
            RecordType::AAAA
        } else {
            RecordType::A
        };
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(name(owner), t));
        self.add_a(owner, ttl, ip);
    }

    /// An A record with an RRSIG over it (a well-formed record whose signature is filler: the
    /// tests check that signatures travel, nobody validates them). The RRSIG is only sent to
    /// queries with DO set, as a signed zone's server does. Also puts an NSEC for `test.` in
    /// the authority section of DO=1 negative answers.
    pub fn add_signed_a(&self, owner: &str, ttl: u32, ip: &str) {
        self.add_a(owner, ttl, ip);
        let mut rdata = Vec::new();
        rdata.extend_from_slice(&u16::from(RecordType::A).to_be_bytes()); // type covered
        rdata.push(13); // algorithm: ECDSA P-256 SHA-256
        rdata.push(name(owner).num_labels());
        rdata.extend_from_slice(&ttl.to_be_bytes()); // original TTL
        rdata.extend_from_slice(&2_000_000_000u32.to_be_bytes()); // expiration
        rdata.extend_from_slice(&1_700_000_000u32.to_be_bytes()); // inception
        rdata.extend_from_slice(&12345u16.to_be_bytes()); // key tag
        rdata.extend_from_slice(b"\x04test\x00"); // signer
        rdata.extend_from_slice(&[0x5a; 64]); // signature
        self.add(
            owner,
            ttl,
            RData::Unknown {
                code: RecordType::RRSIG,
                rdata: NULL::with(rdata),
            },
        );
        // NSEC test. → test. covering A RRSIG NSEC (type bitmap window 0).
        let mut nsec = b"\x04test\x00".to_vec();
        nsec.extend_from_slice(&[0, 6, 0x40, 0, 0, 0, 0, 0x03]);
        self.add(
            "test.",
            ttl,
            RData::Unknown {
                code: RecordType::NSEC,
                rdata: NULL::with(nsec),
            },
        );
    }

    pub fn add_txt(&self, owner: &str, ttl: u32, text: &str) {
        self.add(owner, ttl, RData::TXT(TXT::new(vec![text.to_string()])));
    }
}

#[derive(Clone)]
struct UpState {
    queries: Arc<AtomicUsize>,
    do_queries: Arc<AtomicUsize>,
    delay_ms: Arc<AtomicU64>,
    records: Records,
}

impl UpState {
    async fn answer(&self, req: &[u8], udp: bool) -> Option<Vec<u8>> {
        let req = Message::from_vec(req).ok()?;
        self.queries.fetch_add(1, Ordering::SeqCst);
        let d = self.delay_ms.load(Ordering::SeqCst);
        if d > 0 {
            tokio::time::sleep(Duration::from_millis(d)).await;
        }
        let dnssec_ok = req.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok);
        if dnssec_ok {
            self.do_queries.fetch_add(1, Ordering::SeqCst);
        }
        let q = req.queries.first()?.clone();
        let mut resp = Message::new(req.metadata.id, MessageType::Response, OpCode::Query);
        resp.metadata.authoritative = true;
        resp.metadata.recursion_desired = req.metadata.recursion_desired;
        resp.add_query(q.clone());
        let qn = q.name().to_lowercase();
        let (rcode, answers, exists) = {
            let m = self.records.lock().unwrap_or_else(|p| p.into_inner());
            let mut answers = m
                .get(&(qn.clone(), q.query_type()))
                .cloned()
                .unwrap_or_default();
            if dnssec_ok && !answers.is_empty() && q.query_type() != RecordType::RRSIG {
                answers.extend(
                    m.get(&(qn.clone(), RecordType::RRSIG))
                        .cloned()
                        .unwrap_or_default(),
                );
            }
            let exists = m.keys().any(|(n, _)| *n == qn);
            (
                if exists {
                    ResponseCode::NoError
                } else {
                    ResponseCode::NXDomain
                },
                answers,
                exists,
            )
        };
        resp.metadata.response_code = rcode;
        if answers.is_empty() {
            let zone = name("test.");
            let soa = SOA::new(
                name("ns.test."),
                name("hostmaster.test."),
                1,
                3600,
                600,
                86400,
                60,
            );
            resp.add_authority(Record::from_rdata(zone.clone(), 300, RData::SOA(soa)));
            if dnssec_ok {
                let m = self.records.lock().unwrap_or_else(|p| p.into_inner());
                for r in m
                    .get(&(zone, RecordType::NSEC))
                    .cloned()
                    .unwrap_or_default()
                {
                    resp.add_authority(r);
                }
            }
        }
        let _ = exists;
        resp.add_answers(answers);
        let max = match &req.edns {
            Some(e) => {
                let mut edns = Edns::new();
                edns.set_max_payload(1232);
                edns.set_dnssec_ok(dnssec_ok);
                resp.set_edns(edns);
                usize::from(e.max_payload().max(512))
            }
            None => 512,
        };
        let wire = resp.to_vec().ok()?;
        if udp && wire.len() > max {
            return resp.truncate().to_vec().ok();
        }
        Some(wire)
    }
}

/// A berth resolver on 127.0.0.1:0, stopped on drop.
pub struct Berth {
    pub addr: SocketAddr,
    pub svc: dns::Service,
    pub zone: dns::LocalZone,
    shutdown: CancellationToken,
}

impl Drop for Berth {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A config for tests: the given upstreams, loopback clients allowed, no rate limit, short
/// timeouts.
pub fn test_config(upstreams: &[SocketAddr]) -> dns::Config {
    dns::Config {
        listen: vec!["127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}"))],
        upstreams: upstreams.to_vec(),
        allow_from: vec!["127.0.0.0/8".parse().unwrap_or_else(|e| panic!("{e}"))],
        rate_limit_qps: 0,
        upstream_timeout_ms: 700,
        query_timeout_ms: 1500,
        stale_wait_ms: 500,
        ..dns::Config::default()
    }
}

impl Berth {
    /// Starts a resolver with `cfg` (its `listen` is ignored: 127.0.0.1:0) and the tenant subnet
    /// 172.19.2.0/24 plus `fd19::/64`.
    pub async fn start(cfg: dns::Config) -> Berth {
        let zone = dns::LocalZone::new();
        let nets = ["172.19.2.0/24".parse().unwrap_or_else(|e| panic!("{e}"))];
        let svc = dns::Service::new(&cfg, &nets, zone.clone())
            .unwrap_or_else(|e| panic!("start berth dns: {e}"));
        let l = dns::bind("127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = l.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let shutdown = CancellationToken::new();
        let s = svc.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = s.serve(vec![l], stop).await {
                eprintln!("berth dns stopped: {e}");
            }
        });
        Berth {
            addr,
            svc,
            zone,
            shutdown,
        }
    }

    pub fn metrics_text(&self) -> String {
        let mut s = String::new();
        self.svc.render_metrics(&mut s);
        s
    }

    /// The value of one metric line (`name{labels}` exactly as rendered).
    pub fn metric(&self, key: &str) -> f64 {
        self.metrics_text()
            .lines()
            .find_map(|l| {
                l.strip_prefix(key)
                    .and_then(|r| r.strip_prefix(' '))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or_else(|| panic!("metric {key} not found"))
    }
}

/// One parsed `dig` answer.
#[derive(Debug, Clone)]
pub struct DigResult {
    pub status: String,
    pub flags: Vec<String>,
    /// (name, ttl, type, data)
    pub answers: Vec<(String, u32, String, String)>,
    pub raw: String,
}

impl DigResult {
    pub fn data(&self) -> Vec<String> {
        self.answers.iter().map(|a| a.3.clone()).collect()
    }
    pub fn has_flag(&self, f: &str) -> bool {
        self.flags.iter().any(|x| x == f)
    }
}

/// Runs real `dig` against `server` (one try, 5 s timeout) and parses its output.
pub async fn dig(server: SocketAddr, args: &[&str]) -> DigResult {
    let mut cmd = Command::new("dig");
    cmd.arg(format!("@{}", server.ip()))
        .arg("-p")
        .arg(server.port().to_string())
        .args(["+tries=1", "+time=5", "+nocookie"])
        .args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap_or_else(|e| panic!("dig task: {e}"))
        .unwrap_or_else(|e| panic!("cannot run dig (apt-get install bind9-dnsutils): {e}"));
    let raw = String::from_utf8_lossy(&out.stdout).to_string();
    parse_dig(&raw)
}

pub fn parse_dig(raw: &str) -> DigResult {
    let mut status = String::new();
    let mut flags = Vec::new();
    let mut answers = Vec::new();
    let mut in_answer = false;
    for line in raw.lines() {
        if let Some(i) = line.find("status: ") {
            status = line[i + 8..]
                .split(',')
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
        }
        if let Some(rest) = line.strip_prefix(";; flags: ") {
            flags = rest
                .split(';')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .map(str::to_string)
                .collect();
        }
        if line.starts_with(";; ANSWER SECTION") {
            in_answer = true;
            continue;
        }
        if in_answer {
            if line.trim().is_empty() || line.starts_with(";;") {
                in_answer = false;
                continue;
            }
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() >= 5 {
                answers.push((
                    f[0].to_string(),
                    f[1].parse().unwrap_or(0),
                    f[3].to_string(),
                    f[4..].join(" "),
                ));
            }
        }
    }
    DigResult {
        status,
        flags,
        answers,
        raw: raw.to_string(),
    }
}

/// A hickory client over UDP to `server`.
pub async fn hickory_client(
    server: SocketAddr,
) -> hickory_server::net::client::Client<hickory_server::net::runtime::TokioRuntimeProvider> {
    use hickory_server::net::client::Client;
    use hickory_server::net::runtime::TokioRuntimeProvider;
    use hickory_server::net::udp::UdpClientStream;
    let conn = UdpClientStream::builder(server, TokioRuntimeProvider::default())
        .with_timeout(Some(Duration::from_secs(5)))
        .build();
    let (client, bg) = Client::<TokioRuntimeProvider>::from_sender(conn);
    tokio::spawn(bg);
    client
}
