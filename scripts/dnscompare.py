#!/usr/bin/env python3
"""Generate DNS test queries from a zone transfer and diff two servers' dig answers.

Helper of scripts/compare-nsd.sh (see there for the whole picture).

  dnscompare.py queries --axfr-port PORT ZONE... > queries.txt
      Transfers each ZONE from 127.0.0.1:PORT (NSD with provide-xfr) and writes
      one query per line: `name type [dig options]`, deterministic for a zone.
  dnscompare.py compare --a NAME=PORT --b NAME=PORT queries.txt
      Runs every query against both servers with dig, normalizes the output and
      prints the differences, then "N queries, M differ". Exit status 1 if M > 0.
  dnscompare.py show --a NAME=PORT queries.txt
      Prints the normalized answers of one server (what compare diffs).

Normalization keeps: the opcode and rcode, the flags line (flags and section
counts), the EDNS line (version, DO flag, UDP size) and EDE, the question line
verbatim (so the echo of the query's case is checked), and every record of the
answer, authority and additional sections, sorted within its section, with
whitespace collapsed outside quoted strings and names lower-cased (DNS names
compare case-insensitively; NSD writes answer names through compression pointers
into the question, so they come back in the query's case). It drops the message
id, timings, the SERVER/WHEN/MSG SIZE lines, COOKIE and NSID options.
"""

import argparse
import concurrent.futures
import difflib
import random
import re
import subprocess
import sys

DIG = ["dig", "+norec", "+ignore", "+nosplit", "+time=2", "+tries=1"]
TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\S+')

# Types added to every owner name's own types, so each name is also asked for
# something it lacks (NODATA) and for ANY.
PROBE_TYPES = ["A", "AAAA", "TXT", "MX", "ANY"]


def dig(port, args, timeout=10):
    cmd = DIG + ["-p", str(port), "@127.0.0.1"] + args
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                             errors="backslashreplace")
    except subprocess.TimeoutExpired:
        return ";; dig did not finish in %d s\n" % timeout
    return out.stdout + out.stderr


def axfr(port, zone):
    text = dig(port, ["+onesoa", "+nocmd", "+nostats", "+nocomments", zone, "AXFR"], 30)
    records = []
    for line in text.splitlines():
        if not line or line.startswith(";"):
            continue
        fields = line.split()
        if len(fields) < 5:
            continue
        records.append((fields[0].lower(), fields[3].upper(), fields[4:]))
    if not records or records[0][1] != "SOA":
        sys.exit("AXFR of %s from port %s failed:\n%s" % (zone, port, text))
    return records


def parent(name):
    return name.split(".", 1)[1] if name.count(".") > 1 else "."


def randcase(rng, name):
    out = []
    i = 0
    while i < len(name):
        if name[i] == "\\":  # keep \DDD and \X escapes as they are
            n = 4 if name[i + 1:i + 2].isdigit() else 2
            out.append(name[i:i + n])
            i += n
            continue
        out.append(name[i].upper() if rng.random() < 0.5 else name[i].lower())
        i += 1
    return "".join(out)


def queries_for_zone(port, zone):
    zone = zone.rstrip(".").lower() + "."
    rng = random.Random(zone)  # deterministic per zone
    records = axfr(port, zone)
    types = {}
    targets = {}
    for owner, rtype, rdata in records:
        types.setdefault(owner, set()).add(rtype)
        targets.setdefault((owner, rtype), []).append(rdata)
    owners = sorted(types)
    cuts = sorted(o for o in owners if "NS" in types[o] and o != zone)
    below_cut = {o for o in owners for c in cuts if o != c and o.endswith("." + c)}
    qs = []

    def add(name, rtype, *opts):
        qs.append(" ".join([name, rtype] + list(opts)))

    # Every owner name, with its own types and the probe types.
    for o in owners:
        for t in sorted(types[o] | set(PROBE_TYPES)):
            add(o, t)
    # Empty non-terminals: ancestors of owners that own nothing themselves.
    ents = set()
    for o in owners:
        n = parent(o)
        while n != zone and n.endswith("." + zone) and n not in types:
            ents.add(n)
            n = parent(n)
    for e in sorted(ents):
        for t in ("A", "TXT", "ANY"):
            add(e, t)
        add("nx." + e, "A")  # NXDOMAIN below an ENT
    # Wildcards: names the wildcard synthesizes, one and two labels deep.
    for o in owners:
        if o.startswith("*."):
            base = o[2:]
            for t in sorted(types[o] | {"A", "MX", "ANY"}):
                add("match." + base, t)
            add("a.b." + base, "A")
            add("a.b." + base, "TXT")
            add("*." + base, "A")  # the wildcard owner asked for literally
    # Delegations: the cut itself, names below it, DS (answered by the parent).
    for c in cuts:
        for t in ("NS", "DS", "A", "SOA", "ANY"):
            add(c, t)
        add("www." + c, "A")
        add("a.b.deep." + c, "MX")
    # DNAME: names below the owner, for several depths and types.
    for o in owners:
        if "DNAME" in types[o]:
            add("x." + o, "A")
            add("a.b." + o, "AAAA")
            add("x." + o, "DNAME")
            add("x." + o, "CNAME")
            add("nosuch." + o, "TXT")
    # Nonexistent names: at the apex and below existing names.
    add("nonexistent." + zone, "A")
    add("nonexistent." + zone, "ANY")
    add("a.b.c.nonexistent." + zone, "AAAA")
    for o in rng.sample([o for o in owners if o not in below_cut and o != zone], 5):
        add("nx-below." + o, "A")
    # Random case of owner names.
    for o in rng.sample(owners, min(15, len(owners))):
        add(randcase(rng, o), rng.choice(sorted(types[o])))
    # EDNS variants: none, small buffer, DO bit; and TCP.
    sample = rng.sample(owners, min(12, len(owners)))
    for o in sample:
        t = rng.choice(sorted(types[o]))
        add(o, t, "+noedns")
        add(o, t, "+bufsize=512")
        add(o, t, "+tcp")
    for o in rng.sample(owners, min(4, len(owners))):
        add(o, "A", "+dnssec")
    # The largest RRsets: over 512 bytes without EDNS (TC), with EDNS, over TCP.
    big = sorted(((len(v), o, t) for (o, t), v in targets.items()), reverse=True)[:2]
    for _, o, t in big:
        for opts in (["+noedns"], ["+bufsize=512"], ["+bufsize=1232"], ["+bufsize=4096"],
                     ["+tcp"], ["+tcp", "+noedns"]):
            add(o, t, *opts)
    add(zone, "ANY", "+tcp")
    add(zone, "ANY", "+noedns")
    add(zone, "MX", "+noedns")
    add(zone, "NS", "+bufsize=512")
    return qs


