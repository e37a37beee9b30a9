#!/usr/bin/env bash
# Side-by-side resolver benchmark: berth dns vs dnsmasq (Debian 2.90), same local upstream, one run.
#
#   bench/dns/run.sh            # DUR=15 s per measurement; needs root (binds :53 on 127.0.10.x)
#
# Upstream: a dnsmasq on 127.0.10.1 answering every *.bench.test A with 93.184.216.34, TTL 3600,
# from --address (no cache, no forwarding). Candidates, each started fresh and alone:
#   berth   127.0.10.2  (release build of dns/examples/serve.rs: the dns crate's Service, no Docker)
#   dnsmasq 127.0.10.3  (--cache-size=100000, domain-needed, bogus-priv, stop-dns-rebind)
# Both have the same 100 local names (server1..100.berth.internal), the same safety switches on,
# no rate limit (dnsmasq has none), the same cap on outstanding upstream queries (1024) and
# query logging off.
#
# Measurements (dnsperf 2.10, 1 client thread, -q 200 outstanding, -t 2 s timeout):
#   hit   : 1 000 names, warmed once, then replayed for DUR s        → QPS, lost
#   hit99 : same at a fixed 10 000 QPS with -v                         → p50/p99 latency
#   local : server<N>.berth.internal for DUR s                         → QPS, lost
#   miss  : cache filled with 100 000 names (-Q 10000), then DUR s of
#           never-seen names, -q 50 -t 5 (so a slow server is measured,
#           not just timed out)                                        → QPS, lost
set -euo pipefail
cd "$(dirname "$0")/../.."
DUR=${DUR:-15}
UP=127.0.10.1
BERTH=127.0.10.2
DNSMASQ=127.0.10.3
W=$(mktemp -d /tmp/berth-dns-bench.XXXXXX)
chmod 755 "$W" # dnsmasq reads --addn-hosts after dropping to nobody
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT

BIN=${BIN:-target/release/examples/serve}
if [[ ! -x $BIN || ${REBUILD:-0} == 1 ]]; then
    cargo build --release -p dns --example serve
fi

# Query files.
for i in $(seq 1 1000); do echo "h$i.bench.test A"; done >"$W/hit.txt"
for i in $(seq 1 100000); do echo "f$i.bench.test A"; done >"$W/fill.txt"
for i in $(seq 1 1000000); do echo "m$i.bench.test A"; done >"$W/miss.txt"
for i in $(seq 1 100); do echo "server$i.berth.internal A"; done >"$W/local.txt"
for i in $(seq 1 100); do echo "172.19.2.$((10 + i)) server$i.berth.internal"; done >"$W/hosts"

dnsmasq -k --conf-file=/dev/null --no-resolv --no-hosts --listen-address=$UP --bind-interfaces \
    --port=53 --address=/bench.test/93.184.216.34 --local-ttl=3600 --cache-size=0 \
    --dns-forward-max=10000 --pid-file="$W/up.pid" 2>"$W/up.log" &
PIDS+=($!)

cat >"$W/berth.toml" <<EOF
listen = ["$BERTH:53"]
upstreams = ["$UP:53"]
allow_from = ["127.0.0.0/8"]
cache_size = 100000
rate_limit_qps = 0
max_inflight = 1024
EOF

perf() { # server file extra-args... → prints dnsperf output
    local s=$1 f=$2
    shift 2
    dnsperf -s "$s" -d "$f" -c 1 -q 200 -t 2 "$@" 2>&1
}
field() { grep -m1 "$1" | sed -E 's/.*: +//; s/ .*//'; }
lost() { grep -m1 'Queries lost' | sed -E 's/.*: +//'; }
pct() { # file with one latency (s) a line → "p50 p99" in ms
    sort -n "$1" | awk '{a[NR]=$1} END {if (NR==0) {print "- -"; exit}
        printf "%.3f %.3f\n", a[int(NR*0.50)+1]*1000, a[int(NR*0.99)]*1000}'
}

