//! A network-namespace testbed for the egress filter: real kernel, real packets, nothing
//! outside the namespaces it creates.
//!
//! ```text
//!   t1 (172.19.2.11, fd19:2::11) ─┐
//!                                  berth0 ── host ns ── up0 ═══ eth0 ── out ns
//!   t2 (172.19.2.12, fd19:2::12) ─┘  .1       (control plane         11.0.0.2, targets on lo:
//!                                             on 0.0.0.0:2222)       public, metadata, private, ULA
//! ```
//! Listeners are threads of the test process that entered a namespace with `setns`; probes do
//! the same, so a "blocked" verdict is a real connect/recv timing out. The namespaces (and with
//! them every interface and route) are deleted in `Drop`, also when the test fails.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, SocketAddrV6, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// How long a probe waits before calling a path blocked.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(800);

pub const T1_V4: &str = "172.19.2.11";
pub const T2_V4: &str = "172.19.2.12";
pub const GW_V4: &str = "172.19.2.1";
pub const GW_V6: &str = "fd19:2::1";
pub const HOST_UPLINK_V4: &str = "11.0.0.1";
pub const HOST_UPLINK_V6: &str = "2a10:aaaa::1";
pub const PUBLIC_V4: &str = "45.45.45.45";
pub const PUBLIC_V6: &str = "2a10:ffff::44";
/// A source address outside the tenant subnet, configured on t1 for the anti-spoof check.
pub const SPOOF_V4: &str = "11.9.9.9";
/// The tenants' MACs (their link-local addresses are the EUI-64 ones the kernel derives).
pub const T1_MAC: &str = "02:00:00:00:00:11";
pub const T2_MAC: &str = "02:00:00:00:00:12";
pub const T1_LL: &str = "fe80::ff:fe00:11";
pub const T2_LL: &str = "fe80::ff:fe00:12";
/// A link-local address of the host on the tenant bridge (set explicitly: the kernel's own
/// appears only once the bridge has carrier).
pub const GW_LL: &str = "fe80::1";
pub const T1_V6: &str = "fd19:2::11";
pub const T2_V6: &str = "fd19:2::12";

/// Addresses held by the outside namespace that tenants must not reach.
pub const DENIED_OUTSIDE: &[&str] = &[
    "10.0.0.10",
    "172.16.0.10",
    "192.168.0.10",
    "100.64.0.10",
    "198.18.0.10",
    "169.254.169.254",
    "fd00::10",
    "64:ff9b::a00:a",
];

/// Runs a command, failing with its stderr.
pub fn sh(args: &[&str]) -> Result<Output> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("cannot run {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Fails with a clear message when the testbed cannot exist here.
pub fn require_root_and_tools() -> Result<()> {
    let uid = sh(&["id", "-u"])?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        bail!("the netfilter integration tests need root (network namespaces, nft)");
    }
    for tool in ["ip", "nft"] {
        if Command::new(tool).arg("-V").output().is_err() {
            bail!(
                "the netfilter integration tests need `{tool}` (apt-get install iproute2 nftables)"
            );
        }
    }
    Ok(())
}

/// Runs `f` on a new thread inside network namespace `ns`.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<Result<T>> {
    let path = PathBuf::from("/run/netns").join(ns);
    std::thread::spawn(move || {
        let file =
            std::fs::File::open(&path).with_context(|| format!("open {}", path.display()))?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("setns {}", path.display()))?;
        Ok(f())
    })
}

fn join<T>(h: std::thread::JoinHandle<Result<T>>) -> Result<T> {
    match h.join() {
        Ok(r) => r,
        Err(_) => bail!("netns thread panicked"),
    }
}

/// What a probe tries.
#[derive(Debug, Clone)]
pub enum Probe {
    Tcp(SocketAddr),
    Udp(SocketAddr),
    /// UDP from a given local source address.
    UdpFrom(IpAddr, SocketAddr),
    /// TCP to a link-local IPv6 address over `eth0`.
    TcpLinkLocal(std::net::Ipv6Addr, u16),
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Probe::Tcp(a) => write!(f, "tcp {a}"),
            Probe::Udp(a) => write!(f, "udp {a}"),
            Probe::UdpFrom(s, a) => write!(f, "udp {a} from {s}"),
            Probe::TcpLinkLocal(a, p) => write!(f, "tcp [{a}%eth0]:{p}"),
        }
    }
}

