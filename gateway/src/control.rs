//! Live sessions for the operator: the [`Registry`] of running session channels (who, what,
//! since when, idle, bytes, recorded) and the local control socket that lists and ends them
//! (`berth session list|kill`).
//!
//! The socket speaks one JSON request per line and answers one JSON line. It is for root only:
//! the file is 0600 and every connection's peer credentials must say uid 0, or it is closed
//! unanswered (a socket file's mode alone can be wrong after an operator's chmod). Ending a
//! session tells its client why on stderr, hangs up its process and closes the channel; other
//! channels of the same connection go on. Forward channels are listed too (kind "forward",
//! never counted against a session cap) and ending one closes it.
//!
//! The same socket answers `servers`: every container's state as the gateway's process follows
//! them through Docker's events, so `berth server list` costs one socket round trip instead of
//! Docker listing every container (the slow part once a host holds hundreds of servers).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tenants::ServerId;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::conn::Conn;

/// One running session channel.
pub struct Live {
    pub id: u64,
    pub conn: Arc<Conn>,
    pub kind: &'static str,
    pub started: SystemTime,
    pub recording: bool,
    pub bytes_in: Arc<AtomicU64>,
    pub bytes_out: Arc<AtomicU64>,
    kill: CancellationToken,
    message: Mutex<Option<String>>,
}

impl Live {
    /// Fires when the operator ends this session.
    pub fn killed(&self) -> CancellationToken {
        self.kill.clone()
    }

    /// The line the client is shown when the session is ended.
    pub fn kill_line(&self) -> String {
        let msg = self.message.lock().ok().and_then(|m| m.clone());
        match msg {
            Some(m) if !m.is_empty() => {
                format!("\r\nberth: this session was ended by the operator: {m}\r\n")
            }
            _ => "\r\nberth: this session was ended by the operator\r\n".into(),
        }
    }

    fn view(&self) -> SessionView {
        SessionView {
            id: self.id,
            server: self.conn.login.server.get(),
            account: self.conn.login.owner.clone(),
            peer: self.conn.peer.to_string(),
            kind: self.kind.into(),
            started: self
                .started
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            idle_secs: self.conn.idle_for().as_secs(),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            recording: self.recording,
        }
    }
}

/// A live session as the control socket describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionView {
    pub id: u64,
    pub server: u32,
    pub account: String,
    pub peer: String,
    /// "shell", "exec", "sftp" or "forward".
    pub kind: String,
    /// Unix seconds.
    pub started: u64,
    /// Seconds since the connection last carried channel data.
    pub idle_secs: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub recording: bool,
}

/// The running session channels of one gateway.
#[derive(Default)]
pub struct Registry {
    next: AtomicU64,
    /// Bumped whenever a session is listed or leaves (what the cluster publisher watches).
    generation: AtomicU64,
    map: Mutex<HashMap<u64, Arc<Live>>>,
}

/// Keeps a session listed; dropping it removes the entry.
pub struct Registration {
    registry: Arc<Registry>,
    pub live: Arc<Live>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut m) = self.registry.map.lock() {
            m.remove(&self.live.id);
        }
        self.registry.generation.fetch_add(1, Ordering::Relaxed);
    }
}

