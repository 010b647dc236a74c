#!/usr/bin/env bash
# Every benchmark scenario against the direct origin, coalesce-proxy and nginx (proxy_cache
# with the cache lock), side by side in one run, printed as a Markdown table.
#
#   bench/run.sh            the full run (a few minutes)
#   bench/run.sh --quick    smaller herds and shorter load, to check the harness works
#   ONLY="1 4" bench/run.sh only those scenarios (9: bench/passthrough.sh, every target)
#
# Loopback only. Each proxy is started fresh per scenario, so peak RSS and CPU time belong to
# that scenario; everything started is stopped by pid on exit. Installs nginx and wrk with
# apt-get when they are missing (needs root, as on the project's machines).
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
[ "${1:-}" = "--quick" ] && quick=1
if [ $quick = 1 ]; then
  herd1=200; herd2=2000; fan=50; waiting=2000; wrk_seconds=3
else
  herd1=1000; herd2=10000; fan=200; waiting=10000; wrk_seconds=10
fi

source bench/lib.sh
install_missing nginx wrk
# One client process holds every herd connection; the proxies hold as many again.
build_release
field() { sed -n "s/.*\b$1=\([^ ]*\).*/\1/p" <<<"$2"; }
ratio() { python3 -c "a,b=float('$1'),float('$2'); print(f'{a/b:.2f}' if b else 'n/a')"; }
mib() { python3 -c "print(f'{$1/1024:.1f} MiB')"; }
peak_rss_kb() { local t=0; for p in "$@"; do t=$((t + $(awk '/VmHWM/ {print $2}' "/proc/$p/status"))); done; echo $t; }
rss_kb() { local t=0; for p in "$@"; do t=$((t + $(awk '/VmRSS/ {print $2}' "/proc/$p/status"))); done; echo $t; }
cpu_ticks() { local t=0; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo $t; }
ticks_per_second=$(getconf CLK_TCK)

# The origin, for the whole run; requests script their own delay and size.
origin_port=$(port); origin_stats=$(port)
"$bin/examples/origin" --listen "127.0.0.1:$origin_port" --stats-listen "127.0.0.1:$origin_stats" >/dev/null &
pids+=($!)
wait_port "$origin_port"; wait_port "$origin_stats"
origin_hits() { http_get "$origin_stats" / | tr -d '\r\n'; }

proxy_pid=""; proxy_port=""; admin_port=""
start_proxy() {
  proxy_port=$(port); admin_port=$(port)
  cat >"$work/proxy.toml" <<TOML
[server]
listen = "127.0.0.1:$proxy_port"
shutdown_grace = "1s"
max_connections = ${proxy_max_connections:-10000}
[admin]
listen = "127.0.0.1:$admin_port"
[log]
level = "warn"
stats_interval = "0s"
[upstreams.origin]
url = "http://127.0.0.1:$origin_port"
pool_max_idle = 256
[[routes]]
path_prefix = "/"
upstream = "origin"
[[routes]]
name = "cached"
path_prefix = "/cached/"
upstream = "origin"
cache = { enabled = true, max_size = "64MiB" }
[[routes]]
name = "microcached"
path_prefix = "/microcached/"
upstream = "origin"
cache = { enabled = true, max_size = "64MiB", default_ttl = "1s" }
TOML
  "$bin/coalesce-proxy" --config "$work/proxy.toml" &
  proxy_pid=$!
  pids+=("$proxy_pid")
  wait_port "$proxy_port"
}
stop_proxy() { kill "$proxy_pid" 2>/dev/null || true; wait "$proxy_pid" 2>/dev/null || true; }

