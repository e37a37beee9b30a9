//! The cluster roles as separate `berth run` processes sharing one PostgreSQL database: their
//! config files, start and stop, and the OpenSSH client pointed at a front.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::gateway::client_opts;
use crate::tenants::{DockerWorld, TestDb, berth, berth_bin, write_cli_config};

pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A `berth run` child, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Daemon(pub Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A config for one role: `cluster` is the `[cluster]` body, `ssh` lines for `[ssh]`.
pub fn config(
    dir: &Path,
    db: &TestDb,
    world: &DockerWorld,
    cluster: &str,
    ssh: &str,
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = write_cli_config(dir, &db.url, world, "")?;
    let mut text = std::fs::read_to_string(&path)?;
    let agent = crate::gateway::agent_binary()?;
    text.push_str(&format!(
        "[ssh]\n{ssh}\nagent_binary = \"{}\"\n[ssh.auth]\nbcrypt_dummy_cost = 4\n\
         [metrics]\nlisten = \"\"\ndns_listen = \"\"\n[publish]\nhosts_file = \"\"\n\
         [netfilter]\nports_file = \"\"\n[cluster]\n{cluster}\n",
        agent.display()
    ));
    std::fs::write(&path, text)?;
    Ok(path)
}

/// `berth run COMPONENT` with its log in `log`.
pub fn start(cfg: &Path, component: &str, log: &Path) -> Result<Daemon> {
    let child = Command::new(berth_bin()?)
        .arg("--config")
        .arg(cfg)
        .args(["run", component])
        .env_remove("BERTH_DATABASE_URL")
        .env_remove("BERTH_STATE_DIR")
        .env("BERTH_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .context("spawn berth run")?;
    Ok(Daemon(child))
}

pub fn wait_port(port: u16, what: &str, log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!(
        "{what} never listened on {port}; its log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    )
}

/// A `berth` command that must succeed; its stdout.
pub fn ok(cfg: &Path, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let (code, out, err) = berth(cfg, args, stdin)?;
    if code != 0 {
        bail!("berth {args:?} failed ({code}): {err}");
    }
    Ok(out)
}

/// `ssh -p PORT USER@127.0.0.1 -- CMD` with `key`.
pub fn ssh(port: u16, key: &Path, user: &str, cmd: &str) -> Result<Output> {
    Command::new("ssh")
        .args(client_opts(key))
        .arg("-p")
        .arg(port.to_string())
        .arg(format!("{user}@127.0.0.1"))
        .arg("--")
        .arg(cmd)
        .stdin(Stdio::null())
        .output()
        .context("run ssh")
}

pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout {}\nstderr {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
