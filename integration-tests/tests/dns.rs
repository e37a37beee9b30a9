//! Whole-resolver tests: a real berth resolver on loopback, a scripted upstream on loopback, and
//! real clients (`dig`, the hickory client, raw sockets). Never the internet.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use hickory_server::net::client::ClientHandle;
use integration_tests::dns::{Berth, FakeUpstream, dig, hickory_client, test_config};
use tenants::ServerId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

fn sid(n: u32) -> ServerId {
    ServerId::new(n).unwrap()
}

async fn setup() -> (FakeUpstream, Berth) {
    let up = FakeUpstream::start().await;
    let b = Berth::start(test_config(&[up.addr])).await;
    (up, b)
}

#[tokio::test]
async fn forwards_then_serves_from_cache_with_ttl_counting_down() {
    let (up, b) = setup().await;
    up.add_a("www.example.test.", 100, "45.45.2.10");

    let r = dig(b.addr, &["www.example.test", "A"]).await;
    assert_eq!(r.status, "NOERROR", "{}", r.raw);
    assert_eq!(r.data(), vec!["45.45.2.10"]);
    assert!(r.has_flag("ra"), "{}", r.raw);
    assert_eq!(up.queries(), 1);

    // Second query: from the cache (upstream not asked), and the hickory client agrees.
    let mut c = hickory_client(b.addr).await;
    let resp = c
        .query(
            Name::from_str("www.example.test.").unwrap(),
            DNSClass::IN,
            RecordType::A,
        )
        .await
        .unwrap();
    assert_eq!(resp.metadata.response_code, ResponseCode::NoError);
    let ips: Vec<IpAddr> = resp
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect();
    assert_eq!(ips, vec!["45.45.2.10".parse::<IpAddr>().unwrap()]);
    assert_eq!(up.queries(), 1, "second query must be a cache hit");
    assert!(b.metric("berth_dns_cache_hits_total") >= 1.0);

    // TTL counts down.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = dig(b.addr, &["www.example.test", "A"]).await;
    assert_eq!(r.answers.len(), 1, "{}", r.raw);
    let ttl = r.answers[0].1;
    assert!(
        (90..=98).contains(&ttl),
        "ttl {ttl} should have counted down from 100"
    );
    assert_eq!(up.queries(), 1);
}

#[tokio::test]
async fn nxdomain_passes_through_and_is_negatively_cached() {
    let (up, b) = setup().await;
    up.add_a("exists.test.", 60, "45.45.2.1");
    let r = dig(b.addr, &["nope.example.test", "A"]).await;
    assert_eq!(r.status, "NXDOMAIN", "{}", r.raw);
    assert!(
        r.raw.contains("SOA"),
        "negative answer carries the SOA: {}",
        r.raw
    );
    let r = dig(b.addr, &["nope.example.test", "A"]).await;
    assert_eq!(r.status, "NXDOMAIN");
    assert_eq!(up.queries(), 1, "negative answer cached from the SOA");
    // NODATA passes through too.
    let r = dig(b.addr, &["exists.test", "MX"]).await;
    assert_eq!(r.status, "NOERROR");
    assert!(r.answers.is_empty());
}

