"""Clients that ask for large responses and never read them, against a proxy whose RSS is
watched (bench/slow-readers.sh runs it). Loopback only; every loop is bounded.

    slow_readers.py PROXY_PORT PROXY_PID [--h1 N] [--joined 1] [--h2-streams N]
                    [--size BYTES] [--hold SECONDS] [--after SECONDS]

- N HTTP/1.1 connections, each asking for its own URL of BYTES, with a small receive buffer,
  reading nothing (with --joined 1, two such connections per URL, sharing one flight);
- one HTTP/2 connection with an initial stream window of 0 and N streams, each its own URL;
- meanwhile a normal client GETs a small URL every half second and must be served;
- after SECONDS of holding, every hostile connection closes, and RSS is followed for SECONDS
  more.
Prints one JSON line: RSS (KiB) before, the peak while held, and at 10, 30 and 60 s after;
the normal client's successes and failures.
"""

import json
import socket
import struct
import sys
import threading
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def http1_hog(port, path):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(f"GET {path} HTTP/1.1\r\nhost: hog.test\r\n\r\n".encode())
    return s


def frame(kind, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def literal(index, value):
    """An HPACK literal without indexing, with an indexed name (RFC 7541 §6.2.2)."""
    value = value.encode()
    assert index < 15 and len(value) < 127
    return bytes([index, len(value)]) + value


def http2_hog(port, paths):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    # SETTINGS_INITIAL_WINDOW_SIZE (4) = 0: no stream may send a byte of DATA.
    settings = frame(4, 0, 0, struct.pack(">HI", 4, 0))
    out = preface + settings
    for i, path in enumerate(paths):
        block = b"\x82\x86" + literal(4, path) + literal(1, "hog.test")  # GET, http
        out += frame(1, 0x5, 1 + 2 * i, block)  # END_STREAM | END_HEADERS
    s.sendall(out)
    return s


def normal_client(port, stop, tally):
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"GET /normal?size=1000 HTTP/1.1\r\nhost: ok.test\r\nconnection: close\r\n\r\n")
                answer = b""
                while chunk := s.recv(65536):
                    answer += chunk
            head, _, body = answer.partition(b"\r\n\r\n")
            served = head.startswith(b"HTTP/1.1 200") and len(body) == 1000
            tally["ok" if served else "failed"] += 1
        except OSError:
            tally["failed"] += 1
        stop.wait(0.5)


def main(argv):
    port, pid = int(argv[1]), int(argv[2])
    opts = dict(zip(argv[3::2], argv[4::2]))
    h1 = int(opts.get("--h1", 24))
    streams = int(opts.get("--h2-streams", 12))
    size = int(opts.get("--size", 40_000_000))
    hold = float(opts.get("--hold", 20))
    after = float(opts.get("--after", 60))

    before = rss_kib(pid)
    stop = threading.Event()
    tally = {"ok": 0, "failed": 0}
    normal = threading.Thread(target=normal_client, args=(port, stop, tally))
    normal.start()
    stamp = int(time.time() * 1000)
    # With --joined 1, two connections ask for each URL: the second joins the first's flight,
    # whose fetch then reads ahead of both (a flight with followers buffers for the slowest).
    copies = 2 if opts.get("--joined") == "1" else 1
    hogs = [http1_hog(port, f"/hog-{stamp}-{i}?size={size}") for i in range(h1) for _ in range(copies)]
    if streams:
        hogs.append(http2_hog(port, [f"/hog2-{stamp}-{i}?size={size}" for i in range(streams)]))
    peak = before
    deadline = time.monotonic() + hold
    while time.monotonic() < deadline:
        peak = max(peak, rss_kib(pid))
        time.sleep(0.25)
    for hog in hogs:
        hog.close()
    left = time.monotonic()
    marks = {}
    for mark in (10, 30, 60):
        if mark > after:
            break
        time.sleep(max(0, left + mark - time.monotonic()))
        marks[f"after_{mark}s"] = rss_kib(pid)
    stop.set()
    normal.join()
    print(json.dumps({"before": before, "peak": peak, **marks, "normal": tally}))


if __name__ == "__main__":
    main(sys.argv)
