//! Session recording: terminal sessions as asciicast v2 files, execs without a terminal as
//! metadata only, one store row per recorded session (through [`Backend::recording_done`]).
//!
//! The session task never waits for the disk. It hands each output chunk (a reference-counted
//! `Bytes`, no copy), resize and, when `[recording] input = true`, input chunk to a bounded
//! queue with `try_send`; one writer task per recording turns them into JSON lines and writes
//! them. When the queue is full (a slow disk) or a write fails (a full disk), the recording
//! stops with a counted and logged event and the session goes on. A recording that reaches
//! `max_bytes_per_session` ends with a marker (`"m"`) event; the session goes on.
//!
//! Output is decoded as UTF-8 across chunk boundaries: a sequence split between two reads is
//! held back until its remaining bytes arrive ([`Utf8Carry`]), so the file holds exactly the
//! characters the client was sent; only bytes that are not UTF-8 at all become U+FFFD (JSON
//! strings cannot hold them). SFTP sessions are not recorded here (their audit is per
//! operation). This module does not decide who may read recordings: files are 0600 in a 0700
//! directory and the CLI reads them as root.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::backend::BackendError;
use crate::channel::PtySpec;
use crate::conn::Conn;
use crate::policy::{Exit, Program};

/// The `[recording]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Record sessions of every server whose own setting (`berth server set --record`) is unset.
    pub enabled: bool,
    /// Where recordings are written (0700, files 0600). Empty: `<state_dir>/recordings`.
    pub dir: String,
    /// A recording that reaches this size ends with a marker; the session goes on.
    pub max_bytes_per_session: u64,
    /// Recordings (files and rows) older than this many days are removed (0: kept forever).
    pub retention_days: u32,
    /// Also record what the client types (`"i"` events). Off by default: input holds passwords
    /// typed at prompts.
    pub input: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: false,
            dir: String::new(),
            max_bytes_per_session: 64 * 1024 * 1024,
            retention_days: 90,
            input: false,
        }
    }
}

impl Config {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_bytes_per_session < 4096 {
            return Err(format!(
                "recording.max_bytes_per_session must be at least 4096, got {}",
                self.max_bytes_per_session
            ));
        }
        if !self.dir.is_empty() && !Path::new(&self.dir).is_absolute() {
            return Err(format!(
                "recording.dir must be an absolute path, got {:?}",
                self.dir
            ));
        }
        Ok(())
    }
}

/// Bytes of output that may wait for the writer before the recording is dropped.
const QUEUE_BYTES: usize = 4 * 1024 * 1024;
/// Events that may wait (a bound on small chunks, whose count the byte bound does not limit).
const QUEUE_EVENTS: usize = 4096;

// ---------------------------------------------------------------------------------------------
// Pure parts: UTF-8 across chunks, event lines, the header.

/// Decodes a byte stream as UTF-8 chunk by chunk, holding back an incomplete sequence at the
/// end of a chunk until the next one completes it.
#[derive(Debug, Default)]
pub struct Utf8Carry {
    held: Vec<u8>,
}

impl Utf8Carry {
    /// The text of `data` after what was held back; an incomplete sequence at its end is kept.
    pub fn push(&mut self, data: &[u8]) -> String {
        let mut bytes = std::mem::take(&mut self.held);
        bytes.extend_from_slice(data);
        let mut out = String::with_capacity(bytes.len());
        let mut rest = &bytes[..];
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    break;
                }
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    // Safe: `valid_up_to` is the length of a valid prefix.
                    out.push_str(std::str::from_utf8(good).unwrap_or_default());
                    match e.error_len() {
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &bad[n..];
                        }
                        None => {
                            // Incomplete at the end (at most 3 bytes): wait for the rest.
                            self.held = bad.to_vec();
                            break;
                        }
                    }
                }
            }
        }
        out
    }

    /// What is still held back (a sequence the stream never completed), as replacement text.
    pub fn finish(&mut self) -> String {
        let held = std::mem::take(&mut self.held);
        String::from_utf8_lossy(&held).into_owned()
    }
}

/// One asciicast v2 event line (with its newline).
pub fn event_line(at: Duration, code: &str, data: &str) -> String {
    let data = serde_json::Value::String(data.to_string());
    format!("[{:.6}, \"{code}\", {data}]\n", at.as_secs_f64())
}

/// What the header says about a recorded terminal session.
#[derive(Debug, Clone)]
pub struct CastInfo {
    pub cols: u32,
    pub rows: u32,
    /// Unix seconds at the start.
    pub timestamp: u64,
    /// The command for an exec, `None` for a login shell.
    pub command: Option<String>,
    pub term: String,
    pub title: String,
}