pub fn tcp(addr: &str, port: u16) -> Probe {
    Probe::Tcp(sock(addr, port))
}
pub fn udp(addr: &str, port: u16) -> Probe {
    Probe::Udp(sock(addr, port))
}
fn sock(addr: &str, port: u16) -> SocketAddr {
    // Test constants only.
    #[allow(clippy::expect_used)]
    let ip: IpAddr = addr.parse().expect("test address");
    SocketAddr::new(ip, port)
}

/// Sends `msg` on an echo connection; true when it comes back.
pub fn echo_ok(s: &mut TcpStream, msg: &[u8]) -> bool {
    if s.write_all(msg).is_err() {
        return false;
    }
    let mut buf = vec![0u8; msg.len()];
    s.read_exact(&mut buf).is_ok() && buf == msg
}

/// True when the probe got the listener's "ok" back.
fn run_probe(p: &Probe) -> bool {
    match p {
        Probe::Tcp(a) => tcp_ok(*a),
        Probe::Udp(a) => {
            let bind: SocketAddr = if a.is_ipv4() {
                SocketAddr::from(([0, 0, 0, 0], 0))
            } else {
                SocketAddr::from(([0u16; 8], 0))
            };
            udp_ok(bind, *a)
        }
        Probe::UdpFrom(src, a) => udp_ok(SocketAddr::new(*src, 0), *a),
        Probe::TcpLinkLocal(ip, port) => match nix::net::if_::if_nametoindex("eth0") {
            Ok(idx) => tcp_ok(SocketAddr::V6(SocketAddrV6::new(*ip, *port, 0, idx))),
            Err(_) => false,
        },
    }
}

fn tcp_ok(a: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&a, PROBE_TIMEOUT) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(PROBE_TIMEOUT));
    let mut buf = [0u8; 3];
    matches!(s.read(&mut buf), Ok(n) if n >= 2 && &buf[..2] == b"ok")
}

fn udp_ok(bind: SocketAddr, a: SocketAddr) -> bool {
    let Ok(s) = UdpSocket::bind(bind) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(PROBE_TIMEOUT));
    if s.send_to(b"hi", a).is_err() {
        return false;
    }
    let mut buf = [0u8; 8];
    matches!(s.recv_from(&mut buf), Ok((n, _)) if n >= 2 && &buf[..2] == b"ok")
}

/// The testbed; everything is removed on drop.
pub struct Testbed {
    pub host: String,
    pub t1: String,
    pub t2: String,
    pub out: String,
    stop: Arc<AtomicBool>,
    children: Vec<Child>,
}

impl Testbed {
    /// Builds the namespaces, links, addresses, routes and listeners. `tag` makes the names
    /// unique per test (with the pid).
    pub fn new(tag: &str) -> Result<Self> {
        require_root_and_tools()?;
        let pid = std::process::id();
        let name = |role: &str| format!("bnf-{tag}-{pid}-{role}");
        let tb = Testbed {
            host: name("host"),
            t1: name("t1"),
            t2: name("t2"),
            out: name("out"),
            stop: Arc::new(AtomicBool::new(false)),
            children: Vec::new(),
        };
        tb.build().context("cannot build the netns testbed")?;
        tb.listen()?;
        // Give listener threads a moment to bind.
        std::thread::sleep(Duration::from_millis(200));
        Ok(tb)
    }