#[tokio::test]
async fn tenant_names_appear_and_disappear_live() {
    let (up, b) = setup().await;
    let r = dig(b.addr, &["server1.berth.internal", "A"]).await;
    assert_eq!(r.status, "NXDOMAIN", "{}", r.raw);

    b.zone
        .replace(BTreeMap::from([(sid(1), "172.19.2.11".parse().unwrap())]));
    let r = dig(b.addr, &["server1.berth.internal", "A"]).await;
    assert_eq!(r.status, "NOERROR", "{}", r.raw);
    assert_eq!(r.data(), vec!["172.19.2.11"]);
    assert!(r.has_flag("aa"));

    // A server created now resolves immediately (no stale negative cache)...
    let r = dig(b.addr, &["server2.berth.internal", "A"]).await;
    assert_eq!(r.status, "NXDOMAIN");
    b.zone.set(
        sid(2),
        vec!["172.19.2.12".parse().unwrap(), "fd19::12".parse().unwrap()],
    );
    let r = dig(b.addr, &["server2.berth.internal", "A"]).await;
    assert_eq!(r.data(), vec!["172.19.2.12"], "{}", r.raw);
    let r = dig(b.addr, &["SERVER2.Berth.Internal", "AAAA"]).await;
    assert_eq!(r.data(), vec!["fd19::12"], "{}", r.raw);
    // ...and a removed one stops resolving immediately.
    b.zone.remove(sid(1));
    let r = dig(b.addr, &["server1.berth.internal", "A"]).await;
    assert_eq!(r.status, "NXDOMAIN");
    // Names under the domain are never forwarded, whatever they are.
    let r = dig(b.addr, &["www.berth.internal", "A"]).await;
    assert_eq!(r.status, "NXDOMAIN");
    let r = dig(b.addr, &["server02.berth.internal", "A"]).await;
    assert_eq!(r.status, "NXDOMAIN");
    assert_eq!(up.queries(), 0);

    // Hickory client sees the same.
    let mut c = hickory_client(b.addr).await;
    let resp = c
        .query(
            Name::from_str("server2.berth.internal.").unwrap(),
            DNSClass::IN,
            RecordType::A,
        )
        .await
        .unwrap();
    assert_eq!(resp.answers.len(), 1);
}

#[tokio::test]
async fn ptr_for_tenant_addresses() {
    let (up, b) = setup().await;
    b.zone
        .replace(BTreeMap::from([(sid(7), "172.19.2.17".parse().unwrap())]));
    let r = dig(b.addr, &["-x", "172.19.2.17"]).await;
    assert_eq!(r.status, "NOERROR", "{}", r.raw);
    assert_eq!(r.data(), vec!["server7.berth.internal."]);
    // Unknown tenant address: private range → NXDOMAIN, not forwarded (bogus-priv).
    let r = dig(b.addr, &["-x", "172.19.2.99"]).await;
    assert_eq!(r.status, "NXDOMAIN");
    assert_eq!(up.queries(), 0);
}

#[tokio::test]
async fn domain_needed_and_bogus_priv_never_forward() {
    let (up, b) = setup().await;
    let r = dig(b.addr, &["printer", "A"]).await;
    assert_eq!(r.status, "NXDOMAIN", "{}", r.raw);
    for ip in [
        "192.168.1.1",
        "10.1.2.3",
        "127.0.0.1",
        "169.254.0.1",
        "fd00::1",
    ] {
        let r = dig(b.addr, &["-x", ip]).await;
        assert_eq!(r.status, "NXDOMAIN", "{ip}: {}", r.raw);
    }
    assert_eq!(up.queries(), 0, "nothing may reach the upstream");
    // A public reverse name is forwarded.
    let _ = dig(b.addr, &["-x", "45.45.2.1"]).await;
    assert_eq!(up.queries(), 1);
}

#[tokio::test]
async fn rebind_protection_strips_private_answers() {
    let up = FakeUpstream::start().await;
    up.add_a("evil.test.", 60, "192.168.1.5");
    up.add_a("evil.test.", 60, "45.45.2.9");
    up.add_a("evil.test.", 60, "127.0.0.1");
    // netfilter's deny list is the rebind list: benchmarking and multicast too.
    up.add_a("evil.test.", 60, "198.18.0.9");
    up.add_a("evil.test.", 60, "224.0.0.9");
    up.add_a("lan.corp.test.", 60, "10.0.0.5");
    let mut cfg = test_config(&[up.addr]);
    cfg.rebind_allowlist = vec!["corp.test".into()];
    let b = Berth::start(cfg).await;
    let r = dig(b.addr, &["evil.test", "A"]).await;
    assert_eq!(r.data(), vec!["45.45.2.9"], "{}", r.raw);
    let r = dig(b.addr, &["lan.corp.test", "A"]).await;
    assert_eq!(
        r.data(),
        vec!["10.0.0.5"],
        "allowlisted domain keeps private answers"
    );
    assert!(b.metric("berth_dns_rebind_stripped_total") >= 4.0);
}

