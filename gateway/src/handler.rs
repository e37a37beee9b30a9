//! The russh `Handler` of one connection: authentication callbacks go to the [`Gate`], channel
//! callbacks only update this connection's channel table and hand work to per-channel tasks.
//!
//! Rule: no callback here awaits anything that depends on the client or on Docker. Incoming
//! data is queued per channel; the queue is bounded by the channel window because the window is
//! only replenished (`Handle::consumed`, our russh patch) once a writer task has really
//! written the bytes out.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use russh::server::{Auth, ChannelOpenHandle, Msg, Session};
use russh::{Channel, ChannelId, ChannelOpenFailure, Pty, Sig};
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{debug, info};

use crate::policy::{self, Program};
use crate::server::{Conn, Login, PermitCell, Shared, Slot};
use crate::{forward, session};

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
struct Pending {
    writer: russh::ChannelWriteHalf<Msg>,
    pty: Option<PtySpec>,
    env: Vec<(String, String)>,
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

pub struct ConnHandler {
    shared: Arc<Shared>,
    peer: SocketAddr,
    permit: PermitCell,
    authed: CancellationToken,
    /// Who authenticated, for the connection task's audit of how the connection ended.
    authed_as: Arc<std::sync::OnceLock<Login>>,
    conn: Option<Arc<Conn>>,
    login: Option<Login>,
    channels: HashMap<ChannelId, ChanEntry>,
}

impl ConnHandler {
    pub fn new(
        shared: Arc<Shared>,
        peer: SocketAddr,
        permit: PermitCell,
        authed: CancellationToken,
        authed_as: Arc<std::sync::OnceLock<Login>>,
    ) -> Self {
        Self {
            shared,
            peer,
            permit,
            authed,
            authed_as,
            conn: None,
            login: None,
            channels: HashMap::new(),
        }
    }

    fn accept_login(&mut self, login: Login) -> Auth {
        self.login = Some(login);
        Auth::Accept
    }

    /// Reserves a slot for a new channel; `None` when unauthenticated or over a limit.
    fn slot(&mut self) -> Option<Slot> {
        self.channels
            .retain(|_, e| !e.finished.load(Ordering::Relaxed));
        let conn = self.conn.as_ref()?;
        self.shared.take_slot(conn)
    }

