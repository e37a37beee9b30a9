//! The session code against a fake [`Backend`]: no Docker, no store. A real OpenSSH client logs
//! in with a key, runs a command, writes stdin, asks for a PTY; the fake records what the
//! session code asked for and answers from memory. This is the seam a Kubernetes backend would
//! plug into.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use gateway::backend::{
    AuditRecord, Backend, BackendError, Chunk, Credentials, ExecRequest, Process, ProcessControl,
    ProcessOutput, Stream, Target,
};
use gateway::policy::{Exit, ForwardDest};
use tenants::ServerId;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

#[derive(Default)]
struct Seen {
    requests: Vec<ExecRequest>,
    stdin: Vec<u8>,
    audits: Vec<AuditRecord>,
}

struct Fake {
    key: russh::keys::PublicKey,
    seen: Arc<Mutex<Seen>>,
}

fn server() -> ServerId {
    tenants::parse_login("server7").unwrap()
}

#[async_trait::async_trait]
impl Backend for Fake {
    async fn credentials(&self, s: ServerId) -> Result<Option<Credentials>, BackendError> {
        Ok((s == server()).then(|| Credentials {
            server: s,
            owner: "alice".into(),
            login_allowed: true,
            password_hash: None,
            authorized_keys: vec![self.key.clone()],
        }))
    }

    async fn ensure_running(&self, s: ServerId) -> Result<Target, BackendError> {
        Ok(Target {
            server: s,
            container_id: "fake".into(),
            address: IpAddr::from([192, 0, 2, 7]),
            started_now: false,
            user: Some("tenant".into()),
            agent_dir: None,
            route: None,
        })
    }

    async fn exec(
        &self,
        _target: &Target,
        _login: &str,
        req: ExecRequest,
    ) -> Result<Process, BackendError> {
        let cmd = req.argv.last().cloned().unwrap_or_default();
        self.seen.lock().unwrap().requests.push(req);
        // A tiny "process": `echo-stdin` copies stdin to stdout and exits 0 at EOF; anything
        // else prints a line on each stream and exits 3.
        let (stdin_w, mut stdin_r) = tokio::io::duplex(64 * 1024);
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let (exit_tx, exit_rx) = mpsc::unbounded_channel();
        if cmd.contains("echo-stdin") {
            let seen = self.seen.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                loop {
                    let n = stdin_r.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    seen.lock().unwrap().stdin.extend_from_slice(&buf[..n]);
                    let _ = out_tx.send(Chunk::Stdout(Bytes::copy_from_slice(&buf[..n])));
                }
                let _ = exit_tx.send(Exit::Status(0));
            });
        } else {
            let _ = out_tx.send(Chunk::Stdout(Bytes::from_static(b"hello from a fake\n")));
            let _ = out_tx.send(Chunk::Stderr(Bytes::from_static(b"err\n")));
            let _ = exit_tx.send(Exit::Status(3));
        }
        Ok(Process {
            stdin: Box::new(stdin_w),
            keep_stdin_open: false,
            output: Box::new(FakeOutput { rx: out_rx }),
            control: Box::new(FakeControl { exit_rx }),
            path: "fake",
        })
    }

    async fn connect(
        &self,
        _target: &Target,
        _login: &str,
        _dest: ForwardDest,
        _port: u16,
    ) -> Result<Stream, BackendError> {
        Err(BackendError::Failed("no forwards in the fake".into()))
    }

    async fn audit(&self, record: AuditRecord) {
        self.seen.lock().unwrap().audits.push(record);
    }
}

/// Output ends when every sender is gone (the "process" closed its stdout and stderr).
struct FakeOutput {
    rx: mpsc::UnboundedReceiver<Chunk>,
}

#[async_trait::async_trait]
impl ProcessOutput for FakeOutput {
    async fn read(&mut self) -> Option<Chunk> {
        self.rx.recv().await
    }
}

struct FakeControl {
    exit_rx: mpsc::UnboundedReceiver<Exit>,
}

