//! One session channel (shell, exec or sftp) = one Docker exec in the tenant's container.
//!
//! The task owns the channel's writer. It starts the exec, spawns the stdin pump and the output
//! pump, applies resizes and signals, reports exit-status/exit-signal, and on close or
//! disconnect kills what the exec started (HUP to its session, then KILL to its process group
//! if the leader is still alive) so nothing is orphaned — detached (`setsid`, `nohup`, tmux)
//! processes survive as they would under sshd.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, ResizeExecOptions, StartExecOptions, StartExecResults};
use bytes::Bytes;
use futures::StreamExt;
use russh::server::Msg;
use russh::{ChannelId, ChannelWriteHalf};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backend::{AuditRecord, BackendError, Target};
use crate::handler::{Ctl, Input, PtySpec};
use crate::pipe;
use crate::policy::{self, Exit, Program};
use crate::server::Conn;

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
    let outcome = run_inner(spec, bytes_in.clone(), bytes_out.clone()).await;
    let (outcome_s, exit) = match &outcome {
        Outcome::Exited(Exit::Status(c)) => ("exited", serde_json::json!({ "exit_status": c })),
        Outcome::Exited(Exit::Signal(s)) => ("exited", serde_json::json!({ "exit_signal": s })),
        Outcome::ClosedByClient => ("closed", serde_json::json!({})),
        Outcome::Failed(e) => ("error", serde_json::json!({ "error": e })),
    };
    let bi = bytes_in.load(Ordering::Relaxed);
    let bo = bytes_out.load(Ordering::Relaxed);
    info!(
        server = %conn.login.server.login_name(), peer = %conn.peer, kind, outcome = outcome_s,
        bytes_in = bi, bytes_out = bo, duration_ms = started.elapsed().as_millis() as u64, detail = %exit,
        "session closed"
    );
    let mut detail = exit;
    if let Some(m) = detail.as_object_mut() {
        m.insert("bytes_in".into(), bi.into());
        m.insert("bytes_out".into(), bo.into());
        m.insert(
            "duration_ms".into(),
            (started.elapsed().as_millis() as u64).into(),
        );
    }
    conn.shared
        .backend
        .audit(AuditRecord {
            kind: "session",
            server: Some(conn.login.server),
            account: Some(conn.login.owner.clone()),
            peer: Some(conn.peer.ip()),
            method: Some(kind.to_string()),
            outcome: outcome_s.to_string(),
            detail,
        })
        .await;
}

enum Outcome {
    Exited(Exit),
    ClosedByClient,
    Failed(String),
}

