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

/// How the engine keeps container root from being host root, as its `/info` reports it
/// (`SecurityOptions`: `name=userns` for `--userns-remap`, `name=rootless` for a rootless
/// dockerd).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct EngineIsolation {
    /// `--userns-remap`: every container's uid 0 is one unprivileged host range (one range for
    /// the whole engine on Docker 20.10).
    pub userns: bool,
    /// The engine itself runs as an unprivileged user.
    pub rootless: bool,
}

impl EngineIsolation {
    /// Reads `/info`'s `SecurityOptions` entries (`name=seccomp,profile=default`, `name=userns`).
    pub fn from_security_options<S: AsRef<str>>(options: &[S]) -> Self {
        let has = |want: &str| {
            options.iter().any(|o| {
                o.as_ref()
                    .split(',')
                    .any(|kv| kv.trim() == format!("name={want}"))
            })
        };
        Self {
            userns: has("userns"),
            rootless: has("rootless"),
        }
    }

    /// Whether uid 0 in a container is never uid 0 on the host.
    pub fn root_is_unprivileged(self) -> bool {
        self.userns || self.rootless
    }

    /// One word for reports and the metric's meaning: `userns`, `rootless` or `none`.
    pub fn as_str(self) -> &'static str {
        if self.rootless {
            "rootless"
        } else if self.userns {
            "userns"
        } else {
            "none"
        }
    }

    /// A phrase for operators.
    pub fn describe(self) -> &'static str {
        if self.rootless {
            "rootless engine (container uid 0 is the engine's unprivileged user)"
        } else if self.userns {
            "user-namespaced (--userns-remap: container uid 0 is an unprivileged host uid)"
        } else {
            "not user-namespaced (container uid 0 is host uid 0)"
        }
    }
}

/// Asks the engine how it isolates containers (`GET /info`).
pub async fn engine_isolation(docker: &Docker) -> Result<EngineIsolation, BollardError> {
    let info = docker.info().await?;
    Ok(EngineIsolation::from_security_options(
        info.security_options.as_deref().unwrap_or_default(),
    ))
}

/// The engine's own address in its swarm (`docker info`'s `Swarm.NodeAddr`): what the other
/// members reach it at. `None` when the engine is not an active swarm member.
pub async fn swarm_node_addr(docker: &Docker) -> Result<Option<String>, BollardError> {
    let info = docker.info().await?;
    Ok(info.swarm.and_then(|s| {
        let active = s.local_node_state == Some(bollard::models::LocalNodeState::ACTIVE);
        s.node_addr.filter(|a| active && !a.is_empty())
    }))
}

#[cfg(test)]
mod isolation_tests {
    use super::EngineIsolation;

    #[test]
    fn reads_userns_and_rootless_from_security_options() {
        let plain = ["name=seccomp,profile=default"];
        let remapped = ["name=seccomp,profile=default", "name=userns"];
        let rootless = ["name=seccomp,profile=default", "name=rootless"];
        let none = EngineIsolation::from_security_options(&plain);
        assert_eq!(none, EngineIsolation::default());
        assert!(!none.root_is_unprivileged());
        assert_eq!(none.as_str(), "none");
        let u = EngineIsolation::from_security_options(&remapped);
        assert!(u.userns && !u.rootless && u.root_is_unprivileged());
        assert_eq!(u.as_str(), "userns");
        let r = EngineIsolation::from_security_options(&rootless);
        assert!(r.rootless && r.root_is_unprivileged());
        // A profile named like the option is not the option.
        let tricky = ["name=seccomp,profile=name=userns-ish"];
        assert!(!EngineIsolation::from_security_options(&tricky).userns);
        let empty: [&str; 0] = [];
        assert!(!EngineIsolation::from_security_options(&empty).root_is_unprivileged());
    }
}