/// The asciicast v2 header line (with its newline).
pub fn header_line(info: &CastInfo) -> String {
    let mut h = serde_json::json!({
        "version": 2,
        "width": info.cols,
        "height": info.rows,
        "timestamp": info.timestamp,
        "title": info.title,
        "env": { "TERM": info.term },
    });
    if let (Some(cmd), Some(m)) = (&info.command, h.as_object_mut()) {
        m.insert("command".into(), cmd.clone().into());
    }
    format!("{h}\n")
}

/// One event read back from a cast file.
#[derive(Debug, Clone, PartialEq)]
pub struct CastEvent {
    pub at: f64,
    pub code: String,
    pub data: String,
}

/// Reads an asciicast v2 file: its header and events. Lines that are not events are errors
/// naming their line number.
pub fn parse_cast(text: &str) -> Result<(serde_json::Value, Vec<CastEvent>), String> {
    let mut lines = text.lines().enumerate();
    let header: serde_json::Value = match lines.next() {
        Some((_, l)) => serde_json::from_str(l).map_err(|e| format!("header: {e}"))?,
        None => return Err("empty recording".into()),
    };
    if header.get("version").and_then(|v| v.as_u64()) != Some(2) {
        return Err("not an asciicast v2 header".into());
    }
    let mut events = Vec::new();
    for (i, l) in lines {
        if l.trim().is_empty() {
            continue;
        }
        let (at, code, data): (f64, String, String) =
            serde_json::from_str(l).map_err(|e| format!("line {}: {e}", i + 1))?;
        events.push(CastEvent { at, code, data });
    }
    Ok((header, events))
}

// ---------------------------------------------------------------------------------------------
// The running recording.

enum Event {
    Output(Duration, Bytes),
    Input(Duration, Bytes),
    Resize(Duration, u32, u32),
    /// The session ended: finish the file (a tee of the input may still hold the queue open).
    End,
}

impl Event {
    fn len(&self) -> usize {
        match self {
            Event::Output(_, b) | Event::Input(_, b) => b.len(),
            Event::Resize(..) | Event::End => 16,
        }
    }
}

#[derive(Debug, Default)]
struct Flags {
    queued: AtomicUsize,
    /// Nothing more is accepted (dropped, capped or failed).
    stopped: AtomicBool,
}

/// How a recording's writer ended.
#[derive(Debug, Default, Clone)]
pub struct WriterEnd {
    pub bytes: u64,
    /// Why the file is incomplete, if it is.
    pub note: Option<String>,
}

/// An asciicast being written. The session calls [`Cast::output`], [`Cast::resize`] (and
/// [`Cast::tee_input`]); none of them waits.
pub struct Cast {
    tx: mpsc::Sender<Event>,
    t0: Instant,
    flags: Arc<Flags>,
    note: Arc<std::sync::Mutex<Option<String>>>,
    writer: std::sync::Mutex<Option<tokio::task::JoinHandle<WriterEnd>>>,
    input: bool,
    server: String,
    pub path: PathBuf,
}

impl Cast {
    fn offer(&self, ev: Event) {
        if self.flags.stopped.load(Ordering::Relaxed) {
            return;
        }
        let n = ev.len();
        let queued = self.flags.queued.fetch_add(n, Ordering::Relaxed);
        let full = queued + n > QUEUE_BYTES;
        let sent = !full
            && match self.tx.try_send(ev) {
                Ok(()) => true,
                // The writer ended (cap or write failure) and said why.
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.flags.stopped.store(true, Ordering::Relaxed);
                    return;
                }
                Err(mpsc::error::TrySendError::Full(_)) => false,
            };
        if !sent {
            self.flags.queued.fetch_sub(n, Ordering::Relaxed);
            if !self.flags.stopped.swap(true, Ordering::Relaxed) {
                crate::metrics::recording_dropped(crate::metrics::RecordingDrop::QueueFull);
                warn!(server = %self.server, file = %self.path.display(), "recording dropped: the writer fell behind (slow disk); the session goes on");
                if let Ok(mut note) = self.note.lock() {
                    note.get_or_insert_with(|| "dropped: the writer fell behind".into());
                }
            }
        }
    }

    /// Output as sent to the client (stdout and stderr of a terminal are one stream).
    pub fn output(&self, data: &Bytes) {
        self.offer(Event::Output(self.t0.elapsed(), data.clone()));
    }

    pub fn resize(&self, cols: u32, rows: u32) {
        self.offer(Event::Resize(self.t0.elapsed(), cols, rows));
    }

    /// Wraps the process's stdin so what is written to it is recorded (when `input = true`).
    pub fn tee_input(
        self: &Arc<Self>,
        stdin: crate::backend::BoxWrite,
    ) -> crate::backend::BoxWrite {
        if !self.input {
            return stdin;
        }
        Box::new(TeeInput {
            inner: stdin,
            cast: self.clone(),
        })
    }

    /// Stops accepting events, lets the writer finish the file and waits for it.
    async fn finish(&self) -> WriterEnd {
        let stopped_early = self.flags.stopped.swap(true, Ordering::Relaxed);
        // Waits for room while the writer drains the queue; fails at once when it has ended.
        let _ = self.tx.send(Event::End).await;
        let writer = self.writer.lock().ok().and_then(|mut w| w.take());
        let mut end = match writer {
            Some(w) => w.await.unwrap_or_else(|e| WriterEnd {
                bytes: 0,
                note: Some(format!("writer failed: {e}")),
            }),
            None => WriterEnd::default(),
        };
        if end.note.is_none()
            && let Ok(mut n) = self.note.lock()
        {
            end.note = n.take();
        }
        if stopped_early && end.note.is_none() {
            end.note = Some("dropped".into());
        }
        end
    }
}

