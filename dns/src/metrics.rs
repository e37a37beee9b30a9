//! Resolver metrics on a Prometheus recorder of their own (`metrics-exporter-prometheus`), and
//! their text rendering (format 0.0.4).
//!
//! One recorder per [`Metrics`], i.e. per resolver, never the `metrics` crate's global one:
//! `berth run all` hosts the gateway (its own recorder) and a resolver in one process, tests run
//! many resolvers in one process, and each renders only its own numbers. So the
//! `metrics::counter!` macros (a no-op without a global recorder) are not used: every handle is
//! registered once, in [`Metrics::new`], and kept in a field. The hot path pays a lock-free
//! atomic update per counter, no key lookup; label sets registered up front print zeros from the
//! start. No client addresses or names ever become labels.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ::metrics::{Key, KeyName, Label, Level, Metadata, Recorder as _, SharedString};
use hickory_proto::rr::RecordType;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

/// Upstream latency buckets, seconds.
const BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

/// The recorder buffers a histogram's samples until its upkeep folds them into the buckets (a
/// render does too). Nothing guarantees a scrape, so every this-many-th observation runs the
/// upkeep itself: memory stays bounded with no background task, at a few short locks per
/// thousand observations.
const SETTLE_EVERY: u32 = 1024;

/// A monotonically increasing count.
#[derive(Debug)]
pub struct Counter {
    handle: ::metrics::Counter,
    page: PrometheusHandle,
    series: String,
}

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.handle.increment(n);
    }
    /// The value as rendered: for tests and inspection, not the hot path (it renders the page).
    pub fn get(&self) -> u64 {
        sample(&self.page.render(), &self.series).map_or(0, |v| v as u64)
    }
}

/// A value set from elsewhere (the cache's sizes, at render time).
#[derive(Debug)]
pub struct Gauge(::metrics::Gauge);

impl Gauge {
    pub fn set(&self, v: u64) {
        self.0.set(v as f64);
    }
}

/// A latency histogram over the upstream latency buckets.
#[derive(Debug)]
pub struct Histogram {
    handle: ::metrics::Histogram,
    page: PrometheusHandle,
    unsettled: AtomicU32,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        self.handle.record(d.as_secs_f64());
        if self.unsettled.fetch_add(1, Ordering::Relaxed) % SETTLE_EVERY == SETTLE_EVERY - 1 {
            self.page.run_upkeep();
        }
    }
}

/// The value of `series` (`name` or `name{label="value"}`, as rendered) in a rendered page.
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Required by the `Recorder` trait; the Prometheus recorder ignores it.
const META: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// Registers handles on one recorder, describing each name once (its `# HELP` line).
struct Registrar {
    recorder: PrometheusRecorder,
    page: PrometheusHandle,
}

impl Registrar {
    fn new() -> Self {
        let recorder = match PrometheusBuilder::new().set_buckets(&BUCKETS) {
            Ok(b) => b.build_recorder(),
            // set_buckets only refuses an empty list; BUCKETS is a non-empty constant.
            Err(e) => unreachable!("latency buckets: {e}"),
        };
        let page = recorder.handle();
        Self { recorder, page }
    }

    fn counter(&self, name: &'static str, help: &'static str) -> Counter {
        self.labelled_counter(name, help, None)
    }

    fn labelled_counter(
        &self,
        name: &'static str,
        help: &'static str,
        label: Option<(&'static str, &'static str)>,
    ) -> Counter {
        self.recorder.describe_counter(
            KeyName::from_const_str(name),
            None,
            SharedString::const_str(help),
        );
        let (key, series) = match label {
            Some((k, v)) => (
                Key::from_parts(name, vec![Label::from_static_parts(k, v)]),
                format!("{name}{{{k}=\"{v}\"}}"),
            ),
            None => (Key::from_static_name(name), name.to_owned()),
        };
        Counter {
            handle: self.recorder.register_counter(&key, &META),
            page: self.page.clone(),
            series,
        }
    }

    fn gauge(&self, name: &'static str, help: &'static str) -> Gauge {
        self.recorder.describe_gauge(
            KeyName::from_const_str(name),
            None,
            SharedString::const_str(help),
        );
        Gauge(
            self.recorder
                .register_gauge(&Key::from_static_name(name), &META),
        )
    }

    fn histogram(&self, name: &'static str, help: &'static str) -> Histogram {
        self.recorder.describe_histogram(
            KeyName::from_const_str(name),
            None,
            SharedString::const_str(help),
        );
        Histogram {
            handle: self
                .recorder
                .register_histogram(&Key::from_static_name(name), &META),
            page: self.page.clone(),
            unsettled: AtomicU32::new(0),
        }
    }
}

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
        let r = Registrar::new();
        let queries = |t| {
            r.labelled_counter(
                "berth_dns_queries_total",
                "DNS queries received, by query type.",
                Some(("type", t)),
            )
        };
        Self {
            by_type: std::array::from_fn(|i| queries(TYPES.get(i).map_or("other", |(_, n)| *n))),
            by_outcome: OUTCOMES.map(|(_, o)| {
                r.labelled_counter(
                    "berth_dns_responses_total",
                    "DNS responses, by outcome.",
                    Some(("outcome", o)),
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
            page: r.page,
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
        assert_eq!(s.matches("# TYPE ").count(), 19, "{s}");
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
