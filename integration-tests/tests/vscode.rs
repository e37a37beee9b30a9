//! VS Code Remote-SSH, certified offline: the real server cannot be downloaded here, so a fake
//! one that follows the same protocol stands in. The install script is modelled on the one the
//! extension pipes into `ssh -T -D <port> host bash` (no PTY, no echo of stdin): it checks
//! `uname`, `/etc/os-release`, `tar` and `ps`, takes a lock under `~/.vscode-server`, unpacks
//! the server tarball copied over scp (the offline fallback) when the server is missing, starts
//! it in the background with `--host=127.0.0.1 --port=0` (it must outlive the exec channel),
//! and prints the markers (`listeningOn==127.0.0.1:PORT==`). The test then reaches the server
//! through SOCKS on `-D` (the container's loopback, not the host's) and through
//! `direct-streamlocal` to its `/tmp/code-<uuid>` socket, and a second run takes the "already
//! running" path.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use integration_tests::gateway::GatewayHarness;

const COMMIT: &str = "0f0d87fa9e96c856c5212fc86db137ac0d783365";
const SOCKET: &str = "/tmp/code-7f3c2a1e-5b4d-4c6e-9a8b-1d2e3f4a5b6c";

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// The fake server: an HTTP endpoint on 127.0.0.1:0 and on a unix socket, logging like the
/// real one ("Extension host agent listening on PORT").
const SERVER_PY: &str = r#"import http.server, socketserver, sys, threading, os
args = dict(a.split('=', 1) for a in sys.argv[1:] if a.startswith('--') and '=' in a)
commit = args.get('--commit', '?')
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ('fake vscode server %s\n' % commit).encode()
        self.send_response(200)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
    def address_string(self):
        return 'local'
tcp = socketserver.ThreadingTCPServer((args['--host'], int(args['--port'])), H)
sock = args.get('--socket-path')
if sock:
    if os.path.exists(sock):
        os.unlink(sock)
    unix = socketserver.ThreadingUnixStreamServer(sock, H)
    threading.Thread(target=unix.serve_forever, daemon=True).start()
print('Extension host agent listening on %d' % tcp.server_address[1], flush=True)
tcp.serve_forever()
"#;

/// The install script, after the extension's: markers between `START`/`END` lines.
fn install_script() -> String {
    format!(
        r#"set -u
COMMIT={COMMIT}
DATA="$HOME/.vscode-server"
SERVER_DIR="$DATA/bin/$COMMIT"
LOG="$DATA/.$COMMIT.log"
PIDFILE="$DATA/.$COMMIT.pid"
TARBALL="$DATA/vscode-server-$COMMIT.tar.gz"
echo "a7c3b2: start"
echo "platform==$(uname -s | tr A-Z a-z)=="
echo "arch==$(uname -m)=="
. /etc/os-release && echo "osReleaseId==$ID=="
for t in tar gzip ps bash; do command -v $t >/dev/null || {{ echo "missing==$t=="; exit 1; }}; done
mkdir -p "$DATA"
LOCK="$DATA/.$COMMIT.lock"
while ! mkdir "$LOCK" 2>/dev/null; do sleep 0.1; done
trap 'rmdir "$LOCK"' EXIT
if [ ! -x "$SERVER_DIR/bin/code-server" ]; then
    if [ -f "$TARBALL" ]; then
        mkdir -p "$SERVER_DIR" && tar -xzf "$TARBALL" -C "$SERVER_DIR" && echo "unpackResult==success=="
    else
        echo "serverMissing==1=="
        echo "a7c3b2: end"
        exit 0
    fi
fi
if [ -f "$PIDFILE" ] && ps -p "$(cat "$PIDFILE")" >/dev/null 2>&1; then
    echo "alreadyRunning==1=="
else
    : > "$LOG"
    setsid nohup "$SERVER_DIR/bin/code-server" --host=127.0.0.1 --port=0 --socket-path={SOCKET} --commit=$COMMIT >"$LOG" 2>&1 </dev/null &
    echo $! > "$PIDFILE"
fi
for i in $(seq 1 600); do
    PORT=$(sed -n 's/.*Extension host agent listening on \([0-9]*\).*/\1/p' "$LOG" | head -1)
    [ -n "$PORT" ] && break
    sleep 0.1
done
echo "listeningOn==127.0.0.1:$PORT=="
echo "exitCode==0=="
echo "a7c3b2: end"
cat >/dev/null
"#
    )
}

struct Run {
    child: Child,
    markers: Vec<(String, String)>,
    stdin: Option<std::process::ChildStdin>,
}

