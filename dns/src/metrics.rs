//! Resolver metrics on a Prometheus recorder of their own (see the `metrics-page` crate), and
//! their text rendering (format 0.0.4).
//!
//! One recorder per [`Metrics`], i.e. per resolver: tests run many resolvers in one process and
//! each renders only its own numbers. Every handle is registered once, in [`Metrics::new`], and
//! kept in a field. No client addresses or names ever become labels.

use hickory_proto::rr::RecordType;
use metrics_page::{Counter, Gauge, Histogram, PrometheusHandle, Registrar};

/// Upstream latency buckets, seconds.
const BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

/// Query types broken out in `berth_dns_queries_total{type=...}`; the rest are `other`.
const TYPES: [(RecordType, &str); 9] = [
    (RecordType::A, "A"),
    (RecordType::AAAA, "AAAA"),
    (RecordType::PTR, "PTR"),
    (RecordType::CNAME, "CNAME"),
    (RecordType::MX, "MX"),
    (RecordType::TXT, "TXT"),
    (RecordType::SRV, "SRV"),
    (RecordType::HTTPS, "HTTPS"),
    (RecordType::NS, "NS"),
];

/// How a query ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    CacheHit,
    Forwarded,
    Stale,
    Local,
    Blocked,
    Policy,
    Refused,
    RateLimited,
    ServFail,
    FormErr,
}

const OUTCOMES: [(Outcome, &str); 10] = [
    (Outcome::CacheHit, "cache_hit"),
    (Outcome::Forwarded, "forwarded"),
    (Outcome::Stale, "stale"),
    (Outcome::Local, "local"),
    (Outcome::Blocked, "blocked"),
    (Outcome::Policy, "policy_nxdomain"),
    (Outcome::Refused, "refused"),
    (Outcome::RateLimited, "rate_limited"),
    (Outcome::ServFail, "servfail"),
    (Outcome::FormErr, "formerr"),
];

/// One resolver's metrics: the handles its code bumps and the page they render to.
#[derive(Debug)]
pub struct Metrics {
    page: PrometheusHandle,
    by_type: [Counter; TYPES.len() + 1],
    by_outcome: [Counter; OUTCOMES.len()],
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub cache_stale: Counter,
    pub inflight_merged: Counter,
    pub inflight_rejected: Counter,
    pub rebind_stripped: Counter,
    pub udp_tasks: Counter,
    pub upstream_queries: Counter,
    pub upstream_errors: Counter,
    pub upstream_timeouts: Counter,
    pub upstream_latency: Histogram,
    pub blocklist_reloads: Counter,
    pub blocklist_entries: Gauge,
    pub cache_entries: Gauge,
    pub cache_evictions: Gauge,
    pub cache_bytes: Gauge,
    pub cache_oversized: Gauge,
    pub ratelimit_evictions: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh recorder with every metric registered, all at zero.
    pub fn new() -> Self {
        let r = Registrar::new(&BUCKETS);
        let queries = |t| {
            r.labelled_counter(
                "berth_dns_queries_total",
                "DNS queries received, by query type.",
                &[("type", t)],
            )
        };
        Self {
            by_type: std::array::from_fn(|i| queries(TYPES.get(i).map_or("other", |(_, n)| *n))),
            by_outcome: OUTCOMES.map(|(_, o)| {
                r.labelled_counter(
                    "berth_dns_responses_total",
                    "DNS responses, by outcome.",
                    &[("outcome", o)],
                )
            }),
            cache_hits: r.counter(
                "berth_dns_cache_hits_total",
                "Answers served fresh from the cache.",
            ),
            cache_misses: r.counter(
                "berth_dns_cache_misses_total",
                "Forwardable queries not in the cache.",
            ),
            cache_stale: r.counter(
                "berth_dns_cache_stale_total",
                "Expired entries served because no upstream answered.",
            ),
            inflight_merged: r.counter(
                "berth_dns_inflight_merged_total",
                "Queries that joined an identical in-flight upstream query.",
            ),
            inflight_rejected: r.counter(
                "berth_dns_inflight_rejected_total",
                "Queries refused by the global in-flight cap.",
            ),
            rebind_stripped: r.counter(
                "berth_dns_rebind_stripped_total",
                "Private addresses removed from upstream answers.",
            ),
            udp_tasks: r.counter(
                "berth_dns_udp_tasks_total",
                "UDP queries handed to the general path as a task (all but fresh cache hits, \
                 junk and rate-limited clients).",
            ),
            upstream_queries: r.counter(
                "berth_dns_upstream_queries_total",
                "Attempts sent to upstreams.",
            ),
            upstream_errors: r.counter(
                "berth_dns_upstream_errors_total",
                "Upstream attempts that failed or answered SERVFAIL/REFUSED.",
            ),
            upstream_timeouts: r.counter(
                "berth_dns_upstream_timeouts_total",
                "Upstream attempts that timed out.",
            ),
            blocklist_reloads: r.counter(
                "berth_dns_blocklist_reloads_total",
                "Blocklist (re)loads.",
            ),
            cache_entries: r.gauge("berth_dns_cache_entries", "Entries in the cache."),
            cache_evictions: r.gauge(
                "berth_dns_cache_evictions",
                "Entries evicted to make room (cumulative).",
            ),
            cache_bytes: r.gauge(
                "berth_dns_cache_bytes",
                "Estimated bytes held by the cache (bounded by dns.cache_max_bytes).",
            ),
            cache_oversized: r.gauge(
                "berth_dns_cache_oversized",
                "Answers not cached for exceeding dns.cache_max_entry_bytes (cumulative).",
            ),
            ratelimit_evictions: r.gauge(
                "berth_dns_ratelimit_evictions",
                "Clients dropped from the full rate-limit table, least recently seen first (cumulative).",
            ),
            blocklist_entries: r.gauge("berth_dns_blocklist_entries", "Domains in the blocklist."),
            upstream_latency: r.histogram(
                "berth_dns_upstream_latency_seconds",
                "Latency of answered upstream attempts.",
            ),
            page: r.page(),
        }
    }