nginx_pid=""; nginx_port=""
start_nginx() {
  nginx_port=$(port); nginx_h2_port=$(port)
  rm -rf "$work/cache"; mkdir -p "$work/cache"; chmod 777 "$work/cache"
  for d in client_body proxy_temp fastcgi_temp uwsgi_temp scgi_temp; do mkdir -p "$work/$d"; chmod 777 "$work/$d"; done
  sed -e "s|@WORK@|$work|g" -e "s|@ORIGIN@|$origin_port|g" -e "s|@PORT@|$nginx_port|g" -e "s|@H2PORT@|$nginx_h2_port|g" \
    bench/nginx.conf.template >"$work/nginx.conf"
  nginx -c "$work/nginx.conf" -p "$work" &
  nginx_pid=$!
  pids+=("$nginx_pid")
  wait_port "$nginx_port"
}
nginx_all() { echo "$nginx_pid" $(pgrep -P "$nginx_pid"); }
stop_nginx() { kill -QUIT "$nginx_pid" 2>/dev/null || true; wait "$nginx_pid" 2>/dev/null || true; }

run_id=$RANDOM$RANDOM
herd() { # addr path clients size
  timeout 300 "$bin/examples/herd" --addr "$1" --path "$2" --clients "$3" --expect-size "$4" || true
}

wrk_run() { # url script prefix → "req/s p99_ms requests"
  PREFIX=$3 timeout 120 wrk -t2 -c128 -d"${wrk_seconds}s" --latency -s "$2" "$1" 2>/dev/null | python3 -c '
import re, sys
text = sys.stdin.read()
rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
total = re.search(r"(\d+) requests in", text)
p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
print(rps.group(1) if rps else 0, f"{float(p99.group(1)) * scale[p99.group(2)]:.2f}" if p99 else 0, total.group(1) if total else 0)'
}
cpu_us() { python3 -c "print(f'{$1 / $ticks_per_second / max($2, 1) * 1e6:.1f} µs')"; }
# wrk with SCRIPT against the origin, a fresh proxy and a fresh nginx, counting each one's
# upstream requests: sets d_/p_/n_ rps, p99 and up.
wrk_three() {
  local script=$1 before
  before=$(origin_hits)
  read -r d_rps d_p99 _ <<<"$(wrk_run "http://127.0.0.1:$origin_port" "$script" /)"
  d_up=$(( $(origin_hits) - before ))
  start_proxy
  before=$(origin_hits)
  read -r p_rps p_p99 _ <<<"$(wrk_run "http://127.0.0.1:$proxy_port" "$script" /)"
  p_up=$(( $(origin_hits) - before ))
  stop_proxy
  start_nginx
  before=$(origin_hits)
  read -r n_rps n_p99 _ <<<"$(wrk_run "http://127.0.0.1:$nginx_port" "$script" /)"
  n_up=$(( $(origin_hits) - before ))
  stop_nginx
}
want() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }
proxy_cpu1=0; nginx_cpu1=0; proxy_cpu2=0; nginx_cpu2=0; proxy_cpu5=0; nginx_cpu5=0; p_total=0; n_total=0

rows=()
row() { rows+=("| $1 | $2 | $3 | $4 | $5 | $6 |"); }

# --- 1 and 7a: herd of herd1, origin 200 ms, 16 KiB --------------------------------------
if want 1; then
echo "scenario 1: herd of $herd1" >&2
path="/s1-$run_id?delay=200&size=16384"
direct=$(herd "127.0.0.1:$origin_port" "$path" "$herd1" 16KiB)
start_proxy
before=$(origin_hits); t0=$(cpu_ticks "$proxy_pid")
proxy=$(herd "127.0.0.1:$proxy_port" "$path" "$herd1" 16KiB)
proxy_up=$(( $(origin_hits) - before )); proxy_cpu1=$(( $(cpu_ticks "$proxy_pid") - t0 ))
stop_proxy
start_nginx
before=$(origin_hits); t0=$(cpu_ticks $(nginx_all))
ngx=$(herd "127.0.0.1:$nginx_port" "$path" "$herd1" 16KiB)
nginx_up=$(( $(origin_hits) - before )); nginx_cpu1=$(( $(cpu_ticks $(nginx_all)) - t0 ))
stop_nginx
row 1 "herd: $herd1 identical GETs, origin 200 ms, 16 KiB" \
  "p99 $(field p99_ms "$direct") ms" \
  "p99 $(field p99_ms "$proxy") ms, $proxy_up upstream, ok $(field ok "$proxy")/$herd1" \
  "p99 $(field p99_ms "$ngx") ms, $nginx_up upstream, ok $(field ok "$ngx")/$herd1" \
  "proxy/direct p99 $(ratio "$(field p99_ms "$proxy")" "$(field p99_ms "$direct")") (target ≤ 1.10); nginx/direct $(ratio "$(field p99_ms "$ngx")" "$(field p99_ms "$direct")")"
