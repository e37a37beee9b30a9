//! The port map against real Docker: what the publisher reads from Docker
//! (`Provisioner::server_endpoints`) leads, through netfilter's rtnetlink resolution, to each
//! container's own host-side veth on the tenant bridge — by Docker's netns file and by pid
//! alike. Needs root, dockerd and the test tenant image (see `scripts/test`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use integration_tests::tenants::{DbKind, TenantsEnv, docker};
use netfilter::bindings::{Endpoint, Mac};
use tenants::ServerSpec;

fn endpoint(e: &tenants::ServerEndpoint, by_path: bool, by_pid: bool) -> Endpoint {
    Endpoint {
        name: e.server.to_string(),
        netns: e.sandbox_key.clone().filter(|_| by_path).map(Into::into),
        pid: e.pid.filter(|_| by_pid),
        mac: e.mac.parse::<Mac>().unwrap(),
        ipv4: e.ipv4.into_iter().collect(),
        ipv6: e.ipv6.into_iter().collect(),
    }
}

/// The host ifindex of the veth whose peer is `container`'s eth0 — read from inside the
/// container, which the test may trust (production never does).
fn host_peer_ifindex(container: &str) -> u32 {
    docker(&["exec", container, "cat", "/sys/class/net/eth0/iflink"])
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn ifindex(port: &str) -> u32 {
    std::fs::read_to_string(format!("/sys/class/net/{port}/ifindex"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn docker_servers_resolve_to_their_own_bridge_ports() {
    let env = TenantsEnv::new("portmap", DbKind::Sqlite).await.unwrap();
    env.store.add_account("alice", None::<&str>).await.unwrap();
    let a = env
        .prov
        .create_server("alice", ServerSpec::default())
        .await
        .unwrap();
    let b = env
        .prov
        .create_server("alice", ServerSpec::default())
        .await
        .unwrap();

    let eps = env.prov.server_endpoints().await.unwrap();
    assert_eq!(eps.len(), 2, "{eps:?}");
    for e in &eps {
        assert!(e.sandbox_key.is_some() && e.pid.is_some(), "{e:?}");
        let ip = e.ipv4.expect("an IPv4 on the tenant network");
        assert!(env.world.net.subnet.contains(&ip), "{ip}");
    }

    let bridge = &env.world.net.bridge;
    for (by_path, by_pid) in [(true, false), (false, true), (true, true)] {
        let list: Vec<Endpoint> = eps.iter().map(|e| endpoint(e, by_path, by_pid)).collect();
        let r = netfilter::netns::resolve(bridge, &list).unwrap();
        assert!(
            r.unresolved.is_empty(),
            "path {by_path} pid {by_pid}: {:?}",
            r.unresolved
        );
        assert_eq!(r.bindings.len(), 2, "{:?}", r.bindings);
        for (e, server) in eps.iter().zip([a.id, b.id]) {
            assert_eq!(e.server, server);
            let binding = r
                .bindings
                .iter()
                .find(|x| x.mac.to_string() == e.mac)
                .expect("a binding per server");
            // The port is on the tenant bridge and is the peer of that container's eth0.
            assert!(
                std::path::Path::new(&format!("/sys/class/net/{bridge}/brif/{}", binding.port))
                    .exists(),
                "{} not on {bridge}",
                binding.port
            );
            let container = env.world.container(server.get());
            assert_eq!(
                ifindex(&binding.port),
                host_peer_ifindex(&container),
                "{} is not {container}'s port",
                binding.port
            );
        }
    }

    // A stopped server leaves the map.
    env.prov.stop(b.id).await.unwrap();
    let eps = env.prov.server_endpoints().await.unwrap();
    assert_eq!(eps.iter().map(|e| e.server).collect::<Vec<_>>(), vec![a.id]);
}
