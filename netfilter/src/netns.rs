//! From a tenant's network namespace to its host-side bridge ports, asking only the kernel.
//!
//! Two rtnetlink questions, no capability needed for either: RTM_GETLINK (dump) lists every
//! link with its bridge master and, for a veth whose peer lives in another namespace, that
//! namespace's id as seen from here (IFLA_LINK_NETNSID; the dump assigns one if none was);
//! RTM_GETNSID with NETNSA_FD (an open namespace file) or NETNSA_PID (a process inside it)
//! gives the tenant namespace's id. The ports enslaved to the tenant bridge whose peer
//! namespace has that id are the tenant's. Nothing inside the tenant is read, so a tenant
//! cannot lie its way onto another's port; the worst it can do (move its own process to a new
//! namespace, with CAP_SYS_ADMIN) leaves its own port unbound, which denies its own traffic.
//!
//! The protocol is hand-rolled over a plain `AF_NETLINK` socket (no unsafe, no netlink crate).
//! The same socket also sets bridge ports' `isolated` flag ([`set_bridge_ports_isolated`]),
//! which needs CAP_NET_ADMIN only, where the sysfs file would need root's write access.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, Socket, Type};

use crate::bindings::{Endpoint, PortBinding};

const NETLINK_ROUTE: i32 = 0;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_SETLINK: u16 = 19;
const NLM_F_ACK: u16 = 4;
const AF_BRIDGE: u8 = 7;
const IFLA_PROTINFO: u16 = 12;
const NLA_F_NESTED: u16 = 0x8000;
const IFLA_BRPORT_ISOLATED: u16 = 33;
const RTM_NEWNSID: u16 = 88;
const RTM_GETNSID: u16 = 90;
const IFLA_IFNAME: u16 = 3;
const IFLA_MASTER: u16 = 10;
const IFLA_LINK_NETNSID: u16 = 37;
const NETNSA_NSID: u16 = 1;
const NETNSA_PID: u16 = 2;
const NETNSA_FD: u16 = 3;

/// One link as the dump describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub master: Option<u32>,
    pub link_netnsid: Option<i32>,
}

struct Netlink {
    sock: Socket,
    seq: u32,
}

impl Netlink {
    fn open() -> io::Result<Self> {
        let sock = Socket::new(
            Domain::from(libc_af_netlink()),
            Type::RAW,
            Some(Protocol::from(NETLINK_ROUTE)),
        )?;
        sock.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
        Ok(Self { sock, seq: 0 })
    }

