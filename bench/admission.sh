#!/usr/bin/env bash
# A cold-start herd coalescing cannot merge: CLIENTS clients over as many distinct
# keys, at once, against an origin of capacity 32 (20 ms per request up to 32 in progress,
# then 20 ms × (in progress / 32)²), four ways in one run: direct, the proxy without a limit,
# with a fixed limit of 32, with the adaptive limit (ceiling 256), and haproxy with
# `maxconn 32` on the server and a queue (`timeout queue 60s`).
#
#   bench/admission.sh [CLIENTS]     default 5000
#
# Each row: requests completed of CLIENTS, the time the last one took, and goodput
# (completed per second of that). Loopback only; stops what it starts.
set -euo pipefail
cd "$(dirname "$0")/.."
clients=${1:-5000}
source bench/lib.sh
install_missing haproxy
build_release

origin_port=$(port)
"$bin/examples/origin" --listen "127.0.0.1:$origin_port" >/dev/null &
pids+=($!); wait_port "$origin_port"
path="/cold?delay=20&capacity=32&size=1024"

run_herd() { # port → "ok max_ms"
  local out
  out=$(timeout 120 "$bin/examples/herd" --addr "127.0.0.1:$1" --path "$path" --clients "$clients" \
    --expect-size 1KiB --distinct --timeout 60s 2>/dev/null || true)
  local ok max
  ok=$(sed -n 's/.*\bok=\([0-9]*\).*/\1/p' <<<"$out")
  max=$(sed -n 's/.*\bmax_ms=\([0-9.]*\).*/\1/p' <<<"$out")
  echo "${ok:-0} ${max:-60000}"
}

rows=()
row() { # name ok max_ms
  rows+=("| $1 | $2 / $clients | $3 ms | $(python3 -c "print(f'{$2 / max($3, 1) * 1000:.0f}')") req/s |")
}

read -r ok max <<<"$(run_herd "$origin_port")"
row "direct" "$ok" "$max"

proxy_row() { # name concurrency-line
  local p; p=$(port)
  printf '[server]\nlisten = "127.0.0.1:%s"\n[log]\nlevel = "error"\nstats_interval = "0s"\n[upstreams.origin]\nurl = "http://127.0.0.1:%s"\npool_max_idle = 512\nresponse_timeout = "60s"\n%s\n[[routes]]\npath_prefix = "/"\nupstream = "origin"\n' \
    "$p" "$origin_port" "$2" >"$work/proxy.toml"
  "$bin/coalesce-proxy" --config "$work/proxy.toml" &
  local pid=$!; pids+=("$pid"); wait_port "$p"
  read -r ok max <<<"$(run_herd "$p")"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  row "$1" "$ok" "$max"
}
proxy_row "coalesce-proxy, no limit" ""
proxy_row "coalesce-proxy, concurrency max = 32" 'concurrency = { max = 32, queue = 10000, queue_timeout = "60s" }'
proxy_row "coalesce-proxy, adaptive (max = 256)" 'concurrency = { max = 256, queue = 10000, queue_timeout = "60s", adaptive = true }'

haproxy_row() {
  local p; p=$(port)
  cat >"$work/haproxy.cfg" <<CFG
global
    maxconn 9000
    nbthread 2
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout queue 60s
    http-reuse always
frontend cold
    bind 127.0.0.1:$p
    maxconn 9000
    default_backend origin
backend origin
    server origin 127.0.0.1:$origin_port maxconn 32
CFG
  haproxy -f "$work/haproxy.cfg" -db >/dev/null 2>&1 &
  local pid=$!; pids+=("$pid"); wait_port "$p"
  read -r ok max <<<"$(run_herd "$p")"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  row "haproxy, server maxconn 32, queued" "$ok" "$max"
}
haproxy_row

echo "cold start: $clients distinct keys at once, origin capacity 32 at 20 ms ($(date -u +%Y-%m-%d), $(nproc) cores)"
echo
echo "| target | completed | last done after | goodput |"
echo "|---|---|---|---|"
printf '%s\n' "${rows[@]}"
