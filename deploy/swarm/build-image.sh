#!/usr/bin/env bash
# Builds the image berth's own daemons run from on a swarm (deploy/swarm/stack.yml), offline:
# no registry, no Dockerfile build. It starts from the tenant base image every berth host already
# has (`berth image build` made it with debootstrap), installs nftables from Debian packages
# (downloaded once with `apt-get download`, or taken from DEBS_DIR), copies in the berth binary
# (debug info stripped) and the static session agent when it exists, and commits the result.
#
#   deploy/swarm/build-image.sh [--bin PATH] [--agent PATH] [--tag NAME:TAG] [--base IMAGE]
#
# Defaults: --bin target/release/berth, --agent target/x86_64-unknown-linux-gnu/release/berth-agent
# (skipped when missing: sessions then use docker exec), --tag berth/berth:local,
# --base berth/tenant:bookworm. The image's entrypoint is `berth`; its command `run`.
# Loading it onto other hosts: `docker save TAG | ssh HOST docker load`.
set -euo pipefail
cd "$(dirname "$0")/../.."

bin=target/release/berth
agent=target/x86_64-unknown-linux-gnu/release/berth-agent
tag=berth/berth:local
base=berth/tenant:bookworm
while (($#)); do
  case "$1" in
    --bin) bin=$2; shift 2 ;;
    --agent) agent=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --base) base=$2; shift 2 ;;
    *) echo "build-image.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

[[ -x "$bin" ]] || { echo "build-image.sh: no berth binary at $bin (cargo build --release, or --bin PATH)" >&2; exit 1; }
docker image inspect "$base" >/dev/null 2>&1 ||
  { echo "build-image.sh: base image $base is missing (berth image build --tag $base)" >&2; exit 1; }

# nftables, the libraries the tenant base image lacks (it has iproute2 and libmnl already), and
# netbase: nft names protocols by /etc/protocols, and berth compares its listing with the rules.
debs=${DEBS_DIR:-target/swarm-image/debs}
pkgs=(nftables libnftables1 libnftnl11 libjansson4 netbase)
mkdir -p "$debs"
fetch() { (cd "$debs" && apt-get download -q -o APT::Sandbox::User=root "$@" >/dev/null 2>&1); }
missing=()
for p in "${pkgs[@]}"; do compgen -G "$debs/${p}_*.deb" >/dev/null || missing+=("$p"); done
if ((${#missing[@]})); then
  # A machine whose package lists were never fetched knows no download URL yet.
  fetch "${missing[@]}" || { [[ $EUID -eq 0 ]] && apt-get update -q >/dev/null && fetch "${missing[@]}"; } ||
    { echo "build-image.sh: cannot download ${missing[*]} (apt-get update, or put the .debs into $debs)" >&2; exit 1; }
fi

work=$(mktemp -d)
cid=""
cleanup() {
  [[ -n "$cid" ]] && docker rm -f "$cid" >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/root/usr/local/bin"
# Debug info is most of a debug build's size and nothing the daemons use.
objcopy --strip-debug "$bin" "$work/root/usr/local/bin/berth" 2>/dev/null ||
  install -m 0755 "$bin" "$work/root/usr/local/bin/berth"
if [[ -f "$agent" ]]; then
  install -D -m 0755 "$agent" "$work/root/usr/lib/berth/berth-agent"
else
  echo "build-image.sh: no session agent at $agent; sessions will use docker exec (make agent)" >&2
fi
debs_abs=$(cd "$debs" && pwd)
cid=$(docker create --network none -v "$debs_abs:/debs:ro" --entrypoint /bin/sh "$base" -c \
  'set -e; dpkg -i /debs/*.deb >/dev/null; rm -rf /var/cache/apt/* /var/lib/apt/lists/*; nft --version')
docker cp "$work/root/." "$cid:/" >/dev/null
docker start -a "$cid" >/dev/null
version=$("$bin" --version | awk '{print $2}')
docker commit \
  -c 'ENTRYPOINT ["/usr/local/bin/berth"]' \
  -c 'CMD ["run"]' \
  -c 'WORKDIR /' \
  -c 'USER root' \
  -c "LABEL berth.image=daemon berth.version=$version" \
  "$cid" "$tag" >/dev/null
echo "$tag"
