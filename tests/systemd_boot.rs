//! The split deployment under a real systemd: boots systemd 252 as PID 1 in a Docker container
//! on this machine, installs berth with `make install-files` (the `make install` steps, with the
//! debug build this test was compiled with), starts `berth.target` and drives it the way an
//! operator does: every unit active with the configured values in force, `ssh server1@…` into a
//! real tenant, `server1.<domain>` through berth-dns, the nft tables, `systemctl reload`, the
//! watchdog restarting a hung component, socket activation, and `systemctl stop berth.target`.
//!
//! Why host networking: tenant containers are made by the host's Docker (its socket is passed
//! in), so the tenant bridge lives in the host's namespace; the gateway must reach tenants there
//! and netfilter must program that namespace. The test keeps out of other tests' way with its
//! own network (`berth-sdtest`, bridge `berthsd0`, 172.19.77.0/24), name prefix, nft table,
//! free ports and a resolver address of its own (127.0.77.53). Everything it creates is removed
//! in `Drop`, also when an assertion fails.
//!
//! The systemd image (`berth/systemd-test:bookworm-<recipe hash>`, ~1 min of debootstrap) is
//! built once and kept, like the tenant image; a changed recipe gets a new tag.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{free_port, tenant_image};

/// The cached image; its tag carries a hash of the recipe, so changing the recipe rebuilds it.
const IMAGE_REPO: &str = "berth/systemd-test";
const BOX: &str = "berth-systemd-test";
const NETWORK: &str = "berth-sdtest";
const BRIDGE: &str = "berthsd0";
const PREFIX: &str = "berthsd";
const TABLE: &str = "berth_sdtest";
const DNS_ADDR: &str = "127.0.77.53";
const DOMAIN: &str = "sdtest.internal";

/// Packages on top of debootstrap's minbase: systemd as init, make for `make install-files`,
/// nft for netfilter, ssh/dig/ss for poking at things from inside.
const PACKAGES: &str =
    "systemd,systemd-sysv,dbus,iproute2,nftables,openssh-client,procps,dnsutils,make";

