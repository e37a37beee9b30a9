//! SFTP audit per operation: the SFTP (version 3, OpenSSH's) stream between the client and the
//! tenant's own `sftp-server` is read in flight, never changed, and turns into one audit entry
//! per open, close (with the bytes read and written through the handle), remove, rename, mkdir,
//! rmdir, setstat and symlink, with the server's answer as the outcome.
//!
//! [`SftpAudit`] is pure: bytes in, [`Entry`]s out. It keeps at most [`HEAD_CAP`] bytes of any
//! packet (the fields before a READ's or WRITE's data; data is counted, not kept), at most
//! [`MAX_PENDING`] unanswered requests and [`MAX_HANDLES`] open handles, and paths of at most
//! [`MAX_PATH`] characters, so its memory per session is bounded whatever either side sends.
//! Packets it cannot read are skipped; a stream it cannot frame (a length beyond any SFTP
//! packet) stops the audit of that session with one entry saying so. Nothing here can fail the
//! session: the bytes it reads have already gone their way. [`Tap`] connects it to a session.
//! Reads of metadata (stat, readdir, realpath) are not audited.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use serde_json::json;
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;

/// Bytes kept of one packet: enough for two paths of 4096 bytes and their framing.
pub const HEAD_CAP: usize = 8 * 1024 + 256;
/// A length beyond this is no SFTP packet (OpenSSH's limit is 256 KiB): the audit stops.
pub const MAX_PACKET: u32 = 1024 * 1024;
/// Requests awaiting their answer that are tracked; more are answered unaudited.
pub const MAX_PENDING: usize = 512;
/// Open handles tracked; more are used unaudited (their opens are still audited).
pub const MAX_HANDLES: usize = 256;
/// Characters kept of a path.
pub const MAX_PATH: usize = 1024;

const OPEN: u8 = 3;
const CLOSE: u8 = 4;
const READ: u8 = 5;
const WRITE: u8 = 6;
const SETSTAT: u8 = 9;
const FSETSTAT: u8 = 10;
const REMOVE: u8 = 13;
const MKDIR: u8 = 14;
const RMDIR: u8 = 15;
const RENAME: u8 = 18;
const SYMLINK: u8 = 20;
const STATUS: u8 = 101;
const HANDLE: u8 = 102;
const DATA: u8 = 103;
const EXTENDED: u8 = 200;

/// One audited operation.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// "open", "close", "remove", "rename", "mkdir", "rmdir", "setstat", "symlink", "link",
    /// or "audit" (the audit itself stopped).
    pub op: &'static str,
    /// "ok", or the server's status ("no_such_file", "permission_denied", "failure", …), or
    /// "unanswered" / "unclosed" when the session ended first.
    pub outcome: String,
    pub detail: serde_json::Value,
}

/// A request waiting for its answer.
#[derive(Debug)]
enum Req {
    Open {
        path: String,
        flags: u32,
        mode: Option<u32>,
    },
    Close {
        handle: Vec<u8>,
    },
    Read {
        handle: Vec<u8>,
    },
    Op {
        op: &'static str,
        detail: serde_json::Value,
    },
}

#[derive(Debug)]
struct Handle {
    path: String,
    flags: u32,
    read: u64,
    written: u64,
}

/// Splits one direction's bytes into packets, keeping each packet's head only.
#[derive(Debug, Default)]
struct Framer {
    len_buf: [u8; 4],
    len_have: usize,
    /// Bytes of the current packet's body still to come (0: reading a length).
    remaining: usize,
    total: usize,
    head: Vec<u8>,
}

enum Framed {
    /// A packet's head (at most [`HEAD_CAP`] bytes) and its full length.
    Packet(Vec<u8>, usize),
    /// A length no SFTP packet has.
    Broken(u32),
}

