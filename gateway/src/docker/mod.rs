//! Sessions and forwards in Docker containers: which user they run as, and which data path
//! carries them.
//!
//! Two paths. The agent path (`agent.rs`): an in-container `berth-agent` hands the gateway the
//! session's pipes or PTY master, so bytes move between the SSH channel and kernel pipes as
//! under sshd, and signals and hang-up go through the agent (no host `/proc`). The attach path
//! (`attach.rs`): a Docker exec and its attach stream, for containers the agent cannot serve.
//! Every session tries the agent first when the container has the agent mount; the path taken is
//! logged and counted (`berth_gateway_session_paths_total`).

pub mod agent;
mod attach;
pub mod fds;
mod tar;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use bollard::Docker;
use tokio::net::TcpStream;
use tracing::{debug, warn};

use crate::backend::{
    BackendError, ExecRequest, ListenSpec, Listener, Listening, NEEDS_AGENT, Process, Stream,
    Target,
};
use crate::policy::{self, ForwardDest};
use agent::{AgentError, Hub, Placement};

/// Where the agent binary is looked for when `[ssh] agent_binary` is empty.
pub const DEFAULT_AGENT_BINARY: &str = "/usr/lib/berth/berth-agent";

/// The Docker half of `TenantsBackend`: exec and connect.
pub struct DockerExec {
    docker: Docker,
    /// `[ssh] exec_user` (empty: the server's login user).
    exec_user: String,
    workdir: Option<String>,
    /// Container id → the user its sessions run as (found once per container).
    users: Mutex<HashMap<String, String>>,
    hub: Option<Hub>,
}

/// The agent binary `[ssh] agent_binary` names: "off" = none, empty = the default path, the
/// `berth-agent` next to the running program, or the one `make agent` built in the same cargo
/// target directory (so `make agent && cargo run --release -- run --demo` takes the fast path).
pub fn find_agent_binary(setting: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok();
    find_agent_binary_from(setting, exe.as_deref())
}

/// [`find_agent_binary`] for a given running program.
pub fn find_agent_binary_from(setting: &str, exe: Option<&Path>) -> Option<PathBuf> {
    match setting {
        "off" => None,
        "" => {
            let dir = exe.and_then(Path::parent);
            let beside = dir.map(|d| d.join("berth-agent"));
            // target/release/berth → target/<triple>/release/berth-agent (the static build).
            let built = dir.and_then(|d| {
                let profile = d.file_name()?;
                Some(
                    d.parent()?
                        .join(AGENT_TRIPLE)
                        .join(profile)
                        .join("berth-agent"),
                )
            });
            [Some(PathBuf::from(DEFAULT_AGENT_BINARY)), beside, built]
                .into_iter()
                .flatten()
                .find(|p| p.is_file())
        }
        p => Some(PathBuf::from(p)),
    }
}

/// The target `make agent` builds the static agent for.
const AGENT_TRIPLE: &str = "x86_64-unknown-linux-gnu";

