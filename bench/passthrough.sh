#!/usr/bin/env bash
# The everyday request, side by side in one run: plain pass-through (nothing to coalesce)
# through every target, each target's CPU per request from /proc split into user and kernel
# time, the upstream connections each opened against the most it held open at once,
# and the herd rows; then all four targets at once, each loaded in turn for several rounds
# (goals 2 and 3 compare the medians: one target after another, the machine's drift was
# larger than the ratios); then the issue's goals, each as met or not with its figures.
#
#   bench/passthrough.sh            full run (wrk 8 s per load, h2load 100,000 requests,
#                                   herds of 1,000 and 10,000)
#   bench/passthrough.sh --quick    shorter, to check the harness
#
# Targets: the direct origin, a bare hyper proxy (bench/bare.rs: hyper's server and
# hyper-util's pooled client, nothing else), coalesce-proxy with its default configuration
# (plus a route with coalescing off, for the joinable-GET row), nginx (keepalive upstream, no
# cache on /pass/) and haproxy (http-reuse always), each with two workers or threads.
# Loads: HTTP/1.1 wrk -t2 -c64 (and -c256 for connection churn), every request a new key,
# 1 KiB answers, origin delay 0; HTTP/2 h2load -c32 -m10 (h2c), 64-byte POSTs passing
# through, 1 KiB answers; herds of identical GETs (origin 200 ms) through the proxy and
# through nginx with its cache lock. Loopback only; stops everything it starts.
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
[ "${1:-}" = "--quick" ] && quick=1
if [ $quick = 1 ]; then
  seconds=3; h2_requests=20000; herds="200 2000"; rounds=3
else
  seconds=8; h2_requests=100000; herds="1000 10000"; rounds=5
fi

source bench/lib.sh
install_missing nginx wrk haproxy
command -v h2load >/dev/null || install_missing nghttp2-client
build_release
cargo build --release --quiet --example bare
hz=$(getconf CLK_TCK)

origin_port=$(port); origin_stats=$(port)
"$bin/examples/origin" --listen "127.0.0.1:$origin_port" --stats-listen "127.0.0.1:$origin_stats" >/dev/null &
pids+=($!); wait_port "$origin_port"; wait_port "$origin_stats"
# "connections peak": connections the origin accepted so far, and the most it had open at once
# since the previous call.
origin_connections() { http_get "$origin_stats" /connections | tr -d '\r'; }

# User and kernel clock ticks of a target (the process and its children: nginx's workers).
family() { echo "$1" $(pgrep -P "$1" || true); }
cpu_split() { local u=0 s=0; for p in $(family "$1"); do
  read -r pu ps < <(awk '{print $14, $15}' "/proc/$p/stat"); u=$((u + pu)); s=$((s + ps)); done; echo "$u $s"; }

# wrk over distinct keys: "req/s p99_ms requests".
h1_load() { # url prefix connections
  PREFIX=$2 timeout 120 wrk -t2 -c"$3" -d"${seconds}s" --latency -s bench/distinct.lua "$1" 2>/dev/null | python3 -c '
import re, sys
text = sys.stdin.read()
rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
total = re.search(r"(\d+) requests in", text)
p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
print(f"{float(rps.group(1)):.0f}" if rps else 0, f"{float(p99.group(1)) * scale[p99.group(2)]:.2f}" if p99 else 0, total.group(1) if total else 0)'
}

# h2load: distinct POST targets with a 64-byte body: "req/s mean_ms requests".
head -c 64 /dev/zero | tr '\0' 'x' >"$work/post64"
h2_load() { # port prefix
  for i in $(seq 2000); do echo "http://127.0.0.1:$1$2h2-$i-$RANDOM?size=1024&delay=0"; done >"$work/h2uris"
  timeout 120 h2load -c32 -m10 -n "$h2_requests" -d "$work/post64" -i "$work/h2uris" 2>/dev/null | python3 -c '
import re, sys
text = sys.stdin.read()
rps = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", text)
done = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", text)
mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", text)
def ms(v):
    m = re.match(r"([\d.]+)(us|ms|s)", v)
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
print(f"{float(rps.group(1)):.0f}" if rps else 0, f"{ms(mean.group(1)):.2f}" if mean else 0, done.group(1) if done else 0)'
}