#[async_trait::async_trait]
impl ProcessControl for FakeControl {
    async fn resize(&mut self, _cols: u32, _rows: u32) {}
    async fn signal(&mut self, _name: &str) {}
    async fn wait(&mut self) -> Option<Exit> {
        self.exit_rx.recv().await
    }
    async fn hangup(&mut self) {}
}

struct Gw {
    port: u16,
    key: std::path::PathBuf,
    seen: Arc<Mutex<Seen>>,
    _dir: tempfile::TempDir,
    stop: tokio_util::sync::CancellationToken,
}

async fn start() -> Gw {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(st.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let public = russh::keys::PublicKey::from_openssh(public.trim()).unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let backend: Arc<dyn Backend> = Arc::new(Fake {
        key: public,
        seen: seen.clone(),
    });
    let mut cfg = gateway::Config::default();
    cfg.auth.host_keys.ed25519 = Some(dir.path().join("host_ed25519"));
    cfg.auth.host_keys.enable_rsa = false;
    let keys = gateway::hostkeys::load_or_generate(dir.path(), &cfg.auth.host_keys).unwrap();
    let auth = gateway::auth::Authenticator::new(&cfg, backend.clone());
    let shared = gateway::Shared::new(
        cfg,
        backend,
        Arc::new(auth),
        keys,
        Arc::new(gateway::Stats::default()),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(gateway::serve(shared, vec![listener], stop.clone()));
    Gw {
        port,
        key,
        seen,
        _dir: dir,
        stop,
    }
}

impl Gw {
    fn ssh(&self, extra: &[&str], cmd: &str) -> Command {
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
            "-o",
            "SetEnv=LANG=C.UTF-8",
        ])
        .arg("-i")
        .arg(&self.key)
        .arg("-p")
        .arg(self.port.to_string())
        .args(extra)
        .arg("server7@127.0.0.1")
        .arg(cmd);
        c
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_run_on_a_fake_backend() {
    let gw = start().await;

    // Exit status and the two output streams, and what the session asked the backend for.
    let out = tokio::task::block_in_place(|| gw.ssh(&[], "anything").output().unwrap());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from a fake\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    assert_eq!(out.status.code(), Some(3));
    {
        let seen = gw.seen.lock().unwrap();
        let req = &seen.requests[0];
        assert_eq!(req.argv.last().map(String::as_str), Some("anything"));
        assert!(req.pty.is_none());
        let env: Vec<_> = req.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert!(env.contains(&"BERTH_SERVER=server7".to_string()), "{env:?}");
        assert!(env.contains(&"LANG=C.UTF-8".to_string()), "{env:?}");
    }

    // Stdin reaches the process and EOF ends it.
    let mut child = tokio::task::block_in_place(|| {
        gw.ssh(&[], "echo-stdin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    });
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"through the seam").unwrap();
    }
    let out = tokio::task::block_in_place(|| child.wait_with_output().unwrap());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "through the seam");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(gw.seen.lock().unwrap().stdin, b"through the seam");

    // A PTY session: the size arrives with the request.
    let out = tokio::task::block_in_place(|| {
        gw.ssh(&["-tt", "-o", "RequestTTY=force"], "anything")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    });
    assert_eq!(out.status.code(), Some(3));
    let pty = gw.seen.lock().unwrap().requests.last().unwrap().pty;
    assert!(pty.is_some(), "no PTY size in the request");

    // Every session was audited as closed with its exit status. The close record is written
    // after the client has its exit status, so wait for it (bounded) rather than race it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while gw
        .seen
        .lock()
        .unwrap()
        .audits
        .iter()
        .filter(|a| a.kind == "session")
        .count()
        < 3
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let seen = gw.seen.lock().unwrap();
    let sessions: Vec<_> = seen.audits.iter().filter(|a| a.kind == "session").collect();
    assert_eq!(sessions.len(), 3, "{:?}", seen.audits);
    assert!(sessions.iter().any(|a| a.detail["exit_status"] == 3));
    assert!(
        sessions.iter().all(|a| a.detail["path"] == "fake"),
        "{sessions:?}"
    );
    drop(seen);
    gw.stop.cancel();
}
