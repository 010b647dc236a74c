#!/usr/bin/env bash
# A herd through the proxy and straight at the origin, in one run: upstream requests, client
# latency percentiles for both, and the proxy's peak RSS (VmHWM).
#
#   bench/herd.sh [CLIENTS] [BODY_SIZE] [ORIGIN_DELAY] [QUERY] [STUCK]
#
# defaults: 1000 1MiB 200ms "" 0. QUERY scripts the origin's response (see src/origin.rs),
# e.g. "cookie=1" for a response that may not be shared; STUCK adds clients that request the
# same key first and then read nothing until the herd is done. COALESCE (environment) is
# added to the proxy's [coalesce] table, e.g. COALESCE='client_stall_timeout = "1s"'.
#
# Loopback only; every process it starts is stopped by pid on exit; bounded by timeouts.
set -euo pipefail
cd "$(dirname "$0")/.."
clients=${1:-1000}
size=${2:-1MiB}
delay=${3:-200ms}
query=${4:-}
stuck=${5:-0}

source bench/lib.sh
build_release

origin_port=$(port); proxy_port=$(port)
"$bin/examples/origin" --listen "127.0.0.1:$origin_port" --delay "$delay" --body-size "$size" >"$work/origin.log" &
pids+=($!)
cat >"$work/proxy.toml" <<TOML
[server]
listen = "127.0.0.1:$proxy_port"
[log]
stats_interval = "0s"
level = "warn"
[coalesce]
${COALESCE:-}
[upstreams.origin]
url = "http://127.0.0.1:$origin_port"
[[routes]]
path_prefix = "/"
upstream = "origin"
TOML
"$bin/coalesce-proxy" --config "$work/proxy.toml" &
proxy_pid=$!
pids+=($proxy_pid)
wait_port "$origin_port"; wait_port "$proxy_port"

echo "herd of $clients, body $size, origin delay $delay, query '$query', $stuck stuck client(s)"
echo -n "direct:  "; timeout 300 "$bin/examples/herd" --addr "127.0.0.1:$origin_port" --path "/direct?$query" --clients "$clients" --expect-size "$size" --stuck "$stuck"
echo -n "proxy:   "; timeout 300 "$bin/examples/herd" --addr "127.0.0.1:$proxy_port" --path "/hot?$query" --clients "$clients" --expect-size "$size" --stuck "$stuck"
echo "proxy peak RSS: $(awk '/VmHWM/ {print $2, $3}' "/proc/$proxy_pid/status")"
kill -INT "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true
echo "origin requests (direct herd + proxy herd): $(grep -o 'served [0-9]*' "$work/origin.log" | cut -d' ' -f2)"
