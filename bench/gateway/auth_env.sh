#!/bin/bash
# Starts (or stops) the auth benchmark world on this machine:
#   - a berth gateway (`berth run gateway`) on 127.0.0.1:$BERTH_PORT with its own state dir,
#     SQLite store, Docker network and one tenant server owned by `benchacct` (password + key);
#   - an OpenSSH sshd on 127.0.0.1:$SSHD_PORT with its own config and host keys, key auth for
#     user `berthbench` (created if missing) with the same client key.
# Usage: bench/gateway/auth_env.sh start|stop   (env: BERTH=path/to/berth, DIR=/tmp/berth-bench-auth)
# Both servers use the same client key, the same cipher (default negotiation, chacha20-poly1305
# on both) and Ed25519 host keys.
set -euo pipefail
ACTION=${1:-start}
DIR=${DIR:-/tmp/berth-bench-auth}
BERTH=${BERTH:-$(cd "$(dirname "$0")/../.." && pwd)/target/release/berth}
BERTH_PORT=${BERTH_PORT:-2297}
SSHD_PORT=${SSHD_PORT:-2298}
METRICS_PORT=${METRICS_PORT:-9497}
PASSWORD=${PASSWORD:-bench-Pa55word-not-secret}

stop() {
  [ -f "$DIR/berth.pid" ] && kill "$(cat "$DIR/berth.pid")" 2>/dev/null || true
  [ -f "$DIR/sshd.pid" ] && kill "$(cat "$DIR/sshd.pid")" 2>/dev/null || true
  sleep 1
  if [ -f "$DIR/berth.toml" ]; then
    docker ps -aq --filter name=^/bbauth- | xargs -r docker rm -f -v >/dev/null 2>&1 || true
    docker volume ls -q --filter name=bbauth- | xargs -r docker volume rm -f >/dev/null 2>&1 || true
    docker network rm berth-bench-auth >/dev/null 2>&1 || true
  fi
  rm -rf "$DIR"
}

if [ "$ACTION" = stop ]; then stop; exit 0; fi

stop
mkdir -p "$DIR/state" && chmod 700 "$DIR" "$DIR/state"
cat > "$DIR/berth.toml" <<TOML
state_dir = "$DIR/state"
database_url = "sqlite://$DIR/state/berth.db"
[ssh]
listen = ["127.0.0.1:$BERTH_PORT"]
[ssh.auth]
bcrypt_dummy_cost = 12
[ssh.auth.host_keys]
enable_rsa = false
[network]
name = "berth-bench-auth"
bridge = "bbauth0"
subnet = "172.30.77.0/24"
gateway = "172.30.77.1"
[tenants]
image = "berth/tenant:bookworm"
name_prefix = "bbauth"
[metrics]
listen = "127.0.0.1:$METRICS_PORT"
TOML
export BERTH_CONFIG="$DIR/berth.toml"
ssh-keygen -q -t ed25519 -N '' -C bench -f "$DIR/id_ed25519"
printf '%s\n' "$PASSWORD" | "$BERTH" account add benchacct --password-stdin >/dev/null
"$BERTH" account key add benchacct "$(cat "$DIR/id_ed25519.pub")" >/dev/null 2>&1 \
  || "$BERTH" account key add benchacct --key "$(cat "$DIR/id_ed25519.pub")" >/dev/null
SERVER=$("$BERTH" server create --owner benchacct | tail -1)
echo "$SERVER" > "$DIR/server"
"$BERTH" run gateway >"$DIR/berth.log" 2>&1 &
echo $! > "$DIR/berth.pid"

# sshd with its own host key and config, key auth only, for a dedicated user with a stock
# Debian home (bash reads ~/.bashrc for commands run by sshd; root's here loads pyenv and would
# add ~250 ms that are not sshd's).
ssh-keygen -q -t ed25519 -N '' -f "$DIR/sshd_host_ed25519_key"
id berthbench >/dev/null 2>&1 || useradd -m -s /bin/bash berthbench
# A random password (Debian's default yescrypt hash), so storm guesses cost sshd a real verify.
echo "berthbench:$(head -c 24 /dev/urandom | base64)" | chpasswd
cp "$DIR/id_ed25519.pub" "$DIR/authorized_keys"
chmod 755 "$DIR"; chmod 644 "$DIR/authorized_keys"
cat > "$DIR/sshd_config" <<CFG
Port $SSHD_PORT
ListenAddress 127.0.0.1
HostKey $DIR/sshd_host_ed25519_key
PidFile $DIR/sshd.pid
AuthorizedKeysFile $DIR/authorized_keys
PermitRootLogin no
AllowUsers berthbench
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
LogLevel ERROR
CFG
mkdir -p /run/sshd
/usr/sbin/sshd -f "$DIR/sshd_config" -E "$DIR/sshd.log"
for _ in $(seq 1 100); do
  if ssh -p "$BERTH_PORT" -i "$DIR/id_ed25519" -o IdentitiesOnly=yes -o BatchMode=yes \
      -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR \
      "$SERVER@127.0.0.1" true 2>/dev/null; then
    echo "berth gateway on 127.0.0.1:$BERTH_PORT ($SERVER), sshd on 127.0.0.1:$SSHD_PORT, dir $DIR"
    exit 0
  fi
  sleep 0.3
done
echo "berth gateway did not come up; log:" >&2
cat "$DIR/berth.log" >&2
exit 1
