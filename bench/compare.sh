#!/usr/bin/env bash
# Two proxy binaries side by side in one run, alternating A B A B, on the pass-through load
# (wrk -c128 over distinct keys, 1 KiB, origin 0 ms: req/s, p99 and the proxy's CPU time per
# request from /proc) and on a 2,000-client herd (memory).
#
#   bench/compare.sh BEFORE_BINARY AFTER_BINARY [ROUNDS]
#
# For "before and after" figures of an optimisation: build the old commit, copy its binary
# aside, build the new one, and compare. Loopback only; stops what it starts.
set -euo pipefail
cd "$(dirname "$0")/.."
a=$1; b=$2; rounds=${3:-3}
cargo build --release --quiet --example origin --example herd
ulimit -n "$(ulimit -Hn)"
source bench/lib.sh
origin_port=$(port)
target/release/examples/origin --listen "127.0.0.1:$origin_port" >/dev/null &
pids+=($!); wait_port "$origin_port"

measure() { # binary → "req/s, p99, CPU per request, herd RSS per client"
  local port; port=$(port)
  printf '[server]\nlisten = "127.0.0.1:%s"\n[log]\nlevel = "warn"\nstats_interval = "0s"\n[upstreams.o]\nurl = "http://127.0.0.1:%s"\npool_max_idle = 256\n[[routes]]\npath_prefix = "/"\nupstream = "o"\n' \
    "$port" "$origin_port" >"$work/p.toml"
  "$1" --config "$work/p.toml" & local pid=$!; pids+=("$pid"); wait_port "$port"
  # Memory first, on a fresh process: what wrk leaves in the allocator would hide it.
  local idle; idle=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
  target/release/examples/herd --addr "127.0.0.1:$port" --path "/w$RANDOM?delay=2000&size=1024" --clients 2000 --expect-size 1KiB >/dev/null &
  local herd=$! busy=0 now
  # Sample for as long as the herd runs (bounded by its own timeout): a fixed window can end
  # before a slow-connecting herd is all waiting.
  while kill -0 "$herd" 2>/dev/null; do
    sleep 0.1
    now=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
    [ "$now" -gt "$busy" ] && busy=$now
  done
  wait "$herd" || true
  local user0 sys0; user0=$(awk '{print $14}' "/proc/$pid/stat"); sys0=$(awk '{print $15}' "/proc/$pid/stat")
  local wrk_out; wrk_out=$(wrk -t2 -c128 -d5s --latency -s bench/distinct.lua "http://127.0.0.1:$port" 2>/dev/null)
  local user=$(( $(awk '{print $14}' "/proc/$pid/stat") - user0 ))
  local sys=$(( $(awk '{print $15}' "/proc/$pid/stat") - sys0 ))
  kill "$pid"; wait "$pid" 2>/dev/null || true
  python3 - "$wrk_out" "$idle" "$busy" "$user" "$sys" "$(getconf CLK_TCK)" <<'PY'
import re, sys
text, idle, busy, user, sys_, hz = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
ticks = user + sys_
rps = re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)
total = int(re.search(r"(\d+) requests in", text).group(1))
m = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
p99 = float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]
per = lambda t: t / hz / total * 1e6
print(f"{float(rps):.0f} req/s, p99 {p99:.2f} ms, {per(ticks):.1f} µs CPU per request (user {per(user):.1f}, kernel {per(sys_):.1f}), {(busy - idle) / 2000:.1f} KiB per waiting client")
PY
}
for round in $(seq "$rounds"); do
  echo "round $round  A: $(measure "$a")"
  echo "round $round  B: $(measure "$b")"
done
