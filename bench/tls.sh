#!/usr/bin/env bash
# HTTPS upstreams against plain ones, through coalesce-proxy and through nginx, side by side in
# one run: what TLS to the upstream costs each of them.
#
#   bench/tls.sh [SECONDS]    wrk duration per measurement (default 10)
#
# Two origins (the bench origin, one over TLS with a CA made at start-up), one proxy and one
# nginx with a /plain/ and a /tls/ route each, both with pooled keep-alive upstream
# connections and the certificate verified against that CA (name origin.bench). Measured:
#   - pass-through: wrk -c64, every request a different key, 1 KiB bodies, so every request
#     crosses the upstream connection;
#   - new connections: the same through an upstream that keeps no idle connection
#     (pool_max_idle = 0 / no nginx keepalive), so every request pays a TCP and TLS handshake;
#   - a 1000-client herd on one key over TLS: upstream requests and p99;
#   - TLS towards clients: a second proxy with `[server] tls` and an nginx `ssl` server, both
#     with a certificate made by openssl at start-up, measured with keep-alive (the request
#     cost over TLS) and with `Connection: close` (a full handshake per request).
# Loopback only; everything started is stopped on exit. Installs nginx and wrk with apt-get
# when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}

source bench/lib.sh
install_missing nginx wrk openssl
build_release

plain_port=$(port); tls_port=$(port)
"$bin/examples/origin" --listen "127.0.0.1:$plain_port" >/dev/null &
pids+=($!)
"$bin/examples/origin" --listen "127.0.0.1:$tls_port" --tls-ca-out "$work/ca.pem" >/dev/null &
pids+=($!)
wait_port "$plain_port"; wait_port "$tls_port"

proxy_port=$(port)
cat >"$work/proxy.toml" <<TOML
[server]
listen = "127.0.0.1:$proxy_port"
shutdown_grace = "1s"
[log]
level = "warn"
stats_interval = "0s"
[upstreams.plain]
url = "http://127.0.0.1:$plain_port"
pool_max_idle = 256
[upstreams.tls]
url = "https://127.0.0.1:$tls_port"
pool_max_idle = 256
tls = { ca_file = "$work/ca.pem", server_name = "origin.bench" }
[upstreams.plain_fresh]
url = "http://127.0.0.1:$plain_port"
pool_max_idle = 0
[upstreams.tls_fresh]
url = "https://127.0.0.1:$tls_port"
pool_max_idle = 0
tls = { ca_file = "$work/ca.pem", server_name = "origin.bench" }
[[routes]]
path_prefix = "/plain/"
upstream = "plain"
strip_prefix = true
[[routes]]
path_prefix = "/tls/"
upstream = "tls"
strip_prefix = true
[[routes]]
path_prefix = "/plain-fresh/"
upstream = "plain_fresh"
strip_prefix = true
[[routes]]
path_prefix = "/tls-fresh/"
upstream = "tls_fresh"
strip_prefix = true
TOML
"$bin/coalesce-proxy" --config "$work/proxy.toml" &
pids+=($!)

# The same proxy serving HTTPS, with a P-256 certificate as nginx gets.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
  -days 1 -keyout "$work/listener.key" -out "$work/listener.pem" 2>/dev/null
proxy_tls_port=$(port)
sed -e "s/^listen = .*/listen = \"127.0.0.1:$proxy_tls_port\"\ntls = { cert_file = \"$(sed 's/[\/&]/\\&/g' <<<"$work")\/listener.pem\", key_file = \"$(sed 's/[\/&]/\\&/g' <<<"$work")\/listener.key\" }/" \
  "$work/proxy.toml" >"$work/proxy-tls.toml"
"$bin/coalesce-proxy" --config "$work/proxy-tls.toml" &
pids+=($!)

