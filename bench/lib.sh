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

# Waits until something listens on port $1 of $2 (default 127.0.0.1): $3 tries 50 ms apart
# (default 200, 10 s).
wait_port() {
  for _ in $(seq "${3:-200}"); do (exec 3<>"/dev/tcp/${2:-127.0.0.1}/$1") 2>/dev/null && return 0; sleep 0.05; done
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

# start_proxy_at NAME HOST UPSTREAM_LINES [ROUTE_LINES]: a coalesce-proxy ($proxy_bin if set,
# else $bin's) on HOST with one upstream `next` (UPSTREAM_LINES are its table's lines) and one
# route `app` for `/` (plus ROUTE_LINES), an admin listener, warnings only. Sets listen_NAME
# (host:port), admin_NAME (port) and pid_NAME.
start_proxy_at() {
  local name=$1 host=$2 upstream=$3 route=${4:-} listen admin
  listen=$(port); admin=$(port)
  cat >"$work/$name.toml" <<TOML
[server]
listen = "$host:$listen"
shutdown_grace = "1s"
[admin]
listen = "$host:$admin"
[log]
level = "warn"
stats_interval = "0s"
[upstreams.next]
$upstream
[[routes]]
name = "app"
path_prefix = "/"
upstream = "next"
$route
TOML
  "${proxy_bin:-$bin/coalesce-proxy}" --config "$work/$name.toml" &
  pids+=($!)
  printf -v "pid_$name" '%s' "$!"
  wait_port "$listen" "$host"; wait_port "$admin" "$host"
  printf -v "listen_$name" '%s' "$host:$listen"
  printf -v "admin_$name" '%s' "$admin"
}

# start_counting_origin DELAY BODY_SIZE: the bench origin ($bin) on 127.0.0.1, answering after
# DELAY with BODY_SIZE bytes, and its request counter on a second port. Sets origin_port and
# origin_stats; origin_hits prints the requests it has served so far.
start_counting_origin() {
  origin_port=$(port); origin_stats=$(port)
  "$bin/examples/origin" --listen "127.0.0.1:$origin_port" --stats-listen "127.0.0.1:$origin_stats" \
    --delay "$1" --body-size "$2" >/dev/null &
  pids+=($!)
  wait_port "$origin_port"; wait_port "$origin_stats"
}
origin_hits() { http_get "$origin_stats" / | tr -d '\r\n'; }
