//! The `berth account …` / `berth server …` CLI as an operator runs it: the real binary, a
//! config file, real Docker, SQLite and PostgreSQL; outputs, JSON and exit codes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use integration_tests::tenants::{
    DbKind, DockerWorld, TestDb, berth, docker, require_docker, write_cli_config,
};

const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIHD8kX34G+5hacsR4eEYezNhoIa+ohMGr407z4ALm5L alice@example";
const KEY_FP: &str = "SHA256:BTZz8KnJqTOkgMISepQ3ROjhPAqHtQHnq/pnhC3qb6o";

/// Runs berth and asserts the exit code, returning stdout.
fn ok(cfg: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let (code, out, err) = berth(cfg, args, stdin).unwrap();
    assert_eq!(code, 0, "berth {args:?} failed: {err}");
    out
}

/// Runs berth expecting failure `code`; returns stderr.
fn fails(cfg: &Path, args: &[&str], stdin: Option<&str>, code: i32) -> String {
    let (got, out, err) = berth(cfg, args, stdin).unwrap();
    assert_eq!(got, code, "berth {args:?}: stdout {out} stderr {err}");
    err
}

async fn accounts_and_servers(kind: DbKind) {
    require_docker().unwrap();
    let db = TestDb::new(kind, "cli").unwrap();
    let world = DockerWorld::new("cli", 0);
    let cfg = write_cli_config(db.dir.path(), &db.url, &world, "").unwrap();
    let cfg = cfg.as_path();

    // Accounts.
    ok(
        cfg,
        &["account", "add", "alice", "--password-stdin"],
        Some("correct horse battery\n"),
    );
    let err = fails(
        cfg,
        &["account", "add", "alice", "--password-stdin"],
        Some("x\n"),
        73,
    );
    assert!(err.contains("account alice already exists"), "{err}");
    let err = fails(
        cfg,
        &["account", "add", "Bad Name", "--no-password"],
        None,
        65,
    );
    assert!(err.contains("lower-case ASCII letters"), "{err}");
    let long = format!("{}\n", "p".repeat(73));
    let err = fails(
        cfg,
        &["account", "add", "bob", "--password-stdin"],
        Some(&long),
        65,
    );
    assert!(err.contains("73 bytes") && err.contains("72"), "{err}");
    let err = fails(
        cfg,
        &["account", "add", "bob", "--password-stdin"],
        Some("\n"),
        65,
    );
    assert!(err.contains("empty"), "{err}");
    // No terminal and no --password-stdin: refuse rather than read argv or hang.
    let err = fails(cfg, &["account", "add", "bob"], None, 64);
    assert!(err.contains("--password-stdin"), "{err}");
    ok(cfg, &["account", "add", "bob", "--no-password"], None);
    ok(cfg, &["account", "disable", "bob"], None);
    let err = fails(cfg, &["account", "enable", "nobody"], None, 67);
    assert!(err.contains("account nobody does not exist"), "{err}");

    // Keys.
    let out = ok(cfg, &["account", "key", "add", "alice", KEY], None);
    assert!(out.contains(KEY_FP), "{out}");
    fails(cfg, &["account", "key", "add", "alice", "-"], Some(KEY), 73);
    let err = fails(
        cfg,
        &["account", "key", "add", "alice", "ssh-rsa nonsense"],
        None,
        65,
    );
    assert!(err.to_lowercase().contains("openssh public key"), "{err}");
    let keys: serde_json::Value = serde_json::from_str(&ok(
        cfg,
        &["account", "key", "list", "alice", "--json"],
        None,
    ))
    .unwrap();
    assert_eq!(keys[0]["fingerprint"], KEY_FP);

    let list: serde_json::Value =
        serde_json::from_str(&ok(cfg, &["account", "list", "--json"], None)).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(list[0]["name"], "alice");
    assert_eq!(list[0]["has_password"], true);
    assert_eq!(list[0]["keys"], 1);
    assert_eq!(list[1]["enabled"], false);
    assert!(!list.to_string().contains("$2b$"), "hash leaked: {list}");
    let table = ok(cfg, &["account", "list"], None);
    assert!(
        table.starts_with("NAME") && table.contains("alice"),
        "{table}"
    );

    // Servers: create prints server<N> last.
    let out = ok(
        cfg,
        &[
            "server", "create", "--owner", "alice", "--memory", "200m", "--cpus", "0.5", "--pids",
            "99",
        ],
        None,
    );
    let last = out.lines().last().unwrap();
    assert!(tenants::parse_login(last).is_some(), "last line {last:?}");
    let n = tenants::parse_login(last).unwrap().get().to_string();
    let container = world.container(n.parse().unwrap());
    assert_eq!(
        docker(&[
            "inspect",
            "-f",
            "{{.State.Running}} {{.HostConfig.Memory}} {{.HostConfig.PidsLimit}}",
            &container
        ])
        .unwrap(),
        format!("true {} 99", 200u64 << 20)
    );

    // server<N> and N both work everywhere.
    let show: serde_json::Value =
        serde_json::from_str(&ok(cfg, &["server", "show", last, "--json"], None)).unwrap();
    assert_eq!(show["owner"], "alice");
    assert_eq!(show["container"]["running"], true);
    assert!(
        show["container"]["address"]
            .as_str()
            .unwrap()
            .starts_with("10.213.")
    );
    let show2: serde_json::Value =
        serde_json::from_str(&ok(cfg, &["server", "show", &n, "--json"], None)).unwrap();
    assert_eq!(show2["id"], show["id"]);
    let list: serde_json::Value =
        serde_json::from_str(&ok(cfg, &["server", "list", "--json"], None)).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["container"]["state"], "running");
    let table = ok(cfg, &["server", "list"], None);
    assert!(
        table.starts_with("SERVER") && table.contains(last) && table.contains("running"),
        "{table}"
    );

    ok(cfg, &["server", "stop", &n], None);
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Running}}", &container]).unwrap(),
        "false"
    );
    let out = ok(cfg, &["server", "start", last], None);
    assert!(out.contains("started"), "{out}");
    ok(cfg, &["server", "restart", last], None);

    // Errors with their exit codes.
    let err = fails(cfg, &["server", "show", "server999"], None, 67);
    assert!(err.contains("server999 does not exist"), "{err}");
    for bad in ["server01", "0", "srv1"] {
        let err = fails(cfg, &["server", "stop", bad], None, 65);
        assert!(err.contains("server<N> or N"), "{bad}: {err}");
    }
    let err = fails(cfg, &["server", "create", "--owner", "nobody"], None, 67);
    assert!(err.contains("account nobody does not exist"), "{err}");
    let err = fails(
        cfg,
        &[
            "server",
            "create",
            "--owner",
            "alice",
            "--image",
            "berth-test/missing:1",
        ],
        None,
        66,
    );
    assert!(err.contains("berth image build"), "{err}");
    fails(
        cfg,
        &["server", "create", "--owner", "alice", "--memory", "lots"],
        None,
        2,
    );
    let err = fails(cfg, &["account", "rm", "alice"], None, 73);
    assert!(err.contains(last), "{err}");

    // rm keeps the volume, --purge removes it.
    let out = ok(cfg, &["server", "rm", last], None);
    assert!(out.contains("data kept"), "{out}");
    docker(&["volume", "inspect", &world.volume(n.parse().unwrap())]).unwrap();
    fails(cfg, &["server", "start", last], None, 67);
    ok(cfg, &["server", "rm", last, "--purge"], None);
    assert!(docker(&["volume", "inspect", &world.volume(n.parse().unwrap())]).is_err());
    let all: serde_json::Value =
        serde_json::from_str(&ok(cfg, &["server", "list", "--all", "--json"], None)).unwrap();
    assert!(all[0]["deleted"].is_string(), "{all}");
    ok(cfg, &["account", "rm", "alice"], None);
    ok(cfg, &["account", "key", "list", "bob"], None);
}

