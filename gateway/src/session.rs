//! One session channel (shell, exec or sftp) = one process in the tenant's container, started
//! through [`Backend::exec`](crate::Backend::exec).
//!
//! The task owns the channel's writer. It starts the process, spawns the stdin pump, relays
//! output, applies resizes and signals, reports exit-status/exit-signal, and on close or
//! disconnect has the backend hang up what it started (HUP to its session, then KILL to its
//! process group if the leader is still alive) so nothing is orphaned — detached (`setsid`,
//! `nohup`, tmux) processes survive as they would under sshd.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use russh::server::Msg;
use russh::{ChannelId, ChannelWriteHalf};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backend::{BackendError, Chunk, ExecRequest, Process};
use crate::channel::{Ctl, Input, PtySpec};
use crate::conn::Conn;
use crate::pipe;
use crate::policy::{self, Exit, Program};

pub struct Spec {
    pub conn: Arc<Conn>,
    pub id: ChannelId,
    pub writer: ChannelWriteHalf<Msg>,
    pub program: Program,
    pub pty: Option<PtySpec>,
    pub env: Vec<(String, String)>,
    pub input: mpsc::UnboundedReceiver<Input>,
    pub ctl: mpsc::Receiver<Ctl>,
    /// Cancelled when the client closes the channel or the connection goes away.
    pub closed: CancellationToken,
}

/// Runs the channel to completion (never panics, never returns an error: problems are told to
/// the client on stderr and to the log).
pub async fn run(spec: Spec) {
    let conn = spec.conn.clone();
    let kind = spec.program.kind();
    let _active = crate::metrics::session_opened(match spec.program {
        Program::Shell => crate::metrics::SessionKind::Shell,
        Program::Exec(_) => crate::metrics::SessionKind::Exec,
        Program::Sftp => crate::metrics::SessionKind::Sftp,
    });
    let started = Instant::now();
    let bytes_in = Arc::new(AtomicU64::new(0));
    let bytes_out = Arc::new(AtomicU64::new(0));
    // Which data path carried the session ("none" when it never started).
    let mut path = "none";
    // One store query per session: recording and limits (the store down: record, config limits).
    let ops = conn.shared.backend.operations(conn.login.server).await;
    let caps = crate::limits::Caps::new(ops.as_ref().ok());
    let listed = match conn.shared.live.register(
        &conn,
        kind,
        crate::recording::wanted(&conn, &spec.program, &ops),
        bytes_in.clone(),
        bytes_out.clone(),
        caps,
    ) {
        Ok(l) => l,
        Err(line) => {
            let counter = AtomicU64::new(0);
            let _ = pipe::send(&spec.writer, &conn, Some(1), Bytes::from(line), &counter).await;
            let _ = spec.writer.exit_status(1).await;
            let _ = spec.writer.eof().await;
            let _ = spec.writer.close().await;
            conn.audit(
                "session",
                kind,
                "refused",
                serde_json::json!({ "limit": "max_sessions" }),
            )
            .await;
            return;
        }
    };
    let recording = crate::recording::begin(&conn, &spec.program, spec.pty.as_ref(), &ops);
    let limits = crate::limits::SessionLimits::new(&conn.shared.cfg, ops.as_ref().ok());
    let bandwidth = conn.shared.bandwidth.get(
        conn.login.server,
        crate::limits::bandwidth(ops.as_ref().ok()),
    );
    let cast = recording.as_ref().and_then(|r| r.cast.clone());
    let outcome = run_inner(
        spec,
        bytes_in.clone(),
        bytes_out.clone(),
        &mut path,
        cast,
        &listed.live,
        limits,
        bandwidth,
    )
    .await;
    drop(listed);
    let (outcome_s, exit) = match &outcome {
        Outcome::Exited(Exit::Status(c)) => ("exited", serde_json::json!({ "exit_status": c })),
        Outcome::Exited(Exit::Signal(s)) => ("exited", serde_json::json!({ "exit_signal": s })),
        Outcome::ClosedByClient => ("closed", serde_json::json!({})),
        Outcome::Killed => ("killed", serde_json::json!({})),
        Outcome::Limit(which) => ("limit", serde_json::json!({ "limit": which })),
        Outcome::Failed(e) => ("error", serde_json::json!({ "error": e })),
    };
    let bi = bytes_in.load(Ordering::Relaxed);
    let bo = bytes_out.load(Ordering::Relaxed);
    if let Some(r) = recording {
        let exit = match &outcome {
            Outcome::Exited(e) => Some(e),
            _ => None,
        };
        r.end(&conn, exit, bi, bo);
    }
    let mut detail = exit;
    // Error texts can carry what the tenant's agent wrote: bounded before the log line too.
    crate::audit::bound_detail(&mut detail);
    if conn.log_allowed() {
        info!(
            server = %conn.login.server.login_name(), peer = %conn.peer, kind, outcome = outcome_s, path,
            bytes_in = bi, bytes_out = bo, duration_ms = started.elapsed().as_millis() as u64, detail = %detail,
            "session closed"
        );
    }
    if let Some(m) = detail.as_object_mut() {
        m.insert("bytes_in".into(), bi.into());
        m.insert("bytes_out".into(), bo.into());
        m.insert("path".into(), path.into());
        m.insert(
            "duration_ms".into(),
            (started.elapsed().as_millis() as u64).into(),
        );
    }
    conn.audit("session", kind, outcome_s, detail).await;
}