/// Docker mounts each cgroup v1 hierarchy read-only; systemd needs them writable. And Docker
/// leaves `/` a slave and private below: booted by the kernel, systemd makes `/` shared itself,
/// but under a container manager it keeps what it is given — and then a unit's credentials
/// (`LoadCredential=`, mounted in a helper's namespace and moved to /run/credentials) never
/// reach the unit: it sees an empty root-only directory. Shared `/` is what a real host has,
/// and so is a writable /sys (netfilter sets the bridge ports' `isolated` flag there).
const ENTRYPOINT: &str = r#"#!/bin/sh
# berth systemd test image: mount propagation and cgroups as on a real host, then boot systemd.
set -e
mount --make-rshared /
mount -o remount,rw /sys
mount -o remount,rw /sys/fs/cgroup 2>/dev/null || true
for dir in /sys/fs/cgroup/*; do
  [ -d "$dir" ] && [ ! -L "$dir" ] && mountpoint -q "$dir" || continue
  name=$(basename "$dir")
  case "$name" in
    systemd) opts=none,name=systemd ;;
    unified) continue ;;
    *) opts=$name ;;
  esac
  umount "$dir" && mount -t cgroup -o "$opts" cgroup "$dir"
done
exec /lib/systemd/systemd
"#;

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn docker(args: &[&str]) -> Output {
    run(Command::new("docker").args(args))
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("timed out after {}s waiting for {what}", timeout.as_secs());
}

/// `berth/systemd-test:bookworm-<hash of the recipe>` (FNV-1a: stable across Rust versions).
fn image() -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in PACKAGES.bytes().chain(ENTRYPOINT.bytes()) {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    format!("{IMAGE_REPO}:bookworm-{h:08x}")
}

/// Builds the systemd image unless it exists.
fn ensure_image() -> String {
    let image = image();
    if docker(&["image", "inspect", &image]).status.success() {
        return image;
    }
    eprintln!("building {image} (debootstrap, about a minute)");
    let dir = tempfile::Builder::new()
        .prefix("berth-systemd-image")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let root = dir.path().join("root");
    let out = run(Command::new("debootstrap")
        .args([
            "--variant=minbase",
            &format!("--include={PACKAGES}"),
            "bookworm",
        ])
        .arg(&root));
    assert!(
        out.status.success(),
        "debootstrap failed (scripts/test installs it):\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let entry = root.join("sbin/berth-test-init");
    std::fs::write(&entry, ENTRYPOINT).expect("write entrypoint");
    let out = run(Command::new("chmod").arg("0755").arg(&entry));
    assert!(out.status.success());
    // Units that only make sense on a real machine and fail or hang in a container.
    for unit in [
        "getty@tty1.service",
        "console-getty.service",
        "systemd-udevd.service",
        "systemd-networkd-wait-online.service",
    ] {
        let _ = std::os::unix::fs::symlink("/dev/null", root.join("etc/systemd/system").join(unit));
    }
    let _ = std::fs::write(root.join("etc/hostname"), "berth-systemd-test\n");
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn tar");
    let tar_out = tar.stdout.take().expect("tar stdout");
    let out = run(Command::new("docker")
        .args([
            "import",
            "-c",
            "CMD [\"/sbin/berth-test-init\"]",
            "-c",
            "ENV container=docker",
            "-",
            &image,
        ])
        .stdin(tar_out));
    let tarred = tar.wait().expect("wait for tar");
    assert!(
        out.status.success() && tarred.success(),
        "tar | docker import failed ({tarred}): {}",
        text(&out.stderr)
    );
    image
}

/// The test's Docker objects and nft tables; removed on drop (and before start, in case an
/// earlier run was killed before it could clean up).
struct Cleanup;

impl Cleanup {
    fn sweep() {
        let _ = docker(&["rm", "-f", BOX]);
        let _ = docker(&["rm", "-f", &format!("{PREFIX}-server-1")]);
        let _ = docker(&["volume", "rm", "-f", &format!("{PREFIX}-server-1-data")]);
        let _ = docker(&["network", "rm", NETWORK]);
        for family in ["inet", "bridge"] {
            let _ = run(Command::new("nft").args(["delete", "table", family, TABLE]));
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The journal is the one thing an operator would look at first.
            let out = docker(&[
                "exec",
                BOX,
                "journalctl",
                "--no-pager",
                "-n",
                "200",
                "-u",
                "berth-*",
            ]);
            eprintln!("--- journal of berth units ---\n{}", text(&out.stdout));
            let state = docker(&["inspect", "-f", "{{json .State}}", BOX]);
            let logs = docker(&["logs", "--tail", "30", BOX]);
            eprintln!(
                "--- container state ---\n{}\n--- container output ---\n{}{}",
                text(&state.stdout),
                text(&logs.stdout),
                text(&logs.stderr)
            );
        }
        Self::sweep();
    }
}

/// runc occasionally fails to join the container ("OCI runtime exec failed: … setns …",
/// exit 126) while systemd inside reorganises its cgroups; nothing ran, so it is retried.
fn exec_failed_to_start(out: &Output) -> bool {
    out.status.code() == Some(126) && text(&out.stderr).contains("OCI runtime exec failed")
}

/// `docker exec` into the systemd container.
fn exec(args: &[&str]) -> Output {
    let mut attempt = 0;
    loop {
        let mut cmd = Command::new("docker");
        cmd.args(["exec", BOX]).args(args);
        let out = run(&mut cmd);
        attempt += 1;
        if !exec_failed_to_start(&out) || attempt == 5 {
            return out;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn exec_ok(args: &[&str]) -> String {
    let out = exec(args);
    assert!(
        out.status.success(),
        "{args:?} failed ({}):\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn exec_stdin(args: &[&str], input: &[u8]) -> Output {
    for _ in 0..4 {
        let out = exec_stdin_once(args, input);
        if !exec_failed_to_start(&out) {
            return out;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    exec_stdin_once(args, input)
}

fn exec_stdin_once(args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new("docker")
        .args(["exec", "-i", BOX])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn docker exec");
    // A broken pipe here means the exec never started; its status says so.
    let _ = child.stdin.take().expect("stdin").write_all(input);
    child.wait_with_output().expect("docker exec")
}

fn show(unit: &str, prop: &str) -> String {
    exec_ok(&["systemctl", "show", "-p", prop, "--value", unit])
        .trim()
        .to_string()
}

fn journal(unit: &str) -> String {
    exec_ok(&["journalctl", "--no-pager", "-o", "cat", "-u", unit])
}

const SERVICES: [&str; 3] = [
    "berth-netfilter.service",
    "berth-dns.service",
    "berth-gateway.service",
];

fn wait_active(unit: &str) {
    wait_for(&format!("{unit} active"), Duration::from_secs(60), || {
        show(unit, "ActiveState") == "active"
    });
}

fn http_get(port: u16, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connect to metrics port {port}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("send request");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("read response");
    body
}

struct Ssh {
    key: PathBuf,
}

impl Ssh {
    fn command(&self, port: u16, remote: &str) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.arg("-i")
            .arg(&self.key)
            .args([
                "-p",
                &port.to_string(),
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "ConnectTimeout=20",
                "server1@127.0.0.1",
                remote,
            ])
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, port: u16, remote: &str) -> String {
        let out = run(&mut self.command(port, remote));
        assert!(
            out.status.success(),
            "ssh -p {port} server1@127.0.0.1 {remote:?} failed ({}): {}",
            out.status,
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// A session that outlives what the test does meanwhile (reload, stop).
    fn spawn(&self, port: u16, remote: &str) -> std::process::Child {
        self.command(port, remote)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ssh")
    }
}

fn finish(child: std::process::Child, what: &str) -> String {
    let out = child.wait_with_output().expect("wait for ssh");
    assert!(
        out.status.success(),
        "{what}: ssh session failed ({}): {}",
        out.status,
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn dig(name: &str) -> String {
    let out = run(Command::new("dig").args([
        &format!("@{DNS_ADDR}"),
        name,
        "+short",
        "+time=2",
        "+tries=1",
    ]));
    text(&out.stdout).trim().to_string()
}

fn write_file(path: &str, content: &str, mode: &str) {
    let out = exec_stdin(
        &[
            "sh",
            "-c",
            &format!("mkdir -p \"$(dirname {path})\" && cat > {path} && chmod {mode} {path}"),
        ],
        content.as_bytes(),
    );
    assert!(out.status.success(), "write {path}: {}", text(&out.stderr));
}

#[test]
fn units_boot_and_serve_under_systemd() {
    for tool in ["docker", "debootstrap", "dig", "ssh", "ssh-keygen", "nft"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success());
        assert!(
            matches!(found, Ok(true)),
            "{tool} is missing: scripts/test installs it"
        );
    }
    assert!(
        docker(&["image", "inspect", &tenant_image()])
            .status
            .success(),
        "tenant image {} is missing: scripts/test builds it",
        tenant_image()
    );
    // One run at a time on a machine: the names, subnet and resolver address are fixed (so a
    // killed run's leftovers can be swept), and developers share one Docker. A second run
    // waits here instead of sweeping the first one's container away.
    let lock = std::fs::File::create("/tmp/berth-systemd-boot.lock").expect("create lock file");
    lock.lock().expect("lock /tmp/berth-systemd-boot.lock");
    let image = ensure_image();
    Cleanup::sweep();
    let _cleanup = Cleanup;
    let t0 = Instant::now();

    let repo = env!("CARGO_MANIFEST_DIR");
    let bin = env!("CARGO_BIN_EXE_berth");
    let bin_dir = Path::new(bin).parent().expect("binary dir");
    let out = docker(&[
        "run",
        "-d",
        "--name",
        BOX,
        "--network",
        "host",
        "--cgroupns=private",
        "--cap-add",
        "SYS_ADMIN",
        "--cap-add",
        "NET_ADMIN",
        "--security-opt",
        "seccomp=unconfined",
        "--security-opt",
        "apparmor=unconfined",
        "--tmpfs",
        "/run",
        "--tmpfs",
        "/run/lock",
        "--tmpfs",
        "/tmp",
        "-v",
        "/var/run/docker.sock:/run/docker.sock",
        "-v",
        &format!("{repo}:{repo}:ro"),
        "-v",
        &format!("{}:{}:ro", bin_dir.display(), bin_dir.display()),
        &image,
    ]);
    assert!(
        out.status.success(),
        "docker run {image}: {}",
        text(&out.stderr)
    );
    wait_for("systemd to boot", Duration::from_secs(60), || {
        let s = text(&exec(&["systemctl", "is-system-running"]).stdout);
        matches!(s.trim(), "running" | "degraded")
    });
    let state = text(&exec(&["systemctl", "is-system-running"]).stdout);
    let version = exec_ok(&["systemctl", "--version"]);
    eprintln!(
        "booted {} in {:.1}s: {}",
        version.lines().next().unwrap_or_default(),
        t0.elapsed().as_secs_f64(),
        state.trim()
    );

    // No docker.service here (Docker is the host's, reached through its socket): the units
    // must not require one.
    assert_eq!(show("docker.service", "LoadState"), "not-found");

    // Install the way `make install` does.
    exec_ok(&["make", "-C", repo, "install-files", &format!("BIN={bin}")]);
    for unit in SERVICES
        .iter()
        .chain(&["berth.target", "berth-gateway.socket"])
    {
        exec_ok(&["test", "-f", &format!("/etc/systemd/system/{unit}")]);
    }
    assert_eq!(
        exec_ok(&["stat", "-c", "%a", "/etc/berth/berth.toml"]).trim(),
        "600"
    );

    // No config at all: every unit refuses to start, none falls back to the defaults.
    exec_ok(&["mv", "/etc/berth/berth.toml", "/etc/berth/berth.toml.off"]);
    for unit in SERVICES {
        let out = exec(&["systemctl", "start", unit]);
        assert!(!out.status.success(), "{unit} started without a config");
        let _ = exec(&["systemctl", "stop", unit]);
        let _ = exec(&["systemctl", "reset-failed", unit]);
    }
    let log = journal("berth-gateway.service");
    assert!(
        log.contains("cannot read config file /etc/berth/berth.toml"),
        "gateway:\n{log}"
    );
    exec_ok(&["mv", "/etc/berth/berth.toml.off", "/etc/berth/berth.toml"]);

    // The credential really reaches the dynamic users: a config with an unknown key must stop
    // the start with an error naming the key (the old fallback to defaults would have started).
    write_file(
        "/etc/berth/berth.toml",
        "[dns]\nlisten = [\"127.0.77.53:53\"]\nlistne = 1\n",
        "0600",
    );
    for unit in ["berth-dns.service", "berth-netfilter.service"] {
        let out = exec(&["systemctl", "start", unit]);
        assert!(!out.status.success(), "{unit} started with a broken config");
        let log = journal(unit);
        assert!(
            log.contains("listne"),
            "{unit}: the error does not name the bad key:\n{log}"
        );
        // Exit 64 (config error) is not retried: the unit stays failed instead of looping.
        assert_eq!(show(unit, "ExecMainStatus"), "64", "{unit}");
        std::thread::sleep(Duration::from_secs(3)); // longer than RestartSec
        assert_eq!(show(unit, "ActiveState"), "failed", "{unit}");
        assert_eq!(show(unit, "NRestarts"), "0", "{unit}");
        let _ = exec(&["systemctl", "reset-failed", unit]);
    }
    let _ = exec(&[
        "systemctl",
        "stop",
        "berth-dns.service",
        "berth-netfilter.service",
    ]);

    let (ssh_port, socket_port, metrics_port, dns_metrics_port) =
        (free_port(), free_port(), free_port(), free_port());
    let config = format!(
        r#"state_dir = "/var/lib/berth"
[ssh]
listen = ["127.0.0.1:{ssh_port}"]
[network]
name = "{NETWORK}"
bridge = "{BRIDGE}"
subnet = "172.19.77.0/24"
gateway = "172.19.77.1"
[dns]
listen = ["{DNS_ADDR}:53", "172.19.77.1:53"]
domain = "{DOMAIN}"
allow_from = ["127.0.0.0/8"]
[tenants]
image = "{image}"
name_prefix = "{PREFIX}"
[netfilter]
table = "{TABLE}"
[metrics]
listen = "127.0.0.1:{metrics_port}"
dns_listen = "127.0.0.1:{dns_metrics_port}"
netfilter_textfile = "/run/berth-netfilter/metrics.prom"
textfile_interval_secs = 2
"#,
        image = tenant_image()
    );
    write_file("/etc/berth/berth.toml", &config, "0600");
    exec_ok(&["berth", "config", "check"]);

    exec_ok(&["systemctl", "start", "berth.target"]);
    for unit in SERVICES {
        wait_active(unit);
    }
    eprintln!("berth.target up after {:.1}s", t0.elapsed().as_secs_f64());

    // Least privilege as documented: dynamic users for dns and netfilter, root for the gateway.
    for (unit, dynamic) in [
        ("berth-dns.service", true),
        ("berth-netfilter.service", true),
        ("berth-gateway.service", false),
    ] {
        let pid = show(unit, "MainPID");
        let user = exec_ok(&["ps", "-o", "user=", "-p", &pid]);
        assert_eq!(
            user.trim() != "root",
            dynamic,
            "{unit} runs as {}",
            user.trim()
        );
    }

    // Configured values in force, per unit: metrics on the configured ports, each with its own
    // component's series; netfilter (no IP sockets) through its textfile.
    let gw_metrics = http_get(metrics_port, "/metrics");
    assert!(
        gw_metrics.starts_with("HTTP/1.1 200") && gw_metrics.contains("berth_gateway"),
        "gateway metrics on 127.0.0.1:{metrics_port}:\n{gw_metrics}"
    );
    let dns_metrics = http_get(dns_metrics_port, "/metrics");
    assert!(
        dns_metrics.starts_with("HTTP/1.1 200")
            && dns_metrics.contains("berth_dns")
            && !dns_metrics.contains("berth_gateway"),
        "dns metrics on 127.0.0.1:{dns_metrics_port}:\n{dns_metrics}"
    );
    wait_for(
        "the netfilter metrics textfile",
        Duration::from_secs(20),
        || {
            text(&exec(&["cat", "/run/berth-netfilter/metrics.prom"]).stdout)
                .contains("berth_netfilter_counters_up 1")
        },
    );
    // Readable by a node_exporter that is not the dynamic user.
    assert_eq!(
        exec_ok(&[
            "stat",
            "-c",
            "%a",
            "/run/berth-netfilter",
            "/run/berth-netfilter/metrics.prom"
        ]),
        "755\n644\n"
    );
    // The filter: berth's own tables under the configured name, in the host's namespace.
    let tables = text(&run(Command::new("nft").args(["list", "tables"])).stdout);
    for family in ["inet", "bridge"] {
        assert!(
            tables.contains(&format!("table {family} {TABLE}")),
            "table {family} {TABLE} missing:\n{tables}"
        );
    }

    // An operator's first tenant, with the CLI inside the systemd host.
    let keydir = tempfile::tempdir().expect("tempdir");
    let key = keydir.path().join("id");
    let out = run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key));
    assert!(out.status.success(), "ssh-keygen: {}", text(&out.stderr));
    let pubkey = std::fs::read(keydir.path().join("id.pub")).expect("read public key");
    exec_ok(&["berth", "account", "add", "alice", "--no-password"]);
    let out = exec_stdin(&["berth", "account", "key", "add", "alice"], &pubkey);
    assert!(out.status.success(), "key add: {}", text(&out.stderr));
    let created = exec_ok(&["berth", "server", "create", "--owner", "alice"]);
    assert_eq!(created.lines().last(), Some("server1"), "{created}");

    let ssh = Ssh { key };
    let hello = ssh.run(ssh_port, "echo hello from $(hostname)");
    assert_eq!(hello.trim(), "hello from server1");

    // server1.<domain> through berth-dns, which learns it from the gateway's hosts file.
    let inspect = docker(&[
        "inspect",
        "-f",
        &format!("{{{{(index .NetworkSettings.Networks \"{NETWORK}\").IPAddress}}}}"),
        &format!("{PREFIX}-server-1"),
    ]);
    let ip = text(&inspect.stdout).trim().to_string();
    assert!(ip.starts_with("172.19.77."), "server1 address {ip:?}");
    wait_for(
        "server1 to resolve through berth-dns",
        Duration::from_secs(20),
        || dig(&format!("server1.{DOMAIN}")) == ip,
    );
    assert_eq!(
        exec_ok(&["stat", "-c", "%a", "/run/berth/hosts"]).trim(),
        "644"
    );
    let dns_log = journal("berth-dns.service");
    assert!(
        !dns_log.contains("tenant store") && !dns_log.contains("berth.db"),
        "berth-dns tried the store:\n{dns_log}"
    );

    // systemctl reload: same processes, the running session finishes untouched.
    let pids: Vec<String> = SERVICES.iter().map(|u| show(u, "MainPID")).collect();
    let session = ssh.spawn(ssh_port, "sleep 3; echo survived");
    std::thread::sleep(Duration::from_millis(1500));
    exec_ok(&["systemctl", "reload", SERVICES[0], SERVICES[1], SERVICES[2]]);
    assert_eq!(finish(session, "reload").trim(), "survived");
    for (unit, pid) in SERVICES.iter().zip(&pids) {
        assert_eq!(&show(unit, "MainPID"), pid, "{unit} restarted on reload");
        assert_eq!(show(unit, "ActiveState"), "active", "{unit} after reload");
    }
    assert_eq!(ssh.run(ssh_port, "echo again").trim(), "again");
    assert_eq!(dig(&format!("server1.{DOMAIN}")), ip);

    // The watchdog: a hung (SIGSTOPped) resolver is killed and restarted by systemd.
    write_file(
        "/etc/systemd/system/berth-dns.service.d/watchdog.conf",
        "[Service]\nWatchdogSec=3s\nTimeoutAbortSec=3s\n",
        "0644",
    );
    exec_ok(&["systemctl", "daemon-reload"]);
    exec_ok(&["systemctl", "restart", "berth-dns.service"]);
    wait_active("berth-dns.service");
    let hung = show("berth-dns.service", "MainPID");
    let restarts: u32 = show("berth-dns.service", "NRestarts").parse().unwrap_or(0);
    exec_ok(&["kill", "-STOP", &hung]);
    wait_for(
        "the watchdog to restart berth-dns",
        Duration::from_secs(60),
        || {
            let n: u32 = show("berth-dns.service", "NRestarts").parse().unwrap_or(0);
            n > restarts
                && show("berth-dns.service", "ActiveState") == "active"
                && show("berth-dns.service", "MainPID") != hung
        },
    );
    let log = journal("berth-dns.service");
    assert!(
        log.contains("atchdog timeout"),
        "no watchdog timeout logged:\n{log}"
    );
    wait_for(
        "server1 to resolve after the restart",
        Duration::from_secs(20),
        || dig(&format!("server1.{DOMAIN}")) == ip,
    );
    exec_ok(&["rm", "-r", "/etc/systemd/system/berth-dns.service.d"]);
    exec_ok(&["systemctl", "daemon-reload"]);

    // Socket activation: systemd holds the port, the gateway starts on the first connection.
    write_file(
        "/etc/systemd/system/berth-gateway.socket.d/port.conf",
        &format!("[Socket]\nListenStream=\nListenStream=127.0.0.1:{socket_port}\n"),
        "0644",
    );
    exec_ok(&["systemctl", "daemon-reload"]);
    exec_ok(&["systemctl", "stop", "berth-gateway.service"]);
    // Its runtime directory (and the hosts file) went with it; the resolver keeps the last
    // addresses rather than forgetting every tenant while the gateway is down.
    exec_ok(&["test", "!", "-e", "/run/berth/hosts"]);
    std::thread::sleep(Duration::from_millis(1500)); // more than the follower's poll
    assert_eq!(dig(&format!("server1.{DOMAIN}")), ip);
    exec_ok(&["systemctl", "start", "berth-gateway.socket"]);
    assert_eq!(show("berth-gateway.service", "ActiveState"), "inactive");
    assert_eq!(ssh.run(socket_port, "echo activated").trim(), "activated");
    wait_active("berth-gateway.service");
    let log = journal("berth-gateway.service");
    assert!(log.contains("socket-activated"), "gateway log:\n{log}");

    // Stop: a session in flight drains, every unit exits cleanly (no failure, status 0).
    let session = ssh.spawn(socket_port, "sleep 3; echo drained");
    std::thread::sleep(Duration::from_millis(1500));
    exec_ok(&["systemctl", "stop", "berth.target", "berth-gateway.socket"]);
    assert_eq!(finish(session, "stop").trim(), "drained");
    for unit in SERVICES {
        assert_eq!(show(unit, "ActiveState"), "inactive", "{unit} after stop");
        assert_eq!(show(unit, "Result"), "success", "{unit} after stop");
        assert_eq!(show(unit, "ExecMainStatus"), "0", "{unit} exit status");
    }
    for unit in SERVICES {
        let log = journal(unit);
        assert!(
            !log.contains("Address already in use") && !log.contains("not supported by protocol"),
            "{unit}:\n{log}"
        );
    }
    // Bridge-port isolation works under the unit: netfilter sets the flag over rtnetlink
    // (IFLA_BRPORT_ISOLATED, CAP_NET_ADMIN only); the root-owned sysfs files would refuse its
    // dynamic user.
    let log = journal("berth-netfilter.service");
    assert!(
        !log.contains("cannot isolate"),
        "netfilter could not isolate the bridge ports under its unit:\n{log}"
    );
    let ports = exec_ok(&["bridge", "-d", "link", "show", "master", BRIDGE]);
    // iproute2 6.1 may list other bridges' ports too (the host's, seen through the shared
    // network namespace): judge only this bridge's, one record per port ("N: name … master X"
    // then its detail line).
    let mut records: Vec<String> = Vec::new();
    for line in ports.lines() {
        if line.chars().next().is_some_and(|c| c.is_ascii_digit()) {
            records.push(line.to_string());
        } else if let Some(r) = records.last_mut() {
            r.push_str(line);
        }
    }
    let ours: Vec<&String> = records
        .iter()
        .filter(|r| r.contains(&format!("master {BRIDGE} ")))
        .collect();
    assert!(
        !ours.is_empty() && ours.iter().all(|r| r.contains("isolated on")),
        "tenant ports of {BRIDGE} not isolated:\n{ports}"
    );
    // What the units warned about, for whoever reads the test log (`--nocapture`).
    let warnings = exec_ok(&[
        "sh",
        "-c",
        "journalctl --no-pager -o cat -u 'berth-*' | grep -E ' (WARN|ERROR) ' | sed -E 's/^[^ ]+ +//' | sort | uniq -c | sort -rn | head -20",
    ]);
    eprintln!("--- berth units' warnings (count, message) ---\n{warnings}");
    eprintln!(
        "systemd boot test passed in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
}