    fn build(&self) -> Result<()> {
        let (h, t1, t2, o) = (&self.host, &self.t1, &self.t2, &self.out);
        for ns in [h, t1, t2, o] {
            sh(&["ip", "netns", "add", ns])?;
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
            self.sysctl(ns, "net.ipv6.conf.all.accept_dad", "0")?;
            self.sysctl(ns, "net.ipv6.conf.default.accept_dad", "0")?;
        }
        self.sysctl(h, "net.ipv4.ip_forward", "1")?;
        self.sysctl(h, "net.ipv6.conf.all.forwarding", "1")?;
        self.sysctl(o, "net.ipv6.conf.all.forwarding", "1")?;
        self.set_br_netfilter(false)?;

        sh(&["ip", "-n", h, "link", "add", "berth0", "type", "bridge"])?;
        sh(&[
            "ip",
            "-n",
            h,
            "addr",
            "add",
            "172.19.2.1/24",
            "dev",
            "berth0",
        ])?;
        sh(&[
            "ip",
            "-n",
            h,
            "addr",
            "add",
            "fd19:2::1/64",
            "dev",
            "berth0",
            "nodad",
        ])?;
        sh(&[
            "ip",
            "-n",
            h,
            "addr",
            "add",
            "fe80::1/64",
            "dev",
            "berth0",
            "nodad",
        ])?;
        sh(&["ip", "-n", h, "link", "set", "berth0", "up"])?;
        for (ns, port, v4, v6, mac) in [
            (t1, "veth-t1", "172.19.2.11/24", "fd19:2::11/64", T1_MAC),
            (t2, "veth-t2", "172.19.2.12/24", "fd19:2::12/64", T2_MAC),
        ] {
            sh(&[
                "ip", "-n", h, "link", "add", port, "type", "veth", "peer", "name", "eth0",
                "netns", ns,
            ])?;
            sh(&["ip", "-n", h, "link", "set", port, "master", "berth0", "up"])?;
            // A fixed MAC, set before the link comes up so the kernel derives the EUI-64
            // link-local address from it (the only link-local a bound port may use).
            sh(&["ip", "-n", ns, "link", "set", "eth0", "address", mac])?;
            sh(&["ip", "-n", ns, "addr", "add", v4, "dev", "eth0"])?;
            sh(&["ip", "-n", ns, "addr", "add", v6, "dev", "eth0", "nodad"])?;
            sh(&["ip", "-n", ns, "link", "set", "eth0", "up"])?;
            sh(&["ip", "-n", ns, "route", "add", "default", "via", GW_V4])?;
            sh(&[
                "ip", "-n", ns, "-6", "route", "add", "default", "via", GW_V6,
            ])?;
        }
        // t1 also holds an address outside the tenant subnet, to try spoofing from.
        sh(&["ip", "-n", t1, "addr", "add", "11.9.9.9/32", "dev", "eth0"])?;
        sh(&[
            "ip",
            "-n",
            h,
            "route",
            "add",
            "11.9.9.9/32",
            "dev",
            "berth0",
        ])?;

        sh(&[
            "ip", "-n", h, "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", o,
        ])?;
        sh(&["ip", "-n", h, "addr", "add", "11.0.0.1/24", "dev", "up0"])?;
        sh(&[
            "ip",
            "-n",
            h,
            "addr",
            "add",
            "2a10:aaaa::1/64",
            "dev",
            "up0",
            "nodad",
        ])?;
        sh(&["ip", "-n", h, "link", "set", "up0", "up"])?;
        sh(&["ip", "-n", h, "route", "add", "default", "via", "11.0.0.2"])?;
        sh(&[
            "ip",
            "-n",
            h,
            "-6",
            "route",
            "add",
            "default",
            "via",
            "2a10:aaaa::2",
        ])?;
        sh(&["ip", "-n", o, "addr", "add", "11.0.0.2/24", "dev", "eth0"])?;
        sh(&[
            "ip",
            "-n",
            o,
            "addr",
            "add",
            "2a10:aaaa::2/64",
            "dev",
            "eth0",
            "nodad",
        ])?;
        sh(&["ip", "-n", o, "link", "set", "eth0", "up"])?;
        sh(&[
            "ip",
            "-n",
            o,
            "route",
            "add",
            "172.19.2.0/24",
            "via",
            "11.0.0.1",
        ])?;
        sh(&[
            "ip",
            "-n",
            o,
            "route",
            "add",
            "11.9.9.9/32",
            "via",
            "11.0.0.1",
        ])?;
        sh(&[
            "ip",
            "-n",
            o,
            "-6",
            "route",
            "add",
            "fd19:2::/64",
            "via",
            "2a10:aaaa::1",
        ])?;
        for a in [PUBLIC_V4, PUBLIC_V6].iter().chain(DENIED_OUTSIDE) {
            let cidr = if a.contains(':') {
                format!("{a}/128")
            } else {
                format!("{a}/32")
            };
            // On lo: this kernel has no dummy interfaces, and lo serves any address it holds.
            let mut args = vec!["ip", "-n", o, "addr", "add", &cidr, "dev", "lo"];
            if a.contains(':') {
                args.push("nodad");
            }
            sh(&args)?;
        }
        Ok(())
    }

