#!/usr/bin/env bash
# RSS per waiting HTTP/2 stream: STREAMS requests for one key over CONNECTIONS HTTP/2
# connections (h2load), held at the origin for 4 s. The proxy's RSS is read before the herd and
# while it waits, with the number of followers waiting then (from /metrics): the growth per
# waiting stream. hyper's HTTP/2 server admits 200 concurrent streams per connection, so at
# most 200 × CONNECTIONS wait at once. Loopback only.
#
#   bench/h2-waiters.sh [STREAMS] [CONNECTIONS]     defaults 20000 20
#   BIN=path/to/coalesce-proxy bench/h2-waiters.sh  another build
set -euo pipefail
cd "$(dirname "$0")/.."
streams=${1:-20000}
connections=${2:-20}
source bench/lib.sh
command -v h2load >/dev/null || install_missing nghttp2-client
build_release
proxy_bin=${BIN:-$bin/coalesce-proxy}

origin_port=$(port)
"$bin/examples/origin" --listen "127.0.0.1:$origin_port" >/dev/null &
pids+=($!); wait_port "$origin_port"
start_proxy_at proxy 127.0.0.1 "url = \"http://127.0.0.1:$origin_port\""
pid=$pid_proxy; proxy_port=${listen_proxy##*:}; admin_port=$admin_proxy
rss() { awk '/VmRSS/{print $2}' "/proc/$pid/status"; }
waiting() { http_get "$admin_port" /metrics | awk '/^coalesce_proxy_followers_waiting /{print $2}'; }

# Warm-up: the pools and the allocator's arenas exist before the measurement.
h2load -n 200 -c 2 -m 100 "http://127.0.0.1:$proxy_port/warm?delay=100&size=1024" >/dev/null 2>&1
before=$(rss)
timeout 60 h2load -n "$streams" -c "$connections" -m $((streams / connections)) \
  "http://127.0.0.1:$proxy_port/hot?delay=4000&size=1024" >"$work/h2load.out" 2>&1 &
load=$!
# Until the followers stop arriving (bounded: 3 s at most, the origin holds 4).
last=-1; now=0
for _ in $(seq 30); do
  sleep 0.1; now=$(waiting); [ "$now" = "$last" ] && [ "$now" != 0 ] && break; last=$now
done
during=$(rss)
wait "$load"
ok=$(grep -o '[0-9]* succeeded' "$work/h2load.out" | cut -d' ' -f1)
python3 -c "
before, during, waiting = $before, $during, max(int(float('$now')), 1)
print(f'HTTP/2 waiting streams: {waiting} waiting at once ({$streams} requests on {$connections} connections, {$ok} succeeded)')
print(f'RSS {before} KiB before, {during} KiB while waiting: {(during - before) * 1024 / waiting:.0f} bytes per waiting stream')"