impl Run {
    fn marker(&self, name: &str) -> Option<&str> {
        self.markers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    fn finish(mut self) -> Result<()> {
        drop(self.stdin.take());
        let st = self.child.wait()?;
        anyhow::ensure!(st.success(), "ssh ended with {st}");
        Ok(())
    }
}

/// `ssh -T -D <socks> host bash` with the script on stdin, kept open (as the extension keeps
/// it) until [`Run::finish`]; returns once the end marker arrived.
fn run_install(h: &GatewayHarness, socks: u16) -> Result<Run> {
    let mut child = h
        .ssh()
        .args(["-T", "-D", &format!("127.0.0.1:{socks}")])
        .arg(format!("{}@127.0.0.1", h.user()))
        .arg("bash")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut stdin = child.stdin.take().context("stdin")?;
    stdin.write_all(install_script().as_bytes())?;
    stdin.flush()?;
    let out = child.stdout.take().context("stdout")?;
    let mut markers = Vec::new();
    let mut echoed = false;
    for line in BufReader::new(out).lines() {
        let line = line?;
        if line.contains("COMMIT=") {
            echoed = true;
        }
        if line == "a7c3b2: end" {
            break;
        }
        if let Some(m) = line.strip_suffix("==")
            && let Some((k, v)) = m.split_once("==")
        {
            markers.push((k.to_string(), v.to_string()));
        }
    }
    anyhow::ensure!(!echoed, "the server echoed the script back");
    Ok(Run {
        child,
        markers,
        stdin: Some(stdin),
    })
}

/// `GET /` through a SOCKS5 proxy (`ssh -D`) to `127.0.0.1:port` on the far side.
fn get_via_socks(socks: u16, port: u16) -> Result<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", socks))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(&[5, 1, 0])?;
    let mut r = [0u8; 2];
    s.read_exact(&mut r)?;
    anyhow::ensure!(r == [5, 0], "socks greeting {r:?}");
    let p = port.to_be_bytes();
    s.write_all(&[5, 1, 0, 1, 127, 0, 0, 1, p[0], p[1]])?;
    let mut r = [0u8; 10];
    s.read_exact(&mut r)?;
    anyhow::ensure!(r[1] == 0, "socks connect refused: {}", r[1]);
    http_get(s)
}

fn http_get<S: Read + Write>(mut s: S) -> Result<String> {
    s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    Ok(resp
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string())
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vscode_remote_ssh_flow_offline() -> Result<()> {
    let h = GatewayHarness::start("vscode").await?;
    let socks = free_port()?;

    // First contact: no server yet, and no download possible.
    let run = blocking(|| run_install(&h, socks))?;
    assert_eq!(run.marker("platform"), Some("linux"));
    assert_eq!(run.marker("arch"), Some("x86_64"));
    assert_eq!(run.marker("osReleaseId"), Some("debian"));
    assert_eq!(run.marker("missing"), None, "{:?}", run.markers);
    assert_eq!(run.marker("serverMissing"), Some("1"), "{:?}", run.markers);
    blocking(|| run.finish())?;

    // The offline fallback: the server tarball copied over scp.
    let dir = h.dir.path();
    let stage = dir.join("stage");
    std::fs::create_dir_all(stage.join("bin"))?;
    std::fs::write(stage.join("server.py"), SERVER_PY)?;
    std::fs::write(
        stage.join("bin/code-server"),
        "#!/bin/sh\nexec python3 \"$(dirname \"$0\")/../server.py\" \"$@\"\n",
    )?;
    let st = Command::new("chmod")
        .arg("755")
        .arg(stage.join("bin/code-server"))
        .status()?;
    anyhow::ensure!(st.success());
    let tarball = dir.join(format!("vscode-server-{COMMIT}.tar.gz"));
    let st = Command::new("tar")
        .arg("-czf")
        .arg(&tarball)
        .arg("-C")
        .arg(&stage)
        .args(["bin", "server.py"])
        .status()?;
    anyhow::ensure!(st.success(), "tar");
    let out = blocking(|| {
        Command::new("scp")
            .args(h.ssh_opts())
            .arg("-P")
            .arg(h.addr.port().to_string())
            .arg(&tarball)
            .arg(format!("{}@127.0.0.1:.vscode-server/", h.user()))
            .output()
    })?;
    assert!(
        out.status.success(),
        "scp: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Second run: unpack, start in the background, markers back.
    let run = blocking(|| run_install(&h, socks))?;
    assert_eq!(
        run.marker("unpackResult"),
        Some("success"),
        "{:?}",
        run.markers
    );
    let listening = run
        .marker("listeningOn")
        .context("listeningOn")?
        .to_string();
    let port: u16 = listening
        .strip_prefix("127.0.0.1:")
        .context("host")?
        .parse()
        .with_context(|| format!("port in {listening:?}"))?;
    // Through SOCKS on -D: the container's loopback (nothing listens there on the host).
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        match blocking(|| get_via_socks(socks, port)) {
            Ok(b) => break b,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    };
    assert_eq!(body, format!("fake vscode server {COMMIT}\n"));
    blocking(|| run.finish())?;

    // The server outlived its exec channel; newer releases talk to its socket with
    // direct-streamlocal.
    let local = dir.join("code.sock");
    let mut fwd = h
        .ssh()
        .args(["-N", "-L", &format!("{}:{SOCKET}", local.display())])
        .arg(format!("{}@127.0.0.1", h.user()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        let r = std::os::unix::net::UnixStream::connect(&local)
            .map_err(anyhow::Error::from)
            .and_then(|s| {
                s.set_read_timeout(Some(Duration::from_secs(30)))?;
                blocking(|| http_get(s))
            });
        match r {
            Ok(b) if !b.is_empty() => break b,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            other => anyhow::bail!("direct-streamlocal never answered: {other:?}"),
        }
    };
    assert_eq!(body, format!("fake vscode server {COMMIT}\n"));
    let _ = fwd.kill();
    let _ = fwd.wait();

    // Reconnect: the "already running" path, same port.
    let run = blocking(|| run_install(&h, socks))?;
    assert_eq!(run.marker("alreadyRunning"), Some("1"), "{:?}", run.markers);
    assert_eq!(run.marker("listeningOn"), Some(listening.as_str()));
    blocking(|| run.finish())?;
    Ok(())
}
