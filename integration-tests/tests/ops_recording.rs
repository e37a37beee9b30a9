//! Session recording through the real OpenSSH client, read back by Debian's `asciinema`: what
//! `asciinema cat` prints equals what the client was sent (tmux with a resize, multi-byte
//! output split across reads); a full disk during recording leaves the session working; an exec
//! without a terminal is metadata only; a server's own setting beats `[recording] enabled`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use integration_tests::gateway::{GatewayHarness, Options};
use integration_tests::tenants::{berth, berth_bin};

/// The system Python (a pyenv shim on PATH may lack `pty` niceties); Debian's is /usr/bin.
fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn recording_opts(dir: &Path) -> Result<Options> {
    let mut opts = Options::default();
    opts.ssh.recording = gateway::recording::Config {
        enabled: true,
        dir: dir.display().to_string(),
        ..Default::default()
    };
    gateway::recording::prepare_dir(&opts.ssh.recording).context("recordings dir")?;
    Ok(opts)
}

/// Waits until the store holds `n` recordings of the harness's server (the row is written when
/// the session's recording has been finished, after the client has gone).
async fn wait_recordings(h: &GatewayHarness, n: usize) -> Result<Vec<tenants::Recording>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = h.store.recordings(h.server, 100).await?;
        if rows.len() >= n {
            return Ok(rows);
        }
        if Instant::now() > deadline {
            bail!("{} recordings stored, expected {n}", rows.len());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `asciinema cat FILE` run on a terminal of its own (it opens /dev/tty): its output bytes.
fn asciinema_cat(file: &str) -> Result<Vec<u8>> {
    let script = r#"
import os, pty, sys
pid, fd = pty.fork()
if pid == 0:
    os.environ["LANG"] = "C.UTF-8"
    os.environ["PYTHONIOENCODING"] = "utf-8"
    os.execvp("asciinema", ["asciinema", "cat", sys.argv[1]])
out = b""
while True:
    try:
        d = os.read(fd, 65536)
    except OSError:
        break
    if not d:
        break
    out += d
_, status = os.waitpid(pid, 0)
sys.stdout.buffer.write(out)
sys.exit(os.waitstatus_to_exitcode(status))
"#;
    let out = Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(file)
        .output()
        .context("run asciinema cat (install Debian's asciinema)")?;
    if !out.status.success() {
        bail!(
            "asciinema cat failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

/// A config file for the CLI on the harness's store.
fn cli_config(h: &GatewayHarness) -> Result<PathBuf> {
    let path = h.path("cli.toml");
    std::fs::write(
        &path,
        format!(
            "state_dir = \"{0}\"\ndatabase_url = \"sqlite://{0}/berth.db\"\n",
            h.dir.path().display()
        ),
    )?;
    Ok(path)
}

fn cast_events(file: &str) -> Result<(serde_json::Value, Vec<gateway::recording::CastEvent>)> {
    let text = std::fs::read_to_string(file).with_context(|| format!("read {file}"))?;
    gateway::recording::parse_cast(&text).map_err(anyhow::Error::msg)
}

fn mode(file: &str) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(file)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn multibyte_output_split_across_reads_plays_back_exactly() -> Result<()> {
    let rec = tempfile::tempdir()?;
    let h = GatewayHarness::start_with("recutf8", recording_opts(rec.path())?).await?;
    // 60 000 lines of 2-, 3- and 4-byte characters: the data path's reads split sequences.
    let out = blocking(|| {
        let mut c = h.ssh();
        c.arg("-tt")
            .arg(format!("{}@127.0.0.1", h.user()))
            .arg("yes 'é 日本語 🎉' | head -n 60000; echo done");
        c.output().context("ssh")
    })?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.len() > 900_000, "{} bytes", out.stdout.len());
    let rows = wait_recordings(&h, 1).await?;
    let r = &rows[0];
    assert_eq!(r.kind, "exec");
    assert_eq!(r.exit.as_deref(), Some("status 0"));
    assert_eq!(r.note, None, "the recording is complete");
    let file = r.file.clone().context("a terminal session has a file")?;
    assert!(file.starts_with(&rec.path().display().to_string()));
    assert_eq!(mode(&file), 0o600);
    let (header, events) = cast_events(&file)?;
    assert_eq!(header["version"], 2);
    assert!(
        header["command"]
            .as_str()
            .is_some_and(|c| c.contains("yes"))
    );
    assert!(
        events.iter().all(|e| !e.data.contains('\u{fffd}')),
        "no replacement characters"
    );
    assert!(
        events.iter().filter(|e| e.code == "o").count() > 1,
        "output spread over events"
    );
    let played = blocking(|| asciinema_cat(&file))?;
    assert!(
        played == out.stdout,
        "asciinema cat differs from what the client saw ({} vs {} bytes)",
        played.len(),
        out.stdout.len()
    );

    // The operator's view: the list, the file as exported, and playback.
    let cfg = cli_config(&h)?;
    let (code, listed, err) = blocking(|| berth(&cfg, &["session", "recordings", "--json"], None))?;
    assert_eq!(code, 0, "{err}");
    let listed: serde_json::Value = serde_json::from_str(&listed)?;
    assert_eq!(listed[0]["id"], r.id.as_str());
    assert_eq!(listed[0]["server"], h.server.map(|s| s.get()).unwrap_or(0));
    let exported = blocking(|| {
        Command::new(berth_bin()?)
            .arg("--config")
            .arg(&cfg)
            .args(["session", "export", &r.id])
            .output()
            .context("berth session export")
    })?;
    assert!(exported.status.success());
    assert!(
        exported.stdout == std::fs::read(&file)?,
        "export is the file"
    );
    let replay = blocking(|| {
        Command::new(berth_bin()?)
            .arg("--config")
            .arg(&cfg)
            .args([
                "session",
                "play",
                &r.id,
                "--speed",
                "100",
                "--idle-limit",
                "0.01",
            ])
            .output()
            .context("berth session play")
    })?;
    assert!(replay.status.success());
    assert!(
        replay.stdout == out.stdout,
        "play prints what the client saw"
    );
    Ok(())
}

/// Copies the host's tmux (Debian bookworm, like the test image) into the container.
fn install_tmux(h: &GatewayHarness) -> Result<()> {
    let id = h.server.context("server")?;
    let ctr = h.container(id);
    let tmux = Path::new("/usr/bin/tmux");
    if !tmux.exists() {
        bail!("tmux is missing on the host: install Debian's tmux (scripts/test does)");
    }
    for (src, dst) in [
        ("/usr/bin/tmux", "/usr/bin/tmux"),
        (
            "/lib/x86_64-linux-gnu/libevent_core-2.1.so.7",
            "/lib/x86_64-linux-gnu/libevent_core-2.1.so.7",
        ),
        (
            "/lib/x86_64-linux-gnu/libutempter.so.0",
            "/lib/x86_64-linux-gnu/libutempter.so.0",
        ),
    ] {
        let src = std::fs::canonicalize(src).with_context(|| format!("{src} on the host"))?;
        let st = Command::new("docker")
            .arg("cp")
            .arg("-L")
            .arg(&src)
            .arg(format!("{ctr}:{dst}"))
            .status()?;
        if !st.success() {
            bail!("docker cp {} failed", src.display());
        }
    }
    let out = h.docker_exec(id, &["tmux", "-V"])?;
    if !out.status.success() {
        bail!(
            "tmux does not run in the container: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tmux_with_resize_and_multibyte_output_plays_back_as_the_client_saw_it() -> Result<()> {
    let rec = tempfile::tempdir()?;
    let h = GatewayHarness::start_with("rectmux", recording_opts(rec.path())?).await?;
    blocking(|| install_tmux(&h))?;
    // OpenSSH on a terminal of its own (80x24); the script waits for the pane's first line,
    // resizes the terminal to 100x30 (SIGWINCH to ssh → window-change), waits for the pane to
    // report its new size, and lets the session end.
    let script = r#"
import os, pty, signal, struct, fcntl, termios, subprocess, sys, time
args = sys.argv[1:]
master, slave = pty.openpty()
fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
env = dict(os.environ, LANG="C.UTF-8", TERM="xterm-256color")
p = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=subprocess.PIPE, env=env,
                     start_new_session=True)
os.close(slave)
seen = b""
def read_until(marker, limit=60):
    global seen
    end = time.time() + limit
    while marker not in seen:
        if time.time() > end:
            sys.stderr.write("timeout waiting for %r; seen %r\n" % (marker, seen[-2000:]))
            sys.exit(3)
        try:
            d = os.read(master, 65536)
        except OSError:
            sys.stderr.write("eof waiting for %r\n" % marker)
            sys.exit(4)
        if not d:
            sys.exit(4)
        seen += d
read_until("READY 23 80".encode())
fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
os.kill(p.pid, signal.SIGWINCH)
# The pane (the terminal less tmux's status line) polls its size until it changed.
read_until("RESIZED 29 100".encode())
os.write(master, b"q")
while True:
    try:
        d = os.read(master, 65536)
    except OSError:
        break
    if not d:
        break
    seen += d
rc = p.wait()
sys.stderr.write(p.stderr.read().decode(errors="replace"))
sys.stdout.buffer.write(seen)
sys.exit(rc)
"#;
    let pane = "s0=$(stty size); printf 'READY %s\\n' \"$s0\"\n\
                for i in $(seq 1 300); do printf 'é 日本語 🎉 '; done; echo\n\
                while [ \"$(stty size)\" = \"$s0\" ]; do sleep 0.2; done\n\
                printf 'RESIZED %s\\n' \"$(stty size)\"\n\
                read -r -n 1 x\n";
    let id = h.server.context("server")?;
    let st = blocking(|| {
        h.docker_exec(
            id,
            &["sh", "-c", "printf '%s' \"$1\" > /tmp/pane.sh", "sh", pane],
        )
    })?;
    assert!(st.status.success());
    let remote = "tmux -u new-session 'bash /tmp/pane.sh'";
    let out = blocking(|| {
        let mut c = Command::new(python());
        c.arg("-c")
            .arg(script)
            .arg("ssh")
            .args(["-o", "SendEnv=LANG"])
            .args(h.ssh_opts())
            .arg("-p")
            .arg(h.addr.port().to_string())
            .arg("-tt")
            .arg(format!("{}@127.0.0.1", h.user()))
            .arg(remote);
        c.stdin(Stdio::null());
        c.output().context("python pty driver")
    })?;
    assert!(
        out.status.success(),
        "client failed ({:?}): {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = wait_recordings(&h, 1).await?;
    let file = rows[0].file.clone().context("file")?;
    let (header, events) = cast_events(&file)?;
    assert_eq!(
        (header["width"].clone(), header["height"].clone()),
        (80.into(), 24.into())
    );
    assert_eq!(header["env"]["TERM"], "xterm-256color");
    let resizes: Vec<&str> = events
        .iter()
        .filter(|e| e.code == "r")
        .map(|e| e.data.as_str())
        .collect();
    assert_eq!(resizes, vec!["100x30"]);
    let text: String = events
        .iter()
        .filter(|e| e.code == "o")
        .map(|e| e.data.as_str())
        .collect();
    assert!(text.contains("日本語 🎉"), "multi-byte output recorded");
    assert!(text.contains("RESIZED 29 100"));
    let played = blocking(|| asciinema_cat(&file))?;
    assert!(
        played == out.stdout,
        "asciinema cat differs from what the client saw ({} vs {} bytes)",
        played.len(),
        out.stdout.len()
    );
    Ok(())
}

/// A small tmpfs, unmounted on drop.
struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("rec");
        std::fs::create_dir(&path)?;
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&path)
            .status()?;
        if !st.success() {
            bail!("mount tmpfs at {} failed", path.display());
        }
        Ok(Self { path, _dir: dir })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_drops_the_recording_and_the_session_goes_on() -> Result<()> {
    let disk = Tmpfs::mount("64k")?;
    let h = GatewayHarness::start_with("recfull", recording_opts(&disk.path)?).await?;
    let before = gateway::metrics::RECORDINGS_DROPPED.get(1);
    let out = blocking(|| {
        let mut c = h.ssh();
        c.arg("-tt")
            .arg(format!("{}@127.0.0.1", h.user()))
            .arg("head -c 3000000 /dev/zero | tr '\\0' x; echo; echo END-OF-OUTPUT; exit 7");
        c.output().context("ssh")
    })?;
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let xs = out.stdout.iter().filter(|b| **b == b'x').count();
    assert_eq!(xs, 3_000_000, "every byte reached the client");
    assert!(String::from_utf8_lossy(&out.stdout).contains("END-OF-OUTPUT"));
    let rows = wait_recordings(&h, 1).await?;
    let note = rows[0].note.clone().unwrap_or_default();
    assert!(note.contains("write failed"), "note: {note:?}");
    assert_eq!(rows[0].exit.as_deref(), Some("status 7"));
    assert!(gateway::metrics::RECORDINGS_DROPPED.get(1) > before);
    // The next session on the same full disk works too.
    let again = blocking(|| h.ssh_exec("echo still-here", b""))?;
    assert_eq!(String::from_utf8_lossy(&again.stdout), "still-here\n");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exec_without_terminal_is_metadata_and_the_server_setting_wins() -> Result<()> {
    let rec = tempfile::tempdir()?;
    let h = GatewayHarness::start_with("recmeta", recording_opts(rec.path())?).await?;
    let out = blocking(|| h.ssh_exec("printf 12345; exit 3", b"abc"))?;
    assert_eq!(out.status.code(), Some(3));
    let rows = wait_recordings(&h, 1).await?;
    let r = &rows[0];
    assert_eq!(r.kind, "exec");
    assert_eq!(r.command.as_deref(), Some("printf 12345; exit 3"));
    assert_eq!(r.exit.as_deref(), Some("status 3"));
    assert_eq!(r.file, None);
    assert_eq!(r.bytes_out, 5);
    assert_eq!(r.account, h.account);
    assert_eq!(
        std::fs::read_dir(rec.path())?.count(),
        0,
        "no file for an exec without a terminal"
    );

    // `berth server set --record off` for this server: nothing more is recorded.
    let id = h.server.context("server")?;
    let cfg = cli_config(&h)?;
    let (code, _, err) = blocking(|| {
        berth(
            &cfg,
            &["server", "set", &id.login_name(), "--record", "off"],
            None,
        )
    })?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(h.store.server_operations(id).await?.record, Some(false));
    let out = blocking(|| {
        let mut c = h.ssh();
        c.arg("-tt")
            .arg(format!("{}@127.0.0.1", h.user()))
            .arg("echo unrecorded");
        c.output().context("ssh")
    })?;
    assert!(out.status.success());
    // Its row, had it been recorded, would be stored before the next session's.
    h.store.set_server_record(id, Some(true)).await?;
    let out = blocking(|| h.ssh_exec("echo recorded", b""))?;
    assert!(out.status.success());
    let rows = wait_recordings(&h, 2).await?;
    let mut commands: Vec<Option<&str>> = rows.iter().map(|r| r.command.as_deref()).collect();
    commands.sort();
    assert_eq!(
        commands,
        vec![Some("echo recorded"), Some("printf 12345; exit 3")]
    );
    Ok(())
}
