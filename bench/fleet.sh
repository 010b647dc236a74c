#!/usr/bin/env bash
# The fleet layer (docs/scale-out.md), measured side by side in one run: 8 sidecar proxies
# (separate processes, each its own port and flight table) in front of one origin, a herd of
# CLIENTS per sidecar on one key (a new key per row), released at one agreed moment against a
# 300 ms origin (DELAY=… to change it) with a 16 KiB body that may be cached for 60 s.
#
#   bench/fleet.sh [CLIENTS_PER_SIDECAR]     default 1000 (8,000 clients per row)
#
# Rows:
#   direct        one herd of CLIENTS straight at the origin: the p99 every row is compared
#                 with (what one sidecar's clients would see without a proxy; the test origin
#                 resets connections when 8,000 arrive at once, so not all eight herds)
#   local         the sidecars without a fleet layer: one origin request per sidecar
#   shield        the sidecars hashing keys to 2 shields (bench/tier.sh's topology)
#   fleet         the sidecars with `fleet = { redis = ... }` (and their caches on)
#   restart       a ninth sidecar started after the fleet row asks for its key once
#   redis killed  the fleet again, with redis-server killed 100 ms into the origin's wait
# Printed per row: clients (and how many got every byte), origin requests, the fleet's
# counters summed over the sidecars (from /metrics), and the worst herd's p99 against the
# direct row's. Sidecars listen on 127.0.0.4-12, shields on .2 and .3, Redis and the origin
# on 127.0.0.1. Loopback only; every herd is bounded by a timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
per_sidecar=${1:-1000}
delay=${DELAY:-300ms}
sidecars=(127.0.0.4 127.0.0.5 127.0.0.6 127.0.0.7 127.0.0.8 127.0.0.9 127.0.0.10 127.0.0.11)
shields=(127.0.0.2 127.0.0.3)

source bench/lib.sh
install_missing redis-server
build_release

start_counting_origin "$delay" 16KiB

redis_port=$(port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
redis_pid=$!
pids+=($redis_pid)
wait_port "$redis_port"

# start_sidecars PREFIX UPSTREAM_LINES [ROUTE_LINES]: a proxy on each sidecar address, their
# listen addresses in `targets`.
start_sidecars() {
  local prefix=$1 i name
  targets=()
  for i in "${!sidecars[@]}"; do
    start_proxy_at "$prefix$i" "${sidecars[$i]}" "$2" "${3:-}"
    name="listen_$prefix$i"; targets+=("${!name}")
  done
}
# stop_sidecars PREFIX: frees the sidecar addresses' CPU for the next row.
stop_sidecars() {
  local i
  for i in "${!sidecars[@]}"; do pkill -f "$work/$1$i.toml" 2>/dev/null || true; done
}

fleet_route="fleet = { redis = \"redis://127.0.0.1:$redis_port\" }
cache = { enabled = true }"
origin_url="url = \"http://127.0.0.1:$origin_port\""

# The fleet's counters over the sidecars of PREFIX: won/waited/served/fallback.
fleet_counts() { # prefix count
  local prefix=$1 n=$2 i event out=""
  for event in won waited served cache_hit fallback; do
    local sum=0
    for i in $(seq 0 $((n - 1))); do
      local admin="admin_${prefix}$i" host
      host=${sidecars[$i]:-127.0.0.12}
      sum=$((sum + $(http_get "${!admin}" /metrics "$host" |
        awk -v e="$event" '$1 ~ "^coalesce_proxy_fleet_events_total" && $1 ~ "\"" e "\"" {n += $2} END {print n + 0}')))
    done
    out+="$event=$sum "
  done
  echo "${out% }"
}

direct_p99=""
# run_row LABEL TARGETS...: one herd process per target (host:port), released together.
run_row() {
  local label=$1; shift
  local before path release outs=() ok=0 worst=0 f
  before=$(origin_hits)
  path="/$label-$RANDOM?header=cache-control:max-age=60"
  release=$(( $(date +%s%3N) + 3000 ))
  row_release=$release
  for target in "$@"; do
    timeout 120 "$bin/examples/herd" --addr "$target" --path "$path" --release-at-ms "$release" \
      --clients "$per_sidecar" --expect-size 16KiB >"$work/herd-$label-${target//[:.]/_}" 2>&1 &
    outs+=($!)
  done
  [ -n "${on_release:-}" ] && $on_release
  wait "${outs[@]}" || true
  for f in "$work"/herd-"$label"-*; do
    ok=$((ok + $(sed -n 's/.* ok=\([0-9]*\).*/\1/p' "$f")))
    worst=$(python3 -c "print(max($worst, $(sed -n 's/.* p99_ms=\([0-9.]*\).*/\1/p' "$f")))")
  done
  [ -n "${DEBUG:-}" ] && cat "$work"/herd-"$label"-*
  [ -z "$direct_p99" ] && direct_p99=$worst
  row_path=$path
  row="| $label | $(( per_sidecar * $# )) ($ok ok) | $(( $(origin_hits) - before )) |"
  row_p99="$worst | $(python3 -c "print(f'{$worst / $direct_p99:.2f}×')") |"
}

echo "| row | clients (every byte) | origin requests | fleet counters (sum over sidecars) | worst herd p99 ms | p99 / direct |"
echo "|---|---|---|---|---|---|"
run_row direct "127.0.0.1:$origin_port"
echo "$row - | $row_p99"

start_sidecars local "$origin_url"
run_row local "${targets[@]}"
echo "$row - | $row_p99"
stop_sidecars local

shield_urls=""
for i in "${!shields[@]}"; do
  start_proxy_at "shield$i" "${shields[$i]}" "$origin_url" ""
  name="listen_shield$i"; shield_urls+="${shield_urls:+, }\"http://${!name}\""
done
start_sidecars tiered "urls = [$shield_urls]
balance = \"hash\""
run_row shield "${targets[@]}"
echo "$row - | $row_p99"
stop_sidecars tiered

start_sidecars fleet "$origin_url" "$fleet_route"
run_row fleet "${targets[@]}"
echo "$row $(fleet_counts fleet ${#sidecars[@]}) | $row_p99"

# A replica started after the herd: its first request for the fleet row's key.
start_proxy_at "fleet8" 127.0.0.12 "$origin_url" "$fleet_route"
before=$(origin_hits)
timeout 30 "$bin/examples/herd" --addr "$listen_fleet8" --path "$row_path" --clients 1 \
  --expect-size 16KiB >"$work/restart" 2>&1 || true
restart_ok=$(sed -n 's/.* ok=\([0-9]*\).*/\1/p' "$work/restart")
restart_hit=$(http_get "$admin_fleet8" /metrics 127.0.0.12 |
  awk '$1 ~ /fleet_events_total/ && $1 ~ /"cache_hit"/ {print $2}')
echo "| restart (a new sidecar, the fleet row's key) | 1 ($restart_ok ok) | $(( $(origin_hits) - before )) | cache_hit=${restart_hit:-0} | - | - |"

# The fleet again, with Redis killed while the sidecars wait on its lease holder.
kill_redis() {
  ( python3 -c "import time; time.sleep(max(0, ($row_release + 100) / 1000 - time.time()))"
    kill "$redis_pid" ) &
}
on_release=kill_redis run_row "redis-killed" "${targets[@]}"
echo "$row $(fleet_counts fleet ${#sidecars[@]}) (totals since start) | $row_p99"
echo
echo "${#sidecars[@]} sidecars × $per_sidecar clients on one key per row, origin $delay, 16 KiB."
