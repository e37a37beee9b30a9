#!/usr/bin/env bash
# tenants benchmark: `berth server create` → running and `berth server start` (running and
# stopped servers) side by side with `docker run -d` / `docker start` of the same image with
# the same flags, in the same run; then the in-process ensure_running example.
#
#   bench/tenants/run.sh            # release build of berth + example, 10 runs each
#   RUNS=20 bench/tenants/run.sh
#
# Needs root, dockerd, hyperfine and the image $BERTH_TEST_IMAGE (default berth/tenant:bookworm).
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-10}
IMAGE=${BERTH_TEST_IMAGE:-berth/tenant:bookworm}
OUT=${OUT:-bench/tenants/results}
mkdir -p "$OUT"

cargo build --release -q -p berth -p tenants --bin berth --example bench_ensure_running
BERTH=$PWD/target/release/berth

WORK=$(mktemp -d /tmp/berth-bench.XXXXXX)
PREFIX=bbench$$
NET=$PREFIX-net
PEER=$PREFIX-peer
cleanup() {
  docker ps -aq --filter "name=^/$PREFIX-" | xargs -r docker rm -fv >/dev/null
  docker ps -aq --filter "label=bench=$PREFIX" | xargs -r docker rm -fv >/dev/null
  docker volume ls -q --filter "name=$PREFIX-" | xargs -r docker volume rm -f >/dev/null
  docker volume prune -f --filter "label=bench=$PREFIX" >/dev/null 2>&1 || true
  docker network rm "$NET" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

cat >"$WORK/berth.toml" <<TOML
state_dir = "$WORK/state"
[network]
name = "$NET"
bridge = "bb$$"
subnet = "10.213.252.0/24"
gateway = "10.213.252.1"
[tenants]
image = "$IMAGE"
name_prefix = "$PREFIX"
stop_timeout_secs = 0
TOML
export BERTH_CONFIG=$WORK/berth.toml BERTH_LOG=warn
"$BERTH" account add bench --no-password >/dev/null

# Same flags berth uses (see tenants::spec::container_body).
DOCKER_RUN="docker run -d --label bench=$PREFIX --network $NET --dns 10.213.252.1 --init \
  --memory 1g --memory-swap 1g --cpus 1 --pids-limit 1024 --restart unless-stopped \
  --security-opt no-new-privileges --mount type=volume,dst=/apps $IMAGE"

echo "== create -> running ($RUNS runs)"
hyperfine -N --runs "$RUNS" --warmup 1 --export-markdown "$OUT/create.md" \
  -n "berth server create" "$BERTH server create --owner bench" \
  -n "docker run -d" "$DOCKER_RUN"

# One server and one peer container for the start benchmarks.
"$BERTH" server create --owner bench >/dev/null
N=$("$BERTH" server list --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["id"])')
docker run -d --name "$PEER" --label bench=$PREFIX --network $NET --dns 10.213.252.1 --init \
  --memory 1g --memory-swap 1g --cpus 1 --pids-limit 1024 --mount type=volume,dst=/apps "$IMAGE" >/dev/null

echo "== start on an already running server ($((RUNS * 3)) runs)"
hyperfine -N --runs $((RUNS * 3)) --warmup 2 --export-markdown "$OUT/start-running.md" \
  -n "berth server start (running)" "$BERTH server start $N" \
  -n "docker start (running)" "docker start $PEER"

echo "== start a stopped server ($RUNS runs)"
hyperfine -N --runs "$RUNS" --warmup 1 --export-markdown "$OUT/start-stopped.md" \
  --prepare "docker stop -t 0 $PREFIX-server-$N" -n "berth server start (stopped)" "$BERTH server start $N" \
  --prepare "docker stop -t 0 $PEER" -n "docker start (stopped)" "docker start $PEER"

echo "== in-process ensure_running vs raw Docker API"
./target/release/examples/bench_ensure_running 1000 20 | tee "$OUT/ensure_running.txt"
