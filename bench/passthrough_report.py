#!/usr/bin/env python3
"""The tables bench/passthrough.sh prints: every row it measured, the medians of the phase
where all targets ran at once and were loaded in turn, then the goals of the everyday request,
each met or not with its figures (goals 2 and 3 from those medians).

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
def interleaved(target, load):
    """The median of `target`'s rounds of `load` in the phase where every target ran at once
    and each was loaded in turn (`h1r1`, `h1r2`, ...); None without that phase."""
    runs = [r for (t, l), r in rows.items() if t == target and l.startswith(load + "r")]
    if not runs:
        return None
    return {key: statistics.median(r[key] for r in runs) for key in ("rps", "user", "kernel")}


def steady(target, load):
    """What goals 2 and 3 compare: the interleaved median when measured, else the one row."""
    return interleaved(target, load) or get(target, load)


targets = ("bare", "proxy", "proxy-pass", "nginx", "haproxy")
medians = [(t, l, interleaved(t, l)) for l in ("h1", "h2") for t in targets]
if any(m for _, _, m in medians):
    print()
    print("All four at once, loaded in turn (medians of the rounds):")
    print()
    print("| target | load | req/s | CPU µs/request | user | kernel |")
    print("|---|---|---|---|---|---|")
    for target, load, m in medians:
        if m:
            print(f"| {target} | {load} | {m['rps']:.0f} | {cpu(m):.2f} | {m['user']:.2f} | {m['kernel']:.2f} |")

for load, name in [("h1", "HTTP/1.1 wrk -c64"), ("h2", "HTTP/2 h2load -c32 -m10")]:
    p, b = steady("proxy", load), steady("bare", load)
    if p and b:
        x = ratio(p["user"], b["user"])
        goal(f"2. user CPU per request, proxy ÷ bare hyper, {name}", f"{p['user']:.2f} ÷ {b['user']:.2f} = {x:.2f}", "≤ 1.2", x <= 1.2)
p, b = interleaved("proxy-pass", "h1"), interleaved("bare", "h1")
if p and b:
    x = ratio(p["user"], b["user"])
    goal("2. (beside it: a GET on a route that never coalesces, HTTP/1.1) ÷ bare hyper",
         f"{p['user']:.2f} ÷ {b['user']:.2f} = {x:.2f}", "≤ 1.2", x <= 1.2)
for load, peer, name in [("h1", "nginx", "HTTP/1.1"), ("h2", "haproxy", "HTTP/2")]:
    p, o = steady("proxy", load), steady(peer, load)
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
