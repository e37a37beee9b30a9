//! The request handler: ties policy, local zone, cache and upstreams together for each query.
//!
//! Two ways in. [`Resolver::answer_fast`] is the UDP fast path: a plain A/AAAA query for a
//! tenant name (`server<N>.<domain>`) is answered from the worker's copy of the zone, and a
//! plain query whose answer is cached and fresh from the pre-encoded bytes (`wire`), nothing
//! else. Everything else takes the general path, [`Handler`], with hickory's types: hickory
//! parses the request and encodes the response (FORMERR for undecodable packets, truncation to
//! the client's payload size, TCP framing); this module decides what to answer. Both paths
//! apply the same client allowlist; the rate limit is spent by what reaches the general path
//! (on UDP the worker asks [`Resolver::admit`] for every query it does not answer from memory,
//! so a limited client's datagrams never become tasks; over TCP every query spends a token).
//! The fast path may skip the rest of the policy because tenant names are decided before
//! anything else, only answers the policy chose to forward are ever cached, and the cache is
//! emptied whenever the policy's inputs change (blocklist reload); PTR queries, whose answer
//! depends on the live local zone, always take the general path. Identical upstream queries
//! are merged into one *flight* — a spawned task, so a refresh
//! started for a stale entry keeps running after the client got its stale answer — and the number
//! of flights is capped globally.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use hickory_proto::op::{Edns, Header, HeaderCounts, Metadata, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, PTR, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use ipnet::IpNet;
use tokio::sync::Semaphore;

use crate::DnsError;
use crate::cache::{Answer, Cache, Encoded, Key, Lookup, TtlPolicy};
use crate::config::{BlocklistMode, Config};
use crate::metrics::{Metrics, Outcome};
use crate::policy::{self, Blocklist, Decision, LocalAnswer};
use crate::ratelimit::RateLimiter;
use crate::upstream::{UpstreamError, Upstreams};
use crate::wire::{self, EDNS_PAYLOAD, MAX_KEY, QueryView};
use crate::zone::{LocalZone, ZoneView};

type FlightResult = Result<Arc<Answer>, UpstreamError>;

/// Record types a DO=0 client must not get unless it asked for them (RFC 4035 §3.2.1).
const DNSSEC_TYPES: [RecordType; 3] = [RecordType::RRSIG, RecordType::NSEC, RecordType::NSEC3];
type Flight = Shared<BoxFuture<'static, FlightResult>>;

/// Settings derived once from the config.
#[derive(Debug)]
struct Settings {
    allowed: Vec<IpNet>,
    domain: Name,
    /// `domain` in wire form (lower-case), for the fast path's name match.
    domain_wire: Vec<u8>,
    local_ttl: u32,
    blocklist_mode: BlocklistMode,
    domain_needed: bool,
    bogus_priv: bool,
    rebind_protection: bool,
    rebind_allowlist: Vec<Name>,
    stale_enabled: bool,
    stale_answer_ttl: u32,
    stale_wait: Duration,
    query_timeout: Duration,
    query_log: bool,
}

/// Shared resolver state; [`Handler`] is the hickory-facing wrapper.
#[derive(Debug)]
pub struct Resolver {
    s: Settings,
    zone: LocalZone,
    blocklist: RwLock<Arc<Blocklist>>,
    cache: Cache,
    ttl: TtlPolicy,
    upstreams: Upstreams,
    flights: Mutex<HashMap<Key, Flight>>,
    inflight: Arc<Semaphore>,
    ratelimit: RateLimiter,
    metrics: Arc<Metrics>,
    soa: Record,
}

/// Answers a UDP worker gave from memory but has not counted yet (their query types): a
/// worker counts a whole batch at once, so the shared counters' cache lines move between cores
/// once per batch rather than once per query.
#[derive(Debug, Default)]
pub struct HitTally {
    hits: Vec<u16>,
    local: Vec<u16>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Handler")
    }
}