#[tokio::test]
async fn cli_accounts_and_servers_sqlite() {
    accounts_and_servers(DbKind::Sqlite).await;
}

#[tokio::test]
async fn cli_accounts_and_servers_postgres() {
    accounts_and_servers(DbKind::Postgres).await;
}

#[tokio::test]
async fn cli_outages_have_their_own_exit_code() {
    let db = TestDb::new(DbKind::Sqlite, "cliout").unwrap();
    let world = DockerWorld::new("cliout", 0);
    // Docker unreachable: exit 69 and the socket named.
    let cfg = write_cli_config(
        db.dir.path(),
        &db.url,
        &world,
        "docker_host = \"unix:///nonexistent/d.sock\"",
    )
    .unwrap();
    ok(&cfg, &["account", "add", "zoe", "--no-password"], None);
    let err = fails(&cfg, &["server", "create", "--owner", "zoe"], None, 69);
    assert!(err.contains("/nonexistent/d.sock"), "{err}");
    // list still shows the store's view, with a warning.
    let (code, _, err) = berth(&cfg, &["server", "list"], None).unwrap();
    assert_eq!(code, 0);
    assert!(err.contains("container states unknown"), "{err}");

    // Database unreachable: exit 69, password not echoed.
    let dir = tempfile::tempdir().unwrap();
    let pg = write_cli_config(
        dir.path(),
        "postgres://berth:topsecret@127.0.0.1:1/berth",
        &world,
        "",
    )
    .unwrap();
    let err = fails(&pg, &["account", "list"], None, 69);
    assert!(
        err.contains("127.0.0.1:1") && !err.contains("topsecret"),
        "{err}"
    );

    // A typo in [tenants] is a config error (64) naming the key.
    let bad = write_cli_config(dir.path(), &db.url, &world, "memroy = \"1g\"").unwrap();
    let err = fails(&bad, &["account", "list"], None, 64);
    assert!(err.contains("memroy"), "{err}");
}

