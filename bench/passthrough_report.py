#!/usr/bin/env python3
"""The tables bench/passthrough.sh prints: every row it measured, then the goals of the
everyday request, each met or not with its figures.

Each argument is one row: "target load rps latency_ms requests user_us kernel_us connections
peak", where rps is ok-clients for a herd and latency_ms the p99 (mean for HTTP/2)."""
import statistics
import sys

rows = {}
for arg in sys.argv[1:]:
    target, load, rps, latency, n, user, kernel, conns, peak = arg.split()
    rows[(target, load)] = dict(rps=float(rps), latency=float(latency), n=int(n), user=float(user),
                                kernel=float(kernel), conns=int(conns), peak=int(peak))


def get(target, load):
    return rows.get((target, load))


def cpu(row):
    return row["user"] + row["kernel"]


print("| target | load | req/s (herd: ok) | p99 ms (HTTP/2: mean) | CPU µs/request | user | kernel | upstream connections opened | most open at once |")
print("|---|---|---|---|---|---|---|---|---|")
for (target, load), r in rows.items():
    print(f"| {target} | {load} | {r['rps']:.0f} | {r['latency']:.2f} | {cpu(r):.2f} | {r['user']:.2f} | {r['kernel']:.2f} | {r['conns']} | {r['peak']} |")

goals = []


def goal(label, figure, target, met):
    goals.append((label, figure, target, "yes" if met else "no"))


def ratio(a, b):
    return a / b if b else float("inf")


for load, name in [("h2", "h2load -c32 -m10"), ("h1c256", "wrk -c256")]:
    r = get("proxy", load)
    if r:
        goal(f"1. no churn, default config, {name}: connections opened ÷ most open at once",
             f"{r['conns']} ÷ {r['peak']} = {ratio(r['conns'], r['peak']):.2f}", "≤ 2", r["conns"] <= 2 * max(r["peak"], 1))
for load, name in [("h1", "HTTP/1.1 wrk -c64"), ("h2", "HTTP/2 h2load -c32 -m10")]:
    p, b = get("proxy", load), get("bare", load)
    if p and b:
        x = ratio(p["user"], b["user"])
        goal(f"2. user CPU per request, proxy ÷ bare hyper, {name}", f"{p['user']:.2f} ÷ {b['user']:.2f} = {x:.2f}", "≤ 1.2", x <= 1.2)
for load, peer, name in [("h1", "nginx", "HTTP/1.1"), ("h2", "haproxy", "HTTP/2")]:
    p, o = get("proxy", load), get(peer, load)
    if p and o:
        x = ratio(cpu(p), cpu(o))
        goal(f"3. CPU per request, proxy ÷ {peer}, {name}", f"{cpu(p):.2f} ÷ {cpu(o):.2f} = {x:.2f}", "≤ 1.3 (stretch ≤ 1)", x <= 1.3)
        y = ratio(p["rps"], o["rps"])
        goal(f"3. stretch: req/s, proxy ÷ {peer}, {name}", f"{p['rps']:.0f} ÷ {o['rps']:.0f} = {y:.2f}", "≥ 1", y >= 1)
joinable = [r["user"] for (t, l), r in rows.items() if t == "proxy" and l.startswith("joinable")]
passing = [r["user"] for (t, l), r in rows.items() if t == "proxy" and l.startswith("passroute")]
if joinable and passing:
    d = statistics.median(joinable) - statistics.median(passing)
    goal("4. a GET nobody joins, minus the same GET on a route that never coalesces (user µs, medians)",
         f"{statistics.median(joinable):.2f} − {statistics.median(passing):.2f} = {d:+.2f}", "≤ 1", d <= 1.0)
for (t, l), r in rows.items():
    if t == "proxy" and l.startswith("herd"):
        n = get("nginx", l)
        if n:
            x = ratio(cpu(r), cpu(n))
            goal(f"5. herd of {l[4:]}: CPU per request, proxy ÷ nginx", f"{cpu(r):.2f} ÷ {cpu(n):.2f} = {x:.2f}", "≤ 1", x <= 1.0)

print()
print("| goal | figure | target | met |")
print("|---|---|---|---|")
for label, figure, target, met in goals:
    print(f"| {label} | {figure} | {target} | {met} |")
