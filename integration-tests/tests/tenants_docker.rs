//! Provisioning against the real Docker engine: container shape, lifecycle, data survival,
//! single-flight starts, reconcile, failure consistency and the address watch. Each test has
//! its own name prefix, network, bridge and subnet, removed on drop.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use integration_tests::tenants::{DbKind, TenantsEnv, docker, test_image};
use tenants::{
    Config, DesiredState, DindMode, DockerError, ProvisionError, Provisioner, ServerId, ServerSpec,
};

fn exec(container: &str, user: &str, script: &str) -> String {
    docker(&["exec", "-u", user, container, "sh", "-c", script]).unwrap()
}

fn inspect(container: &str, format: &str) -> String {
    docker(&["inspect", "-f", format, container]).unwrap()
}

async fn lifecycle(kind: DbKind) {
    let env = TenantsEnv::new("lifecycle", kind).await.unwrap();
    env.store.add_account("alice", None::<&str>).await.unwrap();
    let spec = ServerSpec {
        image: None,
        memory: Some(300 << 20),
        nano_cpus: Some(250_000_000),
        pids: Some(77),
        user: None,
        dind: None,
        init: None,
    };
    let server = env.prov.create_server("alice", spec).await.unwrap();
    let id = server.id;
    let name = env.world.container(id.get());

    // The container has the shape the brief asks for.
    assert_eq!(inspect(&name, "{{.State.Running}}"), "true");
    assert_eq!(inspect(&name, "{{.Config.Hostname}}"), id.login_name());
    let labels: HashMap<String, String> =
        serde_json::from_str(&inspect(&name, "{{json .Config.Labels}}")).unwrap();
    assert_eq!(labels["berth.server"], id.get().to_string());
    assert_eq!(labels["berth.owner"], "alice");
    assert_eq!(labels["berth.managed"], "true");
    assert_eq!(
        inspect(&name, "{{.HostConfig.Memory}}"),
        (300u64 << 20).to_string()
    );
    assert_eq!(inspect(&name, "{{.HostConfig.NanoCpus}}"), "250000000");
    assert_eq!(inspect(&name, "{{.HostConfig.PidsLimit}}"), "77");
    assert_eq!(inspect(&name, "{{.HostConfig.Init}}"), "true");
    assert_eq!(
        inspect(&name, "{{.HostConfig.RestartPolicy.Name}}"),
        "unless-stopped"
    );
    assert_eq!(
        inspect(&name, "{{json .HostConfig.Dns}}"),
        format!("[\"{}\"]", env.world.net.gateway)
    );
    let mounts = inspect(
        &name,
        "{{range .Mounts}}{{.Type}} {{if .Name}}{{.Name}}{{else}}{{.Source}}{{end}}:{{.Destination}} {{.RW}}\n{{end}}",
    );
    let mut mounts: Vec<&str> = mounts.lines().filter(|l| !l.is_empty()).collect();
    mounts.sort();
    let agent_dir = env.world.agent_dir().join(id.login_name());
    assert_eq!(
        mounts,
        vec![
            format!("bind {}:/dev/berth false", agent_dir.display()),
            format!("volume {}:/apps true", env.world.volume(id.get())),
        ],
        "the data volume read-write and the agent directory read-only, nothing else"
    );
    let ip = inspect(
        &name,
        &format!(
            "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
            env.world.net.name
        ),
    );
    let ip: std::net::Ipv4Addr = ip.parse().unwrap();
    assert!(
        env.world.net.subnet.contains(&ip),
        "{ip} not in {}",
        env.world.net.subnet
    );
    // Limits are really applied inside (cgroup v2 or v1).
    let mem = exec(
        &name,
        "root",
        "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes",
    );
    assert_eq!(mem, (300u64 << 20).to_string());
    // The tenant user can write its volume; the network settings tell the container who it is.
    exec(&name, "tenant", "echo keep-me > /apps/data.txt");
    assert_eq!(exec(&name, "tenant", "hostname"), id.login_name());
    // (resolv.conf shows Docker's embedded 127.0.0.11, which forwards to HostConfig.Dns from
    // inside the container's namespace; the Dns assertion above is what berth controls.)

    // ensure_running on a running server: no start, same container.
    let r1 = env.prov.ensure_running(id).await.unwrap();
    assert!(!r1.started_now);
    assert_eq!(r1.address, ip);

    // Stop: container exits, store remembers.
    env.prov.stop(id).await.unwrap();
    assert_eq!(inspect(&name, "{{.State.Running}}"), "false");
    assert_eq!(
        env.store.server(id).await.unwrap().unwrap().desired,
        DesiredState::Stopped
    );
    assert_eq!(env.prov.server_addresses().await.unwrap().get(&id), None);

    // Start on demand: one start, data intact, desired running again.
    let r2 = env.prov.ensure_running(id).await.unwrap();
    assert!(r2.started_now);
    assert_eq!(r2.container_id, r1.container_id);
    assert_eq!(exec(&name, "tenant", "cat /apps/data.txt"), "keep-me");
    assert_eq!(
        env.store.server(id).await.unwrap().unwrap().desired,
        DesiredState::Running
    );
    assert_eq!(
        env.prov.server_addresses().await.unwrap().get(&id),
        Some(&std::net::IpAddr::V4(r2.address))
    );

    // A paused container counts as running for Docker, not for a login: it is unpaused.
    docker(&["pause", &name]).unwrap();
    let rp = env.prov.ensure_running(id).await.unwrap();
    assert!(rp.started_now);
    assert_eq!(inspect(&name, "{{.State.Paused}}"), "false");

    // Restart keeps the container.
    let r3 = env.prov.restart(id).await.unwrap();
    assert_eq!(r3.container_id, r1.container_id);

    // rm keeps the volume (and the data in it); the server is gone for good.
    env.prov.remove(id, false).await.unwrap();
    assert!(docker(&["inspect", &name]).is_err());
    let vol = env.world.volume(id.get());
    docker(&["volume", "inspect", &vol]).unwrap();
    let data = docker(&[
        "run",
        "--rm",
        "-v",
        &format!("{vol}:/v"),
        &test_image(),
        "cat",
        "/v/data.txt",
    ])
    .unwrap();
    assert_eq!(data, "keep-me");
    assert!(matches!(
        env.prov.ensure_running(id).await,
        Err(ProvisionError::ServerDeleted(_))
    ));
    assert!(matches!(
        env.prov.remove(id, false).await,
        Err(ProvisionError::ServerDeleted(_))
    ));
    assert!(env.store.server_auth(id).await.unwrap().unwrap().deleted);

    // rm --purge on the deleted server removes the kept volume.
    env.prov.remove(id, true).await.unwrap();
    assert!(docker(&["volume", "inspect", &vol]).is_err());

    // Unknown servers are final errors, not retryable ones.
    let e = env
        .prov
        .ensure_running(ServerId::new(9999).unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(e, ProvisionError::UnknownServer(_)) && !e.is_retryable(),
        "{e}"
    );
}

