//! Running the `nft` binary: one JSON batch on stdin per transaction, stdout and stderr both
//! captured (the `nftables` crate's helpers drop stderr, which is where nft says what is wrong).
//!
//! This is the only module that starts processes; it knows nothing about berth's policy.

use std::process::Stdio;

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error(
        "the nft binary {0:?} was not found (install the nftables package or set netfilter.nft)"
    )]
    NotFound(String),
    #[error("cannot run {program:?}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error(
        "nft needs CAP_NET_ADMIN to {what}: run berth as root or grant it CAP_NET_ADMIN (nft said: {stderr})"
    )]
    PermissionDenied { what: String, stderr: String },
    #[error(
        "berth lacks CAP_NET_ADMIN, which nft needs to {0}: run berth as root or grant it CAP_NET_ADMIN"
    )]
    NoCapability(String),
    #[error("nft failed to {what}: {stderr}")]
    Failed { what: String, stderr: String },
    #[error("nft printed json berth cannot read while trying to {what}: {source}")]
    Json {
        what: String,
        source: serde_json::Error,
    },
}

/// Handle on the `nft` executable.
#[derive(Debug, Clone)]
pub struct Nft {
    program: String,
}

const CAP_NET_ADMIN: u32 = 12;

/// Whether this process has CAP_NET_ADMIN in its effective set (`None` if unknown).
pub fn has_cap_net_admin() -> Option<bool> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    let caps = u64::from_str_radix(hex, 16).ok()?;
    Some(caps & (1 << CAP_NET_ADMIN) != 0)
}

impl Nft {
    pub fn new(program: impl Into<String>) -> Self {
        Self {
            program: program.into(),
        }
    }

    /// Fails early with a clear message when nft cannot work here.
    pub fn preflight(&self, what: &str) -> Result<(), NftError> {
        if has_cap_net_admin() == Some(false) {
            return Err(NftError::NoCapability(what.to_string()));
        }
        Ok(())
    }