impl Resolver {
    /// `allowed` = the tenant subnet(s); `cfg.allow_from` is added to it. `upstreams` overrides
    /// `cfg.upstreams` (the caller resolved `resolv_file`).
    pub fn new(
        cfg: &Config,
        allowed: &[IpNet],
        upstreams: Vec<std::net::SocketAddr>,
        zone: LocalZone,
    ) -> Result<Arc<Self>, DnsError> {
        cfg.validate().map_err(DnsError::Config)?;
        let domain = Name::from_ascii(&cfg.domain)
            .map_err(|e| DnsError::Config(format!("dns.domain {:?}: {e}", cfg.domain)))?
            .to_lowercase();
        let mut domain = domain;
        domain.set_fqdn(true);
        let mut rebind_allowlist = Vec::new();
        for d in &cfg.rebind_allowlist {
            let mut n = Name::from_ascii(d)
                .map_err(|e| DnsError::Config(format!("dns.rebind_allowlist {d:?}: {e}")))?
                .to_lowercase();
            n.set_fqdn(true);
            rebind_allowlist.push(n);
        }
        let hostmaster = Name::from_ascii("hostmaster")
            .and_then(|h| h.append_domain(&domain))
            .map_err(|e| DnsError::Config(format!("dns.domain {:?}: {e}", cfg.domain)))?;
        // Negative TTL 0 (record TTL 0, MINIMUM 0): no client caches "no such server", so a new
        // server resolves at once.
        let soa = Record::from_rdata(
            domain.clone(),
            0,
            RData::SOA(SOA::new(
                domain.clone(),
                hostmaster,
                1,
                3600,
                600,
                86_400,
                0,
            )),
        );
        let mut allowed_nets = allowed.to_vec();
        allowed_nets.extend(cfg.allow_from.iter().copied());
        Ok(Arc::new(Self {
            s: Settings {
                allowed: allowed_nets,
                domain_wire: wire::name_bytes(&domain),
                domain,
                local_ttl: cfg.local_ttl,
                blocklist_mode: cfg.blocklist_mode,
                domain_needed: cfg.domain_needed,
                bogus_priv: cfg.bogus_priv,
                rebind_protection: cfg.rebind_protection,
                rebind_allowlist,
                stale_enabled: cfg.stale_max_secs > 0,
                stale_answer_ttl: cfg.stale_answer_ttl,
                stale_wait: Duration::from_millis(cfg.stale_wait_ms),
                query_timeout: Duration::from_millis(cfg.query_timeout_ms),
                query_log: cfg.query_log,
            },
            zone,
            blocklist: RwLock::new(Arc::new(Blocklist::default())),
            cache: Cache::new(
                cfg.cache_size,
                Duration::from_secs(u64::from(cfg.stale_max_secs)),
            )
            .with_byte_limits(cfg.cache_max_bytes, cfg.cache_max_entry_bytes),
            ttl: TtlPolicy {
                min_ttl: cfg.min_ttl,
                max_ttl: cfg.max_ttl,
                negative_max: cfg.negative_ttl_max,
            },
            upstreams: Upstreams::new(upstreams, Duration::from_millis(cfg.upstream_timeout_ms)),
            flights: Mutex::new(HashMap::new()),
            inflight: Arc::new(Semaphore::new(cfg.max_inflight)),
            ratelimit: RateLimiter::new(cfg.rate_limit_qps, cfg.rate_limit_burst),
            metrics: Arc::new(Metrics::default()),
            soa,
        }))
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    pub fn zone(&self) -> &LocalZone {
        &self.zone
    }

    /// Swaps in a new blocklist.
    pub fn set_blocklist(&self, b: Blocklist) {
        self.metrics.blocklist_entries.set(b.len() as u64);
        self.metrics.blocklist_reloads.inc();
        let b = Arc::new(b);
        match self.blocklist.write() {
            Ok(mut g) => *g = b,
            Err(p) => *p.into_inner() = b,
        }
        // Cached answers were decided against the old list (and the fast path does not consult
        // it): a name blocked now must not be served from the cache.
        self.cache.clear();
    }

    /// The UDP fast path: when `q` (from `src`) asks for a tenant name's addresses or has a
    /// fresh cached answer, writes the response into `out`, notes it in `tally` and returns
    /// true. False means "take the general path" (a miss, a stale entry, a PTR query, a local
    /// name without an address of the asked type, a client outside the allowed networks, query
    /// logging on): nothing was sent or counted.
    ///
    /// Neither answer spends a rate-limit token: both come from memory at about the cost of
    /// receiving the datagram, which a REFUSED would cost too; the limit guards what is
    /// expensive — the general path and the upstreams — and the caller asks [`Self::admit`]
    /// only for queries this declines. The caller passes `tally` to [`Self::count_hits`]
    /// before it sends the responses, so a client that got an answer also sees it counted.
    ///
    /// Local names are matched first, as [`policy::decide`] does: every name under the local
    /// domain is answered from the zone, never from the cache or upstream.
    pub fn answer_fast(
        &self,
        src: IpAddr,
        q: &QueryView<'_>,
        now: Instant,
        zone: &mut ZoneView,
        out: &mut Vec<u8>,
        tally: &mut HitTally,
    ) -> bool {
        if self.s.query_log {
            return false;
        }
        let canon = src.to_canonical();
        if !self.s.allowed.iter().any(|n| n.contains(&canon)) {
            return false;
        }
        if let Some(label) = wire::single_label_under(q.qname, &self.s.domain_wire) {
            if q.qclass != u16::from(DNSClass::IN) {
                return false;
            }
            let mut lower = [0u8; 63];
            let lower = &mut lower[..label.len()];
            for (d, s) in lower.iter_mut().zip(label) {
                *d = s.to_ascii_lowercase();
            }
            let Some(id) = std::str::from_utf8(lower).ok().and_then(names::parse_login) else {
                return false;
            };
            let Some(addrs) = zone.current(&self.zone).addrs(id) else {
                return false;
            };
            if !wire::write_addrs(q, addrs, self.s.local_ttl, out) {
                return false;
            }
            tally.local.push(q.qtype);
            return true;
        }
        if q.qtype == u16::from(RecordType::PTR) {
            return false;
        }
        let mut key = [0u8; MAX_KEY];
        let n = q.key(&mut key);
        let hit = self.cache.with_fresh(&key[..n], now, |e, elapsed| {
            e.write_response(q, elapsed, out)
        });
        if hit != Some(true) {
            return false;
        }
        tally.hits.push(q.qtype);
        true
    }

    /// Adds the answers in `tally` to the metrics and empties it.
    pub fn count_hits(&self, tally: &mut HitTally) {
        let hits = tally.hits.len() as u64;
        let local = tally.local.len() as u64;
        if hits + local == 0 {
            return;
        }
        if hits > 0 {
            self.metrics.cache_hits.add(hits);
            self.metrics.outcomes(Outcome::CacheHit, hits);
        }
        if local > 0 {
            self.metrics.outcomes(Outcome::Local, local);
        }
        for types in [&mut tally.hits, &mut tally.local] {
            // Runs of one type (the common case) are counted with one add.
            types.sort_unstable();
            for run in types.chunk_by(|a, b| a == b) {
                self.metrics
                    .queries(RecordType::from(run[0]), run.len() as u64);
            }
            types.clear();
        }
    }

    fn blocklist(&self) -> Arc<Blocklist> {
        match self.blocklist.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Refreshes the cache gauges (called by the metrics renderer).
    pub fn update_gauges(&self) {
        let m = &self.metrics;
        m.cache_entries.set(self.cache.len() as u64);
        m.cache_evictions.set(self.cache.evictions());
        m.cache_bytes.set(self.cache.bytes() as u64);
        m.cache_oversized.set(self.cache.oversized());
        m.ratelimit_evictions.set(self.ratelimit.evictions());
    }

    /// Joins or starts the upstream flight for `key`; `None` when the in-flight cap is reached.
    fn flight(self: &Arc<Self>, key: &Key, query: &Query, dnssec_ok: bool) -> Option<Flight> {
        let mut map = lock(&self.flights);
        if let Some(f) = map.get(key) {
            self.metrics.inflight_merged.inc();
            return Some(f.clone());
        }
        let Ok(permit) = self.inflight.clone().try_acquire_owned() else {
            self.metrics.inflight_rejected.inc();
            return None;
        };
        let this = self.clone();
        let k = key.clone();
        let q = query.clone();
        let generation = self.cache.generation();
        let handle = tokio::spawn(async move {
            let res = tokio::time::timeout(
                this.s.query_timeout,
                this.upstreams.resolve(&q, dnssec_ok, &this.metrics),
            )
            .await;
            let out = match res {
                Ok(Ok(msg)) => Ok(this.absorb(&k, &q, dnssec_ok, msg, generation)),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(UpstreamError::AllFailed),
            };
            lock(&this.flights).remove(&k);
            drop(permit);
            out
        });
        let f = async move { handle.await.unwrap_or(Err(UpstreamError::AllFailed)) }
            .boxed()
            .shared();
        map.insert(key.clone(), f.clone());
        Some(f)
    }

    /// Filters an upstream answer, caches it when allowed, returns what to send. DNSSEC
    /// records stay only for a DO=1 question (or when they are what was asked for).
    fn absorb(
        &self,
        key: &Key,
        q: &Query,
        dnssec_ok: bool,
        msg: hickory_proto::op::Message,
        generation: u64,
    ) -> Arc<Answer> {
        let qtype = q.query_type();
        let keep = |r: &Record| {
            let t = r.record_type();
            !matches!(t, RecordType::OPT | RecordType::TSIG)
                && (dnssec_ok || t == qtype || !DNSSEC_TYPES.contains(&t))
        };
        let mut a = Answer {
            rcode: msg.metadata.response_code,
            answers: msg.answers.into_iter().filter(keep).collect(),
            authorities: msg.authorities.into_iter().filter(keep).collect(),
            additionals: msg.additionals.into_iter().filter(keep).collect(),
        };
        let name = q.name();
        if self.s.rebind_protection {
            let mut n = policy::strip_rebind(&mut a.answers, name, &self.s.rebind_allowlist);
            n += policy::strip_rebind(&mut a.additionals, name, &self.s.rebind_allowlist);
            for _ in 0..n {
                self.metrics.rebind_stripped.inc();
            }
            if n > 0 {
                tracing::debug!(name = %name, stripped = n, "rebind protection stripped private addresses");
            }
        }
        let ttl = self.ttl.apply(&mut a);
        if let Some(ttl) = ttl {
            match Encoded::build(name, qtype, q.query_class(), &a) {
                Some(e) => self
                    .cache
                    .insert(key.clone(), e, ttl, Instant::now(), generation),
                None => tracing::debug!(name = %name, "answer not cacheable: cannot encode it"),
            }
        }
        Arc::new(a)
    }

    fn local_records(
        &self,
        name: &Name,
        qtype: RecordType,
        la: &LocalAnswer,
    ) -> (ResponseCode, Vec<Record>, Vec<Record>) {
        let ttl = self.s.local_ttl;
        match la {
            LocalAnswer::Addrs(addrs) => {
                let recs = addrs
                    .iter()
                    .map(|ip| {
                        let data = match ip {
                            IpAddr::V4(v4) => RData::A(A(*v4)),
                            IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
                        };
                        Record::from_rdata(name.clone(), ttl, data)
                    })
                    .collect();
                (ResponseCode::NoError, recs, vec![])
            }
            LocalAnswer::Ptr(target) => (
                ResponseCode::NoError,
                vec![Record::from_rdata(
                    name.clone(),
                    ttl,
                    RData::PTR(PTR(target.clone())),
                )],
                vec![],
            ),
            LocalAnswer::Soa => (ResponseCode::NoError, vec![self.soa.clone()], vec![]),
            LocalAnswer::NoData => (ResponseCode::NoError, vec![], vec![self.soa.clone()]),
            LocalAnswer::NxDomain => {
                let _ = qtype;
                (ResponseCode::NXDomain, vec![], vec![self.soa.clone()])
            }
        }
    }

    /// Takes a rate-limit token for `src`; false (counted as rate-limited) when its bucket is
    /// empty. The UDP workers ask for every query they do not answer from memory
    /// ([`Self::answer_fast`]) before they spawn anything for it, so a client over its limit
    /// costs a bucket lookup and, at most, a REFUSED written on the worker.
    pub fn admit(&self, src: IpAddr) -> bool {
        self.admit_at(src, Instant::now())
    }

    /// [`Self::admit`] at `now` (a worker reads the clock once per batch).
    pub fn admit_at(&self, src: IpAddr, now: Instant) -> bool {
        if self.ratelimit.enabled() && !self.ratelimit.check(src, now) {
            self.metrics.outcome(Outcome::RateLimited);
            return false;
        }
        true
    }

    pub(crate) async fn handle<R: ResponseHandler>(
        self: &Arc<Self>,
        request: &Request,
        rh: R,
    ) -> ResponseInfo {
        if !self.admit(request.src().ip()) {
            return reply_code(request, rh, ResponseCode::Refused).await;
        }
        self.handle_admitted(request, rh).await
    }

    /// [`Self::handle`] for a request whose client [`Self::admit`] already let through.
    pub(crate) async fn handle_admitted<R: ResponseHandler>(
        self: &Arc<Self>,
        request: &Request,
        rh: R,
    ) -> ResponseInfo {
        let src = request.src().ip();
        let info = match request.request_info() {
            Ok(i) => i,
            Err(_) => {
                self.metrics.outcome(Outcome::FormErr);
                return reply_code(request, rh, ResponseCode::FormErr).await;
            }
        };
        let qtype = info.query.query_type();
        let qclass = info.query.query_class();
        let mut name = Name::from(info.query.name().clone());
        name.set_fqdn(true);
        self.metrics.query(qtype);

        let zone = self.zone.snapshot();
        let blocklist = self.blocklist();
        let state = policy::State {
            allowed: &self.s.allowed,
            domain: &self.s.domain,
            zone: &zone,
            blocklist: &blocklist,
            blocklist_mode: self.s.blocklist_mode,
            domain_needed: self.s.domain_needed,
            bogus_priv: self.s.bogus_priv,
        };
        let q = policy::Query {
            src,
            op_code: request.metadata.op_code,
            name: &name,
            qtype,
            qclass,
        };
        let decision = policy::decide(&q, &state);
        drop(zone);

        let (outcome, info) = match decision {
            Decision::Refuse => (
                Outcome::Refused,
                reply_code(request, rh, ResponseCode::Refused).await,
            ),
            Decision::NotImp => (
                Outcome::Refused,
                reply_code(request, rh, ResponseCode::NotImp).await,
            ),
            Decision::NxDomain(_) => (
                Outcome::Policy,
                reply_code(request, rh, ResponseCode::NXDomain).await,
            ),
            Decision::Blocked(BlocklistMode::Nxdomain) => (
                Outcome::Blocked,
                reply_code(request, rh, ResponseCode::NXDomain).await,
            ),
            Decision::Blocked(BlocklistMode::Sinkhole) => {
                let recs: Vec<Record> = policy::sinkhole(qtype)
                    .map(|ip| {
                        let data = match ip {
                            IpAddr::V4(v4) => RData::A(A(v4)),
                            IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
                        };
                        Record::from_rdata(name.clone(), self.s.local_ttl, data)
                    })
                    .into_iter()
                    .collect();
                (
                    Outcome::Blocked,
                    reply(request, rh, ResponseCode::NoError, false, &recs, &[], &[]).await,
                )
            }
            Decision::Local(la) => {
                let (rcode, ans, auth) = self.local_records(&name, qtype, &la);
                (
                    Outcome::Local,
                    reply(request, rh, rcode, true, &ans, &auth, &[]).await,
                )
            }
            Decision::Forward => {
                let dnssec_ok = request.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok);
                let mut q = Query::query(name.clone(), qtype);
                q.set_query_class(qclass);
                self.forward(request, rh, q, dnssec_ok).await
            }
        };
        self.metrics.outcome(outcome);
        if self.s.query_log {
            tracing::info!(target: "berth::dns::query", peer = %src, name = %name, qtype = %qtype, outcome = ?outcome, rcode = %info.response_code);
        }
        info
    }

    async fn forward<R: ResponseHandler>(
        self: &Arc<Self>,
        request: &Request,
        rh: R,
        query: Query,
        dnssec_ok: bool,
    ) -> (Outcome, ResponseInfo) {
        let key = Key::new(
            query.name(),
            query.query_type(),
            query.query_class(),
            dnssec_ok,
        );
        enum Found {
            Fresh(Answer),
            Stale(Encoded),
            Miss,
        }
        let found = match self.cache.lookup(key.as_bytes(), Instant::now()) {
            // Decoding bytes we encoded from records does not fail; if it did, ask upstream.
            Lookup::Fresh(e, elapsed) => e.answer(elapsed, None).map_or(Found::Miss, Found::Fresh),
            Lookup::Stale(e) => Found::Stale(e),
            Lookup::Miss => Found::Miss,
        };
        match found {
            Found::Fresh(a) => {
                self.metrics.cache_hits.inc();
                (Outcome::CacheHit, reply_answer(request, rh, &a).await)
            }
            Found::Stale(old) => {
                let fresh = match self.flight(&key, &query, dnssec_ok) {
                    Some(f) if self.s.stale_enabled => tokio::time::timeout(self.s.stale_wait, f)
                        .await
                        .ok()
                        .and_then(Result::ok),
                    Some(f) => tokio::time::timeout(self.s.query_timeout, f)
                        .await
                        .ok()
                        .and_then(Result::ok),
                    None => None,
                };
                match fresh {
                    Some(a) => (Outcome::Forwarded, reply_answer(request, rh, &a).await),
                    None if self.s.stale_enabled => {
                        match old.answer(0, Some(self.s.stale_answer_ttl)) {
                            Some(a) => {
                                self.metrics.cache_stale.inc();
                                (Outcome::Stale, reply_answer(request, rh, &a).await)
                            }
                            None => (
                                Outcome::ServFail,
                                reply_code(request, rh, ResponseCode::ServFail).await,
                            ),
                        }
                    }
                    None => (
                        Outcome::ServFail,
                        reply_code(request, rh, ResponseCode::ServFail).await,
                    ),
                }
            }
            Found::Miss => {
                self.metrics.cache_misses.inc();
                let Some(f) = self.flight(&key, &query, dnssec_ok) else {
                    return (
                        Outcome::ServFail,
                        reply_code(request, rh, ResponseCode::ServFail).await,
                    );
                };
                match tokio::time::timeout(self.s.query_timeout, f).await {
                    Ok(Ok(a)) => (Outcome::Forwarded, reply_answer(request, rh, &a).await),
                    _ => (
                        Outcome::ServFail,
                        reply_code(request, rh, ResponseCode::ServFail).await,
                    ),
                }
            }
        }
    }
}

/// The hickory `RequestHandler`.
#[derive(Clone)]
pub struct Handler(pub Arc<Resolver>);

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        self.0.handle(request, response_handle).await
    }
}

