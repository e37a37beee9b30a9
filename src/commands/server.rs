//! `berth server …`: create, list, inspect, change, start, stop, restart and delete tenant
//! servers.
//!
//! A server is named `server<N>` or plain `N` everywhere. `create` prints `server<N>` as its
//! last line so scripts can capture it. Exit codes as in [`super::account::exit`].

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use tenants::{
    Applied, AuditEvent, AuditKind, ByteSize, ContainerStatus, DindMode, DockerError,
    ProvisionError, Provisioner, Server, ServerChange, ServerId, ServerSpec, Store, StoreError,
};

use tenants::spec::InitMode;

use super::account::{audit, exit, fail, open_store, print_table, store_error};

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Create a server for an account and start it; prints `server<N>` as the last line.
    Create {
        /// The owning account.
        #[arg(long)]
        owner: String,
        /// Image (default: [tenants] image).
        #[arg(long)]
        image: Option<String>,
        /// Memory limit, e.g. 512m, 2g (default: [tenants] memory; 0 = unlimited).
        #[arg(long, value_parser = parse_size)]
        memory: Option<ByteSize>,
        /// CPU limit in CPUs, e.g. 0.5, 2 (default: [tenants] cpus; 0 = unlimited).
        #[arg(long, value_parser = parse_cpus)]
        cpus: Option<f64>,
        /// PIDs limit (default: [tenants] pids; 0 = unlimited).
        #[arg(long, value_parser = clap::value_parser!(i64).range(0..))]
        pids: Option<i64>,
        /// Login user inside the container: root or a user the image has (default: [tenants] user).
        #[arg(long, value_parser = parse_user)]
        user: Option<String>,
        /// Docker inside: off, caps, rootless, privileged or runtime (default: [tenants] dind); see
        /// docs/SECURITY.md for what each gives the tenant.
        #[arg(long, value_parser = parse_dind)]
        dind: Option<DindMode>,
        /// PID 1: default (tini, no extra privileges) or systemd (grants SYS_ADMIN, NET_ADMIN,
        /// SYS_PTRACE, MKNOD and unconfined seccomp/AppArmor; see docs/SECURITY.md). Needed for
        /// an image labelled berth.init=systemd: the label alone grants nothing.
        #[arg(long, value_parser = parse_init)]
        init: Option<InitMode>,
        /// Cluster node to place it on (default: the placement policy, when the store knows
        /// nodes; see docs/CLUSTER.md). Another host's node makes it over the hop, which needs
        /// this host's front key (run it on a host that runs `berth run front`).
        #[arg(long)]
        node: Option<String>,
    },
    /// Change a server: limits apply live; --image, --user, --dind and --init recreate the
    /// container with its data volume intact.
    Set {
        server: String,
        /// Image to run (recreates the container).
        #[arg(long)]
        image: Option<String>,
        /// Memory limit, e.g. 512m, 2g; 0 = unlimited (live).
        #[arg(long, value_parser = parse_size)]
        memory: Option<ByteSize>,
        /// CPU limit in CPUs, e.g. 0.5, 2; 0 = unlimited (live).
        #[arg(long, value_parser = parse_cpus)]
        cpus: Option<f64>,
        /// PIDs limit; 0 = unlimited (live).
        #[arg(long, value_parser = clap::value_parser!(i64).range(0..))]
        pids: Option<i64>,
        /// Login user: root or a user the image has (recreates the container).
        #[arg(long, value_parser = parse_user)]
        user: Option<String>,
        /// Docker inside: off, caps, rootless, privileged or runtime (recreates the container;
        /// rootless only on a user-namespaced engine).
        #[arg(long, value_parser = parse_dind)]
        dind: Option<DindMode>,
        /// PID 1: default or systemd (grants systemd's privileges; recreates the container).
        #[arg(long, value_parser = parse_init)]
        init: Option<InitMode>,
        /// Recreate the container from the current settings, data volume kept (e.g. to give a
        /// server made before `[tenants] agent_dir` its agent mount).
        #[arg(long)]
        recreate: bool,
        /// Record this server's sessions: on or off, beside `[recording] enabled` (no restart).
        #[arg(long, value_parser = parse_on_off)]
        record: Option<bool>,
        #[command(flatten)]
        limits: LimitArgs,
        /// Bytes per second in each direction for each of its sessions and forwards, e.g. 50M
        /// (MiB/s), 512k; 0 = unlimited (from its next session).
        #[arg(long, value_parser = parse_size)]
        bandwidth: Option<ByteSize>,
    },
    /// List servers with their container state and address (as the running gateway follows
    /// them through Docker's events; from Docker itself when no gateway answers).
    List {
        /// Include deleted servers.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
        /// Ask Docker for every container's state now instead of the gateway (slower with
        /// many servers; the gateway's view can trail a start or stop by one container list).
        #[arg(long)]
        docker: bool,
    },
    /// Show one server.
    Show {
        server: String,
        #[arg(long)]
        json: bool,
    },
    /// Start a server (recreating its container if it is missing).
    Start { server: String },
    /// Stop a server; it stays stopped until started or its owner logs in.
    Stop { server: String },
    /// Restart a server.
    Restart { server: String },
    /// Delete a server: removes its container, keeps its data volume unless --purge.
    Rm {
        server: String,
        /// Also delete the data volume (irreversible).
        #[arg(long)]
        purge: bool,
    },
    /// Move a server to another cluster node: stop it, copy its data volume over the internal
    /// hop, recreate it there and switch its node; the old copy stays on the source until
    /// --purge (or --purge-from later). Refused while sessions are open unless --force.
    Move {
        server: String,
        /// The node to move it to.
        #[arg(long, conflicts_with_all = ["abort", "purge_from"], required_unless_present_any = ["abort", "purge_from"])]
        to: Option<String>,
        /// End the server's open sessions instead of refusing.
        #[arg(long, requires = "to")]
        force: bool,
        /// Remove the old copy (container and data volume) on the source once the move is done.
        #[arg(long, requires = "to")]
        purge: bool,
        /// Remove the copy a finished move left on NODE (never the server's current node).
        #[arg(long, value_name = "NODE", conflicts_with = "abort")]
        purge_from: Option<String>,
        /// Give up a move that did not finish (its copy on the target is removed; the server
        /// stays where it was).
        #[arg(long)]
        abort: bool,
    },
    /// Compare the store with Docker and report differences (changes nothing without
    /// `--heal`). On a cluster host (`[cluster] node`), only that node's servers and unplaced
    /// ones are this engine's.
    Reconcile {
        #[arg(long)]
        json: bool,
        /// Then start servers that should run and recreate lost containers whose volume is
        /// kept (what a cluster node does every `[cluster] heal_interval_secs`); never
        /// deletes, never makes an empty volume.
        #[arg(long)]
        heal: bool,
    },
}