    async fn run(
        &self,
        args: &[&str],
        stdin: Option<&str>,
        what: &str,
    ) -> Result<String, NftError> {
        let mut cmd = Command::new(&self.program);
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => NftError::NotFound(self.program.clone()),
            _ => NftError::Spawn {
                program: self.program.clone(),
                source: e,
            },
        })?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A write error means nft exited early; its stderr below says why.
            let _ = pipe.write_all(input.as_bytes()).await;
            drop(pipe);
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| NftError::Spawn {
                program: self.program.clone(),
                source: e,
            })?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        let stderr = if stderr.is_empty() {
            format!("exit status {}", out.status)
        } else {
            stderr
        };
        if stderr.contains("Operation not permitted") {
            return Err(NftError::PermissionDenied {
                what: what.to_string(),
                stderr,
            });
        }
        Err(NftError::Failed {
            what: what.to_string(),
            stderr,
        })
    }

    /// Commits one batch (an nft JSON document) as one transaction (`nft -j -f -`).
    pub async fn apply(&self, batch: &Value, what: &str) -> Result<(), NftError> {
        let json = batch.to_string();
        self.run(&["-j", "-f", "-"], Some(&json), what)
            .await
            .map(|_| ())
    }

    /// Sends a batch to the kernel for validation only (`nft -c`): nothing is committed.
    pub async fn check(&self, batch: &Value, what: &str) -> Result<(), NftError> {
        let json = batch.to_string();
        self.run(&["-c", "-j", "-f", "-"], Some(&json), what)
            .await
            .map(|_| ())
    }

    /// The objects of one table (`nft -j list table FAMILY NAME`), `None` when it does not exist.
    pub async fn list_table(
        &self,
        family: &str,
        name: &str,
    ) -> Result<Option<Vec<Value>>, NftError> {
        let what = format!("list table {family} {name}");
        match self
            .run(&["-j", "list", "table", family, name], None, &what)
            .await
        {
            Ok(out) => {
                let v: Value = serde_json::from_str(&out).map_err(|e| NftError::Json {
                    what: what.clone(),
                    source: e,
                })?;
                let objects = v
                    .get("nftables")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                Ok(Some(objects))
            }
            Err(NftError::Failed { stderr, .. })
                if stderr.contains("No such file or directory") =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Human-readable listing of one table, `None` when it does not exist.
    pub async fn list_table_text(
        &self,
        family: &str,
        name: &str,
    ) -> Result<Option<String>, NftError> {
        let what = format!("list table {family} {name}");
        match self
            .run(&["list", "table", family, name], None, &what)
            .await
        {
            Ok(out) => Ok(Some(out)),
            Err(NftError::Failed { stderr, .. })
                if stderr.contains("No such file or directory") =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Starts `nft monitor` (text); each line on stdout is a ruleset change somewhere.
    pub fn monitor(&self) -> Result<tokio::process::Child, NftError> {
        Command::new(&self.program)
            .arg("monitor")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => NftError::NotFound(self.program.clone()),
                _ => NftError::Spawn {
                    program: self.program.clone(),
                    source: e,
                },
            })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    //! A fake `nft` (a shell script) stands in for the real one: these tests never touch the
    //! machine's ruleset.
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn fake_nft(dir: &std::path::Path, body: &str) -> String {
        let path = dir.join("nft");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path.to_string_lossy().into_owned()
    }

    #[tokio::test]
    async fn missing_binary_is_named() {
        let err = Nft::new("/nonexistent/nft")
            .apply(&serde_json::json!({"nftables": []}), "apply")
            .await
            .unwrap_err();
        assert!(matches!(err, NftError::NotFound(_)));
        assert!(err.to_string().contains("/nonexistent/nft"), "{err}");
        assert!(err.to_string().contains("nftables package"), "{err}");
    }

    #[tokio::test]
    async fn stderr_is_reported_and_permission_is_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let nft = fake_nft(
            dir.path(),
            "cat >/dev/null; echo 'Error: Could not process rule: Operation not permitted' >&2; exit 1",
        );
        let err = Nft::new(nft)
            .apply(&serde_json::json!({"nftables": []}), "apply x")
            .await
            .unwrap_err();
        assert!(matches!(err, NftError::PermissionDenied { .. }), "{err:?}");
        assert!(err.to_string().contains("CAP_NET_ADMIN"), "{err}");

        let nft = fake_nft(
            dir.path(),
            "cat >/dev/null; echo 'Error: syntax error near x' >&2; exit 1",
        );
        let err = Nft::new(nft)
            .apply(&serde_json::json!({"nftables": []}), "apply x")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("syntax error near x"), "{err}");
        assert!(err.to_string().contains("apply x"), "{err}");
    }

    #[tokio::test]
    async fn batch_goes_to_stdin_and_absent_tables_are_none() {
        let dir = tempfile::tempdir().unwrap();
        let seen = dir.path().join("seen");
        let nft = fake_nft(
            dir.path(),
            &format!("echo \"$@\" >> {0}; cat >> {0}; exit 0", seen.display()),
        );
        Nft::new(nft)
            .apply(&serde_json::json!({"nftables": [1]}), "apply")
            .await
            .unwrap();
        let text = std::fs::read_to_string(&seen).unwrap();
        assert!(text.contains("-j -f -"), "{text}");
        assert!(text.contains(r#"{"nftables":[1]}"#), "{text}");

        let nft = fake_nft(
            dir.path(),
            "echo 'Error: No such file or directory' >&2; exit 1",
        );
        assert!(
            Nft::new(nft)
                .list_table("inet", "berth")
                .await
                .unwrap()
                .is_none()
        );
        let nft = fake_nft(
            dir.path(),
            r#"echo '{"nftables": [{"table": {"family": "inet", "name": "berth"}}]}'"#,
        );
        let objs = Nft::new(nft)
            .list_table("inet", "berth")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(objs.len(), 1);
    }
}