#[tokio::test]
async fn lifecycle_sqlite() {
    lifecycle(DbKind::Sqlite).await;
}

#[tokio::test]
async fn lifecycle_postgres() {
    lifecycle(DbKind::Postgres).await;
}

/// Counts Docker `start` (and `create`) events for one container in a finished time window.
async fn count_events(
    prov: &Provisioner,
    container: &str,
    since: i64,
    until: i64,
) -> HashMap<String, usize> {
    let filters = HashMap::from([
        ("container".to_string(), vec![container.to_string()]),
        ("type".to_string(), vec!["container".to_string()]),
    ]);
    let opts = bollard::query_parameters::EventsOptions {
        since: Some(since.to_string()),
        until: Some(until.to_string()),
        filters: Some(filters),
    };
    let mut out = HashMap::new();
    let mut events = prov.docker().events(Some(opts));
    while let Some(ev) = events.next().await {
        let ev = ev.unwrap();
        *out.entry(ev.action.unwrap_or_default()).or_insert(0) += 1;
    }
    out
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[tokio::test]
async fn concurrent_ensure_running_starts_once() {
    let env = TenantsEnv::new("singleflight", DbKind::Sqlite)
        .await
        .unwrap();
    env.store.add_account("bob", None::<&str>).await.unwrap();
    let id = env
        .prov
        .create_server("bob", ServerSpec::default())
        .await
        .unwrap()
        .id;
    let name = env.world.container(id.get());

    for phase in ["stopped", "missing"] {
        match phase {
            "stopped" => env.prov.stop(id).await.unwrap(),
            _ => {
                docker(&["rm", "-f", &name]).unwrap();
            }
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let since = now();
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let p = env.prov.clone();
            tasks.push(tokio::spawn(async move { p.ensure_running(id).await }));
        }
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap().unwrap());
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let until = now() + 1;
        assert!(
            results.iter().all(|r| *r == results[0]),
            "{phase}: results differ: {results:?}"
        );
        assert!(results[0].started_now, "{phase}");
        let events = count_events(&env.prov, &name, since, until).await;
        assert_eq!(events.get("start").copied(), Some(1), "{phase}: {events:?}");
        let creates = events.get("create").copied().unwrap_or(0);
        assert_eq!(
            creates,
            usize::from(phase == "missing"),
            "{phase}: {events:?}"
        );
        assert_eq!(
            docker(&["ps", "-q", "--filter", &format!("name=^/{name}$")])
                .unwrap()
                .lines()
                .count(),
            1
        );
    }
}

