//! The egress filter against a real kernel with real packets, in network namespaces the tests
//! create and delete (see `integration_tests::netfilter`). Needs root, `ip` and `nft`, and a
//! built `target/<profile>/berth`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use integration_tests::netfilter::*;

/// Paths from t1 that must work and paths that must not, for a dual-stack tenant network with
/// the testbed's allowlist (`10.0.0.10:8443`, `11.0.0.1:5000`).
fn paths(ipv6: bool) -> (Vec<Probe>, Vec<Probe>) {
    let mut reach = vec![
        tcp(PUBLIC_V4, 8080),
        udp(PUBLIC_V4, 8053),
        tcp(GW_V4, 53),
        udp(GW_V4, 53),
        tcp("10.0.0.10", 8443),
        tcp(HOST_UPLINK_V4, 5000),
    ];
    let mut blocked: Vec<Probe> = DENIED_OUTSIDE.iter().map(|a| tcp(a, 8080)).collect();
    blocked.extend([
        udp("10.0.0.10", 8053),
        udp("169.254.169.254", 8053),
        udp("fd00::10", 8053),
        // The host's control plane, on every host address, and other host services.
        tcp(GW_V4, 2222),
        tcp(HOST_UPLINK_V4, 2222),
        tcp(GW_V6, 2222),
        tcp(HOST_UPLINK_V6, 2222),
        tcp(GW_V4, 5000),
        udp(GW_V4, 8053),
        // The other tenant: routed, bridged, IPv6, link-local.
        tcp(T2_V4, 8080),
        udp(T2_V4, 8053),
        tcp("fd19:2::12", 8080),
        Probe::TcpLinkLocal(T2_LL.parse().unwrap_or(std::net::Ipv6Addr::LOCALHOST), 8080),
        // A source outside the tenant subnet.
        Probe::UdpFrom(
            SPOOF_V4
                .parse()
                .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0])),
            "45.45.45.45:8053"
                .parse()
                .unwrap_or_else(|_| ([0, 0, 0, 0], 0).into()),
        ),
    ]);
    let v6_public = [
        tcp(PUBLIC_V6, 8080),
        udp(PUBLIC_V6, 8053),
        tcp(GW_V6, 53),
        udp(GW_V6, 53),
    ];
    if ipv6 {
        reach.extend(v6_public);
    } else {
        blocked.extend(v6_public);
    }
    (reach, blocked)
}

fn all(v: &(Vec<Probe>, Vec<Probe>)) -> Vec<Probe> {
    v.0.iter().chain(&v.1).cloned().collect()
}

fn isolated(tb: &Testbed, port: &str) -> Result<bool> {
    let out = sh(&["bridge", "-n", &tb.host, "-d", "link", "show", "dev", port])?;
    Ok(String::from_utf8_lossy(&out.stdout).contains("isolated on"))
}

/// Docker-style rules: policy-drop FORWARD that ACCEPTs the bridge (Docker's own shape), plus
/// an even earlier chain that accepts everything from the bridge. Neither may undo our drops.
const DOCKER_STYLE: &str = r#"
table ip filter {
    chain INPUT { type filter hook input priority filter; policy accept; iifname "berth0" accept; }
    chain FORWARD { type filter hook forward priority filter; policy drop; iifname "berth0" accept; oifname "berth0" accept; iifname "up0" accept; }
}
table ip6 filter {
    chain INPUT { type filter hook input priority filter; policy accept; iifname "berth0" accept; }
    chain FORWARD { type filter hook forward priority filter; policy drop; iifname "berth0" accept; oifname "berth0" accept; iifname "up0" accept; }
}
table inet early {
    chain early_forward { type filter hook forward priority -300; policy accept; iifname "berth0" accept; }
    chain early_input { type filter hook input priority -300; policy accept; iifname "berth0" accept; }
}
"#;