impl Registry {
    /// Lists a starting session, unless `caps` refuse it (counted under the same lock, so two
    /// sessions starting together cannot both take the last place): then the tenant's line.
    pub fn register(
        self: &Arc<Self>,
        conn: &Arc<Conn>,
        kind: &'static str,
        recording: bool,
        bytes_in: Arc<AtomicU64>,
        bytes_out: Arc<AtomicU64>,
        caps: crate::limits::Caps,
    ) -> Result<Registration, String> {
        let mut m = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if caps != crate::limits::Caps::default() {
            let (mut on_server, mut of_account) = (0, 0);
            for l in m.values().filter(|l| l.kind != "forward") {
                on_server += usize::from(l.conn.login.server == conn.login.server);
                of_account += usize::from(l.conn.login.owner == conn.login.owner);
            }
            caps.admit(on_server, of_account)?;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let live = Arc::new(Live {
            id,
            conn: conn.clone(),
            kind,
            started: SystemTime::now(),
            recording,
            bytes_in,
            bytes_out,
            kill: CancellationToken::new(),
            message: Mutex::new(None),
        });
        m.insert(id, live.clone());
        self.generation.fetch_add(1, Ordering::Relaxed);
        Ok(Registration {
            registry: self.clone(),
            live,
        })
    }

    /// Changes whenever a session starts or ends.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    fn matching(&self, sel: &Selector) -> Vec<Arc<Live>> {
        let Ok(m) = self.map.lock() else {
            return Vec::new();
        };
        let mut v: Vec<Arc<Live>> = m.values().filter(|l| sel.matches(l)).cloned().collect();
        v.sort_by_key(|l| l.id);
        v
    }

    /// The live sessions `sel` names, by id.
    pub fn list(&self, sel: &Selector) -> Vec<SessionView> {
        self.matching(sel).iter().map(|l| l.view()).collect()
    }

    /// Ends the sessions `sel` names, telling their clients `message`; how many.
    pub fn kill(&self, sel: &Selector, message: Option<&str>) -> usize {
        let hits = self.matching(sel);
        for l in &hits {
            if let Ok(mut m) = l.message.lock() {
                *m = message.map(|s| crate::audit::loggable(s, 200));
            }
            l.kill.cancel();
            info!(id = l.id, server = %l.conn.login.server.login_name(), peer = %l.conn.peer, kind = l.kind, "session ended by the operator");
        }
        hits.len()
    }
}

/// Which sessions a request is about (all fields set must match; none set: all sessions).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Selector {
    pub id: Option<u64>,
    pub server: Option<u32>,
    pub account: Option<String>,
}

impl Selector {
    fn matches(&self, l: &Live) -> bool {
        self.id.is_none_or(|id| id == l.id)
            && self
                .server
                .is_none_or(|s| ServerId::new(s) == Some(l.conn.login.server))
            && self
                .account
                .as_ref()
                .is_none_or(|a| *a == l.conn.login.owner)
    }
}

/// One control request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    List {
        #[serde(default)]
        select: Selector,
    },
    Kill {
        select: Selector,
        #[serde(default)]
        message: Option<String>,
    },
    Servers,
}

/// One container in the answer to `servers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerState {
    pub server: u32,
    #[serde(flatten)]
    pub status: tenants::ContainerStatus,
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reply {
    Sessions(Vec<SessionView>),
    Killed(usize),
    Servers(Vec<ServerState>),
    Error(String),
}

/// What the control socket answers from: the live sessions, and the container states when this
/// process follows them (`None`: `servers` is refused and the CLI asks Docker itself).
#[derive(Clone)]
pub struct Sources {
    pub live: Arc<Registry>,
    pub states: Option<watch::Receiver<tenants::Statuses>>,
}

impl Sources {
    pub fn sessions_only(live: Arc<Registry>) -> Sources {
        Sources { live, states: None }
    }
}

/// Requests longer than this are refused (a request is a few dozen bytes).
const MAX_REQUEST: u64 = 4096;

/// Answers one request line.
pub fn answer(src: &Sources, line: &str) -> Reply {
    let registry = &src.live;
    match serde_json::from_str::<Request>(line) {
        Ok(Request::Servers) => servers(src.states.as_ref()),
        Ok(Request::List { select }) => Reply::Sessions(registry.list(&select)),
        Ok(Request::Kill { select, message }) => {
            if select == Selector::default() {
                return Reply::Error("kill needs an id, a server or an account".into());
            }
            Reply::Killed(registry.kill(&select, message.as_deref()))
        }
        Err(e) => Reply::Error(format!("bad request: {e}")),
    }
}

fn servers(states: Option<&watch::Receiver<tenants::Statuses>>) -> Reply {
    let Some(states) = states else {
        return Reply::Error("this gateway does not follow container states".into());
    };
    match &*states.borrow() {
        Some(map) => Reply::Servers(
            map.iter()
                .map(|(id, status)| ServerState {
                    server: id.get(),
                    status: status.clone(),
                })
                .collect(),
        ),
        None => Reply::Error("docker does not answer the gateway's container list".into()),
    }
}