impl DockerExec {
    pub fn new(docker: Docker, cfg: &crate::Config) -> Self {
        let hub = match find_agent_binary(&cfg.agent_binary) {
            Some(path) => match agent::Binary::load(&path) {
                Ok(b) => {
                    debug!(path = %path.display(), "session agent binary loaded");
                    Some(Hub::new(b))
                }
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "cannot read the session agent; every session uses docker exec");
                    None
                }
            },
            None => {
                if cfg.agent_binary != "off" {
                    warn!(
                        "no session agent binary found (ssh.agent_binary, {DEFAULT_AGENT_BINARY}); every session uses docker exec"
                    );
                }
                None
            }
        };
        Self {
            docker,
            exec_user: cfg.exec_user.clone(),
            workdir: (!cfg.exec_workdir.is_empty()).then(|| cfg.exec_workdir.clone()),
            users: Mutex::new(HashMap::new()),
            hub,
        }
    }

    pub async fn exec(
        &self,
        target: &Target,
        login: &str,
        req: ExecRequest,
    ) -> Result<Process, BackendError> {
        let user = self.user(target, login).await?;
        let mut env = req.env;
        // Docker exec sets HOME from the user's passwd entry but not USER/LOGNAME (sshd sets all
        // three); tools such as Ansible read them.
        env.retain(|(k, _)| k != "USER" && k != "LOGNAME");
        env.push(("USER".into(), user.clone()));
        env.push(("LOGNAME".into(), user.clone()));
        if let (Some(hub), Some(dir)) = (&self.hub, &target.agent_dir) {
            let at = self.placement(target, dir, &user);
            match hub
                .exec(&self.docker, &at, req.argv.clone(), env.clone(), req.pty)
                .await
            {
                Ok(p) => {
                    crate::metrics::session_path(p.path);
                    return Ok(p);
                }
                Err(AgentError::Unavailable(e)) => {
                    debug!(server = %login, error = %e, "agent path unavailable; using docker exec");
                }
                // The Spawn reached the agent: the command may have run, so it is not started
                // a second time on the attach path.
                Err(e @ (AgentError::Sent(_) | AgentError::Refused(_))) => {
                    warn!(server = %login, error = %e, "session failed after its command was handed to the agent; not retried");
                    return Err(BackendError::Failed(format!(
                        "session not started, and not retried because the command may have run: {e}"
                    )));
                }
            }
        }
        let env = env.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
        let p = attach::exec(
            &self.docker,
            &target.container_id,
            &user,
            self.workdir.clone(),
            req.argv,
            env,
            req.pty,
        )
        .await?;
        crate::metrics::session_path(p.path);
        Ok(p)
    }

    pub async fn connect(
        &self,
        target: &Target,
        login: &str,
        dest: ForwardDest,
        port: u16,
    ) -> Result<Stream, BackendError> {
        let candidates: Vec<IpAddr> = match dest {
            ForwardDest::Loopback(Some(ip)) => vec![ip],
            ForwardDest::Loopback(None) => {
                vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()]
            }
            ForwardDest::Container(ip) => vec![ip],
        };
        // An undecidable user keeps forwards off the agent (it would start as that user and
        // serve the container's sessions later); they connect from the gateway instead.
        let user = match (&self.hub, &target.agent_dir) {
            (Some(_), Some(_)) => self.user(target, login).await.ok(),
            _ => None,
        };
        if let (Some(hub), Some(dir), Some(user)) = (&self.hub, &target.agent_dir, &user) {
            let at = self.placement(target, dir, user);
            let mut last = None;
            for ip in &candidates {
                match hub
                    .connect(&self.docker, &at, SocketAddr::new(*ip, port))
                    .await
                {
                    Ok(s) => {
                        crate::metrics::session_path(s.path);
                        return Ok(s);
                    }
                    Err(AgentError::Refused(e)) => last = Some(e),
                    Err(AgentError::Unavailable(e) | AgentError::Sent(e)) => {
                        debug!(server = %login, error = %e, "agent path unavailable; connecting from the gateway");
                        last = None;
                        break;
                    }
                }
            }
            if let Some(e) = last {
                return Err(BackendError::Failed(e));
            }
        }
        // From the gateway the container's loopback is out of reach: its address is the best
        // stand-in (a service bound to 127.0.0.1 only is not reachable this way).
        let ip = match dest {
            ForwardDest::Container(ip) => ip,
            ForwardDest::Loopback(_) => target.address,
        };
        let addr = SocketAddr::new(ip, port);
        let stream =
            match tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(BackendError::Failed(e.to_string())),
                Err(_) => return Err(BackendError::Failed("timeout".into())),
            };
        let _ = stream.set_nodelay(true);
        let (read, write) = stream.into_split();
        crate::metrics::session_path("attach");
        Ok(Stream {
            read: Box::new(read),
            write: Box::new(write),
            path: "attach",
        })
    }

    /// The agent and where it runs, for what only the agent can do (listen, unix sockets): a
    /// container without one is refused with [`NEEDS_AGENT`], never served from the host.
    async fn agent_only<'a>(
        &'a self,
        target: &'a Target,
        login: &str,
    ) -> Result<(&'a Hub, &'a Path, String), BackendError> {
        let (Some(hub), Some(dir)) = (&self.hub, &target.agent_dir) else {
            return Err(BackendError::ForClient(NEEDS_AGENT.into()));
        };
        let user = self.user(target, login).await?;
        Ok((hub, dir, user))
    }

    pub async fn listen(
        &self,
        target: &Target,
        login: &str,
        spec: ListenSpec,
    ) -> Result<Listener, BackendError> {
        let (hub, dir, user) = self.agent_only(target, login).await?;
        let at = self.placement(target, dir, &user);
        let r = match spec {
            ListenSpec::Tcp(addr) => {
                hub.listen_tcp(&self.docker, &at, addr)
                    .await
                    .map(|(listener, local)| Listener {
                        listening: Listening::Tcp { listener, local },
                        cleanup: None,
                    })
            }
            ListenSpec::Unix(path) => hub
                .listen_unix(&self.docker, &at, path.as_deref())
                .await
                .map(|(listener, path, unlink)| Listener {
                    listening: Listening::Unix { listener, path },
                    cleanup: Some(Box::new(unlink)),
                }),
        };
        r.map_err(agent_only_error)
    }

    pub async fn connect_unix(
        &self,
        target: &Target,
        login: &str,
        path: &str,
    ) -> Result<Stream, BackendError> {
        let (hub, dir, user) = self.agent_only(target, login).await?;
        let at = self.placement(target, dir, &user);
        hub.connect_unix(&self.docker, &at, path)
            .await
            .map_err(agent_only_error)
    }

    fn placement<'a>(&'a self, target: &'a Target, dir: &'a Path, user: &'a str) -> Placement<'a> {
        Placement {
            container: &target.container_id,
            dir,
            user,
            workdir: self.workdir.as_deref(),
        }
    }

    /// The in-container user: `[ssh] exec_user` when set (one user for every server), else the
    /// server's login user, else `tenant` when the image has it, else `root`. Found once per
    /// container, when the login name is also made a passwd alias of that user
    /// ([`policy::login_alias_argv`]).
    ///
    /// Fails closed: `root` only when the probe says `tenant` does not exist (`id` exits 1).
    /// A probe that Docker refuses, that does not finish in time (a tenant can exhaust its pids
    /// limit or make `id` hang) or that ends any other way refuses the session, and nothing is
    /// cached, so the next session asks again.
    async fn user(&self, target: &Target, login: &str) -> Result<String, BackendError> {
        if let Some(u) = self
            .users
            .lock()
            .ok()
            .and_then(|m| m.get(&target.container_id).cloned())
        {
            return Ok(u);
        }
        let container = &target.container_id;
        let user = if !self.exec_user.is_empty() {
            self.exec_user.clone()
        } else if let Some(u) = &target.user {
            u.clone()
        } else {
            let probe = vec!["id".into(), "-u".into(), "tenant".into()];
            let answer = attach::run_root(&self.docker, container, probe).await;
            match probe_user(&answer) {
                Some(u) => u.to_string(),
                None => {
                    warn!(server = %login, answer = %ProbeAnswer(&answer), "cannot tell which user sessions run as; refusing the session");
                    return Err(BackendError::Failed(format!(
                        "cannot tell which user sessions of {login} run as (`id -u tenant` as root {})",
                        ProbeAnswer(&answer)
                    )));
                }
            }
        };
        if login != user {
            let code = attach::run_root(
                &self.docker,
                container,
                policy::login_alias_argv(login, &user),
            )
            .await;
            if !matches!(code, Ok(Some(0))) {
                debug!(server = %login, user = %user, answer = %ProbeAnswer(&code), "could not add the login name as a passwd alias");
            }
        }
        if let Ok(mut m) = self.users.lock() {
            if m.len() > 10_000 {
                m.clear();
            }
            m.insert(container.clone(), user.clone());
        }
        Ok(user)
    }
}

