//! systemd socket activation: listeners inherited through `LISTEN_FDS` (see
//! `systemd/berth-gateway.socket`). With activation systemd binds the SSH port — even port 22 —
//! and the gateway needs no capability at all.
//!
//! The protocol lives in environment variables (`LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`)
//! that must be removed so children do not inherit them. Changing the environment while other
//! threads run is undefined behaviour (`setenv`/`unsetenv` race every `getenv`), so [`capture`]
//! runs in `main` before the async runtime or any other thread exists; the component that
//! serves the listeners takes them later with [`inherited_tcp_listeners`].

use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use anyhow::{Context, Result};

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const FIRST_FD: RawFd = 3;
/// More descriptors than any socket unit of berth's passes; a larger count is a broken
/// environment, not activation.
const MAX_FDS: u32 = 1024;

/// What [`capture`] found: the descriptors (owned from then on), or why the environment was
/// unusable. `None` until `capture` ran, and after the listeners were taken.
static CAPTURED: Mutex<Option<Result<Vec<OwnedFd>, String>>> = Mutex::new(None);

/// The descriptors the activation variables name for process `pid`: fds 3..3+LISTEN_FDS when
/// LISTEN_PID is `pid`, none when the variables are absent or meant for another process
/// (a parent that did not clear them).
pub fn parse(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    pid: u32,
) -> Result<Range<RawFd>, String> {
    let Some(listen_pid) = listen_pid else {
        return Ok(FIRST_FD..FIRST_FD);
    };
    let listen_pid: u32 = listen_pid
        .trim()
        .parse()
        .map_err(|_| format!("invalid LISTEN_PID {listen_pid:?}"))?;
    if listen_pid != pid {
        return Ok(FIRST_FD..FIRST_FD);
    }
    let Some(listen_fds) = listen_fds else {
        return Ok(FIRST_FD..FIRST_FD);
    };
    let n: u32 = listen_fds
        .trim()
        .parse()
        .map_err(|_| format!("invalid LISTEN_FDS {listen_fds:?}"))?;
    if n > MAX_FDS {
        return Err(format!("LISTEN_FDS {n} is more than {MAX_FDS}"));
    }
    // n ≤ MAX_FDS, so this cannot overflow.
    Ok(FIRST_FD..FIRST_FD + n as RawFd)
}

/// Reads and removes the activation variables and takes ownership of the descriptors they
/// name (close-on-exec from here on). Call once, first thing in `main`, while the process
/// has a single thread.
#[allow(unsafe_code)]
pub fn capture() {
    let var = |name: &str| std::env::var(name).ok();
    let parsed = parse(
        var("LISTEN_PID").as_deref(),
        var("LISTEN_FDS").as_deref(),
        std::process::id(),
    );
    for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        // SAFETY: `capture` is called from `main` before the tokio runtime (or anything else)
        // starts a thread, so no other thread can read or write the environment concurrently.
        unsafe { std::env::remove_var(name) };
    }
    let captured = parsed.and_then(|fds| {
        fds.map(|fd| {
            // A descriptor the variables name but this process does not have: refuse rather
            // than take ownership of whatever number the kernel hands out next.
            // SAFETY: F_GETFD only reads the descriptor's flags.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
            if flags < 0 {
                return Err(format!(
                    "LISTEN_FDS names fd {fd}, which is not open: {}",
                    std::io::Error::last_os_error()
                ));
            }
            // SAFETY: F_SETFD only sets the descriptor's flags.
            if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
                return Err(format!(
                    "cannot mark inherited fd {fd} close-on-exec: {}",
                    std::io::Error::last_os_error()
                ));
            }
            // SAFETY: systemd passed fd (LISTEN_PID is this process, fd is within
            // 3..3+LISTEN_FDS and open); nothing else in this process owns it, and `capture`
            // runs once, so it is taken exactly once.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        })
        .collect::<Result<Vec<_>, String>>()
    });
    match CAPTURED.lock() {
        Ok(mut slot) => *slot = Some(captured),
        Err(p) => *p.into_inner() = Some(captured),
    }
}

/// TCP listeners passed by systemd, in order; empty when not socket-activated (or when
/// [`capture`] did not run). The first call takes them; later calls get none.
pub fn inherited_tcp_listeners() -> Result<Vec<std::net::TcpListener>> {
    let captured = match CAPTURED.lock() {
        Ok(mut slot) => slot.take(),
        Err(p) => p.into_inner().take(),
    };
    let fds = match captured {
        None => return Ok(Vec::new()),
        Some(Ok(fds)) => fds,
        Some(Err(e)) => {
            return Err(anyhow::anyhow!(e)).context("cannot read LISTEN_FDS from systemd");
        }
    };
    fds.into_iter().map(adopt).collect()
}

fn adopt(fd: OwnedFd) -> Result<std::net::TcpListener> {
    let raw = fd.as_raw_fd();
    let listener = std::net::TcpListener::from(fd);
    listener
        .local_addr()
        .with_context(|| format!("inherited fd {raw} is not a listening TCP socket"))?;
    listener
        .set_nonblocking(true)
        .with_context(|| format!("cannot make inherited fd {raw} non-blocking"))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn activation_variables_parse() {
        let none = 3..3;
        assert_eq!(parse(None, None, 7), Ok(none.clone()));
        assert_eq!(parse(None, Some("2"), 7), Ok(none.clone()));
        assert_eq!(parse(Some("7"), None, 7), Ok(none.clone()));
        // Meant for another process (a parent that did not clear them): not ours.
        assert_eq!(parse(Some("8"), Some("2"), 7), Ok(none.clone()));
        assert_eq!(parse(Some("7"), Some("0"), 7), Ok(none));
        assert_eq!(parse(Some("7"), Some("1"), 7), Ok(3..4));
        assert_eq!(parse(Some("7"), Some("3"), 7), Ok(3..6));
        for (pid, fds) in [
            ("x", "1"),
            ("-7", "1"),
            ("7", "one"),
            ("7", "-1"),
            ("7", ""),
        ] {
            assert!(parse(Some(pid), Some(fds), 7).is_err(), "{pid} {fds}");
        }
        assert!(parse(Some("7"), Some("4294967295"), 7).is_err());
        assert!(parse(Some("7"), Some("1025"), 7).is_err());
        assert_eq!(parse(Some("7"), Some("1024"), 7), Ok(3..1027));
    }
}
