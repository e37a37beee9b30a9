//! The host side of the `/dev/berth` mount: each server's agent directory, made before its
//! container so the gateway (not root) owns it and can put the agent's socket there.
//!
//! Deliberately not here: the socket and the agent protocol (the gateway's).

/// Makes `dir` (one server's agent directory) and its parent. The parent is `0700`: only the
/// gateway reaches the sockets from the host, while each container sees just its own directory
/// through its mount. When an admin command running as root makes the directory, it goes to
/// the parent's owner (the gateway's user), which must create its socket in it.
pub(super) fn prepare_agent_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let Some(parent) = dir.parent() else {
        return Ok(());
    };
    if !parent.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    if !dir.exists() {
        std::fs::DirBuilder::new().mode(0o755).create(dir)?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    let owner = std::fs::metadata(parent)?;
    let meta = std::fs::metadata(dir)?;
    if meta.uid() != owner.uid() {
        std::os::unix::fs::chown(dir, Some(owner.uid()), Some(owner.gid()))?;
    }
    Ok(())
}