def out_of_zone_queries(zones):
    qs = ["example.org A", "com SOA", ". NS", "localhost A"]
    # Class CHAOS: the server's identity and version (compare-nsd.sh gives both servers the
    # same), names it does not know, another type.
    qs += ["version.bind TXT CH", "version.server TXT CH", "id.server TXT CH", "hostname.bind TXT CH",
           "ID.Server TXT CH", "authors.bind TXT CH", "version.bind A CH", "version.bind TXT CH +noedns"]
    for z in zones:
        z = z.rstrip(".").lower() + "."
        qs.append("not" + z + " A")  # shares a suffix textually, not by labels
        qs.append(parent(z) + " SOA")  # the parent of the zone
    return qs


def normalize(text):
    lines = []
    section = None
    records = []

    def flush():
        if section is not None:
            lines.append(";; %s" % section)
            lines.extend(sorted(records))
        records.clear()

    for raw in text.splitlines():
        line = raw.rstrip()
        if not line:
            continue
        m = re.match(r";; ->>HEADER<<- opcode: (\S+), status: (\S+), id: \d+", line)
        if m:
            lines.append("opcode %s rcode %s" % m.groups())
            continue
        if line.startswith(";; flags:"):
            lines.append(line[3:])
            continue
        if line.startswith("; EDNS:") or line.startswith("; EDE:"):
            lines.append(line[2:])
            continue
        m = re.match(r";; ([A-Z]+) SECTION:", line)
        if m:
            flush()
            section = m.group(1)
            continue
        if section == "QUESTION" and line.startswith(";") and not line.startswith(";;"):
            records.append(" ".join(line.split()))  # verbatim apart from spacing
            continue
        if line.startswith(";; connection timed out") or "no servers could be reached" in line:
            lines.append("TIMEOUT")
            continue
        if line.startswith(";; communications error") or line.startswith(";; dig did not"):
            lines.append("ERROR " + line[3:])
            continue
        if line.startswith(";"):
            continue  # comments, cookies, NSID, timings, server, sizes
        if section is None:
            lines.append("? " + line)
            continue
        toks = TOKEN.findall(line)
        toks = [t if t.startswith('"') else t.lower() for t in toks]
        if len(toks) >= 4:
            toks[2], toks[3] = toks[2].upper(), toks[3].upper()  # class, type
        records.append(" ".join(toks))
    flush()
    return "\n".join(lines) + "\n"


def parse_server(spec):
    name, _, port = spec.partition("=")
    return name, int(port)


def read_queries(path):
    with open(path) as f:
        return [l.strip() for l in f if l.strip() and not l.startswith("#")]


def cmd_queries(args):
    qs = []
    for z in args.zones:
        qs.extend(queries_for_zone(args.axfr_port, z))
    qs.extend(out_of_zone_queries(args.zones))
    seen = set()
    for q in qs:
        if q not in seen:
            seen.add(q)
            print(q)


def cmd_compare(args):
    (na, pa), (nb, pb) = parse_server(args.a), parse_server(args.b)
    qs = read_queries(args.queries)

    def one(q):
        argv = q.split()
        return q, normalize(dig(pa, argv)), normalize(dig(pb, argv))

    differ = 0
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        for q, a, b in pool.map(one, qs):
            if a == b:
                continue
            differ += 1
            print("=== dig %s" % q)
            sys.stdout.writelines(difflib.unified_diff(
                a.splitlines(True), b.splitlines(True), na, nb, n=20))
            print()
    print("%d queries, %d differ" % (len(qs), differ))
    return 1 if differ else 0


def cmd_show(args):
    na, pa = parse_server(args.a)
    for q in read_queries(args.queries):
        print("=== dig %s  (%s)" % (q, na))
        print(normalize(dig(pa, q.split())))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("queries")
    q.add_argument("--axfr-port", type=int, required=True)
    q.add_argument("zones", nargs="+")
    c = sub.add_parser("compare")
    c.add_argument("--a", required=True)
    c.add_argument("--b", required=True)
    c.add_argument("--jobs", type=int, default=4)
    c.add_argument("queries")
    s = sub.add_parser("show")
    s.add_argument("--a", required=True)
    s.add_argument("queries")
    args = ap.parse_args()
    if args.cmd == "queries":
        cmd_queries(args)
    elif args.cmd == "compare":
        return cmd_compare(args)
    else:
        cmd_show(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
