#!/bin/bash
# Login + exec `true` latency with key auth: berth gateway (→ docker exec in the tenant) vs
# OpenSSH sshd (→ fork/exec on the host), same client, same key type, one hyperfine run.
# Needs the world from auth_env.sh (started by this script unless NO_ENV=1).
# Usage: bench/gateway/auth_login.sh [runs]    Output: hyperfine table + $DIR/login.json
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
DIR=${DIR:-/tmp/berth-bench-auth}
RUNS=${1:-40}
[ "${NO_ENV:-0}" = 1 ] || "$HERE/auth_env.sh" start
SERVER=$(cat "$DIR/server")
OPTS="-i $DIR/id_ed25519 -o IdentitiesOnly=yes -o IdentityAgent=none -o BatchMode=yes \
-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR \
-o ControlMaster=no -o ControlPath=none -o Ciphers=chacha20-poly1305@openssh.com -o KexAlgorithms=curve25519-sha256 -o GSSAPIAuthentication=no"
hyperfine -N --warmup 3 --runs "$RUNS" --export-json "$DIR/login.json" --export-markdown "$DIR/login.md" \
  -n "berth (key, exec true in container)" "ssh -p ${BERTH_PORT:-2297} $OPTS $SERVER@127.0.0.1 true" \
  -n "sshd (key, exec true on host)" "ssh -p ${SSHD_PORT:-2298} $OPTS berthbench@127.0.0.1 true"
# Where berth's time goes: the same login with a no-op `docker exec` done by hand for reference.
CID=$(docker ps -q --filter "name=^/bbauth-server-${SERVER#server}$")
hyperfine -N --warmup 3 --runs "$RUNS" --export-markdown "$DIR/docker_exec.md" \
  -n "docker exec true (reference)" "docker exec $CID true"
cat "$DIR/login.md" "$DIR/docker_exec.md"