herd_load() { # port path clients → "ok p99_ms"
  local out; out=$(timeout 300 "$bin/examples/herd" --addr "127.0.0.1:$1" --path "$2" --clients "$3" --expect-size 1KiB || true)
  echo "$(sed -n 's/.*\bok=\([^ ]*\).*/\1/p' <<<"$out") $(sed -n 's/.*\bp99_ms=\([^ ]*\).*/\1/p' <<<"$out")"
}

rows=()   # "target load rps latency_ms requests user_us kernel_us connections peak"
# Runs one load against the target with pid $2 and records its row.
measure() { # target load pid command...
  local target=$1 load=$2 pid=$3; shift 3
  local c0 p0 u0 s0 rps lat n c1 peak u1 s1
  read -r c0 p0 <<<"$(origin_connections)"
  read -r u0 s0 <<<"$(cpu_split "$pid")"
  read -r rps lat n <<<"$("$@")"
  read -r u1 s1 <<<"$(cpu_split "$pid")"
  read -r c1 peak <<<"$(origin_connections)"
  local row; row=$(python3 -c "n=max($n,1); print(f'$target $load $rps $lat $n {($u1-$u0)/$hz/n*1e6:.2f} {($s1-$s0)/$hz/n*1e6:.2f} $((c1 - c0)) $peak')")
  rows+=("$row"); echo "$row" >&2
}
herd_row() { # target pid port path clients
  local c0 p0 u0 s0 ok p99 u1 s1 c1 peak
  read -r c0 p0 <<<"$(origin_connections)"
  read -r u0 s0 <<<"$(cpu_split "$2")"
  read -r ok p99 <<<"$(herd_load "$3" "$4" "$5")"
  read -r u1 s1 <<<"$(cpu_split "$2")"
  read -r c1 peak <<<"$(origin_connections)"
  local row; row=$(python3 -c "n=$5; print(f'$1 herd$5 {int(\"${ok:-0}\")} ${p99:-0} $5 {($u1-$u0)/$hz/n*1e6:.2f} {($s1-$s0)/$hz/n*1e6:.2f} $((c1 - c0)) $peak')")
  rows+=("$row"); echo "$row" >&2
}
run_id=$RANDOM

# Each target starts with two workers or threads; sets $pid, $p (HTTP/1.1) and $p2 (h2c where
# it listens for it apart).
start_bare() {
  p=$(port); p2=$p
  "$bin/examples/bare" --listen "127.0.0.1:$p" --upstream "127.0.0.1:$origin_port" --threads 2 &
  pid=$!; pids+=("$pid"); wait_port "$p"
}
start_proxy() {
  p=$(port); p2=$p
  cat >"$work/proxy-$p.toml" <<TOML
[server]
listen = "127.0.0.1:$p"
[log]
level = "warn"
stats_interval = "0s"
[upstreams.origin]
url = "http://127.0.0.1:$origin_port"
[[routes]]
path_prefix = "/"
upstream = "origin"
[[routes]]
name = "pass"
path_prefix = "/pass/"
upstream = "origin"
coalesce = { enabled = false }
TOML
  "$bin/coalesce-proxy" --config "$work/proxy-$p.toml" &
  pid=$!; pids+=("$pid"); wait_port "$p"
}
start_nginx() {
  p=$(port); p2=$(port)
  local dir=$work/nginx-$p d
  for d in client_body proxy_temp fastcgi_temp uwsgi_temp scgi_temp cache; do mkdir -p "$dir/$d"; chmod 777 "$dir/$d"; done
  sed -e "s|@WORK@|$dir|g" -e "s|@ORIGIN@|$origin_port|g" -e "s|@PORT@|$p|g" -e "s|@H2PORT@|$p2|g" \
    bench/nginx.conf.template >"$dir/nginx.conf"
  nginx -c "$dir/nginx.conf" -p "$dir" &
  pid=$!; pids+=("$pid"); wait_port "$p"; wait_port "$p2"
}
start_haproxy() {
  p=$(port); p2=$(port)
  sed -e "s|@ORIGIN@|$origin_port|g" -e "s|@PORT@|$p|g" -e "s|@H2PORT@|$p2|g" \
    bench/haproxy.cfg.template >"$work/haproxy-$p.cfg"
  haproxy -f "$work/haproxy-$p.cfg" -db >/dev/null 2>&1 &
  pid=$!; pids+=("$pid"); wait_port "$p"; wait_port "$p2"
}
stop() { # target pid: nginx stops gracefully on QUIT, the others on TERM (haproxy only dumps
  # its pools on QUIT)
  local signal=TERM; [ "$1" = nginx ] && signal=QUIT
  kill -"$signal" "$2" 2>/dev/null || true; wait "$2" 2>/dev/null || true
}
# nginx passes /pass/ through uncached (its / caches); the others pass everything.
h1_prefix() { [ "$1" = nginx ] && echo /pass/ || echo /; }