/// Binds the control socket at `path` (an old socket file there is replaced), 0600.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Serves the control socket until `stop` fires. Connections whose peer is not root are
/// closed unanswered.
pub async fn serve(src: Sources, listener: UnixListener, stop: CancellationToken) {
    loop {
        let sock = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let root = sock.peer_cred().map(|c| c.uid() == 0).unwrap_or(false);
        if !root {
            warn!("control socket connection refused: the peer is not root");
            continue;
        }
        let src = src.clone();
        tokio::spawn(async move {
            let (r, mut w) = sock.into_split();
            let mut line = String::new();
            let mut r = BufReader::new(tokio::io::AsyncReadExt::take(r, MAX_REQUEST));
            let reply = match r.read_line(&mut line).await {
                Ok(_) => answer(&src, line.trim()),
                Err(e) => Reply::Error(format!("bad request: {e}")),
            };
            let mut text = serde_json::to_string(&reply).unwrap_or_else(|_| "{}".into());
            text.push('\n');
            let _ = w.write_all(text.as_bytes()).await;
        });
    }
}

/// The client side: sends one request to the socket at `path` and reads the reply.
pub async fn request(path: &Path, req: &Request) -> std::io::Result<Reply> {
    let mut sock = tokio::net::UnixStream::connect(path).await?;
    let mut text = serde_json::to_string(req).map_err(std::io::Error::other)?;
    text.push('\n');
    sock.write_all(text.as_bytes()).await?;
    let mut line = String::new();
    BufReader::new(sock).read_line(&mut line).await?;
    serde_json::from_str(&line).map_err(std::io::Error::other)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_an_empty_kill_is_refused() {
        let r = Sources::sessions_only(Arc::new(Registry::default()));
        assert_eq!(answer(&r, r#"{"op":"list"}"#), Reply::Sessions(Vec::new()));
        assert_eq!(
            answer(&r, r#"{"op":"kill","select":{"server":7},"message":"bye"}"#),
            Reply::Killed(0)
        );
        assert!(matches!(
            answer(&r, r#"{"op":"kill","select":{}}"#),
            Reply::Error(e) if e.contains("needs")
        ));
        assert!(matches!(answer(&r, "garbage"), Reply::Error(_)));
        assert!(matches!(
            answer(&r, r#"{"op":"list","select":{"nope":1}}"#),
            Reply::Error(_)
        ));
    }

    #[test]
    fn servers_answers_the_followed_states_and_refuses_without_them() {
        use std::collections::BTreeMap;
        let live = Arc::new(Registry::default());
        let none = Sources::sessions_only(live.clone());
        assert!(matches!(
            answer(&none, r#"{"op":"servers"}"#),
            Reply::Error(e) if e.contains("does not follow")
        ));
        let (tx, rx) = watch::channel(None);
        let src = Sources {
            live,
            states: Some(rx),
        };
        assert!(matches!(
            answer(&src, r#"{"op":"servers"}"#),
            Reply::Error(e) if e.contains("docker")
        ));
        let id = tenants::parse_server_ref("7").unwrap();
        let status = tenants::ContainerStatus {
            container_id: "abc".into(),
            state: "exited".into(),
            running: false,
            address: None,
        };
        tx.send_replace(Some(BTreeMap::from([(id, status.clone())])));
        let reply = answer(&src, r#"{"op":"servers"}"#);
        assert_eq!(
            reply,
            Reply::Servers(vec![ServerState { server: 7, status }])
        );
        // The reply survives the trip through JSON the CLI makes.
        let text = serde_json::to_string(&reply).unwrap();
        assert_eq!(serde_json::from_str::<Reply>(&text).unwrap(), reply);
        assert!(matches!(
            answer(&src, r#"{"op":"server"}"#),
            Reply::Error(_)
        ));
    }
}
