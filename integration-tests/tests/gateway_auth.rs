//! Gateway authentication end to end, with the real OpenSSH client and paramiko against a real
//! in-process gateway (real tenants Store, real Docker tenant): password, keyboard-interactive and
//! key logins; wrong password, unknown server and disabled owner refused alike; a public-key probe
//! that cannot tell an existing server from a missing one; a password storm from 127.0.0.2 that
//! does not delay the owner logging in from another address; and no password in the logs or the
//! audit table.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use integration_tests::gateway::{GatewayHarness, Options};

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// The system Python (it has python3-paramiko); a pyenv shim on PATH may not.
fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

// ---------------------------------------------------------------------------------------------
// Captured logs: every tracing event of this test binary, at debug level and above.

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logs() -> &'static Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "debug,berth=trace,gateway=trace",
            ))
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        // Another test of this binary may have won the race; both write to the same buffer
        // only if ours is the one installed, so only the winner's buffer is returned.
        let _ = tracing::subscriber::set_global_default(subscriber);
        captured
    })
}

fn logs_text() -> String {
    String::from_utf8_lossy(&logs().0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}

// ---------------------------------------------------------------------------------------------
// OpenSSH helpers.

/// An SSH_ASKPASS script that prints `secret` (the way OpenSSH gets a password without a tty).
fn askpass(dir: &Path, name: &str, secret: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    let secret_file = dir.join(format!("{name}.secret"));
    std::fs::write(&secret_file, secret)?;
    std::fs::write(
        &path,
        format!("#!/bin/sh\ncat '{}'\n", secret_file.display()),
    )?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))?;
    Ok(path)
}

