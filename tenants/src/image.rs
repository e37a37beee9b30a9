//! Builds the default tenant image offline: `debootstrap --variant=minbase` into a scratch
//! directory, a non-root `tenant` user (uid 1000) with a home and a passwd entry, `/apps`
//! owned by it, then `docker import` (through the Engine API) with CMD/ENV/labels. No
//! registry and no Dockerfile are needed — only a Debian mirror.
//!
//! The recipe (packages, image changes, tag parsing) is pure and tested; [`build`] runs it
//! and reports every debootstrap output line through a progress callback.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use bollard::query_parameters::CreateImageOptions;
use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

use crate::provision::connect_docker;

/// What goes into the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// A shell, coreutils, sftp-server, rsync: what SSH users need.
    Base,
    /// Base plus docker.io and a CMD that starts a nested dockerd (needs `tenants.dind`).
    Dind,
    /// Base plus systemd as PID 1, labelled `berth.init=systemd`; a server runs it the way
    /// systemd needs only when the operator grants it (`server create/set --init systemd`).
    Systemd,
    /// Dind plus rootless Docker (`uidmap`, `rootlesskit`, `slirp4netns`, `fuse-overlayfs`):
    /// the init starts a nested dockerd as the tenant user, whose subordinate range is
    /// [`ROOTLESS_SUBID_START`]..+[`ROOTLESS_SUBID_COUNT`]; for `dind = "rootless"`.
    Rootless,
}

impl Variant {
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Base => "base",
            Variant::Dind => "dind",
            Variant::Systemd => "systemd",
            Variant::Rootless => "rootless",
        }
    }
}

/// The tenant user's subordinate ids in the rootless variant (`/etc/subuid`, `/etc/subgid`):
/// nested uid 0 is the tenant user itself, nested uids 1.. are this range. The engine must map
/// at least `START + COUNT` ids into the server (a `--userns-remap` range of 165536 or more).
pub const ROOTLESS_SUBID_START: u32 = 100_000;
pub const ROOTLESS_SUBID_COUNT: u32 = 65_536;

/// The nested engine's own addresses (inside rootlesskit's network namespace, behind
/// slirp4netns): apart from Docker's defaults and from berth's default tenant network, so a
/// nested container never shadows an address the tenant reaches through the server.
pub const ROOTLESS_BIP: &str = "10.250.0.1/24";
pub const ROOTLESS_POOL: &str = "base=10.251.0.0/16,size=24";

/// Packages on top of minbase. `openssh-sftp-server` is what the gateway runs for SFTP; full
/// `python3` (the standard library, not `python3-minimal`), `rsync`, `tar`, `gzip`, `findutils`,
/// `sed` and `getent` (libc-bin) are what config-management tools (Ansible's modules, its
/// `synchronize`) and remote editors expect on a server; C.UTF-8 is built into glibc.
/// netcat is used by the test suite and costs little. `curl`, `openssh-client` and `git` are
/// what remote-development servers and git with a forwarded agent need.
pub fn packages(variant: Variant) -> Vec<&'static str> {
    let mut p = vec![
        "bash",
        "coreutils",
        "procps",
        "iproute2",
        "ca-certificates",
        "openssh-sftp-server",
        "rsync",
        "netcat-openbsd",
        "python3",
        "tar",
        "gzip",
        "findutils",
        "sed",
        "libc-bin",
        "less",
        // What remote-development servers (VS Code's, JetBrains') and git-over-ssh with a
        // forwarded agent expect: a downloader, the ssh client with ssh-add, git.
        "curl",
        "openssh-client",
        "git",
    ];
    if matches!(variant, Variant::Dind | Variant::Rootless) {
        p.extend([
            "docker.io",
            "docker-compose",
            "iptables",
            "kmod",
            "e2fsprogs",
            "xz-utils",
            "pigz",
        ]);
    }
    if variant == Variant::Systemd {
        p.extend(["systemd", "systemd-sysv", "dbus"]);
    }
    if variant == Variant::Rootless {
        // libcap2-bin: setcap for newuidmap/newgidmap, and capsh to inspect the grant.
        p.extend([
            "uidmap",
            "rootlesskit",
            "slirp4netns",
            "fuse-overlayfs",
            "libcap2-bin",
        ]);
    }
    p
}

/// The uid/gid of the tenant user (matches the exec user the gateway uses).
pub const TENANT_UID: u32 = 1000;

