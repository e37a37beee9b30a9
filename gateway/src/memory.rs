//! Giving freed heap memory back to the kernel after load.
//!
//! A transfer allocates and frees packet-sized buffers on whichever runtime thread runs it, and
//! glibc's malloc keeps what was freed in that thread's arena for reuse: after 60 concurrent
//! 16 MiB transfers the gateway stayed at ~300 MiB resident while idle, although almost all of it
//! was free (see docs/BENCHMARKS.md, "gateway: memory after load"). Two process-wide measures:
//!
//! - [`limit_arenas`] (called by the binary before any thread starts): at most one malloc arena
//!   per core instead of glibc's eight, so freed memory is spread over fewer heaps and reused
//!   sooner rather than parked per thread;
//! - [`Trimmer`]: after connections or channels have ended, `malloc_trim(0)` on the blocking
//!   pool, which hands every free page of every arena back to the kernel. It runs at most once
//!   per [`TRIM_EVERY`], only when something ended since the last run (plus once more a period
//!   later, for buffers a session task was still unwinding), so an idle gateway never trims and a
//!   busy one pays one short walk of the heaps every few seconds.
//!
//! What this does not do: replace the allocator, or bound what live sessions hold (that is the
//! channel window, `pipe.rs`). On a libc other than glibc both are no-ops.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::debug;

/// How often the trimmer looks whether a connection or channel ended since its last trim.
pub const TRIM_EVERY: Duration = Duration::from_secs(5);

/// Caps glibc's malloc arenas at one per available core (glibc's default is eight per core),
/// unless the operator chose a value (`MALLOC_ARENA_MAX`, or `glibc.malloc.arena_max` in
/// `GLIBC_TUNABLES`). Call before the async runtime starts threads: arenas already created stay.
/// Returns the cap set, `None` when left to glibc or the operator.
pub fn limit_arenas() -> Option<usize> {
    let chosen = std::env::var_os("MALLOC_ARENA_MAX").is_some()
        || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("arena_max"));
    if chosen {
        return None;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cap = cores.max(2);
    sys::set_arena_max(cap).then_some(cap)
}

/// Returns free heap memory to the kernel now; true when glibc released any.
pub fn trim() -> bool {
    sys::trim()
}

/// Resident set size of this process in KiB (`VmRSS` in `/proc/self/status`), for logs and tests.
pub fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    line.trim().trim_end_matches("kB").trim().parse().ok()
}

/// Counts ended connections and channels and trims after them (see the module docs).
#[derive(Debug, Default)]
pub struct Trimmer {
    ended: AtomicU64,
}

impl Trimmer {
    /// Records that a connection or channel (and what it allocated) is gone.
    pub fn ended(&self) {
        self.ended.fetch_add(1, Ordering::Relaxed);
    }

    /// Trims every [`TRIM_EVERY`] when something ended since the last look, and once more on
    /// the look after, until `stop`.
    pub async fn run(self: std::sync::Arc<Self>, stop: CancellationToken) {
        let mut seen = self.ended.load(Ordering::Relaxed);
        let mut again = false;
        let mut tick = tokio::time::interval(TRIM_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = self.ended.load(Ordering::Relaxed);
            if now != seen {
                seen = now;
                again = true;
            } else if again {
                again = false;
            } else {
                continue;
            }
            let before = rss_kib();
            let released = tokio::task::spawn_blocking(trim).await.unwrap_or(false);
            crate::metrics::memory_trimmed(released);
            debug!(
                rss_before_kib = before,
                rss_after_kib = rss_kib(),
                released,
                "returned free heap memory to the kernel"
            );
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
mod sys {
    pub fn set_arena_max(n: usize) -> bool {
        let n = libc::c_int::try_from(n).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only changes a malloc tunable; M_ARENA_MAX takes any positive count.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, n) == 1 }
    }

    pub fn trim() -> bool {
        // SAFETY: malloc_trim takes the arenas' own locks; with 0 it keeps no extra padding.
        unsafe { libc::malloc_trim(0) == 1 }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod sys {
    pub fn set_arena_max(_: usize) -> bool {
        false
    }

    pub fn trim() -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trim_gives_freed_memory_back() {
        let Some(start) = rss_kib() else {
            panic!("/proc/self/status unreadable");
        };
        // 64 MiB in 32 KiB blocks (below the mmap threshold: they come from the heap, like
        // packet buffers), touched, then freed except the last so the heap top stays in use.
        let mut blocks: Vec<Vec<u8>> = (0..2048).map(|_| vec![1u8; 32 * 1024]).collect();
        let keep = blocks.pop();
        let full = rss_kib().unwrap_or(0);
        drop(blocks);
        trim();
        let after = rss_kib().unwrap_or(u64::MAX);
        drop(keep);
        assert!(
            full > start + 48 * 1024,
            "the blocks were resident: {start} → {full} KiB"
        );
        if cfg!(all(target_os = "linux", target_env = "gnu")) {
            assert!(
                after < full - 32 * 1024,
                "malloc_trim returned the freed blocks: {full} → {after} KiB"
            );
        }
    }
}
