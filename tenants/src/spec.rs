//! What berth asks Docker for, as pure functions: object names, labels, the tenant network and
//! a server's container body, and the check of an existing network against the config.
//!
//! No IO here, so every knob (limits, DinD mode, restart policy, DNS) is unit-tested without an
//! engine; [`crate::provision`] only sends these bodies.

use std::collections::HashMap;

use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, DeviceMapping, EndpointSettings, HostConfig,
    HostConfigCgroupnsModeEnum, Ipam, IpamConfig, Mount, MountType, NetworkCreateRequest,
    NetworkingConfig, RestartPolicy as DockerRestart, RestartPolicyNameEnum,
};

use crate::config::{Config, DindMode, NetworkConfig, RestartPolicy};
use crate::name::ServerId;
use crate::store::Server;

pub const LABEL_SERVER: &str = "berth.server";
pub const LABEL_OWNER: &str = "berth.owner";
pub const LABEL_MANAGED: &str = "berth.managed";
/// The `name_prefix` of the berth instance that made the object.
pub const LABEL_INSTANCE: &str = "berth.instance";
/// The login user inside the container (the gateway's exec user for this server).
pub const LABEL_USER: &str = "berth.user";
/// Image label: `systemd` when the image's CMD boots systemd as PID 1. Informational only: it
/// lets berth tell the operator what the image wants; the grant itself comes only from the
/// server's own [`InitMode`], never from image metadata (anyone who can build or push an image
/// could otherwise hand it capabilities).
pub const IMAGE_LABEL_INIT: &str = "berth.init";

/// What runs as PID 1 in a server's container: an operator's explicit, per-server decision
/// (`berth server create/set --init`), stored with the server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InitMode {
    /// tini as PID 1 (reaps orphans, forwards signals); no extra privileges.
    #[default]
    Default,
    /// systemd as PID 1: no tini, tmpfs on /run, /run/lock and /tmp, SIGRTMIN+3 to stop, and
    /// the same grant as `dind = "caps"` (SYS_ADMIN, NET_ADMIN, SYS_PTRACE, MKNOD, a private
    /// cgroup namespace, seccomp and AppArmor unconfined): systemd mounts and manages cgroups.
    Systemd,
}

impl InitMode {
    pub fn as_str(self) -> &'static str {
        match self {
            InitMode::Default => "default",
            InitMode::Systemd => "systemd",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [InitMode::Default, InitMode::Systemd]
            .into_iter()
            .find(|m| m.as_str() == s)
    }
}

/// Whether an image's labels say it boots systemd as PID 1 (`berth.init=systemd`). Grants
/// nothing: see [`IMAGE_LABEL_INIT`].
pub fn image_asks_systemd(labels: Option<&HashMap<String, String>>) -> bool {
    labels
        .and_then(|l| l.get(IMAGE_LABEL_INIT))
        .is_some_and(|v| v == "systemd")
}

/// A server's init: its own decision, else [`InitMode::Default`] (there is no config-wide
/// default: the systemd grant is always per server).
pub fn init(server: &Server) -> InitMode {
    server.spec.init.unwrap_or_default()
}

/// Docker object names for one berth instance (`tenants.name_prefix`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    prefix: String,
}

