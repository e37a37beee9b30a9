//! The fallback data path: a Docker exec with its attach stream (client → dockerd →
//! containerd-shim → process). Used when the agent path is unavailable: the container has no
//! `/dev/berth` mount (made before `[tenants] agent_dir`), the agent cannot run in the image, or
//! it misbehaved.
//!
//! Slower than the agent path, and signals and hang-up need the host's `/proc` (to map the
//! exec's host PID into the container's PID namespace), so this path assumes the gateway runs
//! on the Docker host.

use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, ResizeExecOptions, StartExecOptions, StartExecResults};
use futures::StreamExt;
use tokio::sync::Notify;
use tracing::debug;

use crate::backend::{BackendError, Chunk, Process, ProcessControl, ProcessOutput};
use crate::policy::{self, Exit};

/// Starts `argv` through a Docker exec with its attach stream.
pub async fn exec(
    docker: &Docker,
    container: &str,
    user: &str,
    workdir: Option<String>,
    argv: Vec<String>,
    env: Vec<String>,
    pty: Option<(u32, u32)>,
) -> Result<Process, BackendError> {
    let tty = pty.is_some();
    let opts = CreateExecOptions::<String> {
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(tty),
        env: Some(env),
        cmd: Some(argv),
        user: Some(user.to_string()),
        working_dir: workdir,
        ..Default::default()
    };
    let failed = |step: &str, e: &dyn std::fmt::Display| {
        BackendError::Failed(format!("docker exec {step}: {e}"))
    };
    let exec_id = docker
        .create_exec(container, opts)
        .await
        .map_err(|e| failed("create", &e))?
        .id;
    let started = docker
        .start_exec(
            &exec_id,
            Some(StartExecOptions {
                detach: false,
                tty,
                output_capacity: Some(64 * 1024),
            }),
        )
        .await
        .map_err(|e| failed("start", &e))?;
    let (output, stdin) = match started {
        StartExecResults::Attached { output, input } => (output, input),
        StartExecResults::Detached => return Err(failed("start", &"detached unexpectedly")),
    };
    let done = Arc::new(Notify::new());
    let mut control = AttachControl {
        docker: docker.clone(),
        container: container.to_string(),
        id: exec_id,
        pid: None,
        signals: Vec::new(),
        output_done: done.clone(),
        exit: None,
    };
    if let Some((cols, rows)) = pty {
        control.resize(cols, rows).await;
    }
    Ok(Process {
        stdin: Box::new(stdin),
        // Shutting a TTY exec's stdin ends Docker's attach stream while the process runs on.
        keep_stdin_open: tty,
        output: Box::new(AttachOutput {
            stream: Some(output),
            done,
        }),
        control: Box::new(control),
        path: "attach",
    })
}

type OutputStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>,
>;

struct AttachOutput {
    stream: Option<OutputStream>,
    done: Arc<Notify>,
}

#[async_trait::async_trait]
impl ProcessOutput for AttachOutput {
    async fn read(&mut self) -> Option<Chunk> {
        loop {
            let stream = self.stream.as_mut()?;
            match stream.next().await {
                Some(Ok(LogOutput::StdErr { message })) => return Some(Chunk::Stderr(message)),
                Some(Ok(LogOutput::StdOut { message } | LogOutput::Console { message })) => {
                    return Some(Chunk::Stdout(message));
                }
                Some(Ok(LogOutput::StdIn { .. })) => {}
                Some(Err(e)) => {
                    debug!(error = %e, "exec output stream error");
                    self.finish();
                    return None;
                }
                None => {
                    self.finish();
                    return None;
                }
            }
        }
    }
}

impl AttachOutput {
    fn finish(&mut self) {
        self.stream = None;
        // `notify_one` stores a permit, so a `wait` that starts later still sees it.
        self.done.notify_one();
    }
}

struct AttachControl {
    docker: Docker,
    container: String,
    id: String,
    /// PID of the exec's process inside the container's PID namespace.
    pid: Option<u32>,
    /// Signals delivered on the client's request (Docker reports only an exit code).
    signals: Vec<String>,
    output_done: Arc<Notify>,
    exit: Option<Option<Exit>>,
}

#[async_trait::async_trait]
impl ProcessControl for AttachControl {
    async fn resize(&mut self, cols: u32, rows: u32) {
        let opts = ResizeExecOptions {
            width: u16::try_from(cols).unwrap_or(u16::MAX).max(1),
            height: u16::try_from(rows).unwrap_or(u16::MAX).max(1),
        };
        // Fails with 500 before start or after exit: not fatal.
        if let Err(e) = self.docker.resize_exec(&self.id, opts).await {
            debug!(error = %e, "resize_exec failed (ignored)");
        }
    }

    async fn signal(&mut self, name: &str) {
        let Some(pid) = self.running_pid().await else {
            return;
        };
        self.signals.push(name.to_string());
        let script = format!("kill -{name} -- -\"$1\" 2>/dev/null || kill -{name} \"$1\"");
        spawn_root(&self.docker, &self.container, helper(&script, pid)).await;
    }

    /// Docker says nothing when an exec ends: once the output stream has closed, poll.
    async fn wait(&mut self) -> Option<Exit> {
        if let Some(e) = &self.exit {
            return e.clone();
        }
        self.output_done.notified().await;
        self.output_done.notify_one();
        let mut delay = Duration::from_millis(5);
        let code = loop {
            match self.docker.inspect_exec(&self.id).await {
                Ok(i) if i.running != Some(true) => break i.exit_code,
                Ok(_) => {}
                Err(e) => {
                    debug!(error = %e, "inspect_exec failed");
                    break None;
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(500));
        };
        let exit = code.map(|c| policy::classify_exit(c, &self.signals));
        self.exit = Some(exit.clone());
        exit
    }

    async fn hangup(&mut self) {
        let Some(pid) = self.running_pid().await else {
            return;
        };
        debug!(pid, "killing exec left behind by a closed channel");
        // HUP the whole session (what a terminal hangup does; nohup'd work survives), then KILL
        // the leader's process group if the leader ignored it.
        let script = "pkill -HUP -s \"$1\" 2>/dev/null || kill -HUP -- -\"$1\" 2>/dev/null; \
                      sleep 1; kill -0 \"$1\" 2>/dev/null && kill -KILL -- -\"$1\" 2>/dev/null; true";
        spawn_root(&self.docker, &self.container, helper(script, pid)).await;
    }
}

impl AttachControl {
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
}

/// What [`run_root`] saw: the exit code, `None` when the helper did not finish in time, or the
/// Docker call that failed.
pub type RootRun = Result<Option<i64>, tenants::provision::ExecFailed>;

/// Runs a short helper command as root in the container (as provisioning does, at most 2 s in
/// all, reading its output included: a login waits for it).
pub async fn run_root(docker: &Docker, container: &str, cmd: Vec<String>) -> RootRun {
    tenants::provision::exec_as_root(docker, container, cmd, Duration::from_secs(2)).await
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
