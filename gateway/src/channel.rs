//! A connection's channels as the russh handler tracks them: the table of open channels
//! ([`Channels`]), what each holds before and after its program starts, and the messages the
//! handler passes to a running channel's task ([`Input`], [`Ctl`]).
//!
//! Its own file so the handler's callbacks read as "look up, hand over" and the channel tasks
//! (`session.rs`, `forward.rs`, `pipe.rs`) take their message types from here rather than
//! from the handler that spawns them. Nothing here awaits: every operation is a table update
//! or a non-blocking send, which is what keeps the connection's loop from stalling.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use russh::ChannelId;
use russh::server::Msg;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::conn::Slot;

/// Bytes from the client for one channel.
#[derive(Debug)]
pub enum Input {
    Data(Bytes),
    Eof,
}

/// Control requests for a running channel.
#[derive(Debug)]
pub enum Ctl {
    Resize { cols: u32, rows: u32 },
    Signal(String),
}

/// Control requests (resize, signal) that may wait for a running channel's task.
const CTL_QUEUE: usize = 16;

/// Environment variables kept per channel before its program starts.
const MAX_ENV: usize = 64;

/// Terminal requested with `pty-req`.
#[derive(Debug, Clone)]
pub struct PtySpec {
    pub term: String,
    pub cols: u32,
    pub rows: u32,
}

/// A session channel before its program starts. Only the write half of russh's `Channel` is
/// kept: the read half is dropped at open, so russh's per-channel queue is closed and a client
/// sending hundreds of requests or data packets before `exec` can never fill it (a full queue
/// blocks the whole connection's loop). Requests are answered from the handler callbacks.
pub struct Pending {
    pub writer: russh::ChannelWriteHalf<Msg>,
    pub pty: Option<PtySpec>,
    pub env: Vec<(String, String)>,
}

enum ChanState {
    /// Session channel before shell/exec/subsystem.
    Pending(Box<Pending>),
    /// Running: a task owns the channel's writer and reads these queues.
    Running {
        input: mpsc::UnboundedSender<Input>,
        /// Bounded: resize and signal requests beyond [`CTL_QUEUE`] waiting ones are refused,
        /// so a flood of `window-change` cannot grow memory while Docker is slow.
        ctl: Option<mpsc::Sender<Ctl>>,
    },
    /// Nothing more will be accepted (failed start).
    Dead,
}

struct ChanEntry {
    state: ChanState,
    /// Cancels the channel's task when the entry goes (channel close, disconnect).
    closed: DropGuard,
    /// Moves into the channel's task when it starts (released when the task ends).
    slot: Option<Slot>,
    /// Set when the channel's task has finished. russh forgets a channel once *we* have sent
    /// CHANNEL_CLOSE and then never calls `channel_close`, so finished entries are pruned here.
    finished: Arc<AtomicBool>,
}

impl ChanEntry {
    fn new(state: ChanState, slot: Slot) -> Self {
        Self {
            state,
            closed: CancellationToken::new().drop_guard(),
            slot: Some(slot),
            finished: Arc::new(AtomicBool::new(false)),
        }
    }
    fn token(&self) -> CancellationToken {
        self.closed.token().clone()
    }
    fn finished_guard(&mut self) -> Finished {
        Finished {
            flag: self.finished.clone(),
            _slot: self.slot.take(),
        }
    }
}

/// Held by a channel task: owns the channel's slot and marks the table entry finished when
/// dropped.
pub struct Finished {
    flag: Arc<AtomicBool>,
    _slot: Option<Slot>,
}

impl Drop for Finished {
    fn drop(&mut self) {
        self.flag.store(true, Ordering::Relaxed);
    }
}

/// What a channel's task needs from the table when it starts.
pub struct Started {
    pub input: mpsc::UnboundedReceiver<Input>,
    /// Cancelled when the client closes the channel or the connection goes away.
    pub closed: CancellationToken,
    /// Keep alive for as long as the task runs.
    pub finished: Finished,
}

/// Why [`Channels::start`] refused.
pub enum NotStarted {
    /// No such channel.
    Unknown,
    /// Already started (or failed): a second shell/exec is a protocol error.
    NotPending,
}

/// The open channels of one connection.
#[derive(Default)]
pub struct Channels {
    map: HashMap<ChannelId, ChanEntry>,
}

impl Channels {
    /// Forgets channels whose task has finished (see [`ChanEntry::finished`]).
    pub fn prune(&mut self) {
        self.map.retain(|_, e| !e.finished.load(Ordering::Relaxed));
    }

    /// A new session channel, waiting for its shell/exec/subsystem request.
    pub fn open_session(
        &mut self,
        id: ChannelId,
        writer: russh::ChannelWriteHalf<Msg>,
        slot: Slot,
    ) {
        let pending = Pending {
            writer,
            pty: None,
            env: Vec::new(),
        };
        self.map.insert(
            id,
            ChanEntry::new(ChanState::Pending(Box::new(pending)), slot),
        );
    }

