//! The gateway against clients that ignore the protocol's limits: a client writing past the
//! channel window, handshakes stalled in every phase, hundreds of stalled handshakes from many
//! addresses while the owner logs in, and a channel flooded with requests before its exec.
//!
//! The tests of this binary take one lock each: the RSS bound is measured on this process (the
//! process is the gateway), so nothing else may run beside that test.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use integration_tests::gateway::{GatewayHarness, Options};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The login grace time these tests configure.
const GRACE: Duration = Duration::from_secs(3);
/// Closed within grace + this.
const SLACK: Duration = Duration::from_secs(1);
/// Growth of the gateway's RSS allowed while a client pushes 1 GiB past the default window.
const WINDOW_FLOOD_RSS_CEILING_KIB: u64 = 48 * 1024;

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/hostile")
        .join(name)
}

/// The system Python (it has python3-paramiko); a pyenv shim on PATH may not.
fn python() -> &'static str {
    if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

fn run_py(args: &[&str]) -> Result<serde_json::Value> {
    let out: Output = tokio::task::block_in_place(|| {
        Command::new(python())
            .args(args)
            .stdin(Stdio::null())
            .output()
    })
    .context("run python (needs python3-paramiko)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or("");
    serde_json::from_str(line).with_context(|| {
        format!(
            "{} printed no JSON: stdout {stdout:?} stderr {:?}",
            args.first().copied().unwrap_or("python"),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn hostile_opts() -> Options {
    let mut opts = Options::default();
    opts.ssh.auth.login_grace_time_secs = GRACE.as_secs();
    opts
}

/// Reads until EOF or error; returns how long the connection stayed open.
async fn time_until_closed(mut s: TcpStream, started: Instant, limit: Duration) -> Duration {
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + limit).into(), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => return started.elapsed(),
        }
    }
}

/// A minimal, valid SSH_MSG_KEXINIT in binary packet framing (no encryption yet).
fn kexinit_packet() -> Vec<u8> {
    let mut payload = vec![20u8];
    payload.extend_from_slice(&[7u8; 16]);
    for list in [
        "curve25519-sha256",
        "ssh-ed25519",
        "aes128-ctr",
        "aes128-ctr",
        "hmac-sha2-256",
        "hmac-sha2-256",
        "none",
        "none",
        "",
        "",
    ] {
        payload.extend_from_slice(&(list.len() as u32).to_be_bytes());
        payload.extend_from_slice(list.as_bytes());
    }
    payload.push(0);
    payload.extend_from_slice(&0u32.to_be_bytes());
    let mut padding = 8 - (payload.len() + 5) % 8;
    if padding < 4 {
        padding += 8;
    }
    let mut packet = ((payload.len() + padding + 1) as u32)
        .to_be_bytes()
        .to_vec();
    packet.push(padding as u8);
    packet.extend_from_slice(&payload);
    packet.extend(std::iter::repeat_n(0u8, padding));
    packet
}

/// Handshakes stalled in each phase are all closed within grace + 1 s, whatever they send.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_handshakes_are_closed_at_the_deadline() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let h = GatewayHarness::start_with("hostile_stall", hostile_opts()).await?;
    let expired_before = gateway::metrics::LOGIN_GRACE_EXPIRED.get();
    let limit = GRACE * 4;

    // Silent TCP, banner only, banner + KEXINIT, a slowly dripped banner: all at once.
    let silent = TcpStream::connect(h.addr).await?;
    let mut banner = TcpStream::connect(h.addr).await?;
    banner.write_all(b"SSH-2.0-hostile\r\n").await?;
    let mut kex = TcpStream::connect(h.addr).await?;
    kex.write_all(b"SSH-2.0-hostile\r\n").await?;
    kex.write_all(&kexinit_packet()).await?;
    let started = Instant::now();
    let drip = TcpStream::connect(h.addr).await?;
    let (mut drip_rd, mut drip_wr) = drip.into_split();
    let dripping = tokio::spawn(async move {
        for b in b"SSH-2.0-".iter().chain([b'a'; 200].iter()) {
            if drip_wr.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    let drip_closed = async move {
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout_at((started + limit).into(), drip_rd.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return started.elapsed(),
                Ok(Ok(_)) => {}
            }
        }
    };
    let ignore = {
        let port = h.addr.port().to_string();
        let limit = limit.as_secs().to_string();
        tokio::spawn(async move {
            run_py(&[
                script("ignore_flood.py").to_str().unwrap_or_default(),
                "127.0.0.1",
                &port,
                &limit,
            ])
        })
    };
    let (t_silent, t_banner, t_kex, t_drip) = tokio::join!(
        time_until_closed(silent, started, limit),
        time_until_closed(banner, started, limit),
        time_until_closed(kex, started, limit),
        drip_closed,
    );
    dripping.abort();
    let ignore = ignore.await??;
    let open_for = ignore["open_for"].as_f64().unwrap_or(f64::MAX);
    eprintln!(
        "closed after: silent {t_silent:?}, banner {t_banner:?}, banner+kexinit {t_kex:?}, \
         drip {t_drip:?}, ignore flood {open_for}s ({ignore})"
    );
    for (what, t) in [
        ("silent", t_silent),
        ("banner only", t_banner),
        ("banner + KEXINIT", t_kex),
        ("slow drip", t_drip),
        ("IGNORE flood", Duration::from_secs_f64(open_for.min(1e6))),
    ] {
        assert!(
            t <= GRACE + SLACK,
            "{what}: open for {t:?}, deadline {GRACE:?} + {SLACK:?}"
        );
        // Closed by the deadline, not by something else earlier (e.g. a parse error).
        assert!(
            t >= GRACE - Duration::from_millis(500),
            "{what}: closed after only {t:?}"
        );
    }
    assert_eq!(ignore["still_active"], false, "{ignore}");
    assert!(
        ignore["ignores"].as_u64().unwrap_or(0) >= 10,
        "the IGNORE flood never got going: {ignore}"
    );
    let expired = gateway::metrics::LOGIN_GRACE_EXPIRED.get() - expired_before;
    assert!(expired >= 5, "grace expiries counted: {expired}");
    // Every unauthenticated slot was released.
    let deadline = Instant::now() + Duration::from_secs(3);
    while gateway::metrics::UNAUTHENTICATED.get() != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(gateway::metrics::UNAUTHENTICATED.get(), 0);
    Ok(())
}

async fn connect_from(src: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
    s.connect(to).await
}

/// Waits until `berth_gateway_unauthenticated` reads `want` (the gateway admits or refuses
/// asynchronously after the TCP handshake); errors with the last reading after `limit`.
async fn unauthenticated_reaches(want: i64, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let now = gateway::metrics::UNAUTHENTICATED.get();
        if now == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("unauthenticated connections: {now}, expected {want}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Opens a stalled handshake from `src` (version line only) and reports whether the gateway
/// admitted it: an admitted connection gets the server's version line, a refused one is closed
/// before any byte.
async fn stalled_from(src: Ipv4Addr, to: SocketAddr) -> Result<(TcpStream, bool)> {
    let mut s = connect_from(src, to).await?;
    let _ = s.write_all(b"SSH-2.0-stall\r\n").await;
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !got.contains(&b'\n') {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => bail!("{src}: neither a version line nor a close within 10 s"),
        }
    }
    Ok((s, got.starts_with(b"SSH-2.0-")))
}

/// 400 stalled handshakes from 200 loopback addresses fill the unauthenticated cap exactly, so
/// a stranger is refused; another server's account, logged in from eight addresses, then holds
/// only two reserve slots with 32 stalled handshakes; the owner, from the address they last
/// logged in from, still gets in (only the reserve is left); a reserve connection naming a
/// server its source never logged in to is dropped and its slot freed; every slot is released
/// within grace + 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_handshakes_from_many_addresses_do_not_lock_out_the_owner() -> Result<()> {
    let _serial = SERIAL.lock().await;
    // Longer than the other tests' grace: everything below must happen while the flood holds
    // the cap, on a loaded machine too.
    let grace = Duration::from_secs(10);
    let mut opts = hostile_opts();
    opts.ssh.auth.login_grace_time_secs = grace.as_secs();
    opts.ssh.auth.max_unauthenticated = 128;
    let h = GatewayHarness::start_with("hostile_many", opts).await?;
    let other = h
        .provisioner
        .create_server(&h.account, tenants::ServerSpec::default())
        .await
        .map_err(|e| anyhow::anyhow!("create the second server: {e}"))?
        .id
        .login_name();
    let owner_src = "127.0.0.4";
    let login = |h: &GatewayHarness, src: &str, user: &str| -> Result<Output> {
        let mut c = h.ssh();
        c.args(["-o", &format!("BindAddress={src}")])
            .arg(format!("{user}@127.0.0.1"))
            .arg("echo logged-in");
        tokio::task::block_in_place(|| c.output()).context("ssh")
    };
    let ok = |out: &Output| {
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("logged-in")
    };
    // The owner's usual address: one successful login.
    let out = login(&h, owner_src, &h.user())?;
    assert!(ok(&out), "{}", String::from_utf8_lossy(&out.stderr));
    // The other server's account logs in from eight addresses: all trusted for that server.
    let account_srcs: Vec<Ipv4Addr> = (1..=8).map(|i| Ipv4Addr::new(127, 0, 3, i)).collect();
    for src in &account_srcs {
        let out = login(&h, &src.to_string(), &other)?;
        assert!(ok(&out), "{src}: {}", String::from_utf8_lossy(&out.stderr));
    }
    unauthenticated_reaches(0, Duration::from_secs(5)).await?;

    let started = Instant::now();
    let mut held = Vec::new();
    let mut refused = 0;
    for i in 0..400u32 {
        let src = Ipv4Addr::new(127, 0, 1, (10 + i % 200) as u8);
        match connect_from(src, h.addr).await {
            Ok(mut s) => {
                let _ = s.write_all(b"SSH-2.0-stall\r\n").await;
                held.push(s);
            }
            Err(_) => refused += 1,
        }
    }
    // The cap is full, exactly: strangers hold every regular slot and a new one is refused.
    unauthenticated_reaches(128, Duration::from_secs(10)).await?;
    eprintln!(
        "{} stalled connections opened ({refused} refused at connect), 128 hold a slot",
        held.len()
    );
    let (_stranger, admitted) = stalled_from(Ipv4Addr::new(127, 0, 2, 1), h.addr).await?;
    assert!(!admitted, "a stranger was admitted beyond the full cap");

    // The other account's eight addresses try 32 stalled handshakes (the whole reserve of a
    // quarter of 128): two are admitted, charged to its server.
    let mut reserve_held = Vec::new();
    for src in &account_srcs {
        for _ in 0..4 {
            let (s, admitted) = stalled_from(*src, h.addr).await?;
            if admitted {
                reserve_held.push(s);
            }
        }
    }
    assert_eq!(
        reserve_held.len(),
        gateway::auth::limits::RESERVE_PER_SERVER,
        "reserve slots held by one server's trusted addresses"
    );
    assert_eq!(gateway::metrics::UNAUTHENTICATED.get(), 130);

    // The owner gets in: only through the reserve.
    let t = Instant::now();
    let out = login(&h, owner_src, &h.user())?;
    let took = t.elapsed();
    assert!(
        ok(&out),
        "owner login during the flood: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("owner login during the flood took {took:?}");

    // A reserve slot must be used for a server its source logged in to: with the account's
    // share free again, its address asking for the owner's server is dropped.
    drop(reserve_held);
    unauthenticated_reaches(128, Duration::from_secs(10)).await?;
    let out = login(&h, &account_srcs[0].to_string(), &h.user())?;
    assert!(
        !ok(&out),
        "a reserve connection logged in to a server its source never used"
    );
    unauthenticated_reaches(128, Duration::from_secs(10)).await?;
    // …while asking for its own server works.
    let out = login(&h, &account_srcs[0].to_string(), &other)?;
    assert!(ok(&out), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        started.elapsed() < grace,
        "the logins must happen while the flood holds the cap"
    );
    assert_eq!(gateway::metrics::UNAUTHENTICATED.get(), 128);

    // At grace + 1 s every stalled connection is closed and its slot released.
    let waits = held
        .into_iter()
        .map(|s| time_until_closed(s, started, grace * 2));
    let closed = futures::future::join_all(waits).await;
    let latest = closed.iter().max().copied().unwrap_or_default();
    assert!(
        latest <= grace + SLACK + Duration::from_millis(500),
        "the last stalled connection closed after {latest:?}"
    );
    unauthenticated_reaches(0, Duration::from_secs(2)).await?;
    Ok(())
}

/// A client that writes past the channel window is cut off and audited; the gateway's memory
/// stays within a stated bound while it tries to push 1 GiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_ignoring_the_window_is_disconnected_with_bounded_memory() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let h = GatewayHarness::start_with("hostile_window", hostile_opts()).await?;
    let violations_before = gateway::metrics::PROTOCOL_VIOLATIONS.get(0);
    let base = GatewayHarness::rss_kib()?;
    let peak = Arc::new(AtomicU64::new(base));
    let stop = Arc::new(AtomicBool::new(false));
    // Ends with an error when RSS cannot be read, and the test fails with it.
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || -> Result<()> {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(GatewayHarness::rss_kib()?, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(())
        })
    };
    let port = h.addr.port().to_string();
    let key = h.key.display().to_string();
    let user = h.user();
    let gib = (1u64 << 30).to_string();
    let report = run_py(&[
        script("window_flood.py").to_str().unwrap_or_default(),
        "127.0.0.1",
        &port,
        &user,
        &key,
        &gib,
    ]);
    stop.store(true, Ordering::Relaxed);
    sampler
        .join()
        .map_err(|_| anyhow::anyhow!("the RSS sampler panicked"))??;
    let report = report?;
    let growth = peak.load(Ordering::Relaxed).saturating_sub(base);
    eprintln!("window flood: {report}; gateway RSS {base} KiB, peak growth {growth} KiB");
    assert_eq!(report["active"], false, "still connected: {report}");
    let sent = report["sent"].as_u64().unwrap_or(u64::MAX);
    assert!(
        sent < 64 << 20,
        "the client pushed {sent} bytes before being cut off (window 2 MiB): {report}"
    );
    assert!(
        growth < WINDOW_FLOOD_RSS_CEILING_KIB,
        "gateway RSS grew by {growth} KiB (bound {WINDOW_FLOOD_RSS_CEILING_KIB} KiB)"
    );
    assert_eq!(
        gateway::metrics::PROTOCOL_VIOLATIONS.get(0),
        violations_before + 1,
        "the violation is counted"
    );
    // And audited, with who did it.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let audit = h.store.audit_events(100).await?;
        if let Some(r) = audit
            .iter()
            .find(|r| r.event.outcome == "protocol_violation")
        {
            assert_eq!(
                r.event.detail["violation"], "window_exceeded",
                "{:?}",
                r.event
            );
            assert_eq!(r.event.server.map(|s| s.login_name()), Some(user.clone()));
            break;
        }
        if Instant::now() > deadline {
            bail!("no protocol_violation audit record in {audit:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The gateway still serves.
    let out = h.ssh_exec("echo still-serving", b"")?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "still-serving\n");
    Ok(())
}

/// Hundreds of env, pty-req and window-change requests and 4 MiB of data before exec: the
/// excess env requests are refused, another channel of the same connection runs a command,
/// keepalives are answered, and the flooded channel can still exec afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_flood_before_exec_does_not_freeze_the_connection() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let h = GatewayHarness::start_with("hostile_preexec", hostile_opts()).await?;
    let n = 300;
    let report = run_py(&[
        script("preexec_flood.py").to_str().unwrap_or_default(),
        "127.0.0.1",
        &h.addr.port().to_string(),
        &h.user(),
        &h.key.display().to_string(),
        &n.to_string(),
    ])?;
    eprintln!("pre-exec flood: {report}");
    assert_eq!(report["alive"], "alive", "{report}");
    assert_eq!(report["late"], "late", "{report}");
    assert_eq!(report["active"], true, "{report}");
    assert!(
        report["alive_after"].as_f64().unwrap_or(f64::MAX) < 10.0,
        "{report}"
    );
    assert!(
        report["keepalive"].as_f64().unwrap_or(f64::MAX) < 5.0,
        "{report}"
    );
    // 300 env (64 accepted, the rest refused) + 300 pty-req (accepted) + exec replies.
    let failed = report["failed"].as_u64().unwrap_or(0);
    assert!(failed >= (n - 64) as u64, "refusals: {report}");
    Ok(())
}

/// Every tracing event of this binary from the first call on (info, and debug for the gateway),
/// so a test can measure what one connection made the gateway write.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
    fn since(&self, from: usize) -> String {
        let all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(all.get(from..).unwrap_or_default()).into_owned()
    }
}

fn captured_logs() -> Result<&'static Captured> {
    static LOGS: std::sync::OnceLock<Option<Captured>> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info,gateway=debug"))
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .ok()
            .map(|()| captured)
    })
    .as_ref()
    .context("another subscriber was installed first (unset BERTH_TEST_LOG for this test)")
}

