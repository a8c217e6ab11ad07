#!/usr/bin/env python3
"""Side-by-side table of dnsperf runs (helper of scripts/bench/dns.sh).

Usage: dnsperf_report.py [--title TEXT] [--latency-title TEXT]
           --run NAME SUMMARIES LATENCIES [--run NAME SUMMARIES LATENCIES ...]

SUMMARIES: comma-separated dnsperf outputs of throughput runs (one per round); the
table shows the median over rounds of each figure. LATENCIES: comma-separated
outputs of `dnsperf -v` runs ("-" for none); percentiles are computed from the
per-query latencies dnsperf prints there ("> NOERROR name type 0.000123"), pooled
over rounds, nearest-rank. dnsperf 2.10 itself reports only average, stddev, min
and max. The last column is the second run over the first.
"""

import argparse
import re
import statistics
import sys

FIELDS = {
    "sent": r"Queries sent:\s+(\d+)",
    "completed": r"Queries completed:\s+(\d+)",
    "lost": r"Queries lost:\s+(\d+)",
    "qps": r"Queries per second:\s+([\d.]+)",
    "avg": r"Average Latency \(s\):\s+([\d.]+)",
    "min": r"Average Latency \(s\):\s+[\d.]+ \(min ([\d.]+)",
    "max": r"Average Latency \(s\):.*max ([\d.]+)\)",
    "stddev": r"Latency StdDev \(s\):\s+([\d.]+)",
    "response_bytes": r"Average packet size:\s+request \d+, response (\d+)",
    "runtime": r"Run time \(s\):\s+([\d.]+)",
}
PERCENTILES = [50, 90, 99, 99.9]


def parse_summary(path):
    text = open(path, errors="replace").read()
    out = {}
    for key, rx in FIELDS.items():
        m = re.search(rx, text)
        if m:
            out[key] = float(m.group(1))
    m = re.search(r"Response codes:\s+(.*)", text)
    if m:
        out["rcodes"] = m.group(1).strip()
    if "qps" not in out:
        sys.exit("no dnsperf statistics in %s:\n%s" % (path, text[-2000:]))
    return out


def parse_latencies(path):
    lat = []
    timeouts = 0
    for line in open(path, errors="replace"):
        if line.startswith("> "):
            try:
                lat.append(float(line.rsplit(None, 1)[1]))
            except (IndexError, ValueError):
                pass
        elif "timed out" in line.lower():
            timeouts += 1
    return lat, timeouts


def nearest_rank(sorted_values, p):
    if not sorted_values:
        return None
    k = max(1, int(-(-p * len(sorted_values) // 100)))  # ceil(p/100 * n)
    return sorted_values[min(k, len(sorted_values)) - 1]


def collect(name, summaries, latencies):
    runs = [parse_summary(p) for p in summaries.split(",") if p]
    r = {"name": name, "rounds": len(runs)}
    for key in FIELDS:
        vals = [x[key] for x in runs if key in x]
        if vals:
            r[key] = statistics.median(vals)
    r["rcodes"] = runs[-1].get("rcodes", "")
    lat, timeouts = [], 0
    if latencies and latencies != "-":
        for p in latencies.split(","):
            l, t = parse_latencies(p)
            lat.extend(l)
            timeouts += t
        lat.sort()
    r["samples"] = len(lat)
    r["timeouts"] = timeouts
    for p in PERCENTILES:
        r["p%g" % p] = nearest_rank(lat, p)
    r["lmax"] = lat[-1] if lat else None
    return r


def ms(v):
    return "-" if v is None else "%.3f" % (v * 1000)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--title", default="throughput")
    ap.add_argument("--latency-title", default="latency")
    ap.add_argument("--run", nargs=3, action="append", required=True,
                    metavar=("NAME", "SUMMARIES", "LATENCIES"))
    a = ap.parse_args()
    runs = [collect(*r) for r in a.run]
    ratio = len(runs) == 2

    names = [r["name"] for r in runs] + (["%s/%s" % (runs[1]["name"], runs[0]["name"])] if ratio else [])
    w = max(14, max(len(n) for n in names) + 2)
    row_fmt = "  %-22s" + ("%" + str(w) + "s") * len(names)

    def row(label, key, fmt, better=None):
        vals = [r.get(key) for r in runs]
        cells = [("-" if v is None else fmt(v)) for v in vals]
        if ratio:
            a_, b_ = vals
            cells.append("%.2fx" % (b_ / a_) if a_ and b_ is not None else "-")
        print(row_fmt % tuple([label] + cells))

    print(a.title)
    print(row_fmt % tuple([""] + names))
    row("queries/s", "qps", lambda v: "%.0f" % v)
    row("avg latency ms", "avg", ms)
    row("stddev ms", "stddev", ms)
    row("min latency ms", "min", ms)
    row("max latency ms", "max", ms)
    row("queries sent", "sent", lambda v: "%.0f" % v)
    row("queries lost", "lost", lambda v: "%.0f" % v)
    row("avg response bytes", "response_bytes", lambda v: "%.0f" % v)
    for r in runs:
        print("  %-22s%s" % ("rcodes " + r["name"], r["rcodes"]))
    if any(r["samples"] for r in runs):
        print()
        print(a.latency_title)
        print(row_fmt % tuple([""] + names))
        for p in PERCENTILES:
            row("p%g ms" % p, "p%g" % p, ms)
        row("max ms", "lmax", ms)
        row("answered (samples)", "samples", lambda v: "%d" % v)
        row("timeouts", "timeouts", lambda v: "%d" % v)


if __name__ == "__main__":
    main()
