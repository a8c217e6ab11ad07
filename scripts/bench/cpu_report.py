#!/usr/bin/env python3
"""Server CPU cost per query, side by side (helper of scripts/bench/dns.sh and selection.sh).

Usage: cpu_report.py NAME CPU_NS QUERIES [NAME CPU_NS QUERIES ...]
With two servers, the last column is the second over the first.
"""
import sys

rows = sys.argv[1:]
servers = [(rows[i], int(rows[i + 1]), int(rows[i + 2])) for i in range(0, len(rows), 3)]
names = [s[0] for s in servers]
us = [ns / 1000 / max(q, 1) for _, ns, q in servers]
cap = [1e6 / u if u > 0 else 0 for u in us]
head = f"{'':28}" + "".join(f"{n:>18}" for n in names)
if len(servers) == 2:
    head += f"{names[1] + '/' + names[0]:>18}"
print(head)


def line(label, values, fmt, ratio):
    out = f"  {label:26}" + "".join(f"{fmt.format(v):>18}" for v in values)
    if len(values) == 2 and values[0] > 0:
        out += f"{ratio(values):>17.2f}x"
    print(out)


line("CPU us per query", us, "{:.2f}", lambda v: v[1] / v[0])
line("queries per CPU-second", cap, "{:.0f}", lambda v: v[1] / v[0])
line("queries answered", [q for _, _, q in servers], "{}", lambda v: v[1] / v[0])
