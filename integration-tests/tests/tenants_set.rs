//! `server set` against concurrent starts, with the real Docker engine: a change that revokes
//! privileges never reports success while a container with the old privileges runs, whether the
//! competing start runs in this process (it waits for the change) or in another one (its
//! container, made from the old settings, is replaced, never accepted); and a failed rollback
//! says what the store and Docker hold, and reconcile reports the difference.
//!
//! The race is driven deterministically: the provisioner's recreate hook runs in the window
//! between removing the old container and creating the new one, and puts there exactly what a
//! competing start would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bollard::query_parameters::CreateContainerOptions;
use futures::FutureExt;
use integration_tests::tenants::{DbKind, TenantsEnv, docker};
use tenants::spec::{self, InitMode, Names};
use tenants::{AuditKind, DindMode, ProvisionError, Server, ServerChange, ServerId, ServerSpec};

fn inspect(container: &str, format: &str) -> String {
    docker(&["inspect", "-f", format, container]).unwrap()
}

/// The capabilities Docker reports for `container` ("[]" / "<no value>" when none).
fn cap_add(container: &str) -> String {
    inspect(container, "{{json .HostConfig.CapAdd}}")
}

fn caps_change(dind: DindMode) -> ServerChange {
    ServerChange {
        dind: Some(dind),
        ..Default::default()
    }
}

/// Creates, as another berth process that read `settings` would, server `id`'s container.
async fn create_as_other_process(env: &TenantsEnv, server: &Server) {
    let body = spec::container_body(
        &env.world.tenants_config(),
        &env.world.net,
        &Names::new(&env.world.prefix),
        server,
    );
    let opts = CreateContainerOptions {
        name: Some(env.world.container(server.id.get())),
        ..Default::default()
    };
    env.prov
        .docker()
        .create_container(Some(opts), body)
        .await
        .expect("create the competing container");
}

async fn server_with_caps(env: &TenantsEnv, owner: &str) -> Server {
    env.store.add_account(owner, None::<&str>).await.unwrap();
    let spec = ServerSpec {
        dind: Some(DindMode::Caps),
        ..Default::default()
    };
    let s = env.prov.create_server(owner, spec).await.unwrap();
    let name = env.world.container(s.id.get());
    assert!(cap_add(&name).contains("SYS_ADMIN"), "{}", cap_add(&name));
    s
}

/// Another process's on-demand start read the old settings (caps) just before `server set`
/// stored the new ones, and creates its container in the window where the old one is gone.
/// Docker then answers set's create with 409; set must not take that container as its own.
#[tokio::test]
async fn a_stale_start_in_another_process_never_keeps_revoked_privileges() {
    let env = TenantsEnv::new("setstale", DbKind::Sqlite).await.unwrap();
    let old = server_with_caps(&env, "erin").await;
    let id = old.id;
    let name = env.world.container(id.get());

    let fired = Arc::new(AtomicU32::new(0));
    let env = Arc::new(env);
    {
        let (fired, env2, old) = (fired.clone(), env.clone(), old.clone());
        env.prov.set_recreate_hook(Some(Arc::new(move |_| {
            let (fired, env2, old) = (fired.clone(), env2.clone(), old.clone());
            async move {
                if fired.fetch_add(1, Ordering::SeqCst) == 0 {
                    create_as_other_process(&env2, &old).await;
                }
            }
            .boxed()
        })));
    }
    let r = env.prov.set_server(id, caps_change(DindMode::Off)).await;
    env.prov.set_recreate_hook(None);
    assert!(
        fired.load(Ordering::SeqCst) >= 2,
        "the competing container was replaced"
    );
    let (s, _) = r.expect("set succeeds once the stale container is replaced");
    assert_eq!(s.spec.dind, Some(DindMode::Off));
    let caps = cap_add(&name);
    assert!(
        !caps.contains("SYS_ADMIN"),
        "set reported success while the container still has {caps}"
    );
    assert_eq!(inspect(&name, "{{.State.Running}}"), "true");
    assert_eq!(env.prov.drift(id).await.unwrap(), Some(vec![]));
}

