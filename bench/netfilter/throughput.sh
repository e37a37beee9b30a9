#!/usr/bin/env bash
# TCP throughput tenant -> outside (iperf3, 10 s, single stream) through the netns testbed,
# without rules, with berth's ruleset (default policy), and with berth's ruleset holding 1000
# deny + 1000 allowlist entries. Runs alternate to spread noise. Run as root from the repo root:
#   cargo build --release -p berth -p netfilter --example render   # once
#   bench/netfilter/throughput.sh [rounds]
set -euo pipefail
cd "$(dirname "$0")/../.."
source bench/netfilter/testbed.sh
trap 'kill $IPERF 2>/dev/null || true; nf_down' EXIT
nf_up
BIN=${BIN:-target/release}
ROUNDS=${1:-3}
OUT=$(mktemp -d)
"$BIN/examples/render" --entries 0 > "$OUT/b0.json" 2>/dev/null
"$BIN/examples/render" --entries 1000 > "$OUT/b1000.json" 2>/dev/null
ip netns exec "$O" iperf3 -s -B 45.45.45.45 -D -I "$OUT/iperf.pid"
sleep 0.5; IPERF=$(cat "$OUT/iperf.pid")
run() { ip netns exec "$T1" iperf3 -c 45.45.45.45 -t 10 -J | python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))'; }
declare -A sum
for ((r=1;r<=ROUNDS;r++)); do
  for mode in none berth berth1000; do
    ip netns exec "$H" nft flush ruleset
    case $mode in
      berth) ip netns exec "$H" nft -j -f "$OUT/b0.json" ;;
      berth1000) ip netns exec "$H" nft -j -f "$OUT/b1000.json" ;;
    esac
    g=$(run); echo "round $r $mode: $g Gbit/s"
    sum[$mode]=$(python3 -c "print(${sum[$mode]:-0}+$g)")
  done
done
for mode in none berth berth1000; do
  avg=$(python3 -c "print('%.2f' % (${sum[$mode]}/$ROUNDS))")
  ratio=$(python3 -c "print('%.3f' % (${sum[$mode]}/${sum[none]}))")
  echo "mean $mode: $avg Gbit/s (x$ratio of no rules)"
done
rm -rf "$OUT"