impl Framer {
    fn push(&mut self, mut data: &[u8], out: &mut Vec<Framed>) {
        while !data.is_empty() {
            if self.remaining == 0 {
                let take = (4 - self.len_have).min(data.len());
                self.len_buf[self.len_have..self.len_have + take].copy_from_slice(&data[..take]);
                self.len_have += take;
                data = &data[take..];
                if self.len_have < 4 {
                    return;
                }
                self.len_have = 0;
                let len = u32::from_be_bytes(self.len_buf);
                if len == 0 || len > MAX_PACKET {
                    out.push(Framed::Broken(len));
                    return;
                }
                self.remaining = len as usize;
                self.total = len as usize;
                self.head.clear();
                continue;
            }
            let take = self.remaining.min(data.len());
            let keep = take.min(HEAD_CAP.saturating_sub(self.head.len()));
            self.head.extend_from_slice(&data[..keep]);
            self.remaining -= take;
            data = &data[take..];
            if self.remaining == 0 {
                out.push(Framed::Packet(std::mem::take(&mut self.head), self.total));
            }
        }
    }
}

/// Reads SFTP fields from a packet head; `None` when the head ends first.
struct Cur<'a>(&'a [u8]);

impl<'a> Cur<'a> {
    fn u8(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }
    fn u32(&mut self) -> Option<u32> {
        let (b, rest) = self.0.split_first_chunk::<4>()?;
        self.0 = rest;
        Some(u32::from_be_bytes(*b))
    }
    fn u64(&mut self) -> Option<u64> {
        let (b, rest) = self.0.split_first_chunk::<8>()?;
        self.0 = rest;
        Some(u64::from_be_bytes(*b))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        if n > self.0.len() {
            return None;
        }
        let (b, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(b)
    }
    fn path(&mut self) -> Option<String> {
        let b = self.bytes()?;
        Some(String::from_utf8_lossy(b).chars().take(MAX_PATH).collect())
    }
    /// ATTRS: what an operator wants to see of them (size, owner, mode, times).
    fn attrs(&mut self) -> Option<serde_json::Value> {
        let flags = self.u32()?;
        let mut m = serde_json::Map::new();
        if flags & 0x1 != 0 {
            m.insert("size".into(), self.u64()?.into());
        }
        if flags & 0x2 != 0 {
            m.insert("uid".into(), self.u32()?.into());
            m.insert("gid".into(), self.u32()?.into());
        }
        if flags & 0x4 != 0 {
            m.insert("mode".into(), format!("{:o}", self.u32()? & 0o7777).into());
        }
        if flags & 0x8 != 0 {
            m.insert("atime".into(), self.u32()?.into());
            m.insert("mtime".into(), self.u32()?.into());
        }
        Some(serde_json::Value::Object(m))
    }
}

fn open_flags(f: u32) -> String {
    let names = [
        (0x1, "read"),
        (0x2, "write"),
        (0x4, "append"),
        (0x8, "create"),
        (0x10, "truncate"),
        (0x20, "exclusive"),
    ];
    names
        .iter()
        .filter(|(bit, _)| f & bit != 0)
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join(",")
}

fn status_name(code: u32) -> String {
    match code {
        0 => "ok".into(),
        1 => "eof".into(),
        2 => "no_such_file".into(),
        3 => "permission_denied".into(),
        4 => "failure".into(),
        5 => "bad_message".into(),
        8 => "op_unsupported".into(),
        n => format!("status_{n}"),
    }
}

/// The audit state of one SFTP session.
#[derive(Debug, Default)]
pub struct SftpAudit {
    up: Framer,
    down: Framer,
    pending: HashMap<u32, Req>,
    handles: HashMap<Vec<u8>, Handle>,
    stopped: bool,
    /// Requests and handles not tracked because the tables were full.
    untracked: u64,
}

impl SftpAudit {
    /// Bytes the client sent to the server.
    pub fn client_bytes(&mut self, data: &[u8]) -> Vec<Entry> {
        let mut out = Vec::new();
        if self.stopped {
            return out;
        }
        let mut packets = Vec::new();
        self.up.push(data, &mut packets);
        for p in packets {
            match p {
                Framed::Packet(head, len) => self.request(&head, len),
                Framed::Broken(len) => self.stop(len, "client", &mut out),
            }
        }
        out
    }

    /// Bytes the server sent to the client.
    pub fn server_bytes(&mut self, data: &[u8]) -> Vec<Entry> {
        let mut out = Vec::new();
        if self.stopped {
            return out;
        }
        let mut packets = Vec::new();
        self.down.push(data, &mut packets);
        for p in packets {
            match p {
                Framed::Packet(head, _) => self.response(&head, &mut out),
                Framed::Broken(len) => self.stop(len, "server", &mut out),
            }
        }
        out
    }