struct TeeInput {
    inner: crate::backend::BoxWrite,
    cast: Arc<Cast>,
}

impl AsyncWrite for TeeInput {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            let at = self.cast.t0.elapsed();
            self.cast
                .offer(Event::Input(at, Bytes::copy_from_slice(&buf[..*n])));
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Opens `path` (0600, never an existing file) and writes the header, then every event until
/// the queue closes, the cap is reached or a write fails.
async fn write_cast(
    path: PathBuf,
    header: String,
    mut rx: mpsc::Receiver<Event>,
    flags: Arc<Flags>,
    max: u64,
) -> WriterEnd {
    let mut end = WriterEnd::default();
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .await;
    let mut file = match file {
        Ok(f) => f,
        Err(e) => {
            flags.stopped.store(true, Ordering::Relaxed);
            crate::metrics::recording_dropped(crate::metrics::RecordingDrop::WriteFailed);
            warn!(file = %path.display(), error = %e, "recording not started: cannot create its file; the session goes on");
            end.note = Some(format!("not written: {e}"));
            return end;
        }
    };
    let mut out = Utf8Carry::default();
    let mut inp = Utf8Carry::default();
    let mut buf = header;
    let mut last = Duration::ZERO;
    let mut capped = false;
    let mut open = true;
    while open && !capped {
        match rx.recv().await {
            Some(ev) => {
                // Batch what is already queued into one write.
                let mut next = Some(ev);
                while let Some(ev) = next.take() {
                    flags.queued.fetch_sub(ev.len(), Ordering::Relaxed);
                    let line = match ev {
                        Event::Output(at, b) => {
                            last = at;
                            let s = out.push(&b);
                            (!s.is_empty()).then(|| event_line(at, "o", &s))
                        }
                        Event::Input(at, b) => {
                            last = at;
                            let s = inp.push(&b);
                            (!s.is_empty()).then(|| event_line(at, "i", &s))
                        }
                        Event::Resize(at, c, r) => {
                            last = at;
                            Some(event_line(at, "r", &format!("{c}x{r}")))
                        }
                        Event::End => {
                            open = false;
                            let rest = out.finish();
                            (!rest.is_empty()).then(|| event_line(last, "o", &rest))
                        }
                    };
                    if let Some(line) = line {
                        if end.bytes + (buf.len() + line.len()) as u64 > max {
                            buf.push_str(&cap_marker(last, max));
                            capped = true;
                            break;
                        }
                        buf.push_str(&line);
                    }
                    if !open || buf.len() >= 64 * 1024 {
                        break;
                    }
                    next = rx.try_recv().ok();
                }
            }
            None => {
                open = false;
                let rest = out.finish();
                if !rest.is_empty() {
                    let line = event_line(last, "o", &rest);
                    if end.bytes + (buf.len() + line.len()) as u64 <= max {
                        buf.push_str(&line);
                    }
                }
            }
        }
        if buf.is_empty() {
            continue;
        }
        if let Err(e) = file.write_all(buf.as_bytes()).await {
            flags.stopped.store(true, Ordering::Relaxed);
            crate::metrics::recording_dropped(crate::metrics::RecordingDrop::WriteFailed);
            warn!(file = %path.display(), error = %e, "recording dropped: writing its file failed; the session goes on");
            end.note = Some(format!("dropped: write failed: {e}"));
            let _ = file.flush().await;
            return end;
        }
        end.bytes += buf.len() as u64;
        buf.clear();
    }
    if capped {
        flags.stopped.store(true, Ordering::Relaxed);
        info!(file = %path.display(), max_bytes = max, "recording reached its size cap; the session goes on unrecorded");
        end.note = Some(format!("size cap of {max} bytes reached"));
    }
    if let Err(e) = file.flush().await {
        end.note = Some(format!("dropped: write failed: {e}"));
    }
    end
}

fn cap_marker(at: Duration, max: u64) -> String {
    event_line(
        at,
        "m",
        &format!("berth: recording stopped at its size cap ({max} bytes)"),
    )
}

// ---------------------------------------------------------------------------------------------
// What the session task calls.

/// A session's recording: an asciicast for a terminal, metadata only otherwise.
pub struct Active {
    pub cast: Option<Arc<Cast>>,
    id: String,
    kind: &'static str,
    command: Option<String>,
    started: SystemTime,
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Whether this session is recorded (`ops`: the server's settings as the store gave them), and
/// if so starts it: the server's own setting, else `[recording] enabled`. A store that cannot
/// answer means "record" (when a directory is
/// configured): an operator who asked for recordings must not lose them to an outage. SFTP is
/// never recorded here.
pub fn wanted(
    conn: &Conn,
    program: &Program,
    ops: &Result<tenants::ServerOperations, BackendError>,
) -> bool {
    let cfg = &conn.shared.cfg.recording;
    if matches!(program, Program::Sftp) || cfg.dir.is_empty() {
        return false;
    }
    match ops {
        Ok(o) => o.record.unwrap_or(cfg.enabled),
        Err(_) => true,
    }
}

/// Starts recording this session when [`wanted`] says so.
pub fn begin(
    conn: &Conn,
    program: &Program,
    pty: Option<&PtySpec>,
    ops: &Result<tenants::ServerOperations, BackendError>,
) -> Option<Active> {
    let cfg = &conn.shared.cfg.recording;
    if !wanted(conn, program, ops) {
        return None;
    }
    let server = conn.login.server;
    let started = SystemTime::now();
    let id = format!(
        "{}-{}-{:08x}",
        server.login_name(),
        unix(started),
        rand::random::<u32>()
    );
    let command = match program {
        Program::Exec(c) => Some(c.clone()),
        _ => None,
    };
    let cast = pty.map(|p| {
        let info = CastInfo {
            cols: p.cols,
            rows: p.rows,
            timestamp: u64::try_from(unix(started)).unwrap_or(0),
            command: command.clone(),
            term: p.term.clone(),
            title: format!("{} ({})", server.login_name(), conn.login.owner),
        };
        let path = Path::new(&cfg.dir).join(format!("{id}.cast"));
        let (tx, rx) = mpsc::channel(QUEUE_EVENTS);
        let flags = Arc::new(Flags::default());
        let writer = tokio::spawn(write_cast(
            path.clone(),
            header_line(&info),
            rx,
            flags.clone(),
            cfg.max_bytes_per_session,
        ));
        Arc::new(Cast {
            tx,
            t0: Instant::now(),
            flags,
            note: Arc::default(),
            writer: std::sync::Mutex::new(Some(writer)),
            input: cfg.input,
            server: server.login_name(),
            path,
        })
    });
    Some(Active {
        cast,
        id,
        kind: program.kind(),
        command,
        started,
    })
}

impl Active {
    /// Finishes the file and stores the metadata row, in a task of its own so the session's end
    /// never waits for the disk or the store.
    pub fn end(self, conn: &Arc<Conn>, exit: Option<&Exit>, bytes_in: u64, bytes_out: u64) {
        let conn = conn.clone();
        let exit = exit.map(|e| match e {
            Exit::Status(c) => format!("status {c}"),
            Exit::Signal(s) => format!("signal {s}"),
        });
        tokio::spawn(async move {
            let Active {
                cast,
                id,
                kind,
                command,
                started,
            } = self;
            let (file, end) = match cast {
                Some(c) => (Some(c.path.display().to_string()), c.finish().await),
                None => (None, WriterEnd::default()),
            };
            let ended = SystemTime::now();
            let time =
                |t: SystemTime| chrono::DateTime::from_timestamp(unix(t), 0).unwrap_or_default();
            let record = tenants::Recording {
                id,
                server: conn.login.server,
                account: conn.login.owner.clone(),
                peer: conn.peer.to_string(),
                kind: kind.to_string(),
                command: command.map(|c| c.chars().take(4096).collect()),
                started: time(started),
                ended: time(ended),
                file,
                bytes: end.bytes,
                bytes_in,
                bytes_out,
                exit,
                note: end.note,
            };
            conn.shared.backend.recording_done(record).await;
        });
    }
}

/// Removes recordings older than `[recording] retention_days`, once at start and then hourly:
/// rows through the backend, files only when they lie in the recordings directory.
pub async fn retention(
    shared: Arc<crate::conn::Shared>,
    stop: tokio_util::sync::CancellationToken,
) {
    let cfg = shared.cfg.recording.clone();
    if cfg.retention_days == 0 || cfg.dir.is_empty() {
        return;
    }
    let dir = PathBuf::from(&cfg.dir);
    loop {
        let before = unix(SystemTime::now()) - i64::from(cfg.retention_days) * 86_400;
        for file in shared.backend.prune_recordings(before).await {
            let p = PathBuf::from(&file);
            if p.parent() == Some(dir.as_path())
                && let Err(e) = tokio::fs::remove_file(&p).await
                && e.kind() != std::io::ErrorKind::NotFound
            {
                warn!(file = %p.display(), error = %e, "expired recording not removed");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Makes the recordings directory (0700) if recording can happen at all.
pub fn prepare_dir(cfg: &Config) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if cfg.dir.is_empty() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&cfg.dir)?;
    std::fs::set_permissions(&cfg.dir, std::fs::Permissions::from_mode(0o700))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_split_across_chunks_is_held_not_replaced() {
        let text = "héllo — 日本語 🎉";
        let bytes = text.as_bytes();
        // Every split point, including inside each multi-byte sequence.
        for cut in 0..=bytes.len() {
            let mut c = Utf8Carry::default();
            let mut got = c.push(&bytes[..cut]);
            got.push_str(&c.push(&bytes[cut..]));
            got.push_str(&c.finish());
            assert_eq!(got, text, "split at {cut}");
        }
        // One byte at a time.
        let mut c = Utf8Carry::default();
        let got: String = bytes.iter().map(|b| c.push(&[*b])).collect();
        assert_eq!(got, text);
    }

    #[test]
    fn invalid_bytes_become_replacement_and_the_stream_continues() {
        let mut c = Utf8Carry::default();
        assert_eq!(c.push(b"a\xffb"), "a\u{fffd}b");
        assert_eq!(c.push(b"\xe6\x97"), "");
        assert_eq!(c.finish(), "\u{fffd}");
        assert_eq!(c.push(b"ok"), "ok");
    }

    #[test]
    fn lines_are_asciicast_v2() {
        let info = CastInfo {
            cols: 80,
            rows: 24,
            timestamp: 1_700_000_000,
            command: Some("top".into()),
            term: "xterm".into(),
            title: "server7 (alice)".into(),
        };
        let mut text = header_line(&info);
        text.push_str(&event_line(
            Duration::from_millis(1500),
            "o",
            "a\"\u{1b}[0m\r\n",
        ));
        text.push_str(&event_line(Duration::from_secs(2), "r", "100x30"));
        let (h, ev) = parse_cast(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(h["width"], 80);
        assert_eq!(h["height"], 24);
        assert_eq!(h["command"], "top");
        assert_eq!(h["env"]["TERM"], "xterm");
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].data, "a\"\u{1b}[0m\r\n");
        assert!((ev[0].at - 1.5).abs() < 1e-9);
        assert_eq!(ev[1].code, "r");
    }

    #[tokio::test]
    async fn the_cap_ends_the_file_with_a_marker() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("x.cast");
        let (tx, rx) = mpsc::channel(16);
        let flags = Arc::new(Flags::default());
        let w = tokio::spawn(write_cast(
            path.clone(),
            "{\"version\": 2}\n".into(),
            rx,
            flags.clone(),
            4096,
        ));
        for i in 0..10u64 {
            let _ = tx
                .send(Event::Output(
                    Duration::from_millis(i),
                    Bytes::from(vec![b'x'; 1200]),
                ))
                .await;
        }
        drop(tx);
        let end = w.await.unwrap_or_default();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(end.bytes <= 4096 + 200, "{}", end.bytes);
        assert!(end.note.is_some_and(|n| n.contains("size cap")));
        let (_, ev) = parse_cast(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ev.last().map(|e| e.code.as_str()), Some("m"));
        assert_eq!(ev.iter().filter(|e| e.code == "o").count(), 3);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0);
        assert_eq!(mode, 0o600);
    }
}
