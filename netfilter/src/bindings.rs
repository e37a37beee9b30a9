//! Which addresses each tenant bridge port may claim: the port map the bridge table's per-port
//! sets are rendered from, and the file format it travels in between processes.
//!
//! Two shapes. An [`Endpoint`] is what the process that knows the tenants publishes (a name
//! for logs, a handle on the tenant's network namespace, its MAC and addresses); a
//! [`PortBinding`] is what the renderer consumes (the host-side port, its MAC and addresses).
//! [`crate::netns`] turns the first into the second by asking the kernel which bridge ports
//! lead into that namespace — nothing the tenant controls is consulted. This module is pure:
//! parsing, validation and the link-local address a MAC implies.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A MAC address, written `02:42:ac:13:02:05`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// Unicast and not all-zero: the only kind a port may be bound to.
    pub fn is_unicast(&self) -> bool {
        self.0[0] & 1 == 0 && self.0 != [0; 6]
    }

    /// The modified EUI-64 link-local address (RFC 4291 §2.5.1) Linux derives from this MAC
    /// by default (`addr_gen_mode` 0).
    pub fn link_local(&self) -> Ipv6Addr {
        let m = self.0;
        Ipv6Addr::new(
            0xfe80,
            0,
            0,
            0,
            u16::from_be_bytes([m[0] ^ 0x02, m[1]]),
            u16::from_be_bytes([m[2], 0xff]),
            u16::from_be_bytes([0xfe, m[3]]),
            u16::from_be_bytes([m[4], m[5]]),
        )
    }

    /// As nft prints a 48-bit raw payload value: `0x` and hex without leading zeros.
    pub fn raw_hex(&self) -> String {
        let mut v: u64 = 0;
        for b in self.0 {
            v = (v << 8) | u64::from(b);
        }
        format!("{v:#x}")
    }
}

impl std::fmt::Display for Mac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl std::str::FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut out {
            let p = parts.next().ok_or_else(|| format!("{s:?} is not a MAC"))?;
            if p.len() != 2 {
                return Err(format!("{s:?} is not a MAC"));
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| format!("{s:?} is not a MAC"))?;
        }
        if parts.next().is_some() {
            return Err(format!("{s:?} is not a MAC"));
        }
        Ok(Mac(out))
    }
}

impl Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One host-side bridge port and what frames arriving on it may claim as their source.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortBinding {
    /// Interface name of the port (the host end of the tenant's veth).
    pub port: String,
    pub mac: Mac,
    pub ipv4: Vec<Ipv4Addr>,
    /// Global/ULA IPv6 addresses; the link-local one derived from `mac` is always allowed.
    pub ipv6: Vec<Ipv6Addr>,
}

impl PortBinding {
    /// Checks what the renderer relies on: a port name nft and the kernel accept as an
    /// interface name (and that needs no quoting in nft), a unicast MAC.
    pub fn validate(&self) -> Result<(), String> {
        if !valid_ifname(&self.port) {
            return Err(format!(
                "port {:?} is not an interface name (1-15 of A-Z a-z 0-9 _ -)",
                self.port
            ));
        }
        if !self.mac.is_unicast() {
            return Err(format!(
                "port {}: MAC {} is not unicast",
                self.port, self.mac
            ));
        }
        Ok(())
    }
}

/// Interface names the renderer accepts: what Docker (`veth…`) and test beds create. Dots,
/// slashes and other characters the kernel would allow are refused rather than escaped.
pub fn valid_ifname(s: &str) -> bool {
    (1..=15).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Sorts, drops duplicates and invalid entries (returning why each was dropped). Two bindings
/// for one port are both dropped: the port then stays unbound rather than trusting either.
pub fn normalize(mut v: Vec<PortBinding>) -> (Vec<PortBinding>, Vec<String>) {
    let mut problems = Vec::new();
    v.retain(|b| match b.validate() {
        Ok(()) => true,
        Err(e) => {
            problems.push(e);
            false
        }
    });
    for b in &mut v {
        b.ipv4.sort();
        b.ipv4.dedup();
        b.ipv6.sort();
        b.ipv6.dedup();
    }
    v.sort();
    v.dedup();
    let mut out: Vec<PortBinding> = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        let mut j = i + 1;
        while j < v.len() && v[j].port == v[i].port {
            j += 1;
        }
        if j - i == 1 {
            out.push(v[i].clone());
        } else {
            problems.push(format!(
                "port {} has {} conflicting bindings; left unbound",
                v[i].port,
                j - i
            ));
        }
        i = j;
    }
    (out, problems)
}