#[test]
fn netfilter_blocks_every_leak_with_and_without_br_netfilter_and_docker_accept() -> Result<()> {
    let tb = Testbed::new("leaks")?;
    let dir = tempfile::tempdir()?;
    let cfg = write_config(dir.path(), true, "")?;
    write_ports(dir.path(), &ports_json(&tb, &["t1", "t2"]))?;
    let p = paths(true);

    // Without berth's rules every path answers: each "blocked" below is the ruleset's doing.
    tb.expect(&tb.t1, "baseline without rules", &all(&p), &[])?;

    let (code, out, err) = tb.berth(&cfg, &["netfilter", "apply"])?;
    ensure!(code == 0, "apply failed ({code}): {out}{err}");
    ensure!(out.contains("applied table inet berth"), "{out}");
    ensure!(
        isolated(&tb, "veth-t1")? && isolated(&tb, "veth-t2")?,
        "ports not isolated"
    );

    tb.set_br_netfilter(false)?;
    tb.expect(&tb.t1, "br_netfilter off", &p.0, &p.1)?;

    // Replies pass even to a denied address: a client on a private network may use a tenant's
    // service (e.g. a published port); only what tenants initiate is filtered.
    let from_private = |port| {
        Probe::UdpFrom(
            "10.0.0.10"
                .parse()
                .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0])),
            std::net::SocketAddr::from(([172, 19, 2, 11], port)),
        )
    };
    tb.expect(
        &tb.out,
        "inbound from a private address",
        &[from_private(8053)],
        &[],
    )?;
    tb.set_br_netfilter(true)?;
    tb.expect(&tb.t1, "br_netfilter on", &p.0, &p.1)?;

    tb.host_nft_text(DOCKER_STYLE)?;
    for on in [true, false] {
        tb.set_br_netfilter(on)?;
        tb.expect(
            &tb.t1,
            &format!("docker-style accept, br_netfilter {on}"),
            &p.0,
            &p.1,
        )?;
    }
    // t2 → t1 is as closed as t1 → t2.
    tb.expect(
        &tb.t2,
        "t2 to t1",
        &[],
        &[tcp(T1_V4, 8080), udp(T1_V4, 8053)],
    )?;

    // Idempotent: a second apply succeeds, leaves one copy of each table, and check agrees.
    let (code, out, err) = tb.berth(&cfg, &["netfilter", "apply"])?;
    ensure!(code == 0, "second apply failed ({code}): {out}{err}");
    let tables = tb.host_nft(&["list", "tables"])?;
    ensure!(tables.matches("table inet berth").count() == 1, "{tables}");
    ensure!(
        tables.matches("table bridge berth").count() == 1,
        "{tables}"
    );
    ensure!(
        tables.contains("table ip filter"),
        "our apply touched Docker's table: {tables}"
    );
    let (code, out, err) = tb.berth(&cfg, &["netfilter", "check"])?;
    ensure!(code == 0, "check after apply ({code}): {out}{err}");
    tb.expect(&tb.t1, "after second apply", &p.0, &p.1)?;

    // check sees drift and says what differs.
    tb.host_nft(&["flush", "chain", "inet", "berth", "tenant_input"])?;
    let (code, out, _) = tb.berth(&cfg, &["netfilter", "check"])?;
    ensure!(code == 1, "check must fail on drift, got {code}: {out}");
    ensure!(out.contains("- rule inet berth tenant_input #1"), "{out}");

    let (code, out, _) = tb.berth(&cfg, &["netfilter", "show"])?;
    ensure!(code == 0 && out.contains("chain tenant_forward"), "{out}");
    // The probes since the second apply were counted, per reason.
    let dropped = |family: &str, reason: &str| -> u64 {
        out.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() == 5 && f[0] == "#" && f[1] == family && f[2] == reason)
                    .then(|| f[3].parse().unwrap_or(0))
            })
            .sum()
    };
    // (No bridge "tenant" drops here: isolated ports stop tenant frames before any hook.)
    // A foreign source is stopped at the bridge port now (its own address only).
    for (family, reason) in [("inet", "private"), ("inet", "host"), ("bridge", "spoof")] {
        ensure!(
            dropped(family, reason) > 0,
            "no {family} {reason} drops counted:\n{out}"
        );
    }

    // flush removes exactly our tables and the port isolation.
    let (code, out, err) = tb.berth(&cfg, &["netfilter", "flush"])?;
    ensure!(code == 0, "flush failed ({code}): {out}{err}");
    let tables = tb.host_nft(&["list", "tables"])?;
    ensure!(!tables.contains("berth"), "{tables}");
    ensure!(
        tables.contains("table ip filter") && tables.contains("table inet early"),
        "{tables}"
    );
    ensure!(!isolated(&tb, "veth-t1")?, "isolation not cleared");
    tb.host_nft(&["delete", "table", "ip", "filter"])?;
    tb.host_nft(&["delete", "table", "ip6", "filter"])?;
    tb.host_nft(&["delete", "table", "inet", "early"])?;
    tb.expect(&tb.t1, "after flush", &all(&p), &[])?;
    let (code, _, _) = tb.berth(&cfg, &["netfilter", "check"])?;
    ensure!(code == 1, "check must fail with no tables");
    Ok(())
}