    /// The session ended: handles still open and requests never answered.
    pub fn finish(&mut self) -> Vec<Entry> {
        let mut out = Vec::new();
        for (_, h) in self.handles.drain() {
            out.push(close_entry(&h, "unclosed".into()));
        }
        let mut pending: Vec<(u32, Req)> = self.pending.drain().collect();
        pending.sort_by_key(|(id, _)| *id);
        for (_, req) in pending {
            match req {
                Req::Open { path, flags, mode } => {
                    out.push(open_entry(path, flags, mode, "unanswered"))
                }
                Req::Op { op, detail } => out.push(Entry {
                    op,
                    outcome: "unanswered".into(),
                    detail,
                }),
                Req::Close { .. } | Req::Read { .. } => {}
            }
        }
        if self.untracked > 0 {
            out.push(Entry {
                op: "audit",
                outcome: "incomplete".into(),
                detail: json!({ "untracked": self.untracked }),
            });
        }
        out
    }

    fn stop(&mut self, len: u32, side: &str, out: &mut Vec<Entry>) {
        self.stopped = true;
        self.pending.clear();
        self.handles.clear();
        out.push(Entry {
            op: "audit",
            outcome: "stopped".into(),
            detail: json!({ "reason": format!("the {side} sent a length no sftp packet has ({len})") }),
        });
    }

    fn track(&mut self, id: u32, req: Req) {
        if self.pending.len() >= MAX_PENDING && !self.pending.contains_key(&id) {
            self.untracked += 1;
            return;
        }
        self.pending.insert(id, req);
    }

    fn request(&mut self, head: &[u8], _len: usize) {
        let mut c = Cur(head);
        let (Some(kind), Some(id)) = (c.u8(), c.u32()) else {
            return;
        };
        let req = match kind {
            OPEN => {
                let (Some(path), Some(flags)) = (c.path(), c.u32()) else {
                    return;
                };
                let mode = c.attrs().and_then(|a| {
                    a.get("mode")
                        .and_then(|m| m.as_str())
                        .and_then(|m| u32::from_str_radix(m, 8).ok())
                });
                Req::Open { path, flags, mode }
            }
            CLOSE => match c.bytes() {
                Some(h) => Req::Close { handle: h.to_vec() },
                None => return,
            },
            READ => match c.bytes() {
                Some(h) if self.handles.contains_key(h) => Req::Read { handle: h.to_vec() },
                _ => return,
            },
            WRITE => {
                let (Some(h), Some(_offset)) = (c.bytes(), c.u64()) else {
                    return;
                };
                let n = c.u32().unwrap_or(0);
                if let Some(handle) = self.handles.get_mut(h) {
                    handle.written += u64::from(n);
                }
                return;
            }
            REMOVE | RMDIR => {
                let Some(path) = c.path() else { return };
                let op = if kind == REMOVE { "remove" } else { "rmdir" };
                Req::Op {
                    op,
                    detail: json!({ "path": path }),
                }
            }
            MKDIR => {
                let Some(path) = c.path() else { return };
                let mut detail = json!({ "path": path });
                if let (Some(mode), Some(m)) = (
                    c.attrs().and_then(|a| a.get("mode").cloned()),
                    detail.as_object_mut(),
                ) {
                    m.insert("mode".into(), mode);
                }
                Req::Op {
                    op: "mkdir",
                    detail,
                }
            }
            SETSTAT | FSETSTAT => {
                let path = if kind == SETSTAT {
                    c.path()
                } else {
                    c.bytes()
                        .and_then(|h| self.handles.get(h))
                        .map(|h| h.path.clone())
                };
                let Some(path) = path else { return };
                let attrs = c.attrs().unwrap_or_default();
                Req::Op {
                    op: "setstat",
                    detail: json!({ "path": path, "attrs": attrs }),
                }
            }
            RENAME => {
                let (Some(from), Some(to)) = (c.path(), c.path()) else {
                    return;
                };
                Req::Op {
                    op: "rename",
                    detail: json!({ "from": from, "to": to }),
                }
            }
            SYMLINK => {
                // OpenSSH's server and client put the target first (the draft has it second).
                let (Some(target), Some(link)) = (c.path(), c.path()) else {
                    return;
                };
                Req::Op {
                    op: "symlink",
                    detail: json!({ "target": target, "link": link }),
                }
            }
            EXTENDED => {
                let Some(name) = c.bytes() else { return };
                match name {
                    b"posix-rename@openssh.com" => {
                        let (Some(from), Some(to)) = (c.path(), c.path()) else {
                            return;
                        };
                        Req::Op {
                            op: "rename",
                            detail: json!({ "from": from, "to": to }),
                        }
                    }
                    b"hardlink@openssh.com" => {
                        let (Some(target), Some(link)) = (c.path(), c.path()) else {
                            return;
                        };
                        Req::Op {
                            op: "link",
                            detail: json!({ "target": target, "link": link }),
                        }
                    }
                    b"lsetstat@openssh.com" => {
                        let Some(path) = c.path() else { return };
                        let attrs = c.attrs().unwrap_or_default();
                        Req::Op {
                            op: "setstat",
                            detail: json!({ "path": path, "attrs": attrs }),
                        }
                    }
                    _ => return,
                }
            }
            _ => return,
        };
        self.track(id, req);
    }

