"""The two ends of the image check (.ci/image.sh), on loopback.

  image_check.py origin PORT                an origin that holds every GET until
                                            `GET /__release`, then answers with the same
                                            64 KiB body; `GET /__hits` says how many it had
  image_check.py herd PROXY ADMIN ORIGIN N  N clients at once through the proxy on port
                                            PROXY; once its admin port says N - 1 of them
                                            wait as followers, the origin is released: every
                                            client must get 200 and the exact body, and the
                                            origin must have been asked once
"""

import http.client
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BODY = bytes(i % 251 for i in range(64 * 1024))


def origin(port):
    hits = [0]
    lock = threading.Lock()
    released = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            if self.path == "/__hits":
                body = str(hits[0]).encode()
            elif self.path == "/__release":
                released.set()
                body = b"released"
            else:
                with lock:
                    hits[0] += 1
                released.wait(60)
                body = BODY
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def get(port, path, timeout=30):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        reply = conn.getresponse()
        return reply.status, reply.read()
    finally:
        conn.close()


def wait_for(port, path="/__hits", deadline=30):
    end = time.monotonic() + deadline
    while True:
        try:
            get(port, path, timeout=2)
            return
        except OSError:
            if time.monotonic() > end:
                sys.exit(f"nothing answers on 127.0.0.1:{port}")
            time.sleep(0.1)


def followers_waiting(admin):
    metrics = get(admin, "/metrics")[1].decode()
    for line in metrics.splitlines():
        if line.startswith("coalesce_proxy_followers_waiting "):
            return int(float(line.split()[1]))
    return 0


def herd(proxy, admin, origin_port, clients):
    wait_for(origin_port)
    wait_for(proxy)
    wait_for(admin, "/healthz")
    before = int(get(origin_port, "/__hits")[1])
    results = [None] * clients
    start = threading.Barrier(clients)

    def client(i):
        start.wait()
        try:
            results[i] = get(proxy, "/hot")
        except OSError as err:
            results[i] = (0, str(err).encode())

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    end = time.monotonic() + 60
    while followers_waiting(admin) < clients - 1 and time.monotonic() < end:
        time.sleep(0.05)
    get(origin_port, "/__release")
    for t in threads:
        t.join(60)
    exact = sum(1 for r in results if r == (200, BODY))
    asked = int(get(origin_port, "/__hits")[1]) - before
    print(f"herd of {clients} through the image: {exact} exact answers, {asked} origin request(s)")
    if exact != clients or asked != 1:
        sys.exit("the herd through the image did not cost exactly one origin request")


if __name__ == "__main__":
    if sys.argv[1] == "origin":
        origin(int(sys.argv[2]))
    else:
        herd(*(int(arg) for arg in sys.argv[2:6]))
