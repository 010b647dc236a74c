#!/usr/bin/env bash
# A herd of fresh connections against the listen backlog: CLIENTS clients connect at once
# (one new connection each) for one key on a 200 ms origin, through the proxy with
# `backlog = 128` (the old default) and with the default (4096; the kernel caps it at
# net.core.somaxconn). Reports the kernel's TcpExtListenOverflows during each run (every
# overflow is a SYN dropped, and a client waiting a second or more for its retransmit) and the
# herd's p99 and slowest client.
#
#   bench/backlog.sh [CLIENTS]     default 10000
#
# Loopback only; stops what it starts.
set -euo pipefail
cd "$(dirname "$0")/.."
clients=${1:-10000}
source bench/lib.sh
build_release

origin_port=$(port)
"$bin/examples/origin" --listen "127.0.0.1:$origin_port" >/dev/null &
pids+=($!); wait_port "$origin_port"

overflows() { awk '/^TcpExt:/ { if (!n) { for (i = 1; i <= NF; i++) k[i] = $i; n = 1 } else { for (i = 1; i <= NF; i++) if (k[i] == "ListenOverflows") print $i } }' /proc/net/netstat; }

echo "fresh-connection herd: $clients clients, one key, origin 200 ms ($(date -u +%Y-%m-%d), $(nproc) cores, somaxconn $(cat /proc/sys/net/core/somaxconn))"
echo
echo "| backlog | ListenOverflows | ok | p99 | slowest |"
echo "|---|---|---|---|---|"
for backlog in 128 default; do
  p=$(port)
  line=""; [ "$backlog" = default ] || line="backlog = $backlog"
  printf '[server]\nlisten = "127.0.0.1:%s"\n%s\n[log]\nlevel = "error"\nstats_interval = "0s"\n[upstreams.origin]\nurl = "http://127.0.0.1:%s"\n[[routes]]\npath_prefix = "/"\nupstream = "origin"\n' \
    "$p" "$line" "$origin_port" >"$work/proxy.toml"
  "$bin/coalesce-proxy" --config "$work/proxy.toml" &
  pid=$!; pids+=("$pid"); wait_port "$p"
  before=$(overflows)
  out=$(timeout 120 "$bin/examples/herd" --addr "127.0.0.1:$p" --path "/fresh-$backlog?delay=200&size=1024" \
    --clients "$clients" --expect-size 1KiB --timeout 60s 2>/dev/null || true)
  after=$(overflows)
  ok=$(sed -n 's/.*\bok=\([0-9]*\).*/\1/p' <<<"$out")
  p99=$(sed -n 's/.*\bp99_ms=\([0-9.]*\).*/\1/p' <<<"$out")
  max=$(sed -n 's/.*\bmax_ms=\([0-9.]*\).*/\1/p' <<<"$out")
  echo "| $backlog | $((after - before)) | ${ok:-0} / $clients | ${p99:-?} ms | ${max:-?} ms |"
  kill "$pid"; wait "$pid" 2>/dev/null || true
done