#[test]
fn netfilter_ipv6_off_drops_all_tenant_ipv6() -> Result<()> {
    let tb = Testbed::new("nov6")?;
    let dir = tempfile::tempdir()?;
    let cfg = write_config(dir.path(), false, "")?;
    write_ports(dir.path(), &ports_json(&tb, &["t1", "t2"]))?;
    let p = paths(false);
    tb.expect(&tb.t1, "baseline without rules", &all(&p), &[])?;
    let (code, out, err) = tb.berth(&cfg, &["netfilter", "apply"])?;
    ensure!(code == 0, "apply failed ({code}): {out}{err}");
    tb.expect(&tb.t1, "ipv6 off", &p.0, &p.1)?;
    Ok(())
}

fn wait_check_ok(tb: &Testbed, cfg: &std::path::Path, within: Duration) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let (code, out, _) = tb.berth(cfg, &["netfilter", "check"])?;
        if code == 0 {
            return Ok(start.elapsed());
        }
        if start.elapsed() > within {
            bail!("ruleset not restored within {within:?}:\n{out}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn netfilter_run_restores_the_ruleset_after_a_flush() -> Result<()> {
    let mut tb = Testbed::new("drift")?;
    let dir = tempfile::tempdir()?;
    let cfg = write_config(dir.path(), true, "check_interval_secs = 2\n")?;
    write_ports(dir.path(), &ports_json(&tb, &["t1", "t2"]))?;
    let p = paths(true);
    let pid = tb.spawn_daemon(&cfg)?;
    wait_check_ok(&tb, &cfg, Duration::from_secs(30)).context("daemon never applied")?;
    tb.expect(&tb.t1, "under berth run netfilter", &p.0, &p.1)?;

    // Someone flushes the whole ruleset (an admin, a Docker restart, iptables-restore…).
    // Open a forbidden flow right after the flush; it must be cut once the ruleset is back.
    tb.host_nft(&["flush", "ruleset"])?;
    let sneaky = tb
        .connect(&tb.t1, "10.0.0.10:7".parse()?)
        .ok()
        .and_then(|mut s| echo_ok(&mut s, b"hello").then_some(s));
    let took = wait_check_ok(&tb, &cfg, Duration::from_secs(10))?;
    eprintln!("ruleset restored {took:?} after `nft flush ruleset`");
    tb.expect(&tb.t1, "after restore", &p.0, &p.1)?;
    match sneaky {
        // The flow worked inside the gap: it must be dead now that the ruleset is back.
        Some(mut s) => ensure!(
            !echo_ok(&mut s, b"still there?"),
            "a flow to 10.0.0.10 opened during the gap survived the re-apply"
        ),
        None => eprintln!("no flow got through the gap; the restore was quicker"),
    }

    // Only the bridge table goes away.
    tb.host_nft(&["delete", "table", "bridge", "berth"])?;
    wait_check_ok(&tb, &cfg, Duration::from_secs(10))?;

    // A new tenant port appears: the watch isolates it.
    sh(&[
        "ip", "-n", &tb.host, "link", "add", "veth-t3", "type", "veth", "peer", "name", "p3",
    ])?;
    sh(&[
        "ip", "-n", &tb.host, "link", "set", "veth-t3", "master", "berth0",
    ])?;
    let start = Instant::now();
    while !isolated(&tb, "veth-t3")? {
        ensure!(
            start.elapsed() < Duration::from_secs(10),
            "new port never isolated"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Isolation and the port's entry in the rules come from separate passes: let both land
    // before stopping the daemon.
    wait_check_ok(&tb, &cfg, Duration::from_secs(10))?;

    // SIGHUP re-reads the config: a new deny entry is in force without a restart.
    let cfg = write_config(
        dir.path(),
        true,
        "check_interval_secs = 2\nextra_deny = [\"9.9.9.0/24\"]\n",
    )?;
    let (code, _, _) = tb.berth(&cfg, &["netfilter", "check"])?;
    ensure!(
        code == 1,
        "the running policy already had the new entry before SIGHUP"
    );
    sh(&["kill", "-HUP", &pid.to_string()])?;
    let took =
        wait_check_ok(&tb, &cfg, Duration::from_secs(10)).context("SIGHUP did not reload")?;
    eprintln!("config reloaded {took:?} after SIGHUP");
    // A config that no longer loads keeps the running policy and the daemon.
    std::fs::write(&cfg, "[netfilter]\nallow = 5\n")?;
    sh(&["kill", "-HUP", &pid.to_string()])?;
    std::thread::sleep(Duration::from_millis(1500));
    let cfg = write_config(
        dir.path(),
        true,
        "check_interval_secs = 2\nextra_deny = [\"9.9.9.0/24\"]\n",
    )?;
    wait_check_ok(&tb, &cfg, Duration::from_secs(5)).context("a bad config replaced the policy")?;

    // SIGTERM: exits 0 and leaves the rules in place.
    sh(&["kill", "-TERM", &pid.to_string()])?;
    let mut child = tb.take_child(pid).context("daemon child")?;
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            bail!("berth run netfilter did not exit on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    ensure!(status.success(), "exit {status}: {stderr}");
    ensure!(stderr.contains("drifted"), "drift not logged: {stderr}");
    let (code, out, err) = tb.berth(&cfg, &["netfilter", "check"])?;
    ensure!(
        code == 0,
        "rules must stay after the daemon exits: {out} {err}"
    );
    Ok(())
}

/// A namespace of its own, so that even a failing privilege check cannot touch the machine's
/// ruleset.
struct Ns(String);
impl Ns {
    fn new(tag: &str) -> Result<Self> {
        require_root_and_tools()?;
        let name = format!("bnf-{tag}-{}", std::process::id());
        sh(&["ip", "netns", "add", &name])?;
        Ok(Ns(name))
    }
}
impl Drop for Ns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .output();
    }
}

#[test]
fn netfilter_errors_name_what_is_missing() -> Result<()> {
    let ns = Ns::new("errs")?;
    let dir = tempfile::tempdir()?;
    let bin = berth_bin()?;
    let bin = bin.to_string_lossy();

    let cfg = write_config(dir.path(), false, "nft = \"/nonexistent/nft\"\n")?;
    let cfg_s = cfg.to_string_lossy();
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.0,
            &bin,
            "--config",
            &cfg_s,
            "netfilter",
            "apply",
        ])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "apply without nft must fail");
    ensure!(
        err.contains("/nonexistent/nft") && err.contains("not found"),
        "{err}"
    );

    let cfg = write_config(dir.path(), false, "")?;
    let cfg_s = cfg.to_string_lossy();
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.0,
            "setpriv",
            "--bounding-set=-net_admin",
            "--inh-caps=-net_admin",
            &bin,
            "--config",
            &cfg_s,
            "netfilter",
            "apply",
        ])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success(),
        "apply without CAP_NET_ADMIN must fail"
    );
    ensure!(err.contains("CAP_NET_ADMIN"), "{err}");
    let tables = sh(&["ip", "netns", "exec", &ns.0, "nft", "list", "tables"])?;
    ensure!(tables.stdout.is_empty(), "nothing may be applied");
    Ok(())
}

