//! `direct-tcpip` (`ssh -L`, `ssh -W`): a TCP connection to the tenant's own container, and
//! nowhere else. `localhost` and loopback addresses mean the container's own loopback (the
//! backend connects from inside its network namespace); its name or address, its address.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use russh::ChannelOpenFailure;
use russh::server::{ChannelOpenHandle, Msg};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::backend::Stream;
use crate::channel::Input;
use crate::conn::Conn;
use crate::pipe;
use crate::policy;

pub struct Spec {
    pub conn: Arc<Conn>,
    pub closed: CancellationToken,
    /// The read half was dropped at open (see `channel::Pending`).
    pub writer: russh::ChannelWriteHalf<Msg>,
    pub reply: ChannelOpenHandle,
    pub host: String,
    pub port: u32,
    pub input: mpsc::UnboundedReceiver<Input>,
}

pub async fn run(spec: Spec) {
    let Spec {
        conn,
        closed,
        writer,
        reply,
        host,
        port,
        input,
    } = spec;
    let started = Instant::now();
    let _active = crate::metrics::session_opened(crate::metrics::SessionKind::DirectTcpip);
    // The host is the client's text: bounded and escaped here and again in `Conn::audit`.
    let audit = |outcome: &'static str, detail: serde_json::Value| {
        let conn = conn.clone();
        async move { conn.audit("forward", "direct-tcpip", outcome, detail).await }
    };
    let target = match conn.target().await {
        Ok(t) => t,
        Err(e) => {
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            audit(
                "error",
                serde_json::json!({ "host": host, "port": port, "error": e.to_string() }),
            )
            .await;
            return;
        }
    };
    let login = conn.login.server.login_name();
    let (dest, port16) = match (
        policy::forward_target(&host, &login, target.address),
        u16::try_from(port),
    ) {
        (Some(d), Ok(p)) if p != 0 => (d, p),
        _ => {
            if conn.log_allowed() {
                info!(
                    server = %login,
                    peer = %conn.peer,
                    host = %crate::audit::loggable(&host, crate::audit::MAX_FIELD_CHARS),
                    port,
                    "direct-tcpip refused: not the tenant's own container"
                );
            }
            crate::metrics::exec_error();
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            audit(
                "rejected",
                serde_json::json!({ "host": host, "port": port }),
            )
            .await;
            return;
        }
    };
    let connected = tokio::time::timeout(
        Duration::from_secs(20),
        conn.shared.backend.connect(&target, &login, dest, port16),
    )
    .await;
    let stream = match connected {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            debug!(?dest, port, error = %e, "direct-tcpip connect failed");
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            audit(
                "failure",
                serde_json::json!({ "host": host, "port": port, "error": e.to_string() }),
            )
            .await;
            return;
        }
        Err(_) => {
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            audit(
                "failure",
                serde_json::json!({ "host": host, "port": port, "error": "timeout" }),
            )
            .await;
            return;
        }
    };
    reply.accept().await;
    debug!(server = %login, path = stream.path, "forward connected");
    let (bytes_in, bytes_out) = relay(&conn, writer, input, &closed, stream).await;
    audit(
        "closed",
        serde_json::json!({
            "host": host, "port": port,
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
            "duration_ms": started.elapsed().as_millis() as u64,
        }),
    )
    .await;
}

/// How long a closed forward channel's last bytes may take to reach the stream.
const INPUT_DRAIN: Duration = Duration::from_secs(5);

/// Moves bytes between an accepted forward channel and `stream` until either side is done:
/// client data through `input` (credited once written), stream data to the client through the
/// channel's window. Returns the bytes moved (to the stream, to the client).
pub async fn relay(
    conn: &Arc<Conn>,
    writer: russh::ChannelWriteHalf<Msg>,
    input: mpsc::UnboundedReceiver<Input>,
    closed: &CancellationToken,
    stream: Stream,
) -> (u64, u64) {
    // The server's bandwidth limit, shared with its other channels, for every kind of forward
    // (the store down: none).
    let bandwidth = crate::limits::bandwidth(
        conn.shared
            .backend
            .operations(conn.login.server)
            .await
            .as_ref()
            .ok(),
    );
    let pool = conn.shared.bandwidth.get(conn.login.server, bandwidth);
    let Stream {
        read: mut rd,
        write: wr,
        ..
    } = stream;
    let bytes_in = Arc::new(AtomicU64::new(0));
    let bytes_out = Arc::new(AtomicU64::new(0));
    // Listed beside the sessions (`berth session list`, kind "forward") and ended by
    // `berth session kill` like them; never counted against a session cap.
    let listed = conn
        .shared
        .live
        .register(
            conn,
            "forward",
            false,
            bytes_in.clone(),
            bytes_out.clone(),
            crate::limits::Caps::default(),
        )
        .ok();
    let killed = listed.as_ref().map(|l| l.live.killed()).unwrap_or_default();
    let mut in_task = tokio::spawn(pipe::pump_input(
        input,
        wr,
        conn.clone(),
        writer.id(),
        false,
        bytes_in.clone(),
        crate::limits::Throttle::up(pool.as_ref()),
    ));
    let out_bucket = crate::limits::Throttle::down(pool.as_ref());
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut in_done = false;
    loop {
        buf.reserve(64 * 1024);
        let n = tokio::select! {
            r = rd.read_buf(&mut buf) => r.unwrap_or(0),
            _ = closed.cancelled() => break,
            _ = killed.cancelled() => {
                in_done = true;
                break;
            }
        };
        if n == 0 {
            let _ = writer.eof().await;
            // Close once the client side is finished too (its EOF written out), or gone.
            tokio::select! {
                _ = &mut in_task => in_done = true,
                _ = closed.cancelled() => {}
            }
            break;
        }
        let chunk = buf.split().freeze();
        out_bucket.take(chunk.len()).await;
        if !pipe::send_or_closed(&writer, conn, None, chunk, &bytes_out, closed).await {
            break;
        }
    }
    // What the client sent before it closed the channel still goes to the stream: its queue
    // ends with the channel, so this waits only for a slow stream (a relayed one waits for the
    // other host's window), and not forever for one that no longer reads.
    if !in_done {
        let _ = tokio::time::timeout(INPUT_DRAIN, &mut in_task).await;
    }
    let _ = writer.close().await;
    in_task.abort();
    (
        bytes_in.load(Ordering::Relaxed),
        bytes_out.load(Ordering::Relaxed),
    )
}
