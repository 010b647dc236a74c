#!/usr/bin/env bash
# The everyday request: plain pass-through, nothing to coalesce, through every
# target side by side in one run, with each target's CPU time per request from /proc.
#
#   bench/passthrough.sh            full run (wrk 8 s per target; h2load 100,000 requests)
#   bench/passthrough.sh --quick    shorter, to check the harness
#
# Targets: the direct origin, a bare hyper proxy (bench/bare.rs: the floor for our own
# code), coalesce-proxy, nginx (keepalive upstream, no cache) and haproxy (http-reuse
# always), each with two workers or threads. HTTP/1.1 rows: wrk -t2 -c64, every request a new
# key, 1 KiB answers, origin delay 0. HTTP/2 rows: h2load -c32 -m10 (h2c), 64-byte POSTs
# passing through, 1 KiB answers. Loopback only; stops everything it starts.
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
[ "${1:-}" = "--quick" ] && quick=1
if [ $quick = 1 ]; then seconds=3; h2_requests=20000; else seconds=8; h2_requests=100000; fi

source bench/lib.sh
install_missing nginx wrk haproxy
command -v h2load >/dev/null || install_missing nghttp2-client
build_release
cargo build --release --quiet --example bare
hz=$(getconf CLK_TCK)

origin_port=$(port)
"$bin/examples/origin" --listen "127.0.0.1:$origin_port" >/dev/null &
pids+=($!); wait_port "$origin_port"

cpu_ticks() { local t=0; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo $t; }
# The pids of a target: the process and its children (nginx's workers).
family() { echo "$1" $(pgrep -P "$1" || true); }