#[test]
fn netfilter_bridge_table_alone_separates_tenants() -> Result<()> {
    // Without port isolation, tenant ↔ tenant on the bridge rests on the bridge table only.
    let tb = Testbed::new("brtab")?;
    let dir = tempfile::tempdir()?;
    let cfg = write_config(dir.path(), true, "isolate_ports = false\n")?;
    write_ports(dir.path(), &ports_json(&tb, &["t1", "t2"]))?;
    let (code, out, err) = tb.berth(&cfg, &["netfilter", "apply"])?;
    ensure!(code == 0, "apply failed ({code}): {out}{err}");
    ensure!(
        !isolated(&tb, "veth-t1")?,
        "isolate_ports = false must leave ports alone"
    );
    // Link-local IPv6 to the other tenant and to the host (its control plane and its resolver
    // port, which tenants may use on the gateway's address only).
    let host_ll: std::net::Ipv6Addr = GW_LL.parse()?;
    let link_local = [
        Probe::TcpLinkLocal(T2_LL.parse().unwrap_or(std::net::Ipv6Addr::LOCALHOST), 8080),
        Probe::TcpLinkLocal(host_ll, 2222),
        Probe::TcpLinkLocal(host_ll, 53),
    ];
    let mut blocked = vec![
        tcp(T2_V4, 8080),
        udp(T2_V4, 8053),
        tcp("fd19:2::12", 8080),
        udp("fd19:2::12", 8053),
    ];
    blocked.extend(link_local);
    // Without bridge meta (`bridge match addresses`) the forward chain knows the tenant ports
    // from the port map, so link-local frames between tenants are dropped by port, not by
    // address; with it `meta ibrname` matches every frame between two tenant ports. The host
    // is guarded by the inet input chain either way (link-local sources get neighbour
    // discovery only).
    ensure!(
        out.contains("bridge match meta") || out.contains("bridge match addresses"),
        "{out}"
    );
    for on in [false, true] {
        tb.set_br_netfilter(on)?;
        tb.expect(
            &tb.t1,
            &format!("bridge table alone, br_netfilter {on}"),
            &[],
            &blocked,
        )?;
    }
    // The tenants still reach the host on its tenant-network addresses.
    tb.expect(
        &tb.t1,
        "t1 to the resolver",
        &[tcp(GW_V4, 53), tcp(GW_V6, 53)],
        &[],
    )?;
    Ok(())
}

