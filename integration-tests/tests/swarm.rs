//! berth's own daemons on a Docker Swarm (`deploy/swarm/`), on the three-host testbed of
//! `integration_tests::swarm`: the swarm forms with a host name per host, the offline-built
//! daemon image reaches every engine, and `docker stack deploy` of the shipped stack file runs
//! the cluster on one PostgreSQL in the fabric — one berth task per host from two global
//! services, each node named after its host and reachable at its engine's swarm address, each
//! programming only its own host's namespace. A login through host 0's front reaches a server
//! on host 1's engine; the PostgreSQL-down drill and a host leaving follow.
//!
//! Needs root, dockerd, nftables, the tenant base image and PostgreSQL 15's binaries
//! (`scripts/test` provides all).

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
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

/// Each testbed host has a name of its own, and a testbed dropped early (swarm formed, nothing
/// deployed) leaves nothing behind either.
#[test]
fn testbed_hosts_have_their_own_names_and_an_early_drop_leaves_nothing_behind() -> Result<()> {
    let mut tb = Testbed::start(2)?;
    tb.form_swarm()?;
    // Each host has its own name, and the swarm knows its nodes by them.
    let names = tb.hosts[0].docker(&["node", "ls", "--format", "{{.Hostname}}"])?;
    let mut names: Vec<&str> = names.lines().collect();
    names.sort();
    assert_eq!(names, ["n0", "n1"]);
    for h in &tb.hosts {
        assert_eq!(
            h.docker(&["info", "--format", "{{.Name}}"])?.trim(),
            h.hostname
        );
    }
    let footprint = Footprint::of(&tb);
    assert_eq!(footprint.pids.len(), 2);
    for d in &footprint.dirs {
        assert!(d.is_dir(), "{} exists while the testbed runs", d.display());
    }
    drop(tb);
    footprint.assert_gone();
    Ok(())
}