    fn request(&mut self, ty: u16, flags: u16, body: &[u8]) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let len = 16 + body.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&ty.to_ne_bytes());
        msg.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(body);
        (&self.sock).write_all(&msg)?;
        Ok(self.seq)
    }

    /// Reads answers to `seq` until DONE (dump) or the first answer (`single`), calling `f`
    /// with each message's type and payload.
    fn answers(&mut self, seq: u32, single: bool, mut f: impl FnMut(u16, &[u8])) -> io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = (&self.sock).read(&mut buf)?;
            let mut off = 0;
            while off + 16 <= n {
                let len = u32_at(&buf, off) as usize;
                if len < 16 || off + len > n {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "malformed netlink message",
                    ));
                }
                let ty = u16_at(&buf, off + 4);
                let mseq = u32_at(&buf, off + 8);
                let payload = &buf[off + 16..off + len];
                off += align4(len);
                if mseq != seq {
                    continue;
                }
                match ty {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        let code = if payload.len() >= 4 {
                            i32::from_ne_bytes([payload[0], payload[1], payload[2], payload[3]])
                        } else {
                            -libc_eproto()
                        };
                        if code == 0 {
                            return Ok(()); // an ACK
                        }
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                    _ => {
                        f(ty, payload);
                        if single {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }

    fn links(&mut self) -> io::Result<Vec<Link>> {
        // struct ifinfomsg: family, pad, type, index, flags, change (16 bytes, all zero).
        let seq = self.request(RTM_GETLINK, NLM_F_DUMP, &[0u8; 16])?;
        let mut out = Vec::new();
        self.answers(seq, false, |ty, p| {
            if ty != RTM_NEWLINK || p.len() < 16 {
                return;
            }
            let index = u32_at(p, 4);
            let mut link = Link {
                index,
                name: String::new(),
                master: None,
                link_netnsid: None,
            };
            for (aty, data) in attrs(&p[16..]) {
                match aty {
                    IFLA_IFNAME => {
                        let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
                        link.name = String::from_utf8_lossy(&data[..end]).into_owned();
                    }
                    IFLA_MASTER if data.len() >= 4 => link.master = Some(u32_at(data, 0)),
                    IFLA_LINK_NETNSID if data.len() >= 4 => {
                        link.link_netnsid = Some(u32_at(data, 0) as i32)
                    }
                    _ => {}
                }
            }
            out.push(link);
        })?;
        Ok(out)
    }

    /// The ports of bridge `master` (by index) with their name and `isolated` flag: an
    /// AF_BRIDGE dump, which carries each port's bridge attributes in IFLA_PROTINFO.
    fn bridge_ports(&mut self, master: u32) -> io::Result<Vec<(u32, String, bool)>> {
        let mut body = [0u8; 16];
        body[0] = AF_BRIDGE;
        let seq = self.request(RTM_GETLINK, NLM_F_DUMP, &body)?;
        let mut out = Vec::new();
        self.answers(seq, false, |ty, p| {
            if ty != RTM_NEWLINK || p.len() < 16 {
                return;
            }
            let index = u32_at(p, 4);
            let (mut name, mut m, mut isolated) = (String::new(), None, false);
            for (aty, data) in attrs(&p[16..]) {
                match aty {
                    IFLA_IFNAME => {
                        let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
                        name = String::from_utf8_lossy(&data[..end]).into_owned();
                    }
                    IFLA_MASTER if data.len() >= 4 => m = Some(u32_at(data, 0)),
                    IFLA_PROTINFO => {
                        for (bty, bdata) in attrs(data) {
                            if bty == IFLA_BRPORT_ISOLATED && !bdata.is_empty() {
                                isolated = bdata[0] != 0;
                            }
                        }
                    }
                    _ => {}
                }
            }
            if m == Some(master) {
                out.push((index, name, isolated));
            }
        })?;
        Ok(out)
    }

    /// Sets or clears a bridge port's `isolated` flag (what `bridge link set dev X isolated on`
    /// sends): needs CAP_NET_ADMIN, not write access to sysfs.
    fn set_isolated(&mut self, index: u32, on: bool) -> io::Result<()> {
        let mut body = vec![0u8; 16];
        body[0] = AF_BRIDGE;
        body[4..8].copy_from_slice(&index.to_ne_bytes());
        // IFLA_PROTINFO (nested) { IFLA_BRPORT_ISOLATED: u8 }, each attribute padded to 4.
        body.extend_from_slice(&12u16.to_ne_bytes());
        body.extend_from_slice(&(IFLA_PROTINFO | NLA_F_NESTED).to_ne_bytes());
        body.extend_from_slice(&5u16.to_ne_bytes());
        body.extend_from_slice(&IFLA_BRPORT_ISOLATED.to_ne_bytes());
        body.extend_from_slice(&[u8::from(on), 0, 0, 0]);
        let seq = self.request(RTM_SETLINK, NLM_F_ACK, &body)?;
        self.answers(seq, true, |_, _| {})
    }

    /// The id this namespace knows the namespace of `attr` (NETNSA_FD or NETNSA_PID) by;
    /// `None` when none is assigned (no link of ours leads there).
    fn nsid(&mut self, attr: u16, value: u32) -> io::Result<Option<i32>> {
        // struct rtgenmsg (1 byte, padded to 4), then one u32 attribute.
        let mut body = vec![0u8; 4];
        body.extend_from_slice(&8u16.to_ne_bytes());
        body.extend_from_slice(&attr.to_ne_bytes());
        body.extend_from_slice(&value.to_ne_bytes());
        let seq = self.request(RTM_GETNSID, 0, &body)?;
        let mut id = None;
        self.answers(seq, true, |ty, p| {
            if ty != RTM_NEWNSID || p.len() < 4 {
                return;
            }
            for (aty, data) in attrs(&p[4..]) {
                if aty == NETNSA_NSID && data.len() >= 4 {
                    let v = u32_at(data, 0) as i32;
                    id = (v >= 0).then_some(v);
                }
            }
        })?;
        Ok(id)
    }
}

fn libc_af_netlink() -> i32 {
    16 // AF_NETLINK on Linux
}
fn libc_eproto() -> i32 {
    71 // EPROTO
}
fn align4(n: usize) -> usize {
    (n + 3) & !3
}
fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_ne_bytes([b[off], b[off + 1]])
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// Route attributes (type, data); stops at the first malformed one.
fn attrs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = usize::from(u16_at(b, 0));
        let ty = u16_at(b, 2) & 0x3fff; // strip NLA_F_NESTED / NLA_F_NET_BYTEORDER
        if len < 4 || len > b.len() {
            break;
        }
        out.push((ty, &b[4..len]));
        b = &b[align4(len).min(b.len())..];
    }
    out
}