#[tokio::test]
async fn refused_outside_allowed_networks() {
    let up = FakeUpstream::start().await;
    up.add_a("a.test.", 60, "45.45.2.1");
    let mut cfg = test_config(&[up.addr]);
    cfg.allow_from = vec!["127.0.0.1/32".parse().unwrap()];
    let b = Berth::start(cfg).await;
    let r = dig(b.addr, &["-b", "127.0.0.2", "a.test", "A"]).await;
    assert_eq!(r.status, "REFUSED", "{}", r.raw);
    let r = dig(b.addr, &["-b", "127.0.0.1", "a.test", "A"]).await;
    assert_eq!(r.status, "NOERROR", "{}", r.raw);
    assert_eq!(up.queries(), 1);
}

#[tokio::test]
async fn blocklist_nxdomain_and_live_reload() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("block.txt");
    std::fs::write(&list, "ads.test\n# comment\n").unwrap();
    let up = FakeUpstream::start().await;
    up.add_a("ads.test.", 60, "45.45.2.66");
    up.add_a("x.ads.test.", 60, "45.45.2.66");
    up.add_a("tracker.test.", 60, "45.45.2.67");
    let mut cfg = test_config(&[up.addr]);
    cfg.blocklist = Some(list.clone());
    let b = Berth::start(cfg).await;
    assert_eq!(dig(b.addr, &["ads.test", "A"]).await.status, "NXDOMAIN");
    assert_eq!(dig(b.addr, &["x.ads.test", "A"]).await.status, "NXDOMAIN");
    assert_eq!(
        dig(b.addr, &["tracker.test", "A"]).await.data(),
        vec!["45.45.2.67"]
    );
    assert_eq!(up.queries(), 1);

    // Changing the file is picked up without a restart (SIGHUP in the daemon calls the same
    // reload; here the file watcher does).
    std::fs::write(&list, "ads.test\ntracker.test\nmore.test\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = dig(b.addr, &["sub.tracker.test", "A"]).await;
        if r.status == "NXDOMAIN" && b.metric("berth_dns_blocklist_entries") == 3.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "blocklist not reloaded: {}",
            b.metrics_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(b.svc.reload_blocklist().unwrap(), 3);
}

#[tokio::test]
async fn blocklist_sinkhole_mode() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("hosts");
    std::fs::write(&list, "0.0.0.0 ads.test\n").unwrap();
    let up = FakeUpstream::start().await;
    let mut cfg = test_config(&[up.addr]);
    cfg.blocklist = Some(list);
    cfg.blocklist_mode = dns::BlocklistMode::Sinkhole;
    let b = Berth::start(cfg).await;
    assert_eq!(
        dig(b.addr, &["ads.test", "A"]).await.data(),
        vec!["0.0.0.0"]
    );
    assert_eq!(dig(b.addr, &["ads.test", "AAAA"]).await.data(), vec!["::"]);
    let r = dig(b.addr, &["ads.test", "MX"]).await;
    assert_eq!(r.status, "NOERROR");
    assert!(r.answers.is_empty());
    assert_eq!(up.queries(), 0);
}

