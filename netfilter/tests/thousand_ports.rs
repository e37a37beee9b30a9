//! A thousand bound ports in a scratch network namespace (root and `nft` needed, as for the
//! rest of the suite): the full apply is accepted and the kernel lists back exactly what was
//! rendered; a server going and coming back are set-element transactions after which the
//! listing again equals the render (so the leaver's elements are gone and nothing stale
//! stays); a port whose binding the kernel does not hold makes the update fail rather than
//! half-apply. Correctness only: timings are the benchmark's business (bench/netfilter).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::{Command, Stdio};

use netfilter::bindings::{Mac, PortBinding};
use netfilter::diff::{diff, expected_lines, live_lines};
use netfilter::render::to_nft_json;
use netfilter::{Config, L2Match, Network, Ruleset, render};

/// A network namespace of this test's own, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Self {
        let name = format!("bnft-{tag}-{}", std::process::id());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("run ip");
        assert!(
            out.status.success(),
            "cannot create a network namespace (this test needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(name)
    }

    /// `nft` inside the namespace; stdin is `input` when given.
    fn nft(&self, args: &[&str], input: Option<&str>) -> Result<String, String> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.0, "nft"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run nft: {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(input.unwrap_or("").as_bytes())
                .map_err(|e| e.to_string())?;
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn apply(&self, batch: &nftables::schema::Nftables<'static>) -> Result<(), String> {
        self.nft(&["-j", "-f", "-"], Some(&to_nft_json(batch).to_string()))
            .map(|_| ())
    }

    /// The canonical lines of berth's two tables as the kernel lists them.
    fn live(&self) -> Vec<String> {
        let mut objects = Vec::new();
        for family in ["inet", "bridge"] {
            let text = self
                .nft(&["-j", "list", "table", family, "berth"], None)
                .unwrap();
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            objects.extend(v["nftables"].as_array().unwrap().iter().cloned());
        }
        live_lines(&objects)
    }

    fn assert_live_is(&self, rs: &Ruleset, when: &str) {
        if let Some(d) = diff(&expected_lines(&rs.objects), &self.live()) {
            panic!("{when}: the kernel's listing differs from the render:\n{d}");
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ports(n: u32) -> Vec<PortBinding> {
    (0..n)
        .map(|i| PortBinding {
            port: format!("bvp{i}"),
            mac: Mac([2, 0, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8]),
            ipv4: vec![Ipv4Addr::from(0xac13_0000 + i)],
            ipv6: vec![Ipv6Addr::from(0xfd19_0002_u128 << 96 | u128::from(i))],
        })
        .collect()
}

fn net() -> Network {
    Network {
        bridge: "berth0".into(),
        subnet: "172.19.0.0/16".parse().unwrap(),
        gateway: "172.19.0.1".parse().unwrap(),
        subnet6: Some("fd19:2::/64".parse().unwrap()),
        gateway6: Some("fd19:2::1".parse().unwrap()),
    }
}

#[test]
fn a_thousand_ports_apply_and_update_as_rendered() {
    let ns = Netns::new("1k");
    let p = Config::default().policy().unwrap();
    let all = ports(1000);
    // Addresses: the bridge match any kernel supports (the meta one differs in the fixed
    // rules only, not in the port sets).
    {
        let l2 = L2Match::Addresses;
        let full = render(&p, &net(), l2, Some(&all));
        ns.apply(&full.apply_batch()).unwrap();
        ns.assert_live_is(&full, &format!("{l2:?}: after the full apply"));

        // The first port's server goes, then comes back with another address.
        let gone = render(&p, &net(), l2, Some(&all[1..]));
        ns.apply(&gone.ports_update_batch(&full).unwrap()).unwrap();
        ns.assert_live_is(&gone, &format!("{l2:?}: after a server went"));
        let mut moved = all.clone();
        moved[0].ipv4 = vec![Ipv4Addr::new(172, 19, 200, 1)];
        moved[0].mac = Mac([2, 0, 0, 0xee, 0, 1]);
        let back = render(&p, &net(), l2, Some(&moved));
        ns.apply(&back.ports_update_batch(&gone).unwrap()).unwrap();
        ns.assert_live_is(&back, &format!("{l2:?}: after it came back"));

        // An update computed from a ruleset the kernel does not hold (the first port's old
        // binding) is refused as a whole: the live tables stay as they were.
        let stale = render(&p, &net(), l2, Some(&all[2..]));
        assert!(
            ns.apply(&stale.ports_update_batch(&full).unwrap()).is_err(),
            "{l2:?}: an update deleting elements the kernel lacks was accepted"
        );
        ns.assert_live_is(&back, &format!("{l2:?}: after a refused update"));
    }
}