fn base_opts(h: &GatewayHarness) -> Vec<String> {
    [
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "ConnectTimeout=30",
        "-o",
        "NumberOfPasswordPrompts=1",
        "-p",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([h.addr.port().to_string()])
    .collect()
}

/// `ssh` logging in with a password via askpass (`method` = password | keyboard-interactive).
fn ssh_password(
    h: &GatewayHarness,
    askpass: &Path,
    method: &str,
    source: &str,
    user: &str,
    cmd: &str,
) -> Result<Output> {
    Command::new("ssh")
        .args(base_opts(h))
        .args(["-o", &format!("PreferredAuthentications={method}")])
        .args([
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "BatchMode=no",
            "-o",
            "LogLevel=ERROR",
        ])
        .args(["-b", source])
        .arg(format!("{user}@127.0.0.1"))
        .arg(cmd)
        .env("SSH_ASKPASS", askpass)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env("DISPLAY", ":0")
        .stdin(Stdio::null())
        .output()
        .context("run ssh")
}

/// `ssh -v` with one key only; returns the output.
fn ssh_key(
    h: &GatewayHarness,
    key: &Path,
    source: &str,
    user: &str,
    verbose: bool,
) -> Result<Output> {
    Command::new("ssh")
        .args(base_opts(h))
        .args([
            "-o",
            "PreferredAuthentications=publickey",
            "-o",
            "BatchMode=yes",
        ])
        .args(["-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none"])
        .args([
            "-o",
            if verbose {
                "LogLevel=DEBUG1"
            } else {
                "LogLevel=ERROR"
            },
        ])
        .arg("-i")
        .arg(key)
        .args(["-b", source])
        .arg(format!("{user}@127.0.0.1"))
        .arg("echo key-ok")
        .stdin(Stdio::null())
        .output()
        .context("run ssh")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The client-visible authentication transcript of `ssh -v`, with names and keys blanked.
fn auth_transcript(o: &Output, user: &str) -> Vec<String> {
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.starts_with("debug1: Server accepts key") {
                Some("server accepts key".to_string())
            } else if l.starts_with("debug1: Authentications that can continue")
                || l.starts_with("debug1: Authenticated")
                || l.contains("Permission denied")
                || l.starts_with("Received disconnect")
            {
                Some(l.replace(user, "USER"))
            } else {
                None
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn password_keyboard_interactive_and_key_logins() -> Result<()> {
    logs();
    let h = GatewayHarness::start("auth_logins").await?;
    let user = h.user();
    let right = askpass(h.dir.path(), "right", &h.password)?;
    let wrong = askpass(h.dir.path(), "wrong", "wrong-Zq8-not-it")?;

    for method in ["password", "keyboard-interactive"] {
        let out = blocking(|| ssh_password(&h, &right, method, "127.0.0.1", &user, "echo pw-ok"))?;
        assert!(out.status.success(), "{method}: {}", text(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "pw-ok\n");

        let out = blocking(|| ssh_password(&h, &wrong, method, "127.0.0.1", &user, "echo no"))?;
        assert_eq!(out.status.code(), Some(255), "{method}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
            "{}",
            text(&out)
        );
        assert!(out.stdout.is_empty());
    }
    let out = blocking(|| ssh_key(&h, &h.key, "127.0.0.1", &user, false))?;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "key-ok\n");

    // The audit table has the attempts with method and outcome.
    let audit = h.store.audit_events(200).await?;
    let auth: Vec<_> = audit
        .iter()
        .filter(|r| {
            r.event
                .method
                .as_deref()
                .is_some_and(|m| m != "shell" && m != "exec")
        })
        .map(|r| {
            (
                r.event.method.clone().unwrap_or_default(),
                r.event.outcome.clone(),
            )
        })
        .collect();
    for want in [
        ("password", "success"),
        ("password", "failure"),
        ("keyboard-interactive", "success"),
        ("keyboard-interactive", "failure"),
        ("publickey", "success"),
    ] {
        assert!(
            auth.iter().any(|(m, o)| m == want.0 && o == want.1),
            "missing audit {want:?} in {auth:?}"
        );
    }
    Ok(())
}

/// A mistyped password retried on the same connection: OpenSSH asks again (askpass answers
/// wrong, then right) and the second answer logs in. Failed attempts keep every method on
/// offer (`auth::rejection()`); with russh's plain `Auth::reject()` the client would be told
/// "password" is gone and could not retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn password_retry_on_the_same_connection() -> Result<()> {
    logs();
    let h = GatewayHarness::start("auth_retry").await?;
    let user = h.user();
    let counter = h.path("askpass.count");
    let script = h.path("askpass-retry");
    std::fs::write(h.path("retry.right"), &h.password)?;
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nif [ -e '{c}' ]; then cat '{r}'; else touch '{c}'; echo wrong-first; fi\n",
            c = counter.display(),
            r = h.path("retry.right").display()
        ),
    )?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700))?;
    let out = blocking(|| {
        Command::new("ssh")
            // ssh keeps the first value of an option: this must come before `base_opts`
            // (which allows one prompt).
            .args(["-o", "NumberOfPasswordPrompts=2"])
            .args(base_opts(&h))
            .args(["-o", "PreferredAuthentications=password"])
            .args([
                "-o",
                "PubkeyAuthentication=no",
                "-o",
                "BatchMode=no",
                "-o",
                "LogLevel=ERROR",
            ])
            .arg(format!("{user}@127.0.0.1"))
            .arg("echo retried")
            .env("SSH_ASKPASS", &script)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("DISPLAY", ":0")
            .stdin(Stdio::null())
            .output()
    })?;
    assert!(
        out.status.success(),
        "the second, right answer must log in: {}",
        text(&out)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "retried\n");
    assert!(
        counter.exists(),
        "the first (wrong) answer was never asked for"
    );
    let audit = h.store.audit_events(50).await?;
    let outcomes: Vec<&str> = audit
        .iter()
        .filter(|r| r.event.method.as_deref() == Some("password"))
        .map(|r| r.event.outcome.as_str())
        .collect();
    assert!(
        outcomes.contains(&"failure") && outcomes.contains(&"success"),
        "one failure then one success on the same connection: {outcomes:?}"
    );
    Ok(())
}

