#!/usr/bin/env bash
# Builds the sidecar image from the repository's own Dockerfile with buildah (no daemon, no
# registry) and runs it, as docs/deploy.md says to: `--check` on the baked-in config, the
# proxy as the image's user with a mounted config, the image's own HEALTHCHECK command, a herd
# through it costing one origin request, and SIGTERM draining to exit status 0. Prints the
# image's size. Needs root (buildah, and apt-get for it when missing).
#
# The base images cannot be pulled here, so the Dockerfile's build arguments name local
# stand-ins:
#   - RUNTIME_IMAGE: an image made below from this machine's glibc, libm and libgcc_s (what
#     distroless/cc promises), with a `nonroot` user 65532 and no shell. It checks that the
#     binary needs nothing else, runs as 65532 and needs no shell for its HEALTHCHECK or
#     STOPSIGNAL; it cannot check distroless's own library versions (Debian 12's, as here) or
#     its CA bundle (the proxy trusts webpki roots built in, not the image's).
#   - BINARY_FROM=prebuilt: the Dockerfile's stage that takes a binary built beforehand with
#     the build stage's command and profile, since the Rust image cannot be pulled either. The
#     build stage itself (its COPY list and cargo command) is not run here.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v buildah >/dev/null 2>&1; then
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends buildah >/dev/null
fi
state="$PWD/target/buildah"
# vfs: plain copies, which work on any file system (overlay may not, where the checkout
# itself is on an overlay); the images are a few MB.
bah() { buildah --storage-driver vfs --root "$state/storage" --runroot "$state/run" "$@"; }
image=localhost/coalesce-proxy:ci
standin=localhost/ci-runtime-standin:latest
pids=()
containers=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  pkill -u 65532 -x coalesce-proxy 2>/dev/null || true
  for ctr in "${containers[@]}"; do bah rm "$ctr" >/dev/null 2>&1 || true; done
}
trap cleanup EXIT

echo "--- image: the binary, built as the Dockerfile's build stage builds it"
CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=symbols \
  cargo build --quiet --release --locked --no-default-features --bin coalesce-proxy \
  --target-dir target/image-build
context=target/image-context
rm -rf "$context" && mkdir -p "$context/prebuilt" "$context/config"
cp target/image-build/release/coalesce-proxy "$context/prebuilt/"
cp config/docker.toml "$context/config/"

echo "--- image: the runtime stand-in (glibc, libgcc, user 65532, no shell)"
ctr=$(bah from scratch); containers+=("$ctr")
root=$(bah mount "$ctr")
mkdir -p "$root/etc" "$root/tmp" "$root/home/nonroot"
chmod 1777 "$root/tmp"
for lib in $(ldd "$context/prebuilt/coalesce-proxy" | grep -o '/[^ ]*'); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
bah umount "$ctr" >/dev/null
bah commit -q "$ctr" "$standin" >/dev/null

echo "--- image: buildah bud from the Dockerfile"
bah bud -q --format docker --build-arg RUNTIME_IMAGE="$standin" --build-arg BINARY_FROM=prebuilt \
  -f Dockerfile -t "$image" "$context" >/dev/null
size=$(bah images --format '{{.Size}}' "$image")
echo "image size: $size (binary $(du -h "$context/prebuilt/coalesce-proxy" | cut -f1))"

config() { bah inspect --format "$1" "$image"; }
entrypoint=$(config '{{range .Docker.Config.Entrypoint}}{{.}} {{end}}')
healthcheck=$(config '{{range .Docker.Config.Healthcheck.Test}}{{.}} {{end}}')
user=$(config '{{.Docker.Config.User}}')
[ "$user" = 65532 ] || { echo "the image runs as '$user', not 65532"; exit 1; }
ctr=$(bah from "$image"); containers+=("$ctr")
inside() { bah run --isolation chroot "$@"; }
if inside "$ctr" -- /bin/sh -c true 2>/dev/null; then
  echo "the runtime stand-in has a shell"; exit 1
fi

echo "--- image: --check on the baked-in config"
# shellcheck disable=SC2086 # the entrypoint is words
inside --user "$user" "$ctr" -- $entrypoint --check --config /etc/coalesce-proxy/proxy.toml

echo "--- image: the proxy as user $user with a mounted config"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
origin_port=$(free_port); proxy_port=$(free_port); admin_port=$(free_port)
python3 .ci/image_check.py origin "$origin_port" & pids+=($!)
mounted="$PWD/target/image-proxy.toml"
cat >"$mounted" <<TOML
[server]
listen = "127.0.0.1:$proxy_port"
drain_delay = "0s"
[admin]
listen = "127.0.0.1:$admin_port"
[upstreams.app]
url = "http://127.0.0.1:$origin_port"
[[routes]]
path_prefix = "/"
upstream = "app"
TOML
# shellcheck disable=SC2086
inside --user "$user" -v "$mounted:/etc/coalesce-proxy/proxy.toml:ro" "$ctr" -- \
  $entrypoint --config /etc/coalesce-proxy/proxy.toml >target/image-proxy.log 2>&1 &
runner=$!
python3 .ci/image_check.py herd "$proxy_port" "$admin_port" "$origin_port" 200
proxy=$(pgrep -u 65532 -x coalesce-proxy)
echo "proxy pid $proxy runs as uid $(ps -o uid= -p "$proxy" | tr -d ' ')"

echo "--- image: its HEALTHCHECK command (${healthcheck#CMD })"
# shellcheck disable=SC2086
inside --user "$user" -v "$mounted:/etc/coalesce-proxy/proxy.toml:ro" "$ctr" -- ${healthcheck#CMD }

echo "--- image: SIGTERM drains and exits 0"
kill -TERM "$proxy"
if wait "$runner"; then
  echo "exit status 0"
else
  status=$?; echo "exit status $status"; tail -20 target/image-proxy.log; exit 1
fi
grep -q "all connections drained" target/image-proxy.log