#[tokio::test]
async fn reconcile_reports_and_recreates_with_volume() {
    let env = TenantsEnv::new("reconcile", DbKind::Sqlite).await.unwrap();
    env.store.add_account("carol", None::<&str>).await.unwrap();
    let a = env
        .prov
        .create_server("carol", ServerSpec::default())
        .await
        .unwrap()
        .id;
    let b = env
        .prov
        .create_server("carol", ServerSpec::default())
        .await
        .unwrap()
        .id;
    let name_a = env.world.container(a.get());
    exec(&name_a, "tenant", "echo precious > /apps/file");

    // Behind berth's back: A's container vanishes, a labelled stranger appears.
    docker(&["rm", "-f", &name_a]).unwrap();
    let stranger = env.world.container(4242);
    docker(&[
        "create",
        "--name",
        &stranger,
        "--label",
        "berth.managed=true",
        "--label",
        &format!("berth.instance={}", env.world.prefix),
        "--label",
        "berth.server=4242",
        &test_image(),
    ])
    .unwrap();

    let report = env.prov.reconcile().await.unwrap();
    assert_eq!(report.missing, vec![a]);
    assert_eq!(report.present, vec![b]);
    assert_eq!(report.unknown.len(), 1, "{report:?}");
    assert_eq!(report.unknown[0].name, stranger);
    assert_eq!(report.unknown[0].server, ServerId::new(4242));
    // Reported, never deleted.
    docker(&["inspect", &stranger]).unwrap();
    // Nothing was recreated by reconcile itself.
    assert!(docker(&["inspect", &name_a]).is_err());

    // On demand: recreated with the volume intact.
    let r = env.prov.ensure_running(a).await.unwrap();
    assert!(r.started_now);
    assert_eq!(exec(&name_a, "tenant", "cat /apps/file"), "precious");
    let report = env.prov.reconcile().await.unwrap();
    assert!(report.missing.is_empty());
    assert_eq!(report.present, vec![a, b]);

    // A deleted server's container that reappears is reported too.
    env.prov.remove(b, false).await.unwrap();
    let report = env.prov.reconcile().await.unwrap();
    assert_eq!(report.present, vec![a]);
    let audit = env.store.audit_events(20).await.unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.event.server == Some(a) && e.event.method.as_deref() == Some("recreate"))
    );
}

