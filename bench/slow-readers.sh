#!/usr/bin/env bash
# Clients that never read, against the proxy's memory (issue 26): 24 HTTP/1.1 connections on
# distinct 40 MB URLs and one HTTP/2 connection with a zero stream window and 12 streams, held
# for 20 s, while a normal client is served every half second; then RSS is followed for a
# minute after they leave. Default config but for the listener and the upstream, plus any
# [server] lines given in EXTRA (e.g. EXTRA='max_buffered_bytes = "64MiB"').
#
#   bench/slow-readers.sh [BIN...]     each binary in turn (default target/release/coalesce-proxy),
#                                      one table row each; ARGS passes options to slow_readers.py
#
# Loopback only; stops what it starts.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
build_release

origin_port=$(port)
"$bin/examples/origin" --listen "127.0.0.1:$origin_port" >/dev/null &
pids+=($!); wait_port "$origin_port"

echo "| binary | idle RSS | peak while held | 10 s after | 30 s after | 60 s after | normal client ok/failed |"
echo "|---|---|---|---|---|---|---|"
for proxy in "${@:-$bin/coalesce-proxy}"; do
  p=$(port)
  printf '[server]\nlisten = "127.0.0.1:%s"\n%s\n[log]\nlevel = "error"\nstats_interval = "0s"\n[upstreams.origin]\nurl = "http://127.0.0.1:%s"\n[[routes]]\npath_prefix = "/"\nupstream = "origin"\n' \
    "$p" "${EXTRA:-}" "$origin_port" >"$work/proxy.toml"
  "$proxy" --config "$work/proxy.toml" &
  pid=$!; pids+=("$pid"); wait_port "$p"
  # shellcheck disable=SC2086
  python3 bench/slow_readers.py "$p" "$pid" ${ARGS:-} | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
mib = lambda k: "%.0f MiB" % (r[k] / 1024) if k in r else "-"
print("| %s | %s | %s | %s | %s | %s | %d/%d |" % (sys.argv[1], mib("before"), mib("peak"), mib("after_10s"),
      mib("after_30s"), mib("after_60s"), r["normal"]["ok"], r["normal"]["failed"]))' "$proxy"
  kill "$pid"; wait "$pid" 2>/dev/null || true
done
