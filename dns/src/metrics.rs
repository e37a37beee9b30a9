//! Resolver counters and their Prometheus text rendering.
//!
//! Plain atomics (no registry crate): the hot path pays one relaxed add per counter. No client
//! addresses or names ever become labels.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hickory_proto::rr::RecordType;

#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upstream latency buckets, seconds.
const BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
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

#[derive(Debug, Default)]
pub struct Metrics {
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
    pub blocklist_entries: AtomicU64,
    pub cache_entries: AtomicU64,
    pub cache_evictions: AtomicU64,
    pub cache_bytes: AtomicU64,
    pub cache_oversized: AtomicU64,
    pub ratelimit_evictions: AtomicU64,
}

impl Metrics {
    pub fn query(&self, t: RecordType) {
        let i = TYPES
            .iter()
            .position(|(x, _)| *x == t)
            .unwrap_or(TYPES.len());
        self.by_type[i].inc();
    }

    pub fn outcome(&self, o: Outcome) {
        if let Some(i) = OUTCOMES.iter().position(|(x, _)| *x == o) {
            self.by_outcome[i].inc();
        }
    }

    pub fn outcome_count(&self, o: Outcome) -> u64 {
        OUTCOMES
            .iter()
            .position(|(x, _)| *x == o)
            .map_or(0, |i| self.by_outcome[i].get())
    }

    /// Appends the Prometheus text exposition.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP berth_dns_queries_total DNS queries received, by query type."
        );
        let _ = writeln!(out, "# TYPE berth_dns_queries_total counter");
        for (i, (_, name)) in TYPES.iter().enumerate() {
            let _ = writeln!(
                out,
                "berth_dns_queries_total{{type=\"{name}\"}} {}",
                self.by_type[i].get()
            );
        }
        let _ = writeln!(
            out,
            "berth_dns_queries_total{{type=\"other\"}} {}",
            self.by_type[TYPES.len()].get()
        );
        let _ = writeln!(
            out,
            "# HELP berth_dns_responses_total DNS responses, by outcome."
        );
        let _ = writeln!(out, "# TYPE berth_dns_responses_total counter");
        for (i, (_, name)) in OUTCOMES.iter().enumerate() {
            let _ = writeln!(
                out,
                "berth_dns_responses_total{{outcome=\"{name}\"}} {}",
                self.by_outcome[i].get()
            );
        }
        let counters: [(&str, &str, u64); 10] = [
            (
                "berth_dns_cache_hits_total",
                "Answers served fresh from the cache.",
                self.cache_hits.get(),
            ),
            (
                "berth_dns_cache_misses_total",
                "Forwardable queries not in the cache.",
                self.cache_misses.get(),
            ),
            (
                "berth_dns_cache_stale_total",
                "Expired entries served because no upstream answered.",
                self.cache_stale.get(),
            ),
            (
                "berth_dns_inflight_merged_total",
                "Queries that joined an identical in-flight upstream query.",
                self.inflight_merged.get(),
            ),
            (
                "berth_dns_inflight_rejected_total",
                "Queries refused by the global in-flight cap.",
                self.inflight_rejected.get(),
            ),
            (
                "berth_dns_rebind_stripped_total",
                "Private addresses removed from upstream answers.",
                self.rebind_stripped.get(),
            ),
            (
                "berth_dns_upstream_queries_total",
                "Attempts sent to upstreams.",
                self.upstream_queries.get(),
            ),
            (
                "berth_dns_upstream_errors_total",
                "Upstream attempts that failed or answered SERVFAIL/REFUSED.",
                self.upstream_errors.get(),
            ),
            (
                "berth_dns_upstream_timeouts_total",
                "Upstream attempts that timed out.",
                self.upstream_timeouts.get(),
            ),
            (
                "berth_dns_blocklist_reloads_total",
                "Blocklist (re)loads.",
                self.blocklist_reloads.get(),
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        let gauges = [
            (
                "berth_dns_cache_entries",
                "Entries in the cache.",
                self.cache_entries.load(Ordering::Relaxed),
            ),
            (
                "berth_dns_cache_evictions",
                "Entries evicted to make room (cumulative).",
                self.cache_evictions.load(Ordering::Relaxed),
            ),
            (
                "berth_dns_cache_bytes",
                "Estimated bytes held by the cache (bounded by dns.cache_max_bytes).",
                self.cache_bytes.load(Ordering::Relaxed),
            ),
            (
                "berth_dns_cache_oversized",
                "Answers not cached for exceeding dns.cache_max_entry_bytes (cumulative).",
                self.cache_oversized.load(Ordering::Relaxed),
            ),
            (
                "berth_dns_ratelimit_evictions",
                "Clients dropped from the full rate-limit table, least recently seen first (cumulative).",
                self.ratelimit_evictions.load(Ordering::Relaxed),
            ),
            (
                "berth_dns_blocklist_entries",
                "Domains in the blocklist.",
                self.blocklist_entries.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        let h = &self.upstream_latency;
        let name = "berth_dns_upstream_latency_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Latency of answered upstream attempts.\n# TYPE {name} histogram"
        );
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{b}\"}} {}",
                h.buckets[i].load(Ordering::Relaxed)
            );
        }
        let count = h.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            h.sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {count}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters() {
        let m = Metrics::default();
        m.query(RecordType::A);
        m.query(RecordType::CAA);
        m.outcome(Outcome::CacheHit);
        m.upstream_latency.observe(Duration::from_millis(3));
        let mut s = String::new();
        m.render(&mut s);
        assert!(s.contains("berth_dns_queries_total{type=\"A\"} 1"));
        assert!(s.contains("berth_dns_queries_total{type=\"other\"} 1"));
        assert!(s.contains("berth_dns_responses_total{outcome=\"cache_hit\"} 1"));
        assert!(s.contains("berth_dns_upstream_latency_seconds_bucket{le=\"0.005\"} 1"));
        assert!(s.contains("berth_dns_upstream_latency_seconds_bucket{le=\"0.0025\"} 0"));
    }
}