#[tokio::test]
async fn failed_creates_leave_store_and_docker_consistent() {
    let env = TenantsEnv::new("failcreate", DbKind::Sqlite).await.unwrap();
    env.store.add_account("dave", None::<&str>).await.unwrap();

    // Image missing: final error suggesting the build command, nothing registered.
    let spec = ServerSpec {
        image: Some("berth-test/does-not-exist:nope".into()),
        ..Default::default()
    };
    let e = env.prov.create_server("dave", spec).await.unwrap_err();
    assert!(matches!(e, ProvisionError::ImageMissing { .. }), "{e}");
    assert!(e.to_string().contains("berth image build"), "{e}");
    assert!(env.store.servers(true).await.unwrap().is_empty());

    // Unknown owner.
    let e = env
        .prov
        .create_server("nobody", ServerSpec::default())
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("account nobody does not exist"),
        "{e}"
    );

    // A DinD (privileged) server: this machine refuses privileged containers, so the start
    // fails after the row, volume and container were made — all three must be undone.
    let mut dind_cfg: Config = env.prov.config().clone();
    dind_cfg.dind = DindMode::Privileged;
    let dind = Provisioner::connect(env.prov.network(), &dind_cfg, env.store.clone())
        .await
        .unwrap();
    let first_free;
    match dind.create_server("dave", ServerSpec::default()).await {
        Err(e) => {
            assert!(!e.is_retryable(), "{e}");
            assert!(
                env.store.servers(true).await.unwrap().is_empty(),
                "row left behind after {e}"
            );
            let left = docker(&[
                "ps",
                "-aq",
                "--filter",
                &format!("label=berth.instance={}", env.world.prefix),
            ])
            .unwrap();
            assert!(left.is_empty(), "container left behind after {e}");
            let vols = docker(&[
                "volume",
                "ls",
                "-q",
                "--filter",
                &format!("name={}-", env.world.prefix),
            ])
            .unwrap();
            assert!(vols.is_empty(), "volume left behind after {e}: {vols}");
            first_free = 1;
        }
        // On hosts that allow privileged containers, the container really is privileged.
        Ok(s) => {
            assert_eq!(
                inspect(
                    &env.world.container(s.id.get()),
                    "{{.HostConfig.Privileged}}"
                ),
                "true"
            );
            first_free = s.id.get();
        }
    }
    // DinD through a named runtime this engine does not have: the container create itself
    // is refused (after the row and the volume were made) — both undone.
    let mut rt_cfg: Config = env.prov.config().clone();
    rt_cfg.dind = DindMode::Runtime;
    rt_cfg.runtime = Some("berth-no-such-runtime".into());
    let rt = Provisioner::connect(env.prov.network(), &rt_cfg, env.store.clone())
        .await
        .unwrap();
    let e = rt
        .create_server("dave", ServerSpec::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("runtime"), "{e}");
    assert!(env.store.servers(true).await.unwrap().len() <= usize::from(first_free > 1));
    let vols = docker(&[
        "volume",
        "ls",
        "-q",
        "--filter",
        &format!("name={}-", env.world.prefix),
    ])
    .unwrap();
    assert_eq!(
        vols.lines().count(),
        usize::from(first_free > 1),
        "volume left behind after {e}: {vols}"
    );

    // The failed attempts consumed their ids: ids are never reused.
    let s = env
        .prov
        .create_server("dave", ServerSpec::default())
        .await
        .unwrap();
    assert!(s.id.get() > first_free, "id {} reused", s.id);

    // A leftover volume with the next server's name is refused, not adopted.
    let next = s.id.get() + 1;
    docker(&["volume", "create", &env.world.volume(next)]).unwrap();
    let e = env
        .prov
        .create_server("dave", ServerSpec::default())
        .await
        .unwrap_err();
    assert!(matches!(e, ProvisionError::Leftover { .. }), "{e}");
    assert_eq!(env.store.servers(true).await.unwrap().len(), 1);
}

#[tokio::test]
async fn network_conflict_and_docker_unreachable() {
    let env = TenantsEnv::new("netconflict", DbKind::Sqlite)
        .await
        .unwrap();
    // Same name, Docker-chosen bridge name and another subnet: berth refuses and says why.
    env.prov.remove_network().await.unwrap();
    let other = format!(
        "10.213.{}.0/24",
        (env.world.net.subnet.network().octets()[2] as u16 + 128) % 250 + 2
    );
    let created = docker(&["network", "create", "--subnet", &other, &env.world.net.name]);
    if created.is_ok() {
        let e = env.prov.ensure_network().await.unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, ProvisionError::NetworkConflict { .. }), "{msg}");
        assert!(
            msg.contains("bridge interface") && msg.contains(&other),
            "{msg}"
        );
    } else {
        // Subnet collided with another test: same check with the right subnet but no bridge name.
        docker(&[
            "network",
            "create",
            "--subnet",
            &env.world.net.subnet.to_string(),
            &env.world.net.name,
        ])
        .unwrap();
        let e = env.prov.ensure_network().await.unwrap_err();
        assert!(e.to_string().contains("bridge interface"), "{e}");
    }

    // Docker unreachable: the error names the endpoint tried.
    let cfg = Config {
        docker_host: Some("unix:///nonexistent/berth-docker.sock".into()),
        ..Config::default()
    };
    let e = Provisioner::connect(&env.world.net, &cfg, env.store.clone())
        .await
        .unwrap_err();
    assert!(matches!(e, DockerError::Unreachable { .. }), "{e}");
    assert!(
        e.to_string().contains("/nonexistent/berth-docker.sock"),
        "{e}"
    );
}