/// Drives `berth account add/passwd` through a real pseudo-terminal (util-linux `script`):
/// the password is read with echo off, asked twice, and never appears in the transcript.
#[test]
fn cli_password_prompt_on_a_terminal() {
    use std::io::{Read, Write};
    use std::process::{Command, Stdio};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    let db = TestDb::new(DbKind::Sqlite, "clipty").unwrap();
    let world = DockerWorld::new("clipty", 0);
    let cfg = write_cli_config(db.dir.path(), &db.url, &world, "").unwrap();
    let bin = integration_tests::tenants::berth_bin().unwrap();

    let run = |args: &str, answers: &[&str]| -> (i32, String) {
        let cmd = format!("{} --config {} {args}", bin.display(), cfg.display());
        let mut child = Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .env("BERTH_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("util-linux `script` is needed for the terminal test");
        let mut stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 1024];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        let mut transcript = String::new();
        let mut stdin = child.stdin.take().unwrap();
        for (i, answer) in answers.iter().enumerate() {
            // Wait for the i-th prompt before typing (typing early would be echoed).
            let deadline = Instant::now() + Duration::from_secs(30);
            while transcript.matches(": ").count() <= i {
                let left = deadline.saturating_duration_since(Instant::now());
                let chunk = rx.recv_timeout(left).expect("no password prompt");
                transcript.push_str(&String::from_utf8_lossy(&chunk));
            }
            // rpassword prints the prompt, then turns echo off: give it that moment (a human
            // typing ahead of the prompt would see an echo too — that is the terminal, not us).
            std::thread::sleep(Duration::from_millis(500));
            stdin.write_all(format!("{answer}\n").as_bytes()).unwrap();
            stdin.flush().unwrap();
        }
        let status = child.wait().unwrap();
        drop(stdin);
        reader.join().unwrap();
        while let Ok(chunk) = rx.try_recv() {
            transcript.push_str(&String::from_utf8_lossy(&chunk));
        }
        (status.code().unwrap_or(-1), transcript)
    };

    let (code, transcript) = run("account add tty-user", &["Tty-Secret-1", "Tty-Secret-1"]);
    assert_eq!(code, 0, "{transcript}");
    assert!(
        transcript.contains("New password for tty-user"),
        "{transcript}"
    );
    assert!(transcript.contains("Repeat"), "{transcript}");
    assert!(
        !transcript.contains("Tty-Secret-1"),
        "password echoed: {transcript}"
    );
    let list: serde_json::Value =
        serde_json::from_str(&ok(&cfg, &["account", "list", "--json"], None)).unwrap();
    assert_eq!(list[0]["has_password"], true);

    // A mismatched repeat changes nothing and exits 65.
    let (code, transcript) = run("account passwd tty-user", &["Tty-Secret-2", "Tty-Secret-3"]);
    assert_eq!(code, 65, "{transcript}");
    assert!(transcript.contains("do not match"), "{transcript}");
}