enum Outcome {
    Exited(Exit),
    ClosedByClient,
    /// Ended by the operator (`berth session kill`).
    Killed,
    /// Ended by an idle or duration limit.
    Limit(&'static str),
    Failed(String),
}

/// After the process has exited, output that stays silent this long is taken as finished:
/// a background job that kept the pipes or the terminal open must not hold the channel.
const OUTPUT_GRACE: Duration = Duration::from_secs(1);

// The session's parts, each owned by a different caller-side concern, handed over once.
#[allow(clippy::too_many_arguments)]
async fn run_inner(
    spec: Spec,
    bytes_in: Arc<AtomicU64>,
    bytes_out: Arc<AtomicU64>,
    path_taken: &mut &'static str,
    cast: Option<Arc<crate::recording::Cast>>,
    live: &crate::control::Live,
    mut limits: crate::limits::SessionLimits,
    bandwidth: Option<Arc<crate::limits::ServerBandwidth>>,
) -> Outcome {
    let Spec {
        conn,
        id,
        writer,
        program,
        pty,
        env,
        input,
        mut ctl,
        closed,
    } = spec;

    let target = match conn.target().await {
        Ok(t) => t,
        Err(e) => return fail_target(&conn, &writer, e).await,
    };
    if conn.shared.cfg.start_note && conn.take_start_note() {
        let note = format!(
            "berth: {} was stopped; started it\r\n",
            conn.login.server.login_name()
        );
        let _ = pipe::send(&writer, &conn, Some(1), Bytes::from(note), &bytes_out).await;
    }

    let mut env = env;
    if let Some(p) = &pty {
        env.retain(|(k, _)| k != "TERM");
        env.push(("TERM".into(), p.term.clone()));
    }
    env.push(("BERTH_SERVER".into(), conn.login.server.login_name()));
    // Kept until the session ends: the forwarded agent's socket goes with it.
    let _agent_socket = match crate::devflow::agent_socket(&conn, id, &mut env).await {
        Ok(s) => s,
        Err(e) => {
            let note = format!("berth: agent forwarding unavailable: {e}\r\n");
            let _ = pipe::send(&writer, &conn, Some(1), Bytes::from(note), &bytes_out).await;
            None
        }
    };
    let size = pty.as_ref().map(|p| (p.cols, p.rows));
    let argv = policy::argv(&program, &conn.shared.cfg.sftp_server_paths, size);
    let login = conn.login.server.login_name();
    let req = ExecRequest {
        program: program.clone(),
        argv,
        env,
        pty: size,
    };
    let process = match conn.shared.backend.exec(&target, &login, req).await {
        Ok(p) => p,
        Err(e) => return fail_exec(&conn, &writer, &e).await,
    };
    let Process {
        stdin,
        keep_stdin_open,
        mut output,
        mut control,
        path,
    } = process;
    debug!(server = %login, path, "session started");
    *path_taken = path;
    let stdin = match &cast {
        Some(c) => c.tee_input(stdin),
        None => stdin,
    };
    let sftp = (matches!(program, Program::Sftp) && conn.shared.cfg.sftp_audit)
        .then(|| crate::sftp_audit::Tap::start(&conn));
    let _sftp_end = sftp.clone().map(SftpEnd);
    let stdin = match &sftp {
        Some(t) => t.wrap_input(stdin),
        None => stdin,
    };

    let input_task = tokio::spawn(pipe::pump_input(
        input,
        stdin,
        conn.clone(),
        id,
        keep_stdin_open,
        bytes_in.clone(),
        crate::limits::Throttle::up(bandwidth.as_ref()),
    ));
    let out_bucket = crate::limits::Throttle::down(bandwidth.as_ref());
    let _abort_input = AbortOnDrop(input_task);

    let killed = live.killed();
    let started = Instant::now();
    let mut limit_tick = tokio::time::interval(limits.tick());
    let mut draining_told = false;
    let drain = conn.shared.draining.clone();
    let mut output_done = false;
    // `Some(None)`: ended, and the backend cannot say how.
    let mut exit: Option<Option<Exit>> = None;
    // Output and the exit are awaited together; the channel ends when both are in. `send` waits
    // for this channel's window only.
    while !(output_done && exit.is_some()) {
        let exited = matches!(exit, Some(Some(_)));
        tokio::select! {
            chunk = output.read(), if !output_done => match chunk {
                Some(Chunk::Stdout(b)) => {
                    if let Some(c) = &cast {
                        c.output(&b);
                    }
                    if let Some(t) = &sftp {
                        t.server_bytes(&b);
                    }
                    out_bucket.take(b.len()).await;
                    if !pipe::send_or_closed(&writer, &conn, None, b, &bytes_out, &closed).await {
                        control.hangup().await;
                        return Outcome::ClosedByClient;
                    }
                }
                Some(Chunk::Stderr(b)) => {
                    if let Some(c) = &cast {
                        c.output(&b);
                    }
                    out_bucket.take(b.len()).await;
                    if !pipe::send_or_closed(&writer, &conn, Some(1), b, &bytes_out, &closed).await {
                        control.hangup().await;
                        return Outcome::ClosedByClient;
                    }
                }
                None => output_done = true,
            },
            _ = tokio::time::sleep(OUTPUT_GRACE), if exited && !output_done => output_done = true,
            e = control.wait(), if exit.is_none() => exit = Some(e),
            c = ctl.recv() => match c {
                Some(Ctl::Resize { cols, rows }) => {
                    if let Some(c) = &cast {
                        c.resize(cols, rows);
                    }
                    control.resize(cols, rows).await
                }
                Some(Ctl::Signal(name)) => control.signal(&name).await,
                None => {
                    if exit.is_none() {
                        control.hangup().await;
                    }
                    return Outcome::ClosedByClient;
                }
            },
            _ = limit_tick.tick(), if limits.active() => {
                match limits.check(started.elapsed(), conn.idle_for()) {
                    crate::limits::Action::Nothing => {}
                    crate::limits::Action::Warn(line) => {
                        // Not through `pipe::send`: a warning is no activity.
                        let _ = writer.extended_data_bytes(1, Bytes::from(line)).await;
                    }
                    crate::limits::Action::End(which, line) => {
                        let _ = pipe::send(&writer, &conn, Some(1), Bytes::from(line), &bytes_out).await;
                        if exit.is_none() {
                            control.hangup().await;
                        }
                        let _ = writer.exit_status(255).await;
                        let _ = writer.eof().await;
                        let _ = writer.close().await;
                        return Outcome::Limit(which.as_str());
                    }
                }
            }
            _ = killed.cancelled() => {
                let line = Bytes::from(live.kill_line());
                let _ = pipe::send(&writer, &conn, Some(1), line, &bytes_out).await;
                if exit.is_none() {
                    control.hangup().await;
                }
                let _ = writer.exit_status(255).await;
                let _ = writer.eof().await;
                let _ = writer.close().await;
                return Outcome::Killed;
            }
            _ = closed.cancelled() => {
                if exit.is_none() {
                    control.hangup().await;
                }
                return Outcome::ClosedByClient;
            }
            _ = drain.cancelled(), if !draining_told => {
                draining_told = true;
                if !matches!(program, Program::Sftp) {
                    let msg = format!(
                        "\r\nberth: the gateway is shutting down; this session will be closed within {} s\r\n",
                        conn.shared.cfg.drain_timeout_secs
                    );
                    let _ = pipe::send(&writer, &conn, Some(1), Bytes::from(msg), &bytes_out).await;
                }
            }
        }
    }
    drop(output);

    let exit = exit.flatten().unwrap_or(Exit::Status(255));
    let _ = writer.eof().await;
    match &exit {
        Exit::Status(c) => {
            let _ = writer.exit_status(*c).await;
        }
        Exit::Signal(name) => {
            let sig = policy::ssh_signal(name);
            let _ = conn
                .handle
                .exit_signal_request(id, sig, false, String::new(), "en".into())
                .await;
        }
    }
    let _ = writer.close().await;
    Outcome::Exited(exit)
}

async fn fail_target(conn: &Conn, writer: &ChannelWriteHalf<Msg>, e: BackendError) -> Outcome {
    let name = conn.login.server.login_name();
    let (line, fatal) = match &e {
        BackendError::Unavailable(_) => (
            format!(
                "berth: {name} is temporarily unavailable (container backend unreachable); please try again later\r\n"
            ),
            true,
        ),
        BackendError::Failed(_) => (
            format!("berth: {name} cannot be started right now\r\n"),
            false,
        ),
        BackendError::ForClient(line) => (format!("berth: {line}\r\n"), true),
    };
    warn!(server = %name, error = %e, "ensure_running failed");
    crate::metrics::exec_error();
    let counter = AtomicU64::new(0);
    let _ = pipe::send(writer, conn, Some(1), Bytes::from(line), &counter).await;
    let _ = writer.exit_status(1).await;
    let _ = writer.eof().await;
    let _ = writer.close().await;
    if fatal {
        // Give the client a moment to print the line before the connection goes (OpenSSH
        // drops buffered channel output when it reads a disconnect).
        let handle = conn.handle.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = handle
                .disconnect(
                    russh::Disconnect::ByApplication,
                    "backend unavailable".into(),
                    "en".into(),
                )
                .await;
        });
    }
    Outcome::Failed(e.to_string())
}

async fn fail_exec(conn: &Conn, writer: &ChannelWriteHalf<Msg>, e: &BackendError) -> Outcome {
    warn!(server = %conn.login.server.login_name(), error = %e, "session start failed");
    crate::metrics::exec_error();
    let counter = AtomicU64::new(0);
    let line = match e {
        BackendError::ForClient(text) => format!("berth: {text}\r\n"),
        _ => "berth: could not start the session in the container; please try again\r\n".into(),
    };
    let _ = pipe::send(writer, conn, Some(1), Bytes::from(line), &counter).await;
    let _ = writer.exit_status(1).await;
    let _ = writer.eof().await;
    let _ = writer.close().await;
    Outcome::Failed(e.to_string())
}

/// Reports an SFTP session's open handles and unanswered requests when it ends, however.
struct SftpEnd(crate::sftp_audit::Tap);
impl Drop for SftpEnd {
    fn drop(&mut self) {
        self.0.finish();
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);
impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