#[tokio::test]
async fn watch_addresses_follows_docker_events() {
    let env = TenantsEnv::new("watch", DbKind::Sqlite).await.unwrap();
    env.store.add_account("erin", None::<&str>).await.unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut rx = env
        .prov
        .watch_addresses(async move {
            let _ = stop_rx.await;
        })
        .await;
    assert!(rx.borrow().is_empty());
    let (stop_states, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let states = env
        .prov
        .watch_statuses(async move {
            let _ = stop_rx.await;
        })
        .await;
    // Docker answered: an empty map, not "unknown".
    assert_eq!(*states.borrow(), Some(Default::default()));
    let id = env
        .prov
        .create_server("erin", ServerSpec::default())
        .await
        .unwrap()
        .id;
    let wait = |rx: &mut tokio::sync::watch::Receiver<_>, want: bool| {
        let mut rx = rx.clone();
        async move {
            tokio::time::timeout(
                Duration::from_secs(10),
                rx.wait_for(
                    |m: &std::collections::BTreeMap<ServerId, std::net::IpAddr>| {
                        m.contains_key(&id) == want
                    },
                ),
            )
            .await
            .expect("address map did not follow")
            .map(|m| m.get(&id).copied())
            .unwrap()
        }
    };
    let ip = wait(&mut rx, true).await.unwrap();
    assert!(env.world.net.subnet.contains(&match ip {
        std::net::IpAddr::V4(v4) => v4,
        std::net::IpAddr::V6(_) => panic!("v6"),
    }));
    env.prov.stop(id).await.unwrap();
    wait(&mut rx, false).await;
    // The state map keeps the stopped container, with Docker's word for it.
    let mut st = states.clone();
    let stopped = tokio::time::timeout(
        Duration::from_secs(10),
        st.wait_for(|m| {
            m.as_ref()
                .and_then(|m| m.get(&id))
                .is_some_and(|c| !c.running)
        }),
    )
    .await
    .expect("state map did not follow the stop")
    .unwrap()
    .clone();
    assert_eq!(stopped, Some(env.prov.statuses().await.unwrap()));
    assert_eq!(stopped.unwrap()[&id].state, "exited");
    // A start behind berth's back is seen too (events, not polling berth's own calls).
    docker(&["start", &env.world.container(id.get())]).unwrap();
    wait(&mut rx, true).await;
    let _ = stop_tx.send(());
    let _ = stop_states.send(());
}

/// Two gateways sharing one PostgreSQL (two stores, two provisioners, no shared memory): ids
/// stay unique and racing on-demand starts of a stopped or missing server still make exactly
/// one container and one start (a 304 is success; a 409 is when the container that exists
/// matches the settings in the store).
#[tokio::test]
async fn two_gateways_share_postgres() {
    let env = TenantsEnv::new("twogw", DbKind::Postgres).await.unwrap();
    let store2 = env.db.store().await.unwrap();
    let prov2 = Provisioner::connect(env.prov.network(), env.prov.config(), store2.clone())
        .await
        .unwrap();
    env.store.add_account("gina", None::<&str>).await.unwrap();

    // Interleaved creates through both "gateways": distinct ids.
    let (a, b) = tokio::join!(
        env.prov.create_server("gina", ServerSpec::default()),
        prov2.create_server("gina", ServerSpec::default())
    );
    let (a, b) = (a.unwrap().id, b.unwrap().id);
    assert_ne!(a, b);
    let name = env.world.container(a.get());

    for phase in ["stopped", "missing"] {
        if phase == "stopped" {
            env.prov.stop(a).await.unwrap();
        } else {
            docker(&["rm", "-f", &name]).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let since = now();
        let mut tasks = Vec::new();
        for i in 0..10 {
            let p = if i % 2 == 0 {
                env.prov.clone()
            } else {
                prov2.clone()
            };
            tasks.push(tokio::spawn(async move { p.ensure_running(a).await }));
        }
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await.unwrap().unwrap().container_id);
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let until = now() + 1;
        ids.dedup();
        assert_eq!(ids.len(), 1, "{phase}: different containers {ids:?}");
        let events = count_events(&env.prov, &name, since, until).await;
        assert_eq!(events.get("start").copied(), Some(1), "{phase}: {events:?}");
        assert_eq!(
            events.get("create").copied().unwrap_or(0),
            usize::from(phase == "missing"),
            "{phase}: {events:?}"
        );
    }
    store2.close().await;
}
