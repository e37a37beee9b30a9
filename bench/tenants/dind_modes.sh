#!/usr/bin/env bash
# Docker inside a server: `dind = "caps"` on the machine's engine beside `dind = "rootless"` on a
# `--userns-remap` engine the run starts itself, through the gateway (nested engine start,
# `docker run --rm` latency, `docker load` of a generated image). Rounds alternate the modes;
# medians of successful answers. See integration-tests/examples/dind_modes.rs.
#
#   bench/tenants/dind_modes.sh                          # release, 3 rounds, 1 GiB load
#   ROUNDS=1 LOAD_MIB=32 RUNS=5 PROFILE=dev bench/tenants/dind_modes.sh   # quick check
#
# Needs root, dockerd, the agent (`make agent`), the dind and rootless tenant images and the
# berth-userns remap user (`scripts/test --setup-only` makes all of them).
set -euo pipefail
cd "$(dirname "$0")/../.."
PROFILE=${PROFILE:-release}
OUT=${OUT:-bench/tenants/results}
mkdir -p "$OUT"
export ROUNDS=${ROUNDS:-3} RUNS=${RUNS:-10} LOAD_MIB=${LOAD_MIB:-1024}
cargo run -q --profile "$PROFILE" -p integration-tests --example dind_modes | tee "$OUT/dind_modes.md"
