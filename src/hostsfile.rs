//! The tenant address feed between processes: the process that runs the gateway (it has the
//! store and the Docker socket) publishes a hosts-format file (`[publish] hosts_file`, default
//! `/run/berth/hosts`); a resolver running without the gateway — `berth-dns.service`, a dynamic
//! user with neither — follows that file instead of opening the store.
//!
//! The file is replaced by rename, so a reader sees the old map or the new one, never half of
//! one. Addresses are not secret: the file is 0644 in a 0755 directory whatever the umask.
//! The follower polls `stat` once a second (no inotify: the directory itself is replaced when
//! the gateway's unit restarts, which inotify watches do not survive). Deliberately not here:
//! deciding who publishes or follows (that is `commands::run`), or any DNS logic.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use tenants::ServerId;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// How often the follower looks at the file.
const POLL: Duration = Duration::from_secs(1);

/// Publisher: connects to the store and Docker (retrying every 5 s), then rewrites the file on
/// every change of the running servers' addresses until `shutdown`. The file is left in place
/// on exit: a resolver keeps answering with the last known addresses while the gateway restarts.
pub async fn publish(cfg: Config, shutdown: CancellationToken) {
    let path = PathBuf::from(&cfg.publish.hosts_file);
    let Some(provisioner) = provisioner_when_ready(&cfg, "hosts file", &shutdown).await else {
        return;
    };
    let stop = shutdown.clone();
    let mut rx = provisioner
        .watch_addresses(async move { stop.cancelled().await })
        .await;
    let mut last_error = None;
    loop {
        let v4 = rx.borrow_and_update().clone();
        let map = with_ipv6(&cfg, &provisioner, v4).await;
        let text = dns::zone::render_hosts(&map, &cfg.dns.domain);
        match write_atomically(&path, &text) {
            Ok(()) => {
                tracing::debug!(file = %path.display(), servers = map.len(), "hosts file written");
                last_error = None;
            }
            Err(e) => {
                let msg = format!("{e:#}");
                if last_error.as_ref() != Some(&msg) {
                    tracing::warn!(error = %msg, "cannot publish the tenant hosts file");
                    last_error = Some(msg);
                }
            }
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = shutdown.cancelled() => return,
        }
    }
}

/// The address watch carries one (IPv4) address per running server; when the tenant network has
/// IPv6 (`[network] subnet6`), each server's IPv6 address is added from Docker's endpoint list,
/// read again on every change (a start or stop changes both families at once). A failed read
/// leaves the IPv4 map as it is: AAAA is late, A is never lost.
pub async fn with_ipv6(
    cfg: &Config,
    provisioner: &tenants::Provisioner,
    v4: BTreeMap<ServerId, IpAddr>,
) -> BTreeMap<ServerId, Vec<IpAddr>> {
    let mut map: BTreeMap<ServerId, Vec<IpAddr>> =
        v4.into_iter().map(|(id, ip)| (id, vec![ip])).collect();
    if cfg.network.subnet6.is_none() {
        return map;
    }
    match provisioner.server_endpoints().await {
        Ok(endpoints) => {
            for e in endpoints {
                if let (Some(v6), Some(addrs)) = (e.ipv6, map.get_mut(&e.server)) {
                    let v6 = IpAddr::V6(v6);
                    if !addrs.contains(&v6) {
                        addrs.push(v6);
                    }
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read server IPv6 addresses; AAAA records wait for the next change")
        }
    }
    map
}

async fn connect(cfg: &Config) -> Result<tenants::Provisioner> {
    let store = tenants::Store::connect(&cfg.database_url())
        .await
        .context("cannot open the tenant store")?;
    tenants::Provisioner::connect(&cfg.network, &cfg.tenants, store)
        .await
        .context("cannot connect to docker")
}

/// The store and Docker for a publisher or feed named `what`: retried every 5 s while either is
/// down (logged each time); `None` once `shutdown` fires first.
pub async fn provisioner_when_ready(
    cfg: &Config,
    what: &str,
    shutdown: &CancellationToken,
) -> Option<tenants::Provisioner> {
    loop {
        match connect(cfg).await {
            Ok(p) => return Some(p),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "{what}: tenants unavailable; retrying in 5s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = shutdown.cancelled() => return None,
                }
            }
        }
    }
}

/// Writes `text` to a temporary file next to `path` (0644) and renames it over `path`.
pub fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent directory", path.display()))?;
    if !dir.exists() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot make {} world-readable", dir.display()))?;
    }
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(text.as_bytes())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.set_permissions(std::fs::Permissions::from_mode(0o644))
            .with_context(|| format!("cannot chmod {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Follower: loads the file whenever its identity (inode, size, mtime) changes and replaces the
/// zone with it, until `shutdown`. A missing file keeps the last zone (the gateway restarting);
/// problems are logged once per distinct message, not once a second.
pub async fn follow(path: PathBuf, zone: dns::LocalZone, shutdown: CancellationToken) {
    tracing::info!(file = %path.display(), "dns local zone following the hosts file");
    let mut seen: Option<(u64, u64, i64, i64)> = None;
    let mut last_problem: Option<String> = None;
    loop {
        match load_if_changed(&path, &mut seen) {
            Ok(Some((map, skipped))) => {
                tracing::info!(file = %path.display(), servers = map.len(), skipped, "dns local zone loaded");
                zone.replace_addrs(map);
                last_problem = None;
            }
            Ok(None) => {}
            Err(problem) => {
                if last_problem.as_ref() != Some(&problem) {
                    tracing::warn!(file = %path.display(), problem = %problem, "dns local zone: keeping the last addresses");
                    last_problem = Some(problem);
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

type Loaded = (BTreeMap<ServerId, Vec<IpAddr>>, usize);

fn load_if_changed(
    path: &Path,
    seen: &mut Option<(u64, u64, i64, i64)>,
) -> std::result::Result<Option<Loaded>, String> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "no hosts file yet (is the gateway running?)".to_string(),
        _ => format!("cannot stat {}: {e}", path.display()),
    })?;
    let id = (meta.ino(), meta.size(), meta.mtime(), meta.mtime_nsec());
    if *seen == Some(id) {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    *seen = Some(id);
    Ok(Some(dns::zone::parse_hosts(&text)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn follower_sees_atomic_replacements() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/hosts");
        let zone = dns::LocalZone::new();
        let stop = CancellationToken::new();
        let task = tokio::spawn(follow(path.clone(), zone.clone(), stop.clone()));
        let id = ServerId::new(3).unwrap();
        let ip: IpAddr = "172.19.2.3".parse().unwrap();
        let map = BTreeMap::from([(id, vec![ip])]);
        write_atomically(&path, &dns::zone::render_hosts(&map, "d")).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        let wait = |want: bool| {
            let zone = zone.clone();
            async move {
                for _ in 0..50 {
                    if zone.snapshot().addrs(id).is_some() == want {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                false
            }
        };
        assert!(wait(true).await, "server3 never appeared");
        write_atomically(&path, &dns::zone::render_hosts(&BTreeMap::new(), "d")).unwrap();
        assert!(wait(false).await, "server3 never went away");
        // A vanished file keeps the last zone (empty here) rather than failing.
        std::fs::remove_file(&path).unwrap();
        stop.cancel();
        task.await.unwrap();
    }
}
