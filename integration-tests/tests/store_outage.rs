//! The account database goes away under a running gateway (a PostgreSQL server of the test's
//! own on loopback, stopped and started again): open sessions keep working, new logins fail
//! promptly — after the first, with a line saying why — and everything resumes when it returns.
//! Real PostgreSQL, real Docker tenant, real OpenSSH client.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use integration_tests::gateway::client_opts;
use integration_tests::postgres::{as_postgres, bin_dir};
use integration_tests::tenants::{DockerWorld, require_docker};
use tenants::{Provisioner, ServerSpec, Store};
use tokio_util::sync::CancellationToken;

/// A PostgreSQL server of this test's own: its data in a temp dir, on 127.0.0.1:`port`.
struct Postgres {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Postgres {
    fn init() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let st = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status()?;
        anyhow::ensure!(st.success(), "chown the postgres dir");
        let bin = bin_dir()?;
        let data = dir.path().join("data");
        let out = as_postgres(
            dir.path(),
            &[
                &bin.join("initdb").to_string_lossy(),
                "-D",
                &data.to_string_lossy(),
                "-U",
                "berth",
                "--auth=trust",
                "--no-sync",
            ],
        )
        .output()?;
        if !out.status.success() {
            bail!("initdb: {}", String::from_utf8_lossy(&out.stderr));
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut pg = Self {
            dir,
            port,
            child: None,
        };
        pg.start()?;
        Ok(pg)
    }

    fn url(&self) -> String {
        format!("postgres://berth@127.0.0.1:{}/postgres", self.port)
    }

    fn start(&mut self) -> Result<()> {
        let bin = bin_dir()?;
        let d = self.dir.path();
        let child = as_postgres(
            d,
            &[
                &bin.join("postgres").to_string_lossy(),
                "-D",
                &d.join("data").to_string_lossy(),
                "-k",
                &d.to_string_lossy(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                &format!("port={}", self.port),
                "-c",
                "fsync=off",
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start postgres")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("postgres did not come up on {}", self.port)
    }

    /// Fast shutdown (SIGINT): every open database connection is closed.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

fn ssh(port: u16, key: &Path, user: &str) -> Command {
    ssh_at(port, key, user, "ERROR")
}

/// `level` INFO shows the server's banner (OpenSSH hides it below INFO; its first value of an
/// option wins, so this one goes before the shared options).
fn ssh_at(port: u16, key: &Path, user: &str, level: &str) -> Command {
    let mut c = Command::new("ssh");
    c.arg("-o")
        .arg(format!("LogLevel={level}"))
        .args(client_opts(key))
        .arg("-p")
        .arg(port.to_string())
        .arg(format!("{user}@127.0.0.1"));
    c
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout {}\nstderr {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_database_stops_new_logins_only() -> Result<()> {
    require_docker()?;
    let mut pg = tokio::task::block_in_place(Postgres::init)?;
    let store = Store::connect(&pg.url()).await?;
    let world = DockerWorld::new("pgoutage", 0);
    let provisioner =
        Provisioner::connect(&world.net, &world.tenants_config(), store.clone()).await?;
    provisioner.ensure_network().await?;
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("id_ed25519");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()?;
    anyhow::ensure!(st.success(), "ssh-keygen");
    store.add_account("alice", None::<&str>).await?;
    store
        .add_key(
            "alice",
            std::fs::read_to_string(key.with_extension("pub"))?.trim(),
        )
        .await?;
    let server = provisioner
        .create_server("alice", ServerSpec::default())
        .await?;
    let user = server.id.login_name();

    let mut cfg = integration_tests::gateway::Options::default().ssh;
    cfg.agent_binary = integration_tests::gateway::agent_binary()?
        .display()
        .to_string();
    cfg.auth.host_keys.ed25519 = Some(dir.path().join("host_key"));
    cfg.auth.host_keys.enable_rsa = false;
    let keys = gateway::hostkeys::load_or_generate(dir.path(), &cfg.auth.host_keys)?;
    let shared = gateway::build(cfg, store.clone(), provisioner.clone(), keys, None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let stop = CancellationToken::new();
    tokio::spawn(gateway::serve(shared, vec![listener], stop.clone()));
    let _stop = stop.drop_guard();

    // A session opened while the database is up.
    let mut held = ssh(port, &key, &user)
        .arg("--")
        .arg("echo open; while read line; do echo \"got $line\"; done")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut to_held = held.stdin.take().context("held stdin")?;
    let mut from_held = BufReader::new(held.stdout.take().context("held stdout")?);
    let mut line = String::new();
    tokio::task::block_in_place(|| from_held.read_line(&mut line))?;
    assert_eq!(line, "open\n");

    // The database goes away.
    tokio::task::block_in_place(|| pg.stop());

    // New logins fail promptly; once one has found the database down, the next are told so.
    let mut told = false;
    for attempt in 0..3 {
        let t = Instant::now();
        let out =
            tokio::task::block_in_place(|| ssh_at(port, &key, &user, "INFO").arg("true").output())?;
        let took = t.elapsed();
        assert!(!out.status.success(), "attempt {attempt}: {}", text(&out));
        assert!(
            took < Duration::from_secs(25),
            "attempt {attempt} took {took:?}: {}",
            text(&out)
        );
        let said = String::from_utf8_lossy(&out.stderr).contains("account database is unreachable");
        eprintln!("login {attempt} with the database down: refused in {took:?}, told why: {said}");
        if said {
            told = true;
            break;
        }
    }
    assert!(told, "no login was told why it failed");

    // The open session still works.
    tokio::task::block_in_place(|| -> Result<()> {
        writeln!(to_held, "ping")?;
        line.clear();
        from_held.read_line(&mut line)?;
        Ok(())
    })?;
    assert_eq!(line, "got ping\n");

    // The database returns: logins work again, and the notice goes with the first answer.
    tokio::task::block_in_place(|| pg.start())?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = tokio::task::block_in_place(|| ssh(port, &key, &user).arg("echo back").output())?;
        if out.status.success() {
            assert_eq!(String::from_utf8_lossy(&out.stdout), "back\n");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "logins never resumed: {}",
            text(&out)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let out =
        tokio::task::block_in_place(|| ssh_at(port, &key, &user, "INFO").arg("true").output())?;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("unreachable"),
        "{}",
        text(&out)
    );

    drop(to_held);
    let _ = held.kill();
    let _ = held.wait();
    store.close().await;
    Ok(())
}
