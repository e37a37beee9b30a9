//! The accept loop: takes already-bound listeners, admits each connection through the
//! [`Gate`](crate::gate::Gate), runs one russh session per connection with a
//! [`ConnHandler`](crate::handler::ConnHandler) under the pre-auth deadline, and drains on
//! shutdown. State shared across connections lives in [`crate::conn`].

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::conn::Shared;
use crate::gate::PermitCell;
use crate::handler::ConnHandler;

/// Runs the accept loops until `shutdown`, then drains: stop accepting, tell sessions, wait up to
/// `drain_timeout_secs`, close what is left.
pub async fn serve(
    shared: Arc<Shared>,
    listeners: Vec<TcpListener>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let tracker = TaskTracker::new();
    let accept_stop = CancellationToken::new();
    let mut accepts = Vec::new();
    for listener in listeners {
        let shared = shared.clone();
        let tracker2 = tracker.clone();
        let stop = accept_stop.clone();
        accepts.push(tokio::spawn(async move {
            loop {
                let (sock, peer) = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = listener.accept() => match r {
                        Ok(x) => x,
                        Err(e) => {
                            // EMFILE and friends: back off instead of spinning.
                            warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let shared = shared.clone();
                tracker2.spawn(run_connection(shared, sock, peer));
            }
        }));
    }

    shutdown.cancelled().await;
    info!("gateway draining: no new connections");
    accept_stop.cancel();
    for a in accepts {
        let _ = a.await;
    }
    shared.draining.cancel();
    tracker.close();
    let drain = Duration::from_secs(shared.cfg.drain_timeout_secs);
    if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
        info!("drain deadline reached: closing remaining connections");
        shared.deadline.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
    }
    info!("gateway drained");
    Ok(())
}

async fn run_connection(shared: Arc<Shared>, sock: tokio::net::TcpStream, peer: SocketAddr) {
    let Some(permit) = shared.gate.admit(peer.ip()) else {
        debug!(%peer, "connection not admitted");
        return;
    };
    let _active = crate::metrics::connection_opened();
    let _ = sock.set_nodelay(true);
    // The pre-auth deadline is enforced from out here, not inside russh's state machine: a
    // stalled key exchange, a half-sent packet or a stream of SSH_MSG_IGNORE cannot extend it.
    // On expiry the socket is shut down through a duplicate of its descriptor (the session task
    // then sees EOF/EPIPE whatever it is waiting for) and the unauthenticated slot is released
    // here at once, without waiting for that task.
    let grace = permit.grace_deadline();
    let killer = sock.as_fd().try_clone_to_owned().ok();
    let permit = PermitCell::new(permit);
    let authed = CancellationToken::new();
    let login = Arc::new(std::sync::OnceLock::new());
    let handler = ConnHandler::new(
        shared.clone(),
        peer,
        permit.clone(),
        authed.clone(),
        login.clone(),
    );
    let cfg = shared.russh.clone();
    let deadline = shared.deadline.clone();
    let work = async move {
        let session = match russh::server::run_stream(cfg, sock, handler).await {
            Ok(s) => s,
            Err(e) => {
                crate::metrics::handshake(false);
                debug!(%peer, error = %e, "ssh handshake failed");
                return None;
            }
        };
        let handle = session.handle();
        tokio::pin!(session);
        tokio::select! {
            r = &mut session => r.err(),
            _ = deadline.cancelled() => {
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    handle.disconnect(
                        russh::Disconnect::ByApplication,
                        "berth gateway is shutting down".into(),
                        "en".into(),
                    ),
                )
                .await;
                let _ = tokio::time::timeout(Duration::from_secs(3), &mut session).await;
                None
            }
        }
    };
    let pre_auth_expired = async {
        match grace {
            Some(at) => tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                _ = authed.cancelled() => std::future::pending::<()>().await,
            },
            None => std::future::pending::<()>().await,
        }
    };
    let ended = tokio::select! {
        e = work => e,
        _ = pre_auth_expired => {
            crate::metrics::LOGIN_GRACE_EXPIRED.inc();
            debug!(%peer, "login grace time expired before authentication: closing");
            None
        }
    };
    // Whatever ended the connection, the socket is closed now: the session task may still be
    // unwinding (it owns the stream), but the peer sees the close immediately.
    if let Some(fd) = killer {
        let _ = std::net::TcpStream::from(fd).shutdown(std::net::Shutdown::Both);
    }
    permit.release();
    if let Some(e) = ended {
        match e {
            russh::Error::WindowExceeded => {
                crate::metrics::protocol_violation(crate::metrics::Violation::WindowExceeded);
                let who = login.get();
                warn!(%peer, server = who.map(|l| l.server.login_name()), "client sent more than the channel window allows: disconnected");
                shared
                    .backend
                    .audit(crate::backend::AuditRecord {
                        kind: "session",
                        server: who.map(|l| l.server),
                        account: who.map(|l| l.owner.clone()),
                        peer: Some(peer.ip()),
                        method: None,
                        outcome: "protocol_violation".into(),
                        detail: serde_json::json!({ "violation": "window_exceeded" }),
                    })
                    .await;
            }
            e => debug!(%peer, error = %e, "connection ended with error"),
        }
    }
}