/// The host's neighbour entry for `ip` on the tenant bridge: its link-layer address.
fn neigh(tb: &Testbed, ip: &str) -> Result<Option<String>> {
    let out = sh(&[
        "ip", "-n", &tb.host, "-j", "neigh", "show", "to", ip, "dev", "berth0",
    ])?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("ip -j neigh")?;
    Ok(v.as_array()
        .and_then(|a| a.first())
        .and_then(|e| e.get("lladdr"))
        .and_then(|l| l.as_str())
        .map(str::to_string))
}

/// The bridge port the host's forwarding database has `mac` on.
fn fdb_port(tb: &Testbed, mac: &str) -> Result<Option<String>> {
    let out = sh(&[
        "bridge", "-n", &tb.host, "-j", "fdb", "show", "br", "berth0",
    ])?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("bridge -j fdb")?;
    Ok(v.as_array().and_then(|a| {
        a.iter()
            .find(|e| e.get("mac").and_then(|m| m.as_str()) == Some(mac))
            .and_then(|e| e.get("ifname"))
            .and_then(|i| i.as_str())
            .map(str::to_string)
    }))
}

/// Packets counted by the `drop_<reason>` chain of berth's bridge table (0 when absent).
fn bridge_drops(tb: &Testbed, reason: &str) -> u64 {
    let Ok(out) = tb.host_nft(&[
        "-j",
        "list",
        "chain",
        "bridge",
        "berth",
        &format!("drop_{reason}"),
    ]) else {
        return 0;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&out) else {
        return 0;
    };
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o.get("rule")?.get("expr")?.as_array().cloned())
        .flatten()
        .filter_map(|e| e.get("counter")?.get("packets")?.as_u64())
        .sum()
}

/// The host talks to t2 over IPv4 and IPv6, so its neighbour cache holds t2's MAC for both.
fn host_reaches_t2(tb: &Testbed) -> Result<()> {
    for a in [format!("{T2_V4}:8080"), format!("[{T2_V6}]:8080")] {
        let mut s = tb.connect(&tb.host, a.parse()?)?;
        let mut buf = [0u8; 3];
        std::io::Read::read_exact(&mut s, &mut buf).with_context(|| format!("host → {a}"))?;
    }
    Ok(())
}

/// What t1 sends to take over t2's addresses (and, once, t2's MAC).
fn spoofed_frames(host_mac: [u8; 6]) -> Vec<(&'static str, Vec<u8>)> {
    use frames::*;
    let (t1, t2) = (mac(T1_MAC), mac(T2_MAC));
    let ip = |s: &str| {
        s.parse::<std::net::Ipv4Addr>()
            .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED)
    };
    let ip6 = |s: &str| {
        s.parse::<std::net::Ipv6Addr>()
            .unwrap_or(std::net::Ipv6Addr::UNSPECIFIED)
    };
    vec![
        (
            "arp request claiming t2's ip",
            arp(t1, 1, t1, ip(T2_V4), ip(GW_V4)),
        ),
        (
            "gratuitous arp reply for t2's ip",
            arp(t1, 2, t1, ip(T2_V4), ip(T2_V4)),
        ),
        ("arp from t2's mac", arp(t2, 1, t1, ip(T1_V4), ip(GW_V4))),
        (
            "unsolicited na for t2's ipv6",
            unsolicited_na(t1, ip6(T1_LL), ip6(T2_V6), t1),
        ),
        (
            "na for t1's own ipv6 at t2's mac",
            unsolicited_na(t1, ip6(T1_LL), ip6(T1_V6), t2),
        ),
        (
            "udp from t2's ipv4",
            udp4(t1, host_mac, ip(T2_V4), ip(GW_V4), 53),
        ),
        (
            "udp from t2's ipv6",
            udp6(t1, host_mac, ip6(T2_V6), ip6(GW_V6), 53),
        ),
    ]
}

