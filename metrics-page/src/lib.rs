//! Prometheus handles on a recorder of the owner's own (`metrics-exporter-prometheus`), and the
//! page they render to (text format 0.0.4). Used by the gateway (one recorder per process) and
//! the resolver (one per resolver).
//!
//! Never the `metrics` crate's global recorder: `berth run all` hosts the gateway and a resolver
//! in one process, tests run many resolvers in one process, and each owner renders only its own
//! numbers. So the `metrics::counter!` macros (a no-op without a global recorder) are not used:
//! every handle is registered once through a [`Registrar`] and kept by its owner. An increment
//! is a lock-free atomic update on a kept handle, no key lookup; label sets registered up front
//! print zeros from the start.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use metrics::{Key, KeyName, Label, Level, Metadata, Recorder as _, SharedString};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};

/// What renders a recorder's page (`render()`).
pub use metrics_exporter_prometheus::PrometheusHandle;

/// The recorder buffers a histogram's samples until its upkeep folds them into the buckets (a
/// render does too). Nothing guarantees a scrape, so every this-many-th observation runs the
/// upkeep itself: memory stays bounded with no background task, at a few short locks per
/// thousand observations.
const SETTLE_EVERY: u32 = 1024;

/// Required by the `Recorder` trait; the Prometheus recorder ignores it.
const META: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// One series read back from the rendered page: for tests and inspection, never the hot path
/// (it renders every metric of the recorder).
#[derive(Debug)]
struct Sample {
    page: PrometheusHandle,
    series: String,
}

impl Sample {
    fn read(&self) -> f64 {
        self.page
            .render()
            .lines()
            .find_map(|l| {
                l.strip_prefix(&self.series)?
                    .strip_prefix(' ')?
                    .parse()
                    .ok()
            })
            .unwrap_or(0.0)
    }
}

/// A monotonically increasing count.
#[derive(Debug)]
pub struct Counter {
    handle: metrics::Counter,
    sample: Sample,
}

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.handle.increment(n);
    }
    /// The value as rendered (tests and inspection; renders the page).
    pub fn get(&self) -> u64 {
        self.sample.read() as u64
    }
}

/// A value that goes up and down, or is set from elsewhere (sizes read at render time).
#[derive(Debug)]
pub struct Gauge {
    handle: metrics::Gauge,
    sample: Sample,
}

impl Gauge {
    pub fn inc(&self) {
        self.handle.increment(1.0);
    }
    pub fn dec(&self) {
        self.handle.decrement(1.0);
    }
    pub fn set(&self, v: u64) {
        self.handle.set(v as f64);
    }
    /// The value as rendered (tests and inspection; renders the page).
    pub fn get(&self) -> i64 {
        self.sample.read() as i64
    }
}

/// A latency histogram over its recorder's buckets.
#[derive(Debug)]
pub struct Histogram {
    handle: metrics::Histogram,
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

/// Registers handles on one fresh recorder, describing each name (its `# HELP` line).
pub struct Registrar {
    recorder: PrometheusRecorder,
    page: PrometheusHandle,
}

impl Registrar {
    /// A recorder whose histograms use `buckets` (upper bounds in seconds, non-empty).
    pub fn new(buckets: &[f64]) -> Self {
        // set_buckets refuses only an empty list; then the exporter's summaries are used.
        let builder = PrometheusBuilder::new();
        let recorder = match builder.set_buckets(buckets) {
            Ok(b) => b.build_recorder(),
            Err(_) => PrometheusBuilder::new().build_recorder(),
        };
        let page = recorder.handle();
        Self { recorder, page }
    }

    /// What renders every metric registered here.
    pub fn page(&self) -> PrometheusHandle {
        self.page.clone()
    }

    /// The key and, for reading it back, its series as the page writes it.
    fn key(&self, name: &'static str, labels: &[(&'static str, &'static str)]) -> (Key, Sample) {
        let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        let series = if pairs.is_empty() {
            name.to_owned()
        } else {
            format!("{name}{{{}}}", pairs.join(","))
        };
        let labels = labels.iter().map(|(k, v)| Label::from_static_parts(k, v));
        let key = Key::from_parts(name, labels.collect::<Vec<_>>());
        let sample = Sample {
            page: self.page.clone(),
            series,
        };
        (key, sample)
    }

    pub fn counter(&self, name: &'static str, help: &'static str) -> Counter {
        self.labelled_counter(name, help, &[])
    }

    pub fn labelled_counter(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &'static str)],
    ) -> Counter {
        self.recorder.describe_counter(
            KeyName::from_const_str(name),
            None,
            SharedString::const_str(help),
        );
        let (key, sample) = self.key(name, labels);
        Counter {
            handle: self.recorder.register_counter(&key, &META),
            sample,
        }
    }

    pub fn gauge(&self, name: &'static str, help: &'static str) -> Gauge {
        self.recorder.describe_gauge(
            KeyName::from_const_str(name),
            None,
            SharedString::const_str(help),
        );
        let (key, sample) = self.key(name, &[]);
        Gauge {
            handle: self.recorder.register_gauge(&key, &META),
            sample,
        }
    }

    pub fn histogram(&self, name: &'static str, help: &'static str) -> Histogram {
        self.recorder.describe_histogram(
            KeyName::from_const_str(name),
            None,
            SharedString::const_str(help),
        );
        let (key, _) = self.key(name, &[]);
        Histogram {
            handle: self.recorder.register_histogram(&key, &META),
            page: self.page.clone(),
            unsettled: AtomicU32::new(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_render_and_read_back() {
        let r = Registrar::new(&[0.01, 1.0]);
        let c = r.labelled_counter("t_total", "A count.", &[("kind", "a"), ("dir", "in")]);
        let z = r.labelled_counter("t_total", "A count.", &[("kind", "b"), ("dir", "in")]);
        let g = r.gauge("t_open", "Open things.");
        let h = r.histogram("t_seconds", "Time taken.");
        c.add(3);
        g.inc();
        g.inc();
        g.dec();
        h.observe(Duration::from_millis(5));
        let page = r.page().render();
        for line in [
            "# HELP t_total A count.",
            "# TYPE t_total counter",
            "t_total{kind=\"a\",dir=\"in\"} 3",
            "t_total{kind=\"b\",dir=\"in\"} 0",
            "# TYPE t_open gauge",
            "t_open 1",
            "t_seconds_bucket{le=\"0.01\"} 1",
            "t_seconds_count 1",
        ] {
            assert!(
                page.lines().any(|l| l == line),
                "missing {line:?} in\n{page}"
            );
        }
        assert_eq!((c.get(), z.get(), g.get()), (3, 0, 1));
        g.set(7);
        assert_eq!(g.get(), 7);
    }
}
