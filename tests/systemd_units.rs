//! The unit files in `systemd/` are part of the product: they must pass `systemd-analyze
//! verify` and keep an exposure score of "OK" or better (≤ 3.0) under
//! `systemd-analyze security --offline=true`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::{Path, PathBuf};
use std::process::Command;

fn units() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|s| s.to_str()),
                Some("service" | "target" | "socket")
            )
        })
        .collect();
    v.sort();
    assert!(
        v.len() >= 5,
        "expected gateway, dns, netfilter services, a target and a socket: {v:?}"
    );
    v
}

/// Copies the units into a temp dir with ExecStart pointing at the binary under test, so that
/// `verify` can check the command exists and is executable.
fn staged_units() -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = env!("CARGO_BIN_EXE_berth");
    let mut out = Vec::new();
    for unit in units() {
        let text = std::fs::read_to_string(&unit).expect("read unit");
        let text = text.replace("/usr/local/bin/berth", bin);
        let dest = dir.path().join(unit.file_name().expect("file name"));
        std::fs::write(&dest, text).expect("write unit");
        out.push(dest);
    }
    (dir, out)
}

fn systemd_analyze() -> &'static str {
    let ok = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .map(|o| o.status.success());
    assert!(
        matches!(ok, Ok(true)),
        "systemd-analyze is missing: install the `systemd` package (scripts/test does)"
    );
    "systemd-analyze"
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let tool = systemd_analyze();
    let (_dir, staged) = staged_units();
    let out = Command::new(tool)
        .arg("verify")
        .args(&staged)
        .output()
        .expect("run systemd-analyze verify");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // verify complains about units it cannot see (docker.service on a host without it);
    // anything about our own units is a failure.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("berth"))
        .filter(|l| !l.contains("docker.service"))
        .collect();
    assert!(
        ours.is_empty(),
        "systemd-analyze verify reported:\n{}",
        ours.join("\n")
    );
}

#[test]
fn every_service_is_rated_ok_or_better() {
    let tool = systemd_analyze();
    let (_dir, staged) = staged_units();
    for unit in staged
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "service"))
    {
        let out = Command::new(tool)
            .args(["security", "--offline=true", "--no-pager"])
            .arg(unit)
            .output()
            .expect("run systemd-analyze security");
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find(|l| l.contains("Overall exposure level"))
            .unwrap_or_else(|| panic!("no exposure line for {}:\n{text}", unit.display()));
        let score: f64 = line
            .split(':')
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("cannot parse exposure from {line:?}"));
        assert!(
            score <= 3.0,
            "{}: exposure {score} > 3.0 ({line})",
            unit.display()
        );
    }
}

#[test]
fn services_are_notify_with_watchdog_and_reload() {
    for unit in units()
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "service"))
    {
        let text = std::fs::read_to_string(unit).expect("read unit");
        for needle in [
            "Type=notify",
            "WatchdogSec=",
            "ExecReload=",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "CapabilityBoundingSet=",
            "SystemCallFilter=@system-service",
        ] {
            assert!(text.contains(needle), "{} lacks {needle}", unit.display());
        }
        assert!(
            text.contains("--config /etc/berth/berth.toml")
                || text.contains("LoadCredential=berth.toml:/etc/berth/berth.toml"),
            "{} must read /etc/berth/berth.toml",
            unit.display()
        );
    }
}