#[test]
fn netfilter_port_binding_stops_arp_nd_and_source_spoofing() -> Result<()> {
    let tb = Testbed::new("bind")?;
    let host_mac = {
        let out = sh(&["ip", "-n", &tb.host, "-j", "link", "show", "berth0"])?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        frames::mac(v[0]["address"].as_str().unwrap_or_default())
    };
    let frames = spoofed_frames(host_mac);
    let t1_sends = |which: &[&str], times: usize| -> Result<()> {
        let f: Vec<Vec<u8>> = frames
            .iter()
            .filter(|(n, _)| which.is_empty() || which.contains(n))
            .map(|(_, f)| f.clone())
            .collect();
        frames::send(&tb.t1, &f, times)
    };

    // Control: with port binding off (anti-spoofing by subnet only), the same frames do
    // poison the host's neighbour cache — so this test can see poisoning when it happens.
    let open_dir = tempfile::tempdir()?;
    let open_cfg = write_config(open_dir.path(), true, "ports_file = \"\"\n")?;
    let (code, out, err) = tb.berth(&open_cfg, &["netfilter", "apply"])?;
    ensure!(code == 0, "apply failed ({code}): {out}{err}");
    host_reaches_t2(&tb)?;
    ensure!(
        neigh(&tb, T2_V4)?.as_deref() == Some(T2_MAC),
        "no neighbour entry for t2"
    );
    t1_sends(
        &[
            "arp request claiming t2's ip",
            "unsolicited na for t2's ipv6",
        ],
        1,
    )?;
    std::thread::sleep(Duration::from_millis(200));
    ensure!(
        neigh(&tb, T2_V4)?.as_deref() == Some(T1_MAC),
        "control: spoofed ARP did not poison the host ({:?}); the test cannot see poisoning",
        neigh(&tb, T2_V4)?
    );
    ensure!(
        neigh(&tb, T2_V6)?.as_deref() == Some(T1_MAC),
        "control: unsolicited NA did not poison the host ({:?})",
        neigh(&tb, T2_V6)?
    );

    // Port binding on: each port may claim only its own MAC and addresses.
    let dir = tempfile::tempdir()?;
    let cfg = write_config(dir.path(), true, "")?;
    write_ports(dir.path(), &ports_json(&tb, &["t1", "t2"]))?;
    let (code, out, err) = tb.berth(&cfg, &["netfilter", "apply"])?;
    ensure!(code == 0, "apply failed ({code}): {out}{err}");
    let (code, out, err) = tb.berth(&cfg, &["netfilter", "check"])?;
    ensure!(code == 0, "check after apply ({code}): {out}{err}");
    sh(&["ip", "-n", &tb.host, "neigh", "flush", "dev", "berth0"])?;
    host_reaches_t2(&tb)?;
    ensure!(
        neigh(&tb, T2_V4)?.as_deref() == Some(T2_MAC),
        "t2 not relearnt"
    );
    ensure!(
        neigh(&tb, T2_V6)?.as_deref() == Some(T2_MAC),
        "t2 (v6) not relearnt"
    );
    ensure!(
        fdb_port(&tb, T2_MAC)?.as_deref() == Some("veth-t2"),
        "fdb before"
    );

    let before = bridge_drops(&tb, "spoof");
    const TIMES: usize = 5;
    t1_sends(&[], TIMES)?;
    std::thread::sleep(Duration::from_millis(300));
    let dropped = bridge_drops(&tb, "spoof") - before;
    ensure!(
        dropped >= (frames.len() * TIMES) as u64,
        "bridge drop_spoof counted {dropped}, expected at least {}",
        frames.len() * TIMES
    );
    ensure!(
        neigh(&tb, T2_V4)?.as_deref() == Some(T2_MAC),
        "host's ARP entry for t2 poisoned: {:?}",
        neigh(&tb, T2_V4)?
    );
    ensure!(
        neigh(&tb, T2_V6)?.as_deref() == Some(T2_MAC),
        "host's ND entry for t2 poisoned: {:?}",
        neigh(&tb, T2_V6)?
    );
    ensure!(
        fdb_port(&tb, T2_MAC)?.as_deref() == Some("veth-t2"),
        "bridge learnt t2's MAC on {:?}",
        fdb_port(&tb, T2_MAC)?
    );
    // t2 is untouched: the host reaches it, it reaches the resolver over both families.
    host_reaches_t2(&tb)?;
    let t2_paths = [
        tcp(GW_V4, 53),
        udp(GW_V4, 53),
        tcp(GW_V6, 53),
        udp(GW_V6, 53),
    ];
    tb.expect(&tb.t2, "t2 after t1's spoofing", &t2_paths, &[])?;
    // t1's own claims still pass (its ARP for itself is not a drop), and it works normally.
    let own = frames::arp(
        frames::mac(T1_MAC),
        1,
        frames::mac(T1_MAC),
        T1_V4.parse()?,
        GW_V4.parse()?,
    );
    let before = bridge_drops(&tb, "spoof");
    frames::send(&tb.t1, &[own], 3)?;
    std::thread::sleep(Duration::from_millis(200));
    ensure!(
        bridge_drops(&tb, "spoof") == before,
        "t1's own ARP was dropped"
    );
    tb.expect(&tb.t1, "t1 after its spoofing", &t2_paths, &[])?;

    // A port that is not in the map gets nothing (t1 unlisted), the listed one keeps working.
    write_ports(dir.path(), &ports_json(&tb, &["t2"]))?;
    let (code, out, err) = tb.berth(&cfg, &["netfilter", "apply"])?;
    ensure!(code == 0, "apply failed ({code}): {out}{err}");
    let before = bridge_drops(&tb, "unbound");
    tb.expect(&tb.t1, "t1 unbound", &[], &[tcp(GW_V4, 53), udp(GW_V6, 53)])?;
    ensure!(
        bridge_drops(&tb, "unbound") > before,
        "no unbound drops counted"
    );
    // Even what claims no tenant-subnet address (a link-local NA, which bridge tables without
    // `meta ibrname` cannot attribute to a bridge) is dropped: the kernel lists the port on
    // the tenant bridge, so it is named in the dispatch map as unbound.
    let before = bridge_drops(&tb, "unbound");
    let ll_na = frames::unsolicited_na(
        frames::mac(T1_MAC),
        T1_LL.parse()?,
        T2_LL.parse()?,
        frames::mac(T1_MAC),
    );
    frames::send(&tb.t1, &[ll_na], 5)?;
    std::thread::sleep(Duration::from_millis(200));
    ensure!(
        bridge_drops(&tb, "unbound") >= before + 5,
        "link-local NA from an unbound port not dropped ({} → {})",
        before,
        bridge_drops(&tb, "unbound")
    );
    tb.expect(&tb.t2, "t2 with t1 unbound", &t2_paths, &[])?;
    Ok(())
}

