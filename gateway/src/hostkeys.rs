//! The gateway's SSH host keys: Ed25519 and RSA, generated once into the state dir and loaded on
//! every start, so clients' known_hosts stay valid across restarts and across gateways that share
//! the same files.
//!
//! Files are OpenSSH private-key format (what `ssh-keygen` writes and reads), mode 0600, in a
//! directory of mode 0700 when we create it. Generation is race-safe for several gateways starting
//! at once on a shared directory: each writes a private temporary file and hard-links it into
//! place, and whoever loses the race loads the winner's key. Keys readable by group or others are
//! refused, as sshd does. This module does not rotate keys or publish them anywhere.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::{KeypairData, RsaKeypair};
use russh::keys::ssh_key::rand_core::{TryCryptoRng, TryRng};
use russh::keys::{Algorithm, HashAlg, PrivateKey};
use serde::{Deserialize, Serialize};

/// `[ssh.auth.host_keys]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostKeyConfig {
    /// Ed25519 key file; default `<state_dir>/ssh_host_ed25519_key`.
    pub ed25519: Option<PathBuf>,
    /// RSA key file (served as rsa-sha2-512/256); default `<state_dir>/ssh_host_rsa_key`.
    pub rsa: Option<PathBuf>,
    /// Serve an RSA key at all (some old clients know nothing else).
    pub enable_rsa: bool,
    /// Size of a newly generated RSA key.
    pub rsa_bits: usize,
    /// Generate missing keys (false: a missing key file is an error — for gateways that must
    /// share keys provisioned elsewhere).
    pub generate: bool,
}

impl Default for HostKeyConfig {
    fn default() -> Self {
        Self {
            ed25519: None,
            rsa: None,
            enable_rsa: true,
            rsa_bits: 3072,
            generate: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    #[error("host key directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("host key {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("host key {path} is missing and ssh.auth.host_keys.generate is false")]
    Missing { path: PathBuf },
    #[error(
        "host key {path} is accessible by group or others (mode {mode:04o}); run chmod 600 on it"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("host key {path}: {detail}")]
    Format { path: PathBuf, detail: String },
    #[error("host key {path} holds a {found} key, expected {expected}")]
    WrongType {
        path: PathBuf,
        found: String,
        expected: &'static str,
    },
}

/// Which key a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Ed25519,
    Rsa { bits: usize },
}

impl KeyKind {
    fn name(self) -> &'static str {
        match self {
            KeyKind::Ed25519 => "ssh-ed25519",
            KeyKind::Rsa { .. } => "ssh-rsa",
        }
    }

    fn matches(self, key: &PrivateKey) -> bool {
        match self {
            KeyKind::Ed25519 => key.algorithm() == Algorithm::Ed25519,
            KeyKind::Rsa { .. } => matches!(key.algorithm(), Algorithm::Rsa { .. }),
        }
    }
}

/// Loads (or generates) every configured host key: Ed25519 first, then RSA.
pub fn load_or_generate(
    state_dir: &Path,
    cfg: &HostKeyConfig,
) -> Result<Vec<PrivateKey>, HostKeyError> {
    let ed = cfg
        .ed25519
        .clone()
        .unwrap_or_else(|| state_dir.join("ssh_host_ed25519_key"));
    let mut keys = vec![load_or_generate_one(&ed, KeyKind::Ed25519, cfg.generate)?];
    if cfg.enable_rsa {
        let rsa = cfg
            .rsa
            .clone()
            .unwrap_or_else(|| state_dir.join("ssh_host_rsa_key"));
        keys.push(load_or_generate_one(
            &rsa,
            KeyKind::Rsa { bits: cfg.rsa_bits },
            cfg.generate,
        )?);
    }
    Ok(keys)
}

/// SHA-256 fingerprints, for the start-up log line operators compare with clients' prompts.
pub fn fingerprints(keys: &[PrivateKey]) -> Vec<String> {
    keys.iter()
        .map(|k| {
            format!(
                "{} {}",
                k.algorithm(),
                k.public_key().fingerprint(HashAlg::Sha256)
            )
        })
        .collect()
}

/// Loads one key file, generating it first when missing (and `generate`).
pub fn load_or_generate_one(
    path: &Path,
    kind: KeyKind,
    generate: bool,
) -> Result<PrivateKey, HostKeyError> {
    match fs::symlink_metadata(path) {
        Ok(_) => return load(path, kind),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(HostKeyError::Io {
                path: path.into(),
                source,
            });
        }
    }
    if !generate {
        return Err(HostKeyError::Missing { path: path.into() });
    }
    let key = generate_key(kind).map_err(|detail| HostKeyError::Format {
        path: path.into(),
        detail,
    })?;
    match install(path, &key)? {
        Installed::Ours => Ok(key),
        // Another gateway generated it at the same moment: use theirs so all agree.
        Installed::Theirs => load(path, kind),
    }
}