    pub fn query(&self, t: RecordType) {
        self.queries(t, 1);
    }

    /// Counts `n` queries of type `t` at once (a UDP worker's batch of cache hits).
    pub fn queries(&self, t: RecordType, n: u64) {
        let i = TYPES
            .iter()
            .position(|(x, _)| *x == t)
            .unwrap_or(TYPES.len());
        self.by_type[i].add(n);
    }

    pub fn outcome(&self, o: Outcome) {
        self.outcomes(o, 1);
    }

    /// Counts `n` responses with outcome `o` at once.
    pub fn outcomes(&self, o: Outcome, n: u64) {
        if let Some(i) = OUTCOMES.iter().position(|(x, _)| *x == o) {
            self.by_outcome[i].add(n);
        }
    }

    /// The rendered count for `o` (tests and inspection; renders the page).
    pub fn outcome_count(&self, o: Outcome) -> u64 {
        OUTCOMES
            .iter()
            .position(|(x, _)| *x == o)
            .map_or(0, |i| self.by_outcome[i].get())
    }

    /// Appends the Prometheus text exposition (format 0.0.4). The gauges hold what was last set:
    /// `Resolver::update_gauges` first for current cache sizes.
    pub fn render(&self, out: &mut String) {
        out.push_str(&self.page.render());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn renders_names_help_zeros_and_buckets() {
        let m = Metrics::default();
        m.query(RecordType::A);
        m.query(RecordType::CAA);
        m.queries(RecordType::AAAA, 3);
        m.outcome(Outcome::CacheHit);
        m.cache_bytes.set(4096);
        m.upstream_latency.observe(Duration::from_millis(3));
        m.upstream_latency.observe(Duration::from_secs(2));
        let mut s = String::new();
        m.render(&mut s);
        for line in [
            "# HELP berth_dns_queries_total DNS queries received, by query type.",
            "# TYPE berth_dns_queries_total counter",
            "berth_dns_queries_total{type=\"A\"} 1",
            "berth_dns_queries_total{type=\"AAAA\"} 3",
            "berth_dns_queries_total{type=\"NS\"} 0",
            "berth_dns_queries_total{type=\"other\"} 1",
            "berth_dns_responses_total{outcome=\"cache_hit\"} 1",
            "berth_dns_responses_total{outcome=\"formerr\"} 0",
            "# HELP berth_dns_cache_hits_total Answers served fresh from the cache.",
            "# TYPE berth_dns_cache_hits_total counter",
            "berth_dns_cache_hits_total 0",
            "# TYPE berth_dns_cache_bytes gauge",
            "berth_dns_cache_bytes 4096",
            "berth_dns_blocklist_entries 0",
            "# HELP berth_dns_upstream_latency_seconds Latency of answered upstream attempts.",
            "# TYPE berth_dns_upstream_latency_seconds histogram",
            "berth_dns_upstream_latency_seconds_bucket{le=\"0.0025\"} 0",
            "berth_dns_upstream_latency_seconds_bucket{le=\"0.005\"} 1",
            "berth_dns_upstream_latency_seconds_bucket{le=\"1\"} 1",
            "berth_dns_upstream_latency_seconds_bucket{le=\"+Inf\"} 2",
            "berth_dns_upstream_latency_seconds_sum 2.003",
            "berth_dns_upstream_latency_seconds_count 2",
        ] {
            assert!(s.lines().any(|l| l == line), "missing {line:?} in\n{s}");
        }
        assert_eq!(s.matches("# TYPE ").count(), 20, "{s}");
        assert_eq!(m.outcome_count(Outcome::CacheHit), 1);
        assert_eq!(m.outcome_count(Outcome::Stale), 0);
    }

    #[test]
    fn resolvers_do_not_share_numbers() {
        let (a, b) = (Metrics::default(), Metrics::default());
        a.cache_hits.inc();
        assert_eq!((a.cache_hits.get(), b.cache_hits.get()), (1, 0));
    }
}