    fn start(&mut self, id: ChannelId, program: Program, session: &mut Session) {
        let Some(conn) = self.conn.clone() else {
            let _ = session.channel_failure(id);
            return;
        };
        let Some(entry) = self.channels.get_mut(&id) else {
            let _ = session.channel_failure(id);
            return;
        };
        let pending = match std::mem::replace(&mut entry.state, ChanState::Dead) {
            ChanState::Pending(p) => p,
            other => {
                // A second shell/exec on the same channel is a protocol error: refuse it.
                entry.state = other;
                let _ = session.channel_failure(id);
                return;
            }
        };
        let (in_tx, in_rx) = mpsc::unbounded_channel();
        let (ctl_tx, ctl_rx) = mpsc::channel(CTL_QUEUE);
        entry.state = ChanState::Running {
            input: in_tx,
            ctl: Some(ctl_tx),
        };
        let closed = entry.token();
        let finished = entry.finished_guard();
        let _ = session.channel_success(id);
        let Pending { writer, pty, env } = *pending;
        let spec = session::Spec {
            conn,
            id,
            writer,
            program,
            pty,
            env,
            input: in_rx,
            ctl: ctl_rx,
            closed,
        };
        tokio::spawn(async move {
            let _finished = finished;
            session::run(spec).await;
        });
    }
}

impl russh::server::Handler for ConnHandler {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(crate::auth::rejection())
    }

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        match self
            .shared
            .gate
            .password(self.peer.ip(), user, password)
            .await
        {
            Some(login) => Ok(self.accept_login(login)),
            None => Ok(crate::auth::rejection()),
        }
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        match self
            .shared
            .gate
            .public_key(self.peer.ip(), user, offer.public_key, false)
            .await
        {
            Some(_) => Ok(Auth::Accept),
            None => Ok(crate::auth::rejection()),
        }
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        match self
            .shared
            .gate
            .public_key(self.peer.ip(), user, key.public_key, true)
            .await
        {
            Some(login) => Ok(self.accept_login(login)),
            None => Ok(crate::auth::rejection()),
        }
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        response: Option<russh::server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        match response {
            // First round: one no-echo password prompt.
            None => Ok(Auth::Partial {
                name: "".into(),
                instructions: "".into(),
                prompts: vec![("Password: ".into(), false)].into(),
            }),
            Some(mut answers) => {
                let answer = answers.next().unwrap_or_default();
                match self
                    .shared
                    .gate
                    .keyboard_interactive(self.peer.ip(), user, &answer)
                    .await
                {
                    Some(login) => Ok(self.accept_login(login)),
                    None => Ok(crate::auth::rejection()),
                }
            }
        }
    }

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        self.permit.authenticated();
        self.authed.cancel();
        let Some(login) = self.login.clone() else {
            return Ok(());
        };
        let _ = self.authed_as.set(login.clone());
        info!(peer = %self.peer, server = %login.server.login_name(), owner = %login.owner, "authenticated");
        let conn = Conn::new(self.shared.clone(), login, self.peer, session.handle());
        conn.touch();
        spawn_watchdog(conn.clone());
        self.conn = Some(conn);
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(slot) = self.slot() else {
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        };
        let id = channel.id();
        let (read_half, writer) = channel.split();
        drop(read_half);
        self.channels.insert(
            id,
            ChanEntry::new(
                ChanState::Pending(Box::new(Pending {
                    writer,
                    pty: None,
                    env: Vec::new(),
                })),
                slot,
            ),
        );
        reply.accept().await;
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let (Some(conn), Some(slot)) = (self.conn.clone(), self.slot()) else {
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        };
        let id = channel.id();
        let (read_half, writer) = channel.split();
        drop(read_half);
        let (in_tx, in_rx) = mpsc::unbounded_channel();
        let entry = ChanEntry::new(
            ChanState::Running {
                input: in_tx,
                ctl: None,
            },
            slot,
        );
        let closed = entry.token();
        let mut entry = entry;
        let finished = entry.finished_guard();
        self.channels.insert(id, entry);
        let spec = forward::Spec {
            conn,
            closed,
            writer,
            reply,
            host: host_to_connect.to_string(),
            port: port_to_connect,
            input: in_rx,
        };
        tokio::spawn(async move {
            let _finished = finished;
            forward::run(spec).await;
        });
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Dropping the queues tells the channel task to stop (and kill what it started).
        self.channels.remove(&channel);
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(ChanEntry {
            state: ChanState::Running { input, .. },
            ..
        }) = self.channels.get(&channel)
        {
            let _ = input.send(Input::Eof);
        }
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.channels.get(&channel) {
            Some(ChanEntry {
                state: ChanState::Running { input, .. },
                ..
            }) => {
                if let Some(conn) = &self.conn {
                    conn.touch();
                }
                if input
                    .send(Input::Data(Bytes::copy_from_slice(data)))
                    .is_err()
                {
                    // The consumer is gone: give the window back so the client is not stuck.
                    crate::pipe::give_back(&self.shared, &session.handle(), channel, data.len());
                }
            }
            _ => {
                // Data before the program started (or after it failed): discard, but keep the
                // window open.
                crate::pipe::give_back(&self.shared, &session.handle(), channel, data.len());
            }
        }
        Ok(())
    }

    async fn extended_data(
        &mut self,
        channel: ChannelId,
        _code: u32,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        crate::pipe::give_back(&self.shared, &session.handle(), channel, data.len());
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        col_width: u32,
        row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.channels.get_mut(&channel) {
            Some(ChanEntry {
                state: ChanState::Pending(p),
                ..
            }) => {
                let term = if term.is_empty() || !policy::env_value_ok(term) {
                    "xterm"
                } else {
                    term
                };
                p.pty = Some(PtySpec {
                    term: term.to_string(),
                    cols: col_width,
                    rows: row_height,
                });
                session.channel_success(channel)?;
            }
            _ => session.channel_failure(channel)?,
        }
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        variable_name: &str,
        variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let allowed = policy::env_allowed(variable_name, &self.shared.cfg.env_allow)
            && policy::env_value_ok(variable_value);
        match self.channels.get_mut(&channel) {
            Some(ChanEntry {
                state: ChanState::Pending(p),
                ..
            }) if allowed && p.env.len() < 64 => {
                p.env
                    .push((variable_name.to_string(), variable_value.to_string()));
                session.channel_success(channel)?;
            }
            _ => {
                debug!(name = variable_name, "env variable not passed");
                session.channel_failure(channel)?;
            }
        }
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.start(channel, Program::Shell, session);
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match std::str::from_utf8(data) {
            Ok(cmd) if !cmd.contains('\0') => {
                self.start(channel, Program::Exec(cmd.into()), session)
            }
            _ => session.channel_failure(channel)?,
        }
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if name == "sftp" {
            self.start(channel, Program::Sftp, session);
        } else {
            session.channel_failure(channel)?;
        }
        Ok(())
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        col_width: u32,
        row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.channels.get_mut(&channel) {
            Some(ChanEntry {
                state: ChanState::Pending(p),
                ..
            }) => {
                if let Some(pty) = &mut p.pty {
                    pty.cols = col_width;
                    pty.rows = row_height;
                }
            }
            Some(ChanEntry {
                state: ChanState::Running { ctl: Some(ctl), .. },
                ..
            }) => {
                // A full queue drops this resize; the terminal's next resize corrects it.
                let _ = ctl.try_send(Ctl::Resize {
                    cols: col_width,
                    rows: row_height,
                });
            }
            _ => {}
        }
        Ok(())
    }

    async fn signal(
        &mut self,
        channel: ChannelId,
        signal: Sig,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let name = match signal {
            Sig::ABRT => "ABRT".to_string(),
            Sig::ALRM => "ALRM".into(),
            Sig::FPE => "FPE".into(),
            Sig::HUP => "HUP".into(),
            Sig::ILL => "ILL".into(),
            Sig::INT => "INT".into(),
            Sig::KILL => "KILL".into(),
            Sig::PIPE => "PIPE".into(),
            Sig::QUIT => "QUIT".into(),
            Sig::SEGV => "SEGV".into(),
            Sig::TERM => "TERM".into(),
            Sig::USR1 => "USR1".into(),
            Sig::Custom(s) => s,
        };
        if policy::signal_number(&name).is_none() {
            return Ok(());
        }
        if let Some(ChanEntry {
            state: ChanState::Running { ctl: Some(ctl), .. },
            ..
        }) = self.channels.get(&channel)
        {
            let _ = ctl.try_send(Ctl::Signal(name));
        }
        Ok(())
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(false)
    }

    async fn tcpip_forward(
        &mut self,
        _address: &str,
        _port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(false)
    }
}

/// Idle timeout for one authenticated connection.
fn spawn_watchdog(conn: Arc<Conn>) {
    let idle = conn.shared.cfg.idle_timeout_secs;
    if idle == 0 {
        return;
    }
    let idle = Duration::from_secs(idle);
    let tick = (idle / 4).clamp(Duration::from_millis(200), Duration::from_secs(30));
    let weak = Arc::downgrade(&conn);
    drop(conn);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(tick).await;
            let Some(conn) = weak.upgrade() else { return };
            if conn.idle_for() >= idle {
                info!(server = %conn.login.server.login_name(), "closing idle connection");
                let _ = conn
                    .handle
                    .disconnect(
                        russh::Disconnect::ByApplication,
                        "idle timeout".into(),
                        "en".into(),
                    )
                    .await;
                return;
            }
        }
    });
}