    fn sysctl(&self, ns: &str, key: &str, value: &str) -> Result<()> {
        sh(&[
            "ip",
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            &format!("{key}={value}"),
        ])
        .map(|_| ())
    }

    /// Turns br_netfilter on or off for the host namespace (the sysctls are per namespace, so
    /// the machine's own setting is untouched).
    pub fn set_br_netfilter(&self, on: bool) -> Result<()> {
        let v = if on { "1" } else { "0" };
        self.sysctl(&self.host, "net.bridge.bridge-nf-call-iptables", v)
            .context(
                "br_netfilter sysctls are missing (kernel without CONFIG_BRIDGE_NETFILTER?)",
            )?;
        self.sysctl(&self.host, "net.bridge.bridge-nf-call-ip6tables", v)
    }

    /// Listeners: the outside world, the host's services, and tenant t2.
    fn listen(&self) -> Result<()> {
        // out: ports 8080 (tcp), 8443 (tcp, allowlisted on 10.0.0.10), 8053 (udp).
        self.serve(&self.out, &[8080, 8443], &[8053])?;
        // host: 2222 is the control plane (SSH gateway), 5000 an allowlisted cache, 53 the
        // resolver, 8053 some other UDP service.
        self.serve(&self.host, &[2222, 5000, 53], &[53, 8053])?;
        // t1 and t2: a tenant's own services.
        self.serve(&self.t1, &[8080], &[8053])?;
        self.serve(&self.t2, &[8080], &[8053])?;
        // out: a TCP echo service on the private address, for long-lived flows.
        self.serve_echo(&self.out, 7)?;
        Ok(())
    }