/// A competing process that keeps making containers from the old settings: set gives up and
/// says so (never success), and the store and Docker agree on the old settings afterwards.
#[tokio::test]
async fn set_fails_rather_than_report_success_with_old_privileges() {
    let env = Arc::new(TenantsEnv::new("setpersist", DbKind::Sqlite).await.unwrap());
    let old = server_with_caps(&env, "fred").await;
    let id = old.id;
    {
        let (env2, old) = (env.clone(), old.clone());
        env.prov.set_recreate_hook(Some(Arc::new(move |_| {
            let (env2, old) = (env2.clone(), old.clone());
            async move { create_as_other_process(&env2, &old).await }.boxed()
        })));
    }
    let r = env.prov.set_server(id, caps_change(DindMode::Off)).await;
    env.prov.set_recreate_hook(None);
    let e = r.expect_err("set must not succeed while the old container keeps coming back");
    assert!(matches!(e, ProvisionError::Drift { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("added capabilities are") && text.contains("--recreate"),
        "{text}"
    );
    // Rolled back: the store says caps, and the container has exactly that.
    let now = env.store.server(id).await.unwrap().unwrap();
    assert_eq!(now.spec.dind, Some(DindMode::Caps));
    assert_eq!(env.prov.drift(id).await.unwrap(), Some(vec![]));
}

/// When restoring the old settings fails too, the error names what the store holds, what
/// Docker holds and the command that makes them agree; reconcile and `drift` report it.
#[tokio::test]
async fn a_failed_rollback_says_where_store_and_docker_stand() {
    let env = Arc::new(
        TenantsEnv::new("setrollback", DbKind::Sqlite)
            .await
            .unwrap(),
    );
    let old = server_with_caps(&env, "gina").await;
    let id = old.id;
    let name = env.world.container(id.get());
    // An adversary that always makes the container from the settings the store does NOT hold:
    // the change cannot complete, and neither can its rollback.
    {
        let env2 = env.clone();
        env.prov
            .set_recreate_hook(Some(Arc::new(move |id: ServerId| {
                let env2 = env2.clone();
                async move {
                    let mut other = env2.store.server(id).await.unwrap().unwrap();
                    other.spec.dind = match other.spec.dind {
                        Some(DindMode::Caps) => Some(DindMode::Off),
                        _ => Some(DindMode::Caps),
                    };
                    create_as_other_process(&env2, &other).await;
                }
                .boxed()
            })));
    }
    let r = env.prov.set_server(id, caps_change(DindMode::Off)).await;
    env.prov.set_recreate_hook(None);
    let e = r.expect_err("neither the change nor its rollback can complete");
    assert!(matches!(e, ProvisionError::RollbackFailed { .. }), "{e}");
    let text = e.to_string();
    for want in [
        "restoring its old settings failed too",
        "the store holds image",
        "dind caps",
        &format!("docker holds container {name} that differs"),
        &format!("berth server set {id} --recreate"),
    ] {
        assert!(text.contains(want), "{want:?} missing from: {text}");
    }
    // The store holds the old settings; the container differs from them, visibly.
    assert_eq!(
        env.store.server(id).await.unwrap().unwrap().spec.dind,
        Some(DindMode::Caps)
    );
    let drift = env.prov.drift(id).await.unwrap().unwrap();
    assert!(!drift.is_empty());
    let report = env.prov.reconcile().await.unwrap();
    assert_eq!(report.drift.len(), 1, "{report:?}");
    assert_eq!(report.drift[0].server, id);
    // The command the error names repairs it.
    let (_, applied) = env
        .prov
        .set_server(
            id,
            ServerChange {
                recreate: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(applied, tenants::Applied::Recreated);
    assert_eq!(env.prov.drift(id).await.unwrap(), Some(vec![]));
    assert!(env.prov.reconcile().await.unwrap().drift.is_empty());
}

/// An on-demand start in the same process during a change waits for the change (it holds the
/// server's single-flight slot) and then uses the container the change made: it never creates
/// one in the window.
#[tokio::test]
async fn a_start_in_this_process_waits_for_the_change() {
    let env = Arc::new(TenantsEnv::new("setslot", DbKind::Sqlite).await.unwrap());
    let old = server_with_caps(&env, "hank").await;
    let id = old.id;
    let name = env.world.container(id.get());
    let start: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<_>>>> = Default::default();
    {
        let (env2, start2) = (env.clone(), start.clone());
        env.prov
            .set_recreate_hook(Some(Arc::new(move |id: ServerId| {
                let (env2, start2) = (env2.clone(), start2.clone());
                async move {
                    let prov = env2.prov.clone();
                    let mut task = tokio::spawn(async move { prov.ensure_running(id).await });
                    // Give the start every chance to run in the window: it finishes here only when
                    // it does not wait for the change.
                    let done = tokio::time::timeout(Duration::from_secs(3), &mut task).await;
                    assert!(
                        done.is_err(),
                        "an on-demand start completed while the change held the server"
                    );
                    *start2.lock().unwrap() = Some(task);
                }
                .boxed()
            })));
    }
    let (s, _) = env
        .prov
        .set_server(id, caps_change(DindMode::Off))
        .await
        .unwrap();
    env.prov.set_recreate_hook(None);
    assert_eq!(s.spec.dind, Some(DindMode::Off));
    let task = start.lock().unwrap().take().expect("the hook ran");
    let running = task.await.unwrap().unwrap();
    assert_eq!(
        running.container_id,
        inspect(&name, "{{.Id}}"),
        "the start used the container the change made"
    );
    assert!(!cap_add(&name).contains("SYS_ADMIN"));
    let recreates = env
        .store
        .audit_events(100)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| {
            e.event.kind == AuditKind::Provision && e.event.method.as_deref() == Some("recreate")
        })
        .count();
    assert_eq!(recreates, 0, "the start made no container of its own");
}

/// Many real races between starts and changes in one process: whenever set reports success,
/// the container has exactly the settings it reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_starts_and_changes_agree_with_what_set_reports() {
    let env = Arc::new(TenantsEnv::new("setloop", DbKind::Sqlite).await.unwrap());
    let old = server_with_caps(&env, "ivy").await;
    let id = old.id;
    let name = env.world.container(id.get());
    for round in 0..6 {
        let want = if round % 2 == 0 {
            DindMode::Off
        } else {
            DindMode::Caps
        };
        let starts: Vec<_> = (0..4)
            .map(|_| {
                let prov = env.prov.clone();
                tokio::spawn(async move { prov.ensure_running(id).await })
            })
            .collect();
        let (s, _) = env.prov.set_server(id, caps_change(want)).await.unwrap();
        assert_eq!(s.spec.dind, Some(want));
        let caps = cap_add(&name);
        assert_eq!(
            caps.contains("SYS_ADMIN"),
            want == DindMode::Caps,
            "round {round}: set reported dind {} but the container has {caps}",
            want.as_str()
        );
        assert_eq!(env.prov.drift(id).await.unwrap(), Some(vec![]));
        for t in starts {
            // A start may have joined the old container before it was replaced (the change
            // then removed it under it); it never made one of its own from stale settings.
            let _ = t.await.unwrap();
        }
        assert_eq!(env.prov.drift(id).await.unwrap(), Some(vec![]));
    }
}

/// An image labelled `berth.init=systemd` gets nothing from its label: a create without
/// `init` is refused with what to do, a container made from it without the grant has none of
/// systemd's privileges, and `init: systemd` grants them.
#[tokio::test]
async fn the_systemd_label_alone_grants_nothing() {
    let Ok(image) =
        integration_tests::tenants::variant_image("systemd", "BERTH_TEST_SYSTEMD_IMAGE")
    else {
        panic!("the systemd tenant image is missing (scripts/test builds it)");
    };
    let env = TenantsEnv::new("sdlabel", DbKind::Sqlite).await.unwrap();
    env.store.add_account("jude", None::<&str>).await.unwrap();
    let e = env
        .prov
        .create_server(
            "jude",
            ServerSpec {
                image: Some(image.clone()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, ProvisionError::Invalid(_)), "{text}");
    assert!(
        text.contains("berth.init=systemd") && text.contains("--init systemd"),
        "{text}"
    );
    assert!(env.store.servers(true).await.unwrap().is_empty());

    // A server that runs the systemd image without the grant (its image changed behind
    // `server set`'s back, as after an upgrade): the container berth makes has none of it.
    let s = env
        .prov
        .create_server("jude", ServerSpec::default())
        .await
        .unwrap();
    let id = s.id;
    let name = env.world.container(id.get());
    let mut spec = s.spec.clone();
    spec.image = Some(image.clone());
    env.store.set_server_spec(id, &spec).await.unwrap();
    docker(&["rm", "-f", &name]).unwrap();
    // systemd cannot boot without its privileges, so the start may fail; what matters is the
    // container it made.
    let _ = env.prov.ensure_running(id).await;
    assert_eq!(inspect(&name, "{{.Config.Image}}"), image);
    let caps = cap_add(&name);
    assert!(!caps.contains("SYS_ADMIN"), "{caps}");
    let sec = inspect(&name, "{{json .HostConfig.SecurityOpt}}");
    assert!(
        sec.contains("no-new-privileges") && !sec.contains("unconfined"),
        "{sec}"
    );
    assert_eq!(inspect(&name, "{{.HostConfig.Init}}"), "true");
    assert_eq!(env.prov.drift(id).await.unwrap(), Some(vec![]));

    // The operator's grant: recreated as systemd needs.
    let (s, applied) = env
        .prov
        .set_server(
            id,
            ServerChange {
                init: Some(InitMode::Systemd),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(applied, tenants::Applied::Recreated);
    assert_eq!(spec::init(&s), InitMode::Systemd);
    assert_eq!(
        env.store.server(id).await.unwrap().unwrap().spec.init,
        Some(InitMode::Systemd)
    );
    assert!(cap_add(&name).contains("SYS_ADMIN"));
    assert_ne!(inspect(&name, "{{.HostConfig.Init}}"), "true", "no tini");
    assert_eq!(env.prov.drift(id).await.unwrap(), Some(vec![]));
}