/// `server set` changes limits live and the image/user by recreating the container with its
/// data volume; `--user` picks who logs in; bad values and images without the user are clear
/// errors that leave Docker and the store as they were.
async fn set_and_user(kind: DbKind) {
    require_docker().unwrap();
    let db = TestDb::new(kind, "cliset").unwrap();
    let world = DockerWorld::new("cliset", 0);
    let cfg = write_cli_config(db.dir.path(), &db.url, &world, "").unwrap();
    let cfg = cfg.as_path();
    ok(cfg, &["account", "add", "erin", "--no-password"], None);
    let inspect = |n: u32, fmt: &str| docker(&["inspect", "-f", fmt, &world.container(n)]).unwrap();
    let exec = |n: u32, cmd: &str| {
        docker(&["exec", &world.container(n), "sh", "-c", cmd]).unwrap_or_else(|e| format!("{e}"))
    };

    // Default user: the config's (tenant), recorded on the container, owning the volume.
    let out = ok(cfg, &["server", "create", "--owner", "erin"], None);
    let name = out.lines().last().unwrap().to_string();
    let n: u32 = name.trim_start_matches("server").parse().unwrap();
    assert_eq!(
        inspect(n, "{{index .Config.Labels \"berth.user\"}}"),
        "tenant"
    );
    assert_eq!(exec(n, "stat -c %U /apps"), "tenant");
    exec(n, "echo keep-me > /apps/data.txt");
    let id_before = inspect(n, "{{.Id}}");

    // Limits change live: same container, new limits, `show` agrees.
    let out = ok(
        cfg,
        &[
            "server", "set", &name, "--memory", "300m", "--cpus", "0.25", "--pids", "99",
        ],
        None,
    );
    assert!(out.contains("changed live"), "{out}");
    assert_eq!(inspect(n, "{{.Id}}"), id_before);
    assert_eq!(
        inspect(n, "{{.HostConfig.Memory}}"),
        (300u64 << 20).to_string()
    );
    assert_eq!(inspect(n, "{{.HostConfig.NanoCpus}}"), "250000000");
    assert_eq!(inspect(n, "{{.HostConfig.PidsLimit}}"), "99");
    let show: serde_json::Value =
        serde_json::from_str(&ok(cfg, &["server", "show", &name, "--json"], None)).unwrap();
    assert_eq!(show["memory"], 300u64 << 20, "{show}");
    assert_eq!(show["pids"], 99, "{show}");
    // Lifting the PIDs limit is live; lifting the memory limit needs a new container (docker
    // update cannot unset it), data kept.
    ok(cfg, &["server", "set", &name, "--pids", "0"], None);
    assert_eq!(inspect(n, "{{.Id}}"), id_before);
    assert!(
        ["0", "-1", "<nil>"].contains(&inspect(n, "{{.HostConfig.PidsLimit}}").as_str()),
        "pids limit not lifted"
    );
    let out = ok(cfg, &["server", "set", &name, "--memory", "0"], None);
    assert!(out.contains("recreated"), "{out}");
    assert_eq!(inspect(n, "{{.HostConfig.Memory}}"), "0");
    assert_eq!(exec(n, "cat /apps/data.txt"), "keep-me");
    let id_before = inspect(n, "{{.Id}}");

    // The user changes by recreating; the data volume survives.
    let out = ok(cfg, &["server", "set", &name, "--user", "root"], None);
    assert!(out.contains("recreated, data volume kept"), "{out}");
    assert_ne!(inspect(n, "{{.Id}}"), id_before);
    assert_eq!(
        inspect(n, "{{index .Config.Labels \"berth.user\"}}"),
        "root"
    );
    assert_eq!(exec(n, "cat /apps/data.txt"), "keep-me");
    let show = ok(cfg, &["server", "show", &name], None);
    assert!(show.contains("user:      root"), "{show}");

    // A new image (another tag of the test image) recreates too, data kept.
    let alt = format!(
        "{}-alt-{}",
        integration_tests::tenants::test_image(),
        world.prefix
    );
    docker(&["tag", &integration_tests::tenants::test_image(), &alt]).unwrap();
    let out = ok(cfg, &["server", "set", &name, "--image", &alt], None);
    assert!(out.contains("recreated"), "{out}");
    assert_eq!(inspect(n, "{{.Config.Image}}"), alt);
    assert_eq!(exec(n, "cat /apps/data.txt"), "keep-me");

    // Docker-in-Docker per server: caps mode recreates with the capability set, and back.
    let out = ok(cfg, &["server", "set", &name, "--dind", "caps"], None);
    assert!(
        out.contains("recreated") && out.contains("dind caps"),
        "{out}"
    );
    assert!(inspect(n, "{{.HostConfig.CapAdd}}").contains("SYS_ADMIN"));
    assert_eq!(inspect(n, "{{.HostConfig.CgroupnsMode}}"), "private");
    assert_eq!(inspect(n, "{{.HostConfig.Privileged}}"), "false");
    assert_eq!(exec(n, "cat /apps/data.txt"), "keep-me");
    let show = ok(cfg, &["server", "show", &name], None);
    assert!(show.contains("dind:      caps"), "{show}");
    let err = fails(
        cfg,
        &["server", "set", &name, "--dind", "sometimes"],
        None,
        2,
    );
    assert!(err.contains("invalid dind mode"), "{err}");
    let err = fails(
        cfg,
        &["server", "set", &name, "--dind", "runtime"],
        None,
        65,
    );
    assert!(err.contains("tenants.runtime"), "{err}");
    ok(cfg, &["server", "set", &name, "--dind", "off"], None);
    assert!(!inspect(n, "{{.HostConfig.CapAdd}}").contains("SYS_ADMIN"));

    // A plain recreate: new container, same settings and data.
    let before = inspect(n, "{{.Id}}");
    let out = ok(cfg, &["server", "set", &name, "--recreate"], None);
    assert!(out.contains("recreated"), "{out}");
    assert_ne!(inspect(n, "{{.Id}}"), before);
    assert_eq!(exec(n, "cat /apps/data.txt"), "keep-me");

    // Bad values: clear errors, nothing changed.
    let id_now = inspect(n, "{{.Id}}");
    let err = fails(
        cfg,
        &["server", "set", &name, "--user", "Bad User"],
        None,
        2,
    );
    assert!(err.contains("invalid user"), "{err}");
    let err = fails(cfg, &["server", "set", &name], None, 64);
    assert!(err.contains("nothing to change"), "{err}");
    let err = fails(
        cfg,
        &["server", "set", &name, "--image", "berth-test/nope:missing"],
        None,
        66,
    );
    assert!(err.contains("berth image build"), "{err}");
    // A user the image does not have: refused, and the server is back as it was.
    let err = fails(cfg, &["server", "set", &name, "--user", "ghost"], None, 65);
    assert!(err.contains("has no user ghost"), "{err}");
    assert_eq!(
        inspect(n, "{{index .Config.Labels \"berth.user\"}}"),
        "root"
    );
    assert_eq!(inspect(n, "{{.State.Running}}"), "true");
    assert_eq!(exec(n, "cat /apps/data.txt"), "keep-me");
    let show: serde_json::Value =
        serde_json::from_str(&ok(cfg, &["server", "show", &name, "--json"], None)).unwrap();
    assert_eq!(show["user"], "root", "{show}");
    assert_eq!(inspect(n, "{{.Config.Image}}"), alt);
    let _ = id_now;

    // create --user: a user missing from the image leaves no container, volume or live row.
    let before = ok(cfg, &["server", "list", "--json"], None);
    let err = fails(
        cfg,
        &["server", "create", "--owner", "erin", "--user", "ghost"],
        None,
        65,
    );
    assert!(err.contains("has no user ghost"), "{err}");
    assert_eq!(ok(cfg, &["server", "list", "--json"], None), before);
    // A non-root user whose home is not the volume's owner gets the volume (never root's).
    let out = ok(
        cfg,
        &["server", "create", "--owner", "erin", "--user", "nobody"],
        None,
    );
    let m: u32 = out
        .lines()
        .last()
        .unwrap()
        .trim_start_matches("server")
        .parse()
        .unwrap();
    assert_eq!(exec(m, "stat -c %U /apps"), "nobody");
    assert!(
        docker(&["inspect", &world.container(n + 1)]).is_err(),
        "the failed create left a container behind"
    );
    ok(cfg, &["server", "rm", &format!("{m}"), "--purge"], None);
    ok(cfg, &["server", "rm", &name, "--purge"], None);
    let _ = docker(&["rmi", &alt]);
}