/// Session limits for a server (`berth server set`) or an account (`berth account set`).
#[derive(clap::Args, Debug, Default, Clone, Copy)]
pub struct LimitArgs {
    /// Close a session after this many seconds without data (0: never; the tenant is warned
    /// before).
    #[arg(long, value_name = "SECS")]
    pub idle_timeout: Option<u64>,
    /// Close a session this many seconds after it starts (0: never; the tenant is warned
    /// before).
    #[arg(long, value_name = "SECS")]
    pub max_duration: Option<u64>,
    /// Refuse a new session while this many run (0: no limit).
    #[arg(long, value_name = "N")]
    pub max_sessions: Option<u64>,
}

impl LimitArgs {
    pub fn given(&self) -> bool {
        self.idle_timeout.is_some() || self.max_duration.is_some() || self.max_sessions.is_some()
    }

    /// These flags over the settings stored now.
    pub fn over(&self, now: tenants::SessionLimitSettings) -> tenants::SessionLimitSettings {
        tenants::SessionLimitSettings {
            idle_timeout_secs: self.idle_timeout,
            max_duration_secs: self.max_duration,
            max_sessions: self.max_sessions,
        }
        .or(now)
    }
}

/// "idle timeout 30 s, maximum duration none, maximum sessions as configured".
pub fn limits_line(l: &tenants::SessionLimitSettings) -> String {
    let secs = |v: Option<u64>| match v {
        None => "as configured".to_string(),
        Some(0) => "none".to_string(),
        Some(n) => format!("{n} s"),
    };
    let count = |v: Option<u64>| match v {
        None => "as configured".to_string(),
        Some(0) => "none".to_string(),
        Some(n) => n.to_string(),
    };
    format!(
        "idle timeout {}, maximum duration {}, maximum sessions {}",
        secs(l.idle_timeout_secs),
        secs(l.max_duration_secs),
        count(l.max_sessions)
    )
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("expected on or off, got {s:?}")),
    }
}

