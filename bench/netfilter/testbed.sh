#!/usr/bin/env bash
# Shared by the netfilter benchmarks: a small netns testbed (host with bridge berth0, tenant t1,
# outside ns with a public-looking 45.45.45.45). Source it, then call nf_up / nf_down.
# Everything lives in namespaces named bnfb-<pid>-*; nothing touches the machine's ruleset.
set -euo pipefail
P="bnfb-$$"
H="$P-host"; T1="$P-t1"; O="$P-out"

nf_down() {
  for ns in "$T1" "$O" "$H"; do ip netns del "$ns" 2>/dev/null || true; done
}

nf_up() {
  for ns in "$H" "$T1" "$O"; do
    ip netns add "$ns"; ip -n "$ns" link set lo up
  done
  ip netns exec "$H" sysctl -qw net.ipv4.ip_forward=1
  ip netns exec "$H" sysctl -qw net.bridge.bridge-nf-call-iptables=0 net.bridge.bridge-nf-call-ip6tables=0
  ip -n "$H" link add berth0 type bridge
  ip -n "$H" addr add 172.19.2.1/24 dev berth0
  ip -n "$H" link set berth0 up
  ip -n "$H" link add veth-t1 type veth peer name eth0 netns "$T1"
  ip -n "$H" link set veth-t1 master berth0 up
  ip -n "$T1" addr add 172.19.2.11/24 dev eth0
  ip -n "$T1" link set eth0 up
  ip -n "$T1" route add default via 172.19.2.1
  ip -n "$H" link add up0 type veth peer name eth0 netns "$O"
  ip -n "$H" addr add 11.0.0.1/24 dev up0
  ip -n "$H" link set up0 up
  ip -n "$H" route add default via 11.0.0.2
  ip -n "$O" addr add 11.0.0.2/24 dev eth0
  ip -n "$O" addr add 45.45.45.45/32 dev lo
  ip -n "$O" link set eth0 up
  ip -n "$O" route add 172.19.2.0/24 via 11.0.0.1
}
