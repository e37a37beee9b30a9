#!/usr/bin/env bash
# Profiles berth's cache-hit path: perf record (call graphs) of the release `serve` example while
# dnsperf replays 1 000 cached names; prints the top symbols of `perf report --stdio`.
#
#   bench/dns/profile.sh            # DUR=15 s; needs root (binds :53 on 127.0.11.x) and perf
#
# Upstream: a dnsmasq on 127.0.11.1 answering *.bench.test from --address; berth on 127.0.11.2.
set -euo pipefail
cd "$(dirname "$0")/../.."
DUR=${DUR:-15}
UP=127.0.11.1
BERTH=127.0.11.2
W=$(mktemp -d /tmp/berth-dns-prof.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [[ -n ${KEEP:-} ]] || rm -rf "$W"
}
trap cleanup EXIT
BIN=${BIN:-target/release/examples/serve}
[[ -x $BIN && ${REBUILD:-0} != 1 ]] || cargo build --release -p dns --example serve
for i in $(seq 1 1000); do echo "h$i.bench.test A"; done >"$W/hit.txt"
dnsmasq -k --conf-file=/dev/null --no-resolv --no-hosts --listen-address=$UP --bind-interfaces \
    --port=53 --address=/bench.test/93.184.216.34 --local-ttl=3600 --cache-size=0 \
    --pid-file="$W/up.pid" 2>"$W/up.log" &
PIDS+=($!)
cat >"$W/berth.toml" <<EOT
listen = ["$BERTH:53"]
upstreams = ["$UP:53"]
allow_from = ["127.0.0.0/8"]
cache_size = 100000
rate_limit_qps = 0
EOT
"$BIN" "$W/berth.toml" 2>"$W/berth.log" &
BPID=$!
PIDS+=($BPID)
sleep 1
dnsperf -s $BERTH -d "$W/hit.txt" -n 1 -q 200 >/dev/null 2>&1
perf record -F 999 -g -p $BPID -o "$W/perf.data" -- sleep "$DUR" >/dev/null 2>&1 &
REC=$!
dnsperf -s $BERTH -d "$W/hit.txt" -c 1 -q 200 -l "$DUR" 2>&1 | grep -E 'Queries (per second|lost)'
wait $REC || true
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ)"
echo "--- top symbols, self time (perf report --no-children) ---"
perf report -i "$W/perf.data" --stdio --no-children --sort symbol 2>/dev/null | grep -E '^ +[0-9]' | head -${TOP:-30}
echo "--- top symbols, with children ---"
perf report -i "$W/perf.data" --stdio --children --sort symbol 2>/dev/null | grep -E '^ +[0-9]' | head -${TOP:-30}
