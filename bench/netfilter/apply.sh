#!/usr/bin/env bash
# Apply time of berth's ruleset with 1, 100 and 1000 deny + allowlist entries, inside a
# throwaway netns, side by side with the iptables way (one DROP rule per prefix, loaded with
# iptables-restore). Run as root from the repository root:
#   cargo build --release -p berth -p netfilter --example render   # once
#   bench/netfilter/apply.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
source bench/netfilter/testbed.sh
trap nf_down EXIT
nf_up
BIN=${BIN:-target/release}
OUT=$(mktemp -d)
printf '%-8s %-8s %-10s %-34s %-34s %-30s\n' entries rules elements "nft -j -f (berth batch)" "berth netfilter apply (end to end)" "iptables-restore (1 rule/prefix)"
for n in 1 100 1000; do
  "$BIN/examples/render" --entries "$n" > "$OUT/b$n.json" 2> "$OUT/stats$n"
  rules=$(sed -n 's/.*rules=\([0-9]*\).*/\1/p' "$OUT/stats$n"); elems=$(sed -n 's/.*elements=\([0-9]*\).*/\1/p' "$OUT/stats$n")
  # The same entries as a berth config.
  {
    printf '[metrics]\nlisten = ""\n[netfilter]\nbridge_match = "addresses"\nisolate_ports = false\nextra_deny = ['
    for ((i=0;i<n;i++)); do printf '"45.%d.%d.0/24",' $((i/100)) $(((i%100)*2)); done
    printf ']\nallow = ['
    for ((i=0;i<n;i++)); do printf '"46.%d.%d.7:%d",' $((i/100)) $(((i%100)*2)) $((1000+i)); done
    printf ']\n'
  } > "$OUT/c$n.toml"
  # iptables equivalent: a DROP per deny prefix, an ACCEPT per allow entry, in FORWARD.
  {
    echo '*filter'; echo ':FORWARD ACCEPT [0:0]'; echo '-F FORWARD'
    for ((i=0;i<n;i++)); do echo "-A FORWARD -s 172.19.2.0/24 -d 46.$((i/100)).$(((i%100)*2)).7/32 -p tcp --dport $((1000+i)) -j ACCEPT"; done
    for ((i=0;i<n;i++)); do echo "-A FORWARD -s 172.19.2.0/24 -d 45.$((i/100)).$(((i%100)*2)).0/24 -j DROP"; done
    echo 'COMMIT'
  } > "$OUT/ipt$n"
  hyperfine -N -w 3 -r 20 --export-json "$OUT/h$n.json" \
    "ip netns exec $H nft -j -f $OUT/b$n.json" \
    "ip netns exec $H $BIN/berth --config $OUT/c$n.toml netfilter apply" \
    "ip netns exec $H iptables-restore $OUT/ipt$n" >/dev/null 2>&1
  read -r a b c < <(python3 -c "
import json;d=json.load(open('$OUT/h$n.json'))['results']
print(*['%.1f±%.1f' % (r['mean']*1000, r['stddev']*1000) for r in d])")
  printf '%-8s %-8s %-10s %-34s %-34s %-30s\n' "$n" "$rules" "$elems" "$a ms" "$b ms" "$c ms"
done
rm -rf "$OUT"