    fn response(&mut self, head: &[u8], out: &mut Vec<Entry>) {
        let mut c = Cur(head);
        let (Some(kind), Some(id)) = (c.u8(), c.u32()) else {
            return;
        };
        let Some(req) = self.pending.remove(&id) else {
            return;
        };
        match (kind, req) {
            (HANDLE, Req::Open { path, flags, mode }) => {
                if let Some(h) = c.bytes() {
                    if self.handles.len() < MAX_HANDLES && h.len() <= 256 {
                        self.handles.insert(
                            h.to_vec(),
                            Handle {
                                path: path.clone(),
                                flags,
                                read: 0,
                                written: 0,
                            },
                        );
                    } else {
                        self.untracked += 1;
                    }
                }
                out.push(open_entry(path, flags, mode, "ok"));
            }
            (STATUS, Req::Open { path, flags, mode }) => {
                let code = c.u32().unwrap_or(4);
                out.push(open_entry(path, flags, mode, &status_name(code)));
            }
            (DATA, Req::Read { handle }) => {
                if let (Some(n), Some(h)) = (c.u32(), self.handles.get_mut(&handle)) {
                    h.read += u64::from(n);
                }
            }
            (STATUS, Req::Close { handle }) => {
                if let Some(h) = self.handles.remove(&handle) {
                    out.push(close_entry(&h, status_name(c.u32().unwrap_or(4))));
                }
            }
            (STATUS, Req::Op { op, detail }) => {
                out.push(Entry {
                    op,
                    outcome: status_name(c.u32().unwrap_or(4)),
                    detail,
                });
            }
            _ => {}
        }
    }
}

fn open_entry(path: String, flags: u32, mode: Option<u32>, outcome: &str) -> Entry {
    let mut detail = json!({ "path": path, "flags": open_flags(flags) });
    if let (Some(mode), Some(m)) = (mode, detail.as_object_mut()) {
        m.insert("mode".into(), format!("{:o}", mode & 0o7777).into());
    }
    Entry {
        op: "open",
        outcome: outcome.into(),
        detail,
    }
}

fn close_entry(h: &Handle, outcome: String) -> Entry {
    Entry {
        op: "close",
        outcome,
        detail: json!({
            "path": h.path,
            "flags": open_flags(h.flags),
            "bytes_read": h.read,
            "bytes_written": h.written,
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// The session side.

/// Entries waiting to be written as audit records; beyond this they are counted and dropped.
const ENTRY_QUEUE: usize = 1024;

/// One SFTP session's audit: shared by the input side (client bytes, through
/// [`Tap::wrap_input`]) and the output side ([`Tap::server_bytes`]); entries go to the
/// connection's audit through a task of their own, so the data path never waits for the store.
#[derive(Clone)]
pub struct Tap {
    state: Arc<Mutex<SftpAudit>>,
    tx: mpsc::Sender<Entry>,
}

impl Tap {
    pub fn start(conn: &Arc<crate::conn::Conn>) -> Self {
        let (tx, mut rx) = mpsc::channel::<Entry>(ENTRY_QUEUE);
        let conn = conn.clone();
        tokio::spawn(async move {
            while let Some(e) = rx.recv().await {
                let mut detail = e.detail;
                if let Some(m) = detail.as_object_mut() {
                    m.insert("op".into(), e.op.into());
                }
                conn.audit("sftp", e.op, &e.outcome, detail).await;
            }
        });
        Self {
            state: Arc::default(),
            tx,
        }
    }

    fn emit(&self, entries: Vec<Entry>) {
        for e in entries {
            if self.tx.try_send(e).is_err() {
                crate::metrics::AUDIT_DROPPED.inc();
            }
        }
    }

    fn with(&self, f: impl FnOnce(&mut SftpAudit) -> Vec<Entry>) {
        let entries = match self.state.lock() {
            Ok(mut s) => f(&mut s),
            // A panic inside the parser poisoned it: the audit of this session stops.
            Err(_) => Vec::new(),
        };
        self.emit(entries);
    }

    pub fn server_bytes(&self, data: &[u8]) {
        self.with(|s| s.server_bytes(data));
    }

    pub fn finish(&self) {
        self.with(|s| s.finish());
    }

    /// Wraps the server's stdin so what the client sends is read by the audit.
    pub fn wrap_input(&self, inner: crate::backend::BoxWrite) -> crate::backend::BoxWrite {
        Box::new(ClientSide {
            inner,
            tap: self.clone(),
        })
    }
}

struct ClientSide {
    inner: crate::backend::BoxWrite,
    tap: Tap,
}

impl AsyncWrite for ClientSide {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        // The audit's lock is held from before the bytes reach the server until they are
        // parsed: the server's answer (read by another task) cannot be parsed before the
        // request it answers, which would leave the request looking unanswered. The write is
        // a non-blocking poll, so the other side waits no longer than this one parse.
        let tap = self.tap.clone();
        let mut state = tap.state.lock();
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        let entries = match (&mut state, &r) {
            (Ok(s), Poll::Ready(Ok(n))) => s.client_bytes(buf.get(..*n).unwrap_or(buf)),
            // Nothing written, or a panic inside the parser poisoned it (its audit stops).
            _ => Vec::new(),
        };
        drop(state);
        tap.emit(entries);
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pkt(kind: u8, id: u32, body: &[u8]) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&((body.len() + 5) as u32).to_be_bytes());
        p.push(kind);
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(body);
        p
    }
    fn s(b: &[u8]) -> Vec<u8> {
        let mut v = (b.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(b);
        v
    }
    /// A conversation in order: (from the client?, packet).
    #[derive(Default)]
    struct Conv(Vec<(bool, Vec<u8>)>);
    impl Conv {
        fn up(&mut self, p: Vec<u8>) {
            self.0.push((true, p));
        }
        fn down(&mut self, p: Vec<u8>) {
            self.0.push((false, p));
        }
    }

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    /// A put, a get, a rename, a remove, mkdir/rmdir, setstat and symlink, fed in pieces of
    /// every size from 1 byte up: the same entries whatever the packet boundaries.
    #[test]
    fn a_session_gives_one_entry_per_operation_whatever_the_chunking() {
        let mode_attrs = cat(&[&4u32.to_be_bytes(), &0o644u32.to_be_bytes()]);
        // The conversation in order: (from the client?, packet).
        let mut conv = Conv::default();
        // put
        conv.up(pkt(
            OPEN,
            1,
            &cat(&[&s(b"/home/t/a.txt"), &0x1au32.to_be_bytes(), &mode_attrs]),
        ));
        conv.down(pkt(HANDLE, 1, &s(b"H1")));
        conv.up(pkt(
            WRITE,
            2,
            &cat(&[&s(b"H1"), &0u64.to_be_bytes(), &s(&[7u8; 3000])]),
        ));
        conv.up(pkt(
            WRITE,
            3,
            &cat(&[&s(b"H1"), &3000u64.to_be_bytes(), &s(&[7u8; 100])]),
        ));
        conv.down(pkt(STATUS, 2, &0u32.to_be_bytes()));
        conv.down(pkt(STATUS, 3, &0u32.to_be_bytes()));
        conv.up(pkt(CLOSE, 4, &s(b"H1")));
        conv.down(pkt(STATUS, 4, &0u32.to_be_bytes()));
        // get
        conv.up(pkt(
            OPEN,
            5,
            &cat(&[
                &s(b"/home/t/a.txt"),
                &1u32.to_be_bytes(),
                &0u32.to_be_bytes(),
            ]),
        ));
        conv.down(pkt(HANDLE, 5, &s(b"H2")));
        conv.up(pkt(
            READ,
            6,
            &cat(&[&s(b"H2"), &0u64.to_be_bytes(), &32768u32.to_be_bytes()]),
        ));
        conv.down(pkt(DATA, 6, &s(&[7u8; 3100])));
        conv.up(pkt(
            READ,
            7,
            &cat(&[&s(b"H2"), &3100u64.to_be_bytes(), &32768u32.to_be_bytes()]),
        ));
        conv.down(pkt(STATUS, 7, &1u32.to_be_bytes()));
        conv.up(pkt(CLOSE, 8, &s(b"H2")));
        conv.down(pkt(STATUS, 8, &0u32.to_be_bytes()));
        // rename (OpenSSH's extension), remove of a missing file, mkdir, rmdir, setstat, symlink
        conv.up(pkt(
            EXTENDED,
            9,
            &cat(&[&s(b"posix-rename@openssh.com"), &s(b"a.txt"), &s(b"b.txt")]),
        ));
        conv.down(pkt(STATUS, 9, &0u32.to_be_bytes()));
        conv.up(pkt(REMOVE, 10, &s(b"nope")));
        conv.down(pkt(STATUS, 10, &2u32.to_be_bytes()));
        conv.up(pkt(
            MKDIR,
            11,
            &cat(&[&s(b"d"), &4u32.to_be_bytes(), &0o755u32.to_be_bytes()]),
        ));
        conv.down(pkt(STATUS, 11, &0u32.to_be_bytes()));
        conv.up(pkt(RMDIR, 12, &s(b"d")));
        conv.down(pkt(STATUS, 12, &0u32.to_be_bytes()));
        conv.up(pkt(SETSTAT, 13, &cat(&[&s(b"b.txt"), &mode_attrs])));
        conv.down(pkt(STATUS, 13, &0u32.to_be_bytes()));
        conv.up(pkt(SYMLINK, 14, &cat(&[&s(b"b.txt"), &s(b"l")])));
        conv.down(pkt(STATUS, 14, &3u32.to_be_bytes()));
        // A stat: not audited.
        conv.up(pkt(17, 15, &s(b"b.txt")));
        conv.down(pkt(105, 15, &0u32.to_be_bytes()));

        let want = vec![
            (
                "open",
                "ok",
                json!({"path": "/home/t/a.txt", "flags": "write,create,truncate", "mode": "644"}),
            ),
            (
                "close",
                "ok",
                json!({"path": "/home/t/a.txt", "flags": "write,create,truncate", "bytes_read": 0, "bytes_written": 3100}),
            ),
            (
                "open",
                "ok",
                json!({"path": "/home/t/a.txt", "flags": "read"}),
            ),
            (
                "close",
                "ok",
                json!({"path": "/home/t/a.txt", "flags": "read", "bytes_read": 3100, "bytes_written": 0}),
            ),
            ("rename", "ok", json!({"from": "a.txt", "to": "b.txt"})),
            ("remove", "no_such_file", json!({"path": "nope"})),
            ("mkdir", "ok", json!({"path": "d", "mode": "755"})),
            ("rmdir", "ok", json!({"path": "d"})),
            (
                "setstat",
                "ok",
                json!({"path": "b.txt", "attrs": {"mode": "644"}}),
            ),
            (
                "symlink",
                "permission_denied",
                json!({"target": "b.txt", "link": "l"}),
            ),
        ];
        for chunk in [1usize, 2, 3, 5, 7, 64, 1000, 100_000] {
            let mut a = SftpAudit::default();
            let mut got = Vec::new();
            for (from_client, p) in &conv.0 {
                for c in p.chunks(chunk) {
                    got.extend(if *from_client {
                        a.client_bytes(c)
                    } else {
                        a.server_bytes(c)
                    });
                }
            }
            got.extend(a.finish());
            let got: Vec<_> = got
                .into_iter()
                .map(|e| (e.op, e.outcome, e.detail))
                .collect();
            let want: Vec<_> = want
                .iter()
                .map(|(o, r, d)| (*o, r.to_string(), d.clone()))
                .collect();
            assert_eq!(got, want, "chunk {chunk}");
        }
    }

    #[test]
    fn a_stream_that_cannot_be_framed_stops_the_audit_once() {
        let mut a = SftpAudit::default();
        let e = a.client_bytes(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]);
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].op, e[0].outcome.as_str()), ("audit", "stopped"));
        assert!(a.client_bytes(&[0; 100]).is_empty());
        assert!(a.server_bytes(&[0; 100]).is_empty());
    }

