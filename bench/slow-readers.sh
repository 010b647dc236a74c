#!/usr/bin/env bash
# Clients that never read, against the proxy's memory (issue 26): 24 HTTP/1.1 connections on
# distinct 40 MB URLs and one HTTP/2 connection with a zero stream window and 12 streams, held
# for 20 s, while a normal client is served every half second; then RSS is followed for a
# minute after they leave. Default config but for the listener and the upstream, plus any
# [server] lines given in EXTRA (e.g. EXTRA='max_buffered_bytes = "64MiB"').
#
#   bench/slow-readers.sh [BIN]     BIN defaults to target/release/coalesce-proxy
#
# Loopback only; stops what it starts.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
build_release
proxy=${1:-$bin/coalesce-proxy}

origin_port=$(port)
"$bin/examples/origin" --listen "127.0.0.1:$origin_port" >/dev/null &
pids+=($!); wait_port "$origin_port"

p=$(port)
printf '[server]\nlisten = "127.0.0.1:%s"\n%s\n[log]\nlevel = "error"\nstats_interval = "0s"\n[upstreams.origin]\nurl = "http://127.0.0.1:%s"\n[[routes]]\npath_prefix = "/"\nupstream = "origin"\n' \
  "$p" "${EXTRA:-}" "$origin_port" >"$work/proxy.toml"
"$proxy" --config "$work/proxy.toml" &
pid=$!; pids+=("$pid"); wait_port "$p"
python3 bench/slow_readers.py "$p" "$pid" ${ARGS:-}
