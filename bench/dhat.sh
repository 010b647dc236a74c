#!/usr/bin/env bash
# Heap per client, by allocation site, under valgrind's DHAT: what one waiting (or idle)
# HTTP/1.1 client costs the proxy, and which structure holds it (issue 28).
#
#   bench/dhat.sh [CLIENTS]            CLIENTS (default 2000) wait on one key whose origin
#                                      answers in 8 s; the herd gives up after 5 s, so the
#                                      heap's peak is while every client waits
#   IDLE=1 bench/dhat.sh [CLIENTS]     CLIENTS keep-alive connections, one GET each, then idle
#   BIN=path/to/coalesce-proxy ...     another build
#
# Prints the heap at its peak per client and the largest sites (bytes and blocks per client,
# with the first frames outside the allocator). Loopback only; stops what it starts.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
clients=${1:-2000}
install_missing valgrind
build_release
proxy_bin=${BIN:-target/release/coalesce-proxy}
ulimit -n "$(ulimit -Hn)"

origin_port=$(port); origin_stats=$(port); proxy_port=$(port)
target/release/examples/origin --listen "127.0.0.1:$origin_port" --stats-listen "127.0.0.1:$origin_stats" >/dev/null &
pids+=($!)
wait_port "$origin_port"
cat >"$work/proxy.toml" <<TOML
[server]
listen = "127.0.0.1:$proxy_port"
shutdown_grace = "1s"
max_connections = $((clients + 100))
[log]
level = "warn"
stats_interval = "0s"
[upstreams.origin]
url = "http://127.0.0.1:$origin_port"
[[routes]]
path_prefix = "/"
upstream = "origin"
TOML
valgrind --tool=dhat --dhat-out-file="$work/dhat.json" "$proxy_bin" --config "$work/proxy.toml" 2>"$work/valgrind.log" &
valgrind_pid=$!
pids+=("$valgrind_pid")
wait_port "$proxy_port" 127.0.0.1 1200

if [ "${IDLE:-}" = 1 ]; then
  python3 - "$proxy_port" "$clients" <<'PY'
import asyncio, sys
async def main(port, n):
    held = []
    for i in range(n):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /idle/{i}?size=10 HTTP/1.1\r\nhost: bench\r\n\r\n".encode())
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(10)
        held.append(writer)
    await asyncio.sleep(2)
    print(f"{len(held)} idle keep-alive clients")
asyncio.run(asyncio.wait_for(main(int(sys.argv[1]), int(sys.argv[2])), 300))
PY
else
  target/release/examples/herd --addr "127.0.0.1:$proxy_port" --path "/waiting?delay=8000&size=1024" \
    --clients "$clients" --expect-size 1KiB --timeout 5s || true
fi
kill -INT "$valgrind_pid"
wait "$valgrind_pid" || true
python3 - "$work/dhat.json" "$clients" <<'PY'
import json, sys
dump, clients = json.load(open(sys.argv[1])), int(sys.argv[2])
frames = dump["ftbl"]
sites = sorted((p for p in dump["pps"] if p.get("gb")), key=lambda p: -p["gb"])
total = sum(p["gb"] for p in sites)
print(f"heap at its peak: {total / clients:.0f} bytes per client")
inside = ("library/alloc", "library/core", "library/std", "vgpreload", "unix.rs", "alloc.rs", "raw_vec", "hashbrown")
for site in sites[:12]:
    print(f"{site['gb'] / clients:8.1f} bytes {site['gbk'] / clients:5.2f} blocks per client")
    shown = [frames[i] for i in site["fs"] if not any(k in frames[i] for k in inside)][:3]
    for frame in shown:
        print("           ", frame.split(": ", 1)[-1][:140])
PY