    /// A new forward channel, running at once (no control queue).
    pub fn open_forward(&mut self, id: ChannelId, slot: Slot) -> Started {
        let (in_tx, in_rx) = mpsc::unbounded_channel();
        let mut entry = ChanEntry::new(
            ChanState::Running {
                input: in_tx,
                ctl: None,
            },
            slot,
        );
        let closed = entry.token();
        let finished = entry.finished_guard();
        self.map.insert(id, entry);
        Started {
            input: in_rx,
            closed,
            finished,
        }
    }

    /// Moves a pending session channel to running and returns what its task needs, with the
    /// receiving end of its control queue.
    #[allow(clippy::type_complexity)]
    pub fn start(
        &mut self,
        id: ChannelId,
    ) -> Result<(Pending, Started, mpsc::Receiver<Ctl>), NotStarted> {
        let entry = self.map.get_mut(&id).ok_or(NotStarted::Unknown)?;
        let pending = match std::mem::replace(&mut entry.state, ChanState::Dead) {
            ChanState::Pending(p) => p,
            other => {
                entry.state = other;
                return Err(NotStarted::NotPending);
            }
        };
        let (in_tx, in_rx) = mpsc::unbounded_channel();
        let (ctl_tx, ctl_rx) = mpsc::channel(CTL_QUEUE);
        entry.state = ChanState::Running {
            input: in_tx,
            ctl: Some(ctl_tx),
        };
        let started = Started {
            input: in_rx,
            closed: entry.token(),
            finished: entry.finished_guard(),
        };
        Ok((*pending, started, ctl_rx))
    }

    /// Dropping the entry cancels the channel's task (which kills what it started).
    pub fn close(&mut self, id: ChannelId) {
        self.map.remove(&id);
    }

    /// Queues client input for a running channel. `Err` (with the input back) when the
    /// channel is not running or its task no longer reads: the caller returns the window.
    pub fn send_input(&self, id: ChannelId, input: Input) -> Result<(), Input> {
        match self.map.get(&id) {
            Some(ChanEntry {
                state: ChanState::Running { input: tx, .. },
                ..
            }) => tx.send(input).map_err(|e| e.0),
            _ => Err(input),
        }
    }

    /// True if `id` is in the table at all (the client opened it).
    pub fn knows(&self, id: ChannelId) -> bool {
        self.map.contains_key(&id)
    }

    /// True if `id` is running (data for it is queued rather than discarded).
    pub fn is_running(&self, id: ChannelId) -> bool {
        matches!(
            self.map.get(&id),
            Some(ChanEntry {
                state: ChanState::Running { .. },
                ..
            })
        )
    }

    /// Records a terminal request; false unless the channel is pending.
    pub fn set_pty(&mut self, id: ChannelId, pty: PtySpec) -> bool {
        match self.pending_mut(id) {
            Some(p) => {
                p.pty = Some(pty);
                true
            }
            None => false,
        }
    }

    /// Records an (already allowed) environment variable; false unless the channel is pending
    /// and has room.
    pub fn push_env(&mut self, id: ChannelId, name: &str, value: &str) -> bool {
        match self.pending_mut(id) {
            Some(p) if p.env.len() < MAX_ENV => {
                p.env.push((name.to_string(), value.to_string()));
                true
            }
            _ => false,
        }
    }

    /// A window change: updates the requested terminal before start, or queues a resize for a
    /// running channel (a full queue drops it; the terminal's next resize corrects it).
    pub fn resize(&mut self, id: ChannelId, cols: u32, rows: u32) {
        match self.map.get_mut(&id) {
            Some(ChanEntry {
                state: ChanState::Pending(p),
                ..
            }) => {
                if let Some(pty) = &mut p.pty {
                    pty.cols = cols;
                    pty.rows = rows;
                }
            }
            Some(ChanEntry {
                state: ChanState::Running { ctl: Some(ctl), .. },
                ..
            }) => {
                let _ = ctl.try_send(Ctl::Resize { cols, rows });
            }
            _ => {}
        }
    }

    /// Queues a signal for a running session channel (dropped when the queue is full).
    pub fn signal(&self, id: ChannelId, name: String) {
        if let Some(ChanEntry {
            state: ChanState::Running { ctl: Some(ctl), .. },
            ..
        }) = self.map.get(&id)
        {
            let _ = ctl.try_send(Ctl::Signal(name));
        }
    }

    fn pending_mut(&mut self, id: ChannelId) -> Option<&mut Pending> {
        match self.map.get_mut(&id) {
            Some(ChanEntry {
                state: ChanState::Pending(p),
                ..
            }) => Some(p),
            _ => None,
        }
    }
}