run_candidate() { # name addr
    local name=$1 addr=$2 out
    echo "== $name" >&2
    perf "$addr" "$W/hit.txt" -n 1 >/dev/null
    out=$(perf "$addr" "$W/hit.txt" -l "$DUR")
    echo "$out" >"$W/$name.hit.log"
    HIT_QPS[$name]=$(echo "$out" | field 'Queries per second')
    HIT_LOST[$name]=$(echo "$out" | lost)
    perf "$addr" "$W/hit.txt" -l 10 -Q 10000 -v | awk '/^> /{print $NF}' >"$W/$name.lat"
    HIT_PCT[$name]=$(pct "$W/$name.lat")

    perf "$addr" "$W/fill.txt" -n 1 -Q 10000 >"$W/$name.fill.log"
    FILL_LOST[$name]=$(lost <"$W/$name.fill.log")
    out=$(perf "$addr" "$W/miss.txt" -l "$DUR")
    echo "$out" >"$W/$name.miss.log"
    MISS_QPS[$name]=$(echo "$out" | field 'Queries per second')
    MISS_LOST[$name]=$(echo "$out" | lost)

    out=$(perf "$addr" "$W/local.txt" -l "$DUR")
    echo "$out" >"$W/$name.local.log"
    LOCAL_QPS[$name]=$(echo "$out" | field 'Queries per second')
    LOCAL_LOST[$name]=$(echo "$out" | lost)
}

wait_ready() { # addr log
    for _ in $(seq 1 50); do
        dig @"$1" server1.berth.internal +short +time=1 +tries=1 | grep -q 172.19.2.11 && return 0
        sleep 0.2
    done
    cat "$2"
    return 1
}

declare -A HIT_QPS HIT_LOST HIT_PCT FILL_LOST MISS_QPS MISS_LOST LOCAL_QPS LOCAL_LOST

SERVE_PRINT_METRICS=1 "$BIN" "$W/berth.toml" --servers 100 2>"$W/berth.log" &
BPID=$!
PIDS+=($BPID)
wait_ready $BERTH "$W/berth.log"
run_candidate berth $BERTH
kill $BPID; wait $BPID 2>/dev/null || true
grep -E "^berth_dns_cache_(entries|evictions) |^berth_dns_upstream_queries_total " "$W/berth.log" >&2 || true

dnsmasq -k --conf-file=/dev/null --no-resolv --no-hosts --addn-hosts="$W/hosts" --server=$UP \
    --listen-address=$DNSMASQ --bind-interfaces --port=53 --cache-size=100000 --dns-forward-max=1024 \
    --domain-needed --bogus-priv --stop-dns-rebind --log-facility=- --pid-file="$W/dm.pid" 2>"$W/dm.log" &
DPID=$!
PIDS+=($DPID)
wait_ready $DNSMASQ "$W/dm.log"
run_candidate dnsmasq $DNSMASQ
kill -USR1 $DPID # cache statistics into dm.log (insertions, evictions of live entries)
sleep 0.5
grep -E "cache size|queries forwarded" "$W/dm.log" >&2 || true
kill $DPID; wait $DPID 2>/dev/null || true

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f×", a / b; else print "-" }'; }
read -r bp50 bp99 <<<"${HIT_PCT[berth]}"
read -r dp50 dp99 <<<"${HIT_PCT[dnsmasq]}"
echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ)"
echo
echo "| measurement | berth | dnsmasq 2.90 | berth / dnsmasq |"
echo "|---|---|---|---|"
echo "| cache-hit QPS (lost) | ${HIT_QPS[berth]} (${HIT_LOST[berth]}) | ${HIT_QPS[dnsmasq]} (${HIT_LOST[dnsmasq]}) | $(ratio "${HIT_QPS[berth]}" "${HIT_QPS[dnsmasq]}") |"
echo "| cache-hit p50 / p99 ms at 10k QPS | $bp50 / $bp99 | $dp50 / $dp99 | p99 dnsmasq/berth $(ratio "$dp99" "$bp99") |"
echo "| fill 100 000 names at 10k QPS: lost | ${FILL_LOST[berth]} | ${FILL_LOST[dnsmasq]} | |"
echo "| cache-miss QPS, full 100 000-entry cache (lost) | ${MISS_QPS[berth]} (${MISS_LOST[berth]}) | ${MISS_QPS[dnsmasq]} (${MISS_LOST[dnsmasq]}) | $(ratio "${MISS_QPS[berth]}" "${MISS_QPS[dnsmasq]}") |"
echo "| local-name QPS (lost) | ${LOCAL_QPS[berth]} (${LOCAL_LOST[berth]}) | ${LOCAL_QPS[dnsmasq]} (${LOCAL_LOST[dnsmasq]}) | $(ratio "${LOCAL_QPS[berth]}" "${LOCAL_QPS[dnsmasq]}") |"
if [[ -n ${KEEP:-} ]]; then cp -r "$W" "$KEEP"; echo "logs kept in $KEEP"; fi
