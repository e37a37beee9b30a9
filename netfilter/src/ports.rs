//! Kernel bridge-port isolation: `isolated` ports of a bridge cannot exchange frames with each
//! other (any protocol), only with the bridge itself and non-isolated ports. berth sets it on
//! every port of the tenant bridge as a second, nftables-independent barrier between tenants.
//!
//! Set over rtnetlink (`IFLA_BRPORT_ISOLATED`, [`crate::netns::set_bridge_ports_isolated`]),
//! not through `/sys/class/net/*/brport/isolated`: the sysfs files are root-owned, so a
//! process holding only CAP_NET_ADMIN (the netfilter unit's dynamic user) is refused there.
//!
//! Docker adds a port per container, so this is re-done by the drift watch; ports appear
//! between two passes only for the watch's reaction time (the nftables bridge table covers
//! that window for IP and ARP).

use std::io;

/// Sets `isolated` on every port of `bridge` that lacks it and returns the ports it changed.
pub fn isolate_ports(bridge: &str) -> io::Result<Vec<String>> {
    crate::netns::set_bridge_ports_isolated(bridge, true)
}

/// Clears `isolated` on every port of `bridge` (for `berth netfilter flush`).
pub fn release_ports(bridge: &str) -> io::Result<()> {
    crate::netns::set_bridge_ports_isolated(bridge, false).map(|_| ())
}