    fn serve(&self, ns: &str, tcp_ports: &[u16], udp_ports: &[u16]) -> Result<()> {
        for &port in tcp_ports {
            let stop = self.stop.clone();
            let bound = in_netns(ns, move || -> Result<()> {
                // [::] with IPV6_V6ONLY off (Linux default) takes IPv4 too.
                let l = TcpListener::bind(SocketAddr::from(([0u16; 8], port)))?;
                l.set_nonblocking(true)?;
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match l.accept() {
                            Ok((mut s, _)) => {
                                let _ = s.set_nonblocking(false);
                                let _ = s.write_all(b"ok\n");
                            }
                            Err(_) => std::thread::sleep(Duration::from_millis(10)),
                        }
                    }
                });
                Ok(())
            });
            join(bound)??;
        }
        for &port in udp_ports {
            let stop = self.stop.clone();
            let bound = in_netns(ns, move || -> Result<()> {
                let s = UdpSocket::bind(SocketAddr::from(([0u16; 8], port)))?;
                s.set_read_timeout(Some(Duration::from_millis(50)))?;
                std::thread::spawn(move || {
                    let mut buf = [0u8; 64];
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok((_, from)) = s.recv_from(&mut buf) {
                            let _ = s.send_to(b"ok", from);
                        }
                    }
                });
                Ok(())
            });
            join(bound)??;
        }
        Ok(())
    }

    fn serve_echo(&self, ns: &str, port: u16) -> Result<()> {
        let stop = self.stop.clone();
        let bound = in_netns(ns, move || -> Result<()> {
            let l = TcpListener::bind(SocketAddr::from(([0u16; 8], port)))?;
            l.set_nonblocking(true)?;
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((mut s, _)) => {
                            let _ = s.set_nonblocking(false);
                            std::thread::spawn(move || {
                                let mut buf = [0u8; 256];
                                while let Ok(n) = s.read(&mut buf) {
                                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                            });
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            });
            Ok(())
        });
        join(bound)?
    }

    /// Opens a TCP connection from inside `ns` (the socket stays in that namespace).
    pub fn connect(&self, ns: &str, addr: SocketAddr) -> Result<TcpStream> {
        let s = join(in_netns(ns, move || {
            TcpStream::connect_timeout(&addr, PROBE_TIMEOUT)
        }))?
        .with_context(|| format!("connect {addr} from {ns}"))?;
        s.set_read_timeout(Some(PROBE_TIMEOUT))?;
        Ok(s)
    }

    /// Runs all probes from `ns` in parallel; returns (probe, reachable).
    pub fn probe(&self, ns: &str, probes: &[Probe]) -> Result<Vec<(Probe, bool)>> {
        let handles: Vec<_> = probes
            .iter()
            .cloned()
            .map(|p| {
                let p2 = p.clone();
                (p, in_netns(ns, move || run_probe(&p2)))
            })
            .collect();
        handles
            .into_iter()
            .map(|(p, h)| Ok((p, join(h)?)))
            .collect()
    }

    /// Asserts every probe in `reach` succeeds and every probe in `blocked` fails, reporting
    /// all mismatches at once.
    pub fn expect(&self, ns: &str, what: &str, reach: &[Probe], blocked: &[Probe]) -> Result<()> {
        let mut wrong = Vec::new();
        // A reachable path can look blocked on a loaded machine (a probe thread starved past
        // its timeout): retry those, up to twice. A blocked path can never look reachable.
        let mut failed: Vec<Probe> = reach.to_vec();
        for _ in 0..3 {
            failed = self
                .probe(ns, &failed)?
                .into_iter()
                .filter(|(_, ok)| !ok)
                .map(|(p, _)| p)
                .collect();
            if failed.is_empty() {
                break;
            }
        }
        for p in failed {
            wrong.push(format!("should reach {p}, but it is blocked"));
        }
        for (p, ok) in self.probe(ns, blocked)? {
            if ok {
                wrong.push(format!("should NOT reach {p}, but it answered"));
            }
        }
        if !wrong.is_empty() {
            bail!(
                "{what}: {} wrong path(s):\n  {}",
                wrong.len(),
                wrong.join("\n  ")
            );
        }
        Ok(())
    }

    /// `nft …` inside the host namespace.
    pub fn host_nft(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["ip", "netns", "exec", &self.host, "nft"];
        full.extend_from_slice(args);
        Ok(String::from_utf8_lossy(&sh(&full)?.stdout).into_owned())
    }

    /// `nft -f -` of a text ruleset inside the host namespace.
    pub fn host_nft_text(&self, ruleset: &str) -> Result<()> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.host, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn nft")?;
        if let Some(mut si) = child.stdin.take() {
            si.write_all(ruleset.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("nft -f failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// `berth --config CFG ARGS…` inside the host namespace: (exit code, stdout, stderr).
    pub fn berth(&self, config: &Path, args: &[&str]) -> Result<(i32, String, String)> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.host])
            .arg(berth_bin()?)
            .arg("--config")
            .arg(config)
            .args(args)
            .env("BERTH_LOG", "warn")
            .output()
            .context("run berth")?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// Starts `berth run netfilter` in the host namespace; killed on drop.
    pub fn spawn_daemon(&mut self, config: &Path) -> Result<u32> {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.host])
            .arg(berth_bin()?)
            .arg("--config")
            .arg(config)
            .args(["run", "netfilter"])
            .env("BERTH_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn berth run netfilter")?;
        let pid = child.id();
        self.children.push(child);
        Ok(pid)
    }

    /// Takes a spawned child back (to signal and wait on it).
    pub fn take_child(&mut self, pid: u32) -> Option<Child> {
        let i = self.children.iter().position(|c| c.id() == pid)?;
        Some(self.children.remove(i))
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.t1, &self.t2, &self.out, &self.host] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// The `berth` binary of this workspace build.
pub fn berth_bin() -> Result<PathBuf> {
    crate::tenants::berth_bin()
}