/// Shell function shared by the init scripts: Docker mounts every cgroup v1 hierarchy
/// read-only; mount each one again read-write (the private cgroup namespace makes the fresh
/// mount show only this container's subtree), or remount cgroup v2 read-write.
const CGROUPS_RW: &str = r#"cgroups_rw() {
  if [ "$(stat -f -c %T /sys/fs/cgroup 2>/dev/null)" = "cgroup2fs" ]; then
    # cgroup v2 (a private cgroup namespace shows only our subtree): remount read-write.
    mount -o remount,rw /sys/fs/cgroup 2>/dev/null
    return 0
  fi
  mount -o remount,rw /sys/fs/cgroup 2>/dev/null
  for dir in /sys/fs/cgroup/*; do
    [ -d "$dir" ] && [ ! -L "$dir" ] && mountpoint -q "$dir" || continue
    name=$(basename "$dir")
    case "$name" in
      systemd) opts=none,name=systemd ;;
      unified) continue ;;
      *) opts=$name ;;
    esac
    umount "$dir" && mount -t cgroup -o "$opts" cgroup "$dir"
  done
}
"#;

/// The dind variant's CMD: writable cgroups (only needed in the "caps" mode; privileged and
/// sysbox containers have them), dockerd with its data on the server's volume, then idle (tini
/// is PID 1 and reaps).
const DIND_MAIN: &str = r#"if command -v dockerd >/dev/null; then
  # Idempotent; fails quietly where cgroups are already writable or cannot be remounted
  # (privileged, sysbox), and dockerd then says what it lacks in /var/log/dockerd.log.
  cgroups_rw 2>/dev/null
  root="${BERTH_DOCKER_DATA_ROOT:-/var/lib/docker}"
  mkdir -p "$root"
  # The container's filesystem outlives a stop: runtime state of the last boot is stale.
  rm -rf /var/run/docker.pid /var/run/docker /run/containerd
  # The tenant network and berth's filter are the tenant's only way out: nested containers use
  # the tenant's own interface (host network) or user-defined bridges without NAT.
  dockerd --data-root "$root" --iptables=false --ip6tables=false --bridge=none >/var/log/dockerd.log 2>&1 &
fi
exec sleep infinity
"#;

/// The systemd variant's CMD: systemd as PID 1 needs shared mount propagation (its credentials
/// and private mounts) and writable cgroups, as on a real host.
const SYSTEMD_MAIN: &str = r#"mount --make-rshared / 2>/dev/null
cgroups_rw 2>/dev/null
exec /lib/systemd/systemd
"#;

/// The rootless variant's CMD (run by tini as the container's root, with no capability beyond
/// Docker's defaults): a rootless dockerd as the tenant user, its data on the server's volume,
/// its socket where the docker CLI looks by default. Runtime state of the last boot is stale.
const ROOTLESS_MAIN: &str = r#"if [ "${BERTH_DIND:-}" = rootless ] && command -v rootlesskit >/dev/null; then
  user=tenant
  uid=$(id -u "$user")
  run="/run/user/$uid"
  root="${BERTH_DOCKER_DATA_ROOT:-/home/$user/.local/share/docker}"
  rm -rf "$run" /var/run/docker.sock
  mkdir -p "$run" "$root"
  chown "$user:" "$run" "$root"
  chmod 0700 "$run"
  ln -s "$run/docker.sock" /var/run/docker.sock
  runuser -u "$user" -- env HOME="/home/$user" XDG_RUNTIME_DIR="$run" \
    PATH=/usr/share/docker.io/contrib:/usr/sbin:/usr/bin:/sbin:/bin \
    dockerd-rootless.sh --data-root "$root" --bip @BIP@ --default-address-pool @POOL@ \
    >/var/log/dockerd.log 2>&1 &
fi
exec sleep infinity
"#;

/// The init script of `variant` (`None` for the base image, whose CMD is `sleep`).
pub fn init_script(variant: Variant) -> Option<(&'static str, String)> {
    let rootless;
    let main = match variant {
        Variant::Base => return None,
        Variant::Dind => ("usr/local/sbin/berth-dind-init", DIND_MAIN),
        Variant::Systemd => ("usr/local/sbin/berth-systemd-init", SYSTEMD_MAIN),
        Variant::Rootless => {
            rootless = ROOTLESS_MAIN
                .replace("@BIP@", ROOTLESS_BIP)
                .replace("@POOL@", ROOTLESS_POOL);
            ("usr/local/sbin/berth-rootless-init", rootless.as_str())
        }
    };
    Some((
        main.0,
        format!(
            "#!/bin/sh\n# berth {} init\n{CGROUPS_RW}{}",
            variant.as_str(),
            main.1
        ),
    ))
}

/// newuidmap/newgidmap from setuid root to file capabilities: the setuid variant writes
/// `uid_map` as euid 0 of the server's namespace and the kernel refuses it there; with only
/// `cap_setuid`/`cap_setgid` it writes the map as the tenant user. The import keeps the
/// `security.capability` xattrs (`tar --xattrs`).
const ROOTLESS_IDMAP_CAPS: &str = "set -e; chmod u-s /usr/bin/newuidmap /usr/bin/newgidmap; \
     setcap cap_setuid+ep /usr/bin/newuidmap; setcap cap_setgid+ep /usr/bin/newgidmap";

/// `docker import` changes: how the container behaves with no TTY and no command.
pub fn image_changes(variant: Variant, suite: &str) -> Vec<String> {
    let cmd = match variant {
        Variant::Base => r#"CMD ["/bin/sleep", "infinity"]"#,
        Variant::Dind => r#"CMD ["/usr/local/sbin/berth-dind-init"]"#,
        Variant::Systemd => r#"CMD ["/usr/local/sbin/berth-systemd-init"]"#,
        Variant::Rootless => r#"CMD ["/usr/local/sbin/berth-rootless-init"]"#,
    };
    let mut changes = vec![
        cmd.to_string(),
        "ENV LANG=C.UTF-8".to_string(),
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        "LABEL berth.image=tenant".to_string(),
        format!("LABEL berth.variant={}", variant.as_str()),
        format!("LABEL berth.suite={suite}"),
        "WORKDIR /apps".to_string(),
    ];
    if variant == Variant::Systemd {
        // Tells the operator the image wants systemd as PID 1 (the label grants nothing: a
        // server runs it as systemd needs only with `--init systemd`, and `docker import` takes
        // no STOPSIGNAL, so SIGRTMIN+3 comes from `spec::container_body`), and how systemd
        // knows it runs in a container.
        changes.push(format!("LABEL {}=systemd", crate::spec::IMAGE_LABEL_INIT));
        changes.push("ENV container=docker".to_string());
    }
    changes
}

/// Splits `repo[:tag]` at the last colon after the last slash (so `host:5000/x` has no tag).
pub fn split_tag(reference: &str) -> (String, String) {
    let slash = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[slash..].rfind(':') {
        Some(i) => (
            reference[..slash + i].to_string(),
            reference[slash + i + 1..].to_string(),
        ),
        None => (reference.to_string(), "latest".to_string()),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{0} is not installed (apt-get install {0})")]
    MissingTool(&'static str),
    #[error("building an image needs root (debootstrap and chroot)")]
    NotRoot,
    #[error("cannot {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{step} failed ({status}); last output: {tail}")]
    Step {
        step: String,
        status: String,
        tail: String,
    },
    #[error(transparent)]
    Docker(#[from] crate::provision::DockerError),
    #[error("docker import of {tag} failed: {message}")]
    Import { tag: String, message: String },
}

/// Options for [`build`].
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub variant: Variant,
    /// `repo:tag` to create.
    pub tag: String,
    /// Debian suite.
    pub suite: String,
    /// Debian mirror; `None` = debootstrap's default (deb.debian.org).
    pub mirror: Option<String>,
    /// Parent of the scratch directory.
    pub work_dir: PathBuf,
}

/// A scratch rootfs removed on drop, after unmounting anything a failed debootstrap left
/// mounted under it (removing through a live /proc mount would be a disaster).
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let root = self.0.clone();
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mounts")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1).map(String::from))
            .filter(|m| Path::new(m).starts_with(&root))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in &mounts {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(m)
                .status();
        }
        let still_mounted = std::fs::read_to_string("/proc/self/mounts")
            .unwrap_or_default()
            .lines()
            .any(|l| {
                l.split_whitespace()
                    .nth(1)
                    .is_some_and(|m| Path::new(m).starts_with(&root))
            });
        if still_mounted {
            tracing::error!(dir = %root.display(), "scratch rootfs still has mounts; not removing it");
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&root) {
            tracing::warn!(dir = %root.display(), error = %e, "cannot remove scratch rootfs");
        }
    }
}

fn which(tool: &'static str) -> Result<(), ImageError> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
        || ["/usr/sbin", "/sbin"]
            .iter()
            .any(|d| Path::new(d).join(tool).is_file());
    if found {
        Ok(())
    } else {
        Err(ImageError::MissingTool(tool))
    }
}

/// Runs a command, passing each output line (stdout and stderr) to `progress`.
async fn run_step(
    step: &str,
    cmd: &mut Command,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<(), ImageError> {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| ImageError::Io {
        what: format!("start {step}"),
        source,
    })?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        let tx = tx.clone();
        readers.push(tokio::spawn(async move {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                let _ = tx.send(l);
            }
        }));
    }
    if let Some(err) = child.stderr.take() {
        let tx = tx.clone();
        readers.push(tokio::spawn(async move {
            let mut lines = BufReader::new(err).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                let _ = tx.send(l);
            }
        }));
    }
    drop(tx);
    let mut tail: Vec<String> = Vec::new();
    while let Some(line) = rx.recv().await {
        progress(&line);
        tail.push(line);
        if tail.len() > 5 {
            tail.remove(0);
        }
    }
    let status = child.wait().await.map_err(|source| ImageError::Io {
        what: format!("wait for {step}"),
        source,
    })?;
    if !status.success() {
        return Err(ImageError::Step {
            step: step.to_string(),
            status: status.to_string(),
            tail: tail.join(" | "),
        });
    }
    Ok(())
}

/// Builds and imports the image; returns the new image id. `progress` receives one line per
/// step and every line debootstrap prints.
pub async fn build(
    cfg: &crate::Config,
    opts: &BuildOptions,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<String, ImageError> {
    which("debootstrap")?;
    which("chroot")?;
    which("tar")?;
    if !nix_is_root() {
        return Err(ImageError::NotRoot);
    }
    // Fail on Docker before spending a minute on debootstrap.
    let (docker, _endpoint) = connect_docker(cfg).await?;

    let dir = opts.work_dir.join(format!(
        "berth-image-{}-{}",
        std::process::id(),
        opts.variant.as_str()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|source| ImageError::Io {
        what: format!("create {}", dir.display()),
        source,
    })?;
    let scratch = Scratch(dir.clone());
    let rootfs = dir.join("rootfs");

    progress(&format!(
        "==> debootstrap {} ({} variant) into {}",
        opts.suite,
        opts.variant.as_str(),
        rootfs.display()
    ));
    let mut cmd = Command::new("debootstrap");
    cmd.arg("--variant=minbase")
        .arg(format!("--include={}", packages(opts.variant).join(",")))
        .arg(&opts.suite)
        .arg(&rootfs);
    if let Some(m) = &opts.mirror {
        cmd.arg(m);
    }
    run_step("debootstrap", &mut cmd, progress).await?;

    progress(&format!(
        "==> adding user tenant (uid {TENANT_UID}) and /apps"
    ));
    let uid = TENANT_UID.to_string();
    let mut cmd = Command::new("chroot");
    cmd.arg(&rootfs).args([
        "useradd",
        "--create-home",
        "--uid",
        &uid,
        "--user-group",
        "--shell",
        "/bin/bash",
        "tenant",
    ]);
    run_step("useradd", &mut cmd, progress).await?;
    let apps = rootfs.join("apps");
    std::fs::create_dir_all(&apps).map_err(|source| ImageError::Io {
        what: "create /apps".into(),
        source,
    })?;
    std::os::unix::fs::chown(&apps, Some(TENANT_UID), Some(TENANT_UID)).map_err(|source| {
        ImageError::Io {
            what: "chown /apps".into(),
            source,
        }
    })?;
    if let Some((path, script)) = init_script(opts.variant) {
        let init = rootfs.join(path);
        std::fs::write(&init, script).map_err(|source| ImageError::Io {
            what: format!("write {path}"),
            source,
        })?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755)).map_err(
            |source| ImageError::Io {
                what: format!("chmod {path}"),
                source,
            },
        )?;
    }
    if opts.variant == Variant::Dind {
        let mut cmd = Command::new("chroot");
        cmd.arg(&rootfs)
            .args(["usermod", "-aG", "docker", "tenant"]);
        run_step("usermod", &mut cmd, progress).await?;
    }
    if opts.variant == Variant::Rootless {
        progress("==> rootless: subordinate ids, newuidmap/newgidmap with file capabilities");
        let line = format!("tenant:{ROOTLESS_SUBID_START}:{ROOTLESS_SUBID_COUNT}\n");
        for f in ["etc/subuid", "etc/subgid"] {
            std::fs::write(rootfs.join(f), &line).map_err(|source| ImageError::Io {
                what: format!("write /{f}"),
                source,
            })?;
        }
        let mut cmd = Command::new("chroot");
        cmd.arg(&rootfs).args(["sh", "-c", ROOTLESS_IDMAP_CAPS]);
        run_step("setcap", &mut cmd, progress).await?;
    }
    // Caches and host-specific files do not belong in an image.
    for rel in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        if let Ok(entries) = std::fs::read_dir(rootfs.join(rel)) {
            for e in entries.flatten() {
                if e.path().is_file() {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
    for rel in ["etc/machine-id", "etc/hostname"] {
        let _ = std::fs::write(rootfs.join(rel), b"");
    }

    progress(&format!("==> importing into docker as {}", opts.tag));
    let mut tar = Command::new("tar");
    tar.arg("-C")
        .arg(&rootfs)
        .args(["--numeric-owner", "--xattrs", "-cf", "-", "."]);
    tar.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let mut child = tar.spawn().map_err(|source| ImageError::Io {
        what: "start tar".into(),
        source,
    })?;
    let stdout = child.stdout.take().ok_or_else(|| ImageError::Io {
        what: "read tar output".into(),
        source: std::io::Error::other("no stdout"),
    })?;
    let body = futures::stream::unfold(stdout, |mut out| async move {
        let mut buf = vec![0u8; 256 * 1024];
        match out.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), out))
            }
            Err(e) => Some((Err(e), out)),
        }
    });
    let (repo, tag) = split_tag(&opts.tag);
    let import_opts = CreateImageOptions {
        from_src: Some("-".into()),
        repo: Some(repo),
        tag: Some(tag),
        changes: image_changes(opts.variant, &opts.suite),
        message: Some(format!(
            "berth image build --variant {}",
            opts.variant.as_str()
        )),
        ..Default::default()
    };
    let mut stream = docker.create_image(
        Some(import_opts),
        Some(bollard::body_try_stream(body)),
        None,
    );
    let mut image_id = String::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Some(s) = info.status {
                    // The import answers with the new image id as its status.
                    if s.starts_with("sha256:") {
                        image_id = s.clone();
                    }
                    progress(&s);
                }
            }
            Err(e) => {
                return Err(ImageError::Import {
                    tag: opts.tag.clone(),
                    message: e.to_string(),
                });
            }
        }
    }
    let status = child.wait().await.map_err(|source| ImageError::Io {
        what: "wait for tar".into(),
        source,
    })?;
    if !status.success() {
        return Err(ImageError::Step {
            step: "tar".into(),
            status: status.to_string(),
            tail: String::new(),
        });
    }
    drop(scratch);
    progress(&format!("==> built {} {}", opts.tag, image_id));
    Ok(image_id)
}

fn nix_is_root() -> bool {
    // The effective uid of this process: /proc/self/status "Uid: real effective …".
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags() {
        assert_eq!(
            split_tag("berth/tenant:bookworm"),
            ("berth/tenant".into(), "bookworm".into())
        );
        assert_eq!(
            split_tag("berth/tenant"),
            ("berth/tenant".into(), "latest".into())
        );
        assert_eq!(
            split_tag("reg:5000/x"),
            ("reg:5000/x".into(), "latest".into())
        );
        assert_eq!(split_tag("reg:5000/x:1"), ("reg:5000/x".into(), "1".into()));
    }

    #[test]
    fn recipe() {
        let base = packages(Variant::Base);
        for p in [
            "bash",
            "openssh-sftp-server",
            "rsync",
            "ca-certificates",
            "netcat-openbsd",
            "python3",
            "tar",
            "gzip",
            "findutils",
            "libc-bin",
        ] {
            assert!(base.contains(&p), "{p}");
        }
        assert!(!base.contains(&"docker.io"));
        assert!(packages(Variant::Dind).contains(&"docker.io"));
        let rootless = packages(Variant::Rootless);
        for p in [
            "docker.io",
            "uidmap",
            "rootlesskit",
            "slirp4netns",
            "fuse-overlayfs",
        ] {
            assert!(rootless.contains(&p), "{p}");
        }
        let (path, script) = init_script(Variant::Rootless).expect("rootless init");
        assert_eq!(path, "usr/local/sbin/berth-rootless-init");
        assert!(script.contains("runuser -u \"$user\""), "{script}");
        assert!(
            script.contains(ROOTLESS_BIP) && !script.contains("@BIP@"),
            "{script}"
        );
        assert!(
            image_changes(Variant::Rootless, "bookworm")
                .iter()
                .any(|c| c.contains("berth-rootless-init"))
        );
        let ch = image_changes(Variant::Base, "bookworm");
        assert!(ch.iter().any(|c| c.contains("sleep")));
        assert!(ch.contains(&"LABEL berth.variant=base".to_string()));
        assert!(
            image_changes(Variant::Dind, "bookworm")
                .iter()
                .any(|c| c.contains("berth-dind-init"))
        );
    }
}