#[tokio::test]
async fn cli_server_set_and_user_sqlite() {
    set_and_user(DbKind::Sqlite).await;
}

#[tokio::test]
async fn cli_server_set_and_user_postgres() {
    set_and_user(DbKind::Postgres).await;
}

/// systemd as PID 1 is the operator's explicit `--init systemd`, stored and shown: an image's
/// `berth.init=systemd` label alone is refused with what to do, the grant is visible in `show`
/// (text and JSON), it can be revoked, and a container that differs from its settings is
/// reported by `show` and `reconcile`.
#[tokio::test]
async fn cli_init_is_the_operators_decision() {
    require_docker().unwrap();
    let systemd =
        integration_tests::tenants::variant_image("systemd", "BERTH_TEST_SYSTEMD_IMAGE").unwrap();
    let base = integration_tests::tenants::test_image();
    let db = TestDb::new(DbKind::Sqlite, "cliinit").unwrap();
    let world = DockerWorld::new("cliinit", 0);
    let cfg = write_cli_config(db.dir.path(), &db.url, &world, "").unwrap();
    let cfg = cfg.as_path();
    ok(cfg, &["account", "add", "kim", "--no-password"], None);
    let inspect = |n: u32, fmt: &str| docker(&["inspect", "-f", fmt, &world.container(n)]).unwrap();

    // The label alone: refused, naming the label and both flags; nothing registered.
    let before = ok(cfg, &["server", "list", "--json"], None);
    let err = fails(
        cfg,
        &["server", "create", "--owner", "kim", "--image", &systemd],
        None,
        65,
    );
    assert!(
        err.contains("berth.init=systemd")
            && err.contains("--init systemd")
            && err.contains("--init default"),
        "{err}"
    );
    assert_eq!(ok(cfg, &["server", "list", "--json"], None), before);
    let err = fails(
        cfg,
        &["server", "create", "--owner", "kim", "--init", "sometimes"],
        None,
        2,
    );
    assert!(
        err.contains("invalid init") && err.contains("systemd"),
        "{err}"
    );

    // The grant: stored, shown, applied.
    let out = ok(
        cfg,
        &[
            "server", "create", "--owner", "kim", "--image", &systemd, "--init", "systemd",
        ],
        None,
    );
    let name = out.lines().last().unwrap().to_string();
    let n: u32 = name.trim_start_matches("server").parse().unwrap();
    assert!(inspect(n, "{{.HostConfig.CapAdd}}").contains("SYS_ADMIN"));
    let show = ok(cfg, &["server", "show", &name], None);
    assert!(show.contains("init:      systemd\n"), "{show}");
    assert!(!show.contains("drift:"), "{show}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(cfg, &["server", "show", &name, "--json"], None)).unwrap();
    assert_eq!(json["init"], "systemd", "{json}");
    assert_eq!(json["init_effective"], "systemd", "{json}");
    assert_eq!(json["image_asks_systemd"], true, "{json}");
    assert_eq!(json["drift"], serde_json::json!([]), "{json}");

    // Revoked together with an image that needs no systemd: no extra privileges left.
    let out = ok(
        cfg,
        &[
            "server", "set", &name, "--image", &base, "--init", "default",
        ],
        None,
    );
    assert!(
        out.contains("recreated") && out.contains("init default"),
        "{out}"
    );
    assert!(!inspect(n, "{{.HostConfig.CapAdd}}").contains("SYS_ADMIN"));
    // Back to the systemd image without a decision: refused before anything changes.
    let id_before = inspect(n, "{{.Id}}");
    let err = fails(
        cfg,
        &["server", "set", &name, "--image", &systemd],
        None,
        65,
    );
    assert!(
        err.contains("berth.init=systemd")
            && err.contains(&format!("berth server set {name} --init systemd")),
        "{err}"
    );
    assert_eq!(inspect(n, "{{.Id}}"), id_before);
    assert_eq!(inspect(n, "{{.Config.Image}}"), base);

    // A container that differs from its settings (here: made by hand with an extra
    // capability) is reported, with the command that replaces it.
    let c = world.container(n);
    docker(&["rm", "-f", &c]).unwrap();
    docker(&[
        "create",
        "--name",
        &c,
        "--label",
        &format!("berth.server={n}"),
        "--label",
        "berth.managed=true",
        "--label",
        &format!("berth.instance={}", world.prefix),
        "--label",
        "berth.owner=kim",
        "--label",
        "berth.user=tenant",
        "--cap-add",
        "SYS_ADMIN",
        &base,
    ])
    .unwrap();
    let show = ok(cfg, &["server", "show", &name], None);
    assert!(
        show.contains("drift:") && show.contains("SYS_ADMIN") && show.contains("--recreate"),
        "{show}"
    );
    let rec = ok(cfg, &["server", "reconcile"], None);
    assert!(
        rec.contains(&format!("drift:    {name}")) && rec.contains("SYS_ADMIN"),
        "{rec}"
    );
    ok(cfg, &["server", "set", &name, "--recreate"], None);
    let rec = ok(cfg, &["server", "reconcile"], None);
    assert!(!rec.contains("drift:"), "{rec}");
    ok(cfg, &["server", "rm", &name, "--purge"], None);
}
