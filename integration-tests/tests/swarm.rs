//! berth's own daemons on a Docker Swarm (`deploy/swarm/`), on the three-host testbed of
//! `integration_tests::swarm`: the swarm forms, the offline-built daemon image reaches every
//! engine, `docker stack deploy` of the shipped stack file runs one node task per host, and each
//! task programs its own host's namespace (nftables table, SSH gateway on the host's address)
//! while the machine's root namespace and the fabric stay untouched.
//!
//! Needs root, dockerd, nftables and the tenant base image (`scripts/test` provides all).

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