/// Wrong password, unknown server, not-a-server name and disabled owner: the client sees the
/// same thing, and the gateway spends the same bcrypt on each.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refusals_look_like_a_wrong_password() -> Result<()> {
    logs();
    let h = GatewayHarness::start("auth_refusals").await?;
    let user = h.user();
    let right = askpass(h.dir.path(), "right", &h.password)?;
    let wrong = askpass(h.dir.path(), "wrong", "definitely-wrong-77")?;

    let unknown = "server987654";
    let transcript = |askp: &Path, u: &str| -> Result<(Vec<String>, Duration)> {
        let t = Instant::now();
        let out = Command::new("ssh")
            .args(base_opts(&h))
            .args([
                "-o",
                "PreferredAuthentications=password",
                "-o",
                "PubkeyAuthentication=no",
            ])
            .args(["-o", "BatchMode=no", "-o", "LogLevel=DEBUG1"])
            .arg(format!("{u}@127.0.0.1"))
            .arg("true")
            .env("SSH_ASKPASS", askp)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("DISPLAY", ":0")
            .stdin(Stdio::null())
            .output()?;
        if out.status.code() != Some(255) {
            bail!("{u}: expected a refusal, got {}", text(&out));
        }
        Ok((auth_transcript(&out, u), t.elapsed()))
    };
    let (wrong_pw, t_wrong) = blocking(|| transcript(&wrong, &user))?;
    let (unknown_srv, t_unknown) = blocking(|| transcript(&right, unknown))?;
    let (not_server, t_name) = blocking(|| transcript(&right, "root"))?;
    h.store.set_enabled(&h.account, false).await?;
    let (disabled, t_disabled) = blocking(|| transcript(&right, &user))?;
    h.store.set_enabled(&h.account, true).await?;

    assert!(
        wrong_pw.iter().any(|l| l.contains("Permission denied")),
        "{wrong_pw:?}"
    );
    assert_eq!(unknown_srv, wrong_pw, "unknown server");
    assert_eq!(not_server, wrong_pw, "not a server name");
    assert_eq!(disabled, wrong_pw, "disabled owner");
    // Timing is asserted in `every_refusal_spends_one_bcrypt`, where it can fail: here the
    // rejection padding (300 ms) is larger than a cost-4 bcrypt, so timing shows nothing.
    let _ = (t_wrong, t_unknown, t_name, t_disabled);
    // And re-enabled, the right password works again (the refusals did not lock the owner out).
    let out = blocking(|| ssh_password(&h, &right, "password", "127.0.0.1", &user, "echo back"))?;
    assert!(out.status.success(), "{}", text(&out));

    let audit = h.store.audit_events(200).await?;
    let reasons: Vec<String> = audit
        .iter()
        .filter(|r| r.event.outcome == "failure")
        .filter_map(|r| {
            r.event
                .detail
                .get("reason")
                .and_then(|v| v.as_str())
                .map(str::to_string)
        })
        .collect();
    for want in [
        "wrong password",
        "unknown server",
        "not a server name",
        "login not allowed",
    ] {
        assert!(
            reasons.iter().any(|r| r.starts_with(want)),
            "no audit reason {want:?} in {reasons:?}"
        );
    }
    Ok(())
}

