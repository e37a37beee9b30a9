//! The russh `Handler` of one connection, as a translation layer: each authentication callback
//! asks the [`Gate`](crate::gate::Gate); each channel callback is one update of the connection's
//! [`Channels`] table and at most one spawn of a channel task (`session.rs`, `forward.rs`). Its
//! length is russh's callback signatures; the state and its rules live in `channel.rs`.
//!
//! Rule: no callback here awaits anything that depends on the client or on Docker, with one
//! exception: `tcpip-forward` and `streamlocal-forward` must answer whether the listener exists
//! (and which port it got), so they await the container side, bounded (`devflow.rs`); only the
//! asking connection waits, and requests over its listener limit are refused without waiting. Incoming
//! data is queued per channel; the queue is bounded by the channel window because the window is
//! only replenished (`Handle::consumed`, our russh patch) once a writer task has really
//! written the bytes out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use russh::server::{Auth, ChannelOpenHandle, Msg, Session};
use russh::{Channel, ChannelId, ChannelOpenFailure, Pty, Sig};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::channel::{Channels, Input, NotStarted, PtySpec};
use crate::conn::{Conn, Shared, Slot};
use crate::gate::{Login, PermitCell};
use crate::policy::{self, Program};
use crate::{devflow, forward, session};

pub struct ConnHandler {
    shared: Arc<Shared>,
    peer: SocketAddr,
    permit: PermitCell,
    authed: CancellationToken,
    /// Who authenticated, for the connection task's audit of how the connection ended.
    authed_as: Arc<std::sync::OnceLock<Login>>,
    conn: Option<Arc<Conn>>,
    login: Option<Login>,
    channels: Channels,
    /// Client bytes queued for channel pumps since the session loop last yielded to them.
    unyielded: usize,
}

/// The session loop yields to the channel pumps after queueing this many client bytes.
const YIELD_AFTER_INPUT: usize = 256 * 1024;

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
            channels: Channels::default(),
            unyielded: 0,
        }
    }

    /// Every authentication request first: a connection admitted through the owners' reserve
    /// that names no server its source is trusted for is dropped, and its slot freed at once.
    fn claim(&self, user: &str) -> Result<(), russh::Error> {
        if self.permit.claim(user) {
            return Ok(());
        }
        self.permit.release();
        debug!(peer = %self.peer, "reserve slot used for a server the source is not trusted for: closing");
        Err(russh::Error::Disconnect)
    }

    fn accept_login(&mut self, login: Login) -> Auth {
        self.login = Some(login);
        Auth::Accept
    }

    /// Reserves a slot for a new channel; `None` when unauthenticated or over a limit.
    fn slot(&mut self) -> Option<Slot> {
        self.channels.prune();
        let conn = self.conn.as_ref()?;
        self.shared.take_slot(conn)
    }

    fn start(&mut self, id: ChannelId, program: Program, session: &mut Session) {
        let Some(conn) = self.conn.clone() else {
            let _ = session.channel_failure(id);
            return;
        };
        let (pending, started, ctl) = match self.channels.start(id) {
            Ok(x) => x,
            // Unknown, or a second shell/exec on the same channel (a protocol error): refuse.
            Err(NotStarted::Unknown | NotStarted::NotPending) => {
                let _ = session.channel_failure(id);
                return;
            }
        };
        let _ = session.channel_success(id);
        let spec = session::Spec {
            conn,
            id,
            writer: pending.writer,
            program,
            pty: pending.pty,
            env: pending.env,
            input: started.input,
            ctl,
            closed: started.closed,
        };
        let finished = started.finished;
        tokio::spawn(async move {
            let _finished = finished;
            session::run(spec).await;
        });
    }
}

impl russh::server::Handler for ConnHandler {
    type Error = russh::Error;

