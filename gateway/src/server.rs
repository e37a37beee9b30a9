//! The accept loop: takes already-bound listeners, admits each connection through the
//! [`Gate`](crate::gate::Gate), runs one russh session per connection with a
//! [`ConnHandler`](crate::handler::ConnHandler) under the pre-auth deadline, and drains on
//! shutdown. State shared across connections lives in [`crate::conn`].

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
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
    let trim_stop = CancellationToken::new();
    let trimmer = tokio::spawn(shared.memory.clone().run(trim_stop.clone()));
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
                tracker2.spawn(run_connection(shared, sock, peer, dup_socket));
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
    trim_stop.cancel();
    let _ = trimmer.await;
    info!("gateway drained");
    Ok(())
}

/// The descriptor the connection task closes the socket through (see [`run_connection`]).
fn dup_socket(sock: &tokio::net::TcpStream) -> std::io::Result<OwnedFd> {
    sock.as_fd().try_clone_to_owned()
}

async fn run_connection(
    shared: Arc<Shared>,
    sock: tokio::net::TcpStream,
    peer: SocketAddr,
    dup: fn(&tokio::net::TcpStream) -> std::io::Result<OwnedFd>,
) {
    // The pre-auth deadline is enforced from out here, not inside russh's state machine: a
    // stalled key exchange, a half-sent packet or a stream of SSH_MSG_IGNORE cannot extend it.
    // On expiry the socket is shut down through a duplicate of its descriptor (the session task
    // then sees EOF/EPIPE whatever it is waiting for) and the unauthenticated slot is released
    // here at once, without waiting for that task. Without the duplicate the deadline could not
    // be enforced, so the connection is refused (before admission: the gateway's own failure,
    // e.g. EMFILE, costs the source nothing).
    let killer = match dup(&sock) {
        Ok(fd) => fd,
        Err(e) => {
            warn!(%peer, error = %e, "cannot duplicate the socket for the pre-auth deadline: connection refused");
            return;
        }
    };
    let Some(permit) = shared.gate.admit(peer.ip()) else {
        debug!(%peer, "connection not admitted");
        return;
    };
    let _active = crate::metrics::connection_opened();
    let _ = sock.set_nodelay(true);
    let grace = permit.grace_deadline();
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
    let _ = std::net::TcpStream::from(killer).shutdown(std::net::Shutdown::Both);
    permit.release();
    shared.memory.ended();
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

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use russh::keys::PublicKey;
    use tenants::ServerId;
    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::backend::{
        AuditRecord, Backend, BackendError, Credentials, ExecRequest, Process, Stream, Target,
    };
    use crate::gate::{Gate, Login, Permit};

    struct NoBackend;

    #[async_trait::async_trait]
    impl Backend for NoBackend {
        async fn credentials(&self, _: ServerId) -> Result<Option<Credentials>, BackendError> {
            Ok(None)
        }
        async fn ensure_running(&self, _: ServerId) -> Result<Target, BackendError> {
            Err(BackendError::Failed("not in this test".into()))
        }
        async fn exec(&self, _: &Target, _: &str, _: ExecRequest) -> Result<Process, BackendError> {
            Err(BackendError::Failed("not in this test".into()))
        }
        async fn connect(
            &self,
            _: &Target,
            _: &str,
            _: crate::policy::ForwardDest,
            _: u16,
        ) -> Result<Stream, BackendError> {
            Err(BackendError::Failed("not in this test".into()))
        }
        async fn audit(&self, _: AuditRecord) {}
    }

    /// Admits everyone and counts admissions and slots still held.
    #[derive(Default)]
    struct CountingGate {
        admitted: AtomicUsize,
        held: Arc<AtomicUsize>,
    }

    struct Slot(Arc<AtomicUsize>);
    impl Permit for Slot {
        fn authenticated(self: Box<Self>) {}
    }
    impl Drop for Slot {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    #[async_trait::async_trait]
    impl Gate for CountingGate {
        fn admit(&self, _: IpAddr) -> Option<Box<dyn Permit>> {
            self.admitted.fetch_add(1, Ordering::SeqCst);
            self.held.fetch_add(1, Ordering::SeqCst);
            Some(Box::new(Slot(self.held.clone())))
        }
        async fn password(&self, _: IpAddr, _: &str, _: &str) -> Option<Login> {
            None
        }
        async fn public_key(&self, _: IpAddr, _: &str, _: &PublicKey, _: bool) -> Option<Login> {
            None
        }
    }

    fn failing_dup(_: &tokio::net::TcpStream) -> std::io::Result<OwnedFd> {
        Err(std::io::Error::other("too many open files"))
    }

    /// Runs one connection through `run_connection` with `dup`; returns what the client read
    /// before the gateway closed (or 2 s passed) and the gate.
    async fn one_connection(
        dup: fn(&tokio::net::TcpStream) -> std::io::Result<OwnedFd>,
    ) -> (Vec<u8>, Arc<CountingGate>) {
        let gate = Arc::new(CountingGate::default());
        let shared = Shared::new(
            crate::Config::default(),
            Arc::new(NoBackend),
            gate.clone(),
            Vec::new(),
            Arc::new(crate::conn::Stats::default()),
        );
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("local addr: {e}"));
        let mut client = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect: {e}"));
        let (sock, peer) = listener
            .accept()
            .await
            .unwrap_or_else(|e| panic!("accept: {e}"));
        let conn = tokio::spawn(run_connection(shared.clone(), sock, peer, dup));
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        // Until EOF, or until the server's version line is in.
        while !got.contains(&b'\n') {
            match tokio::time::timeout(Duration::from_secs(2), client.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            }
        }
        shared.deadline.cancel();
        drop(client);
        let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        (got, gate)
    }

    #[tokio::test]
    async fn a_failed_dup_refuses_the_connection_before_admission() {
        let (got, gate) = one_connection(failing_dup).await;
        assert!(
            got.is_empty(),
            "the client got {:?} from a connection without an enforceable deadline",
            String::from_utf8_lossy(&got)
        );
        assert_eq!(gate.admitted.load(Ordering::SeqCst), 0, "never admitted");
        assert_eq!(gate.held.load(Ordering::SeqCst), 0, "no slot held");
    }

    #[tokio::test]
    async fn a_working_dup_serves_the_connection() {
        // The control for the test above: the same setup with a real dup gets the version line.
        let (got, gate) = one_connection(dup_socket).await;
        assert!(
            got.starts_with(b"SSH-2.0-berth"),
            "{:?}",
            String::from_utf8_lossy(&got)
        );
        assert_eq!(gate.admitted.load(Ordering::SeqCst), 1);
        assert_eq!(gate.held.load(Ordering::SeqCst), 0, "the slot was released");
    }
}
