#!/usr/bin/env bash
# Instructions per request under valgrind's callgrind: a figure machine load does not move,
# for judging an optimisation of the everyday request.
#
#   bench/callgrind.sh [REQUESTS]        default 2000
#   BIN=path/to/coalesce-proxy bench/callgrind.sh    another build (bench/compare.sh style)
#
# Runs the proxy and the bare hyper proxy (bench/bare.rs) each under callgrind with one worker
# thread, warms each up, zeroes the counters, sends REQUESTS pass-through GETs (distinct keys,
# 1 KiB answers, over HTTP/1.1 keep-alive from h2load --h1, and then over HTTP/2 from h2load),
# dumps, and prints instructions per request and the ratio. The proxy runs twice: GETs that
# could be joined (each leads a flight nobody joins), and the same GETs on a route with
# coalescing off (a plain pass-through): the difference is what being joinable costs. Each figure is the median of
# three runs: now and then a run comes out ~30 % higher for both protocols' HTTP/1.1 upstream
# side (hyper parsing a response that arrived in two reads), which a median sets aside.
# Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${1:-2000}
source bench/lib.sh
install_missing valgrind
command -v h2load >/dev/null || { apt-get update -qq >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nghttp2-client >/dev/null; }
cargo build --release --quiet --bin coalesce-proxy --example origin --example bare
proxy_bin=${BIN:-target/release/coalesce-proxy}

origin_port=$(port)
target/release/examples/origin --listen "127.0.0.1:$origin_port" >/dev/null &
pids+=($!); wait_port "$origin_port"

# Distinct keys: nothing can coalesce. h2load cycles through the file.
uris() { # port count [tag]
  for i in $(seq "$2"); do echo "http://127.0.0.1:$1${prefix:-/}cg${3:-}x$i-$RANDOM?size=1024&delay=0"; done
}

# drive h1|h2 COUNT: COUNT requests from four clients at once, each on URIs of its own. (One
# h2load with -c4 and one URI file sends every URI from all four clients in step: most
# requests then joined another's flight, and a "GET nobody joins" was one leader and three
# followers.) Says so when a request failed.
drive() {
  local mode=$1 per=$(( $2 / 4 )) c flags=(-c 1 -m 10) clients=()
  [ "$mode" = h1 ] && flags=(--h1 -c 1)
  for c in 1 2 3 4; do
    uris "$port" "$per" "$c$RANDOM" >"$work/uris.$c"
    timeout 300 h2load "${flags[@]}" -n "$per" -i "$work/uris.$c" >"$work/h2load.$c" 2>&1 &
    clients+=($!)
  done
  wait "${clients[@]}" || true
  for c in 1 2 3 4; do
    grep -q "$per succeeded, 0 failed, 0 errored" "$work/h2load.$c" || echo "$mode: some requests failed" >&2
  done
}

# Runs "$@" (listening on $port) under callgrind; prints "h1 h2" instructions per request.
measure() {
  local out=$work/callgrind.$RANDOM
  valgrind --tool=callgrind --callgrind-out-file="$out.%p" --collect-atstart=yes "$@" >/dev/null 2>&1 &
  local pid=$!; pids+=("$pid")
  # A minute: valgrind on a busy machine has taken more than the usual ten seconds to start.
  wait_port "$port" 127.0.0.1 1200
  drive h1 300; drive h2 300
  local result=()
  for mode in h1 h2; do
    callgrind_control --zero "$pid" >/dev/null 2>&1
    drive "$mode" "$requests"
    rm -f "$out".*
    callgrind_control --dump "$pid" >/dev/null 2>&1
    # The dump lands a moment after the command returns.
    for _ in $(seq 100); do ls "$out".* >/dev/null 2>&1 && break; sleep 0.1; done
    sleep 0.5
    local total
    total=$(cat "$out".* | sed -n 's/^summary: \([0-9]*\).*/\1/p' | awk '{s+=$1} END {print s}')
    result+=("$((total / requests))")
    # KEEP=DIR keeps each dump, for callgrind_annotate.
    # Named by route (`coalesce-proxy.h1`, `coalesce-proxy.pass.h1`), the last of the runs.
    local route=${prefix:-/}; route=${route//\//}
    [ -n "${KEEP:-}" ] && cp "$(ls "$out".* | head -1)" "$KEEP/$(basename "$1")${route:+.$route}.$mode.callgrind"
  done
  # The figures are for requests nobody joined: a run where any did is not one of them.
  if [ -n "${admin:-}" ]; then
    local joined
    joined=$(http_get "$admin" /metrics | awk -F' ' '/^coalesce_proxy_requests_total\{.*outcome="follower"/ {s+=$2} END {print s+0}')
    [ "$joined" = 0 ] || echo "$joined requests joined a flight: the figures are not for GETs nobody joins" >&2
  fi
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "${result[@]}"
}

median() { printf '%s\n' "$@" | sort -n | sed -n 2p; }
runs() { # proxy|bare → "h1 h2", each the median of three runs
  local h1=() h2=() a b
  for _ in 1 2 3; do
    port=$(port); admin=
    if [ "$1" != bare ]; then
      admin=$(port)
      printf '[server]\nlisten = "127.0.0.1:%s"\nworkers = 1\n[admin]\nlisten = "127.0.0.1:%s"\n[log]\nlevel = "warn"\nstats_interval = "0s"\n[upstreams.o]\nurl = "http://127.0.0.1:%s"\n[[routes]]\npath_prefix = "/"\nupstream = "o"\n[[routes]]\npath_prefix = "/pass/"\nupstream = "o"\ncoalesce = { enabled = false }\n' \
        "$port" "$admin" "$origin_port" >"$work/p.toml"
      [ "$1" = pass ] && prefix=/pass/ || prefix=/
      read -r a b <<<"$(measure "$proxy_bin" --config "$work/p.toml")"
      prefix=/
    else
      read -r a b <<<"$(measure target/release/examples/bare --listen "127.0.0.1:$port" --upstream "127.0.0.1:$origin_port" --threads 1)"
    fi
    h1+=("$a"); h2+=("$b")
  done
  echo "$1 runs: h1 ${h1[*]}; h2 ${h2[*]}" >&2
  echo "$(median "${h1[@]}") $(median "${h2[@]}")"
}
read -r proxy_h1 proxy_h2 <<<"$(runs proxy)"
read -r pass_h1 pass_h2 <<<"$(runs pass)"
read -r bare_h1 bare_h2 <<<"$(runs bare)"

echo "instructions per request ($requests requests, one worker, callgrind)"
echo "| client | coalesce-proxy, joinable GET | the same GET, coalescing off | bare hyper proxy | joinable ÷ bare | joinable − off |"
echo "|---|---|---|---|---|---|"
for mode in h1 h2; do
  p=proxy_$mode; q=pass_$mode; b=bare_$mode
  echo "| $mode | ${!p} | ${!q} | ${!b} | $(python3 -c "print(f'{${!p}/${!b}:.2f}')") | $((${!p} - ${!q})) |"
done
