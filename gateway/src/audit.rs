//! What an authenticated connection leaves in the log and the audit table, bounded: text a
//! client or tenant controls (forward hosts, env and subsystem names, error texts) is cut to a
//! bounded length with control characters escaped ([`loggable`], [`bound_detail`]), and each
//! connection has a [`Budget`] of log lines and audit records; beyond it they are counted and
//! summarized ("N suppressed") instead of written.
//!
//! It decides nothing about the connection itself and does no IO: `conn.rs` asks it before
//! writing, and writes the summaries.

use std::time::{Duration, Instant};

/// Longest tenant-controlled string kept in a log line or an audit field, in characters.
pub const MAX_FIELD_CHARS: usize = 256;

/// Items kept per array or object of an audit detail.
const MAX_DETAIL_ITEMS: usize = 32;

/// Values kept per audit detail (beyond them, values are replaced by a marker).
const MAX_DETAIL_VALUES: usize = 128;

/// A detail still larger than this once bounded is replaced by its size.
pub const MAX_DETAIL_BYTES: usize = 16 * 1024;

/// `s` made safe for a log line or an audit record: at most `max` characters (cut on a
/// character boundary, `…` appended when cut), with control characters, quotes, backslashes and
/// other non-printable characters escaped (`\n`, `\u{1b}`), so a line stays one line and a
/// terminal reading the log interprets nothing. The result is at most `10 × max + 3` bytes.
pub fn loggable(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    let mut chars = s.chars();
    for c in chars.by_ref().take(max) {
        out.extend(c.escape_debug());
    }
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

/// Bounds every string in an audit detail with [`loggable`] and the number of values it holds,
/// and the whole to [`MAX_DETAIL_BYTES`], so a record's size is bounded whatever a tenant put
/// in it.
pub fn bound_detail(v: &mut serde_json::Value) {
    let mut budget = MAX_DETAIL_VALUES;
    bound(v, &mut budget, 0);
    let bytes = v.to_string().len();
    if bytes > MAX_DETAIL_BYTES {
        *v = serde_json::json!({ "detail_truncated_bytes": bytes });
    }
}

fn bound(v: &mut serde_json::Value, budget: &mut usize, depth: usize) {
    use serde_json::Value;
    if *budget == 0 || depth > 4 {
        *v = Value::String("…".into());
        return;
    }
    *budget -= 1;
    match v {
        Value::String(s) => {
            if s.chars().count() > MAX_FIELD_CHARS || s.chars().any(needs_escape) {
                *s = loggable(s, MAX_FIELD_CHARS);
            }
        }
        Value::Array(items) => {
            items.truncate(MAX_DETAIL_ITEMS);
            for item in items {
                bound(item, budget, depth + 1);
            }
        }
        Value::Object(map) => {
            let keys: Vec<String> = map.keys().cloned().collect();
            for (i, k) in keys.into_iter().enumerate() {
                let Some(mut item) = map.remove(&k) else {
                    continue;
                };
                if i >= MAX_DETAIL_ITEMS {
                    continue;
                }
                bound(&mut item, budget, depth + 1);
                map.insert(loggable(&k, 64), item);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

fn needs_escape(c: char) -> bool {
    c.escape_debug().nth(1).is_some() && c != '"' && c != '\''
}

/// A token bucket on an explicit clock: `burst` at once, then one per `every`.
#[derive(Debug, Clone)]
struct Bucket {
    burst: u32,
    every: Duration,
    tokens: u32,
    refilled: Instant,
}

impl Bucket {
    fn new(burst: u32, every: Duration, now: Instant) -> Self {
        Self {
            burst,
            every,
            tokens: burst,
            refilled: now,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled);
        let every = self.every.as_nanos().max(1);
        let earned = u32::try_from(elapsed.as_nanos() / every).unwrap_or(u32::MAX);
        if earned > 0 {
            self.tokens = self.tokens.saturating_add(earned).min(self.burst);
            self.refilled += self.every.saturating_mul(earned);
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// What [`Budget::audit`] / [`Budget::log`] answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write it; `suppressed` earlier ones were dropped since the last one written (say so).
    Write { suppressed: u64 },
    /// Drop it (it was counted).
    Suppress,
}

/// One connection's allowance of tenant-triggered log lines and audit records.
#[derive(Debug, Clone)]
pub struct Budget {
    audit: Bucket,
    log: Bucket,
    audit_suppressed: u64,
    log_suppressed: u64,
}

impl Budget {
    /// Audit records one connection writes at once, then one per [`Budget::AUDIT_EVERY`].
    pub const AUDIT_BURST: u32 = 128;
    pub const AUDIT_EVERY: Duration = Duration::from_secs(1);
    /// Log lines one connection writes at once, then one per [`Budget::LOG_EVERY`].
    pub const LOG_BURST: u32 = 32;
    pub const LOG_EVERY: Duration = Duration::from_secs(2);

    pub fn new(now: Instant) -> Self {
        Self {
            audit: Bucket::new(Self::AUDIT_BURST, Self::AUDIT_EVERY, now),
            log: Bucket::new(Self::LOG_BURST, Self::LOG_EVERY, now),
            audit_suppressed: 0,
            log_suppressed: 0,
        }
    }

    /// May an audit record be written now?
    pub fn audit(&mut self, now: Instant) -> Verdict {
        take(&mut self.audit, &mut self.audit_suppressed, now)
    }

    /// May a log line be written now?
    pub fn log(&mut self, now: Instant) -> Verdict {
        take(&mut self.log, &mut self.log_suppressed, now)
    }

    /// Records and log lines dropped since the last one of each kind was written (the
    /// connection's closing summary); resets both counts.
    pub fn take_suppressed(&mut self) -> (u64, u64) {
        (
            std::mem::take(&mut self.audit_suppressed),
            std::mem::take(&mut self.log_suppressed),
        )
    }
}

fn take(bucket: &mut Bucket, suppressed: &mut u64, now: Instant) -> Verdict {
    if bucket.take(now) {
        Verdict::Write {
            suppressed: std::mem::take(suppressed),
        }
    } else {
        *suppressed = suppressed.saturating_add(1);
        Verdict::Suppress
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loggable_cuts_on_a_char_boundary_and_escapes_controls() {
        let cases: &[(&str, usize, &str)] = &[
            ("example.com", 256, "example.com"),
            ("abcdef", 3, "abc…"),
            // Multi-byte characters are counted whole, never split.
            ("ééééé", 2, "éé…"),
            ("日本語のホスト", 3, "日本語…"),
            // A line stays one line; escape sequences are shown, not interpreted.
            ("a\nb", 256, "a\\nb"),
            ("\u{1b}[31mred", 256, "\\u{1b}[31mred"),
            ("tab\there\r", 256, "tab\\there\\r"),
            ("nul\0", 256, "nul\\0"),
            ("", 8, ""),
        ];
        for (input, max, want) in cases {
            assert_eq!(loggable(input, *max), *want, "{input:?} /{max}");
        }
        let huge = "\u{1b}".repeat(100_000);
        let out = loggable(&huge, MAX_FIELD_CHARS);
        assert!(out.len() <= 10 * MAX_FIELD_CHARS + 3, "{}", out.len());
        assert!(!out.contains('\u{1b}'));
    }

    #[test]
    fn bound_detail_bounds_every_string_and_the_item_count() {
        let host = format!("{}\n{}", "h".repeat(50_000), "x");
        let mut d = serde_json::json!({
            "host": host,
            "port": 22,
            "error": "agent said \u{7}",
            "list": (0..1000).map(|i| format!("item{i}")).collect::<Vec<_>>(),
            "plain": "example.com",
        });
        bound_detail(&mut d);
        let text = d.to_string();
        assert!(text.len() < 16 * 1024, "detail is {} bytes", text.len());
        let host = d["host"].as_str().unwrap_or_default();
        assert!(host.ends_with('…') && host.chars().count() == MAX_FIELD_CHARS + 1);
        assert_eq!(d["port"], 22);
        assert_eq!(d["error"], "agent said \\u{7}");
        assert_eq!(d["plain"], "example.com");
        assert!(d["list"].as_array().is_some_and(|a| a.len() <= 32));
        // Whatever the shape, the whole stays within its byte bound.
        let mut d = serde_json::json!({
            "many": (0..1000).map(|i| format!("{i}\u{1b}").repeat(300)).collect::<Vec<_>>(),
        });
        bound_detail(&mut d);
        assert!(
            d.to_string().len() <= MAX_DETAIL_BYTES,
            "{}",
            d.to_string().len()
        );
        let mut deep = serde_json::json!("x".repeat(10_000));
        for _ in 0..100 {
            deep = serde_json::json!([deep]);
        }
        bound_detail(&mut deep);
        assert!(deep.to_string().len() <= MAX_DETAIL_BYTES);
    }

    #[test]
    fn budget_writes_a_burst_then_counts_and_reports_what_it_dropped() {
        let t0 = Instant::now();
        let mut b = Budget::new(t0);
        for _ in 0..Budget::AUDIT_BURST {
            assert_eq!(b.audit(t0), Verdict::Write { suppressed: 0 });
        }
        for _ in 0..1000 {
            assert_eq!(b.audit(t0), Verdict::Suppress);
        }
        // One more per second; the first one written says how many were dropped before it.
        let t1 = t0 + Budget::AUDIT_EVERY;
        assert_eq!(b.audit(t1), Verdict::Write { suppressed: 1000 });
        assert_eq!(b.audit(t1), Verdict::Suppress);
        // Logs have their own budget.
        for _ in 0..Budget::LOG_BURST {
            assert!(matches!(b.log(t1), Verdict::Write { .. }));
        }
        assert_eq!(b.log(t1), Verdict::Suppress);
        assert_eq!(b.log(t1), Verdict::Suppress);
        assert_eq!(b.take_suppressed(), (1, 2));
        assert_eq!(b.take_suppressed(), (0, 0));
        // Quiet time refills up to the burst, never beyond.
        let t2 = t1 + Duration::from_secs(3_600);
        for _ in 0..Budget::LOG_BURST {
            assert!(matches!(b.log(t2), Verdict::Write { .. }));
        }
        assert_eq!(b.log(t2), Verdict::Suppress);
    }
}