fn parse_size(s: &str) -> Result<ByteSize, String> {
    ByteSize::parse(s)
}

fn parse_user(s: &str) -> Result<String, String> {
    if tenants::spec::valid_user(s) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "invalid user {s:?}: use root or a login name of [a-z0-9_-] starting with a letter or _"
        ))
    }
}

fn parse_dind(s: &str) -> Result<DindMode, String> {
    DindMode::parse(s).ok_or_else(|| {
        format!("invalid dind mode {s:?}: use off, caps, rootless, privileged or runtime")
    })
}

fn parse_init(s: &str) -> Result<InitMode, String> {
    InitMode::parse(s).ok_or_else(|| {
        format!(
            "invalid init {s:?}: use default (tini) or systemd (systemd as PID 1, with its privileges)"
        )
    })
}

fn parse_cpus(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("invalid CPU count {s:?} (e.g. 0.5, 2)"))?;
    if !v.is_finite() || !(0.0..=1024.0).contains(&v) {
        return Err(format!("CPU count {s} must be between 0 and 1024"));
    }
    Ok(v)
}

fn server_ref(s: &str) -> Result<ServerId> {
    tenants::parse_server_ref(s).ok_or_else(|| {
        fail(
            exit::DATAERR,
            format!("invalid server name {s:?}: use server<N> or N (N ≥ 1, no leading zeros)"),
        )
    })
}

/// Where a new server goes: `None` on a single host (no nodes known and none asked for), else
/// the node the policy (or the operator's `--node`) picks.
async fn place(
    cfg: &crate::config::Config,
    store: &Store,
    spec: &ServerSpec,
    requested: Option<&str>,
) -> Result<Option<String>> {
    let nodes = store.nodes().await.map_err(store_error)?;
    if nodes.is_empty() && requested.is_none() {
        return Ok(None);
    }
    let needs = tenants::placement::Needs {
        dind: spec.dind.unwrap_or(cfg.tenants.dind),
    };
    let timeout = std::time::Duration::from_secs(cfg.cluster.node_timeout_secs);
    let chosen = tenants::placement::place(&nodes, needs, requested, chrono_now(), timeout)
        .map_err(|e| {
            let code = match e {
                tenants::placement::PlacementError::UnknownNode(_) => exit::NOUSER,
                _ => exit::CANTCREAT,
            };
            fail(code, e.to_string())
        })?;
    Ok(Some(chosen.name.clone()))
}

/// `server create` for a node other than this host's: the row and its placement written here,
/// the container made by that node (over the hop, with this host's front key). On failure the
/// row is forgotten again.
async fn create_elsewhere(
    cfg: &crate::config::Config,
    store: &Store,
    owner: &str,
    spec: ServerSpec,
    node: &str,
) -> Result<(Server, String)> {
    let server = store
        .insert_server(owner, &spec)
        .await
        .map_err(store_error)?;
    let made = async {
        store
            .place_server(server.id, node)
            .await
            .map_err(store_error)?;
        let client = super::moving::client(cfg, store, node, server.id).await?;
        client
            .step_text(hop::transfer::Op::Create)
            .await
            .map_err(|e| fail(1, format!("node {node} could not create it: {}", e.message)))
    }
    .await;
    match made {
        Ok(text) => {
            let address = text
                .lines()
                .find_map(|l| l.strip_prefix("address "))
                .unwrap_or("?")
                .to_string();
            Ok((server, address))
        }
        Err(e) => {
            if let Err(fe) = store.forget_server(server.id).await {
                return Err(fail(
                    1,
                    format!(
                        "{e}; forgetting {} failed too ({fe}): remove it with `berth server rm {} --purge`",
                        server.id, server.id
                    ),
                ));
            }
            Err(e)
        }
    }
}

fn chrono_now() -> tenants::placement::Now {
    tenants::placement::now()
}