/// A client sends 1000 forward requests to a 30 000-character host full of escape sequences and
/// newlines, then 200 env and 200 subsystem requests with names like it: the log lines and audit
/// records the connection causes stay within its budget, each bounded and escaped, and every
/// record not written is counted in the connection's closing summary.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenant_text_floods_leave_a_bounded_log_and_audit_trail() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let logs = captured_logs()?;
    let h = GatewayHarness::start_with("hostile_text", hostile_opts()).await?;
    let (forwards, requests) = (1000u64, 200u64);
    let from = logs.len();
    let started = Instant::now();
    let report = run_py(&[
        script("tenant_text_flood.py").to_str().unwrap_or_default(),
        "127.0.0.1",
        &h.addr.port().to_string(),
        &h.user(),
        &h.key.display().to_string(),
        &forwards.to_string(),
        &requests.to_string(),
    ])?;
    eprintln!("tenant text flood: {report}");
    assert_eq!(report["refused"], forwards, "{report}");
    assert_eq!(report["exit"], 0, "{report}");

    // Audit: every forward refusal and the exec is either written or counted, in the next
    // record written (`suppressed_records`) or the connection's closing summary (`records`).
    let account = |audit: &[tenants::AuditEntry]| -> (Vec<tenants::AuditEntry>, u64) {
        let rows: Vec<_> = audit
            .iter()
            .filter(|r| r.event.kind == tenants::AuditKind::Session)
            .cloned()
            .collect();
        let counted = rows
            .iter()
            .map(|r| {
                r.event.detail["suppressed_records"].as_u64().unwrap_or(0)
                    + r.event.detail["records"].as_u64().unwrap_or(0)
            })
            .sum::<u64>();
        let written = rows
            .into_iter()
            .filter(|r| r.event.outcome != "suppressed")
            .collect();
        (written, counted)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let (written, counted) = loop {
        let audit = h.store.audit_events(100_000).await?;
        let (written, counted) = account(&audit);
        if written.len() as u64 + counted == forwards + 1 {
            break (written, counted);
        }
        if Instant::now() > deadline {
            bail!(
                "{} records written and {counted} counted, expected {} in all",
                written.len(),
                forwards + 1
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let took = started.elapsed();
    let text = logs.since(from);
    // What the budget allows over the run: a burst, then one per period.
    let allowed = |burst: u32, every: Duration| -> u64 {
        u64::from(burst) + took.as_secs() / every.as_secs().max(1) + 1
    };
    let audit_allowed = allowed(
        gateway::audit::Budget::AUDIT_BURST,
        gateway::audit::Budget::AUDIT_EVERY,
    );
    let log_allowed = allowed(
        gateway::audit::Budget::LOG_BURST,
        gateway::audit::Budget::LOG_EVERY,
    );
    assert!(
        (written.len() as u64) <= audit_allowed,
        "{} audit records written in {took:?} (budget {audit_allowed})",
        written.len()
    );
    for r in &written {
        let detail = r.event.detail.to_string();
        assert!(
            detail.len() <= gateway::audit::MAX_DETAIL_BYTES,
            "{} bytes",
            detail.len()
        );
        if let Some(host) = r.event.detail["host"].as_str() {
            assert!(
                host.chars().count() <= 12 * gateway::audit::MAX_FIELD_CHARS,
                "host of {} chars",
                host.chars().count()
            );
            assert!(
                !host.contains(['\u{1b}', '\n', '\u{7}']),
                "raw control characters in {host:?}"
            );
        }
    }

    // Log: lines about this connection within its budget, none raw, and small in total.
    let refusals = text.matches("direct-tcpip refused").count() as u64;
    let env = text.matches("env variable not passed").count() as u64;
    let subsystem = text.matches("subsystem refused").count() as u64;
    assert!(
        refusals + env + subsystem <= log_allowed,
        "{refusals} forward, {env} env and {subsystem} subsystem lines in {took:?} (budget {log_allowed})"
    );
    assert!(
        text.contains("suppressed"),
        "the closing summary is in the log (the capture works)"
    );
    assert!(
        !text.lines().any(|l| l.starts_with("forged log line")),
        "a client's newline started a log line of its own"
    );
    assert!(!text.contains('\u{1b}'), "raw escape sequences in the log");
    let bytes = text.len();
    eprintln!(
        "{} audit records written, {counted} counted; {bytes} bytes of log in {took:?}",
        written.len()
    );
    assert!(
        bytes < 4 << 20,
        "{bytes} bytes of log for one connection (the client sent ~40 MB of names)"
    );
    Ok(())
}
