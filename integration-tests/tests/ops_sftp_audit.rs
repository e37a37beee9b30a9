//! SFTP audit per operation with the real OpenSSH `sftp -b` against the tenant's own
//! `sftp-server`: put, get, rename, chmod, symlink, mkdir, rmdir and rm produce exactly the
//! expected audit rows (path, flags, mode, bytes per handle, outcome), and the files are intact.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use integration_tests::gateway::{GatewayHarness, sha256_file};

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// The SFTP audit rows as (op, outcome, detail without "op" and "kind"), oldest first.
async fn sftp_rows(h: &GatewayHarness) -> Result<Vec<(String, String, serde_json::Value)>> {
    let mut rows: Vec<_> = h
        .store
        .audit_events(1000)
        .await?
        .into_iter()
        .filter(|e| e.event.detail.get("kind").and_then(|k| k.as_str()) == Some("sftp"))
        .map(|e| {
            let mut d = e.event.detail.clone();
            if let Some(m) = d.as_object_mut() {
                m.remove("kind");
                m.remove("op");
            }
            (e.id, e.event.method.unwrap_or_default(), e.event.outcome, d)
        })
        .collect();
    rows.sort_by_key(|r| r.0);
    Ok(rows.into_iter().map(|(_, m, o, d)| (m, o, d)).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sftp_batch_gives_exactly_the_expected_audit_rows() -> Result<()> {
    let h = GatewayHarness::start("sftpaudit").await?;
    let src = h.path("src.bin");
    let size = 3 * 1024 * 1024 + 77;
    std::fs::write(
        &src,
        (0..size).map(|i| (i % 251) as u8).collect::<Vec<u8>>(),
    )?;
    let back = h.path("back.bin");
    let batch = h.path("batch");
    std::fs::write(
        &batch,
        format!(
            "put {} up.bin\nrename up.bin moved.bin\nchmod 600 moved.bin\nget moved.bin {}\n\
             symlink moved.bin link\nmkdir d\nrmdir d\nrm link\nrm moved.bin\n-rm missing\n",
            src.display(),
            back.display()
        ),
    )?;
    let out = blocking(|| {
        Command::new("sftp")
            .args(h.ssh_opts())
            .arg("-P")
            .arg(h.addr.port().to_string())
            .arg("-b")
            .arg(&batch)
            .arg(format!("{}@127.0.0.1", h.user()))
            .stdin(Stdio::null())
            .output()
    })?;
    assert!(
        out.status.success(),
        "sftp failed: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sha256_file(&src)?, sha256_file(&back)?);

    let home = "/home/tenant";
    let want: Vec<(&str, &str, serde_json::Value)> = vec![
        (
            "open",
            "ok",
            serde_json::json!({"path": format!("{home}/up.bin"), "flags": "write,create,truncate", "mode": "644"}),
        ),
        (
            "close",
            "ok",
            serde_json::json!({"path": format!("{home}/up.bin"), "flags": "write,create,truncate", "bytes_read": 0, "bytes_written": size}),
        ),
        (
            "rename",
            "ok",
            serde_json::json!({"from": format!("{home}/up.bin"), "to": format!("{home}/moved.bin")}),
        ),
        (
            "setstat",
            "ok",
            serde_json::json!({"path": format!("{home}/moved.bin"), "attrs": {"mode": "600"}}),
        ),
        (
            "open",
            "ok",
            serde_json::json!({"path": format!("{home}/moved.bin"), "flags": "read"}),
        ),
        (
            "close",
            "ok",
            serde_json::json!({"path": format!("{home}/moved.bin"), "flags": "read", "bytes_read": size, "bytes_written": 0}),
        ),
        (
            "symlink",
            "ok",
            // The target as the client wrote it (a symlink's target is not resolved).
            serde_json::json!({"target": "moved.bin", "link": format!("{home}/link")}),
        ),
        (
            "mkdir",
            "ok",
            serde_json::json!({"path": format!("{home}/d"), "mode": "777"}),
        ),
        (
            "rmdir",
            "ok",
            serde_json::json!({"path": format!("{home}/d")}),
        ),
        (
            "remove",
            "ok",
            serde_json::json!({"path": format!("{home}/link")}),
        ),
        (
            "remove",
            "ok",
            serde_json::json!({"path": format!("{home}/moved.bin")}),
        ),
        (
            "remove",
            "no_such_file",
            serde_json::json!({"path": format!("{home}/missing")}),
        ),
    ];
    // The rows are written by a task of the session's own after the operations: wait for them.
    let deadline = Instant::now() + Duration::from_secs(30);
    let rows = loop {
        let rows = sftp_rows(&h).await?;
        if rows.len() >= want.len() || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let got: Vec<(&str, &str, serde_json::Value)> = rows
        .iter()
        .map(|(m, o, d)| (m.as_str(), o.as_str(), d.clone()))
        .collect();
    if got != want {
        bail!(
            "audit rows differ:\n got: {}\nwant: {}",
            serde_json::to_string_pretty(&got)?,
            serde_json::to_string_pretty(&want)?
        );
    }
    let id = h.server.context("server")?;
    let ls = h.docker_exec(id, &["ls", "-A", home])?;
    let ls = String::from_utf8_lossy(&ls.stdout);
    assert!(!ls.contains("moved.bin") && !ls.contains("link"), "{ls}");
    Ok(())
}
