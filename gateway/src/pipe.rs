//! Moving bytes between an SSH channel and a sink/source with bounded memory.
//!
//! Client → sink: [`pump_input`] writes queued chunks into the sink and only then returns the
//! window to the client (`Handle::consumed`), so the queue never holds more than one window.
//! Source → client: [`send`] writes through `ChannelWriteHalf`, which waits for the client's
//! window of *this* channel, so a slow reader stalls only its own channel; the channel tasks
//! (`session.rs`, `forward.rs`) call it for each chunk they read.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use russh::ChannelId;
use russh::server::{Handle, Msg};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::channel::Input;
use crate::conn::Conn;

/// Return window in batches of at least this many bytes (or when the queue runs dry).
const CREDIT_BATCH: usize = 64 * 1024;

/// How the input side ended.
#[derive(Debug, PartialEq, Eq)]
pub enum InputEnd {
    /// The client sent EOF (the sink was shut down unless `keep_open`).
    Eof,
    /// The channel or connection went away.
    Closed,
    /// Writing to the sink failed (e.g. the process exited).
    SinkGone,
}

/// Copies client data into `sink`, crediting the window after each write.
/// With `keep_open` (PTY execs), EOF does not shut the sink down: shutting a TTY exec's stdin
/// ends Docker's attach stream while the process keeps running.
pub async fn pump_input<W: AsyncWrite + Unpin>(
    mut input: mpsc::UnboundedReceiver<Input>,
    mut sink: W,
    conn: Arc<Conn>,
    id: ChannelId,
    keep_open: bool,
    counter: Arc<AtomicU64>,
    bucket: crate::limits::Throttle,
) -> InputEnd {
    let mut owed = 0usize;
    let end = loop {
        let msg = match input.try_recv() {
            Ok(m) => m,
            Err(mpsc::error::TryRecvError::Empty) => {
                if owed > 0 {
                    credit(&conn, id, &mut owed);
                }
                if sink.flush().await.is_err() {
                    break InputEnd::SinkGone;
                }
                match input.recv().await {
                    Some(m) => m,
                    None => break InputEnd::Closed,
                }
            }
            Err(mpsc::error::TryRecvError::Disconnected) => break InputEnd::Closed,
        };
        match msg {
            Input::Data(bytes) => {
                let n = bytes.len();
                // The bandwidth limit: the window for these bytes goes back only once they
                // have gone on, so the client slows down with us; what was written before the
                // wait is credited first.
                let wait = bucket.reserve(n, std::time::Instant::now());
                if !wait.is_zero() {
                    if owed > 0 {
                        credit(&conn, id, &mut owed);
                    }
                    tokio::time::sleep(wait).await;
                }
                if sink.write_all(&bytes).await.is_err() {
                    owed += n;
                    break InputEnd::SinkGone;
                }
                counter.fetch_add(n as u64, Ordering::Relaxed);
                crate::metrics::bytes_to_container(n as u64);
                owed += n;
                if owed >= CREDIT_BATCH {
                    credit(&conn, id, &mut owed);
                }
            }
            Input::Eof => {
                let _ = sink.flush().await;
                if !keep_open {
                    let _ = sink.shutdown().await;
                }
                break InputEnd::Eof;
            }
        }
    };
    if owed > 0 {
        credit(&conn, id, &mut owed);
    }
    // Dropping `input` now is safe: later data finds the queue closed and `Handler::data`
    // returns its window at once, so the client never stalls on a full window.
    end
}

fn credit(conn: &Conn, id: ChannelId, owed: &mut usize) {
    give_back(&conn.shared, &conn.handle, id, *owed);
    *owed = 0;
}

/// Returns `n` bytes of receive window to the client for channel `id` (no-op when russh
/// replenishes on receipt, `consumption_window = false`).
pub fn give_back(shared: &crate::conn::Shared, handle: &Handle, id: ChannelId, n: usize) {
    if shared.cfg.consumption_window && n > 0 {
        let _ = handle.consumed(id, u32::try_from(n).unwrap_or(u32::MAX));
    }
}

/// Sends one chunk to the client on stdout (`ext = None`) or stderr (`Some(1)`), waiting for this
/// channel's window. Errors when the channel or connection is gone.
pub async fn send(
    writer: &russh::ChannelWriteHalf<Msg>,
    conn: &Conn,
    ext: Option<u32>,
    data: Bytes,
    counter: &AtomicU64,
) -> Result<(), russh::Error> {
    let n = data.len() as u64;
    match ext {
        None => writer.data_bytes(data).await?,
        Some(e) => writer.extended_data_bytes(e, data).await?,
    }
    counter.fetch_add(n, Ordering::Relaxed);
    crate::metrics::bytes_to_client(n);
    conn.touch();
    Ok(())
}

/// [`send`], abandoned when `closed` fires (the channel is gone and its window never returns).
/// True when the data was handed to the session.
pub async fn send_or_closed(
    writer: &russh::ChannelWriteHalf<Msg>,
    conn: &Conn,
    ext: Option<u32>,
    data: Bytes,
    counter: &AtomicU64,
    closed: &tokio_util::sync::CancellationToken,
) -> bool {
    tokio::select! {
        r = send(writer, conn, ext, data, counter) => r.is_ok(),
        _ = closed.cancelled() => false,
    }
}