fi

# --- 2: herd of herd2, origin 200 ms ------------------------------------------------------
if want 2; then
echo "scenario 2: herd of $herd2" >&2
path="/s2-$run_id?delay=200&size=1024"
direct=$(herd "127.0.0.1:$origin_port" "$path" "$herd2" 1KiB)
start_proxy
before=$(origin_hits); t0=$(cpu_ticks "$proxy_pid")
proxy=$(herd "127.0.0.1:$proxy_port" "$path" "$herd2" 1KiB)
proxy_up=$(( $(origin_hits) - before )); proxy_cpu2=$(( $(cpu_ticks "$proxy_pid") - t0 ))
# The same herd through a route whose cache keeps responses for 1 s, as nginx's
# proxy_cache_valid does here: late arrivals get the finished response instead of a new flight.
before=$(origin_hits)
cached=$(herd "127.0.0.1:$proxy_port" "/microcached$path" "$herd2" 1KiB)
cached_up=$(( $(origin_hits) - before ))
stop_proxy
start_nginx
before=$(origin_hits); t0=$(cpu_ticks $(nginx_all))
ngx=$(herd "127.0.0.1:$nginx_port" "$path" "$herd2" 1KiB)
nginx_up=$(( $(origin_hits) - before )); nginx_cpu2=$(( $(cpu_ticks $(nginx_all)) - t0 ))
stop_nginx
row 2 "herd: $herd2 identical GETs, origin 200 ms, 1 KiB" \
  "p99 $(field p99_ms "$direct") ms, ok $(field ok "$direct")/$herd2" \
  "p99 $(field p99_ms "$proxy") ms, $proxy_up upstream, ok $(field ok "$proxy")/$herd2" \
  "p99 $(field p99_ms "$ngx") ms, $nginx_up upstream, ok $(field ok "$ngx")/$herd2" \
  "target: 1 upstream, every client ok"
row 2b "the same herd, the route's cache on with default_ttl 1 s (nginx as in row 2: proxy_cache_valid 1 s)" "" \
  "p99 $(field p99_ms "$cached") ms, $cached_up upstream, ok $(field ok "$cached")/$herd2" \
  "as row 2" "target: 1 upstream, every client ok"
fi

# --- 3: large fan-out, 4 MiB chunked ------------------------------------------------------
if want 3; then
echo "scenario 3: $fan clients of a 4 MiB chunked body" >&2
path="/s3-$run_id?delay=100&size=4194304&chunked=1&chunks=256"
direct=$(herd "127.0.0.1:$origin_port" "$path" "$fan" 4MiB)
start_proxy
before=$(origin_hits)
proxy=$(herd "127.0.0.1:$proxy_port" "$path" "$fan" 4MiB)
proxy_up=$(( $(origin_hits) - before )); proxy_rss=$(peak_rss_kb "$proxy_pid")
stop_proxy
start_nginx
before=$(origin_hits)
ngx=$(herd "127.0.0.1:$nginx_port" "$path" "$fan" 4MiB)
nginx_up=$(( $(origin_hits) - before )); nginx_rss=$(peak_rss_kb $(nginx_all))
stop_nginx
row 3 "fan-out: $fan clients, 4 MiB chunked, origin 100 ms" \
  "p99 $(field p99_ms "$direct") ms" \
  "p99 $(field p99_ms "$proxy") ms, $proxy_up upstream, peak RSS $(mib "$proxy_rss")" \
  "p99 $(field p99_ms "$ngx") ms, $nginx_up upstream, peak RSS $(mib "$nginx_rss")" \
  "proxy/direct p99 $(ratio "$(field p99_ms "$proxy")" "$(field p99_ms "$direct")") (target ≤ 1.10, RSS ≤ 24 MiB); nginx/direct $(ratio "$(field p99_ms "$ngx")" "$(field p99_ms "$direct")")"
