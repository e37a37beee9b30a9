//! berth's own daemons on a Docker Swarm (`deploy/swarm/`), on the three-host testbed of
//! `integration_tests::swarm`: the swarm forms, the offline-built daemon image reaches every
//! engine, `docker stack deploy` of the shipped stack file runs one node task per host, and each
//! task programs its own host's namespace (nftables table, SSH gateway on the host's address)
//! while the machine's root namespace and the fabric stay untouched. Then the cluster:
//! `deploy/swarm/deploy.sh` runs node and front per labelled host on one PostgreSQL in the
//! fabric, and a login through host 0's front reaches a server on host 1's engine.
//!
//! Needs root, dockerd, nftables, the tenant base image and PostgreSQL 15's binaries
//! (`scripts/test` provides all).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use integration_tests::swarm::{FABRIC_ADDR, Host, Testbed, banner_from, nsenter, wait_for};

const HOSTS: usize = 3;
const STACK: &str = "berth";
/// How long the stack's tasks may take to run and program their hosts.
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(90);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The daemon image, built by the shipped script and removed from the machine's engine after.
struct Image(String);

impl Image {
    fn build() -> Result<Image> {
        let tag = format!("berth/berth:test-{}", std::process::id());
        let bin = integration_tests::tenants::berth_bin()?;
        let mut cmd = Command::new(repo().join("deploy/swarm/build-image.sh"));
        cmd.arg("--bin").arg(&bin).args(["--tag", &tag]);
        if let Ok(base) = std::env::var("BERTH_TEST_IMAGE") {
            cmd.args(["--base", &base]);
        }
        if let Ok(agent) = integration_tests::gateway::agent_binary() {
            cmd.arg("--agent").arg(agent);
        }
        let out = cmd
            .output()
            .context("cannot run deploy/swarm/build-image.sh")?;
        if !out.status.success() {
            bail!(
                "deploy/swarm/build-image.sh failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(Image(tag))
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", "-f", &self.0]).output();
    }
}

/// Everything a failing deploy should show: task states with their errors, and each host's
/// berth log tail.
fn diagnose(tb: &Testbed) -> String {
    let mut s = String::new();
    if let Some(first) = tb.hosts.first() {
        s += &first
            .docker(&["service", "ps", "--no-trunc", &format!("{STACK}_node")])
            .unwrap_or_else(|e| format!("{e:#}"));
    }
    for h in &tb.hosts {
        // The newest task that ended says why; else the one running.
        let ended = h
            .docker(&[
                "ps",
                "-aq",
                "--filter",
                &node_filter(),
                "--filter",
                "status=exited",
            ])
            .unwrap_or_default();
        let any = h
            .docker(&["ps", "-aq", "--filter", &node_filter()])
            .unwrap_or_default();
        if let Some(id) = ended
            .split_whitespace()
            .chain(any.split_whitespace())
            .next()
        {
            let out = h.docker_cmd(&["logs", "--tail", "20", id]).output();
            if let Ok(out) = out {
                s += &format!(
                    "\n--- host {} berth log:\n{}{}",
                    h.index,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
    s
}

fn node_filter() -> String {
    format!("label=com.docker.swarm.service.name={STACK}_node")
}

fn nft_has_table(out: &std::process::Output) -> bool {
    out.status.success()
}

fn write_inputs(dir: &Path, table: &str) -> Result<(PathBuf, PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let ed = dir.join("ssh_host_ed25519_key");
    let rsa = dir.join("ssh_host_rsa_key");
    for (path, kind) in [(&ed, "ed25519"), (&rsa, "rsa")] {
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", kind, "-N", "", "-f"])
            .arg(path)
            .output()
            .context("cannot run ssh-keygen (apt-get install openssh-client)")?;
        if !out.status.success() {
            bail!(
                "ssh-keygen: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    // The shipped config plus what keeps the test inside its own namespaces: a table name of
    // its own (so "unaffected" can be checked anywhere) and an upstream on the fabric.
    let shipped = std::fs::read_to_string(repo().join("deploy/swarm/berth.toml"))?;
    let config = dir.join("berth.toml");
    std::fs::write(
        &config,
        format!(
            "{shipped}\n[netfilter]\ntable = \"{table}\"\n\n[dns]\nupstreams = [\"{FABRIC_ADDR}:53\"]\n"
        ),
    )?;
    Ok((config, ed, rsa))
}

fn deploy(manager: &Host, image: &str, config: &Path, ed: &Path, rsa: &Path) -> Result<()> {
    let out = manager
        .docker_cmd(&[
            "stack",
            "deploy",
            "--compose-file",
            &repo().join("deploy/swarm/stack.yml").to_string_lossy(),
            STACK,
        ])
        .env("BERTH_IMAGE", image)
        .env("BERTH_CONFIG", config)
        .env("BERTH_HOST_KEY", ed)
        .env("BERTH_HOST_KEY_RSA", rsa)
        .env_remove("BERTH_FRONTS")
        .output()
        .context("cannot run docker stack deploy")?;
    if !out.status.success() {
        bail!(
            "docker stack deploy failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[test]
fn stack_runs_a_node_task_per_host_that_programs_only_its_own_host() -> Result<()> {
    let image = Image::build()?;
    let mut tb = Testbed::start(HOSTS)?;
    tb.form_swarm()?;
    let ids = tb.node_ids()?;
    assert_eq!(ids.len(), HOSTS);
    tb.load_image(&image.0)?;
    for h in &tb.hosts {
        h.docker(&["image", "inspect", &image.0])
            .with_context(|| format!("image on host {}", h.index))?;
    }

    let table = format!("bsw{}", std::process::id());
    let (config, ed, rsa) = write_inputs(&tb.scratch(), &table)?;
    let manager = &tb.hosts[0];
    let t = Instant::now();
    deploy(manager, &image.0, &config, &ed, &rsa)?;

    // A running task of the global service on every node, each on its own engine.
    let running = wait_for(
        DEPLOY_TIMEOUT,
        "a running berth node task on every host",
        || {
            let mut n = 0;
            for (h, id) in tb.hosts.iter().zip(&ids) {
                let tasks = manager.docker(&[
                    "node",
                    "ps",
                    id,
                    "--filter",
                    "desired-state=running",
                    "--format",
                    "{{.Name}} {{.CurrentState}}",
                ])?;
                let on_node = tasks
                    .lines()
                    .any(|l| l.starts_with(&format!("{STACK}_node.")) && l.contains("Running"));
                let local = h.docker(&["ps", "-q", "--filter", &node_filter()])?;
                if on_node && local.split_whitespace().count() == 1 {
                    n += 1;
                }
            }
            Ok(n == HOSTS)
        },
    );
    if let Err(e) = running {
        bail!("{e:#}\n{}", diagnose(&tb));
    }

    // Each task programmed its host's namespace.
    let programmed = wait_for(
        DEPLOY_TIMEOUT,
        "berth's table in every host namespace",
        || {
            for h in &tb.hosts {
                if !nft_has_table(&h.in_netns(&["nft", "list", "table", "inet", &table])?) {
                    return Ok(false);
                }
            }
            Ok(true)
        },
    );
    if let Err(e) = programmed {
        bail!("{e:#}\n{}", diagnose(&tb));
    }
    let deployed = t.elapsed();
    for h in &tb.hosts {
        let rules = h.in_netns(&["nft", "list", "table", "inet", &table])?;
        let text = String::from_utf8_lossy(&rules.stdout);
        assert!(
            text.contains("chain tenant_forward") && text.contains("set deny4"),
            "host {}: not berth's ruleset:\n{text}",
            h.index
        );
    }
    // Each task drove its own host's engine through the bound socket: the tenant network
    // exists there, with its bridge in that host's namespace.
    for h in &tb.hosts {
        let net = h.docker(&[
            "network",
            "inspect",
            "berth-tenants",
            "--format",
            "{{index .Options \"com.docker.network.bridge.name\"}}",
        ])?;
        assert_eq!(net.trim(), "berth0", "host {}", h.index);
        let link = h.in_netns(&["ip", "link", "show", "berth0"])?;
        assert!(link.status.success(), "host {}: no berth0", h.index);
    }
    let root = Command::new("nft")
        .args(["list", "table", "inet", &table])
        .output()?;
    assert!(
        !nft_has_table(&root),
        "the machine's root namespace got berth's table {table}"
    );
    let fabric = nsenter(&tb.fabric, &["nft", "list", "table", "inet", &table])?;
    assert!(
        !nft_has_table(&fabric),
        "the fabric namespace got berth's table {table}"
    );

    // Each host's gateway answers on that host's address, from the fabric and from another
    // host (the path a front's hop will take).
    for h in &tb.hosts {
        let addr = SocketAddr::new(h.addr.into(), 2222);
        let banner = banner_from(&tb.fabric, addr, DEPLOY_TIMEOUT)?;
        assert!(
            banner.starts_with("SSH-2.0-berth"),
            "host {}: banner {banner:?}\n{}",
            h.index,
            diagnose(&tb)
        );
    }
    let other = SocketAddr::new(tb.hosts[0].addr.into(), 2222);
    let banner = banner_from(&tb.hosts[1].netns, other, DEPLOY_TIMEOUT)?;
    assert!(
        banner.starts_with("SSH-2.0-berth"),
        "host 1 → host 0: {banner:?}"
    );

    // The front service is declared, bound to labelled nodes, and runs nothing yet.
    let front = manager.docker(&[
        "service",
        "inspect",
        &format!("{STACK}_front"),
        "--format",
        "{{.Spec.Mode.Replicated.Replicas}} {{.Spec.TaskTemplate.Placement.Constraints}}",
    ])?;
    assert_eq!(
        front.trim(),
        "0 [node.labels.berth.front == true]",
        "front service"
    );

    // Dropping the testbed removes all of it, including the daemons' cgroups (which exist
    // now: containers ran under each `--cgroup-parent`).
    let footprint = Footprint::of(&tb);
    assert_eq!(footprint.pids.len(), HOSTS);
    for h in &tb.hosts {
        assert!(
            !cgroups_of(&h.netns).is_empty(),
            "no cgroup for {}",
            h.netns
        );
    }
    let timings = tb.timings.clone();
    drop(tb);
    footprint.assert_gone();

    eprintln!(
        "swarm testbed timings: network {:?}, {HOSTS} daemons {:?}, swarm {:?}, image load {:?}, \
         deploy until every host is programmed {:?}",
        timings.network, timings.daemons, timings.swarm, timings.image_load, deployed
    );
    Ok(())
}

/// What a testbed owns outside itself, to check it is gone after Drop.
struct Footprint {
    netns: Vec<String>,
    pids: Vec<u32>,
    dirs: Vec<PathBuf>,
}

fn cgroups_of(name: &str) -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Ok(hier) = std::fs::read_dir("/sys/fs/cgroup") {
        for h in hier.flatten() {
            let d = h.path().join(name);
            if d.is_dir() {
                v.push(d);
            }
        }
    }
    v
}

impl Footprint {
    fn of(tb: &Testbed) -> Footprint {
        let mut netns: Vec<String> = tb.hosts.iter().map(|h| h.netns.clone()).collect();
        netns.push(tb.fabric.clone());
        Footprint {
            netns,
            pids: tb.hosts.iter().filter_map(Host::dockerd_pid).collect(),
            dirs: tb.dirs().iter().map(|d| d.to_path_buf()).collect(),
        }
    }

    fn assert_gone(&self) {
        for n in &self.netns {
            assert!(
                !Path::new("/run/netns").join(n).exists(),
                "namespace {n} left behind"
            );
            assert_eq!(cgroups_of(n), Vec::<PathBuf>::new(), "cgroups left behind");
        }
        for pid in &self.pids {
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "dockerd {pid} still runs"
            );
        }
        for d in &self.dirs {
            assert!(!d.exists(), "{} left behind", d.display());
        }
    }
}

/// A testbed dropped early (swarm formed, nothing deployed) leaves nothing behind either.
#[test]
fn testbed_dropped_before_any_deploy_leaves_nothing_behind() -> Result<()> {
    let mut tb = Testbed::start(2)?;
    tb.form_swarm()?;
    let footprint = Footprint::of(&tb);
    assert_eq!(footprint.pids.len(), 2);
    for d in &footprint.dirs {
        assert!(d.is_dir(), "{} exists while the testbed runs", d.display());
    }
    drop(tb);
    footprint.assert_gone();
    Ok(())
}

/// The cluster stack (`deploy/swarm/deploy.sh`): one service per labelled node with its own
/// identity, all on one PostgreSQL in the fabric. A login through host 0's front reaches a
/// server that lives on host 1's own dockerd (the hop across engines); host 1's node gone, the
/// same login gets one clear line.
#[test]
fn cluster_stack_relays_a_login_to_a_server_on_another_hosts_engine() -> Result<()> {
    let started = Instant::now();
    let image = Image::build()?;
    let tenant_image =
        std::env::var("BERTH_TEST_IMAGE").unwrap_or_else(|_| "berth/tenant:bookworm".into());
    let mut tb = Testbed::start(HOSTS)?;
    tb.form_swarm()?;
    let ids = tb.node_ids()?;
    tb.load_images(&[&image.0, &tenant_image])?;
    let t = Instant::now();
    let url = tb.start_postgres()?;
    let postgres_up = t.elapsed();

    // The operator's labels: name and hop address per node; no front on host 2.
    let manager = &tb.hosts[0];
    for (h, id) in tb.hosts.iter().zip(&ids) {
        let mut args = vec![
            "node".to_string(),
            "update".into(),
            "--label-add".into(),
            format!("berth.node=n{}", h.index),
            "--label-add".into(),
            format!("berth.advertise={}:2200", h.addr),
        ];
        if h.index == 2 {
            args.extend(["--label-add".into(), "berth.front=false".into()]);
        }
        args.push(id.clone());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        manager.docker(&args)?;
    }

    let table = format!("bsc{}", std::process::id());
    let dir = tb.scratch();
    let (config, ed, rsa) = write_inputs(&dir, &table)?;
    // The shared config names the cluster's database (top level, so before any table) and the
    // tenant image loaded on the hosts.
    // The database URL travels as a swarm secret (BERTH_DATABASE_URL_FILE), not in the config.
    let text = std::fs::read_to_string(&config)?;
    std::fs::write(
        &config,
        format!("{text}\n[tenants]\nimage = \"{tenant_image}\"\n"),
    )?;
    let url_file = dir.join("database_url");
    std::fs::write(&url_file, format!("{url}\n"))?;
    let t = Instant::now();
    let out = Command::new(repo().join("deploy/swarm/deploy.sh"))
        .args(["--stack", STACK])
        .env(
            "DOCKER_HOST",
            format!("unix://{}", manager.socket.display()),
        )
        .env_remove("DOCKER_CONTEXT")
        .env("BERTH_IMAGE", &image.0)
        .env("BERTH_CONFIG", &config)
        .env("BERTH_HOST_KEY", &ed)
        .env("BERTH_HOST_KEY_RSA", &rsa)
        .env("BERTH_DATABASE_URL_FILE", &url_file)
        .output()
        .context("cannot run deploy/swarm/deploy.sh")?;
    if !out.status.success() {
        bail!(
            "deploy.sh failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let services = manager.docker(&["service", "ls", "--format", "{{.Name}}"])?;
    let mut services: Vec<&str> = services.lines().collect();
    services.sort();
    assert_eq!(
        services,
        ["berth_node-n0", "berth_node-n1", "berth_node-n2"],
        "one service per labelled node"
    );

    // Every node registered and ready, seen from host 0's task.
    let task = |h: &Host| -> Result<String> {
        let filter = format!(
            "label=com.docker.swarm.service.name={STACK}_node-n{}",
            h.index
        );
        let ids = h.docker(&["ps", "-q", "--filter", &filter])?;
        ids.split_whitespace()
            .next()
            .map(str::to_string)
            .with_context(|| format!("no running berth task on host {}", h.index))
    };
    let cli = |h: &Host, args: &[&str]| -> Result<String> {
        let id = task(h)?;
        let mut v = vec!["exec", &id, "berth", "--config", "/etc/berth/berth.toml"];
        v.extend_from_slice(args);
        h.docker(&v)
    };
    let ready = wait_for(DEPLOY_TIMEOUT, "three ready nodes in the store", || {
        let list: serde_json::Value =
            serde_json::from_str(&cli(manager, &["node", "list", "--json"])?)?;
        let ready = list
            .as_array()
            .map(|a| a.iter().filter(|n| n["state"] == "ready").count())
            .unwrap_or(0);
        Ok(ready == HOSTS)
    });
    if let Err(e) = ready {
        bail!("{e:#}\n{}", cluster_logs(&tb));
    }
    let list: serde_json::Value =
        serde_json::from_str(&cli(manager, &["node", "list", "--json"])?)?;
    for h in &tb.hosts {
        let row = list
            .as_array()
            .and_then(|a| a.iter().find(|n| n["name"] == format!("n{}", h.index)))
            .with_context(|| format!("n{} listed: {list}", h.index))?;
        assert_eq!(row["advertise"], format!("{}:2200", h.addr), "{list}");
    }
    // Fronts where the labels say: n0 and n1 (each registers when its front starts, after its
    // node), and their listeners up; never n2.
    wait_for(DEPLOY_TIMEOUT, "fronts n0 and n1 registered", || {
        let fronts = cli(manager, &["node", "fronts"])?;
        Ok(fronts.contains("n0") && fronts.contains("n1"))
    })?;
    for h in &tb.hosts[..2] {
        let addr = SocketAddr::new(h.addr.into(), 2222);
        let banner = banner_from(&tb.fabric, addr, DEPLOY_TIMEOUT)?;
        assert!(
            banner.starts_with("SSH-2.0-berth"),
            "host {}: {banner:?}",
            h.index
        );
    }
    let fronts = cli(manager, &["node", "fronts"])?;
    assert!(!fronts.contains("n2"), "{fronts}");
    let deployed = t.elapsed();

    // An account with a key (from host 0), a server created on host 1 by host 1's node.
    let key = dir.join("id_ed25519");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()?;
    anyhow::ensure!(st.success(), "ssh-keygen");
    let public = std::fs::read_to_string(key.with_extension("pub"))?;
    cli(manager, &["account", "add", "alice", "--no-password"])?;
    cli(manager, &["account", "key", "add", "alice", public.trim()])?;
    let host1 = &tb.hosts[1];
    let t = Instant::now();
    let out = cli(
        host1,
        &["server", "create", "--owner", "alice", "--node", "n1"],
    )?;
    let user = out.lines().last().unwrap_or_default().trim().to_string();
    assert_eq!(user, "server1", "{out}");
    let created = t.elapsed();
    let show = cli(manager, &["server", "show", &user])?;
    assert!(show.contains("node:      n1"), "{show}");
    let containers = |h: &Host| -> Result<String> {
        Ok(h.docker(&[
            "ps",
            "-a",
            "--filter",
            "label=berth.server",
            "--format",
            "{{.Names}}",
        ])?
        .trim()
        .to_string())
    };
    assert_eq!(containers(host1)?, "berth-server-1");
    assert_eq!(containers(manager)?, "", "host 0's engine has no server");

    // From the fabric, through host 0's front, across the hop into host 1's container.
    let t = Instant::now();
    let out = fabric_ssh(
        &tb,
        &key,
        &user,
        manager,
        "echo hello-$BERTH_SERVER; hostname",
    )?;
    let login = t.elapsed();
    assert!(
        out.status.success(),
        "{}\n{}",
        out_text(&out),
        cluster_logs(&tb)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("hello-{user}\n{user}\n")
    );
    let front_log = task_log(manager)?;
    assert!(front_log.contains("relaying to node"), "{front_log}");
    let node_log = task_log(host1)?;
    assert!(node_log.contains("hop login"), "{node_log}");
    assert_eq!(containers(manager)?, "", "host 0's engine has no server");
    assert_eq!(containers(host1)?, "berth-server-1");

    // A tenant cannot reach any node's hop endpoint, its own host's included: each host's
    // netfilter drops tenant traffic to the host and to private ranges.
    let probe: String = tb
        .hosts
        .iter()
        .map(|h| {
            format!(
                "if timeout 5 bash -c 'exec 3<>/dev/tcp/{0}/2200' 2>/dev/null; \
                 then echo '{0} open'; else echo '{0} closed'; fi; ",
                h.addr
            )
        })
        .collect();
    // (Through host 1's own front: no hop login, which the count below expects.)
    let out = fabric_ssh(&tb, &key, &user, host1, &probe)?;
    assert!(out.status.success(), "{}", out_text(&out));
    let want: String = tb
        .hosts
        .iter()
        .map(|h| format!("{} closed\n", h.addr))
        .collect();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        want,
        "hop endpoints from a tenant"
    );

    // Host 1's own front serves its own server without a hop; host 2 (berth.front=false)
    // has no client listener at all.
    let out = fabric_ssh(&tb, &key, &user, host1, "hostname")?;
    assert!(out.status.success(), "{}", out_text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{user}\n"));
    let host1_log = task_log(host1)?;
    assert!(
        !host1_log.contains("relaying to node"),
        "host 1's front relayed: {host1_log}"
    );
    assert_eq!(
        host1_log.matches("hop login").count(),
        1,
        "only host 0's login came over the hop: {host1_log}"
    );
    let out = fabric_ssh(&tb, &key, &user, &tb.hosts[2], "true")?;
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("refused"),
        "host 2 runs no front: {}",
        out_text(&out)
    );

    // Host 1's node goes away: the next login through host 0 gets one clear line.
    manager.docker(&["service", "rm", &format!("{STACK}_node-n1")])?;
    wait_for(DEPLOY_TIMEOUT, "host 1's berth task gone", || {
        let filter = format!("label=com.docker.swarm.service.name={STACK}_node-n1");
        Ok(host1
            .docker(&["ps", "-q", "--filter", &filter])?
            .trim()
            .is_empty())
    })?;
    let t = Instant::now();
    let out = fabric_ssh(&tb, &key, &user, manager, "true")?;
    let refused = t.elapsed();
    assert!(!out.status.success(), "{}", out_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(&format!("{user}'s host n1 is unreachable; try again later")),
        "{}",
        out_text(&out)
    );
    assert!(refused < Duration::from_secs(20), "took {refused:?}");

    let footprint = Footprint::of(&tb);
    let pg = tb.postgres_pid().context("postgres pid")?;
    let timings = tb.timings.clone();
    drop(tb);
    footprint.assert_gone();
    assert!(
        !Path::new(&format!("/proc/{pg}")).exists(),
        "the fabric's postgres {pg} still runs"
    );
    eprintln!(
        "swarm cluster timings: image load {:?}, postgres {postgres_up:?}, deploy until 3 nodes \
         ready and 2 fronts listening {deployed:?}, server create on host 1 {created:?}, first login across the hop \
         {login:?}, unreachable answer {refused:?}, whole test {:?}",
        timings.image_load,
        started.elapsed()
    );
    Ok(())
}

/// `ssh -p 2222 USER@<host's address> -- CMD` from the fabric namespace (a client outside the
/// hosts), with the test's key.
fn fabric_ssh(
    tb: &Testbed,
    key: &Path,
    user: &str,
    host: &Host,
    cmd: &str,
) -> Result<std::process::Output> {
    Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", tb.fabric))
        .arg("ssh")
        .args(integration_tests::gateway::client_opts(key))
        .args(["-p", "2222"])
        .arg(format!("{user}@{}", host.addr))
        .arg("--")
        .arg(cmd)
        .stdin(std::process::Stdio::null())
        .output()
        .context("run ssh in the fabric")
}

fn out_text(o: &std::process::Output) -> String {
    format!(
        "status {:?}\nstdout {}\nstderr {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The log of host `h`'s cluster task (berth logs to stderr).
fn task_log(h: &Host) -> Result<String> {
    let filter = format!(
        "label=com.docker.swarm.service.name={STACK}_node-n{}",
        h.index
    );
    let ids = h.docker(&["ps", "-aq", "--filter", &filter])?;
    // The newest task that logged anything: one swarm just created for a restart has not.
    for id in ids.split_whitespace() {
        let out = h.docker_cmd(&["logs", id]).output()?;
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !log.trim().is_empty() {
            return Ok(log);
        }
    }
    bail!("no berth task on host {} has logged", h.index)
}

/// Task states and each host's berth log tail, for a failing cluster deploy.
fn cluster_logs(tb: &Testbed) -> String {
    let mut s = String::new();
    if let Some(first) = tb.hosts.first() {
        for h in &tb.hosts {
            s += &first
                .docker(&[
                    "service",
                    "ps",
                    "--no-trunc",
                    &format!("{STACK}_node-n{}", h.index),
                ])
                .unwrap_or_else(|e| format!("{e:#}"));
        }
    }
    for h in &tb.hosts {
        let log = task_log(h).unwrap_or_else(|e| format!("{e:#}"));
        let lines: Vec<&str> = log.lines().collect();
        s += &format!(
            "\n--- host {} berth log:\n{}",
            h.index,
            lines[lines.len().saturating_sub(20)..].join("\n")
        );
    }
    s
}

/// `deploy.sh` reads the node labels through the docker CLI; a stub CLI that answers `node ls`
/// and `node inspect` from a table shows what it generates and what it refuses, without a swarm.
#[test]
fn deploy_sh_pins_one_service_per_labelled_node_and_refuses_bad_labels() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let stub = dir.path().join("bin");
    std::fs::create_dir_all(&stub)?;
    let docker = stub.join("docker");
    // `node ls -q` lists the table's ids; `node inspect --format … ID` prints the table's row
    // ("ID berth.node berth.advertise berth.front", as the script's template does).
    std::fs::write(
        &docker,
        "#!/bin/sh\nfor a; do last=$a; done\ncase \"$1 $2\" in\n\
         'node ls') cut -d' ' -f1 \"$STUB_NODES\" ;;\n\
         'node inspect') grep \"^$last\\( \\|$\\)\" \"$STUB_NODES\" ;;\n\
         *) echo \"unexpected docker $*\" >&2; exit 99 ;;\nesac\n",
    )?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&docker, std::fs::Permissions::from_mode(0o755))?;
    for f in ["berth.toml", "ed", "rsa"] {
        std::fs::write(
            dir.path().join(f),
            "database_url = \"postgres://db/berth\"\n",
        )?;
    }
    let path = format!(
        "{}:{}",
        stub.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = |table: &str| -> Result<std::process::Output> {
        let nodes = dir.path().join("nodes");
        std::fs::write(&nodes, table)?;
        Command::new(repo().join("deploy/swarm/deploy.sh"))
            .arg("--print")
            .current_dir(dir.path())
            .env("PATH", &path)
            .env("STUB_NODES", &nodes)
            .env("BERTH_CONFIG", "berth.toml")
            .env("BERTH_HOST_KEY", "ed")
            .env("BERTH_HOST_KEY_RSA", "rsa")
            .env("BERTH_IMAGE", "berth/berth:t")
            .output()
            .context("run deploy.sh")
    };

    let out = run("id0 n0 10.0.0.10:2200\nid1 n1 10.0.0.11:2200 false\nid2\n")?;
    assert!(out.status.success(), "{}", out_text(&out));
    let yml = String::from_utf8_lossy(&out.stdout);
    let service = |name: &str| -> String {
        let start = yml.find(&format!("  node-{name}:\n")).unwrap_or(yml.len());
        let rest = &yml[start..];
        let end = rest[1..]
            .find("\n  node-")
            .or_else(|| rest.find("\nnetworks:"))
            .map_or(rest.len(), |e| e + 1);
        rest[..end].to_string()
    };
    let n0 = service("n0");
    assert!(n0.contains("\"node.id == id0\""), "{yml}");
    assert!(n0.contains("BERTH_CLUSTER_NODE: \"n0\""), "{yml}");
    assert!(
        n0.contains("BERTH_CLUSTER_ADVERTISE: \"10.0.0.10:2200\""),
        "{yml}"
    );
    assert!(
        n0.contains("\"run\", \"netfilter\", \"dns\", \"node\", \"front\"]"),
        "{yml}"
    );
    let n1 = service("n1");
    assert!(n1.contains("\"node.id == id1\""), "{yml}");
    assert!(
        n1.contains("\"run\", \"netfilter\", \"dns\", \"node\"]"),
        "berth.front=false runs no front: {yml}"
    );
    assert!(
        !yml.contains("id2"),
        "an unlabelled node runs nothing: {yml}"
    );
    let config = dir.path().join("berth.toml");
    assert!(
        yml.contains(&format!("file: \"{}\"", config.display())),
        "relative inputs become absolute: {yml}"
    );

    for (table, want) in [
        ("id0 N0 10.0.0.10:2200\n", "not a valid node name"),
        ("id0 n0 somewhere\n", "ADDRESS:PORT"),
        ("id0 n0\n", "ADDRESS:PORT"),
        (
            "id0 n0 10.0.0.10:2200\nid1 n0 10.0.0.11:2200\n",
            "berth.node=n0 is on both id1 and id0",
        ),
        ("id0\nid1\n", "no swarm node carries a berth.node label"),
    ] {
        let out = run(table)?;
        assert!(!out.status.success(), "{table:?}: {}", out_text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(want),
            "{table:?}: {}",
            out_text(&out)
        );
        assert!(out.stdout.is_empty(), "{table:?}: printed a stack");
    }

    // The database URL as a secret: the file goes into a swarm secret and each task reads it
    // through BERTH_DATABASE_URL_FILE; a config that also sets database_url is refused.
    let table = "id0 n0 10.0.0.10:2200\n";
    std::fs::write(dir.path().join("nodb.toml"), "[cluster]\n")?;
    std::fs::write(dir.path().join("dburl"), "postgres://berth:pw@db/berth\n")?;
    let with_file = |config: &str| -> Result<std::process::Output> {
        let nodes = dir.path().join("nodes");
        std::fs::write(&nodes, table)?;
        Command::new(repo().join("deploy/swarm/deploy.sh"))
            .arg("--print")
            .current_dir(dir.path())
            .env("PATH", &path)
            .env("STUB_NODES", &nodes)
            .env("BERTH_CONFIG", config)
            .env("BERTH_HOST_KEY", "ed")
            .env("BERTH_HOST_KEY_RSA", "rsa")
            .env("BERTH_DATABASE_URL_FILE", "dburl")
            .env("BERTH_IMAGE", "berth/berth:t")
            .output()
            .context("run deploy.sh")
    };
    let out = with_file("nodb.toml")?;
    assert!(out.status.success(), "{}", out_text(&out));
    let yml = String::from_utf8_lossy(&out.stdout);
    assert!(
        yml.contains("BERTH_DATABASE_URL_FILE: \"/run/secrets/berth_database_url\""),
        "{yml}"
    );
    assert!(
        yml.contains("{source: berth_database_url, target: berth_database_url, mode: 0400}"),
        "{yml}"
    );
    assert!(
        yml.contains(&format!(
            "berth_database_url:\n    file: \"{}\"",
            dir.path().join("dburl").display()
        )),
        "{yml}"
    );
    assert!(
        !yml.contains("pw@db"),
        "the password stays out of the stack file: {yml}"
    );
    let out = with_file("berth.toml")?;
    assert!(!out.status.success(), "{}", out_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("keep the URL in one place"),
        "{}",
        out_text(&out)
    );
    Ok(())
}