pub(crate) fn provision_error(e: ProvisionError) -> anyhow::Error {
    let code = match &e {
        ProvisionError::UnknownServer(_) | ProvisionError::ServerDeleted(_) => exit::NOUSER,
        ProvisionError::ImageMissing { .. } => exit::NOINPUT,
        ProvisionError::UserMissing { .. } | ProvisionError::Invalid(_) => exit::DATAERR,
        ProvisionError::NetworkConflict { .. }
        | ProvisionError::Leftover { .. }
        | ProvisionError::Drift { .. }
        | ProvisionError::RollbackFailed { .. } => exit::CANTCREAT,
        ProvisionError::Store(s) => match s.as_ref() {
            StoreError::UnknownAccount(_) => exit::NOUSER,
            s if s.is_retryable() => exit::UNAVAILABLE,
            _ => 1,
        },
        e if e.is_retryable() => exit::UNAVAILABLE,
        _ => 1,
    };
    fail(code, e.to_string())
}

async fn connect(cfg: &crate::config::Config, store: &Store) -> Result<Provisioner> {
    Provisioner::connect(&cfg.network, &cfg.tenants, store.clone())
        .await
        .map_err(|e| match e {
            DockerError::Unreachable { .. } => fail(exit::UNAVAILABLE, e.to_string()),
            DockerError::Config(m) => fail(exit::USAGE, m),
        })
}

/// How long `list` waits for the gateway's control socket before asking Docker itself.
const GATEWAY_ANSWER: std::time::Duration = std::time::Duration::from_secs(2);

/// Every container's state as the running gateway follows them, or `None` when no gateway
/// answers with them (none running, control socket off or unreachable, Docker not answering the
/// gateway, a gateway too old to know the request): the caller then asks Docker itself.
async fn gateway_statuses(
    cfg: &crate::config::Config,
) -> Option<std::collections::BTreeMap<ServerId, ContainerStatus>> {
    use gateway::control::{Reply, Request, request};
    let socket = cfg.gateway_config().control_socket;
    if socket == "off" {
        return None;
    }
    let asked = request(std::path::Path::new(&socket), &Request::Servers);
    match tokio::time::timeout(GATEWAY_ANSWER, asked).await {
        Ok(Ok(Reply::Servers(list))) => Some(
            list.into_iter()
                .filter_map(|s| Some((ServerId::new(s.server)?, s.status)))
                .collect(),
        ),
        Ok(Ok(Reply::Error(e))) => {
            tracing::debug!(error = %e, "the gateway has no container states; asking docker");
            None
        }
        Ok(Ok(_)) | Ok(Err(_)) | Err(_) => None,
    }
}

/// One row of `list`/`show`: the store's view plus Docker's.
#[derive(serde::Serialize)]
struct View {
    name: String,
    #[serde(flatten)]
    server: Server,
    /// Effective image (the server's own or the config default).
    image_effective: String,
    container: Option<ContainerStatus>,
    /// "ok", or why Docker's state is unknown.
    docker: String,
    /// What runs as PID 1: "default" or "systemd" (the operator's grant).
    init_effective: &'static str,
    /// `show` only: whether the image's labels ask for systemd (never a grant by itself).
    #[serde(skip_serializing_if = "Option::is_none")]
    image_asks_systemd: Option<bool>,
    /// `show` only: how the container differs from the settings (empty: it matches; absent:
    /// no container or Docker's state unknown).
    #[serde(skip_serializing_if = "Option::is_none")]
    drift: Option<Vec<String>>,
    /// `show` only: how the engine keeps the container's root from being host root
    /// (`userns`, `rootless` or `none`; absent when Docker could not be asked).
    #[serde(skip_serializing_if = "Option::is_none")]
    engine_isolation: Option<&'static str>,
    /// The cluster node holding it (`null` on a single host).
    node: Option<String>,
}

fn view(
    cfg: &crate::config::Config,
    server: Server,
    status: Option<ContainerStatus>,
    docker: &str,
) -> View {
    View {
        name: server.id.login_name(),
        image_effective: server
            .spec
            .image
            .clone()
            .unwrap_or_else(|| cfg.tenants.image.clone()),
        init_effective: tenants::spec::init(&server).as_str(),
        server,
        container: status,
        docker: docker.to_string(),
        image_asks_systemd: None,
        drift: None,
        engine_isolation: None,
        node: None,
    }
}

fn state_word(v: &View) -> String {
    if v.server.deleted.is_some() {
        return "deleted".into();
    }
    if v.docker != "ok" {
        return "unknown".into();
    }
    match &v.container {
        Some(c) => c.state.clone(),
        None => "missing".into(),
    }
}

