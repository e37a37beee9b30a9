//! systemd socket activation: listeners inherited through `LISTEN_FDS` (see
//! `systemd/berth-gateway.socket`). With activation systemd binds the SSH port — even port 22 —
//! and the gateway needs no capability at all.

use anyhow::{Context, Result};

/// TCP listeners passed by systemd, in order; empty when not socket-activated. Unsets the
/// `LISTEN_*` variables so children do not inherit them.
pub fn inherited_tcp_listeners() -> Result<Vec<std::net::TcpListener>> {
    let fds = sd_notify::listen_fds().context("cannot read LISTEN_FDS from systemd")?;
    let mut out = Vec::new();
    for fd in fds {
        out.push(adopt(fd)?);
    }
    Ok(out)
}

#[allow(unsafe_code)]
fn adopt(fd: std::os::fd::RawFd) -> Result<std::net::TcpListener> {
    use std::os::fd::FromRawFd;
    // SAFETY: `sd_notify::listen_fds` yields only descriptors systemd passed to this process
    // (LISTEN_PID matched, fds 3..3+LISTEN_FDS) and marks them close-on-exec; each is taken
    // exactly once here, so ownership is unique.
    let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
    listener
        .local_addr()
        .with_context(|| format!("inherited fd {fd} is not a listening TCP socket"))?;
    listener
        .set_nonblocking(true)
        .with_context(|| format!("cannot make inherited fd {fd} non-blocking"))?;
    Ok(listener)
}
