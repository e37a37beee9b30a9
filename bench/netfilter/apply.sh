#!/usr/bin/env bash
# Apply time of berth's ruleset inside a throwaway netns.
# 1. entries: 1, 100 and 1000 deny + allowlist entries, side by side with the iptables way (one
#    DROP rule per prefix, loaded with iptables-restore).
# 2. ports: the curve over 100/250/500/1000 bound tenant ports — full apply (start), the same
#    again over the live tables (drift repair, reload), and the port-map update when one server
#    goes and when it comes back — as the median of ROUNDS runs of `render --ports N
#    --apply-check` (which also checks after every step that the kernel lists exactly the
#    rendered ruleset; a run whose check fails is not counted).
# Run as root from the repository root:
#   cargo build --release -p berth -p netfilter --example render   # once
#   bench/netfilter/apply.sh                    # both parts
#   PARTS=ports ROUNDS=5 bench/netfilter/apply.sh
#   PARTS=ports BASE_BIN=/tmp/base/target/release/examples/render bench/netfilter/apply.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
source bench/netfilter/testbed.sh
trap nf_down EXIT
nf_up
BIN=${BIN:-target/release}
PARTS=${PARTS:-entries ports}
ROUNDS=${ROUNDS:-7}
OUT=$(mktemp -d)
if [[ " $PARTS " == *" entries "* ]]; then
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
fi

if [[ " $PARTS " == *" ports "* ]]; then
# BASE_BIN: the render example of another build (e.g. the commit before the flat port sets,
# built in a git worktree) to run side by side, alternating rounds. Its own listing check is not
# required to pass (the chain-per-port build lists large anonymous sets in another order); its
# timings count when its apply succeeded.
BASE_BIN=${BASE_BIN:-}
median() { python3 -c "
import re,statistics,sys
t=open(sys.argv[1]).read()
out=[]
for pat in sys.argv[2:]:
    v=[float(x) for x in re.findall(pat,t)]
    out.append(('%.1f' % statistics.median(v)) if v else 'n/a')
out.append(str(len(re.findall(r'(?m)^full apply:',t))))
print(*out)" "$@"; }
echo
# Each run starts from a namespace without berth's tables (so one build never pays for removing
# the other's): "full apply" is a start on an empty host, "re-apply" the same ruleset again over
# the live one (drift repair, reload).
nf_clear() { for f in inet bridge; do ip netns exec "$H" nft delete table "$f" berth 2>/dev/null || true; done; }
printf '%-6s %-6s %-9s %-12s %-12s %-14s %-14s %s\n' ports rules elements "full apply" "re-apply" "update: gone" "update: back" "${BASE_BIN:+| base: full apply   base: update (gone)}"
for n in 100 250 500 1000; do
  "$BIN/examples/render" --ports "$n" > /dev/null 2> "$OUT/pstats$n"
  rules=$(sed -n 's/.*rules=\([0-9]*\).*/\1/p' "$OUT/pstats$n"); elems=$(sed -n 's/.*elements=\([0-9]*\).*/\1/p' "$OUT/pstats$n")
  : > "$OUT/p$n"; : > "$OUT/b$n"
  for ((r=0;r<ROUNDS;r++)); do
    nf_clear
    if ip netns exec "$H" "$BIN/examples/render" --ports "$n" --apply-check > "$OUT/run" 2>&1; then
      cat "$OUT/run" >> "$OUT/p$n"
    else
      echo "ports=$n round $r failed:" >&2; head -c 2000 "$OUT/run" >&2; echo >&2
    fi
    if [[ -n "$BASE_BIN" ]]; then
      nf_clear
      ip netns exec "$H" "$BASE_BIN" --ports "$n" --apply-check 2>&1 | grep -E '^(full apply|port-map update)' >> "$OUT/b$n" || true
    fi
  done
  read -r full again gone back ok < <(median "$OUT/p$n" 'full apply: ([0-9.]+)' 'full re-apply: ([0-9.]+)' 'server gone\): ([0-9.]+)' 'server back\): ([0-9.]+)')
  base=""
  if [[ -n "$BASE_BIN" ]]; then
    read -r bfull bgone bok < <(median "$OUT/b$n" 'full apply: ([0-9.]+)' 'port-map update: ([0-9.]+)')
    base="| $bfull ms ($bok runs)   $bgone ms"
  fi
  printf '%-6s %-6s %-9s %-12s %-12s %-14s %-14s %s\n' "$n" "$rules" "$elems" "$full ms" "$again ms" "$gone ms" "$back ms" "($ok/$ROUNDS runs) $base"
done
fi
rm -rf "$OUT"