/// An agent-only operation's failure: no agent is a refusal the client is told about.
fn agent_only_error(e: AgentError) -> BackendError {
    match e {
        AgentError::Unavailable(_) => BackendError::ForClient(NEEDS_AGENT.into()),
        AgentError::Refused(e) | AgentError::Sent(e) => BackendError::Failed(e),
    }
}

/// What `id -u tenant` as root says about the session user: exit 0 `tenant`, exit 1 (no such
/// user) `root`; anything else (Docker refused, not finished in time, killed, not runnable)
/// decides nothing.
fn probe_user(answer: &attach::RootRun) -> Option<&'static str> {
    match answer {
        Ok(Some(0)) => Some("tenant"),
        Ok(Some(1)) => Some("root"),
        _ => None,
    }
}

/// A root helper's outcome for logs and errors.
struct ProbeAnswer<'a>(&'a attach::RootRun);

impl std::fmt::Display for ProbeAnswer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Ok(Some(code)) => write!(f, "exited with {code}"),
            Ok(None) => f.write_str("did not finish within its bound"),
            Err(e) => write!(f, "docker {}: {}", e.step, e.source),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_make_builds_is_found_from_a_cargo_run() {
        let Ok(dir) = tempfile::tempdir() else {
            panic!("tempdir")
        };
        let exe = dir.path().join("target/release/berth");
        let built = dir
            .path()
            .join("target/x86_64-unknown-linux-gnu/release/berth-agent");
        assert!(std::fs::create_dir_all(built.parent().unwrap_or(dir.path())).is_ok());
        assert!(std::fs::write(&built, b"agent").is_ok());
        if !Path::new(DEFAULT_AGENT_BINARY).is_file() {
            assert_eq!(find_agent_binary_from("", Some(&exe)), Some(built.clone()));
        }
        assert_eq!(find_agent_binary_from("off", Some(&exe)), None);
        assert_eq!(
            find_agent_binary_from("/x/y", Some(&exe)),
            Some(PathBuf::from("/x/y"))
        );
        let other = dir.path().join("elsewhere/berth");
        if !Path::new(DEFAULT_AGENT_BINARY).is_file() {
            assert_eq!(find_agent_binary_from("", Some(&other)), None);
        }
    }

    #[test]
    fn only_a_clear_probe_answer_decides_the_user() {
        assert_eq!(probe_user(&Ok(Some(0))), Some("tenant"));
        assert_eq!(probe_user(&Ok(Some(1))), Some("root"));
        for undecided in [
            Ok(Some(2)),
            Ok(Some(126)),
            Ok(Some(137)),
            Ok(Some(-1)),
            Ok(None),
        ] {
            assert_eq!(probe_user(&undecided), None, "{undecided:?}");
        }
    }
}