# wrk over distinct keys: "req/s p99_ms requests".
h1_load() { # url prefix
  PREFIX=$2 timeout 120 wrk -t2 -c64 -d"${seconds}s" --latency -s bench/distinct.lua "$1" 2>/dev/null | python3 -c '
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

results=()
# Runs both loads against a target whose pids are $pids_of; records "name h1... h2..." rows.
measure() { # name h1_port h2_port prefix pid
  local name=$1 h1=$2 h2=$3 prefix=$4 pid=$5 t0 rps p99 n cpu1 cpu2 h2rps h2mean h2n
  t0=$(cpu_ticks $(family "$pid"))
  read -r rps p99 n <<<"$(h1_load "http://127.0.0.1:$h1" "$prefix")"
  cpu1=$(python3 -c "print(f'{($(cpu_ticks $(family "$pid")) - $t0) / $hz / max($n, 1) * 1e6:.1f}')")
  if [ -n "$h2" ]; then
    t0=$(cpu_ticks $(family "$pid"))
    read -r h2rps h2mean h2n <<<"$(h2_load "$h2" "$prefix")"
    cpu2=$(python3 -c "print(f'{($(cpu_ticks $(family "$pid")) - $t0) / $hz / max($h2n, 1) * 1e6:.1f}')")
    [ "$h2n" = "$h2_requests" ] || echo "$name: only $h2n of $h2_requests HTTP/2 requests succeeded" >&2
  else
    h2rps=-; h2mean=-; cpu2=-
  fi
  results+=("$name $rps $p99 $cpu1 $h2rps $h2mean $cpu2")
  echo "$name: h1 $rps req/s p99 $p99 ms ${cpu1} µs; h2 $h2rps req/s ${cpu2} µs" >&2
}

# --- the targets, one at a time ---------------------------------------------------------------
measure direct "$origin_port" "" / "$(pgrep -f "examples/origin --listen 127.0.0.1:$origin_port" | head -1)"

p=$(port)
"$bin/examples/bare" --listen "127.0.0.1:$p" --upstream "127.0.0.1:$origin_port" --threads 2 &
pid=$!; pids+=("$pid"); wait_port "$p"
measure bare "$p" "$p" / "$pid"
kill "$pid"; wait "$pid" 2>/dev/null || true

p=$(port)
printf '[server]\nlisten = "127.0.0.1:%s"\nworkers = 2\n[log]\nlevel = "warn"\nstats_interval = "0s"\n[upstreams.origin]\nurl = "http://127.0.0.1:%s"\npool_max_idle = 256\n[[routes]]\npath_prefix = "/"\nupstream = "origin"\n' \
  "$p" "$origin_port" >"$work/proxy.toml"
"$bin/coalesce-proxy" --config "$work/proxy.toml" &
pid=$!; pids+=("$pid"); wait_port "$p"
measure coalesce-proxy "$p" "$p" / "$pid"
kill "$pid"; wait "$pid" 2>/dev/null || true

p=$(port); p2=$(port)
for d in client_body proxy_temp fastcgi_temp uwsgi_temp scgi_temp cache; do mkdir -p "$work/$d"; chmod 777 "$work/$d"; done
sed -e "s|@WORK@|$work|g" -e "s|@ORIGIN@|$origin_port|g" -e "s|@PORT@|$p|g" -e "s|@H2PORT@|$p2|g" \
  bench/nginx.conf.template >"$work/nginx.conf"
nginx -c "$work/nginx.conf" -p "$work" &
pid=$!; pids+=("$pid"); wait_port "$p"; wait_port "$p2"
measure nginx "$p" "$p2" /pass/ "$pid"
kill -QUIT "$pid"; wait "$pid" 2>/dev/null || true

p=$(port); p2=$(port)
sed -e "s|@ORIGIN@|$origin_port|g" -e "s|@PORT@|$p|g" -e "s|@H2PORT@|$p2|g" \
  bench/haproxy.cfg.template >"$work/haproxy.cfg"
haproxy -f "$work/haproxy.cfg" -db >/dev/null 2>&1 &
pid=$!; pids+=("$pid"); wait_port "$p"; wait_port "$p2"
measure haproxy "$p" "$p2" / "$pid"
kill "$pid"; wait "$pid" 2>/dev/null || true

# --- the table ---------------------------------------------------------------------------------
python3 - "${results[@]}" <<'PY'
import sys
rows = {r.split()[0]: r.split()[1:] for r in sys.argv[1:]}
def f(name, i):
    v = rows[name][i]
    return None if v == "-" else float(v)
print("| target | HTTP/1.1 req/s | p99 ms | CPU µs/request | HTTP/2 req/s | mean ms | CPU µs/request |")
print("|---|---|---|---|---|---|---|")
for name, (rps, p99, cpu1, h2rps, h2mean, cpu2) in rows.items():
    if name == "direct":
        cpu1 = cpu2 = "(origin)"
    print(f"| {name} | {rps} | {p99} | {cpu1} | {h2rps} | {h2mean} | {cpu2} |")
def ratio(a, b):
    return f"{a / b:.2f}" if a and b else "n/a"
p, n, b = "coalesce-proxy", "nginx", "bare"
print()
print("| goal | figure | target | met |")
print("|---|---|---|---|")
for label, value, target, better in [
    ("1. HTTP/1.1 CPU per request, proxy ÷ nginx", ratio(f(p, 2), f(n, 2)), 1.0, "le"),
    ("1. HTTP/1.1 req/s, proxy ÷ nginx", ratio(f(p, 0), f(n, 0)), 1.0, "ge"),
    ("1. HTTP/1.1 p99, proxy ÷ nginx", ratio(f(p, 1), f(n, 1)), 1.0, "le"),
    ("2. HTTP/1.1 CPU per request, proxy ÷ bare hyper", ratio(f(p, 2), f(b, 2)), 1.1, "le"),
    ("3. HTTP/2 CPU per request, proxy ÷ nginx", ratio(f(p, 5), f(n, 5)), 1.0, "le"),
    ("3. HTTP/2 req/s, proxy ÷ nginx", ratio(f(p, 3), f(n, 3)), 1.0, "ge"),
]:
    met = "n/a" if value == "n/a" else ("yes" if (float(value) <= target if better == "le" else float(value) >= target) else "no")
    print(f"| {label} | {value} | {'≤' if better == 'le' else '≥'} {target} | {met} |")
PY