/// A tenant as the publisher sees it: where its network namespace is and what it was given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// For logs only (e.g. `server7`).
    pub name: String,
    /// A file that is the tenant's network namespace (Docker's `SandboxKey`,
    /// `/var/run/docker/netns/<id>`; `ip netns`' `/run/netns/<name>`). Tried first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
    /// A process in the tenant's network namespace (Docker's `State.Pid`), for readers that
    /// cannot open `netns` (it lives in a root-only directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    pub mac: Mac,
    #[serde(default)]
    pub ipv4: Vec<Ipv4Addr>,
    #[serde(default)]
    pub ipv6: Vec<Ipv6Addr>,
}

/// The ports file (`/run/berth/ports.json` by default): every running tenant's endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortsFile {
    pub endpoints: Vec<Endpoint>,
}

impl PortsFile {
    pub fn parse(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    pub fn to_json(&self) -> String {
        // A struct of strings, numbers and lists always serialises.
        serde_json::to_string_pretty(self).unwrap_or_else(|_| "{\"endpoints\":[]}".into()) + "\n"
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn b(port: &str, mac: &str) -> PortBinding {
        PortBinding {
            port: port.into(),
            mac: mac.parse().unwrap(),
            ipv4: vec!["172.19.2.5".parse().unwrap()],
            ipv6: vec![],
        }
    }

    #[test]
    fn mac_parses_prints_and_derives_link_local() {
        let m: Mac = "02:42:ac:13:02:05".parse().unwrap();
        assert_eq!(m.to_string(), "02:42:ac:13:02:05");
        assert_eq!(m.link_local().to_string(), "fe80::42:acff:fe13:205");
        assert_eq!(m.raw_hex(), "0x242ac130205");
        let m: Mac = "00:00:00:00:00:11".parse().unwrap();
        assert_eq!(m.link_local().to_string(), "fe80::200:ff:fe00:11");
        for bad in [
            "",
            "02:42:ac:13:02",
            "02:42:ac:13:02:05:06",
            "2:42:ac:13:02:05",
            "zz:42:ac:13:02:05",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
        assert!(!"01:00:5e:00:00:01".parse::<Mac>().unwrap().is_unicast());
        assert!(!"00:00:00:00:00:00".parse::<Mac>().unwrap().is_unicast());
    }

    #[test]
    fn normalize_drops_invalid_and_conflicting_ports() {
        let (ok, problems) = normalize(vec![
            b("vethB", "02:00:00:00:00:02"),
            b("vethA", "02:00:00:00:00:01"),
            b("vethA", "02:00:00:00:00:01"), // exact duplicate: kept once
            b("vethC", "02:00:00:00:00:03"),
            b("vethC", "02:00:00:00:00:04"), // conflict: neither
            b("bad.name", "02:00:00:00:00:05"),
            b("vethD", "01:00:5e:00:00:01"),
        ]);
        let ports: Vec<&str> = ok.iter().map(|b| b.port.as_str()).collect();
        assert_eq!(ports, ["vethA", "vethB"]);
        assert_eq!(problems.len(), 3, "{problems:?}");
    }

    #[test]
    fn ifnames() {
        for ok in ["veth1a2b3c4", "veth-t1", "eth0", "a23456789012345"] {
            assert!(valid_ifname(ok), "{ok}");
        }
        for bad in ["", "a234567890123456", "veth.1", "a b", "x\"y", "a/b"] {
            assert!(!valid_ifname(bad), "{bad}");
        }
    }

    #[test]
    fn ports_file_roundtrip_and_strictness() {
        let f = PortsFile {
            endpoints: vec![Endpoint {
                name: "server7".into(),
                netns: Some("/var/run/docker/netns/abc".into()),
                pid: Some(42),
                mac: "02:42:ac:13:02:07".parse().unwrap(),
                ipv4: vec!["172.19.2.7".parse().unwrap()],
                ipv6: vec!["fd19:2::7".parse().unwrap()],
            }],
        };
        assert_eq!(PortsFile::parse(&f.to_json()).unwrap(), f);
        assert!(PortsFile::parse(r#"{"endpoints":[],"x":1}"#).is_err());
        assert!(PortsFile::parse(r#"{"endpoints":[{"name":"a","mac":"zz"}]}"#).is_err());
        let minimal =
            PortsFile::parse(r#"{"endpoints":[{"name":"a","mac":"02:00:00:00:00:01"}]}"#).unwrap();
        assert!(minimal.endpoints[0].ipv4.is_empty());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_ports_file_never_panics(s in "\\PC{0,200}") {
            let _ = PortsFile::parse(&s);
        }

        #[test]
        fn mac_roundtrips(m: [u8; 6]) {
            let mac = Mac(m);
            proptest::prop_assert_eq!(mac.to_string().parse::<Mac>().unwrap(), mac);
        }
    }
}
