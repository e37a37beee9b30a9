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
        sh(&["ip", "-n", h, "link", "set", "berth0", "up"])?;
        for (ns, port, v4, v6, ll) in [
            (
                t1,
                "veth-t1",
                "172.19.2.11/24",
                "fd19:2::11/64",
                "fe80::11/64",
            ),
            (
                t2,
                "veth-t2",
                "172.19.2.12/24",
                "fd19:2::12/64",
                "fe80::12/64",
            ),
        ] {
            sh(&[
                "ip", "-n", h, "link", "add", port, "type", "veth", "peer", "name", "eth0",
                "netns", ns,
            ])?;
            sh(&["ip", "-n", h, "link", "set", port, "master", "berth0", "up"])?;
            sh(&["ip", "-n", ns, "addr", "add", v4, "dev", "eth0"])?;
            sh(&["ip", "-n", ns, "addr", "add", v6, "dev", "eth0", "nodad"])?;
            sh(&["ip", "-n", ns, "addr", "add", ll, "dev", "eth0", "nodad"])?;
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

/// A berth config for the testbed's tenant network, with `extra` appended to `[netfilter]`.
pub fn write_config(dir: &Path, ipv6: bool, netfilter_extra: &str) -> Result<PathBuf> {
    let v6 = if ipv6 {
        "subnet6 = \"fd19:2::/64\"\ngateway6 = \"fd19:2::1\"\n"
    } else {
        ""
    };
    let text = format!(
        "state_dir = \"{dir}\"\n[metrics]\nlisten = \"\"\n[network]\nbridge = \"berth0\"\nsubnet = \"172.19.2.0/24\"\ngateway = \"172.19.2.1\"\n{v6}[netfilter]\nallow = [\"10.0.0.10:8443\", \"11.0.0.1:5000\"]\n{netfilter_extra}",
        dir = dir.display()
    );
    let path = dir.join("berth.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}