#[tokio::test]
async fn upstream_down_serves_stale_and_bounded_servfail() {
    let (up, b) = setup().await;
    up.add_a("short.test.", 1, "45.45.2.5");
    assert_eq!(
        dig(b.addr, &["short.test", "A"]).await.data(),
        vec!["45.45.2.5"]
    );
    up.stop();
    tokio::time::sleep(Duration::from_millis(1600)).await;

    let t = Instant::now();
    let r = dig(b.addr, &["short.test", "A"]).await;
    assert_eq!(r.status, "NOERROR", "{}", r.raw);
    assert_eq!(
        r.data(),
        vec!["45.45.2.5"],
        "stale answer expected: {}",
        r.raw
    );
    assert_eq!(r.answers[0].1, 30, "stale answers carry the stale TTL");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "stale answer took {:?}",
        t.elapsed()
    );
    assert!(b.metric("berth_dns_cache_stale_total") >= 1.0);

    let t = Instant::now();
    let r = dig(b.addr, &["never-seen.test", "A"]).await;
    assert_eq!(r.status, "SERVFAIL", "{}", r.raw);
    // query_timeout_ms = 1500 in test_config; allow scheduling slack on a busy machine.
    assert!(
        t.elapsed() < Duration::from_millis(3000),
        "SERVFAIL took {:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn slow_refresh_serves_stale_then_updates_in_background() {
    let up = FakeUpstream::start().await;
    let mut cfg = test_config(&[up.addr]);
    cfg.stale_wait_ms = 200;
    cfg.upstream_timeout_ms = 1500;
    cfg.query_timeout_ms = 2000;
    let b = Berth::start(cfg).await;
    up.add_a("moving.test.", 1, "45.45.2.1");
    assert_eq!(
        dig(b.addr, &["moving.test", "A"]).await.data(),
        vec!["45.45.2.1"]
    );
    tokio::time::sleep(Duration::from_millis(1300)).await;
    // The upstream now answers slower than stale_wait_ms (200) but within the attempt timeout
    // (1500), with a new address and a long TTL.
    up.set_delay(Duration::from_millis(700));
    up.set_a("moving.test.", 300, "45.45.2.2");
    let t = Instant::now();
    let r = dig(b.addr, &["moving.test", "A"]).await;
    assert_eq!(r.data(), vec!["45.45.2.1"], "stale answer first: {}", r.raw);
    assert!(
        t.elapsed() < Duration::from_millis(700),
        "{:?}",
        t.elapsed()
    );
    // The refresh kept running after the client got its stale answer.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let before = up.queries();
    let r = dig(b.addr, &["moving.test", "A"]).await;
    assert_eq!(
        r.data(),
        vec!["45.45.2.2"],
        "refreshed in the background: {}",
        r.raw
    );
    assert_eq!(
        up.queries(),
        before,
        "served from the refreshed cache entry"
    );
}

#[tokio::test]
async fn failover_to_second_upstream() {
    let dead = FakeUpstream::start().await;
    dead.stop();
    let live = FakeUpstream::start().await;
    live.add_a("fo.test.", 60, "45.45.2.77");
    // A black hole (never answers) first, then a stopped one, then the live one.
    let hole = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let b = Berth::start(test_config(&[
        hole.local_addr().unwrap(),
        dead.addr,
        live.addr,
    ]))
    .await;
    let t = Instant::now();
    let r = dig(b.addr, &["fo.test", "A"]).await;
    // 700 ms attempt timeout on the black hole, fast refusal from the stopped one: within 1.5 s.
    assert_eq!(r.data(), vec!["45.45.2.77"], "{}", r.raw);
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(live.queries(), 1);
}

#[tokio::test]
async fn identical_inflight_queries_are_merged() {
    let (up, b) = setup().await;
    up.add_a("slow.test.", 60, "45.45.2.8");
    up.set_delay(Duration::from_millis(400));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let addr = b.addr;
        tasks.push(tokio::spawn(async move {
            let mut c = hickory_client(addr).await;
            c.query(
                Name::from_str("slow.test.").unwrap(),
                DNSClass::IN,
                RecordType::A,
            )
            .await
        }));
    }
    for t in tasks {
        let resp = t.await.unwrap().unwrap();
        assert_eq!(resp.answers.len(), 1);
    }
    assert_eq!(up.queries(), 1, "20 identical queries, one upstream query");
    assert!(b.metric("berth_dns_inflight_merged_total") >= 1.0);
}