/// Sets `isolated` on every port of `bridge` that lacks it (or clears it on every port when
/// `on` is false) and returns the ports it changed. A missing bridge is not an error: the
/// tenant network may not exist yet.
pub fn set_bridge_ports_isolated(bridge: &str, on: bool) -> io::Result<Vec<String>> {
    let mut nl = Netlink::open()?;
    let Some(br) = nl.links()?.into_iter().find(|l| l.name == bridge) else {
        return Ok(Vec::new());
    };
    let mut changed = Vec::new();
    for (index, name, isolated) in nl.bridge_ports(br.index)? {
        if isolated != on {
            match nl.set_isolated(index, on) {
                Ok(()) => changed.push(name),
                // The port left the bridge meanwhile.
                Err(e) if e.raw_os_error() == Some(19) => {}
                Err(e) => return Err(io::Error::new(e.kind(), format!("{name}: {e}"))),
            }
        }
    }
    changed.sort();
    Ok(changed)
}

/// What resolving the endpoints found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    pub bindings: Vec<PortBinding>,
    /// Endpoints whose namespace has no port on the bridge (yet), with the reason.
    pub unresolved: Vec<(String, String)>,
    /// Every port of the bridge (bound or not).
    pub bridge_ports: Vec<String>,
}

/// The bridge ports of `bridge` that lead into each endpoint's namespace, bound to the
/// endpoint's MAC and addresses. A missing bridge gives no bindings.
pub fn resolve(bridge: &str, endpoints: &[Endpoint]) -> io::Result<Resolved> {
    let mut nl = Netlink::open()?;
    // The dump first: it assigns ids to peer namespaces that had none.
    let links = nl.links()?;
    let mut out = Resolved::default();
    let Some(br) = links.iter().find(|l| l.name == bridge).map(|l| l.index) else {
        out.unresolved = endpoints
            .iter()
            .map(|e| (e.name.clone(), format!("bridge {bridge} does not exist")))
            .collect();
        return Ok(out);
    };
    out.bridge_ports = links
        .iter()
        .filter(|l| l.master == Some(br))
        .map(|l| l.name.clone())
        .collect();
    out.bridge_ports.sort();
    for e in endpoints {
        let mut id = None;
        let mut why = String::from("no network namespace given");
        if let Some(path) = &e.netns {
            match std::fs::File::open(path) {
                Ok(f) => match nl.nsid(NETNSA_FD, f.as_raw_fd() as u32) {
                    Ok(v) => {
                        id = v;
                        why = format!("{}: no link of ours leads there", path.display());
                    }
                    Err(err) => why = format!("{}: {err}", path.display()),
                },
                Err(err) => why = format!("{}: {err}", path.display()),
            }
        }
        if id.is_none()
            && let Some(pid) = e.pid
        {
            match nl.nsid(NETNSA_PID, pid) {
                Ok(v) => {
                    id = v;
                    why = format!("pid {pid}: no link of ours leads to its namespace");
                }
                Err(err) => why = format!("pid {pid}: {err}"),
            }
        }
        let Some(id) = id else {
            out.unresolved.push((e.name.clone(), why));
            continue;
        };
        let ports: Vec<&Link> = links
            .iter()
            .filter(|l| l.master == Some(br) && l.link_netnsid == Some(id))
            .collect();
        if ports.is_empty() {
            out.unresolved
                .push((e.name.clone(), format!("no port of {bridge} leads there")));
        }
        for l in ports {
            out.bindings.push(PortBinding {
                port: l.name.clone(),
                mac: e.mac,
                ipv4: e.ipv4.clone(),
                ipv6: e.ipv6.clone(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn attrs_parse_and_stop_at_garbage() {
        let mut b = Vec::new();
        b.extend_from_slice(&8u16.to_ne_bytes());
        b.extend_from_slice(&IFLA_MASTER.to_ne_bytes());
        b.extend_from_slice(&7u32.to_ne_bytes());
        b.extend_from_slice(&9u16.to_ne_bytes()); // 5 bytes of data, padded to 12
        b.extend_from_slice(&IFLA_IFNAME.to_ne_bytes());
        b.extend_from_slice(b"eth0\0\0\0\0");
        b.extend_from_slice(&200u16.to_ne_bytes()); // longer than what is left
        b.extend_from_slice(&1u16.to_ne_bytes());
        let a = attrs(&b);
        assert_eq!(a.len(), 2);
        assert_eq!(a[0], (IFLA_MASTER, &7u32.to_ne_bytes()[..]));
        assert_eq!(a[1].1, b"eth0\0");
    }

    proptest::proptest! {
        #[test]
        fn attrs_never_panic(b in proptest::collection::vec(0u8.., 0..200)) {
            let _ = attrs(&b);
        }
    }

    /// The loopback link exists in every namespace; a dump needs no privileges.
    #[test]
    fn dump_lists_loopback() {
        let mut nl = Netlink::open().unwrap();
        let links = nl.links().unwrap();
        assert!(
            links.iter().any(|l| l.name == "lo" && l.index == 1),
            "{links:?}"
        );
        // Our own namespace has no id in itself unless assigned: either answer is fine, but
        // the question must be understood.
        let me = std::fs::File::open("/proc/self/ns/net").unwrap();
        nl.nsid(NETNSA_FD, me.as_raw_fd() as u32).unwrap();
    }
}