nginx_port=$(port); nginx_tls_port=$(port)
for d in client_body proxy_temp fastcgi_temp uwsgi_temp scgi_temp; do mkdir -p "$work/$d"; chmod 777 "$work/$d"; done
cat >"$work/nginx.conf" <<NGINX
daemon off;
worker_processes 2;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
worker_rlimit_nofile 40000;
events { worker_connections 20000; }
http {
    access_log off;
    client_body_temp_path $work/client_body;
    proxy_temp_path $work/proxy_temp;
    fastcgi_temp_path $work/fastcgi_temp;
    uwsgi_temp_path $work/uwsgi_temp;
    scgi_temp_path $work/scgi_temp;
    upstream plain { server 127.0.0.1:$plain_port; keepalive 128; }
    upstream tls { server 127.0.0.1:$tls_port; keepalive 128; }
    server {
        listen 127.0.0.1:$nginx_port backlog=4096;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_ssl_trusted_certificate $work/ca.pem;
        proxy_ssl_verify on;
        proxy_ssl_name origin.bench;
        proxy_ssl_server_name on;
        location /plain/ { proxy_pass http://plain/; }
        location /tls/ { proxy_pass https://tls/; }
        location /plain-fresh/ { proxy_pass http://127.0.0.1:$plain_port/; }
        location /tls-fresh/ { proxy_pass https://127.0.0.1:$tls_port/; }
    }
    server {
        listen 127.0.0.1:$nginx_tls_port ssl backlog=4096;
        ssl_certificate $work/listener.pem;
        ssl_certificate_key $work/listener.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        location /plain/ { proxy_pass http://plain/; }
    }
}
NGINX
nginx -c "$work/nginx.conf" -p "$work" &
pids+=($!)
wait_port "$proxy_port"; wait_port "$nginx_port"; wait_port "$proxy_tls_port"; wait_port "$nginx_tls_port"

wrk_run() { # url prefix [wrk options...] → "req/s p99_ms non2xx"
  local url=$1 prefix=$2; shift 2
  PREFIX=$prefix timeout $((seconds + 60)) wrk -t2 -c64 -d"${seconds}s" --latency "$@" -s bench/distinct.lua "$url" 2>/dev/null | python3 -c '
import re, sys
text = sys.stdin.read()
rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
errors = re.search(r"Socket errors:.*", text)
scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
print(rps.group(1) if rps else 0, f"{float(p99.group(1)) * scale[p99.group(2)]:.2f}" if p99 else 0,
      (bad.group(1) if bad else "0") + ("+sockerr" if errors else ""))'
}
ratio() { python3 -c "a,b=float('$1'),float('$2'); print(f'{a/b:.2f}' if b else 'n/a')"; }

echo "| measurement | coalesce-proxy req/s | p99 ms | nginx req/s | p99 ms | proxy/nginx req/s |"
echo "|---|---|---|---|---|---|"
declare -A rps
for route in plain tls plain-fresh tls-fresh; do
  read -r p_rps p_p99 p_bad <<<"$(wrk_run "http://127.0.0.1:$proxy_port" "/$route/")"
  read -r n_rps n_p99 n_bad <<<"$(wrk_run "http://127.0.0.1:$nginx_port" "/$route/")"
  rps[proxy-$route]=$p_rps; rps[nginx-$route]=$n_rps
  note=""; [ "$p_bad$n_bad" = "00" ] || note=" (non-2xx: proxy $p_bad, nginx $n_bad)"
  echo "| /$route/ pass-through, wrk -c64 ${seconds}s | $p_rps | $p_p99 | $n_rps | $n_p99 | $(ratio "$p_rps" "$n_rps")$note |"
done
read -r p_rps p_p99 p_bad <<<"$(wrk_run "https://127.0.0.1:$proxy_tls_port" /plain/)"
read -r n_rps n_p99 n_bad <<<"$(wrk_run "https://127.0.0.1:$nginx_tls_port" /plain/)"
echo "| HTTPS client, keep-alive, wrk -c64 ${seconds}s | $p_rps | $p_p99 | $n_rps | $n_p99 | $(ratio "$p_rps" "$n_rps") |"
read -r p_rps p_p99 p_bad <<<"$(wrk_run "https://127.0.0.1:$proxy_tls_port" /plain/ -H 'Connection: close')"
read -r n_rps n_p99 n_bad <<<"$(wrk_run "https://127.0.0.1:$nginx_tls_port" /plain/ -H 'Connection: close')"
echo "| HTTPS client, a handshake per request (Connection: close) | $p_rps | $p_p99 | $n_rps | $n_p99 | $(ratio "$p_rps" "$n_rps") |"
echo
echo "TLS/plain req/s, pooled: proxy $(ratio "${rps[proxy-tls]}" "${rps[proxy-plain]}"), nginx $(ratio "${rps[nginx-tls]}" "${rps[nginx-plain]}")"
echo "TLS/plain req/s, a handshake per request: proxy $(ratio "${rps[proxy-tls-fresh]}" "${rps[proxy-plain-fresh]}"), nginx $(ratio "${rps[nginx-tls-fresh]}" "${rps[nginx-plain-fresh]}")"

for route in plain tls; do
  result=$(timeout 120 "$bin/examples/herd" --addr "127.0.0.1:$proxy_port" \
    --path "/$route/herd-$RANDOM?delay=200&size=16384" --clients 1000 --expect-size 16KiB || true)
  echo "herd of 1000 over /$route/ (200 ms origin, 16 KiB): $result"
done