/// `berth run netfilter` follows the port map file: a tenant added to it is bound (and can
/// talk) within the poll interval, one removed loses its port, and the update is one
/// transaction that leaves the drop counters of the inet table alone.
#[test]
fn netfilter_daemon_follows_the_port_map() -> Result<()> {
    let mut tb = Testbed::new("pmap")?;
    let dir = tempfile::tempdir()?;
    let cfg = write_config(dir.path(), true, "ports_poll_ms = 200\n")?;
    write_ports(dir.path(), &ports_json(&tb, &["t2"]))?;
    tb.spawn_daemon(&cfg)?;
    wait_check_ok(&tb, &cfg, Duration::from_secs(10))?;
    let dns = [tcp(GW_V4, 53), udp(GW_V6, 53)];
    tb.expect(&tb.t1, "t1 before it is listed", &[], &dns)?;
    // Count something in the inet table, to see that port updates leave it alone.
    tb.expect(&tb.t2, "t2 to the control plane", &[], &[tcp(GW_V4, 2222)])?;
    let host_drops = |tb: &Testbed| -> Result<u64> {
        let (_, out, _) = tb.berth(&cfg, &["netfilter", "show"])?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() == 5 && f[1] == "inet" && f[2] == "host")
                    .then(|| f[3].parse().unwrap_or(0))
            })
            .sum())
    };
    let host_before = host_drops(&tb)?;
    ensure!(host_before > 0, "no inet host drops counted");

    let start = Instant::now();
    write_ports(dir.path(), &ports_json(&tb, &["t1", "t2"]))?;
    let mut bound = None;
    while start.elapsed() < Duration::from_secs(5) {
        if tb
            .probe(&tb.t1, &[tcp(GW_V4, 53)])?
            .iter()
            .all(|(_, ok)| *ok)
        {
            bound = Some(start.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let Some(took) = bound else {
        bail!("t1 not bound within 5 s of being listed");
    };
    eprintln!(
        "port map update took effect after {:.0} ms",
        took.as_secs_f64() * 1000.0
    );
    tb.expect(&tb.t1, "t1 listed", &dns, &[])?;
    ensure!(
        host_drops(&tb)? >= host_before,
        "the port update reset the inet table's counters"
    );

    write_ports(dir.path(), &ports_json(&tb, &["t1"]))?;
    std::thread::sleep(Duration::from_millis(1000));
    tb.expect(&tb.t2, "t2 delisted", &[], &dns)?;
    tb.expect(&tb.t1, "t1 still listed", &dns, &[])?;
    let (code, out, err) = tb.berth(&cfg, &["netfilter", "check"])?;
    ensure!(code == 0, "check after updates ({code}): {out}{err}");
    Ok(())
}

/// An `nft` that fails every ruleset transaction while `<dir>/fail` exists (counting each in
/// `<dir>/failures`) and is the real nft otherwise.
fn failing_nft(dir: &std::path::Path) -> Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let out = sh(&["sh", "-c", "command -v nft"])?;
    let real = String::from_utf8_lossy(&out.stdout).trim().to_string();
    ensure!(!real.is_empty(), "nft not found");
    let path = dir.join("nft-wrapper");
    let d = dir.display();
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nif [ -e {d}/fail ] && [ \"$1\" = -j ] && [ \"$2\" = -f ]; then\n  cat >/dev/null\n  echo x >> {d}/failures\n  echo 'injected failure' >&2\n  exit 1\nfi\nexec {real} \"$@\"\n"
        ),
    )?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// The value of an unlabelled series in a Prometheus text file (None until it is there).
fn metric(path: &std::path::Path, name: &str) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// A port map update whose transaction fails stays pending and is retried on later polls,
/// without the file changing again, until it applies; the failures are counted in the metrics.
#[test]
fn netfilter_daemon_retries_a_failed_port_map_update() -> Result<()> {
    let mut tb = Testbed::new("retry")?;
    let dir = tempfile::tempdir()?;
    let nft = failing_nft(dir.path())?;
    let textfile = dir.path().join("netfilter.prom");
    let cfg = write_config(
        dir.path(),
        true,
        &format!("ports_poll_ms = 200\nnft = \"{}\"\n", nft.display()),
    )?;
    let text = std::fs::read_to_string(&cfg)?.replace(
        "[metrics]\n",
        &format!(
            "[metrics]\nnetfilter_textfile = \"{}\"\ntextfile_interval_secs = 1\n",
            textfile.display()
        ),
    );
    std::fs::write(&cfg, text)?;
    write_ports(dir.path(), &ports_json(&tb, &["t2"]))?;
    tb.spawn_daemon(&cfg)?;
    wait_check_ok(&tb, &cfg, Duration::from_secs(10))?;
    let dns = [tcp(GW_V4, 53), udp(GW_V6, 53)];
    tb.expect(&tb.t1, "t1 before it is listed", &[], &dns)?;

    // Every transaction fails from now on: listing t1 cannot be applied.
    std::fs::write(dir.path().join("fail"), "")?;
    write_ports(dir.path(), &ports_json(&tb, &["t1", "t2"]))?;
    let failures = |d: &std::path::Path| {
        std::fs::read_to_string(d.join("failures"))
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    let start = Instant::now();
    // One failed update is the incremental transaction and the full apply it falls back to; a
    // retry is a second round of both.
    while failures(dir.path()) < 4 {
        ensure!(
            start.elapsed() < Duration::from_secs(20),
            "the failed port map update was not retried ({} failed transactions)",
            failures(dir.path())
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    tb.expect(&tb.t1, "t1 while its update fails", &[], &dns)?;
    let start = Instant::now();
    while metric(&textfile, "berth_netfilter_port_map_pending") != Some(1.0)
        || metric(&textfile, "berth_netfilter_port_map_apply_failures_total")
            .is_none_or(|v| v < 2.0)
    {
        ensure!(
            start.elapsed() < Duration::from_secs(20),
            "failures not in the metrics: {:?}",
            std::fs::read_to_string(&textfile)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // nft works again; the port map file is left alone: the pending update must still land.
    std::fs::remove_file(dir.path().join("fail"))?;
    let start = Instant::now();
    while !tb
        .probe(&tb.t1, &[tcp(GW_V4, 53)])?
        .iter()
        .all(|(_, ok)| *ok)
    {
        ensure!(
            start.elapsed() < Duration::from_secs(60),
            "t1 never bound after nft recovered"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    tb.expect(&tb.t1, "t1 listed after the retry", &dns, &[])?;
    let (code, out, err) = tb.berth(&cfg, &["netfilter", "check"])?;
    ensure!(code == 0, "check after the retry ({code}): {out}{err}");
    let start = Instant::now();
    while metric(&textfile, "berth_netfilter_port_map_pending") != Some(0.0) {
        ensure!(
            start.elapsed() < Duration::from_secs(20),
            "the update stays pending in the metrics: {:?}",
            std::fs::read_to_string(&textfile)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
