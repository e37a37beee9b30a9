#!/usr/bin/env bash
# Profiles berth's fast path: perf record (call graphs) of the release `serve` example while
# dnsperf replays cached names or tenant names; prints the top symbols of `perf report --stdio`.
#
#   bench/dns/profile.sh                   # DUR=15 s, MODE=hit: 1 000 cached names
#   MODE=local SOURCES=64 bench/dns/profile.sh
#                                          # server<N>.berth.internal from 64 source addresses
# Needs root and perf. Runs in a network namespace of its own (as bench/dns/run.sh): upstream
# dnsmasq on 127.0.11.1 answering *.bench.test from --address, berth on 127.0.11.2 with the
# shipped rate limit when SOURCES > 1 (each source stays within it), off otherwise.
set -euo pipefail
cd "$(dirname "$0")/../.."
DUR=${DUR:-15}
MODE=${MODE:-hit}
SOURCES=${SOURCES:-1}
UP=127.0.11.1
BERTH=127.0.11.2
W=$(mktemp -d /tmp/berth-dns-prof.XXXXXX)
NS=berth-dns-prof-$$
ip netns add "$NS"
IN=(ip netns exec "$NS")
"${IN[@]}" ip link set lo up
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    ip netns delete "$NS" 2>/dev/null || true
    [[ -n ${KEEP:-} ]] || rm -rf "$W"
}
trap cleanup EXIT
BIN=${BIN:-target/release/examples/serve}
[[ -x $BIN && ${REBUILD:-0} != 1 ]] || cargo build --release -p dns --example serve
case $MODE in
hit) for i in $(seq 1 1000); do echo "h$i.bench.test A"; done >"$W/q.txt" ;;
local) for i in $(seq 1 100); do echo "server$i.berth.internal A"; done >"$W/q.txt" ;;
*)
    echo "MODE is hit or local" >&2
    exit 64
    ;;
esac
"${IN[@]}" dnsmasq -k --conf-file=/dev/null --no-resolv --no-hosts --listen-address=$UP --bind-interfaces \
    --port=53 --address=/bench.test/93.184.216.34 --local-ttl=3600 --cache-size=0 \
    --pid-file="$W/up.pid" 2>"$W/up.log" &
PIDS+=($!)
limit="rate_limit_qps = 0"
[[ $SOURCES == 1 ]] || limit=""
cat >"$W/berth.toml" <<EOT
listen = ["$BERTH:53"]
upstreams = ["$UP:53"]
allow_from = ["127.0.0.0/8"]
$limit
EOT
"${IN[@]}" "$BIN" "$W/berth.toml" --servers 100 2>"$W/berth.log" &
BPID=$!
PIDS+=($BPID)
for _ in $(seq 1 50); do
    "${IN[@]}" dig @$BERTH server1.berth.internal +short +time=1 +tries=1 | grep -q . && break
    sleep 0.2
done
args=(-c 4)
if [[ $SOURCES != 1 ]]; then
    # One source address per dnsperf socket, as bench/dns/run.sh's many_sources.
    map=$(for i in $(seq 0 $((SOURCES - 1))); do printf '%d : 127.0.20.%d, ' $((20000 + i)) $((i + 1)); done)
    "${IN[@]}" nft -f - <<EOT
table ip berth_prof {
    chain out {
        type filter hook output priority raw; policy accept;
        ip daddr $BERTH udp dport 53 ip saddr set udp sport map { ${map%, } }
    }
}
EOT
    args=(-x 20000 -c "$SOURCES")
fi
"${IN[@]}" dnsperf -s $BERTH -d "$W/q.txt" -n 1 -q 200 >/dev/null 2>&1
perf record -F 999 -g -p $BPID -o "$W/perf.data" -- sleep "$DUR" >/dev/null 2>&1 &
REC=$!
"${IN[@]}" dnsperf -s $BERTH -d "$W/q.txt" "${args[@]}" -q 256 -l "$DUR" 2>&1 |
    grep -E 'Queries (per second|lost)|Response codes'
wait $REC || true
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ); MODE=$MODE SOURCES=$SOURCES"
echo "--- top symbols, self time (perf report --no-children) ---"
perf report -i "$W/perf.data" --stdio --no-children --sort symbol 2>/dev/null | grep -E '^ +[0-9]' | head -"${TOP:-30}"
echo "--- top symbols, with children ---"
perf report -i "$W/perf.data" --stdio --children --sort symbol 2>/dev/null | grep -E '^ +[0-9]' | head -"${TOP:-30}"
