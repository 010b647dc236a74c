# Shared by the bench scripts (source it after `cd` to the repository root): a scratch
# directory, the pids to stop on exit, loopback port helpers, missing tools and the release build.

work=$(mktemp -d)
chmod 755 "$work"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# A free port on 127.0.0.1.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits (up to 10 s) until something listens on port $1 of $2 (default 127.0.0.1).
wait_port() {
  for _ in $(seq 200); do (exec 3<>"/dev/tcp/${2:-127.0.0.1}/$1") 2>/dev/null && return 0; sleep 0.05; done
  echo "port $1 never opened" >&2; return 1
}

# GET path $2 from port $1 of $3 (default 127.0.0.1) and print the body, with nothing but bash
# (machines without curl).
http_get() {
  exec 3<>"/dev/tcp/${3:-127.0.0.1}/$1"
  printf 'GET %s HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n' "$2" >&3
  sed '1,/^\r$/d' <&3
  exec 3<&-
}

# Installs with apt-get each named Debian package whose command of the same name is missing
# (needs root, as on the project's machines).
install_missing() {
  local missing=() tool
  for tool in "$@"; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
  [ ${#missing[@]} = 0 ] && return 0
  echo "installing ${missing[*]} (apt-get)" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# Builds the proxy and the bench origin and herd client in release mode, into $bin, and lifts
# the descriptor limit for herds of thousands.
build_release() {
  ulimit -n "$(ulimit -Hn)"
  echo "building (release)" >&2
  cargo build --release --quiet --bin coalesce-proxy --example origin --example herd
  bin=target/release
}