/// Wrong password, unknown server, not-a-server name and disabled owner each spend one bcrypt
/// of the production shape: only the password step is timed (paramiko, key exchange done
/// first), the rejection padding is 1 ms so it hides nothing, and bcrypt costs ~50-100 ms at
/// cost 10. A path that skipped bcrypt would answer in a few milliseconds and fail both the
/// floor (half a measured bcrypt) and the ratio to the wrong-password case.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_refusal_spends_one_bcrypt() -> Result<()> {
    logs();
    let cost = 10;
    let mut opts = Options::default();
    opts.ssh.auth.bcrypt_dummy_cost = cost;
    opts.ssh.auth.rejection_delay_ms = 1;
    let h = GatewayHarness::start_with("auth_timing", opts).await?;
    let hash = tenants::password::hash(&h.password, cost).map_err(|e| anyhow::anyhow!("{e}"))?;
    h.store.set_password(&h.account, Some(hash.clone())).await?;
    // What one bcrypt verify at this cost takes on this machine right now.
    let bcrypt_time = blocking(|| {
        let mut v: Vec<Duration> = (0..3)
            .map(|_| {
                let t = Instant::now();
                let _ = tenants::password::verify("not-the-password", &hash);
                t.elapsed()
            })
            .collect();
        v.sort();
        v[1]
    });
    let user = h.user();
    let port = h.addr.port().to_string();
    let script = h.path("auth_timing.py");
    std::fs::write(&script, include_str!("hostile/auth_timing.py"))?;
    let time = |source: &str, u: &str, pw: &str| -> Result<Duration> {
        let out = Command::new(python())
            .arg(&script)
            .args(["127.0.0.1", &port, source, u, pw, "3"])
            .output()
            .context("run auth_timing.py (needs python3-paramiko)")?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("auth_timing.py: {}", String::from_utf8_lossy(&out.stderr)))?;
        if v["outcome"] != "denied" {
            bail!("{u} from {source}: expected a refusal, got {v}");
        }
        let mut times: Vec<f64> = v["times"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
            .unwrap_or_default();
        times.sort_by(f64::total_cmp);
        let median = times.get(times.len() / 2).copied().context("no times")?;
        Ok(Duration::from_secs_f64(median))
    };
    let wrong = blocking(|| time("127.0.0.31", &user, "definitely-wrong-77"))?;
    let unknown = blocking(|| time("127.0.0.32", "server987654", &h.password))?;
    let name = blocking(|| time("127.0.0.33", "root", &h.password))?;
    h.store.set_enabled(&h.account, false).await?;
    let disabled = blocking(|| time("127.0.0.34", &user, &h.password));
    h.store.set_enabled(&h.account, true).await?;
    let disabled = disabled?;
    eprintln!(
        "bcrypt(cost {cost}) {bcrypt_time:?}; password step: wrong {wrong:?}, unknown server \
         {unknown:?}, not a server {name:?}, disabled owner {disabled:?}"
    );
    for (what, t) in [
        ("wrong password", wrong),
        ("unknown server", unknown),
        ("not a server name", name),
        ("disabled owner", disabled),
    ] {
        assert!(
            t >= bcrypt_time / 2,
            "{what}: {t:?} is less than half a bcrypt ({bcrypt_time:?}): bcrypt skipped?"
        );
        let ratio = t.as_secs_f64() / wrong.as_secs_f64();
        assert!(
            (0.6..1.67).contains(&ratio),
            "{what}: {t:?} vs wrong password {wrong:?} (ratio {ratio:.2})"
        );
    }
    Ok(())
}

/// A key probe (unsigned offer) is accepted for any `server<N>`, so the client cannot tell an
/// existing server, a missing one or a disabled owner apart by probing keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn key_probe_reveals_nothing() -> Result<()> {
    logs();
    let h = GatewayHarness::start("auth_probe").await?;
    let user = h.user();
    let other = h.path("id_other");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "other", "-f"])
        .arg(&other)
        .status()?;
    assert!(st.success());

    let unauthorized = blocking(|| ssh_key(&h, &other, "127.0.0.1", &user, true))?;
    let unknown = blocking(|| ssh_key(&h, &h.key, "127.0.0.1", "server987654", true))?;
    let unknown_other = blocking(|| ssh_key(&h, &other, "127.0.0.1", "server987654", true))?;
    h.store.set_enabled(&h.account, false).await?;
    let disabled = blocking(|| ssh_key(&h, &h.key, "127.0.0.1", &user, true))?;
    h.store.set_enabled(&h.account, true).await?;

    let a = auth_transcript(&unauthorized, &user);
    assert!(
        a.iter().any(|l| l == "server accepts key"),
        "probe must be accepted: {}",
        text(&unauthorized)
    );
    assert!(a.iter().any(|l| l.contains("Permission denied")), "{a:?}");
    assert_eq!(
        auth_transcript(&unknown, "server987654"),
        a,
        "unknown server, authorized key"
    );
    assert_eq!(
        auth_transcript(&unknown_other, "server987654"),
        a,
        "unknown server, other key"
    );
    assert_eq!(auth_transcript(&disabled, &user), a, "disabled owner");

    let ok = blocking(|| ssh_key(&h, &h.key, "127.0.0.1", &user, true))?;
    assert!(ok.status.success(), "{}", text(&ok));
    Ok(())
}

