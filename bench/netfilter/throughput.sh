#!/usr/bin/env bash
# TCP throughput tenant -> outside (iperf3, $SECS s (default 5), single stream) through the netns testbed,
# without rules, with berth's ruleset (default policy), and with berth's ruleset holding 1000
# deny + 1000 allowlist entries, and — the peer — the iptables way with the same 1000 + 1000
# entries as one rule each (iptables-restore, evaluated per packet). Runs alternate to spread
# noise. Run as root from the repo root:
#   cargo build --release -p berth -p netfilter --example render   # once
#   bench/netfilter/throughput.sh [rounds (default 8)]
set -euo pipefail
cd "$(dirname "$0")/../.."
source bench/netfilter/testbed.sh
trap 'kill $IPERF 2>/dev/null || true; nf_down' EXIT
nf_up
BIN=${BIN:-target/release}
ROUNDS=${1:-8}
SECS=${SECS:-5}
OUT=$(mktemp -d)
"$BIN/examples/render" --entries 0 > "$OUT/b0.json" 2>/dev/null
"$BIN/examples/render" --entries 1000 > "$OUT/b1000.json" 2>/dev/null
{
  echo '*filter'; echo ':FORWARD ACCEPT [0:0]'
  for ((i=0;i<1000;i++)); do echo "-A FORWARD -s 172.19.2.0/24 -d 46.$((i/100)).$(((i%100)*2)).7/32 -p tcp --dport $((1000+i)) -j ACCEPT"; done
  for ((i=0;i<1000;i++)); do echo "-A FORWARD -s 172.19.2.0/24 -d 45.$((i/100)).$(((i%100)*2)).0/24 -j DROP"; done
  echo 'COMMIT'
} > "$OUT/ipt1000"
ip netns exec "$O" iperf3 -s -B 45.45.45.45 -D -I "$OUT/iperf.pid"
sleep 0.5; IPERF=$(cat "$OUT/iperf.pid")
run() { ip netns exec "$T1" iperf3 -c 45.45.45.45 -t "$SECS" -J | python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))'; }
declare -A all
for ((r=1;r<=ROUNDS;r++)); do
  for mode in none berth berth1000 iptables1000; do
    ip netns exec "$H" nft flush ruleset
    case $mode in
      berth) ip netns exec "$H" nft -j -f "$OUT/b0.json" ;;
      berth1000) ip netns exec "$H" nft -j -f "$OUT/b1000.json" ;;
      iptables1000) ip netns exec "$H" iptables-restore "$OUT/ipt1000" ;;
    esac
    g=$(run); echo "round $r $mode: $g Gbit/s"
    all[$mode]="${all[$mode]:-} $g"
  done
done
python3 - "${all[none]}" "${all[berth]}" "${all[berth1000]}" "${all[iptables1000]}" <<'PY'
import statistics, sys
names = ["no rules", "berth (default policy)", "berth (1000+1000 entries)", "iptables (1000+1000 rules)"]
runs = [[float(x) for x in a.split()] for a in sys.argv[1:]]
base_med, base_mean = statistics.median(runs[0]), statistics.mean(runs[0])
for n, r in zip(names, runs):
    # Ratio within each round (the modes of one round run back to back), then the median:
    # cancels the slow drift of a shared machine's load better than ratios of totals.
    paired = statistics.median(x / b for x, b in zip(r, runs[0]))
    print(f"{n:28s} median {statistics.median(r):6.2f} Gbit/s (x{statistics.median(r)/base_med:.3f})  mean {statistics.mean(r):6.2f} (x{statistics.mean(r)/base_mean:.3f})  median of per-round ratios x{paired:.3f}  min {min(r):.2f} max {max(r):.2f}")
PY
rm -rf "$OUT"