    async fn authentication_banner(&mut self) -> Result<Option<String>, Self::Error> {
        Ok(self.shared.gate.banner())
    }

    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        self.claim(user)?;
        Ok(crate::auth::rejection())
    }

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        self.claim(user)?;
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
        self.claim(user)?;
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
        self.claim(user)?;
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
        self.claim(user)?;
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
        self.channels.open_session(id, writer, slot);
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
        let started = self.channels.open_forward(id, slot);
        let finished = started.finished;
        let spec = forward::Spec {
            conn,
            closed: started.closed,
            writer,
            reply,
            host: host_to_connect.to_string(),
            port: port_to_connect,
            input: started.input,
        };
        tokio::spawn(async move {
            let _finished = finished;
            forward::run(spec).await;
        });
        Ok(())
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        channel: Channel<Msg>,
        socket_path: &str,
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
        let started = self.channels.open_forward(id, slot);
        let finished = started.finished;
        let spec = devflow::DirectSpec {
            conn,
            closed: started.closed,
            writer,
            reply,
            path: socket_path.to_string(),
            input: started.input,
        };
        tokio::spawn(async move {
            let _finished = finished;
            devflow::direct_streamlocal(spec).await;
        });
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Dropping the queues tells the channel task to stop (and kill what it started).
        self.channels.close(channel);
        if let Some(conn) = &self.conn {
            conn.devflow.forget(channel);
        }
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let _ = self.channels.send_input(channel, Input::Eof);
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.channels.is_running(channel) {
            if let Some(conn) = &self.conn {
                conn.touch();
            }
            let data_len = data.len();
            let data = Input::Data(Bytes::copy_from_slice(data));
            if let Err(Input::Data(data)) = self.channels.send_input(channel, data) {
                // The consumer is gone: give the window back so the client is not stuck.
                crate::pipe::give_back(&self.shared, &session.handle(), channel, data.len());
            } else {
                // Let the channel's pump write what is queued into the container before the
                // session loop decrypts more: without the yield the loop runs a whole scheduling
                // budget of packets first and every busy upload parks up to its window in the
                // gateway's heap instead of the kernel's pipe. Yielding after every packet
                // instead cost a third of the throughput of 60 concurrent uploads.
                self.unyielded += data_len;
                if self.unyielded >= YIELD_AFTER_INPUT {
                    self.unyielded = 0;
                    tokio::task::yield_now().await;
                }
            }
        } else if !self.channels.knows(channel)
            && self.conn.as_ref().is_some_and(|c| c.devflow.owns(channel))
        {
            // A channel the gateway opened: its task returns the window once the bytes are
            // written into the container.
        } else {
            // Data before the program started (or after it failed): discard, but keep the
            // window open.
            crate::pipe::give_back(&self.shared, &session.handle(), channel, data.len());
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
        let term = if term.is_empty() || !policy::env_value_ok(term) {
            "xterm"
        } else {
            term
        };
        let pty = PtySpec {
            term: term.to_string(),
            cols: col_width,
            rows: row_height,
        };
        if self.channels.set_pty(channel, pty) {
            session.channel_success(channel)?;
        } else {
            session.channel_failure(channel)?;
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
        if allowed
            && self
                .channels
                .push_env(channel, variable_name, variable_value)
        {
            session.channel_success(channel)?;
        } else {
            if self.conn.as_ref().is_none_or(|c| c.log_allowed()) {
                debug!(
                    peer = %self.peer,
                    name = %crate::audit::loggable(variable_name, 64),
                    "env variable not passed"
                );
            }
            session.channel_failure(channel)?;
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
            if self.conn.as_ref().is_none_or(|c| c.log_allowed()) {
                debug!(
                    peer = %self.peer,
                    name = %crate::audit::loggable(name, 64),
                    "subsystem refused"
                );
            }
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
        self.channels.resize(channel, col_width, row_height);
        Ok(())
    }

    async fn signal(
        &mut self,
        channel: ChannelId,
        signal: Sig,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let name = policy::ssh_signal_name(signal);
        if policy::signal_number(&name).is_some() {
            self.channels.signal(channel, name);
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
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let Some(conn) = self.conn.clone() else {
            return Ok(false);
        };
        if !self.shared.cfg.allow_agent_forwarding {
            tokio::spawn(async move { devflow::agent_refused(&conn).await });
            return Ok(false);
        }
        Ok(conn.devflow.want_agent(channel))
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        match self.conn.clone() {
            Some(conn) => Ok(devflow::tcpip_forward(&conn, address, port).await),
            None => Ok(false),
        }
    }

    async fn cancel_tcpip_forward(
        &mut self,
        address: &str,
        port: u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(self
            .conn
            .as_ref()
            .is_some_and(|c| devflow::cancel_tcpip_forward(c, address, port)))
    }

    async fn streamlocal_forward(
        &mut self,
        socket_path: &str,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        match self.conn.clone() {
            Some(conn) => Ok(devflow::streamlocal_forward(&conn, socket_path).await),
            None => Ok(false),
        }
    }

    async fn cancel_streamlocal_forward(
        &mut self,
        socket_path: &str,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(self
            .conn
            .as_ref()
            .is_some_and(|c| devflow::cancel_streamlocal_forward(c, socket_path)))
    }
}

impl Drop for ConnHandler {
    fn drop(&mut self) {
        // The connection is over: its listeners in the container go with it.
        if let Some(conn) = &self.conn {
            conn.devflow.clear();
        }
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