#[tokio::test]
async fn global_inflight_cap_fails_fast() {
    let up = FakeUpstream::start().await;
    up.set_delay(Duration::from_millis(800));
    for i in 0..6 {
        up.add_a(&format!("n{i}.test."), 60, "45.45.2.3");
    }
    let mut cfg = test_config(&[up.addr]);
    cfg.max_inflight = 2;
    cfg.query_timeout_ms = 2500;
    cfg.upstream_timeout_ms = 2000;
    let b = Berth::start(cfg).await;
    let mut tasks = Vec::new();
    for i in 0..6 {
        let addr = b.addr;
        tasks.push(tokio::spawn(async move {
            dig(addr, &[&format!("n{i}.test"), "A"]).await.status
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| *s == "NOERROR").count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| *s == "SERVFAIL").count(),
        4,
        "{statuses:?}"
    );
    assert_eq!(b.metric("berth_dns_inflight_rejected_total"), 4.0);
}

#[tokio::test]
async fn big_answer_truncates_over_udp_and_is_whole_over_tcp() {
    let (up, b) = setup().await;
    for i in 0..100u32 {
        up.add_a("big.test.", 300, &format!("45.45.100.{}", i + 1));
    }
    // UDP with the default 1232-byte buffer: TC set (berth itself fetched it over TCP upstream).
    let r = dig(b.addr, &["+ignore", "big.test", "A"]).await;
    assert!(r.has_flag("tc"), "{}", r.raw);
    assert!(r.answers.len() < 100);
    let r = dig(b.addr, &["+ignore", "+noedns", "big.test", "A"]).await;
    assert!(r.has_flag("tc"), "{}", r.raw);
    let r = dig(b.addr, &["+tcp", "big.test", "A"]).await;
    assert!(!r.has_flag("tc"));
    assert_eq!(r.answers.len(), 100, "{}", r.raw);
    // Plain dig retries over TCP by itself on TC and gets everything.
    let r = dig(b.addr, &["big.test", "A"]).await;
    assert_eq!(r.answers.len(), 100);
}

fn query_bytes(id: u16, name: &str, t: RecordType) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_str(name).unwrap(), t));
    m.to_vec().unwrap()
}