/// The port map for the testbed: `tenants` among "t1", "t2", each by its netns file (the
/// way the binary publishes Docker's `SandboxKey`).
pub fn ports_json(tb: &Testbed, tenants: &[&str]) -> String {
    let mut eps = Vec::new();
    for t in tenants {
        let (ns, mac, v4, v6) = match *t {
            "t1" => (&tb.t1, T1_MAC, T1_V4, T1_V6),
            _ => (&tb.t2, T2_MAC, T2_V4, T2_V6),
        };
        eps.push(format!(
            r#"{{"name":"{t}","netns":"/run/netns/{ns}","mac":"{mac}","ipv4":["{v4}"],"ipv6":["{v6}"]}}"#
        ));
    }
    format!("{{\"endpoints\":[{}]}}\n", eps.join(","))
}

/// Writes `ports.json` next to the config atomically (write + rename, as the publisher does).
pub fn write_ports(dir: &Path, json: &str) -> Result<()> {
    let tmp = dir.join(".ports.json.tmp");
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, dir.join("ports.json"))?;
    Ok(())
}

/// A berth config for the testbed's tenant network, with `extra` appended to `[netfilter]`.
/// The port map is `DIR/ports.json`; write it with [`write_ports`] (absent: no port bound).
pub fn write_config(dir: &Path, ipv6: bool, netfilter_extra: &str) -> Result<PathBuf> {
    let v6 = if ipv6 {
        "subnet6 = \"fd19:2::/64\"\ngateway6 = \"fd19:2::1\"\n"
    } else {
        ""
    };
    let ports = if netfilter_extra.contains("ports_file") {
        String::new()
    } else {
        format!("ports_file = \"{}/ports.json\"\n", dir.display())
    };
    let text = format!(
        "state_dir = \"{dir}\"\n[metrics]\nlisten = \"\"\n[network]\nbridge = \"berth0\"\nsubnet = \"172.19.2.0/24\"\ngateway = \"172.19.2.1\"\n{v6}[netfilter]\nallow = [\"10.0.0.10:8443\", \"11.0.0.1:5000\"]\n{ports}{netfilter_extra}",
        dir = dir.display()
    );
    let path = dir.join("berth.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Hand-built Ethernet frames for the port-binding tests (what a hostile tenant with a raw
/// socket can send), and a sender that puts them on `eth0` inside a namespace.
pub mod frames {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use anyhow::{Context, Result, bail};

    pub fn mac(s: &str) -> [u8; 6] {
        let mut m = [0u8; 6];
        for (i, p) in s.split(':').enumerate().take(6) {
            m[i] = u8::from_str_radix(p, 16).unwrap_or(0);
        }
        m
    }

    fn ether(dst: [u8; 6], src: [u8; 6], ty: u16) -> Vec<u8> {
        let mut f = Vec::with_capacity(64);
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&ty.to_be_bytes());
        f
    }

    fn sum16(data: &[u8], mut acc: u32) -> u32 {
        for c in data.chunks(2) {
            let w = if c.len() == 2 {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                u16::from_be_bytes([c[0], 0])
            };
            acc += u32::from(w);
        }
        acc
    }

    fn fold(mut acc: u32) -> u16 {
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        !(acc as u16)
    }

    /// An ARP packet (op 1 request, 2 reply) with the given sender/target fields.
    pub fn arp(eth_src: [u8; 6], op: u16, sha: [u8; 6], spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
        let mut f = ether([0xff; 6], eth_src, 0x0806);
        f.extend_from_slice(&[0, 1, 8, 0, 6, 4]);
        f.extend_from_slice(&op.to_be_bytes());
        f.extend_from_slice(&sha);
        f.extend_from_slice(&spa.octets());
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&tpa.octets());
        f
    }

    #[allow(clippy::too_many_arguments)]
    fn ipv6(
        eth_src: [u8; 6],
        eth_dst: [u8; 6],
        src: Ipv6Addr,
        dst: Ipv6Addr,
        nh: u8,
        hlim: u8,
        payload: &mut [u8],
        csum_at: usize,
    ) -> Vec<u8> {
        // Upper-layer checksum over the pseudo-header and payload.
        let mut acc = sum16(&src.octets(), 0);
        acc = sum16(&dst.octets(), acc);
        acc = sum16(&(payload.len() as u32).to_be_bytes(), acc);
        acc = sum16(&[0, 0, 0, nh], acc);
        payload[csum_at] = 0;
        payload[csum_at + 1] = 0;
        let c = fold(sum16(payload, acc));
        payload[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
        let mut f = ether(eth_dst, eth_src, 0x86dd);
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        f.push(nh);
        f.push(hlim);
        f.extend_from_slice(&src.octets());
        f.extend_from_slice(&dst.octets());
        f.extend_from_slice(payload);
        f
    }

    /// An unsolicited neighbour advertisement to all nodes (override flag set) claiming
    /// `target` is at `tlla`.
    pub fn unsolicited_na(
        eth_src: [u8; 6],
        src: Ipv6Addr,
        target: Ipv6Addr,
        tlla: [u8; 6],
    ) -> Vec<u8> {
        let mut p = vec![136, 0, 0, 0, 0x20, 0, 0, 0];
        p.extend_from_slice(&target.octets());
        p.extend_from_slice(&[2, 1]);
        p.extend_from_slice(&tlla);
        let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
        ipv6(
            eth_src,
            [0x33, 0x33, 0, 0, 0, 1],
            src,
            all_nodes,
            58,
            255,
            &mut p,
            2,
        )
    }

    /// A UDP datagram over IPv4 from `src` to `dst:dport`, sent to `eth_dst`.
    pub fn udp4(
        eth_src: [u8; 6],
        eth_dst: [u8; 6],
        src: Ipv4Addr,
        dst: Ipv4Addr,
        dport: u16,
    ) -> Vec<u8> {
        let payload = b"spoof";
        let total = (20 + 8 + payload.len()) as u16;
        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&total.to_be_bytes());
        ip.extend_from_slice(&[0, 1, 0x40, 0, 64, 17, 0, 0]);
        ip.extend_from_slice(&src.octets());
        ip.extend_from_slice(&dst.octets());
        let c = fold(sum16(&ip, 0));
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let mut f = ether(eth_dst, eth_src, 0x0800);
        f.extend_from_slice(&ip);
        f.extend_from_slice(&40000u16.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]); // no checksum (allowed for IPv4)
        f.extend_from_slice(payload);
        f
    }

    /// A UDP datagram over IPv6 from `src` to `dst:dport`, sent to `eth_dst`.
    pub fn udp6(
        eth_src: [u8; 6],
        eth_dst: [u8; 6],
        src: Ipv6Addr,
        dst: Ipv6Addr,
        dport: u16,
    ) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&40000u16.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&13u16.to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(b"spoof");
        ipv6(eth_src, eth_dst, src, dst, 17, 64, &mut p, 6)
    }

    /// Sends each frame `times` times on `eth0` inside namespace `ns` (a raw AF_PACKET socket
    /// in a short Python program: what any tenant process with CAP_NET_RAW can do).
    pub fn send(ns: &str, frames: &[Vec<u8>], times: usize) -> Result<()> {
        const PROG: &str = "import socket,sys\ns=socket.socket(socket.AF_PACKET,socket.SOCK_RAW)\ns.bind(('eth0',0))\nn=int(sys.argv[1])\nfor _ in range(n):\n  for h in sys.argv[2:]:\n    s.send(bytes.fromhex(h))\n";
        let hex: Vec<String> = frames
            .iter()
            .map(|f| f.iter().map(|b| format!("{b:02x}")).collect())
            .collect();
        let out = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "python3",
                "-c",
                PROG,
                &times.to_string(),
            ])
            .args(&hex)
            .output()
            .context("run python3 in the tenant namespace")?;
        if !out.status.success() {
            bail!("raw send failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }
}
