//! Which Docker engine berth talks to and how it connects (shared with `berth image build`),
//! and the one way berth runs a short root command in a container and waits for its status
//! (shared with the gateway, which probes and prepares the session user the same way).
//!
//! Deliberately not here: anything about tenants; this only yields a negotiated client and
//! runs what it is given.

use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::exec::{CreateExecOptions, StartExecResults};
use futures::StreamExt;

use super::DockerError;
use crate::config::Config;

/// The Docker endpoint berth uses: config, else `DOCKER_HOST`, else the local socket.
pub fn docker_endpoint(cfg: &Config) -> String {
    cfg.docker_host
        .clone()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "unix:///var/run/docker.sock".to_string())
}

/// Connects to the engine named by the config and negotiates the API version.
pub async fn connect_docker(cfg: &Config) -> Result<(Docker, String), DockerError> {
    let endpoint = docker_endpoint(cfg);
    let unreachable = |source| DockerError::Unreachable {
        endpoint: endpoint.clone(),
        source,
    };
    let docker = Docker::connect_with_host(&endpoint).map_err(unreachable)?;
    let docker = docker.negotiate_version().await.map_err(unreachable)?;
    Ok((docker, endpoint))
}

/// Which step of [`exec_as_root`] Docker refused, and why.
#[derive(Debug)]
pub struct ExecFailed {
    /// `"exec in"` (create or start) or `"inspect exec in"`.
    pub step: &'static str,
    pub source: BollardError,
}

/// Runs `argv` as root in `container` (which must be running), reads and drops its output, and
/// waits at most `bound` for it to finish. `Ok(Some(code))` when it finished (-1 when Docker
/// reports no code), `Ok(None)` when it was not done at `bound`.
///
/// `bound` covers every step, reading the output included: a command that hangs with its
/// output open (or a Docker call that hangs) costs the caller `bound`, never more.
pub async fn exec_as_root(
    docker: &Docker,
    container: &str,
    argv: Vec<String>,
    bound: Duration,
) -> Result<Option<i64>, ExecFailed> {
    match tokio::time::timeout(bound, run_as_root(docker, container, argv)).await {
        Ok(r) => r.map(Some),
        Err(_elapsed) => Ok(None),
    }
}

async fn run_as_root(
    docker: &Docker,
    container: &str,
    argv: Vec<String>,
) -> Result<i64, ExecFailed> {
    const POLL: Duration = Duration::from_millis(20);
    let failed = |step| move |source| ExecFailed { step, source };
    let opts = CreateExecOptions::<String> {
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        cmd: Some(argv),
        user: Some("root".into()),
        ..Default::default()
    };
    let exec = docker
        .create_exec(container, opts)
        .await
        .map_err(failed("exec in"))?;
    match docker
        .start_exec(&exec.id, None)
        .await
        .map_err(failed("exec in"))?
    {
        StartExecResults::Attached { mut output, .. } => while output.next().await.is_some() {},
        StartExecResults::Detached => {}
    }
    loop {
        let i = docker
            .inspect_exec(&exec.id)
            .await
            .map_err(failed("inspect exec in"))?;
        if i.running != Some(true) {
            return Ok(i.exit_code.unwrap_or(-1));
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_prefers_config() {
        let cfg = Config {
            docker_host: Some("tcp://10.0.0.1:2375".into()),
            ..Config::default()
        };
        assert_eq!(docker_endpoint(&cfg), "tcp://10.0.0.1:2375");
    }
}
