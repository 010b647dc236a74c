#!/usr/bin/env bash
# The scale-out tier of docs/scale-out.md, measured: M sidecars hashing keys over S shields,
# all in front of one origin, against the same sidecars going to the origin directly.
#
#   bench/tier.sh [CLIENTS_PER_KEY] [KEYS]     defaults 1000 and 4
#
# Each proxy listens on its own 127.0.0.x address (shields on .2 and .3, sidecars on .4 to
# .7). For each key, one herd process per sidecar (CLIENTS_PER_KEY / 4 clients each) connects,
# and all of them release their requests at one agreed wall-clock moment, against a 200 ms
# origin (DELAY=… to change it) with a 16 KiB body. Printed: clients, the requests the sidecars
# sent upstream, the requests the shields sent to the origin, origin requests, and the worst
# herd's p99. DEBUG=1 adds each herd's line and the shields' outcome counters. Loopback only;
# bounded by timeouts.
set -euo pipefail
cd "$(dirname "$0")/.."
per_key=${1:-1000}
keys=${2:-4}
sidecar_hosts=(127.0.0.4 127.0.0.5 127.0.0.6 127.0.0.7)
shield_hosts=(127.0.0.2 127.0.0.3)
per_sidecar=$((per_key / ${#sidecar_hosts[@]}))

source bench/lib.sh
build_release

start_counting_origin "${DELAY:-200ms}" 16KiB

# Requests a proxy sent upstream (leaders and passes), from its /metrics.
upstream_requests() { # host admin_port
  http_get "$2" /metrics "$1" | awk '/^coalesce_proxy_upstream_requests_total/ {n += $2} END {print n + 0}'
}

shield_urls=""
for i in "${!shield_hosts[@]}"; do
  start_proxy_at "shield$i" "${shield_hosts[$i]}" "url = \"http://127.0.0.1:$origin_port\"
pool_max_idle = 256"
  name="listen_shield$i"
  shield_urls+="${shield_urls:+, }\"http://${!name}\""
done

run_herds() { # label sidecar_prefix
  local label=$1 prefix=$2 before results=() key i p99s=()
  before=$(origin_hits)
  for key in $(seq "$keys"); do
    # Each herd process connects on its own; all release their requests at one moment.
    local outs=() path="/$label/key-$key-$RANDOM" release
    release=$(( $(date +%s%3N) + 3000 ))
    for i in "${!sidecar_hosts[@]}"; do
      local name="listen_${prefix}$i"
      timeout 120 "$bin/examples/herd" --addr "${!name}" --path "$path" --release-at-ms "$release" \
        --clients "$per_sidecar" --expect-size 16KiB >"$work/herd-$label-$key-$i" 2>&1 &
      outs+=($!)
    done
    wait "${outs[@]}" || true
  done
  local ok=0 worst=0 sidecar_up=0 shield_up=0
  for f in "$work"/herd-"$label"-*; do
    ok=$((ok + $(sed -n 's/.* ok=\([0-9]*\).*/\1/p' "$f")))
    worst=$(python3 -c "print(max($worst, $(sed -n 's/.* p99_ms=\([0-9.]*\).*/\1/p' "$f")))")
  done
  for i in "${!sidecar_hosts[@]}"; do
    local admin="admin_${prefix}$i"
    sidecar_up=$((sidecar_up + $(upstream_requests "${sidecar_hosts[$i]}" "${!admin}")))
  done
  if [ -n "${DEBUG:-}" ]; then
    cat "$work"/herd-"$label"-*
    for i in "${!shield_hosts[@]}"; do
      local admin="admin_shield$i"
      http_get "${!admin}" /metrics "${shield_hosts[$i]}" | grep '^coalesce_proxy_requests_total'
    done
  fi
  if [ "$prefix" = tiered ]; then
    for i in "${!shield_hosts[@]}"; do
      local admin="admin_shield$i"
      shield_up=$((shield_up + $(upstream_requests "${shield_hosts[$i]}" "${!admin}")))
    done
  else
    shield_up="-"
  fi
  echo "| $label | $((keys * per_sidecar * ${#sidecar_hosts[@]})) ($ok ok) | ${#sidecar_hosts[@]} | $([ "$prefix" = tiered ] && echo ${#shield_hosts[@]} || echo 0) | $sidecar_up | $shield_up | $(( $(origin_hits) - before )) | $worst |"
}

echo "| topology | clients | sidecars | shields | sidecar upstream requests | shield upstream requests | origin requests | worst herd p99 ms |"
echo "|---|---|---|---|---|---|---|---|"
for i in "${!sidecar_hosts[@]}"; do
  start_proxy_at "tiered$i" "${sidecar_hosts[$i]}" "urls = [$shield_urls]
balance = \"hash\"
pool_max_idle = 256"
done
run_herds tiered tiered
for i in "${!sidecar_hosts[@]}"; do
  start_proxy_at "direct$i" "${sidecar_hosts[$i]}" "url = \"http://127.0.0.1:$origin_port\"
pool_max_idle = 256"
done
run_herds direct direct
echo
echo "$keys keys, $per_key clients per key ($per_sidecar per sidecar), origin ${DELAY:-200ms}, 16 KiB."