async fn udp_exchange(sock: &UdpSocket, server: SocketAddr, pkt: &[u8]) -> Option<Vec<u8>> {
    sock.send_to(pkt, server).await.ok()?;
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(Duration::from_millis(300), sock.recv_from(&mut buf)).await {
        Ok(Ok((n, _))) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

#[tokio::test]
async fn malformed_and_fuzzed_packets_never_crash() {
    let (up, b) = setup().await;
    up.add_a("ok.test.", 60, "45.45.2.1");
    b.zone
        .replace(BTreeMap::from([(sid(1), "172.19.2.11".parse().unwrap())]));
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let good = query_bytes(0x1234, "server1.berth.internal.", RecordType::A);

    // Hand-made cases.
    let mut two_questions = Message::new(7, MessageType::Query, OpCode::Query);
    two_questions.add_query(Query::query(
        Name::from_str("a.test.").unwrap(),
        RecordType::A,
    ));
    two_questions.add_query(Query::query(
        Name::from_str("b.test.").unwrap(),
        RecordType::A,
    ));
    let mut bad_label = good.clone();
    bad_label[12] = 0xC0; // compression pointer pointing at itself/garbage
    bad_label[13] = 0x0C;
    let mut truncated = good.clone();
    truncated.truncate(good.len() - 3);
    let mut response_bit = good.clone();
    response_bit[2] |= 0x80;
    let mut notify = good.clone();
    notify[2] = (notify[2] & 0x87) | (4 << 3); // opcode NOTIFY
    let cases: Vec<(&str, Vec<u8>, Option<ResponseCode>)> = vec![
        ("empty", vec![], None),
        ("short header", vec![1, 2, 3], None),
        ("truncated question", truncated, Some(ResponseCode::FormErr)),
        ("bad compression", bad_label, Some(ResponseCode::FormErr)),
        (
            "two questions",
            two_questions.to_vec().unwrap(),
            Some(ResponseCode::FormErr),
        ),
        ("response bit set", response_bit, None),
        ("notify opcode", notify, Some(ResponseCode::NotImp)),
    ];
    for (what, pkt, want) in cases {
        let resp = udp_exchange(&sock, b.addr, &pkt).await;
        match want {
            None => assert!(resp.is_none(), "{what}: expected no answer"),
            Some(code) => {
                let m = Message::from_vec(&resp.unwrap_or_else(|| panic!("{what}: no answer")))
                    .unwrap();
                assert_eq!(m.metadata.response_code, code, "{what}");
            }
        }
    }

    // Random mutations of a valid query, and random garbage.
    use rand::Rng;
    let mut rng = rand::rng();
    for i in 0..2000 {
        let pkt: Vec<u8> = if i % 2 == 0 {
            let mut p = good.clone();
            for _ in 0..rng.random_range(1..6) {
                let at = rng.random_range(0..p.len());
                p[at] = rng.random();
            }
            if rng.random_bool(0.2) {
                p.truncate(rng.random_range(0..p.len()));
            }
            p
        } else {
            let len = rng.random_range(0..600);
            (0..len).map(|_| rng.random()).collect()
        };
        let _ = sock.send_to(&pkt, b.addr).await;
    }
    // Drain replies so the next exchange reads its own.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut buf = vec![0u8; 4096];
    while let Ok(Ok(_)) =
        tokio::time::timeout(Duration::from_millis(50), sock.recv_from(&mut buf)).await
    {}

    // Garbage over TCP: a length prefix larger than what follows, then close.
    let mut t = TcpStream::connect(b.addr).await.unwrap();
    t.write_all(&[0xff, 0xff, 1, 2, 3]).await.unwrap();
    drop(t);
    let mut t = TcpStream::connect(b.addr).await.unwrap();
    t.write_all(&[0, 3, 1, 2, 3]).await.unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_millis(500), t.read_to_end(&mut sink)).await;

    // Still serving, over both transports.
    let r = dig(b.addr, &["server1.berth.internal", "A"]).await;
    assert_eq!(r.data(), vec!["172.19.2.11"], "{}", r.raw);
    let r = dig(b.addr, &["+tcp", "ok.test", "A"]).await;
    assert_eq!(r.data(), vec!["45.45.2.1"], "{}", r.raw);
}

/// The per-client limit guards the general path and the upstreams: a client over it gets
/// REFUSED for every query that would reach them, while what the UDP worker answers from
/// memory — tenant names and fresh cache hits — keeps being answered and spends no token.
#[tokio::test]
async fn per_client_rate_limit_refuses_floods_of_misses_not_answers_from_memory() {
    let up = FakeUpstream::start().await;
    up.add_a("cached.test.", 300, "45.45.1.1");
    let mut cfg = test_config(&[up.addr]);
    cfg.rate_limit_qps = 5;
    cfg.rate_limit_burst = 5;
    let b = Berth::start(cfg).await;
    b.zone
        .replace(BTreeMap::from([(sid(1), "172.19.2.11".parse().unwrap())]));
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let rcode = |r: Vec<u8>| Message::from_vec(&r).unwrap().metadata.response_code;
    // One miss fills the cache (and spends one of the five tokens).
    let r = udp_exchange(
        &sock,
        b.addr,
        &query_bytes(1, "cached.test.", RecordType::A),
    )
    .await;
    assert_eq!(r.map(rcode), Some(ResponseCode::NoError));
    let start = Instant::now();
    let (mut refused, mut answered) = (0, 0);
    for i in 0..30u16 {
        let pkt = query_bytes(i, &format!("miss{i}.test."), RecordType::A);
        if let Some(r) = udp_exchange(&sock, b.addr, &pkt).await {
            match rcode(r) {
                ResponseCode::Refused => refused += 1,
                _ => answered += 1,
            }
        }
    }
    let budget = 4 + (start.elapsed().as_secs_f64() * 5.0).ceil() as i32;
    assert!(
        (4..=budget).contains(&answered),
        "answered {answered} misses"
    );
    assert!(refused >= 30 - budget, "refused {refused}");
    // Over its limit, the client still gets its tenant names and cache hits.
    for i in 0..30u16 {
        for (name, want) in [
            ("server1.berth.internal.", "172.19.2.11"),
            ("CaChEd.test.", "45.45.1.1"),
        ] {
            let r = udp_exchange(&sock, b.addr, &query_bytes(i, name, RecordType::A))
                .await
                .unwrap_or_else(|| panic!("no answer for {name}"));
            let m = Message::from_vec(&r).unwrap();
            assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
            assert_eq!(m.metadata.id, i);
            assert!(m.queries[0].name().to_ascii().eq_ignore_ascii_case(name));
            match &m.answers[..] {
                [a] => assert_eq!(a.data, RData::A(want.parse().unwrap()), "{name}"),
                other => panic!("{name}: {other:?}"),
            }
        }
    }
    // And it is still limited for what would reach the general path.
    let r = udp_exchange(
        &sock,
        b.addr,
        &query_bytes(99, "miss99.test.", RecordType::A),
    )
    .await;
    assert_eq!(r.map(rcode), Some(ResponseCode::Refused));
    assert!(b.metric("berth_dns_responses_total{outcome=\"rate_limited\"}") >= 20.0);
    assert!(b.metric("berth_dns_responses_total{outcome=\"local\"}") >= 30.0);
}

/// A client over its limit costs the UDP worker a bucket lookup and a REFUSED it writes
/// itself: its cache misses never become tasks on the runtime (each a parse, an allocation and
/// a wake-up a flood would otherwise buy for free).
#[tokio::test]
async fn rate_limited_misses_never_become_tasks() {
    let up = FakeUpstream::start().await;
    let mut cfg = test_config(&[up.addr]);
    cfg.rate_limit_qps = 1;
    cfg.rate_limit_burst = 3;
    let b = Berth::start(cfg).await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    const N: u16 = 120;
    let start = Instant::now();
    let mut refused = 0u64;
    for i in 0..N {
        // Every name is new: each query is a cache miss.
        let pkt = query_bytes(i, &format!("miss{i}.example.test."), RecordType::A);
        if let Some(r) = udp_exchange(&sock, b.addr, &pkt).await {
            let m = Message::from_vec(&r).unwrap();
            assert_eq!(m.metadata.id, i);
            if m.metadata.response_code == ResponseCode::Refused {
                assert_eq!(m.queries.len(), 1, "REFUSED echoes the question");
                assert_eq!(
                    m.queries[0].name().to_ascii(),
                    format!("miss{i}.example.test.")
                );
                refused += 1;
            }
        }
    }
    let tasks = b.metric("berth_dns_udp_tasks_total");
    // What the bucket can have let through: the burst plus one token per second elapsed.
    let admitted = 3.0 + start.elapsed().as_secs_f64().ceil() + 1.0;
    assert!(
        tasks <= admitted,
        "{tasks} tasks for {N} queries from a client limited to ~{admitted}"
    );
    let limited = b.metric("berth_dns_responses_total{outcome=\"rate_limited\"}");
    assert!(
        limited >= f64::from(N) - admitted,
        "rate_limited {limited} of {N} (admitted at most {admitted})"
    );
    assert!(refused > 0, "no REFUSED reached the client");
    // Junk and responses cost neither a token nor a task.
    let tasks_before = b.metric("berth_dns_udp_tasks_total");
    let mut response = query_bytes(7, "x.example.test.", RecordType::A);
    response[2] |= 0x80;
    for pkt in [&[1u8, 2, 3][..], &response[..]] {
        sock.send_to(pkt, b.addr).await.unwrap();
    }
    let r = udp_exchange(
        &sock,
        b.addr,
        &query_bytes(9, "y.example.test.", RecordType::A),
    )
    .await;
    assert!(r.is_some(), "no answer after junk");
    assert!(b.metric("berth_dns_udp_tasks_total") - tasks_before <= 1.0);
}

/// The section of `dig`'s output holding records of `rtype` (answer or authority lines).
fn dig_lines(raw: &str, rtype: &str) -> Vec<String> {
    raw.lines()
        .filter(|l| !l.starts_with(';'))
        .filter(|l| l.split_whitespace().nth(3) == Some(rtype))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn dnssec_records_for_clients_that_set_do_only_and_cached_apart() {
    let (up, b) = setup().await;
    up.add_signed_a("signed.example.test.", 300, "45.45.2.30");

    // DO=1: the DO bit goes upstream and RRSIG comes back, DO echoed.
    let r = dig(b.addr, &["+dnssec", "signed.example.test", "A"]).await;
    assert_eq!(r.status, "NOERROR", "{}", r.raw);
    assert_eq!(dig_lines(&r.raw, "A").len(), 1, "{}", r.raw);
    assert_eq!(dig_lines(&r.raw, "RRSIG").len(), 1, "{}", r.raw);
    assert!(r.raw.contains("flags: do;"), "{}", r.raw);
    assert_eq!(up.do_queries(), 1);

    // DO=0 (with and without EDNS): no RRSIG, and asked upstream without DO.
    for args in [
        &["signed.example.test", "A"][..],
        &["+noedns", "signed.example.test", "A"],
    ] {
        let r = dig(b.addr, args).await;
        assert_eq!(dig_lines(&r.raw, "A").len(), 1, "{}", r.raw);
        assert!(dig_lines(&r.raw, "RRSIG").is_empty(), "{args:?}: {}", r.raw);
    }
    assert_eq!(up.do_queries(), 1);
    assert_eq!(up.queries(), 2, "one upstream query per DO value");

    // Both variants are cached: neither asks upstream again, each keeps its own records, and a
    // 0x20-randomised question comes back spelled as asked.
    let r = dig(b.addr, &["+dnssec", "SiGnEd.ExAmPlE.tEsT", "A"]).await;
    assert_eq!(dig_lines(&r.raw, "RRSIG").len(), 1, "{}", r.raw);
    assert!(r.raw.contains(";SiGnEd.ExAmPlE.tEsT.\t"), "{}", r.raw);
    let r = dig(b.addr, &["signed.example.test", "A"]).await;
    assert!(dig_lines(&r.raw, "RRSIG").is_empty(), "{}", r.raw);
    assert_eq!(up.queries(), 2, "served from the cache");

    // Negative answers: NSEC in the authority section for DO=1 only.
    let r = dig(b.addr, &["+dnssec", "missing.example.test", "A"]).await;
    assert_eq!(r.status, "NXDOMAIN", "{}", r.raw);
    assert_eq!(dig_lines(&r.raw, "NSEC").len(), 1, "{}", r.raw);
    let r = dig(b.addr, &["missing.example.test", "A"]).await;
    assert_eq!(r.status, "NXDOMAIN", "{}", r.raw);
    assert!(dig_lines(&r.raw, "NSEC").is_empty(), "{}", r.raw);

    // Over TCP (hickory's path) the same split holds.
    let r = dig(b.addr, &["+tcp", "+dnssec", "signed.example.test", "A"]).await;
    assert_eq!(dig_lines(&r.raw, "RRSIG").len(), 1, "{}", r.raw);
    let r = dig(b.addr, &["+tcp", "signed.example.test", "A"]).await;
    assert!(dig_lines(&r.raw, "RRSIG").is_empty(), "{}", r.raw);
}

#[tokio::test]
async fn aaaa_and_ipv6_ptr_for_servers_from_a_hosts_file_with_ipv6_lines() {
    // The split deployment's feed: a hosts file with IPv4 and IPv6 lines, as the gateway's
    // process publishes it when the tenant network has IPv6.
    let (_up, b) = setup().await;
    let text = "# berth tenant addresses\n\
                172.19.2.15 server5.berth.internal server5\n\
                fd19::15 server5.berth.internal server5\n\
                fd19::16 server6.berth.internal server6\n";
    let (map, skipped) = dns::zone::parse_hosts(text);
    assert_eq!(skipped, 0);
    b.zone.replace_addrs(map);

    let r = dig(b.addr, &["server5.berth.internal", "AAAA"]).await;
    assert_eq!(r.data(), vec!["fd19::15"], "{}", r.raw);
    assert!(r.has_flag("aa"), "{}", r.raw);
    let r = dig(b.addr, &["server5.berth.internal", "A"]).await;
    assert_eq!(r.data(), vec!["172.19.2.15"], "{}", r.raw);
    // IPv6 only: AAAA answers, A is NODATA (the name exists).
    let r = dig(b.addr, &["server6.berth.internal", "AAAA"]).await;
    assert_eq!(r.data(), vec!["fd19::16"], "{}", r.raw);
    let r = dig(b.addr, &["server6.berth.internal", "A"]).await;
    assert_eq!(
        (r.status.as_str(), r.data().len()),
        ("NOERROR", 0),
        "{}",
        r.raw
    );
    // Reverse: the IPv6 address names its server.
    let r = dig(b.addr, &["-x", "fd19::16"]).await;
    assert_eq!(r.data(), vec!["server6.berth.internal."], "{}", r.raw);
}
