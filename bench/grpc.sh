#!/usr/bin/env bash
# gRPC through this proxy and through nginx (grpc_pass), side by side in one run, with a real
# gRPC server and client (grpcio, tests/grpc/peer.py): every call kind, an error with details
# and trailing metadata, a deadline, and 50 identical unary calls on a route that lets them
# coalesce. Prints one table; each cell is what the client saw.
#
#   bench/grpc.sh
#
# Needs grpcio (bash .ci/run installs it into target/ci-venv; or set GRPC_PYTHON) and installs
# nginx if it is missing. Loopback only; stops everything it starts.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
install_missing nginx
python=${GRPC_PYTHON:-target/ci-venv/bin/python}
if ! "$python" -c 'import grpc' 2>/dev/null; then
  python3 -m venv target/ci-venv && target/ci-venv/bin/pip install --quiet grpcio
  python=target/ci-venv/bin/python
fi
build_release
peer=tests/grpc/peer.py

# The server reads its commands from a FIFO kept open by this shell.
mkfifo "$work/server.in"
"$python" "$peer" server <"$work/server.in" >"$work/server.out" &
pids+=($!)
exec 7>"$work/server.in"
for _ in $(seq 200); do grep -q '^port ' "$work/server.out" 2>/dev/null && break; sleep 0.05; done
server_port=$(sed -n 's/^port //p' "$work/server.out")

proxy_port=$(port)
cat >"$work/proxy.toml" <<EOF
[server]
listen = "127.0.0.1:$proxy_port"
[upstreams.grpc]
url = "http://127.0.0.1:$server_port"
http2 = true
[[routes]]
name = "held"
path_prefix = "/test.Echo/Held"
upstream = "grpc"
coalesce = { methods = ["POST"], body_max = "64KiB" }
[[routes]]
name = "all"
path_prefix = "/"
upstream = "grpc"
EOF
"$bin/coalesce-proxy" --config "$work/proxy.toml" 2>"$work/proxy.log" &
pids+=($!)

nginx_port=$(port)
mkdir -p "$work/nginx"
cat >"$work/nginx/nginx.conf" <<EOF
master_process off;
daemon off;
error_log stderr warn;
pid $work/nginx/nginx.pid;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $work/nginx/body;
    proxy_temp_path $work/nginx/proxy;
    fastcgi_temp_path $work/nginx/fastcgi;
    uwsgi_temp_path $work/nginx/uwsgi;
    scgi_temp_path $work/nginx/scgi;
    server {
        listen 127.0.0.1:$nginx_port http2;
        location / { grpc_pass grpc://127.0.0.1:$server_port; }
    }
}
EOF
nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -e stderr 2>"$work/nginx.log" &
pids+=($!)
wait_port "$proxy_port"; wait_port "$nginx_port"

calls() { # calls of method $1 the server has answered so far
  echo stats >&7
  sleep 0.2
  tail -n 1 "$work/server.out" | python3 -c "import json,sys; print(json.load(sys.stdin)['calls'].get('$1', 0))"
}
cell() { # what the client saw of scenario $2 through port $1, in a few words
  "$python" "$peer" client "127.0.0.1:$1" "$2" | python3 -c '
import json, sys
r = json.loads(sys.stdin.readlines()[-1])
words = [r["code"]]
if r.get("messages") is not None: words.append("%d messages" % len(r["messages"]))
if r.get("response"): words.append(repr(r["response"][:20]))
if r.get("details"): words.append("details %r" % r["details"][:30])
if r.get("trailing"): words.append("trailing %s" % ",".join(k for k, _ in r["trailing"]))
if "elapsed" in r: words.append("at %.2f s" % r["elapsed"])
print("; ".join(words))'
}
herd() { # port $1: 50 identical Held calls; prints what they got and the server's calls
  local before after out
  before=$(calls Held)
  "$python" "$peer" client "127.0.0.1:$1" herd_same 50 >"$work/herd.out" &
  local client=$!
  sleep 1 # the herd gathers; the gate then opens
  echo "release held" >&7
  wait $client
  after=$(calls Held)
  out=$(python3 -c '
import json, sys
rs = json.loads(open(sys.argv[1]).read().splitlines()[-1])["results"]
ok = sum(1 for r in rs if r["code"] == "OK" and r["response"] == "held:same" and r["trailing"] == [["x-trail", "held-same"]])
print("%d/50 OK with grpc-status 0 and the trailing metadata" % ok)' "$work/herd.out")
  echo "$out; $((after - before)) reach the server"
}

printf '| case | coalesce-proxy | nginx %s (grpc_pass) |\n|---|---|---|\n' "$(nginx -v 2>&1 | sed 's|.*/||')"
for scenario in unary error stream client_stream bidi deadline; do
  printf '| %s | %s | %s |\n' "$scenario" "$(cell "$proxy_port" "$scenario")" "$(cell "$nginx_port" "$scenario")"
done
proxy_herd=$(herd "$proxy_port")
echo "release held" >&7 # nginx's herd finds the gate open: nothing holds the calls
printf '| 50 identical unary calls | %s | %s |\n' "$proxy_herd" "$(herd "$nginx_port")"