/// paramiko password storm from 127.0.0.2 against the owner's server; the owner's logins from
/// their usual address (127.0.0.4, password) and from a new address (127.0.0.3, key) still
/// succeed promptly, and the storm gets banned without a bcrypt per attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn password_storm_does_not_delay_a_legitimate_login() -> Result<()> {
    logs();
    // Production-like bcrypt (cost 10 here, ~4x cheaper than the default 12) so a storm that
    // reached bcrypt would hurt.
    let cost = 10;
    let mut opts = Options::default();
    opts.ssh.auth.bcrypt_dummy_cost = cost;
    let h = GatewayHarness::start_with("auth_storm", opts).await?;
    let hash = tenants::password::hash(&h.password, cost).map_err(|e| anyhow::anyhow!("{e}"))?;
    h.store.set_password(&h.account, Some(hash)).await?;
    let user = h.user();
    let right = askpass(h.dir.path(), "right", &h.password)?;

    // Baseline from the usual address (this also makes it "usual").
    let t = Instant::now();
    let out = blocking(|| ssh_password(&h, &right, "password", "127.0.0.4", &user, "true"))?;
    let baseline = t.elapsed();
    assert!(out.status.success(), "baseline: {}", text(&out));

    let script = h.path("storm.py");
    std::fs::write(&script, STORM_PY)?;
    let mut storm = Command::new(python())
        .arg(&script)
        .args([
            "127.0.0.1",
            &h.addr.port().to_string(),
            &user,
            "127.0.0.2",
            "8",
            "12",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("start paramiko storm (needs python3-paramiko)")?;
    let storm_guard = KillOnDrop(storm.id());
    tokio::time::sleep(Duration::from_secs(3)).await;

    let t = Instant::now();
    let out = blocking(|| ssh_password(&h, &right, "password", "127.0.0.4", &user, "echo owner"))?;
    let during = t.elapsed();
    assert!(
        out.status.success(),
        "owner password login during the storm: {}",
        text(&out)
    );

    let t = Instant::now();
    let out = blocking(|| ssh_key(&h, &h.key, "127.0.0.3", &user, false))?;
    let key_during = t.elapsed();
    assert!(
        out.status.success(),
        "key login from a new address during the storm: {}",
        text(&out)
    );

    let storm_out = blocking(|| storm.wait_with_output_by_ref())?;
    drop(storm_guard);
    let report = String::from_utf8_lossy(&storm_out.0);
    eprintln!(
        "baseline {baseline:?}, owner during storm {during:?}, key from new address {key_during:?}; \
         storm: {report}"
    );
    let attempts: u64 = report
        .split_whitespace()
        .find_map(|w| w.strip_prefix("attempts=").and_then(|v| v.parse().ok()))
        .unwrap_or(0);
    assert!(
        attempts > 0,
        "the storm did nothing: {report} {}",
        String::from_utf8_lossy(&storm_out.1)
    );
    assert!(
        during < baseline * 3 + Duration::from_secs(2),
        "owner login took {during:?} during the storm vs {baseline:?} before"
    );
    assert!(
        key_during < Duration::from_secs(5),
        "key login took {key_during:?}"
    );

    // The storm address was banned, and bcrypt ran for only a small part of its tries.
    let audit = h.store.audit_events(5_000).await?;
    let from_storm = |outcome: &str| {
        audit
            .iter()
            .filter(|r| {
                r.event
                    .peer
                    .as_deref()
                    .is_some_and(|p| p.starts_with("127.0.0.2"))
            })
            .filter(|r| r.event.outcome == outcome)
            .count()
    };
    assert!(
        from_storm("banned") >= 1,
        "no ban recorded for the storm address"
    );
    let verified = from_storm("failure");
    assert!(
        verified <= 20,
        "{verified} storm attempts reached bcrypt (of {attempts})"
    );
    Ok(())
}

/// No password — right or wrong, any method, any client — appears in the logs or the audit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_password_in_logs_or_audit() -> Result<()> {
    logs();
    let h = GatewayHarness::start("auth_nolog").await?;
    let user = h.user();
    let wrong_secret = format!("Wr0ng-{}-pa55", std::process::id());
    let right = askpass(h.dir.path(), "right", &h.password)?;
    let wrong = askpass(h.dir.path(), "wrong", &wrong_secret)?;
    for method in ["password", "keyboard-interactive"] {
        let out = blocking(|| ssh_password(&h, &right, method, "127.0.0.1", &user, "true"))?;
        assert!(out.status.success(), "{}", text(&out));
        let out = blocking(|| ssh_password(&h, &wrong, method, "127.0.0.1", &user, "true"))?;
        assert!(!out.status.success());
        let out =
            blocking(|| ssh_password(&h, &wrong, method, "127.0.0.1", "server987654", "true"))?;
        assert!(!out.status.success());
    }
    // paramiko, too (an independent client implementation).
    let script = h.path("login.py");
    std::fs::write(&script, LOGIN_PY)?;
    for pw in [h.password.as_str(), wrong_secret.as_str()] {
        let out = blocking(|| {
            Command::new(python())
                .arg(&script)
                .args(["127.0.0.1", &h.addr.port().to_string(), &user, pw])
                .output()
        })?;
        let said = String::from_utf8_lossy(&out.stdout);
        let want = if pw == h.password { "ok" } else { "denied" };
        assert_eq!(
            said.trim(),
            want,
            "paramiko: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Let the audit queue drain.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let logged = logs_text();
    assert!(
        logged.contains("auth attempt"),
        "the capture saw no auth events:\n{logged}"
    );
    let audit = format!("{:?}", h.store.audit_events(1_000).await?);
    assert!(
        audit.contains("password"),
        "no password-method audit rows: {audit}"
    );
    for secret in [h.password.as_str(), wrong_secret.as_str()] {
        assert!(!logged.contains(secret), "a password appeared in the logs");
        assert!(
            !audit.contains(secret),
            "a password appeared in the audit table"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------

struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.0.to_string())
            .stderr(Stdio::null())
            .status();
    }
}

trait WaitByRef {
    fn wait_with_output_by_ref(&mut self) -> Result<(Vec<u8>, Vec<u8>)>;
}

impl WaitByRef for std::process::Child {
    fn wait_with_output_by_ref(&mut self) -> Result<(Vec<u8>, Vec<u8>)> {
        use std::io::Read as _;
        let mut out = Vec::new();
        let mut err = Vec::new();
        if let Some(mut o) = self.stdout.take() {
            o.read_to_end(&mut out)?;
        }
        if let Some(mut e) = self.stderr.take() {
            e.read_to_end(&mut err)?;
        }
        self.wait()?;
        Ok((out, err))
    }
}

/// paramiko password storm: THREADS threads for SECONDS seconds, each connecting from SOURCE and
/// trying wrong passwords until the connection is closed; prints counts.
const STORM_PY: &str = r#"
import socket, sys, threading, time, logging
import paramiko
logging.disable(logging.CRITICAL)
host, port, user, source, threads, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]), float(sys.argv[6])
stats = {"attempts": 0, "connections": 0, "refused": 0}
lock = threading.Lock()
deadline = time.time() + seconds
# One password guess per connection: russh stops offering "password" after a failure and
# paramiko re-requests the userauth service per call, so reconnecting is the portable storm.
def worker(n):
    i = 0
    while time.time() < deadline:
        i += 1
        t = None
        try:
            sock = socket.create_connection((host, port), timeout=5, source_address=(source, 0))
            t = paramiko.Transport(sock)
            t.start_client(timeout=5)
            with lock: stats["connections"] += 1
            with lock: stats["attempts"] += 1
            t.auth_password(user, "storm-guess-%d-%d" % (n, i), fallback=False)
        except paramiko.AuthenticationException:
            pass
        except Exception:
            with lock: stats["refused"] += 1
            time.sleep(0.01)
        finally:
            if t is not None: t.close()
