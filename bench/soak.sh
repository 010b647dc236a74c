#!/usr/bin/env bash
# A bounded soak: mixed load with faults injected, for DURATION seconds (default 300), while
# the proxy's RSS and open descriptors are sampled every 10 s. Prints both series at the end;
# they should be flat once warm.
#
#   bench/soak.sh [DURATION_SECONDS]
#
# The load, all on loopback and all bounded by the duration:
# - wrk -c64 over 16 hot keys (origin 20 ms) and wrk -c32 over distinct keys (origin 0 ms);
# - a herd of 500 every 5 s;
# - every second: an upstream that closes mid-body, one that resets before the head, one
#   that stalls past idle_timeout, a 503, a private (Set-Cookie) response, a client that
#   hangs up mid-body, and a slow client that reads nothing for a while.
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-300}

source bench/lib.sh
install_missing wrk
build_release

origin_port=$(port); proxy_port=$(port)
"$bin/examples/origin" --listen "127.0.0.1:$origin_port" >/dev/null &
pids+=($!)
cat >"$work/proxy.toml" <<TOML
[server]
listen = "127.0.0.1:$proxy_port"
send_timeout = "5s"
[log]
level = "error"
stats_interval = "0s"
[upstreams.origin]
url = "http://127.0.0.1:$origin_port"
response_timeout = "2s"
idle_timeout = "1s"
[coalesce]
client_stall_timeout = "2s"
[[routes]]
path_prefix = "/"
upstream = "origin"
TOML
"$bin/coalesce-proxy" --config "$work/proxy.toml" &
proxy=$!
pids+=($proxy)
wait_port "$origin_port"; wait_port "$proxy_port"
url="http://127.0.0.1:$proxy_port"
end=$((SECONDS + duration))

timeout "$((duration + 5))" wrk -t1 -c64 -d"${duration}s" -s bench/hot.lua "$url" >"$work/wrk-hot.txt" 2>&1 &
pids+=($!)
timeout "$((duration + 5))" wrk -t1 -c32 -d"${duration}s" -s bench/distinct.lua "$url" >"$work/wrk-distinct.txt" 2>&1 &
pids+=($!)

# Faults, once a second.
(
  fault() { # path → one request, any outcome
    timeout 5 bash -c "exec 3<>/dev/tcp/127.0.0.1/$proxy_port; printf 'GET $1 HTTP/1.1\r\nhost: soak\r\nconnection: close\r\n\r\n' >&3; cat <&3 >/dev/null" 2>/dev/null || true
  }
  i=0
  while [ $SECONDS -lt $end ]; do
    i=$((i + 1))
    fault "/f/close?fail=close_mid_body&chunked=1&n=$i" &
    fault "/f/reset?fail=reset_before_head&n=$i" &
    fault "/f/stall?fail=stall_mid_body&n=$i" &
    fault "/f/error?status=503&n=$((i % 4))" &
    fault "/f/private?cookie=1&n=$((i % 8))" &
    # A client that hangs up mid-body.
    timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$proxy_port; printf 'GET /f/big?size=4000000&n=$i HTTP/1.1\r\nhost: soak\r\n\r\n' >&3; head -c 1000 <&3 >/dev/null" 2>/dev/null &
    # A client that reads nothing for 3 s, then leaves.
    timeout 3 bash -c "exec 3<>/dev/tcp/127.0.0.1/$proxy_port; printf 'GET /f/huge?size=20000000&n=$((i % 3)) HTTP/1.1\r\nhost: soak\r\n\r\n' >&3; sleep 5" 2>/dev/null &
    sleep 1
  done
  wait
) &
pids+=($!)

# Herds, every 5 s.
(
  herds=0; bad=0
  while [ $SECONDS -lt $end ]; do
    out=$(timeout 10 "$bin/examples/herd" --addr "127.0.0.1:$proxy_port" --path "/herd/$SECONDS?delay=100&size=16384" --clients 500 --expect-size 16KiB 2>/dev/null || true)
    herds=$((herds + 1))
    [[ "$out" == *" bad=0 "* ]] || bad=$((bad + 1))
    sleep 5
  done
  echo "$herds herds of 500, $bad with a client that did not get the exact bytes" >"$work/herds.txt"
) &
pids+=($!)

printf '%6s %10s %6s\n' seconds rss_kib fds
series=()
start=$SECONDS
while [ $SECONDS -lt $end ]; do
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$proxy/status")
  fds=$(ls "/proc/$proxy/fd" | wc -l)
  printf '%6s %10s %6s\n' $((SECONDS - start)) "$rss" "$fds"
  series+=("$((SECONDS - start)):$rss:$fds")
  sleep 10
done
sleep 6
rss=$(awk '/VmRSS/ {print $2}' "/proc/$proxy/status")
fds=$(ls "/proc/$proxy/fd" | wc -l)
printf '%6s %10s %6s  (after the load stopped)\n' $((SECONDS - start)) "$rss" "$fds"
echo "peak RSS: $(awk '/VmHWM/ {print $2, $3}' "/proc/$proxy/status")"
kill -0 "$proxy" && echo "proxy alive after $duration s"
grep -h "Requests/sec" "$work"/wrk-*.txt | sed 's/^/wrk /' || true
cat "$work/herds.txt" 2>/dev/null || true