# --- each target alone: every row, the connection counts (goal 1), the herds (goal 5) ---------
start_bare
measure bare h1 "$pid" h1_load "http://127.0.0.1:$p" / 64
measure bare h2 "$pid" h2_load "$p" /
measure bare h1c256 "$pid" h1_load "http://127.0.0.1:$p" / 256
stop bare "$pid"

start_proxy
measure proxy h1 "$pid" h1_load "http://127.0.0.1:$p" / 64
measure proxy h2 "$pid" h2_load "$p" /
measure proxy h1c256 "$pid" h1_load "http://127.0.0.1:$p" / 256
# A GET nobody joins against the same GET on a route that never coalesces, alternated, five
# rounds each: the report takes the median of each, since this machine's noise between two
# runs is larger than the difference measured.
for round in 1 2 3 4 5; do
  measure proxy joinable$round "$pid" h1_load "http://127.0.0.1:$p" / 64
  measure proxy passroute$round "$pid" h1_load "http://127.0.0.1:$p" /pass/ 64
done
for n in $herds; do herd_row proxy "$pid" "$p" "/herd-$run_id-$n?delay=200&size=1024" "$n"; done
stop proxy "$pid"

start_nginx
measure nginx h1 "$pid" h1_load "http://127.0.0.1:$p" "$(h1_prefix nginx)" 64
measure nginx h2 "$pid" h2_load "$p2" /
measure nginx h1c256 "$pid" h1_load "http://127.0.0.1:$p" "$(h1_prefix nginx)" 256
for n in $herds; do herd_row nginx "$pid" "$p" "/herd-$run_id-nginx-$n?delay=200&size=1024" "$n"; done
stop nginx "$pid"

start_haproxy
measure haproxy h1 "$pid" h1_load "http://127.0.0.1:$p" / 64
measure haproxy h2 "$pid" h2_load "$p2" /
measure haproxy h1c256 "$pid" h1_load "http://127.0.0.1:$p" / 256
stop haproxy "$pid"

# --- all four at once, loaded in turn: goals 2 and 3 -------------------------------------------
# One target after another above, this machine's load drifted between them by more than the
# ratios measured (the bare proxy's user CPU per request came out 6.7 µs in one run and 9.8 in
# the next). Here every target runs for the whole phase and each round loads each in turn
# (HTTP/1.1, then HTTP/2), so a drift lands on all of them; the report takes each one's median.
declare -A tpid tp1 tp2
for target in bare proxy nginx haproxy; do
  "start_$target"; tpid[$target]=$pid; tp1[$target]=$p; tp2[$target]=$p2
done
for round in $(seq "$rounds"); do
  for target in bare proxy nginx haproxy; do
    measure "$target" "h1r$round" "${tpid[$target]}" h1_load "http://127.0.0.1:${tp1[$target]}" "$(h1_prefix "$target")" 64
  done
  # The proxy's never-coalescing route too: what a plain pass-through costs beside the others.
  measure proxy-pass "h1r$round" "${tpid[proxy]}" h1_load "http://127.0.0.1:${tp1[proxy]}" /pass/ 64
  for target in bare proxy nginx haproxy; do
    measure "$target" "h2r$round" "${tpid[$target]}" h2_load "${tp2[$target]}" /
  done
done
for target in bare proxy nginx haproxy; do stop "$target" "${tpid[$target]}"; done

python3 bench/passthrough_report.py "${rows[@]}"