ts = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
for t in ts: t.start()
for t in ts: t.join()
print(" ".join("%s=%d" % kv for kv in stats.items()))
"#;

/// One paramiko password login running `true`; prints ok or denied.
const LOGIN_PY: &str = r#"
import sys, logging
import paramiko
logging.disable(logging.CRITICAL)
host, port, user, pw = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
c = paramiko.SSHClient()
c.set_missing_host_key_policy(paramiko.AutoAddPolicy())
try:
    c.connect(host, port=port, username=user, password=pw, allow_agent=False, look_for_keys=False, timeout=20)
    _, out, _ = c.exec_command("true")
    out.channel.recv_exit_status()
    print("ok")
except paramiko.AuthenticationException:
    print("denied")
finally:
    c.close()
"#;

/// An owner's automation is not an attack: 300 key logins from one address within a minute all
/// succeed with the shipped connection budget (a burst of 32), because each authenticated
/// connection gives its cell back. Connections that never authenticate still spend it: a run of
/// connect-and-close from another address is cut off at the burst.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn owner_automation_keeps_its_connection_budget() -> Result<()> {
    let h = GatewayHarness::start("auth_loop").await?;
    // `Options::default()` keeps the shipped connection budget.
    let defaults = gateway::Config::default().auth;
    const LOGINS: usize = 300;
    const WORKERS: usize = 3;
    let t = Instant::now();
    let failures = blocking(|| -> Result<Vec<String>> {
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..WORKERS)
                .map(|w| {
                    let h = &h;
                    scope.spawn(move || -> Result<Vec<String>> {
                        let mut failed = Vec::new();
                        for i in (w..LOGINS).step_by(WORKERS) {
                            let out = h
                                .ssh()
                                .arg("-o")
                                .arg("BindAddress=127.0.0.5")
                                .arg(format!("{}@127.0.0.1", h.user()))
                                .arg("true")
                                .output()
                                .context("run ssh")?;
                            if !out.status.success() {
                                failed.push(format!("#{i}: {}", text(&out)));
                            }
                        }
                        Ok(failed)
                    })
                })
                .collect();
            let mut all = Vec::new();
            for w in workers {
                let got = w
                    .join()
                    .map_err(|_| anyhow::anyhow!("login worker panicked"))??;
                all.extend(got);
            }
            Ok(all)
        })
    })?;
    let took = t.elapsed();
    assert!(
        failures.is_empty(),
        "{} of {LOGINS} logins failed in {took:?}; first: {:?}",
        failures.len(),
        failures.first()
    );
    eprintln!("{LOGINS} key logins from one address in {took:?}");

    // Abandoned connections from 127.0.0.1 (never authenticated) are charged: one after the
    // other, each waits for the banner and closes, until one is closed unanswered. That must
    // happen within the burst plus whatever refilled meanwhile (one cell per interval), however
    // fast or slow the machine is.
    let port = h.addr.port();
    let burst = defaults.connections_per_ip_burst as usize;
    let interval = Duration::from_millis(defaults.connections_per_ip_interval_ms);
    let (first_refused, took) = blocking(|| -> Result<(Option<usize>, Duration)> {
        use std::io::Read;
        let t = Instant::now();
        for i in 0..burst * 8 {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(Duration::from_secs(20)))?;
            let mut buf = [0u8; 4];
            // A banner means admitted; EOF or a reset before any byte means refused.
            if !matches!(s.read(&mut buf), Ok(n) if n > 0) {
                return Ok((Some(i), t.elapsed()));
            }
        }
        Ok((None, t.elapsed()))
    })?;
    let refilled = (took.as_millis() / interval.as_millis().max(1)) as usize;
    match first_refused {
        Some(i) => assert!(
            i <= burst + refilled + 1,
            "abandoned connection #{i} was still admitted (burst {burst}, {refilled} refilled in {took:?})"
        ),
        None => assert!(
            burst + refilled + 1 >= burst * 8,
            "{} abandoned connections in {took:?} were all admitted (burst {burst})",
            burst * 8
        ),
    }
    Ok(())
}
