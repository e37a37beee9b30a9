//! `dind = "rootless"`: Docker inside a tenant with no capability beyond Docker's defaults, on a
//! user-namespaced engine the test starts itself ([`RemappedDaemon`]). Through the gateway:
//! `docker load`, `docker run`, `docker build` and a two-service compose file work; nested root
//! is the tenant user and nested uids are its subordinate range on the host; the server's
//! capabilities are Docker's defaults; the `/proc/sys` + setuid escape fails. On an engine
//! whose container root is host root, berth refuses to make a rootless container at all.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use integration_tests::gateway::{GatewayHarness, Options, docker_on, test_image};
use integration_tests::tenants::variant_image;
use integration_tests::userns::{RemappedDaemon, host_uids};
use tenants::{DindMode, ServerChange, ServerSpec};

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// `ssh server<N> -- cmd` with `stdin` → stdout, failing with both streams when it fails.
fn ssh_ok(h: &GatewayHarness, cmd: &str, stdin: &[u8]) -> Result<String> {
    let out = h.ssh_exec(cmd, stdin)?;
    if !out.status.success() {
        bail!(
            "ssh -- {cmd} failed ({}): {} {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// Host pids whose command line is exactly `argv`.
fn pids_with_cmdline(argv: &[&str]) -> Vec<u32> {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|p| {
                    std::fs::read(format!("/proc/{p}/cmdline")).ok().as_ref() == Some(&want)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Waits for one host process running `argv` and returns its host uids.
async fn host_uids_of(argv: &[&str]) -> Result<[u32; 4]> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(p) = pids_with_cmdline(argv).first() {
            return host_uids(*p);
        }
        ensure!(Instant::now() < deadline, "no host process runs {argv:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Docker's default capability set (`CapBnd` of a container given nothing else).
const DOCKER_DEFAULT_CAPS: u64 = 0xa80425fb;

fn cap_line(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    u64::from_str_radix(hex.trim(), 16).with_context(|| format!("{field} {hex:?}"))
}

const COMPOSE: &str = r#"version: "2.4"
services:
  web:
    image: IMAGE
    command: ["python3", "-m", "http.server", "8080"]
  probe:
    image: IMAGE
    depends_on: [web]
    command: ["python3", "-c", "import time, urllib.request as u\nfor i in range(100):\n  try:\n    u.urlopen('http://web:8080/', timeout=2)\n    print('web-reached', flush=True)\n    break\n  except Exception:\n    time.sleep(0.2)\nelse:\n  raise SystemExit(1)\n"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nested_docker_works_rootless_and_nothing_reaches_the_host() -> Result<()> {
    let rootless = variant_image("rootless", "BERTH_TEST_ROOTLESS_IMAGE")?;
    let base = test_image();
    let daemon = blocking(RemappedDaemon::start)?;
    blocking(|| daemon.load_images(&[&rootless]))?;
    let range = daemon.range;
    // The server starts without the mode: `server set --dind rootless` turns it on.
    let opts = Options {
        docker_host: Some(daemon.host()),
        image: rootless.clone(),
        dind: DindMode::Off,
        ..Options::default()
    };
    let h = GatewayHarness::start_with("rootless", opts).await?;
    let id = h.server.context("server")?;
    let change = ServerChange {
        dind: Some(DindMode::Rootless),
        ..Default::default()
    };
    h.provisioner
        .set_server(id, change)
        .await
        .map_err(|e| anyhow::anyhow!("set --dind rootless: {e}"))?;
    let container = h.container(id);

    // The nested engine answers the tenant's docker CLI (started by the server's init).
    let t = Instant::now();
    let deadline = t + Duration::from_secs(60);
    loop {
        let out = blocking(|| h.ssh_exec("docker info --format '{{.SecurityOptions}}'", b""))?;
        if out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                text.contains("rootless"),
                "nested engine is not rootless: {text}"
            );
            break;
        }
        if Instant::now() > deadline {
            let log =
                blocking(|| daemon.docker(&["exec", &container, "cat", "/var/log/dockerd.log"]))
                    .unwrap_or_default();
            bail!(
                "the nested engine did not answer within 60 s: {}\n{log}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("nested engine ready {:?} after the recreate", t.elapsed());

    // docker load through the gateway.
    let tar = blocking(|| {
        Command::new("docker")
            .args(["save", &base])
            .stderr(Stdio::inherit())
            .output()
    })?;
    ensure!(tar.status.success(), "docker save {base}");
    let loaded = blocking(|| ssh_ok(&h, "docker load", &tar.stdout))?;
    assert!(loaded.contains(&base), "docker load: {loaded}");

    // docker run: nested root is the tenant user, nested uids are its subordinate range.
    let map = blocking(|| {
        ssh_ok(
            &h,
            &format!("docker run --rm {base} cat /proc/self/uid_map"),
            b"",
        )
    })?;
    let rows: Vec<Vec<&str>> = map
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [vec!["0", "1000", "1"], vec!["1", "100000", "65536"]],
        "nested uid_map: {map}"
    );
    blocking(|| {
        ssh_ok(
            &h,
            &format!(
                "docker run -d --name r0 {base} sleep 31337 && docker run -d --name r5 --user 5 {base} sleep 31338"
            ),
            b"",
        )
    })?;
    let root = host_uids_of(&["sleep", "31337"]).await?;
    assert_eq!(root, [range.start + 1000; 4], "nested root on the host");
    let five = host_uids_of(&["sleep", "31338"]).await?;
    assert_eq!(
        five,
        [range.start + 100_000 + 4; 4],
        "nested uid 5 on the host"
    );

    // docker build.
    let built = blocking(|| {
        ssh_ok(
            &h,
            &format!(
                "set -e; mkdir -p /tmp/b; printf 'FROM {base}\\nRUN echo built-inside > /built\\n' > /tmp/b/Dockerfile; \
                 docker build -q -t rl/built:1 /tmp/b >/dev/null; docker run --rm rl/built:1 cat /built"
            ),
            b"",
        )
    })?;
    assert_eq!(built.trim(), "built-inside");

    // A two-service compose file: one service reaches the other by name.
    let compose = COMPOSE.replace("IMAGE", &base);
    let up = blocking(|| {
        ssh_ok(
            &h,
            "set -e; mkdir -p /tmp/c; cat > /tmp/c/docker-compose.yml; cd /tmp/c; \
             docker-compose up --abort-on-container-exit --exit-code-from probe 2>&1; docker-compose down -t 1 >/dev/null 2>&1",
            compose.as_bytes(),
        )
    })?;
    assert!(up.contains("web-reached"), "compose: {up}");

    // The server holds Docker's default capabilities and nothing more (from the host), and
    // capsh inside agrees.
    let pid1 = blocking(|| daemon.pid_of(&container))?;
    assert_eq!(
        cap_line(pid1, "CapBnd:")?,
        DOCKER_DEFAULT_CAPS,
        "bounding set"
    );
    assert_eq!(
        cap_line(pid1, "CapEff:")?,
        DOCKER_DEFAULT_CAPS,
        "effective set"
    );
    assert_eq!(host_uids(pid1)?, [range.start; 4]);
    let capsh = blocking(|| daemon.docker(&["exec", &container, "capsh", "--print"]))?;
    let bounding = capsh
        .lines()
        .find(|l| l.starts_with("Bounding set"))
        .context("capsh printed no bounding set")?;
    for cap in [
        "cap_sys_admin",
        "cap_net_admin",
        "cap_sys_ptrace",
        "cap_sys_module",
    ] {
        assert!(!bounding.contains(cap), "{cap} in {bounding}");
    }

    // The escape: /proc is unmasked (no read-only /proc/sys) and setuid files work, so a
    // setuid binary reaches the server's root. Host sysctls such as core_pattern stay out of
    // reach because that root is a uid of the engine's range, not host root.
    let attempt = r#"
set +e
grep -q ' /proc/sys ' /proc/self/mounts || echo proc-sys-not-read-only
cp /bin/cat /tmp/suid-cat && chmod 4755 /tmp/suid-cat && echo setuid-made
p=$(cat /proc/sys/kernel/core_pattern)
err=$(printf '|/tmp/evil %%p' 2>&1 > /proc/sys/kernel/core_pattern) && echo core-pattern-written
case "$err" in *Read-only*) echo refused-as-read-only ;; esac
[ "$(cat /proc/sys/kernel/core_pattern)" = "$p" ] && echo core-pattern-unchanged
echo 1 > /proc/sysrq-trigger 2>/dev/null && echo sysrq-written
head -c1 /proc/kcore >/dev/null 2>&1 && echo kcore-read
echo done
"#;
    let root_try = blocking(|| daemon.docker(&["exec", &container, "sh", "-c", attempt]))?;
    assert!(root_try.contains("done"), "{root_try}");
    assert!(
        root_try.contains("proc-sys-not-read-only") && root_try.contains("setuid-made"),
        "the hole is not open as described (so this test proves nothing): {root_try}"
    );
    // Refused by permission (a host-owned sysctl), not by a read-only mount.
    for bad in [
        "core-pattern-written",
        "refused-as-read-only",
        "sysrq-written",
        "kcore-read",
    ] {
        assert!(!root_try.contains(bad), "{bad}: {root_try}");
    }
    assert!(root_try.contains("core-pattern-unchanged"), "{root_try}");
    // The tenant reaches that root through the setuid file: euid 0 inside, a range uid outside.
    let via_suid = blocking(|| ssh_ok(&h, "/tmp/suid-cat /proc/self/status | grep '^Uid:'", b""))?;
    let euid: Vec<&str> = via_suid.split_whitespace().collect();
    assert_eq!(euid.get(2), Some(&"0"), "setuid gave no euid 0: {via_suid}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rootless_is_refused_where_container_root_is_host_root() -> Result<()> {
    // The machine's own engine: not user-namespaced.
    let opts = Options {
        create_server: false,
        ..Options::default()
    };
    let h = GatewayHarness::start_with("rootlessno", opts).await?;
    let iso = h
        .provisioner
        .engine_isolation()
        .await
        .map_err(|e| anyhow::anyhow!("engine isolation: {e}"))?;
    ensure!(
        !iso.root_is_unprivileged(),
        "this test needs the machine's engine without --userns-remap"
    );
    let spec = ServerSpec {
        dind: Some(DindMode::Rootless),
        ..ServerSpec::default()
    };
    let err = h
        .provisioner
        .create_server(&h.account, spec)
        .await
        .err()
        .context("a rootless server was created on an engine whose root is host root")?;
    let text = err.to_string();
    assert!(
        text.contains("rootless needs a user-namespaced engine"),
        "{text}"
    );
    let left = blocking(|| {
        docker_on(None)
            .args(["ps", "-aq", "--filter", &format!("name=^/?{}-", h.prefix)])
            .output()
    })?;
    assert!(
        String::from_utf8_lossy(&left.stdout).trim().is_empty(),
        "a container was left behind"
    );

    // An existing server cannot be switched to the mode either; it keeps its settings.
    let s = h
        .provisioner
        .create_server(&h.account, ServerSpec::default())
        .await
        .map_err(|e| anyhow::anyhow!("create: {e}"))?;
    let change = ServerChange {
        dind: Some(DindMode::Rootless),
        ..Default::default()
    };
    let err = h
        .provisioner
        .set_server(s.id, change)
        .await
        .err()
        .context("set --dind rootless succeeded on a plain engine")?;
    assert!(
        err.to_string()
            .contains("rootless needs a user-namespaced engine"),
        "{err}"
    );
    let stored = h.store.server(s.id).await?.context("server vanished")?;
    assert_eq!(stored.spec.dind, None, "the store took the refused mode");
    let opts = blocking(|| {
        docker_on(None)
            .args([
                "inspect",
                "-f",
                "{{.HostConfig.MaskedPaths}}",
                &h.container(s.id),
            ])
            .output()
    })?;
    let opts = String::from_utf8_lossy(&opts.stdout);
    assert!(opts.contains("/proc/kcore"), "masks lifted: {opts}");
    Ok(())
}