impl Names {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix>-server-<N>` (`berth-server-<N>` by default).
    pub fn container(&self, id: ServerId) -> String {
        format!("{}-server-{}", self.prefix, id.get())
    }

    /// `<prefix>-server-<N>-data`.
    pub fn volume(&self, id: ServerId) -> String {
        format!("{}-server-{}-data", self.prefix, id.get())
    }

    /// The server id of a container name of ours (with or without Docker's leading `/`).
    pub fn parse_container(&self, name: &str) -> Option<ServerId> {
        let name = name.strip_prefix('/').unwrap_or(name);
        let digits = name
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix("-server-")?;
        crate::name::parse_server_ref(digits)
    }
}

/// Labels on every server container and volume.
pub fn labels(names: &Names, id: ServerId, owner: &str) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_SERVER.to_string(), id.get().to_string()),
        (LABEL_OWNER.to_string(), owner.to_string()),
        (LABEL_MANAGED.to_string(), "true".to_string()),
        (LABEL_INSTANCE.to_string(), names.prefix().to_string()),
    ])
}

/// The limits a server gets: its own overrides, else the config defaults. 0 = unlimited.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub memory: u64,
    pub nano_cpus: i64,
    pub pids: i64,
}

pub fn effective_limits(cfg: &Config, server: &Server) -> Limits {
    Limits {
        memory: server.spec.memory.unwrap_or(cfg.memory.0),
        nano_cpus: server
            .spec
            .nano_cpus
            .unwrap_or_else(|| cpus_to_nano(cfg.cpus)),
        pids: server.spec.pids.unwrap_or(cfg.pids),
    }
}

/// CPUs (e.g. 1.5) → Docker NanoCpus; negative or non-finite → 0 (unlimited).
pub fn cpus_to_nano(cpus: f64) -> i64 {
    if cpus.is_finite() && cpus > 0.0 {
        (cpus * 1e9).round() as i64
    } else {
        0
    }
}

/// The login user of a server: its own, else `[tenants] user`.
pub fn login_user<'a>(cfg: &'a Config, server: &'a Server) -> &'a str {
    server.spec.user.as_deref().unwrap_or(&cfg.user)
}

/// A user name `server create --user` and `server set --user` accept: `root` or a POSIX-ish
/// login name (what `useradd` accepts by default), nothing a shell or passwd line could misread.
pub fn valid_user(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && (b[0].is_ascii_lowercase() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_-".contains(c))
}

/// A server's Docker-in-Docker mode: its own, else `[tenants] dind`.
pub fn dind(cfg: &Config, server: &Server) -> DindMode {
    server.spec.dind.unwrap_or(cfg.dind)
}

/// The image a server runs.
pub fn image<'a>(cfg: &'a Config, server: &'a Server) -> &'a str {
    server.spec.image.as_deref().unwrap_or(&cfg.image)
}

/// The full create body for server `server`'s container: a function of the config and the
/// server's stored settings only (never of the image's labels), so what a container may do is
/// decided by the operator and can be checked against a running container ([`container_drift`]).
pub fn container_body(
    cfg: &Config,
    net: &NetworkConfig,
    names: &Names,
    server: &Server,
) -> ContainerCreateBody {
    let limits = effective_limits(cfg, server);
    let memory = i64::try_from(limits.memory).unwrap_or(i64::MAX);
    let dind = dind(cfg, server);
    let (privileged, runtime) = match dind {
        DindMode::Off | DindMode::Caps | DindMode::Rootless => (false, cfg.runtime.clone()),
        DindMode::Privileged => (true, cfg.runtime.clone()),
        DindMode::Runtime => (false, cfg.runtime.clone()),
    };
    let systemd = init(server) == InitMode::Systemd;
    let caps = dind == DindMode::Caps || systemd;
    let rootless = dind == DindMode::Rootless && !caps;
    let host_config = HostConfig {
        memory: (memory > 0).then_some(memory),
        // Same as memory: no swap beyond the limit.
        memory_swap: (memory > 0).then_some(memory),
        nano_cpus: (limits.nano_cpus > 0).then_some(limits.nano_cpus),
        pids_limit: (limits.pids > 0).then_some(limits.pids),
        dns: Some(vec![net.gateway.to_string()]),
        restart_policy: Some(DockerRestart {
            name: Some(match cfg.restart {
                RestartPolicy::No => RestartPolicyNameEnum::NO,
                RestartPolicy::UnlessStopped => RestartPolicyNameEnum::UNLESS_STOPPED,
                RestartPolicy::Always => RestartPolicyNameEnum::ALWAYS,
                RestartPolicy::OnFailure => RestartPolicyNameEnum::ON_FAILURE,
            }),
            maximum_retry_count: None,
        }),
        // tini as PID 1: reaps orphans of tenant shells, forwards signals (systemd does both
        // itself when it is PID 1).
        init: Some(!systemd),
        tmpfs: systemd.then(|| {
            HashMap::from(["/run", "/run/lock", "/tmp"].map(|p| (p.to_string(), String::new())))
        }),
        network_mode: Some(net.name.clone()),
        mounts: Some(vec![Mount {
            target: Some(cfg.volume_mount.clone()),
            source: Some(names.volume(server.id)),
            typ: Some(MountType::VOLUME),
            read_only: Some(false),
            ..Default::default()
        }]),
        // `Binds` rather than a bind `Mount`: Docker creates a missing source directory at start
        // (after a host reboot, or a start by dockerd's restart policy before berth runs).
        binds: agent_bind(cfg, server.id).map(|b| vec![b]),
        privileged: privileged.then_some(true),
        runtime,
        // No setuid escalation inside tenants (an explicit `[tenants] no_new_privileges`); a
        // nested engine needs it, so never in DinD mode.
        security_opt: if caps {
            Some(vec![
                "seccomp=unconfined".to_string(),
                "apparmor=unconfined".to_string(),
            ])
        } else if rootless {
            // No no-new-privileges: newuidmap/newgidmap gain their file capabilities at exec.
            Some(vec![format!("seccomp={}", rootless_seccomp_profile())])
        } else {
            (cfg.no_new_privileges && dind == DindMode::Off)
                .then(|| vec!["no-new-privileges".to_string()])
        },
        cap_add: caps.then(|| {
            ["SYS_ADMIN", "NET_ADMIN", "SYS_PTRACE", "MKNOD"]
                .map(String::from)
                .to_vec()
        }),
        cgroupns_mode: caps.then_some(HostConfigCgroupnsModeEnum::PRIVATE),
        // `::1` on the container's loopback even on an IPv4-only network (where Docker disables
        // IPv6 on every interface): services bound to `::1`, or to `localhost` by runtimes that
        // prefer IPv6, start as on any Linux host, and `ssh -L` to `[::1]` finds them. It is
        // the container's own loopback; no address outside it changes.
        sysctls: Some(HashMap::from([(
            "net.ipv6.conf.lo.disable_ipv6".to_string(),
            "0".to_string(),
        )])),
        // `systempaths=unconfined` (what the CLI turns into empty lists): a user namespace may
        // mount a new procfs only where no path of /proc is masked or read-only.
        masked_paths: rootless.then(Vec::new),
        readonly_paths: rootless.then(Vec::new),
        // slirp4netns gives the nested engine its network through a tap device.
        devices: rootless.then(|| {
            vec![DeviceMapping {
                path_on_host: Some(TUN_DEVICE.to_string()),
                path_in_container: Some(TUN_DEVICE.to_string()),
                cgroup_permissions: Some("rwm".to_string()),
            }]
        }),
        ..Default::default()
    };
    ContainerCreateBody {
        image: Some(image(cfg, server).to_string()),
        hostname: Some(server.id.login_name()),
        // systemd shuts down cleanly on SIGRTMIN+3 (SIGTERM would make it re-execute).
        stop_signal: systemd.then(|| "SIGRTMIN+3".to_string()),
        // A nested engine keeps its images and containers on the server's volume, so they
        // survive stop/start, recreation and `rm` without `--purge`.
        // `BERTH_DIND=rootless` tells the rootless image's init to start its nested engine.
        env: (dind != DindMode::Off).then(|| {
            let mut env = vec![format!(
                "BERTH_DOCKER_DATA_ROOT={}/.docker",
                cfg.volume_mount.trim_end_matches('/')
            )];
            if rootless {
                env.push("BERTH_DIND=rootless".to_string());
            }
            env
        }),
        labels: Some({
            let mut l = labels(names, server.id, &server.owner);
            l.insert(LABEL_USER.to_string(), login_user(cfg, server).to_string());
            l
        }),
        tty: Some(false),
        open_stdin: Some(false),
        attach_stdin: Some(false),
        attach_stdout: Some(false),
        attach_stderr: Some(false),
        host_config: Some(host_config),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                net.name.clone(),
                EndpointSettings::default(),
            )])),
        }),
        ..Default::default()
    }
}

/// How a container differs from the body berth would create for the server now, as readable
/// phrases ("capabilities are SYS_ADMIN, settings grant none"); empty = it matches. Covers what
/// decides what the tenant may do (image, login user and server labels, privileged, added
/// capabilities, security options, init, cgroup namespace, runtime) and the resource limits.
/// Values Docker fills in itself (an unset runtime or cgroup namespace) are compared only when
/// berth asks for one.
pub fn container_drift(
    expected: &ContainerCreateBody,
    actual: &ContainerInspectResponse,
) -> Vec<String> {
    let mut out = Vec::new();
    let cfg = actual.config.as_ref();
    let want_image = expected.image.as_deref().unwrap_or_default();
    let have_image = cfg.and_then(|c| c.image.as_deref()).unwrap_or_default();
    if want_image != have_image {
        out.push(format!(
            "image is {have_image:?}, settings say {want_image:?}"
        ));
    }
    let have_labels = cfg.and_then(|c| c.labels.as_ref());
    let mut want_labels: Vec<_> = expected.labels.iter().flatten().collect();
    want_labels.sort();
    for (k, v) in want_labels {
        let have = have_labels.and_then(|l| l.get(k));
        if have != Some(v) {
            out.push(format!(
                "label {k} is {}, settings say {v:?}",
                have.map_or("missing".to_string(), |h| format!("{h:?}"))
            ));
        }
    }
    let have_env = cfg.and_then(|c| c.env.as_ref());
    for e in expected.env.iter().flatten() {
        if !have_env.is_some_and(|h| h.contains(e)) {
            out.push(format!("environment lacks {e}"));
        }
    }
    let want = expected.host_config.clone().unwrap_or_default();
    let have = actual.host_config.clone().unwrap_or_default();
    let flag = |b: Option<bool>| b.unwrap_or(false);
    if flag(want.privileged) != flag(have.privileged) {
        out.push(format!(
            "privileged is {}, settings say {}",
            flag(have.privileged),
            flag(want.privileged)
        ));
    }
    let caps = |c: &Option<Vec<String>>| -> Vec<String> {
        let mut v: Vec<String> = c
            .iter()
            .flatten()
            .map(|c| {
                let c = c.trim().to_ascii_uppercase();
                c.strip_prefix("CAP_").map(str::to_string).unwrap_or(c)
            })
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let (wc, hc) = (caps(&want.cap_add), caps(&have.cap_add));
    if wc != hc {
        out.push(format!(
            "added capabilities are {}, settings grant {}",
            list(&hc),
            list(&wc)
        ));
    }
    let secopts = |s: &Option<Vec<String>>| -> Vec<String> {
        let mut v: Vec<String> = s
            .iter()
            .flatten()
            .map(|o| match o.as_str() {
                "no-new-privileges:true" | "no-new-privileges=true" => "no-new-privileges".into(),
                // The old `key:value` spelling; a value's own colons (a JSON profile) stay.
                o => match (o.find(':'), o.find('=')) {
                    (Some(c), Some(e)) if e < c => o.to_string(),
                    (Some(_), _) => o.replacen(':', "=", 1),
                    _ => o.to_string(),
                },
            })
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let (ws, hs) = (secopts(&want.security_opt), secopts(&have.security_opt));
    if ws != hs {
        out.push(format!(
            "security options are {}, settings say {}",
            list(&hs),
            list(&ws)
        ));
    }
    let devices = |d: &Option<Vec<DeviceMapping>>| -> Vec<String> {
        let mut v: Vec<String> = d
            .iter()
            .flatten()
            .map(|m| {
                format!(
                    "{}:{}:{}",
                    m.path_on_host.as_deref().unwrap_or_default(),
                    m.path_in_container.as_deref().unwrap_or_default(),
                    m.cgroup_permissions.as_deref().unwrap_or_default()
                )
            })
            .collect();
        v.sort();
        v
    };
    let (wd, hd) = (devices(&want.devices), devices(&have.devices));
    if wd != hd {
        out.push(format!(
            "devices are {}, settings say {}",
            list(&hd),
            list(&wd)
        ));
    }
    // Empty lists are `systempaths=unconfined`; absent ones are Docker's masks.
    let unmasked = |h: &HostConfig| {
        h.masked_paths.as_ref().is_some_and(Vec::is_empty)
            && h.readonly_paths.as_ref().is_some_and(Vec::is_empty)
    };
    if unmasked(&want) != unmasked(&have) {
        out.push(format!(
            "system paths are {}, settings say {}",
            if unmasked(&have) {
                "unmasked"
            } else {
                "masked"
            },
            if unmasked(&want) {
                "unmasked"
            } else {
                "masked"
            }
        ));
    }
    if flag(want.init) != flag(have.init) {
        out.push(format!(
            "tini as init is {}, settings say {}",
            onoff(flag(have.init)),
            onoff(flag(want.init))
        ));
    }
    if let Some(w) = want.cgroupns_mode {
        let h = have
            .cgroupns_mode
            .map(|h| h.to_string())
            .unwrap_or_default();
        if w.to_string() != h {
            out.push(format!(
                "cgroup namespace is {h:?}, settings say {:?}",
                w.to_string()
            ));
        }
    }
    if let Some(w) = want.runtime.as_deref().filter(|w| !w.is_empty()) {
        let h = have.runtime.as_deref().unwrap_or_default();
        if w != h {
            out.push(format!("runtime is {h:?}, settings say {w:?}"));
        }
    }
    // Docker's "unlimited" is 0, -1 or absent depending on the field and version.
    let limit = |v: Option<i64>| v.filter(|v| *v > 0).unwrap_or(0);
    for (what, w, h) in [
        ("memory limit", want.memory, have.memory),
        ("cpu limit (nano cpus)", want.nano_cpus, have.nano_cpus),
        ("pids limit", want.pids_limit, have.pids_limit),
    ] {
        if limit(w) != limit(h) {
            out.push(format!("{what} is {}, settings say {}", limit(h), limit(w)));
        }
    }
    out
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "none".to_string()
    } else {
        v.join(", ")
    }
}

fn onoff(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

/// The tun device a `rootless` server gets (the host's node: it must be `0666`, as udev makes
/// it, for the tenant user to open it).
pub const TUN_DEVICE: &str = "/dev/net/tun";

/// Syscalls a `rootless` server may not make (`EPERM`): what Docker's default profile keeps from
/// a container with Docker's default capabilities and a nested rootless engine does not need —
/// kernel modules, kexec, reboot, swap, clocks, accounting and quotas, the kernel log, raw I/O
/// ports, `bpf`, `perf_event_open`, `userfaultfd`, `io_uring`, handle-based opens, `kcmp`,
/// fanotify, the obsolete `sysfs`/`_sysctl`/`ustat`/`uselib`/`nfsservctl`/`vm86`.
pub const ROOTLESS_SECCOMP_DENIED: &[&str] = &[
    "acct",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "settimeofday",
    "stime",
    "create_module",
    "delete_module",
    "finit_module",
    "init_module",
    "get_kernel_syms",
    "query_module",
    "iopl",
    "ioperm",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "lookup_dcookie",
    "nfsservctl",
    "open_by_handle_at",
    "name_to_handle_at",
    "perf_event_open",
    "quotactl",
    "quotactl_fd",
    "reboot",
    "swapon",
    "swapoff",
    "sysfs",
    "_sysctl",
    "syslog",
    "uselib",
    "userfaultfd",
    "ustat",
    "vm86",
    "vm86old",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "fanotify_init",
];

/// Syscalls that answer `ENOSYS` in a `rootless` server: the kernel keyring (not namespaced
/// per container); runc then runs nested containers without a session keyring.
pub const ROOTLESS_SECCOMP_ENOSYS: &[&str] = &["keyctl", "add_key", "request_key"];

/// The seccomp profile of a `rootless` server, as Docker takes it inline (`seccomp=<json>`).
/// What a nested rootless engine needs and Docker's default refuses without CAP_SYS_ADMIN —
/// `clone`/`clone3` with namespace flags, `unshare`, `setns`, `mount`, `umount2`, `pivot_root`,
/// `sethostname`, `setdomainname`, `chroot` — is allowed: every one of them acts only inside
/// namespaces the tenant creates, where the kernel checks capabilities against the tenant's own
/// user namespace. Everything in [`ROOTLESS_SECCOMP_DENIED`] fails with `EPERM`, the keyring
/// with `ENOSYS`.
pub fn rootless_seccomp_profile() -> String {
    serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {
                "names": ROOTLESS_SECCOMP_DENIED,
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": 1
            },
            {
                "names": ROOTLESS_SECCOMP_ENOSYS,
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": 38
            }
        ]
    })
    .to_string()
}

/// Where the agent socket directory is mounted inside every tenant container.
pub const AGENT_MOUNT: &str = "/dev/berth";

/// Server `id`'s agent directory on the host (`None` when `[tenants] agent_dir` is empty).
pub fn agent_dir(cfg: &Config, id: ServerId) -> Option<std::path::PathBuf> {
    (!cfg.agent_dir.is_empty()).then(|| std::path::Path::new(&cfg.agent_dir).join(id.login_name()))
}

fn agent_bind(cfg: &Config, id: ServerId) -> Option<String> {
    agent_dir(cfg, id).map(|d| format!("{}:{AGENT_MOUNT}:ro", d.display()))
}

/// Docker bridge options berth sets on the tenant network.
pub const OPT_BRIDGE_NAME: &str = "com.docker.network.bridge.name";
pub const OPT_ICC: &str = "com.docker.network.bridge.enable_icc";

/// The create request for the tenant network: bridge driver, our interface name, subnet and
/// gateway, inter-container traffic off (netfilter enforces the same at L2 regardless).
pub fn network_request(net: &NetworkConfig) -> NetworkCreateRequest {
    let mut ipam = vec![IpamConfig {
        subnet: Some(net.subnet.to_string()),
        gateway: Some(net.gateway.to_string()),
        ..Default::default()
    }];
    if let (Some(s6), Some(g6)) = (net.subnet6, net.gateway6) {
        ipam.push(IpamConfig {
            subnet: Some(s6.to_string()),
            gateway: Some(g6.to_string()),
            ..Default::default()
        });
    }
    NetworkCreateRequest {
        name: net.name.clone(),
        driver: Some("bridge".into()),
        ipam: Some(Ipam {
            driver: Some("default".into()),
            config: Some(ipam),
            options: None,
        }),
        options: Some(HashMap::from([
            (OPT_BRIDGE_NAME.to_string(), net.bridge.clone()),
            (OPT_ICC.to_string(), "false".to_string()),
        ])),
        labels: Some(HashMap::from([(
            LABEL_MANAGED.to_string(),
            "true".to_string(),
        )])),
        enable_ipv6: Some(net.subnet6.is_some()),
        ..Default::default()
    }
}

/// What an existing network looks like, reduced to what berth cares about.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExistingNetwork {
    pub driver: Option<String>,
    pub bridge: Option<String>,
    pub subnets: Vec<(Option<String>, Option<String>)>,
}

/// Differences between an existing network and the config, as readable phrases; empty = OK.
pub fn network_conflicts(net: &NetworkConfig, existing: &ExistingNetwork) -> Vec<String> {
    let mut out = Vec::new();
    if existing.driver.as_deref() != Some("bridge") {
        out.push(format!(
            "driver is {} (berth needs bridge)",
            existing.driver.as_deref().unwrap_or("unknown")
        ));
    }
    if existing.bridge.as_deref() != Some(net.bridge.as_str()) {
        out.push(format!(
            "bridge interface is {} (network.bridge = {})",
            existing
                .bridge
                .as_deref()
                .unwrap_or("docker's default name"),
            net.bridge
        ));
    }
    let want_subnet = net.subnet.to_string();
    let want_gw = net.gateway.to_string();
    match existing
        .subnets
        .iter()
        .find(|(s, _)| s.as_deref() == Some(&want_subnet))
    {
        None => {
            let have: Vec<String> = existing
                .subnets
                .iter()
                .filter_map(|(s, _)| s.clone())
                .collect();
            let have = if have.is_empty() {
                "none".to_string()
            } else {
                have.join(", ")
            };
            out.push(format!("subnet is {have} (network.subnet = {want_subnet})"));
        }
        Some((_, gw)) if gw.as_deref() != Some(&want_gw) => out.push(format!(
            "gateway is {} (network.gateway = {want_gw})",
            gw.as_deref().unwrap_or("unset")
        )),
        Some(_) => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{DesiredState, ServerSpec};

    fn server(id: u32, spec: ServerSpec) -> Server {
        Server {
            id: ServerId::new(id).unwrap(),
            owner: "alice".into(),
            spec,
            desired: DesiredState::Running,
            created: chrono::Utc::now(),
            deleted: None,
        }
    }

    #[test]
    fn the_loopback_keeps_ipv6() {
        let cfg = Config::default();
        let net = NetworkConfig::default();
        let body = container_body(
            &cfg,
            &net,
            &Names::new("b"),
            &server(1, ServerSpec::default()),
        );
        let sysctls = body.host_config.and_then(|h| h.sysctls).unwrap_or_default();
        assert_eq!(
            sysctls
                .get("net.ipv6.conf.lo.disable_ipv6")
                .map(String::as_str),
            Some("0")
        );
    }

    #[test]
    fn names() {
        let n = Names::new("berth");
        let id = ServerId::new(42).unwrap();
        assert_eq!(n.container(id), id.container_name());
        assert_eq!(n.volume(id), id.volume_name());
        assert_eq!(n.parse_container("/berth-server-42"), Some(id));
        assert_eq!(n.parse_container("berth-server-42"), Some(id));
        assert_eq!(n.parse_container("berth-server-042"), None);
        assert_eq!(n.parse_container("berth-server-42-data"), None);
        assert_eq!(n.parse_container("other-server-42"), None);
        assert_eq!(Names::new("t1").container(id), "t1-server-42");
    }

    #[test]
    fn defaults_from_config() {
        let cfg = Config::default();
        let net = NetworkConfig::default();
        let body = container_body(
            &cfg,
            &net,
            &Names::new("berth"),
            &server(7, ServerSpec::default()),
        );
        assert_eq!(body.image.as_deref(), Some("berth/tenant:bookworm"));
        assert_eq!(body.hostname.as_deref(), Some("server7"));
        let labels = body.labels.unwrap();
        assert_eq!(labels[LABEL_SERVER], "7");
        assert_eq!(labels[LABEL_OWNER], "alice");
        assert_eq!(labels[LABEL_MANAGED], "true");
        let hc = body.host_config.unwrap();
        assert_eq!(hc.memory, Some(1 << 30));
        assert_eq!(hc.memory_swap, Some(1 << 30));
        assert_eq!(hc.nano_cpus, Some(1_000_000_000));
        assert_eq!(hc.pids_limit, Some(1024));
        assert_eq!(hc.dns, Some(vec!["172.19.2.1".to_string()]));
        assert_eq!(hc.init, Some(true));
        assert_eq!(hc.network_mode.as_deref(), Some("berth-tenants"));
        assert_eq!(hc.privileged, None);
        assert_eq!(hc.security_opt, Some(vec!["no-new-privileges".to_string()]));
        assert_eq!(
            hc.restart_policy.unwrap().name,
            Some(RestartPolicyNameEnum::UNLESS_STOPPED)
        );
        let m = &hc.mounts.unwrap()[0];
        assert_eq!(m.source.as_deref(), Some("berth-server-7-data"));
        assert_eq!(m.target.as_deref(), Some("/apps"));
        assert!(
            body.networking_config
                .unwrap()
                .endpoints_config
                .unwrap()
                .contains_key("berth-tenants")
        );
    }

    #[test]
    fn overrides_and_unlimited() {
        let cfg = Config {
            memory: crate::config::ByteSize(0),
            cpus: 0.0,
            pids: 0,
            ..Config::default()
        };
        let net = NetworkConfig::default();
        let names = Names::new("berth");
        let hc = container_body(&cfg, &net, &names, &server(1, ServerSpec::default()))
            .host_config
            .unwrap();
        assert_eq!((hc.memory, hc.nano_cpus, hc.pids_limit), (None, None, None));
        let spec = ServerSpec {
            image: Some("ubuntu:24.04".into()),
            memory: Some(256 << 20),
            nano_cpus: Some(cpus_to_nano(0.5)),
            pids: Some(64),
            user: None,
            dind: None,
            init: None,
        };
        let body = container_body(&cfg, &net, &names, &server(2, spec));
        assert_eq!(body.image.as_deref(), Some("ubuntu:24.04"));
        let hc = body.host_config.unwrap();
        assert_eq!(
            (hc.memory, hc.nano_cpus, hc.pids_limit),
            (Some(256 << 20), Some(500_000_000), Some(64))
        );
    }

    #[test]
    fn dind_modes() {
        let net = NetworkConfig::default();
        let names = Names::new("berth");
        let s = server(3, ServerSpec::default());
        let cfg = Config {
            dind: DindMode::Privileged,
            ..Config::default()
        };
        let hc = container_body(&cfg, &net, &names, &s).host_config.unwrap();
        assert_eq!(hc.privileged, Some(true));
        assert_eq!(hc.security_opt, None);
        let cfg = Config {
            dind: DindMode::Runtime,
            runtime: Some("sysbox-runc".into()),
            ..Config::default()
        };
        let hc = container_body(&cfg, &net, &names, &s).host_config.unwrap();
        assert_eq!(hc.privileged, None);
        assert_eq!(hc.runtime.as_deref(), Some("sysbox-runc"));
        let cfg = Config {
            dind: DindMode::Caps,
            ..Config::default()
        };
        let body = container_body(&cfg, &net, &names, &s);
        assert_eq!(
            body.env,
            Some(vec!["BERTH_DOCKER_DATA_ROOT=/apps/.docker".to_string()])
        );
        let hc = body.host_config.unwrap();
        assert_eq!(hc.privileged, None);
        assert_eq!(hc.cgroupns_mode, Some(HostConfigCgroupnsModeEnum::PRIVATE));
        assert_eq!(
            hc.cap_add,
            Some(vec![
                "SYS_ADMIN".to_string(),
                "NET_ADMIN".into(),
                "SYS_PTRACE".into(),
                "MKNOD".into()
            ])
        );
        let sec = hc.security_opt.unwrap();
        assert!(sec.contains(&"seccomp=unconfined".to_string()), "{sec:?}");
        assert!(!sec.contains(&"no-new-privileges".to_string()), "{sec:?}");
        // The operator's systemd grant: no tini, tmpfs for /run, the caps grant.
        let sd = server(
            3,
            ServerSpec {
                init: Some(InitMode::Systemd),
                ..ServerSpec::default()
            },
        );
        let body = container_body(&Config::default(), &net, &names, &sd);
        assert_eq!(body.stop_signal.as_deref(), Some("SIGRTMIN+3"));
        let hc = body.host_config.unwrap();
        assert_eq!(hc.init, Some(false));
        assert!(hc.tmpfs.unwrap().contains_key("/run"));
        assert!(hc.cap_add.unwrap().contains(&"SYS_ADMIN".to_string()));
        assert_eq!(hc.cgroupns_mode, Some(HostConfigCgroupnsModeEnum::PRIVATE));
        // The default mode keeps no-new-privileges and adds nothing.
        let hc = container_body(&Config::default(), &net, &names, &s)
            .host_config
            .unwrap();
        assert_eq!(hc.cap_add, None);
        assert_eq!(hc.security_opt, Some(vec!["no-new-privileges".to_string()]));
    }

    #[test]
    fn rootless_mode() {
        let net = NetworkConfig::default();
        let names = Names::new("berth");
        let s = server(
            4,
            ServerSpec {
                dind: Some(DindMode::Rootless),
                ..ServerSpec::default()
            },
        );
        let body = container_body(&Config::default(), &net, &names, &s);
        let env = body.env.clone().unwrap();
        assert!(env.contains(&"BERTH_DIND=rootless".to_string()), "{env:?}");
        let hc = body.host_config.clone().unwrap();
        // Nothing beyond Docker's default capabilities, no private-cgroup grant, tini as init.
        assert_eq!(hc.cap_add, None);
        assert_eq!(hc.privileged, None);
        assert_eq!(hc.cgroupns_mode, None);
        assert_eq!(hc.init, Some(true));
        let sec = hc.security_opt.clone().unwrap();
        assert_eq!(sec.len(), 1, "{sec:?}");
        assert_eq!(hc.masked_paths, Some(vec![]));
        assert_eq!(hc.readonly_paths, Some(vec![]));
        assert!(
            !sec.iter()
                .any(|o| o.contains("unconfined") && o.starts_with("seccomp"))
        );
        assert!(!sec.iter().any(|o| o.contains("no-new-privileges")));
        let profile = sec
            .iter()
            .find_map(|o| o.strip_prefix("seccomp="))
            .expect("an inline profile");
        let p: serde_json::Value = serde_json::from_str(profile).expect("profile is JSON");
        assert_eq!(p["defaultAction"], "SCMP_ACT_ALLOW");
        let rules = p["syscalls"].as_array().unwrap();
        let names_of = |errno: i64| -> Vec<String> {
            rules
                .iter()
                .filter(|r| r["errnoRet"] == errno)
                .flat_map(|r| r["names"].as_array().unwrap().clone())
                .map(|n| n.as_str().unwrap().to_string())
                .collect()
        };
        let eperm = names_of(1);
        for denied in [
            "init_module",
            "finit_module",
            "kexec_load",
            "bpf",
            "reboot",
            "open_by_handle_at",
        ] {
            assert!(eperm.contains(&denied.to_string()), "{denied}");
        }
        for needed in [
            "clone",
            "unshare",
            "setns",
            "mount",
            "umount2",
            "pivot_root",
            "chroot",
        ] {
            assert!(
                !eperm.contains(&needed.to_string()),
                "{needed} must be allowed"
            );
        }
        assert_eq!(names_of(38), ["keyctl", "add_key", "request_key"]);
        let dev = hc.devices.clone().unwrap();
        assert_eq!(dev.len(), 1);
        assert_eq!(dev[0].path_in_container.as_deref(), Some(TUN_DEVICE));
        // A rootless container inspected back matches (the profile's colons are not the old
        // `key:value` spelling), and one without the tun device or with another profile drifts.
        let inspected = |hc: HostConfig| ContainerInspectResponse {
            config: Some(bollard::models::ContainerConfig {
                image: body.image.clone(),
                labels: body.labels.clone(),
                env: body.env.clone(),
                ..Default::default()
            }),
            host_config: Some(hc),
            ..Default::default()
        };
        assert_eq!(
            container_drift(&body, &inspected(hc.clone())),
            Vec::<String>::new()
        );
        let mut no_tun = hc.clone();
        no_tun.devices = None;
        assert!(
            container_drift(&body, &inspected(no_tun))
                .join(";")
                .contains("devices are none")
        );
        let mut unconfined = hc.clone();
        unconfined.security_opt = Some(vec!["seccomp:unconfined".into()]);
        let mut masked = hc.clone();
        masked.masked_paths = Some(vec!["/proc/kcore".into()]);
        assert!(
            container_drift(&body, &inspected(masked))
                .join(";")
                .contains("system paths are masked")
        );
        assert!(
            container_drift(&body, &inspected(unconfined))
                .join(";")
                .contains("security options")
        );
        // The systemd grant wins over rootless (it is a superset): no profile of its own.
        let sd = server(
            4,
            ServerSpec {
                dind: Some(DindMode::Rootless),
                init: Some(InitMode::Systemd),
                ..ServerSpec::default()
            },
        );
        let hc = container_body(&Config::default(), &net, &names, &sd)
            .host_config
            .unwrap();
        assert!(
            hc.security_opt
                .unwrap()
                .contains(&"seccomp=unconfined".to_string())
        );
        assert_eq!(hc.devices, None);
    }

    /// An image's `berth.init=systemd` label is read (to tell the operator), but what a
    /// container may do is decided by the server's settings alone: the body has no input from
    /// image metadata, and a server without the systemd grant gets none of its privileges.
    #[test]
    fn image_label_grants_nothing() {
        let labels = HashMap::from([(IMAGE_LABEL_INIT.to_string(), "systemd".to_string())]);
        assert!(image_asks_systemd(Some(&labels)));
        assert!(!image_asks_systemd(None));
        assert!(!image_asks_systemd(Some(&HashMap::from([(
            IMAGE_LABEL_INIT.to_string(),
            "tini".to_string()
        )]))));
        let net = NetworkConfig::default();
        let names = Names::new("berth");
        for init in [None, Some(InitMode::Default)] {
            let s = server(
                4,
                ServerSpec {
                    image: Some("berth/tenant:bookworm-systemd".into()),
                    init,
                    ..ServerSpec::default()
                },
            );
            let body = container_body(&Config::default(), &net, &names, &s);
            assert_eq!(body.stop_signal, None);
            let hc = body.host_config.unwrap();
            assert_eq!(hc.cap_add, None, "{init:?}");
            assert_eq!(hc.privileged, None);
            assert_eq!(hc.cgroupns_mode, None);
            assert_eq!(hc.init, Some(true));
            assert_eq!(hc.security_opt, Some(vec!["no-new-privileges".to_string()]));
        }
        assert_eq!(InitMode::parse("systemd"), Some(InitMode::Systemd));
        assert_eq!(InitMode::parse("default"), Some(InitMode::Default));
        assert_eq!(InitMode::parse("Systemd"), None);
    }

    /// A container made from other settings (here: the caps grant the server no longer has,
    /// another login user) is told apart from one made from the current settings, the way
    /// Docker reports it (capabilities with CAP_ prefix, unlimited pids as absent).
    #[test]
    fn drift_between_settings_and_container() {
        use bollard::models::{ContainerConfig, HostConfig as Hc};
        let net = NetworkConfig::default();
        let names = Names::new("berth");
        let cfg = Config::default();
        let now = server(5, ServerSpec::default());
        let inspected = |body: &ContainerCreateBody, caps_prefixed: bool| {
            let mut hc: Hc = body.host_config.clone().unwrap();
            if caps_prefixed {
                hc.cap_add = hc
                    .cap_add
                    .map(|c| c.into_iter().map(|c| format!("CAP_{c}")).collect());
            }
            ContainerInspectResponse {
                config: Some(ContainerConfig {
                    image: body.image.clone(),
                    labels: body.labels.clone(),
                    env: body.env.clone(),
                    ..Default::default()
                }),
                host_config: Some(hc),
                ..Default::default()
            }
        };
        let want = container_body(&cfg, &net, &names, &now);
        assert_eq!(
            container_drift(&want, &inspected(&want, false)),
            Vec::<String>::new()
        );
        let old = server(
            5,
            ServerSpec {
                dind: Some(DindMode::Caps),
                user: Some("root".into()),
                ..ServerSpec::default()
            },
        );
        let old_body = container_body(&cfg, &net, &names, &old);
        assert_eq!(
            container_drift(&old_body, &inspected(&old_body, true)),
            Vec::<String>::new(),
            "docker's CAP_ spelling is the same grant"
        );
        let d = container_drift(&want, &inspected(&old_body, true));
        let text = d.join("; ");
        assert!(text.contains("added capabilities are MKNOD, NET_ADMIN, SYS_ADMIN, SYS_PTRACE, settings grant none"), "{text}");
        assert!(
            text.contains("label berth.user is \"root\", settings say \"tenant\""),
            "{text}"
        );
        assert!(text.contains("security options"), "{text}");
        // Limits: Docker's absent, 0 and -1 all mean unlimited.
        let unlimited = server(
            5,
            ServerSpec {
                pids: Some(0),
                ..ServerSpec::default()
            },
        );
        let ub = container_body(&cfg, &net, &names, &unlimited);
        let mut c = inspected(&ub, false);
        if let Some(h) = c.host_config.as_mut() {
            h.pids_limit = Some(-1);
        }
        assert_eq!(container_drift(&ub, &c), Vec::<String>::new());
        assert!(
            container_drift(&want, &c)
                .join(";")
                .contains("pids limit is 0, settings say 1024")
        );
    }

    #[test]
    fn network_request_and_conflicts() {
        let net = NetworkConfig::default();
        let req = network_request(&net);
        assert_eq!(req.driver.as_deref(), Some("bridge"));
        let opts = req.options.unwrap();
        assert_eq!(opts[OPT_BRIDGE_NAME], "berth0");
        assert_eq!(opts[OPT_ICC], "false");
        let ok = ExistingNetwork {
            driver: Some("bridge".into()),
            bridge: Some("berth0".into()),
            subnets: vec![(Some("172.19.2.0/24".into()), Some("172.19.2.1".into()))],
        };
        assert!(network_conflicts(&net, &ok).is_empty());
        let bad = ExistingNetwork {
            driver: Some("bridge".into()),
            bridge: None,
            subnets: vec![(Some("10.0.0.0/24".into()), Some("10.0.0.1".into()))],
        };
        let c = network_conflicts(&net, &bad);
        assert_eq!(c.len(), 2, "{c:?}");
        assert!(c[0].contains("bridge interface"));
        assert!(c[1].contains("10.0.0.0/24"), "{c:?}");
        let gw = ExistingNetwork {
            subnets: vec![(Some("172.19.2.0/24".into()), Some("172.19.2.254".into()))],
            ..ok
        };
        assert!(network_conflicts(&net, &gw)[0].contains("172.19.2.254"));
    }
}