async fn run_inner(spec: Spec, bytes_in: Arc<AtomicU64>, bytes_out: Arc<AtomicU64>) -> Outcome {
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
    let docker = conn.shared.backend.docker().clone();

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
    let user = exec_user(&conn, &docker, &target).await;

    let tty = pty.is_some();
    let mut env_list: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if let Some(p) = &pty {
        env_list.retain(|e| !e.starts_with("TERM="));
        env_list.push(format!("TERM={}", p.term));
    }
    env_list.push(format!("BERTH_SERVER={}", conn.login.server.login_name()));
    // Docker exec sets HOME from the user's passwd entry but not USER/LOGNAME (sshd sets all
    // three); tools such as Ansible and `ssh-agent`-style scripts read them.
    env_list.retain(|e| !e.starts_with("USER=") && !e.starts_with("LOGNAME="));
    env_list.push(format!("USER={user}"));
    env_list.push(format!("LOGNAME={user}"));
    let argv = policy::argv(
        &program,
        &conn.shared.cfg.sftp_server_paths,
        pty.as_ref().map(|p| (p.cols, p.rows)),
    );
    let opts = CreateExecOptions::<String> {
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(tty),
        env: Some(env_list),
        cmd: Some(argv),
        user: Some(user),
        working_dir: (!conn.shared.cfg.exec_workdir.is_empty())
            .then(|| conn.shared.cfg.exec_workdir.clone()),
        ..Default::default()
    };
    let exec_id = match docker.create_exec(&target.container_id, opts).await {
        Ok(r) => r.id,
        Err(e) => return fail_exec(&conn, &writer, "create", e).await,
    };
    let started = docker
        .start_exec(
            &exec_id,
            Some(StartExecOptions {
                detach: false,
                tty,
                output_capacity: Some(64 * 1024),
            }),
        )
        .await;
    let (mut output, stdin) = match started {
        Ok(StartExecResults::Attached { output, input }) => (output, input),
        Ok(StartExecResults::Detached) => {
            return fail_exec(&conn, &writer, "start", "detached unexpectedly").await;
        }
        Err(e) => return fail_exec(&conn, &writer, "start", e).await,
    };
    let mut exec = Exec {
        docker: docker.clone(),
        id: exec_id,
        pid: None,
        signals: Vec::new(),
    };
    if let Some(p) = &pty {
        exec.resize(p.cols, p.rows).await;
    }

    let input_task = tokio::spawn(pipe::pump_input(
        input,
        stdin,
        conn.clone(),
        id,
        tty,
        bytes_in.clone(),
    ));
    let _abort_input = AbortOnDrop(input_task);

    let mut draining_told = false;
    let drain = conn.shared.draining.clone();
    // Output pump inline: `send` waits for this channel's window only.
    let closed_by_client = loop {
        tokio::select! {
            item = output.next() => match item {
                Some(Ok(LogOutput::StdErr { message })) => {
                    if !pipe::send_or_closed(&writer, &conn, Some(1), message, &bytes_out, &closed).await {
                        break true;
                    }
                }
                Some(Ok(LogOutput::StdOut { message } | LogOutput::Console { message })) => {
                    if !pipe::send_or_closed(&writer, &conn, None, message, &bytes_out, &closed).await {
                        break true;
                    }
                }
                Some(Ok(LogOutput::StdIn { .. })) => {}
                Some(Err(e)) => {
                    debug!(error = %e, "exec output stream error");
                    break false;
                }
                None => break false,
            },
            c = ctl.recv() => match c {
                Some(Ctl::Resize { cols, rows }) => exec.resize(cols, rows).await,
                Some(Ctl::Signal(name)) => exec.signal(&name, &target).await,
                None => break true,
            },
            _ = closed.cancelled() => break true,
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
    };
    drop(output);

    if closed_by_client {
        exec.kill_if_running(&target).await;
        return Outcome::ClosedByClient;
    }

    // Output ended: wait for the process to exit, still honouring signals and close.
    let code = loop {
        tokio::select! {
            r = exec.wait_exit() => break r,
            c = ctl.recv() => match c {
                Some(Ctl::Signal(name)) => exec.signal(&name, &target).await,
                Some(Ctl::Resize { .. }) => {}
                None => {
                    exec.kill_if_running(&target).await;
                    return Outcome::ClosedByClient;
                }
            },
            _ = closed.cancelled() => {
                exec.kill_if_running(&target).await;
                return Outcome::ClosedByClient;
            }
        }
    };
    let exit = match code {
        Some(c) => policy::classify_exit(c, &exec.signals),
        None => Exit::Status(255),
    };
    let _ = writer.eof().await;
    match &exit {
        Exit::Status(c) => {
            let _ = writer.exit_status(*c).await;
        }
        Exit::Signal(name) => {
            let sig = match name.as_str() {
                "HUP" => russh::Sig::HUP,
                "INT" => russh::Sig::INT,
                "KILL" => russh::Sig::KILL,
                "TERM" => russh::Sig::TERM,
                "QUIT" => russh::Sig::QUIT,
                "ABRT" => russh::Sig::ABRT,
                "PIPE" => russh::Sig::PIPE,
                "USR1" => russh::Sig::USR1,
                "ALRM" => russh::Sig::ALRM,
                "SEGV" => russh::Sig::SEGV,
                other => russh::Sig::Custom(other.to_string()),
            };
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

async fn fail_exec(
    conn: &Conn,
    writer: &ChannelWriteHalf<Msg>,
    step: &str,
    e: impl std::fmt::Display,
) -> Outcome {
    warn!(server = %conn.login.server.login_name(), step, error = %e, "docker exec failed");
    crate::metrics::exec_error();
    let counter = AtomicU64::new(0);
    let line = "berth: could not start the session in the container; please try again\r\n";
    let _ = pipe::send(writer, conn, Some(1), Bytes::from(line), &counter).await;
    let _ = writer.exit_status(1).await;
    let _ = writer.eof().await;
    let _ = writer.close().await;
    Outcome::Failed(format!("exec {step}: {e}"))
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);
impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The in-container user: `[ssh] exec_user` when set (one user for every server), else the
/// server's login user, else `tenant` when the image has it, else `root`.
/// Found once per container (per gateway process); the same time the login name is made a
/// passwd alias of that user ([`policy::login_alias_argv`]).
async fn exec_user(conn: &Conn, docker: &Docker, target: &Target) -> String {
    if let Some(u) = conn.shared.cached_exec_user(&target.container_id) {
        return u;
    }
    let cfg = &conn.shared.cfg.exec_user;
    let user = if !cfg.is_empty() {
        cfg.clone()
    } else if let Some(u) = &target.user {
        u.clone()
    } else {
        match run_root(
            docker,
            &target.container_id,
            vec!["id".into(), "-u".into(), "tenant".into()],
        )
        .await
        {
            Some(0) => "tenant".to_string(),
            _ => "root".to_string(),
        }
    };
    let login = conn.login.server.login_name();
    if login != user {
        let code = run_root(
            docker,
            &target.container_id,
            policy::login_alias_argv(&login, &user),
        )
        .await;
        if code != Some(0) {
            debug!(server = %login, user = %user, ?code, "could not add the login name as a passwd alias");
        }
    }
    conn.shared.cache_exec_user(&target.container_id, &user);
    user
}

/// Runs a short helper command as root in the container; returns its exit code.
async fn run_root(docker: &Docker, container: &str, cmd: Vec<String>) -> Option<i64> {
    let opts = CreateExecOptions::<String> {
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        cmd: Some(cmd),
        user: Some("root".into()),
        ..Default::default()
    };
    let id = docker.create_exec(container, opts).await.ok()?.id;
    if let Ok(StartExecResults::Attached { mut output, .. }) = docker.start_exec(&id, None).await {
        while output.next().await.is_some() {}
    }
    for _ in 0..100 {
        let i = docker.inspect_exec(&id).await.ok()?;
        if i.running != Some(true) {
            return i.exit_code;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Starts a root helper in the container and does not wait for it.
async fn spawn_root(docker: &Docker, container: &str, cmd: Vec<String>) {
    let opts = CreateExecOptions::<String> {
        cmd: Some(cmd),
        user: Some("root".into()),
        ..Default::default()
    };
    match docker.create_exec(container, opts).await {
        Ok(r) => {
            let _ = docker
                .start_exec(
                    &r.id,
                    Some(StartExecOptions {
                        detach: true,
                        ..Default::default()
                    }),
                )
                .await;
        }
        Err(e) => debug!(error = %e, "helper exec failed"),
    }
}

struct Exec {
    docker: Docker,
    id: String,
    /// PID of the exec's process inside the container's PID namespace.
    pid: Option<u32>,
    /// Signals delivered on the client's request (for exit-signal reporting).
    signals: Vec<String>,
}

impl Exec {
    async fn resize(&self, cols: u32, rows: u32) {
        let opts = ResizeExecOptions {
            width: u16::try_from(cols).unwrap_or(u16::MAX).max(1),
            height: u16::try_from(rows).unwrap_or(u16::MAX).max(1),
        };
        // Fails with 500 before start or after exit: not fatal.
        if let Err(e) = self.docker.resize_exec(&self.id, opts).await {
            debug!(error = %e, "resize_exec failed (ignored)");
        }
    }

    /// The exec's in-container PID, when it is still running.
    async fn running_pid(&mut self) -> Option<u32> {
        let i = self.docker.inspect_exec(&self.id).await.ok()?;
        if i.running != Some(true) {
            return None;
        }
        if self.pid.is_none() {
            let host_pid = u32::try_from(i.pid?).ok()?;
            self.pid = ns_pid(host_pid);
        }
        self.pid
    }

    async fn signal(&mut self, name: &str, target: &Target) {
        let Some(pid) = self.running_pid().await else {
            return;
        };
        if policy::signal_number(name).is_none() {
            return;
        }
        self.signals.push(name.to_string());
        let script = format!("kill -{name} -- -\"$1\" 2>/dev/null || kill -{name} \"$1\"");
        spawn_root(&self.docker, &target.container_id, helper(&script, pid)).await;
    }

    async fn kill_if_running(&mut self, target: &Target) {
        let Some(pid) = self.running_pid().await else {
            return;
        };
        debug!(pid, "killing exec left behind by a closed channel");
        // HUP the whole session (what a terminal hangup does; nohup'd work survives), then KILL
        // the leader's process group if the leader ignored it.
        let script = "pkill -HUP -s \"$1\" 2>/dev/null || kill -HUP -- -\"$1\" 2>/dev/null; \
                      sleep 1; kill -0 \"$1\" 2>/dev/null && kill -KILL -- -\"$1\" 2>/dev/null; true";
        spawn_root(&self.docker, &target.container_id, helper(script, pid)).await;
    }

    /// Polls until the exec has exited; its exit code (None if Docker cannot tell).
    async fn wait_exit(&self) -> Option<i64> {
        let mut delay = Duration::from_millis(5);
        loop {
            match self.docker.inspect_exec(&self.id).await {
                Ok(i) if i.running != Some(true) => return i.exit_code,
                Ok(_) => {}
                Err(e) => {
                    debug!(error = %e, "inspect_exec failed");
                    return None;
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(500));
        }
    }
}

fn helper(script: &str, pid: u32) -> Vec<String> {
    vec![
        "/bin/sh".into(),
        "-c".into(),
        script.into(),
        "berth".into(),
        pid.to_string(),
    ]
}

/// Maps a host PID to the innermost PID namespace's PID (`NSpid` in /proc/PID/status).
/// Needs the gateway on the Docker host with access to /proc (true for the single-host setup).
fn ns_pid(host_pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{host_pid}/status")).ok()?;
    parse_nspid(&status)
}

fn parse_nspid(status: &str) -> Option<u32> {
    let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
    line.split_whitespace().last()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nspid_parsing() {
        let s = "Name:\tsleep\nPid:\t4242\nNSpid:\t4242\t17\nPPid:\t1\n";
        assert_eq!(parse_nspid(s), Some(17));
        assert_eq!(parse_nspid("Name:\tx\n"), None);
    }
}
