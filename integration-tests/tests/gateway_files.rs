//! File transfer through the gateway with the real clients: sftp (put/get/ls/rename/rm), scp in
//! both modes (SFTP and legacy `-O`), rsync over ssh, and the message for an image without
//! sftp-server.

use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use integration_tests::gateway::{GatewayHarness, sha256_file};

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn random_file(path: &std::path::Path, bytes: u64) -> Result<()> {
    let st = Command::new("head")
        .args(["-c", &bytes.to_string(), "/dev/urandom"])
        .stdout(std::fs::File::create(path)?)
        .status()?;
    anyhow::ensure!(st.success(), "head failed");
    Ok(())
}

fn ssh_e(h: &GatewayHarness) -> String {
    format!("ssh -p {} {}", h.addr.port(), h.ssh_opts().join(" "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sftp_put_get_ls_rename_rm_byte_identical() -> Result<()> {
    let h = GatewayHarness::start("sftpops").await?;
    let src = h.path("src.bin");
    random_file(&src, 5 * 1024 * 1024 + 123)?;
    let back = h.path("back.bin");
    let batch = h.path("batch");
    std::fs::write(
        &batch,
        format!(
            "put {} up.bin\nls -l\nrename up.bin moved.bin\nget moved.bin {}\nrm moved.bin\nls\n",
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
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "sftp failed: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("up.bin"), "ls missing the upload: {text}");
    assert_eq!(sha256_file(&src)?, sha256_file(&back)?);
    let id = h.server.context("server")?;
    let ls = h.docker_exec(id, &["ls", "-A", "/home/tenant"])?;
    let ls = String::from_utf8_lossy(&ls.stdout);
    assert!(
        !ls.contains("moved.bin") && !ls.contains("up.bin"),
        "rm did not remove: {ls}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scp_both_modes_and_rsync() -> Result<()> {
    let h = GatewayHarness::start("scprsync").await?;
    let src = h.path("a.bin");
    random_file(&src, 3 * 1024 * 1024 + 7)?;
    let want = sha256_file(&src)?;
    let id = h.server.context("server")?;
    let remote_sum = |name: &str| -> Result<String> {
        let o = h.docker_exec(id, &["sha256sum", &format!("/home/tenant/{name}")])?;
        Ok(String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string())
    };
    for (mode, name) in [(None, "scp-sftp.bin"), (Some("-O"), "scp-legacy.bin")] {
        let out = blocking(|| {
            let mut c = Command::new("scp");
            c.args(h.ssh_opts())
                .arg("-P")
                .arg(h.addr.port().to_string());
            if let Some(m) = mode {
                c.arg(m);
            }
            c.arg(&src)
                .arg(format!("{}@127.0.0.1:{name}", h.user()))
                .stdin(Stdio::null());
            c.output()
        })?;
        assert!(
            out.status.success(),
            "scp {mode:?} up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(remote_sum(name)?, want, "scp {mode:?} upload differs");
        let back = h.path(&format!("{name}.back"));
        let out = blocking(|| {
            let mut c = Command::new("scp");
            c.args(h.ssh_opts())
                .arg("-P")
                .arg(h.addr.port().to_string());
            if let Some(m) = mode {
                c.arg(m);
            }
            c.arg(format!("{}@127.0.0.1:{name}", h.user()))
                .arg(&back)
                .stdin(Stdio::null());
            c.output()
        })?;
        assert!(
            out.status.success(),
            "scp {mode:?} down: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(sha256_file(&back)?, want, "scp {mode:?} download differs");
    }
    // rsync -e ssh, both directions.
    let dir = h.path("tree");
    std::fs::create_dir_all(dir.join("sub"))?;
    std::fs::copy(&src, dir.join("sub/x.bin"))?;
    std::fs::write(dir.join("y.txt"), "hello rsync\n")?;
    let out = blocking(|| {
        Command::new("rsync")
            .arg("-a")
            .arg("-e")
            .arg(ssh_e(&h))
            .arg(format!("{}/", dir.display()))
            .arg(format!("{}@127.0.0.1:tree/", h.user()))
            .stdin(Stdio::null())
            .output()
    })?;
    assert!(
        out.status.success(),
        "rsync up: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(remote_sum("tree/sub/x.bin")?, want);
    let down = h.path("tree-back");
    let out = blocking(|| {
        Command::new("rsync")
            .arg("-a")
            .arg("-e")
            .arg(ssh_e(&h))
            .arg(format!("{}@127.0.0.1:tree/", h.user()))
            .arg(format!("{}/", down.display()))
            .stdin(Stdio::null())
            .output()
    })?;
    assert!(
        out.status.success(),
        "rsync down: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sha256_file(&down.join("sub/x.bin"))?, want);
    assert_eq!(
        std::fs::read_to_string(down.join("y.txt"))?,
        "hello rsync\n"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sftp_without_sftp_server_says_so() -> Result<()> {
    let mut opts = integration_tests::gateway::Options::default();
    opts.ssh.sftp_server_paths = vec!["/nonexistent/sftp-server".into()];
    let h = GatewayHarness::start_with("nosftp", opts).await?;
    let out = blocking(|| {
        Command::new("sftp")
            .args(h.ssh_opts())
            .arg("-P")
            .arg(h.addr.port().to_string())
            .arg("-b")
            .arg("/dev/null")
            .arg(format!("{}@127.0.0.1", h.user()))
            .stdin(Stdio::null())
            .output()
    })?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no sftp-server"), "unclear message: {err}");
    Ok(())
}
