//! A deliberately tiny HTTP/1.x responder for `/metrics` and `/healthz`: two GET routes do not
//! justify an HTTP framework in a security product's dependency tree. Also the textfile form of
//! the same text (node_exporter's textfile collector) for a process that may not open an IP
//! socket (`berth-netfilter.service`), and the netfilter drop-counter poller both forms render.
//!
//! The text itself comes from `metrics-exporter-prometheus` recorders: the gateway's and each
//! resolver's own (see their `metrics` modules), and one built here per netfilter read. This
//! module only concatenates their pages; it encodes nothing by hand.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metrics::{Key, Label, Level, Metadata, Recorder as _};
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The components this process runs: `/metrics` renders exactly these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parts {
    pub gateway: bool,
    pub dns: bool,
    pub netfilter: bool,
}

pub async fn serve(listener: TcpListener, parts: Parts, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => { tokio::spawn(handle(stream, parts)); }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// Rewrites `path` (atomically, 0644) with this process's metrics every `every` until shutdown.
pub async fn write_textfile(
    path: PathBuf,
    parts: Parts,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut last_error = None;
    loop {
        let mut out = String::new();
        render(&mut out, parts);
        match crate::hostsfile::write_atomically(&path, &out) {
            Ok(()) => last_error = None,
            Err(e) => {
                let msg = format!("{e:#}");
                if last_error.as_ref() != Some(&msg) {
                    tracing::warn!(error = %msg, "cannot write the metrics textfile");
                    last_error = Some(msg);
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Required by the `Recorder` trait; the Prometheus recorder ignores it.
const META: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// The last netfilter scrape, rendered; `None` until the first read.
static NETFILTER: Mutex<Option<String>> = Mutex::new(None);

/// Reads berth's drop counters from the kernel every `every` (reading runs `nft`, so a scrape
/// never does) until shutdown.
pub async fn poll_netfilter(fw: netfilter::Firewall, every: Duration, shutdown: CancellationToken) {
    loop {
        let watch = netfilter::watch_stats();
        let text = match fw.drop_counters().await {
            Ok(counters) => render_netfilter(&counters, true, watch),
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the netfilter drop counters");
                render_netfilter(&[], false, watch)
            }
        };
        if let Ok(mut slot) = NETFILTER.lock() {
            *slot = Some(text);
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Renders the drop counters through a recorder of their own, built per read: the series are
/// whatever the kernel reported this time (a rule that went away leaves no stale series), and the
/// gateway's and the resolvers' recorders stay separate from it.
fn render_netfilter(
    counters: &[netfilter::diff::DropCounter],
    ok: bool,
    watch: netfilter::WatchStats,
) -> String {
    let recorder = PrometheusBuilder::new().build_recorder();
    let gauge = |name: &'static str, help: &'static str, v: f64| {
        recorder.describe_gauge(name.into(), None, help.into());
        recorder
            .register_gauge(&Key::from_static_name(name), &META)
            .set(v);
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    gauge(
        "berth_netfilter_counters_up",
        "1 when the last read of berth's nftables counters succeeded.",
        f64::from(u8::from(ok)),
    );
    gauge(
        "berth_netfilter_counters_read_timestamp_seconds",
        "When the counters were last read.",
        now as f64,
    );
    gauge(
        "berth_netfilter_port_map_pending",
        "1 while a loaded port map is not in the live ruleset (its update failed and is retried).",
        f64::from(u8::from(watch.port_map_pending)),
    );
    let total = |name: &'static str, help: &'static str, v: u64| {
        recorder.describe_counter(name.into(), None, help.into());
        recorder
            .register_counter(&Key::from_static_name(name), &META)
            .absolute(v);
    };
    total(
        "berth_netfilter_port_map_apply_failures_total",
        "Attempts to apply a changed port map that failed (each is retried with backoff).",
        watch.port_map_failures,
    );
    total(
        "berth_netfilter_reapply_failures_total",
        "Re-applies of berth's ruleset after drift that failed.",
        watch.reapply_failures,
    );
    const PACKETS: &str = "berth_netfilter_dropped_packets_total";
    const BYTES: &str = "berth_netfilter_dropped_bytes_total";
    recorder.describe_counter(
        PACKETS.into(),
        None,
        "Packets berth's egress filter dropped, per table family and reason.".into(),
    );
    recorder.describe_counter(
        BYTES.into(),
        None,
        "Bytes berth's egress filter dropped, per table family and reason.".into(),
    );
    for c in counters {
        let labels = [
            Label::new("family", c.family.clone()),
            Label::new("reason", c.reason.clone()),
        ];
        for (name, v) in [(PACKETS, c.packets), (BYTES, c.bytes)] {
            recorder
                .register_counter(&Key::from_parts(name, labels.to_vec()), &META)
                .absolute(v);
        }
    }
    recorder.handle().render()
}

/// This process's metrics, Prometheus text format.
pub fn render(out: &mut String, parts: Parts) {
    if parts.gateway {
        crate::commands::gateway::render_metrics(out);
    }
    if parts.dns {
        crate::commands::dns::render_metrics(out);
    }
    if parts.netfilter
        && let Ok(slot) = NETFILTER.lock()
        && let Some(text) = slot.as_ref()
    {
        out.push_str(text);
    }
}

async fn handle(mut stream: TcpStream, parts: Parts) {
    let mut buf = [0u8; 2048];
    let mut len = 0;
    // Read until the end of the request head (or 2 KiB, or 5 s): enough for a GET line.
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        while len < buf.len() {
            match stream.read(&mut buf[len..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    len += n;
                    if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    if read.is_err() {
        return;
    }
    let (status, body) = route(&buf[..len], parts);
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(resp.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn route(head: &[u8], parts: Parts) -> (&'static str, String) {
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split(' ');
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    if method != "GET" {
        return ("405 Method Not Allowed", "only GET\n".into());
    }
    match path {
        "/metrics" => {
            let mut out = String::new();
            render(&mut out, parts);
            ("200 OK", out)
        }
        "/healthz" => ("200 OK", "ok\n".into()),
        _ => (
            "404 Not Found",
            "not found: try /metrics or /healthz\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::{Parts, render_netfilter};

    fn route(head: &[u8]) -> (&'static str, String) {
        let parts = Parts {
            gateway: false,
            dns: true,
            netfilter: false,
        };
        super::route(head, parts)
    }

    #[test]
    fn routes() {
        assert_eq!(route(b"GET /healthz HTTP/1.1\r\n\r\n").0, "200 OK");
        assert_eq!(route(b"GET /nope HTTP/1.1\r\n\r\n").0, "404 Not Found");
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n").0,
            "405 Method Not Allowed"
        );
        assert_eq!(route(b"").0, "405 Method Not Allowed");
    }

    #[test]
    fn netfilter_counters_render() {
        let c = netfilter::diff::DropCounter {
            family: "inet".into(),
            reason: "private".into(),
            packets: 5,
            bytes: 300,
        };
        let watch = netfilter::WatchStats {
            port_map_failures: 3,
            port_map_pending: true,
            reapply_failures: 0,
        };
        let text = render_netfilter(&[c], true, watch);
        assert!(
            text.contains("berth_netfilter_port_map_apply_failures_total 3\n"),
            "{text}"
        );
        assert!(
            text.contains("berth_netfilter_port_map_pending 1\n"),
            "{text}"
        );
        assert!(
            text.contains("berth_netfilter_reapply_failures_total 0\n"),
            "{text}"
        );
        assert!(text.contains("berth_netfilter_counters_up 1\n"), "{text}");
        assert!(
            text.contains(
                "berth_netfilter_dropped_packets_total{family=\"inet\",reason=\"private\"} 5\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "berth_netfilter_dropped_bytes_total{family=\"inet\",reason=\"private\"} 300\n"
            ),
            "{text}"
        );
        for line in [
            "# HELP berth_netfilter_dropped_packets_total Packets berth's egress filter dropped, per table family and reason.",
            "# TYPE berth_netfilter_dropped_packets_total counter",
            "# TYPE berth_netfilter_counters_up gauge",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        let read_at = text
            .lines()
            .find_map(|l| l.strip_prefix("berth_netfilter_counters_read_timestamp_seconds "))
            .and_then(|v| v.parse::<u64>().ok());
        assert!(read_at.is_some_and(|t| t > 1_700_000_000), "{text}");
    }

    #[test]
    fn failed_read_renders_down_and_no_counters() {
        let text = render_netfilter(&[], false, netfilter::WatchStats::default());
        assert!(text.contains("berth_netfilter_counters_up 0\n"), "{text}");
        assert!(!text.contains("berth_netfilter_dropped_"), "{text}");
    }
}