fi

# --- 4: memory per waiting client ---------------------------------------------------------
# WAITING=N sets the herd (the fd limit bounds it: each side holds one socket per client).
if want 4; then
waiting=${WAITING:-$waiting}
s4_delay=$(( waiting > 10000 ? 5000 : 2000 ))
echo "scenario 4: $waiting followers on a $s4_delay ms origin" >&2
path="/s4-$run_id?delay=$s4_delay&size=1024"
proxy_max_connections=$((waiting > 10000 ? waiting + 100 : 10000))
start_proxy
proxy_max_connections=10000
idle=$(rss_kb "$proxy_pid")
herd "127.0.0.1:$proxy_port" "$path" "$waiting" 1KiB >"$work/s4.out" &
herd_pid=$!
all_waiting="never all waiting at once: the figure is not valid"
most=0
for _ in $(seq 1000); do
  followers=$(http_get "$admin_port" /metrics | sed -n 's/^coalesce_proxy_followers_waiting \([0-9]*\)$/\1/p')
  most=$(( ${followers:-0} > most ? ${followers:-0} : most ))
  # All but the leader (less one in a thousand: a client or two may come in as a leader of
  # their own, as the herd's summary then shows).
  if [ "${followers:-0}" -ge $((waiting - 1 - waiting / 1000)) ]; then
    all_waiting="$followers waiting when measured"; break
  fi
  sleep 0.01
done
echo "scenario 4: at most $most followers seen waiting" >&2
busy=$(rss_kb "$proxy_pid")
wait "$herd_pid" || true
stop_proxy
# nginx's followers wait on its cache lock; its RSS (every process) once stub_status counts
# them all in progress ("Writing", which includes the status request itself).
start_nginx
nginx_idle=$(rss_kb $(nginx_all))
herd "127.0.0.1:$nginx_port" "/s4n-$run_id?delay=$s4_delay&size=1024" "$waiting" 1KiB >"$work/s4n.out" &
herd_pid=$!
nginx_waiting="never all waiting at once: the figure is not valid"
for _ in $(seq 1000); do
  writing=$(http_get "$nginx_port" /nginx_status | sed -n 's/.*Writing: \([0-9]*\).*/\1/p')
  if [ "${writing:-0}" -gt "$waiting" ]; then nginx_waiting="all waiting when measured"; break; fi
  sleep 0.01
done
nginx_busy=$(rss_kb $(nginx_all))
wait "$herd_pid" || true
ngx=$(cat "$work/s4n.out")
stop_nginx
per_kib() { python3 -c "print(f'{$1*1024/$waiting/1024:.1f} KiB')"; }
row 4 "memory: $waiting followers waiting on a $s4_delay ms origin" "" \
  "RSS $(mib "$busy") while waiting (idle $(mib "$idle")): $(per_kib "$busy") per client, **$(per_kib "$((busy - idle))") above idle**; ok $(field ok "$(cat "$work/s4.out")")/$waiting; $all_waiting" \
  "RSS $(mib "$nginx_busy") while waiting (idle $(mib "$nginx_idle")): $(per_kib "$((nginx_busy - nginx_idle))") above idle; ok $(field ok "$ngx")/$waiting; $nginx_waiting" \
  "target: ≤ 2 KiB per client above idle (issue 28)"
fi

# --- 5 and 7b: pass-through overhead with wrk ---------------------------------------------
if want 5; then
echo "scenario 5: pass-through overhead, wrk -c128, ${wrk_seconds}s each" >&2
read -r d_rps d_p99 _ <<<"$(wrk_run "http://127.0.0.1:$origin_port" bench/distinct.lua /)"
start_proxy
t0=$(cpu_ticks "$proxy_pid")
read -r p_rps p_p99 p_total <<<"$(wrk_run "http://127.0.0.1:$proxy_port" bench/distinct.lua /)"
proxy_cpu5=$(( $(cpu_ticks "$proxy_pid") - t0 ))
stop_proxy
start_nginx
t0=$(cpu_ticks $(nginx_all))
read -r n_rps n_p99 n_total <<<"$(wrk_run "http://127.0.0.1:$nginx_port" bench/distinct.lua /pass/)"
nginx_cpu5=$(( $(cpu_ticks $(nginx_all)) - t0 ))
stop_nginx
row 5 "pass-through: wrk -c128, distinct keys, 1 KiB, origin 0 ms" \
  "$d_rps req/s, p99 $d_p99 ms" \
  "$p_rps req/s, p99 $p_p99 ms" \
  "$n_rps req/s, p99 $n_p99 ms (no cache)" \
  "proxy/nginx req/s $(ratio "$p_rps" "$n_rps") (target ≥ 1), p99 $(ratio "$p_p99" "$n_p99") (target ≤ 1)"
