//! Measures what a cached entry really costs against what the byte budget charges for it:
//! fills a cache with N one-A-record answers (distinct names) and compares the growth of the
//! process's resident memory with `Cache::bytes()`. Used for docs/SECURITY.md.
//!
//! cargo run --release -p dns --example cache_mem -- [N]

use std::time::{Duration, Instant};

use dns::cache::{Answer, Cache, Encoded, Key};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let cache = Cache::new(n, Duration::ZERO).with_byte_limits(usize::MAX / 2, 1 << 20);
    let before = rss_bytes();
    let t0 = Instant::now();
    for i in 0..n {
        let Ok(name) = Name::from_ascii(format!("host{i}.example.com.")) else {
            continue;
        };
        let answer = Answer {
            rcode: ResponseCode::NoError,
            answers: vec![Record::from_rdata(
                name.clone(),
                300,
                RData::A(A::from(std::net::Ipv4Addr::from(i as u32))),
            )],
            authorities: vec![],
            additionals: vec![],
        };
        let key = Key::new(&name, RecordType::A, DNSClass::IN, false);
        let Some(enc) = Encoded::build(&name, RecordType::A, DNSClass::IN, &answer) else {
            continue;
        };
        cache.insert(key, enc, 300, t0, 0);
    }
    let grown = rss_bytes().saturating_sub(before);
    println!(
        "entries {} | charged {} B/entry | resident growth {} B/entry | record struct {} B",
        cache.len(),
        cache.bytes() / cache.len().max(1),
        grown / cache.len().max(1),
        std::mem::size_of::<Record>()
    );
}
