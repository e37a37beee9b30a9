//! The gateway in a PID namespace of its own, with its own /proc (`unshare --pid --fork
//! --mount-proc`): it cannot see a single container process. Sessions still start on the agent
//! path, a client's signal still reaches the process and its exit-signal comes back, and a
//! client's disconnect still hangs up the session while a `setsid`-detached process survives —
//! none of it reads the host's /proc.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{free_port, remove_network, tenant_image};

fn agent_binary() -> PathBuf {
    let p = std::env::var("BERTH_TEST_AGENT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("target/x86_64-unknown-linux-gnu/release/berth-agent")
        });
    assert!(p.is_file(), "{} missing: run `make agent`", p.display());
    p
}

struct Setup {
    dir: tempfile::TempDir,
    prefix: String,
    network: String,
    port: u16,
    server: String,
    gateway: Option<Child>,
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(mut g) = self.gateway.take() {
            let _ = g.kill();
            let _ = g.wait();
        }
        let ids = Command::new("docker")
            .args(["ps", "-aq", "--filter", &format!("name=^{}-", self.prefix)])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default();
        for id in ids.split_whitespace() {
            let _ = Command::new("docker").args(["rm", "-f", "-v", id]).output();
        }
        let _ = Command::new("docker")
            .args([
                "volume",
                "rm",
                "-f",
                &format!("{}-server-1-data", self.prefix),
            ])
            .output();
        remove_network(&self.network);
    }
}

fn berth(cfg: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_berth"))
        .env("BERTH_CONFIG", cfg)
        .args(args)
        .output()
        .expect("run berth")
}

fn start() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let pid = std::process::id();
    let prefix = format!("bpidns{pid}");
    let network = format!("{prefix}-net");
    let port = free_port();
    let w = dir.path().to_path_buf();
    let w = w.as_path();
    let cfg = w.join("berth.toml");
    std::fs::create_dir_all(w.join("state")).unwrap();
    std::fs::write(
        &cfg,
        format!(
            r#"state_dir = "{w}/state"
database_url = "sqlite://{w}/state/berth.db"
[ssh]
listen = ["127.0.0.1:{port}"]
agent_binary = "{agent}"
[network]
name = "{network}"
bridge = "bp{b}"
subnet = "10.214.{n}.0/24"
gateway = "10.214.{n}.1"
[tenants]
image = "{image}"
name_prefix = "{prefix}"
agent_dir = "{w}/agent"
[metrics]
listen = ""
"#,
            w = w.display(),
            agent = agent_binary().display(),
            b = pid % 100_000,
            n = pid % 200 + 20,
            image = tenant_image(),
        ),
    )
    .unwrap();
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(w.join("key"))
        .status()
        .unwrap();
    assert!(st.success());
    let mut setup = Setup {
        dir,
        prefix,
        network,
        port,
        server: String::new(),
        gateway: None,
    };
    let out = berth(&cfg, &["account", "add", "pidns", "--no-password"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = w.join("key.pub").display().to_string();
    let out = berth(&cfg, &["account", "key", "add", "pidns", "--file", &key]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = berth(&cfg, &["server", "create", "--owner", "pidns"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    setup.server = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string();
    assert!(
        setup.server.starts_with("server"),
        "server create printed {:?}",
        setup.server
    );
    let log = std::fs::File::create(w.join("gateway.log")).unwrap();
    let child = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
        .arg(env!("CARGO_BIN_EXE_berth"))
        .args(["run", "gateway"])
        .env("BERTH_CONFIG", &cfg)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("unshare");
    setup.gateway = Some(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "gateway never listened: {}",
            setup.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    setup
}

impl Setup {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    fn ssh(&self) -> Command {
        let mut c = Command::new("ssh");
        c.args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
        ])
        .arg("-i")
        .arg(self.dir.path().join("key"))
        .arg("-p")
        .arg(self.port.to_string())
        .arg(format!("{}@127.0.0.1", self.server));
        c
    }

    fn container(&self) -> String {
        let n = self.server.trim_start_matches("server");
        format!("{}-server-{n}", self.prefix)
    }

    fn running(&self, pat: &str) -> bool {
        let o = Command::new("docker")
            .args(["exec", &self.container(), "ps", "-eo", "args"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .any(|l| l.trim() == pat)
    }
}

#[test]
fn signals_and_hangup_work_from_a_gateway_that_cannot_see_the_containers() {
    let s = start();
    // The gateway really is in another PID namespace with its own /proc.
    let gw = s.gateway.as_ref().unwrap().id();
    let ns = |p: &str| std::fs::read_link(p).unwrap();
    let children = std::fs::read_to_string(format!("/proc/{gw}/task/{gw}/children")).unwrap();
    let inner: u32 = children.split_whitespace().next().unwrap().parse().unwrap();
    assert_ne!(
        ns("/proc/self/ns/pid"),
        ns(&format!("/proc/{inner}/ns/pid"))
    );

    let out = s.ssh().arg("echo hello; exit 3").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello\n",
        "{}",
        s.log()
    );
    assert_eq!(out.status.code(), Some(3));
    assert!(s.log().contains("session agent started"), "{}", s.log());

    // A signal request from the client: the process's trap runs; a KILL comes back as
    // exit-signal (paramiko reports it as -1 with no exit-status; OpenSSH would print it).
    let script = r#"
import paramiko, sys
from paramiko.common import cMSG_CHANNEL_REQUEST
from paramiko.message import Message
port, user, keyfile = int(sys.argv[1]), sys.argv[2], sys.argv[3]
c = paramiko.SSHClient()
c.set_missing_host_key_policy(paramiko.AutoAddPolicy())
c.connect("127.0.0.1", port=port, username=user, key_filename=keyfile, look_for_keys=False, allow_agent=False)
def signal(ch, name):
    m = Message(); m.add_byte(cMSG_CHANNEL_REQUEST); m.add_int(ch.remote_chanid)
    m.add_string("signal"); m.add_boolean(False); m.add_string(name)
    ch.transport._send_user_message(m)
ch = c.get_transport().open_session()
ch.exec_command("trap 'echo got-term; exit 3' TERM; echo ready; while :; do sleep 0.1; done")
buf = b""
while b"ready" not in buf:
    buf += ch.recv(100)
signal(ch, "TERM")
while True:
    d = ch.recv(100)
    if not d: break
    buf += d
print(buf.decode().split(), ch.recv_exit_status())
"#;
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .arg(s.port.to_string())
        .arg(&s.server)
        .arg(s.dir.path().join("key"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "['ready', 'got-term'] 3",
        "{} {}",
        String::from_utf8_lossy(&out.stderr),
        s.log()
    );

    // Disconnect: the session is hung up, a setsid-detached process survives.
    let mut c = s.ssh();
    c.arg("setsid sleep 4243 </dev/null >/dev/null 2>&1 & sleep 4242")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = c.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !s.running("sleep 4242") {
        assert!(Instant::now() < deadline, "exec never started");
        std::thread::sleep(Duration::from_millis(200));
    }
    child.kill().unwrap();
    let _ = child.wait();
    let deadline = Instant::now() + Duration::from_secs(15);
    while s.running("sleep 4242") {
        assert!(
            Instant::now() < deadline,
            "session survived the disconnect: {}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        s.running("sleep 4243"),
        "a setsid-detached process must survive"
    );
}