fi

# --- 6: hot keys with wrk ------------------------------------------------------------------
if want 6; then
echo "scenario 6: 16 hot keys, origin 20 ms" >&2
wrk_three bench/hot.lua
row 6 "hot keys: 16 keys, origin 20 ms, wrk -c128" \
  "$d_rps req/s, p99 $d_p99 ms, $d_up upstream" \
  "$p_rps req/s, p99 $p_p99 ms, $p_up upstream" \
  "$n_rps req/s, p99 $n_p99 ms, $n_up upstream (1 s cache)" \
  "report"
fi

# --- 8: hot keys with max-age=1, the cache's scenario ------------------------------------
if want 8; then
echo "scenario 8: 16 hot keys, origin 20 ms, Cache-Control max-age=1" >&2
wrk_three bench/hot-cached.lua
row 8 "cached hot keys: 16 keys, max-age=1, origin 20 ms, wrk -c128" \
  "$d_rps req/s, p99 $d_p99 ms, $d_up upstream" \
  "$p_rps req/s, p99 $p_p99 ms, $p_up upstream (cache on)" \
  "$n_rps req/s, p99 $n_p99 ms, $n_up upstream" \
  "proxy/nginx req/s $(ratio "$p_rps" "$n_rps") (target ≥ 1.2), p99 $(ratio "$p_p99" "$n_p99") (target ≤ 1)"
fi

# --- 7: CPU per request --------------------------------------------------------------------
if want 7; then
cpu_ratio() { python3 -c "a, b = $1 / max($2, 1), $3 / max($4, 1); print(f'{a / b:.2f}' if b else 'n/a')"; }
row 7 "CPU per request (scenario 1 / scenario 2 / scenario 5)" "" \
  "$(cpu_us "$proxy_cpu1" "$herd1") / $(cpu_us "$proxy_cpu2" "$herd2") / $(cpu_us "$proxy_cpu5" "$p_total")" \
  "$(cpu_us "$nginx_cpu1" "$herd1") / $(cpu_us "$nginx_cpu2" "$herd2") / $(cpu_us "$nginx_cpu5" "$n_total")" \
  "proxy/nginx herds $(cpu_ratio "$proxy_cpu1" "$herd1" "$nginx_cpu1" "$herd1") / $(cpu_ratio "$proxy_cpu2" "$herd2" "$nginx_cpu2" "$herd2") (target ≤ 1.0); CPU ticks are $((1000 / ticks_per_second)) ms each"
fi

mode=full; [ $quick = 1 ] && mode=quick
echo
echo "coalesce-proxy benchmarks ($mode run, $(date -u +%Y-%m-%d), $(nproc) cores, $(nginx -v 2>&1 | sed 's/.*: //'), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2))"
echo
echo "| # | scenario | direct origin | coalesce-proxy | nginx | ratio / target |"
echo "|---|---|---|---|---|---|"
# In scenario order (row 7 sums up CPU from the others, so it is measured last).
printf '%s\n' "${rows[@]}" | sort -t'|' -k2,2V

# --- 9: the everyday request against every target -------------------------------
if want 9; then
  echo >&2 "scenario 9: pass-through against the bare hyper proxy, nginx and haproxy"
  echo
  echo "Pass-through, HTTP/1.1 and HTTP/2 (bench/passthrough.sh):"
  echo
  bash bench/passthrough.sh $([ $quick = 1 ] && echo --quick)
fi