fn limits_text(cfg: &crate::config::Config, s: &Server) -> (String, String, String) {
    let mem = s.spec.memory.unwrap_or(cfg.tenants.memory.0);
    let cpus = s
        .spec
        .nano_cpus
        .map(|n| n as f64 / 1e9)
        .unwrap_or(cfg.tenants.cpus);
    let pids = s.spec.pids.unwrap_or(cfg.tenants.pids);
    (
        if mem == 0 {
            "-".into()
        } else {
            ByteSize(mem).to_string()
        },
        if cpus == 0.0 {
            "-".into()
        } else {
            format!("{cpus}")
        },
        if pids == 0 {
            "-".into()
        } else {
            pids.to_string()
        },
    )
}

pub async fn run(path: Option<&Path>, cmd: Cmd) -> Result<ExitCode> {
    let (cfg, store) = open_store(path).await?;
    let code = run_with(&cfg, &store, cmd).await;
    store.close().await;
    code
}

async fn run_with(cfg: &crate::config::Config, store: &Store, cmd: Cmd) -> Result<ExitCode> {
    match cmd {
        Cmd::Create {
            owner,
            image,
            memory,
            cpus,
            pids,
            user,
            dind,
            init,
            node,
        } => {
            // Fail on the store's answers before touching Docker.
            match store.account(&owner).await.map_err(store_error)? {
                Some(_) => {}
                None if !tenants::valid_account_name(&owner) => {
                    return Err(store_error(StoreError::InvalidAccountName { name: owner }));
                }
                None => return Err(store_error(StoreError::UnknownAccount(owner))),
            }
            let spec = ServerSpec {
                image,
                memory: memory.map(|m| m.0),
                nano_cpus: cpus.map(tenants::spec::cpus_to_nano),
                pids,
                user,
                dind,
                init,
            };
            let placed = place(cfg, store, &spec, node.as_deref()).await?;
            if let Some(node) = placed.as_deref().filter(|n| *n != cfg.cluster.node) {
                let (server, address) = create_elsewhere(cfg, store, &owner, spec, node).await?;
                audit(
                    store,
                    AuditEvent {
                        server: Some(server.id),
                        account: Some(owner.clone()),
                        method: Some("server create".into()),
                        detail: serde_json::json!({
                            "image": tenants::spec::image(&cfg.tenants, &server),
                            "init": tenants::spec::init(&server).as_str(),
                            "node": node,
                        }),
                        ..AuditEvent::new(AuditKind::Admin, "success")
                    },
                )
                .await;
                println!(
                    "created {} for {owner} on node {node}: address {address}",
                    server.id
                );
                println!("{}", server.id.login_name());
                return Ok(ExitCode::SUCCESS);
            }
            let prov = connect(cfg, store).await?;
            let server = prov
                .create_server(&owner, spec)
                .await
                .map_err(provision_error)?;
            if let Some(node) = &placed
                && let Err(e) = store.place_server(server.id, node).await
            {
                // Undo the create: a server without its placement would be served as local
                // by every front.
                let undo = prov.remove(server.id, true).await;
                let undone = match undo {
                    Ok(()) => "the server was removed again".to_string(),
                    Err(u) => format!(
                        "removing it failed too ({u}); remove it with `berth server rm {} --purge`",
                        server.id
                    ),
                };
                return Err(fail(
                    exit::UNAVAILABLE,
                    format!(
                        "created {} but could not record its node {node}: {e}; {undone}",
                        server.id
                    ),
                ));
            }
            let running = prov
                .ensure_running(server.id)
                .await
                .map_err(provision_error)?;
            audit(
                store,
                AuditEvent {
                    server: Some(server.id),
                    account: Some(owner.clone()),
                    method: Some("server create".into()),
                    detail: serde_json::json!({
                        "image": tenants::spec::image(&cfg.tenants, &server),
                        "init": tenants::spec::init(&server).as_str(),
                    }),
                    ..AuditEvent::new(AuditKind::Admin, "success")
                },
            )
            .await;
            println!(
                "created {} for {owner}: container {}, address {}",
                server.id,
                prov.names().container(server.id),
                running.address
            );
            println!("{}", server.id.login_name());
        }
        Cmd::Set {
            server,
            image,
            memory,
            cpus,
            pids,
            user,
            dind,
            init,
            recreate,
            record,
            limits,
            bandwidth,
        } => {
            let id = server_ref(&server)?;
            let change = ServerChange {
                image,
                memory: memory.map(|m| m.0),
                nano_cpus: cpus.map(tenants::spec::cpus_to_nano),
                pids,
                user,
                dind,
                init,
                recreate,
            };
            let operations = record.is_some() || limits.given() || bandwidth.is_some();
            if operations {
                match store.server(id).await.map_err(store_error)? {
                    Some(s) if s.deleted.is_none() => {}
                    _ => return Err(fail(exit::NOUSER, format!("no such server: {id}"))),
                }
            }
            if let Some(on) = record {
                store
                    .set_server_record(id, Some(on))
                    .await
                    .map_err(store_error)?;
                admin(store, id, "server set record").await;
                println!(
                    "{id}: recording {} (from its next session)",
                    if on { "on" } else { "off" }
                );
            }
            if limits.given() {
                let now = store.server_operations(id).await.map_err(store_error)?;
                let l = limits.over(now.limits);
                store
                    .set_server_session_limits(id, l)
                    .await
                    .map_err(store_error)?;
                admin(store, id, "server set limits").await;
                println!("{id}: {} (from its next session)", limits_line(&l));
            }
            if let Some(ByteSize(bps)) = bandwidth {
                let bps = (bps > 0).then_some(bps);
                store
                    .set_server_bandwidth(id, bps)
                    .await
                    .map_err(store_error)?;
                admin(store, id, "server set bandwidth").await;
                match bps {
                    Some(b) => println!(
                        "{id}: bandwidth {b} bytes/s in each direction per session and forward (from its next session)"
                    ),
                    None => println!("{id}: bandwidth unlimited (from its next session)"),
                }
            }
            if operations && change == ServerChange::default() {
                return Ok(ExitCode::SUCCESS);
            }
            if change == ServerChange::default() {
                return Err(fail(
                    exit::USAGE,
                    "nothing to change: give at least one of --image, --memory, --cpus, --pids, --user, --dind, --init, --recreate, --record, --idle-timeout, --max-duration, --max-sessions, --bandwidth",
                ));
            }
            let prov = connect(cfg, store).await?;
            let (s, applied) = prov.set_server(id, change).await.map_err(provision_error)?;
            admin(store, id, "server set").await;
            let (mem, cpus, pids) = limits_text(cfg, &s);
            let how = match applied {
                Applied::Unchanged => "unchanged",
                Applied::Live => "changed live",
                Applied::Recreated => "recreated, data volume kept",
            };
            println!(
                "{id} {how}: image {}, user {}, dind {}, init {}, memory {mem}, cpus {cpus}, pids {pids}",
                tenants::spec::image(&cfg.tenants, &s),
                tenants::spec::login_user(&cfg.tenants, &s),
                tenants::spec::dind(&cfg.tenants, &s).as_str(),
                tenants::spec::init(&s).as_str()
            );
        }
        Cmd::List { all, json, docker } => {
            let servers = store.servers(all).await.map_err(store_error)?;
            let followed = if docker {
                None
            } else {
                gateway_statuses(cfg).await
            };
            let (statuses, docker) = match followed {
                Some(s) => (s, "ok".to_string()),
                None => match connect(cfg, store).await {
                    Ok(prov) => match prov.statuses().await {
                        Ok(s) => (s, "ok".to_string()),
                        Err(e) => (Default::default(), e.to_string()),
                    },
                    Err(e) => (Default::default(), super::format_error(&e)),
                },
            };
            if docker != "ok" {
                eprintln!("berth: warning: container states unknown: {docker}");
            }
            let views: Vec<View> = servers
                .into_iter()
                .map(|s| {
                    let st = statuses.get(&s.id).cloned();
                    view(cfg, s, st, &docker)
                })
                .collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&views)?);
            } else {
                let rows = views
                    .iter()
                    .map(|v| {
                        let (mem, cpus, pids) = limits_text(cfg, &v.server);
                        vec![
                            v.name.clone(),
                            v.server.owner.clone(),
                            state_word(v),
                            v.container
                                .as_ref()
                                .and_then(|c| c.address)
                                .map_or("-".into(), |a| a.to_string()),
                            v.image_effective.clone(),
                            mem,
                            cpus,
                            pids,
                            v.server.created.format("%Y-%m-%d %H:%M").to_string(),
                        ]
                    })
                    .collect::<Vec<_>>();
                print_table(
                    &[
                        "SERVER", "OWNER", "STATE", "ADDRESS", "IMAGE", "MEMORY", "CPUS", "PIDS",
                        "CREATED",
                    ],
                    &rows,
                );
            }
        }
        Cmd::Show { server, json } => {
            let id = server_ref(&server)?;
            let s = store
                .server(id)
                .await
                .map_err(store_error)?
                .ok_or_else(|| store_error(StoreError::UnknownServer(id)))?;
            let deleted = s.deleted.is_some();
            let image = tenants::spec::image(&cfg.tenants, &s).to_string();
            let mut isolation = None;
            let (status, docker, asks, drift) = match connect(cfg, store).await {
                Ok(prov) => match prov.status(id).await {
                    Ok(st) => {
                        isolation = prov.engine_isolation().await.ok();
                        let asks = prov.image_asks_systemd(&image).await;
                        let drift = if deleted {
                            Ok(None)
                        } else {
                            prov.drift(id).await
                        };
                        match drift {
                            Ok(d) => (st, "ok".to_string(), Some(asks), d),
                            Err(e) => (st, e.to_string(), Some(asks), None),
                        }
                    }
                    Err(e) => (None, e.to_string(), None, None),
                },
                Err(e) => (None, super::format_error(&e), None, None),
            };
            let mut v = view(cfg, s, status, &docker);
            v.image_asks_systemd = asks;
            v.drift = drift;
            v.engine_isolation = isolation.map(|i| i.as_str());
            v.node = store.server_node(id).await.map_err(store_error)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let names = tenants::spec::Names::new(&cfg.tenants.name_prefix);
                let (mem, cpus, pids) = limits_text(cfg, &v.server);
                println!("server:    {}", v.name);
                println!("owner:     {}", v.server.owner);
                println!("state:     {}", state_word(&v));
                println!("desired:   {}", v.server.desired.as_str());
                if let Some(node) = &v.node {
                    println!("node:      {node}");
                }
                if let Some(c) = &v.container {
                    println!(
                        "address:   {}",
                        c.address.map_or("-".into(), |a| a.to_string())
                    );
                    println!(
                        "container: {} ({})",
                        names.container(id),
                        c.container_id.get(..12).unwrap_or(&c.container_id)
                    );
                } else {
                    println!("container: {} (not present)", names.container(id));
                }
                println!(
                    "volume:    {} at {}",
                    names.volume(id),
                    cfg.tenants.volume_mount
                );
                println!("image:     {}", v.image_effective);
                println!(
                    "user:      {}",
                    tenants::spec::login_user(&cfg.tenants, &v.server)
                );
                println!(
                    "dind:      {}",
                    tenants::spec::dind(&cfg.tenants, &v.server).as_str()
                );
                if let Some(i) = isolation {
                    println!("engine:    {}", i.describe());
                }
                if v.image_asks_systemd == Some(true) && v.init_effective != "systemd" {
                    println!(
                        "init:      {} (the image asks for systemd as PID 1, not granted: `berth server set {id} --init systemd` grants it)",
                        v.init_effective
                    );
                } else {
                    println!("init:      {}", v.init_effective);
                }
                println!("limits:    memory {mem}, cpus {cpus}, pids {pids}");
                println!(
                    "created:   {}",
                    v.server.created.format("%Y-%m-%d %H:%M:%S UTC")
                );
                if let Some(d) = v.server.deleted {
                    println!("deleted:   {}", d.format("%Y-%m-%d %H:%M:%S UTC"));
                }
                if let Some(d) = v.drift.as_ref().filter(|d| !d.is_empty()) {
                    println!(
                        "drift:     the container differs from these settings: {}; replace it with `berth server set {id} --recreate`",
                        d.join("; ")
                    );
                }
                if v.docker != "ok" {
                    println!("docker:    {}", v.docker);
                }
            }
        }
        Cmd::Start { server } => {
            let id = server_ref(&server)?;
            let prov = connect(cfg, store).await?;
            let r = prov.start(id).await.map_err(provision_error)?;
            admin(store, id, "server start").await;
            println!(
                "{id} {} ({})",
                if r.started_now {
                    "started"
                } else {
                    "already running"
                },
                r.address
            );
        }
        Cmd::Stop { server } => {
            let id = server_ref(&server)?;
            let prov = connect(cfg, store).await?;
            prov.stop(id).await.map_err(provision_error)?;
            admin(store, id, "server stop").await;
            println!("{id} stopped");
        }
        Cmd::Restart { server } => {
            let id = server_ref(&server)?;
            let prov = connect(cfg, store).await?;
            let r = prov.restart(id).await.map_err(provision_error)?;
            admin(store, id, "server restart").await;
            println!("{id} restarted ({})", r.address);
        }
        Cmd::Rm { server, purge } => {
            let id = server_ref(&server)?;
            let prov = connect(cfg, store).await?;
            prov.remove(id, purge).await.map_err(provision_error)?;
            admin(
                store,
                id,
                if purge {
                    "server rm --purge"
                } else {
                    "server rm"
                },
            )
            .await;
            if purge {
                println!("{id} deleted with its data volume");
            } else {
                println!(
                    "{id} deleted; data kept in volume {} (remove with `berth server rm {id} --purge`)",
                    prov.names().volume(id)
                );
            }
        }
        Cmd::Move {
            server,
            to,
            force,
            purge,
            purge_from,
            abort,
        } => {
            let id = server_ref(&server)?;
            let how = if abort {
                super::moving::How::Abort
            } else if let Some(node) = purge_from {
                super::moving::How::PurgeFrom(node)
            } else {
                super::moving::How::To {
                    node: to.unwrap_or_default(),
                    force,
                    purge,
                }
            };
            super::moving::run(cfg, store, id, how).await?;
        }
        Cmd::Reconcile { json, heal } => {
            let prov = connect(cfg, store).await?;
            let node = Some(cfg.cluster.node.as_str()).filter(|n| !n.is_empty());
            let r = prov.reconcile_on(node).await.map_err(provision_error)?;
            let healed = if heal {
                Some(
                    prov.heal_on(
                        node,
                        tenants::provision::create_grace(cfg.cluster.heal_interval_secs),
                    )
                    .await
                    .map_err(provision_error)?,
                )
            } else {
                None
            };
            if json {
                match &healed {
                    Some(h) => println!(
                        "{}",
                        serde_json::to_string_pretty(
                            &serde_json::json!({ "reconcile": r, "heal": h })
                        )?
                    ),
                    None => println!("{}", serde_json::to_string_pretty(&r)?),
                }
            } else {
                let list = |ids: &[ServerId]| {
                    if ids.is_empty() {
                        "-".to_string()
                    } else {
                        ids.iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                };
                println!("present:  {}", list(&r.present));
                println!(
                    "missing:  {} (recreated with their volume on next start or login)",
                    list(&r.missing)
                );
                println!("stopped:  {} (desired running)", list(&r.stopped));
                for d in &r.drift {
                    println!(
                        "drift:    {} ({}) — {}; replace with `berth server set {} --recreate`",
                        d.server,
                        d.name,
                        d.differences.join("; "),
                        d.server
                    );
                }
                for u in &r.unknown {
                    println!(
                        "unknown:  {} ({}) — {}; left alone",
                        u.name,
                        u.container_id.get(..12).unwrap_or(&u.container_id),
                        u.reason
                    );
                }
                if let Some(h) = &healed {
                    println!("healed:   started {}", list(&h.started));
                    println!("healed:   recreated {}", list(&h.recreated));
                    for (id, why) in &h.left {
                        println!("left:     {id} — {why}");
                    }
                    for (id, why) in &h.failed {
                        println!("failed:   {id} — {why}");
                    }
                }
            }
            if let Some(h) = healed.filter(|h| !h.failed.is_empty()) {
                return Err(fail(
                    1,
                    format!(
                        "could not heal {}; see the lines above and try again",
                        h.failed
                            .iter()
                            .map(|(id, _)| id.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn admin(store: &Store, id: ServerId, method: &str) {
    let owner = store.server(id).await.ok().flatten().map(|s| s.owner);
    audit(
        store,
        AuditEvent {
            server: Some(id),
            account: owner,
            method: Some(method.to_string()),
            ..AuditEvent::new(AuditKind::Admin, "success")
        },
    )
    .await;
}
