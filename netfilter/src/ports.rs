//! Kernel bridge-port isolation: `isolated` ports of a bridge cannot exchange frames with each
//! other (any protocol), only with the bridge itself and non-isolated ports. berth sets it on
//! every port of the tenant bridge as a second, nftables-independent barrier between tenants.
//!
//! Docker adds a port per container, so this is re-done by the drift watch; ports appear
//! between two passes only for the watch's reaction time (the nftables bridge table covers
//! that window for IP and ARP).

use std::io;
use std::path::Path;

/// Sets `isolated` on every port of `bridge` (under `sysfs`, normally `/sys`) that lacks it and
/// returns the ports it changed. A missing bridge is not an error: the tenant network may not
/// exist yet.
pub fn isolate_ports(sysfs: &Path, bridge: &str) -> io::Result<Vec<String>> {
    let brif = sysfs.join("class/net").join(bridge).join("brif");
    let entries = match std::fs::read_dir(&brif) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", brif.display()))),
    };
    let mut changed = Vec::new();
    for entry in entries {
        let entry = entry?;
        let flag = entry.path().join("isolated");
        let current = match std::fs::read_to_string(&flag) {
            Ok(v) => v,
            // The port left the bridge meanwhile.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", flag.display()))),
        };
        if current.trim() != "1" {
            std::fs::write(&flag, "1")
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", flag.display())))?;
            changed.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    changed.sort();
    Ok(changed)
}

/// Clears `isolated` on every port of `bridge` (for `berth netfilter flush`).
pub fn release_ports(sysfs: &Path, bridge: &str) -> io::Result<()> {
    let brif = sysfs.join("class/net").join(bridge).join("brif");
    let entries = match std::fs::read_dir(&brif) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let flag = entry?.path().join("isolated");
        match std::fs::write(&flag, "0") {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", flag.display()))),
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn isolates_only_what_is_not_isolated() {
        let dir = tempfile::tempdir().unwrap();
        let brif = dir.path().join("class/net/br0/brif");
        for (port, v) in [("veth1", "0\n"), ("veth2", "1\n")] {
            std::fs::create_dir_all(brif.join(port)).unwrap();
            std::fs::write(brif.join(port).join("isolated"), v).unwrap();
        }
        assert_eq!(
            isolate_ports(dir.path(), "br0").unwrap(),
            vec!["veth1".to_string()]
        );
        assert_eq!(
            std::fs::read_to_string(brif.join("veth1/isolated")).unwrap(),
            "1"
        );
        assert!(isolate_ports(dir.path(), "br0").unwrap().is_empty());
        assert!(isolate_ports(dir.path(), "missing0").unwrap().is_empty());
        release_ports(dir.path(), "br0").unwrap();
        assert_eq!(
            std::fs::read_to_string(brif.join("veth2/isolated")).unwrap(),
            "0"
        );
    }
}