/// The cluster stack (`deploy/swarm/stack.yml`): two global services, one berth task per host,
/// each taking its node name from its host's name and its hop address from its engine's swarm
/// address, all on one PostgreSQL in the fabric. Each task programs only its own host; a login
/// through host 0's front reaches a server on host 1's own dockerd (the hop across engines).
/// Then the PostgreSQL-down drill, and host 1 going away.
#[test]
fn cluster_stack_relays_a_login_to_a_server_on_another_hosts_engine() -> Result<()> {
    let started = Instant::now();
    let image = Image::build()?;
    let tenant_image =
        std::env::var("BERTH_TEST_IMAGE").unwrap_or_else(|_| "berth/tenant:bookworm".into());
    let mut tb = Testbed::start(HOSTS)?;
    tb.form_swarm()?;
    let ids = tb.node_ids()?;
    assert_eq!(ids.len(), HOSTS);
    tb.load_images(&[&image.0, &tenant_image])?;
    for h in &tb.hosts {
        h.docker(&["image", "inspect", &image.0])
            .with_context(|| format!("image on host {}", h.index))?;
    }
    let t = Instant::now();
    let url = tb.start_postgres()?;
    let postgres_up = t.elapsed();

    // The operator's labels: fronts on hosts 0 and 1, none on host 2. Nothing names the nodes
    // or their hop addresses: the swarm knows both.
    let manager = &tb.hosts[0];
    for id in &ids[..2] {
        manager.docker(&["node", "update", "--label-add", "berth.front=true", id])?;
    }

    let table = format!("bsc{}", std::process::id());
    let dir = tb.scratch();
    let (config, ed, rsa) = write_inputs(&dir, &table)?;
    // The shipped config plus the tenant image loaded on the hosts; the database URL travels
    // as a swarm secret, not in the config.
    let text = std::fs::read_to_string(&config)?;
    std::fs::write(
        &config,
        format!("{text}\n[tenants]\nimage = \"{tenant_image}\"\n"),
    )?;
    let url_file = dir.join("database_url");
    std::fs::write(&url_file, format!("{url}\n"))?;
    let t = Instant::now();
    let out = manager
        .docker_cmd(&[
            "stack",
            "deploy",
            "--compose-file",
            &repo().join("deploy/swarm/stack.yml").to_string_lossy(),
            STACK,
        ])
        .env("BERTH_IMAGE", &image.0)
        .env("BERTH_CONFIG", &config)
        .env("BERTH_HOST_KEY", &ed)
        .env("BERTH_HOST_KEY_RSA", &rsa)
        .env("BERTH_DATABASE_URL_FILE", &url_file)
        .output()
        .context("cannot run docker stack deploy")?;
    if !out.status.success() {
        bail!("docker stack deploy failed: {}", out_text(&out));
    }
    let services = manager.docker(&["service", "ls", "--format", "{{.Name}} {{.Mode}}"])?;
    let mut services: Vec<&str> = services.lines().collect();
    services.sort();
    assert_eq!(
        services,
        ["berth_front global", "berth_node global"],
        "two global services"
    );
    for (service, want) in [
        ("front", "[node.labels.berth.front == true]"),
        ("node", "[node.labels.berth.front != true]"),
    ] {
        let c = manager.docker(&[
            "service",
            "inspect",
            &format!("{STACK}_{service}"),
            "--format",
            "{{.Spec.TaskTemplate.Placement.Constraints}}",
        ])?;
        assert_eq!(c.trim(), want, "{service} constraints");
    }

    // Exactly one running berth task per host, on that host's own engine, from the service
    // its label selects.
    let running = wait_for(DEPLOY_TIMEOUT, "one running berth task per host", || {
        for h in &tb.hosts {
            let want = service_of(h);
            let mine = h.docker(&["ps", "-q", "--filter", &service_filter(want)])?;
            let other = if want == "front" { "node" } else { "front" };
            let theirs = h.docker(&["ps", "-q", "--filter", &service_filter(other)])?;
            if mine.split_whitespace().count() != 1 || !theirs.trim().is_empty() {
                return Ok(false);
            }
        }
        Ok(true)
    });
    if let Err(e) = running {
        bail!("{e:#}\n{}", cluster_logs(&tb));
    }

    // Every node registered under its host's name, at its engine's swarm address, and ready.
    let cli = |h: &Host, args: &[&str]| -> Result<String> {
        let id = task(h)?;
        let mut v = vec!["exec", &id, "berth", "--config", "/etc/berth/berth.toml"];
        v.extend_from_slice(args);
        h.docker(&v)
    };
    let ready = wait_for(DEPLOY_TIMEOUT, "three ready nodes in the store", || {
        Ok(ready_nodes(&cli(manager, &["node", "list", "--json"])?)? == HOSTS)
    });
    if let Err(e) = ready {
        bail!("{e:#}\n{}", cluster_logs(&tb));
    }
    let list: serde_json::Value =
        serde_json::from_str(&cli(manager, &["node", "list", "--json"])?)?;
    for h in &tb.hosts {
        let row = list
            .as_array()
            .and_then(|a| a.iter().find(|n| n["name"] == h.hostname.as_str()))
            .with_context(|| format!("{} listed: {list}", h.hostname))?;
        assert_eq!(row["advertise"], format!("{}:2200", h.addr), "{list}");
        // The task says which address it chose and why.
        let log = task_log(h)?;
        assert!(
            log.contains("hop endpoint address")
                && log.contains(&format!("{}:2200", h.addr))
                && log.contains("swarm address of the engine"),
            "host {}: {log}",
            h.index
        );
    }
    // `config check` in a task shows the same choice.
    let check = cli(&tb.hosts[2], &["config", "check"])?;
    assert!(
        check.contains(&format!(
            "cluster: node n2, hop endpoint {}:2200 (from the swarm address of the engine",
            tb.hosts[2].addr
        )),
        "{check}"
    );
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

    // Each task programmed its own host's namespace and drove its own host's engine: berth's
    // table, and the tenant network with its bridge in that host's namespace. The machine's
    // root namespace and the fabric are untouched.
    for h in &tb.hosts {
        let rules = h.in_netns(&["nft", "list", "table", "inet", &table])?;
        let text = String::from_utf8_lossy(&rules.stdout);
        assert!(
            text.contains("chain tenant_forward") && text.contains("set deny4"),
            "host {}: not berth's ruleset:\n{text}",
            h.index
        );
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

    // Host 1's own front serves its own server without a hop; host 2 (no berth.front label)
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

    let drill = postgres_down_drill(&tb, &key, &user, &cli)?;

    // Host 1 leaves service (drained): its berth task stops, and the next login through host
    // 0 gets one clear line.
    manager.docker(&["node", "update", "--availability", "drain", &ids[1]])?;
    wait_for(DEPLOY_TIMEOUT, "host 1's berth task gone", || {
        Ok(host1
            .docker(&["ps", "-q", "--filter", &service_filter("front")])?
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

    // Dropping the testbed removes all of it, including the daemons' cgroups (which exist
    // now: containers ran under each `--cgroup-parent`) and the fabric's postgres.
    let footprint = Footprint::of(&tb);
    assert_eq!(footprint.pids.len(), HOSTS);
    for h in &tb.hosts {
        assert!(
            !cgroups_of(&h.netns).is_empty(),
            "no cgroup for {}",
            h.netns
        );
    }
    let pg = tb.postgres_pid().context("postgres pid")?;
    let timings = tb.timings.clone();
    drop(tb);
    footprint.assert_gone();
    assert!(
        !Path::new(&format!("/proc/{pg}")).exists(),
        "the fabric's postgres {pg} still runs"
    );
    eprintln!(
        "swarm cluster timings: network {:?}, {HOSTS} daemons {:?}, swarm {:?}, image load {:?}, \
         postgres {postgres_up:?}, deploy until 3 nodes ready and 2 fronts listening \
         {deployed:?}, server create on host 1 {created:?}, first login across the hop \
         {login:?}, {drill}, unreachable answer {refused:?}, whole test {:?}",
        timings.network,
        timings.daemons,
        timings.swarm,
        timings.image_load,
        started.elapsed()
    );
    Ok(())
}

/// How many rows of `berth node list --json` are ready.
fn ready_nodes(json: &str) -> Result<usize> {
    let list: serde_json::Value = serde_json::from_str(json)?;
    Ok(list
        .as_array()
        .map(|a| a.iter().filter(|n| n["state"] == "ready").count())
        .unwrap_or(0))
}

/// The PostgreSQL-down drill (docs/MULTIHOST.md, "Failure behaviour"): the fabric refuses the
/// database port (a reset for every packet, as a stopped server answers) while the PostgreSQL
/// process keeps running. A session open through host 0's front to server1 on host 1 keeps
/// working; new logins fail with the clear line within a bounded time; every berth task and
/// the tenant keep running; once the port is open again a new login works and every node is
/// ready. Returns its timings for the test's summary line.
fn postgres_down_drill(
    tb: &Testbed,
    key: &Path,
    user: &str,
    cli: &dyn Fn(&Host, &[&str]) -> Result<String>,
) -> Result<String> {
    let front = &tb.hosts[0];
    let tenant_host = &tb.hosts[1];
    let tasks: Vec<String> = tb.hosts.iter().map(task).collect::<Result<_>>()?;
    let tenant_started = |h: &Host| {
        h.docker(&[
            "inspect",
            "--format",
            "{{.State.Running}} {{.State.StartedAt}}",
            "berth-server-1",
        ])
    };
    let tenant_before = tenant_started(tenant_host)?;
    assert!(tenant_before.starts_with("true "), "{tenant_before}");

    let mut held = HeldSession::open(tb, key, user, front)
        .with_context(|| format!("before the outage\n{}", cluster_logs(tb)))?;
    let cut = DatabaseCut::new(tb)?;
    let t = Instant::now();
    let mut told = None;
    for attempt in 0..3 {
        let a = Instant::now();
        let out = fabric_ssh_cmd(tb, key, user, front, "INFO", "true")
            .output()
            .context("ssh")?;
        let took = a.elapsed();
        assert!(
            !out.status.success(),
            "attempt {attempt}: {}",
            out_text(&out)
        );
        assert!(
            took < Duration::from_secs(20),
            "attempt {attempt} took {took:?}: {}",
            out_text(&out)
        );
        if String::from_utf8_lossy(&out.stderr).contains("account database is unreachable") {
            told = Some((attempt, took));
            break;
        }
    }
    let Some((attempt, told_in)) = told else {
        bail!(
            "no login was told the database is unreachable\n{}",
            cluster_logs(tb)
        );
    };
    // The open session, relayed across the hop, still answers.
    let answer = held
        .round_trip("ping")
        .with_context(|| format!("during the outage\n{}", cluster_logs(tb)))?;
    assert_eq!(answer, "got ping", "the open session");
    // Nothing restarted: the same berth task on every host, the same tenant container.
    for (h, before) in tb.hosts.iter().zip(&tasks) {
        assert_eq!(&task(h)?, before, "host {}'s berth task restarted", h.index);
    }
    assert_eq!(tenant_started(tenant_host)?, tenant_before, "the tenant");
    let down = t.elapsed();

    drop(cut);
    let t = Instant::now();
    wait_for(
        Duration::from_secs(60),
        "a login after the database returned",
        || {
            let out = fabric_ssh(tb, key, user, front, "echo back")?;
            Ok(out.status.success() && String::from_utf8_lossy(&out.stdout) == "back\n")
        },
    )?;
    let resumed = t.elapsed();
    let answer = held
        .round_trip("pong")
        .with_context(|| format!("after the outage\n{}", cluster_logs(tb)))?;
    assert_eq!(answer, "got pong", "the open session");
    held.close();
    wait_for(Duration::from_secs(30), "three ready nodes again", || {
        Ok(ready_nodes(&cli(front, &["node", "list", "--json"])?)? == HOSTS)
    })?;
    Ok(format!(
        "database down: login {attempt} told why in {told_in:?} (drill {down:?}), first login \
         after it returned {resumed:?}"
    ))
}

/// The fabric refusing the database port for as long as this lives: an nftables table of the
/// test's own in the fabric namespace, answering every TCP packet to 5432 with a reset.
struct DatabaseCut {
    netns: String,
    table: String,
}

impl DatabaseCut {
    fn new(tb: &Testbed) -> Result<DatabaseCut> {
        let cut = DatabaseCut {
            netns: tb.fabric.clone(),
            table: format!("pgcut{}", std::process::id()),
        };
        let t = cut.table.as_str();
        for args in [
            &["nft", "add", "table", "inet", t][..],
            &[
                "nft",
                "add",
                "chain",
                "inet",
                t,
                "input",
                "{ type filter hook input priority -10; }",
            ],
            &[
                "nft", "add", "rule", "inet", t, "input", "tcp", "dport", "5432", "reject", "with",
                "tcp", "reset",
            ],
        ] {
            let out = nsenter(&cut.netns, args)?;
            if !out.status.success() {
                bail!("{} in {}: {}", args.join(" "), cut.netns, out_text(&out));
            }
        }
        Ok(cut)
    }
}

impl Drop for DatabaseCut {
    fn drop(&mut self) {
        let _ = nsenter(
            &self.netns,
            &["nft", "delete", "table", "inet", &self.table],
        );
    }
}

/// An interactive session through a front: each line written comes back as "got LINE".
struct HeldSession {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    lines: std::sync::mpsc::Receiver<String>,
    /// What ssh said on stderr, once it ended.
    errors: std::sync::Arc<std::sync::Mutex<String>>,
}

impl HeldSession {
    fn open(tb: &Testbed, key: &Path, user: &str, front: &Host) -> Result<HeldSession> {
        let mut child = fabric_ssh_cmd(
            tb,
            key,
            user,
            front,
            "ERROR",
            "echo open; while read line; do echo \"got $line\"; done",
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("ssh")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("ssh stdout")?;
        let mut stderr = child.stderr.take().context("ssh stderr")?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let errors = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = errors.clone();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
            if let Ok(mut e) = sink.lock() {
                *e = text;
            }
        });
        let mut held = HeldSession {
            child,
            stdin,
            lines,
            errors,
        };
        let first = held.next_line().context("opening the held session")?;
        assert_eq!(first, "open", "the session opens");
        Ok(held)
    }

    fn next_line(&mut self) -> Result<String> {
        self.lines
            .recv_timeout(Duration::from_secs(30))
            .map_err(|e| {
                std::thread::sleep(Duration::from_millis(200));
                let said = self.errors.lock().map(|e| e.clone()).unwrap_or_default();
                anyhow::anyhow!(
                    "no answer from the open session within 30 s ({e}); ssh said: {said}"
                )
            })
    }

    fn round_trip(&mut self, line: &str) -> Result<String> {
        let stdin = self.stdin.as_mut().context("session closed")?;
        writeln!(stdin, "{line}").context("write to the open session")?;
        stdin.flush()?;
        self.next_line()
    }

    fn close(mut self) {
        self.stdin.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for HeldSession {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Which service runs on host `h` in the test's labelling: a front on hosts 0 and 1.
fn service_of(h: &Host) -> &'static str {
    if h.index < 2 { "front" } else { "node" }
}

fn service_filter(service: &str) -> String {
    format!("label=com.docker.swarm.service.name={STACK}_{service}")
}

/// The running berth task (container id) on host `h`.
fn task(h: &Host) -> Result<String> {
    let ids = h.docker(&["ps", "-q", "--filter", &service_filter(service_of(h))])?;
    ids.split_whitespace()
        .next()
        .map(str::to_string)
        .with_context(|| format!("no running berth task on host {}", h.index))
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
    fabric_ssh_cmd(tb, key, user, host, "ERROR", cmd)
        .stdin(Stdio::null())
        .output()
        .context("run ssh in the fabric")
}

/// The same as a command, at OpenSSH log level `level` (INFO shows the server's banner; the
/// first value of an option wins, so it goes before the shared options).
fn fabric_ssh_cmd(
    tb: &Testbed,
    key: &Path,
    user: &str,
    host: &Host,
    level: &str,
    cmd: &str,
) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{}", tb.fabric))
        .arg("ssh")
        .arg("-o")
        .arg(format!("LogLevel={level}"))
        .args(integration_tests::gateway::client_opts(key))
        .args(["-p", "2222"])
        .arg(format!("{user}@{}", host.addr))
        .arg("--")
        .arg(cmd);
    c
}

fn out_text(o: &std::process::Output) -> String {
    format!(
        "status {:?}\nstdout {}\nstderr {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The log of host `h`'s berth task (berth logs to stderr).
fn task_log(h: &Host) -> Result<String> {
    let ids = h.docker(&["ps", "-aq", "--filter", &service_filter(service_of(h))])?;
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
        for service in ["node", "front"] {
            s += &first
                .docker(&["service", "ps", "--no-trunc", &format!("{STACK}_{service}")])
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