    #[test]
    fn open_handles_and_unanswered_requests_are_reported_at_the_end() {
        let mut a = SftpAudit::default();
        a.client_bytes(&pkt(
            OPEN,
            1,
            &cat(&[&s(b"f"), &2u32.to_be_bytes(), &0u32.to_be_bytes()]),
        ));
        a.server_bytes(&pkt(HANDLE, 1, &s(b"h")));
        a.client_bytes(&pkt(REMOVE, 2, &s(b"g")));
        let e = a.finish();
        let ops: Vec<_> = e.iter().map(|e| (e.op, e.outcome.as_str())).collect();
        assert_eq!(ops, vec![("close", "unclosed"), ("remove", "unanswered")]);
    }

    #[test]
    fn tables_stay_bounded() {
        let mut a = SftpAudit::default();
        for id in 0..(MAX_PENDING as u32 * 3) {
            a.client_bytes(&pkt(REMOVE, id, &s(&[b'x'; 5000])));
        }
        assert!(a.pending.len() <= MAX_PENDING);
        for id in 0..(MAX_HANDLES as u32 * 3) {
            a.client_bytes(&pkt(
                OPEN,
                id,
                &cat(&[&s(b"f"), &1u32.to_be_bytes(), &0u32.to_be_bytes()]),
            ));
            a.server_bytes(&pkt(HANDLE, id, &s(&id.to_be_bytes())));
        }
        assert!(a.handles.len() <= MAX_HANDLES);
        assert!(a.pending.values().all(|r| {
            match r {
                Req::Op { detail, .. } => detail["path"]
                    .as_str()
                    .is_some_and(|p| p.chars().count() <= MAX_PATH),
                _ => true,
            }
        }));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Garbage in either direction, in any chunking: no panic, bounded state.
        #[test]
        fn garbage_never_panics_and_stays_bounded(
            up in proptest::collection::vec(any::<u8>(), 0..4096),
            down in proptest::collection::vec(any::<u8>(), 0..4096),
            chunk in 1usize..300,
        ) {
            let mut a = SftpAudit::default();
            for (u, d) in up.chunks(chunk).zip(down.chunks(chunk)) {
                a.client_bytes(u);
                a.server_bytes(d);
            }
            a.finish();
            prop_assert!(a.pending.len() <= MAX_PENDING);
            prop_assert!(a.handles.len() <= MAX_HANDLES);
            prop_assert!(a.up.head.capacity() <= HEAD_CAP * 2);
        }

        /// Valid-looking packets with random fields: no panic.
        #[test]
        fn random_packets_never_panic(
            packets in proptest::collection::vec((any::<u8>(), any::<u32>(), proptest::collection::vec(any::<u8>(), 0..64)), 0..64),
        ) {
            let mut a = SftpAudit::default();
            for (kind, id, body) in &packets {
                let kind = [OPEN, CLOSE, READ, WRITE, SETSTAT, FSETSTAT, REMOVE, MKDIR, RMDIR, RENAME, SYMLINK, EXTENDED, *kind][(*kind as usize) % 13];
                let p = pkt(kind, *id, body);
                a.client_bytes(&p);
                let rkind = [STATUS, HANDLE, DATA][(*id as usize) % 3];
                a.server_bytes(&pkt(rkind, *id, body));
            }
            a.finish();
        }
    }
}