/// EDNS for the response: present when the client used EDNS; its payload (which also bounds
/// the UDP response size hickory encodes) is the client's, capped at ours.
fn response_edns(request: &Request) -> Option<Edns> {
    request.edns.as_ref().map(|req| {
        let mut e = Edns::new();
        e.set_max_payload(request.max_payload().clamp(512, EDNS_PAYLOAD));
        // RFC 3225: the DO bit is copied into the response.
        e.set_dnssec_ok(req.flags().dnssec_ok);
        e
    })
}

fn failed(request: &Request, code: ResponseCode) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = code;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}

async fn reply_code<R: ResponseHandler>(
    request: &Request,
    rh: R,
    code: ResponseCode,
) -> ResponseInfo {
    reply(request, rh, code, false, &[], &[], &[]).await
}

async fn reply_answer<R: ResponseHandler>(request: &Request, rh: R, a: &Answer) -> ResponseInfo {
    reply(
        request,
        rh,
        a.rcode,
        false,
        &a.answers,
        &a.authorities,
        &a.additionals,
    )
    .await
}

async fn reply<R: ResponseHandler>(
    request: &Request,
    mut rh: R,
    code: ResponseCode,
    authoritative: bool,
    answers: &[Record],
    authorities: &[Record],
    additionals: &[Record],
) -> ResponseInfo {
    let edns = response_edns(request);
    let mut builder = MessageResponseBuilder::from_message_request(request);
    if let Some(e) = &edns {
        builder.edns(e);
    }
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = code;
    metadata.recursion_available = true;
    metadata.authoritative = authoritative;
    let resp = builder.build(
        metadata,
        answers.iter(),
        authorities.iter(),
        std::iter::empty(),
        additionals.iter(),
    );
    match rh.send_response(resp).await {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!(error = %e, peer = %request.src(), "could not send a dns response");
            failed(request, ResponseCode::ServFail)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use hickory_proto::op::{Message, MessageType, OpCode};
    use hickory_proto::rr::DNSClass;

    use super::*;
    use crate::wire::parse_query;

    const CLIENT: &str = "172.19.2.50";

    fn resolver(cfg: Config) -> (Arc<Resolver>, LocalZone) {
        let zone = LocalZone::new();
        let nets = ["172.19.2.0/24".parse().unwrap()];
        let up = vec!["127.0.0.1:9".parse().unwrap()];
        (Resolver::new(&cfg, &nets, up, zone.clone()).unwrap(), zone)
    }

    fn sid(n: u32) -> names::ServerId {
        names::ServerId::new(n).unwrap()
    }

    fn query(name: &str, qtype: RecordType, id: u16, edns: Option<(u16, bool)>) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        if let Some((payload, dnssec_ok)) = edns {
            let mut e = Edns::new();
            e.set_max_payload(payload);
            e.set_dnssec_ok(dnssec_ok);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    /// The fast path's answer to `raw` from `src`, decoded; `None` when it declined.
    fn fast(r: &Resolver, view: &mut ZoneView, src: &str, raw: &[u8]) -> Option<Message> {
        let q = parse_query(raw).unwrap();
        let mut out = Vec::new();
        let mut tally = HitTally::default();
        let ok = r.answer_fast(
            src.parse().unwrap(),
            &q,
            Instant::now(),
            view,
            &mut out,
            &mut tally,
        );
        r.count_hits(&mut tally);
        ok.then(|| Message::from_vec(&out).unwrap())
    }

    #[test]
    fn tenant_names_answered_on_the_worker_in_any_case_with_edns_echoed() {
        let (r, zone) = resolver(Config::default());
        let v4: IpAddr = "172.19.2.15".parse().unwrap();
        let v6: IpAddr = "fd00::15".parse().unwrap();
        zone.replace_addrs(BTreeMap::from([(sid(5), vec![v4, v6])]));
        let mut view = ZoneView::new(&r.zone);
        for edns in [None, Some((4096, true)), Some((1232, false))] {
            let mut raw = query("SeRvEr5.Berth.INTERNAL.", RecordType::A, 0xbeef, edns);
            raw[3] |= 0x10; // CD
            let m = fast(&r, &mut view, CLIENT, &raw).expect("answered on the worker");
            assert_eq!(m.metadata.id, 0xbeef);
            assert_eq!(m.metadata.message_type, MessageType::Response);
            assert_eq!(m.metadata.response_code, ResponseCode::NoError);
            assert!(m.metadata.authoritative, "the local zone is ours");
            assert!(m.metadata.recursion_desired && m.metadata.recursion_available);
            assert!(m.metadata.checking_disabled && !m.metadata.truncation);
            assert_eq!(m.queries.len(), 1);
            assert_eq!(m.queries[0].name().to_ascii(), "SeRvEr5.Berth.INTERNAL.");
            assert_eq!(m.queries[0].query_type(), RecordType::A);
            assert_eq!(m.answers.len(), 1, "only the asked family");
            assert_eq!(m.answers[0].data, RData::A(A::new(172, 19, 2, 15)));
            assert_eq!(m.answers[0].ttl, Config::default().local_ttl);
            assert!(m.answers[0].name.eq_case(m.queries[0].name()));
            assert!(m.authorities.is_empty() && m.additionals.is_empty());
            assert_eq!(m.edns.is_some(), edns.is_some(), "{edns:?}");
            if let (Some(e), Some((_, dnssec_ok))) = (m.edns.as_ref(), edns) {
                assert_eq!(e.flags().dnssec_ok, dnssec_ok);
                assert_eq!(e.max_payload(), EDNS_PAYLOAD);
            }
        }
        let raw = query("server5.berth.internal.", RecordType::AAAA, 7, None);
        let m = fast(&r, &mut view, CLIENT, &raw).unwrap();
        assert_eq!(m.answers.len(), 1);
        assert_eq!(
            m.answers[0].data,
            RData::AAAA(AAAA("fd00::15".parse().unwrap()))
        );
        assert_eq!(
            r.metrics.outcome_count(Outcome::Local),
            4,
            "each answer counted"
        );
    }

    #[test]
    fn what_the_worker_leaves_to_the_general_path() {
        let (r, zone) = resolver(Config::default());
        zone.replace_addrs(BTreeMap::from([
            (sid(5), vec!["fd00::15".parse().unwrap()]),
            (sid(6), vec!["172.19.2.16".parse().unwrap()]),
        ]));
        let mut view = ZoneView::new(&r.zone);
        let declined = [
            (
                "server5.berth.internal.",
                RecordType::A,
                CLIENT,
                "no address of the family",
            ),
            (
                "server9.berth.internal.",
                RecordType::A,
                CLIENT,
                "no such server",
            ),
            (
                "server06.berth.internal.",
                RecordType::A,
                CLIENT,
                "not a server name",
            ),
            (
                "gateway.berth.internal.",
                RecordType::A,
                CLIENT,
                "not a server name",
            ),
            ("berth.internal.", RecordType::A, CLIENT, "the apex"),
            (
                "x.server6.berth.internal.",
                RecordType::A,
                CLIENT,
                "below a server",
            ),
            ("server6.berth.internal.", RecordType::ANY, CLIENT, "ANY"),
            (
                "server6.berth.internal.",
                RecordType::MX,
                CLIENT,
                "another type",
            ),
            (
                "server6.other.internal.",
                RecordType::A,
                CLIENT,
                "another domain",
            ),
            (
                "server6.berth.internal.",
                RecordType::A,
                "192.0.2.1",
                "not an allowed client",
            ),
            ("uncached.example.", RecordType::A, CLIENT, "a cache miss"),
        ];
        for (name, t, src, why) in declined {
            let raw = query(name, t, 1, None);
            assert!(
                fast(&r, &mut view, src, &raw).is_none(),
                "{name} {t}: {why}"
            );
        }
        // Another class than IN is refused by the general path, never answered here.
        let mut ch = query("server6.berth.internal.", RecordType::A, 1, None);
        let n = ch.len();
        ch[n - 1] = 3;
        assert!(fast(&r, &mut view, CLIENT, &ch).is_none(), "class CH");
        // An answer too large for the client's payload size: the general path truncates it.
        let many: Vec<IpAddr> = (0..40u8).map(|i| IpAddr::from([172, 19, 3, i])).collect();
        zone.set(sid(7), many);
        let raw = query("server7.berth.internal.", RecordType::A, 1, None);
        assert!(
            fast(&r, &mut view, CLIENT, &raw).is_none(),
            "over 512 bytes"
        );
        let raw = query(
            "server7.berth.internal.",
            RecordType::A,
            1,
            Some((1232, false)),
        );
        assert_eq!(fast(&r, &mut view, CLIENT, &raw).unwrap().answers.len(), 40);
        // A removed server stops resolving at the next query.
        let raw = query("server6.berth.internal.", RecordType::A, 1, None);
        assert!(fast(&r, &mut view, CLIENT, &raw).is_some());
        zone.remove(sid(6));
        assert!(fast(&r, &mut view, CLIENT, &raw).is_none(), "removed");
        // Query logging wants every query on the general path, which logs it.
        let (r, zone) = resolver(Config {
            query_log: true,
            ..Config::default()
        });
        zone.replace(BTreeMap::from([(sid(6), "172.19.2.16".parse().unwrap())]));
        let mut view = ZoneView::new(&r.zone);
        assert!(fast(&r, &mut view, CLIENT, &raw).is_none(), "query log");
    }

    /// Answers from memory spend no token; what reaches the general path does.
    #[test]
    fn a_limited_client_still_gets_tenant_names_and_cache_hits() {
        let (r, zone) = resolver(Config {
            rate_limit_qps: 1,
            rate_limit_burst: 1,
            ..Config::default()
        });
        zone.replace(BTreeMap::from([(sid(6), "172.19.2.16".parse().unwrap())]));
        let name = Name::from_ascii("cached.example.").unwrap();
        let a = Answer {
            rcode: ResponseCode::NoError,
            answers: vec![Record::from_rdata(
                name.clone(),
                300,
                RData::A(A::new(192, 0, 2, 1)),
            )],
            authorities: vec![],
            additionals: vec![],
        };
        let key = Key::new(&name, RecordType::A, DNSClass::IN, false);
        let e = Encoded::build(&name, RecordType::A, DNSClass::IN, &a).unwrap();
        r.cache.insert(key, e, 300, Instant::now(), 0);
        let src: IpAddr = CLIENT.parse().unwrap();
        let now = Instant::now();
        assert!(r.admit_at(src, now), "the burst");
        assert!(!r.admit_at(src, now), "then limited");
        let mut view = ZoneView::new(&r.zone);
        for _ in 0..100 {
            let local = query("server6.berth.internal.", RecordType::A, 2, None);
            let hit = query("CACHED.example.", RecordType::A, 3, None);
            let m = fast(&r, &mut view, CLIENT, &local).unwrap();
            assert_eq!(m.answers.len(), 1);
            let m = fast(&r, &mut view, CLIENT, &hit).unwrap();
            assert_eq!(m.answers[0].data, RData::A(A::new(192, 0, 2, 1)));
            assert!(!m.metadata.authoritative, "a cached answer is not ours");
        }
        assert!(!r.admit_at(src, now), "answers from memory took no token");
        assert_eq!(r.metrics.outcome_count(Outcome::RateLimited), 2);
        assert_eq!(r.metrics.outcome_count(Outcome::CacheHit), 100);
    }
}