fn load(path: &Path, kind: KeyKind) -> Result<PrivateKey, HostKeyError> {
    let meta = fs::metadata(path).map_err(|source| HostKeyError::Io {
        path: path.into(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(HostKeyError::Permissions {
            path: path.into(),
            mode,
        });
    }
    let text = fs::read(path).map_err(|source| HostKeyError::Io {
        path: path.into(),
        source,
    })?;
    let key = PrivateKey::from_openssh(&text).map_err(|e| HostKeyError::Format {
        path: path.into(),
        detail: e.to_string(),
    })?;
    if key.is_encrypted() {
        return Err(HostKeyError::Format {
            path: path.into(),
            detail: "the key is passphrase-protected; host keys must be unencrypted".into(),
        });
    }
    if !kind.matches(&key) {
        return Err(HostKeyError::WrongType {
            path: path.into(),
            found: key.algorithm().to_string(),
            expected: kind.name(),
        });
    }
    Ok(key)
}

/// rand_core 0.10 adapter over the thread-local CSPRNG (russh's ssh-key wants rand_core 0.10;
/// the workspace's `rand` is 0.9).
struct KeyRng(rand::rngs::ThreadRng);

impl TryRng for KeyRng {
    type Error = std::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(rand::RngCore::next_u32(&mut self.0))
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        Ok(rand::RngCore::next_u64(&mut self.0))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        rand::RngCore::fill_bytes(&mut self.0, dst);
        Ok(())
    }
}

impl TryCryptoRng for KeyRng {}

fn generate_key(kind: KeyKind) -> Result<PrivateKey, String> {
    let mut rng = KeyRng(rand::rng());
    let comment = "berth gateway host key";
    match kind {
        KeyKind::Ed25519 => {
            let mut key =
                PrivateKey::random(&mut rng, Algorithm::Ed25519).map_err(|e| e.to_string())?;
            key.set_comment(comment);
            Ok(key)
        }
        KeyKind::Rsa { bits } => {
            let pair = RsaKeypair::random(&mut rng, bits).map_err(|e| e.to_string())?;
            PrivateKey::new(KeypairData::from(pair), comment).map_err(|e| e.to_string())
        }
    }
}

enum Installed {
    Ours,
    Theirs,
}

fn install(path: &Path, key: &PrivateKey) -> Result<Installed, HostKeyError> {
    let io = |source| HostKeyError::Io {
        path: path.into(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| HostKeyError::Dir {
                path: dir.into(),
                source,
            })?;
    }
    let text = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| HostKeyError::Format {
            path: path.into(),
            detail: e.to_string(),
        })?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{file_name}.tmp-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        drop(f);
        match fs::hard_link(&tmp, path) {
            Ok(()) => Ok(Installed::Ours),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(Installed::Theirs),
            Err(e) => Err(io(e)),
        }
    })();
    let _ = fs::remove_file(&tmp);
    if matches!(result, Ok(Installed::Ours))
        && let Ok(d) = fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &Path) -> HostKeyConfig {
        // 1024-bit RSA keeps the unoptimised test build fast; production default is 3072.
        HostKeyConfig {
            ed25519: Some(dir.join("keys/ed")),
            rsa: Some(dir.join("keys/rsa")),
            rsa_bits: 1024,
            ..HostKeyConfig::default()
        }
    }

    #[test]
    fn generated_once_then_stable() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let c = cfg(tmp.path());
        let first = load_or_generate(tmp.path(), &c)?;
        assert_eq!(first.len(), 2);
        assert_eq!(first[0].algorithm(), Algorithm::Ed25519);
        assert!(matches!(first[1].algorithm(), Algorithm::Rsa { .. }));
        let second = load_or_generate(tmp.path(), &c)?;
        assert_eq!(fingerprints(&first), fingerprints(&second));
        for p in [c.ed25519.as_ref(), c.rsa.as_ref()].into_iter().flatten() {
            assert_eq!(
                fs::metadata(p)?.permissions().mode() & 0o777,
                0o600,
                "{}",
                p.display()
            );
        }
        let dir_mode = fs::metadata(tmp.path().join("keys"))?.permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o700);
        // No temporary files left behind.
        assert_eq!(fs::read_dir(tmp.path().join("keys"))?.count(), 2);
        Ok(())
    }

    #[test]
    fn default_paths_live_in_state_dir() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let c = HostKeyConfig {
            enable_rsa: false,
            ..HostKeyConfig::default()
        };
        let keys = load_or_generate(tmp.path(), &c)?;
        assert_eq!(keys.len(), 1);
        assert!(tmp.path().join("ssh_host_ed25519_key").exists());
        Ok(())
    }

    #[test]
    fn readable_by_others_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let c = cfg(tmp.path());
        load_or_generate(tmp.path(), &c)?;
        let ed = tmp.path().join("keys/ed");
        fs::set_permissions(&ed, fs::Permissions::from_mode(0o644))?;
        let err = load_or_generate(tmp.path(), &c)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("chmod 600") && err.contains("keys/ed"),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn missing_without_generate_is_an_error() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let c = HostKeyConfig {
            generate: false,
            ..cfg(tmp.path())
        };
        let err = load_or_generate(tmp.path(), &c)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("missing"), "{err}");
        Ok(())
    }

    #[test]
    fn wrong_type_and_garbage_are_named() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let c = cfg(tmp.path());
        load_or_generate(tmp.path(), &c)?;
        // Point the RSA slot at the Ed25519 file.
        let swapped = HostKeyConfig {
            rsa: c.ed25519.clone(),
            ..c.clone()
        };
        let err = load_or_generate(tmp.path(), &swapped)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("expected ssh-rsa"), "{err}");
        let junk = tmp.path().join("keys/junk");
        fs::write(&junk, "not a key")?;
        fs::set_permissions(&junk, fs::Permissions::from_mode(0o600))?;
        let bad = HostKeyConfig {
            ed25519: Some(junk),
            ..c
        };
        let err = load_or_generate(tmp.path(), &bad)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("keys/junk"), "{err}");
        Ok(())
    }

    #[test]
    fn openssh_reads_what_we_write() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let c = cfg(tmp.path());
        let keys = load_or_generate(tmp.path(), &c)?;
        let Ok(out) = std::process::Command::new("ssh-keygen")
            .arg("-y")
            .arg("-f")
            .arg(tmp.path().join("keys/ed"))
            .output()
        else {
            panic!("ssh-keygen is required for this test (apt-get install openssh-client)");
        };
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ours = keys[0].public_key().to_openssh()?;
        let theirs = String::from_utf8(out.stdout)?;
        assert_eq!(
            theirs.split_whitespace().nth(1),
            ours.split_whitespace().nth(1)
        );
        Ok(())
    }

    struct NoAuth;
    impl russh::server::Handler for NoAuth {
        type Error = russh::Error;
    }

    /// The real OpenSSH client negotiates each host key algorithm we claim to serve and sees
    /// the key we loaded (RSA as rsa-sha2-512 and rsa-sha2-256, never SHA-1 only).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn openssh_negotiates_every_host_key_algorithm() -> Result<(), Box<dyn std::error::Error>>
    {
        let tmp = tempfile::tempdir()?;
        let keys = load_or_generate(tmp.path(), &cfg(tmp.path()))?;
        let ed_fp = keys[0]
            .public_key()
            .fingerprint(HashAlg::Sha256)
            .to_string();
        let rsa_fp = keys[1]
            .public_key()
            .fingerprint(HashAlg::Sha256)
            .to_string();
        let config = std::sync::Arc::new(russh::server::Config {
            keys,
            ..Default::default()
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let server = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let config = config.clone();
                tokio::spawn(async move {
                    if let Ok(session) = russh::server::run_stream(config, sock, NoAuth).await {
                        let _ = session.await;
                    }
                });
            }
        });
        for (alg, fp) in [
            ("ssh-ed25519", &ed_fp),
            ("rsa-sha2-512", &rsa_fp),
            ("rsa-sha2-256", &rsa_fp),
        ] {
            let out = tokio::task::spawn_blocking(move || {
                std::process::Command::new("ssh")
                    .args(["-v", "-p", &port.to_string(), "-o", "BatchMode=yes"])
                    .args([
                        "-o",
                        "StrictHostKeyChecking=no",
                        "-o",
                        "UserKnownHostsFile=/dev/null",
                    ])
                    .args([
                        "-o",
                        &format!("HostKeyAlgorithms={alg}"),
                        "-o",
                        "ConnectTimeout=10",
                    ])
                    .args(["nobody@127.0.0.1", "true"])
                    .stdin(std::process::Stdio::null())
                    .output()
            })
            .await??;
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains(&format!("kex: host key algorithm: {alg}")),
                "{alg}: {err}"
            );
            assert!(err.contains(fp.as_str()), "{alg}: expected {fp}: {err}");
            // Authentication is refused (no methods accept), but the host key step completed.
            assert!(err.contains("Permission denied"), "{alg}: {err}");
        }
        server.abort();
        Ok(())
    }
}
