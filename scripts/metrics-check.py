#!/usr/bin/env python3
"""Acceptance: discod's /metrics read by a real Prometheus text parser (prometheus_client, from
PyPI), before and after DNS and HTTP traffic, on one discod server.

Checks that the exposition parses (HELP and TYPE for every family, valid samples), that the
series move with the traffic sent (queries by protocol and type, responses by code, HTTP
requests by route and code, the Raft persist histogram), and that every histogram is sound
(cumulative buckets, +Inf equal to _count).

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install prometheus_client
    /tmp/venv/bin/python scripts/metrics-check.py --discod .build/debug/discod

Exit status 0 when every check passed; each failure is printed with the check's name.
"""
import argparse, os, subprocess, sys, tempfile, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import chaos  # noqa: E402  (free_ports, ROOT)

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

failures = []


def check(name, condition, detail=""):
    print(("ok    " if condition else "FAIL  ") + name + ("" if condition else f"  ({detail})"))
    if not condition:
        failures.append(name)


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    families = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = family
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return families, samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def dig(port, name, rtype, tcp=False):
    subprocess.run(["dig", "@127.0.0.1", "-p", str(port), "+time=2", "+tries=1"] + (["+tcp"] if tcp else []) + [name, rtype],
                   capture_output=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--discod", default=os.path.join(chaos.ROOT, ".build/debug/discod"))
    args = parser.parse_args()
    dns, http, raft = chaos.free_ports(3)
    data = tempfile.mkdtemp(prefix="disco-metrics-")
    log = open(os.path.join(data, "discod.log"), "w")
    server = subprocess.Popen([args.discod, "--dev", "--zones", os.path.join(chaos.ROOT, "Zones"), "--dns", f"127.0.0.1:{dns}",
                               "--http", f"127.0.0.1:{http}", "--raft", f"127.0.0.1:{raft}", "--data-dir", data],
                              stdout=log, stderr=log)
    try:
        deadline = time.time() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{http}/v1/status/leader", timeout=2)
                request = urllib.request.Request(f"http://127.0.0.1:{http}/v1/kv/warm", data=b"x", method="PUT")
                urllib.request.urlopen(request, timeout=5)
                break
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(0.1)
        families, before = scrape(http)
        check("the exposition parses with prometheus_client", len(families) > 20, len(families))

        for _ in range(5):
            dig(dns, "www.example.com.", "A")
        for _ in range(2):
            dig(dns, "www.example.com.", "AAAA", tcp=True)
        dig(dns, "nothing-here.example.com.", "A")
        request = urllib.request.Request(f"http://127.0.0.1:{http}/v1/kv/metrics-check", data=b"v", method="PUT")
        urllib.request.urlopen(request, timeout=5)
        urllib.request.urlopen(f"http://127.0.0.1:{http}/v1/kv/metrics-check", timeout=5)

        families, after = scrape(http)

        def moved(name, by, metric, **labels):
            delta = value(after, metric, **labels) - value(before, metric, **labels)
            check(name, delta >= by, f"{metric}{labels} moved by {delta}, expected at least {by}")

        moved("UDP A queries are counted", 6, "disco_dns_queries_total", proto="udp", qtype="A")
        moved("TCP AAAA queries are counted", 2, "disco_dns_queries_total", proto="tcp", qtype="AAAA")
        moved("NOERROR responses are counted", 5, "disco_dns_responses_total", proto="udp", rcode="NOERROR")
        moved("NXDOMAIN responses are counted", 1, "disco_dns_responses_total", proto="udp", rcode="NXDOMAIN")
        looked = sum(value(after, m) - value(before, m) for m in ("disco_dns_cache_hits_total", "disco_dns_cache_misses_total"))
        check("every UDP query is a cache hit or miss", looked >= 6, looked)
        moved("HTTP PUT /v1/kv 200 is counted", 1, "disco_http_requests_total", route="/v1/kv", method="PUT", code="200")
        moved("HTTP GET /v1/kv 200 is counted", 1, "disco_http_requests_total", route="/v1/kv", method="GET", code="200")
        moved("the HTTP latency histogram counts the requests", 2, "disco_http_request_duration_seconds_count", route="/v1/kv")
        moved("the Raft persist histogram counts the write", 1, "disco_raft_persist_duration_seconds_count")
        moved("the proposal queue stage counts the write", 1, "disco_raft_proposal_queue_seconds_count")
        moved("the proposal commit stage counts the write", 1, "disco_raft_proposal_commit_seconds_count")
        moved("the proposal apply stage counts the write", 1, "disco_raft_proposal_apply_seconds_count")
        moved("UDP batches' queue waits are counted", 1, "disco_dns_udp_queue_wait_seconds_count")
        # Where this machine permits SCHED_FIFO (a container may not; discod then says so once).
        if subprocess.run(["chrt", "-f", "1", "true"], capture_output=True).returncode == 0:
            check("the DNS workers answer in SCHED_FIFO (dns.realtime_priority)",
                  value(after, "disco_dns_realtime_workers") >= 1, value(after, "disco_dns_realtime_workers"))
        check("disco_raft_leader is 1 on a single server", value(after, "disco_raft_leader") == 1)
        check("disco_dns_view_zones counts the zones and the registry", value(after, "disco_dns_view_zones") >= 3,
              value(after, "disco_dns_view_zones"))

        # The Grafana dashboard shipped in Config/ only names series that exist.
        import json, re
        dashboard = json.load(open(os.path.join(chaos.ROOT, "Config/grafana-dashboard.json")))
        used = {re.sub(r"_(bucket|sum|count)$", "", m) for panel in dashboard["panels"] for target in panel["targets"]
                for m in re.findall(r"disco_[a-z_]+", target["expr"])}
        exposed = {name for name in families} | {name + "_total" for name in families}
        missing = sorted(name for name in used if name not in exposed and name.removesuffix("_total") not in families)
        check("every series the Grafana dashboard queries is exposed", not missing, missing)

        for family in families.values():
            if family.type != "histogram":
                continue
            series = {}
            for sample in family.samples:
                key = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
                series.setdefault(key, {"buckets": [], "count": None})
                if sample.name.endswith("_bucket"):
                    series[key]["buckets"].append((float(sample.labels["le"]), sample.value))
                elif sample.name.endswith("_count"):
                    series[key]["count"] = sample.value
            for key, s in series.items():
                counts = [c for _, c in sorted(s["buckets"])]
                sound = counts == sorted(counts) and counts and counts[-1] == s["count"]
                check(f"histogram {family.name}{dict(key)} is cumulative and +Inf equals _count", sound, s)
    finally:
        server.terminate()
        server.wait(timeout=10)
    print("\nall checks passed" if not failures else f"\n{len(failures)} check(s) failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
