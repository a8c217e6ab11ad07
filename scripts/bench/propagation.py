#!/usr/bin/env python3
"""Registry benchmark on a real 3-server discod cluster on loopback.

1. Propagation: register N services one after another through the leader's HTTP API and, from
   each successful response, time how long until every server's DNS answers the new name.
   Reports p50, p90, p99 and the worst, over all servers and for the slowest server.
2. DNS under write load: dnsperf against a follower, first idle, then while wrk drives 64
   keep-alive connections of registrations at the leader; reports both qps and the ratio.
   With two or more CPUs the phase is pinned so the follower stands for a server on its own
   machine: the follower and dnsperf share CPU 0, the leader, the other follower and wrk the
   rest. The follower's DNS then competes only with its own share of the replication (apply,
   fsync, view rebuilds), not with the leader's HTTP work, which on a real cluster runs on
   another machine. `--no-pin` shares every CPU between everything instead.

    scripts/bench/propagation.sh [--registrations 1000] [--duration 10]
"""
import argparse, os, random, select, socket, struct, subprocess, sys, tempfile, threading, time, http.client, json

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import chaos  # noqa: E402

POLL_TIMEOUT_SECONDS = 2.0
POLL_INTERVAL_SECONDS = 0.001
WRITE_CLIENTS = 64


def dns_query(name, qid):
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split("."))
    return struct.pack(">HHHHHH", qid, 0, 1, 0, 0, 0) + labels + b"\x00" + struct.pack(">HH", 1, 1)


def answered(reply, qid):
    """NOERROR with at least one answer, for query id qid."""
    if len(reply) < 12:
        return False
    rid, flags, _, ancount = struct.unpack(">HHHH", reply[:8])
    return rid == qid and flags & 0xF == 0 and ancount > 0


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def propagation(cluster, leader, count):
    connection = http.client.HTTPConnection("127.0.0.1", leader.http, timeout=10)
    sockets = {}
    for node in cluster.nodes:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect(("127.0.0.1", node.dns))
        s.setblocking(False)
        sockets[node.id] = s
    every, slowest = [], []
    per_server = {node.id: [] for node in cluster.nodes}
    for n in range(count):
        name = f"prop-{n}"
        body = json.dumps({"Name": name, "ID": name, "Address": "10.9.%d.%d" % (n // 250, n % 250 + 1), "Port": 80})
        connection.request("PUT", "/v1/agent/service/register", body=body)
        response = connection.getresponse()
        response.read()
        t0 = time.perf_counter()
        if response.status != 200:
            raise SystemExit(f"propagation: registration {n} answered {response.status}")
        pending = dict(sockets)
        qid = n & 0xFFFF
        query = dns_query(f"{name}.service.disco.", qid)
        latencies = {}
        # Ask every server that has not answered yet once per POLL_INTERVAL, sleeping in select()
        # in between: a spinning client would take a core from the servers on a 2-core machine.
        while pending and time.perf_counter() - t0 < POLL_TIMEOUT_SECONDS:
            for s in pending.values():
                s.send(query)
            deadline = time.perf_counter() + POLL_INTERVAL_SECONDS
            while pending and (left := deadline - time.perf_counter()) > 0:
                ready, _, _ = select.select(list(pending.values()), [], [], left)
                for s in ready:
                    reply = s.recv(4096)
                    ident = next(i for i, x in pending.items() if x is s)
                    if answered(reply, qid):
                        latencies[ident] = time.perf_counter() - t0
                        del pending[ident]
        if pending:
            raise SystemExit(f"propagation: {name} not answered by servers {sorted(pending)} within {POLL_TIMEOUT_SECONDS} s")
        every += latencies.values()
        for ident, latency in latencies.items():
            per_server[ident].append(latency)
        slowest.append(max(latencies.values()))
    return every, slowest, per_server


WRK_SCRIPT = """
local counter = 0
local thread_id = 0
function setup(thread)
  thread:set("id", math.random(1, 1000000000))
end
function request()
  counter = counter + 1
  local name = "load-" .. id .. "-" .. counter
  local body = '{"Name":"load","ID":"' .. name .. '","Port":80,"Address":"10.8.0.1"}'
  return wrk.format("PUT", "/v1/agent/service/register", {["Content-Type"]="application/json"}, body)
end
"""


def pin(pid, cpus):
    """Every thread of a running process onto `cpus` (threads it starts later inherit it)."""
    subprocess.run(["taskset", "-a", "-cp", cpus, str(pid)], check=True, stdout=subprocess.DEVNULL)


def dnsperf(port, names_file, seconds, cpus=None):
    # Pinned beside the server, dnsperf runs SCHED_BATCH: otherwise each response's wakeup
    # preempts the server mid-batch, and the two ping-pong one query per context switch.
    taskset = ["taskset", "-c", cpus, "chrt", "-b", "0"] if cpus else []
    out = subprocess.run(taskset + ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", names_file, "-l", str(seconds),
                          "-c", "4", "-Q", "1000000", "-q", "200"], capture_output=True, text=True).stdout
    lost = next((line.split(":")[1].strip() for line in out.splitlines() if "Queries lost" in line), "")
    if lost and not lost.startswith("0 "):
        print(f"  (dnsperf: {lost} queries lost)")
    for line in out.splitlines():
        if "Queries per second" in line:
            return float(line.split(":")[1])
    raise SystemExit("propagation: dnsperf printed no qps:\n" + out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--discod", default=os.path.join(chaos.ROOT, ".build/release/discod"))
    parser.add_argument("--registrations", type=int, default=1000)
    parser.add_argument("--duration", type=int, default=10, help="seconds of each dnsperf phase")
    parser.add_argument("--skip-load", action="store_true", help="only the propagation phase")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the load phase to CPUs (see above)")
    args = parser.parse_args()
    args.nodes = 3
    # dnsperf from 127.0.0.1 asks each name far above RRL's 200/s: measure capacity, not RRL.
    os.environ.setdefault("DISCO_DNS_RRL_ENABLED", "false")
    root = tempfile.mkdtemp(prefix="disco-propagation-")
    cluster = chaos.Cluster(args, root)
    try:
        for node in cluster.nodes:
            cluster.start(node)
        leader = cluster.leader()
        every, slowest, per_server = propagation(cluster, leader, args.registrations)
        ms = lambda v: f"{v * 1000:7.2f} ms"
        print(f"propagation over {args.registrations} registrations (response -> DNS answers on the server):")
        print(f"  {'':22} {'p50':>10} {'p90':>10} {'p99':>10} {'worst':>10}")
        rows = [("each server", every), ("slowest server", slowest)]
        rows += [(f"server {i}" + (" (leader)" if i == leader.id else ""), v) for i, v in sorted(per_server.items())]
        for label, values in rows:
            print(f"  {label:22} " + " ".join(f"{ms(percentile(values, p)):>10}" for p in (50, 90, 99, 100)))
        if args.skip_load:
            return 0

        follower = next(n for n in cluster.nodes if n is not leader)
        names = os.path.join(root, "names.txt")
        with open(names, "w") as f:
            for n in range(args.registrations):
                f.write(f"prop-{n}.service.disco. A\n")
        cpus = os.cpu_count() or 1
        pinned = not args.no_pin and cpus >= 2
        near, rest = ("0", f"1-{cpus - 1}") if pinned else (None, None)
        if pinned:
            pin(follower.process.pid, near)
            for node in cluster.nodes:
                if node is not follower:
                    pin(node.process.pid, rest)
        idle = dnsperf(follower.dns, names, args.duration, near)
        script = os.path.join(root, "register.lua")
        with open(script, "w") as f:
            f.write(WRK_SCRIPT)
        wrk = subprocess.Popen((["taskset", "-c", rest] if pinned else []) + ["wrk", "-t", "1", "-c", str(WRITE_CLIENTS), "-d", str(args.duration + 4), "-s", script,
                                f"http://127.0.0.1:{leader.http}"], stdout=subprocess.PIPE, text=True)
        time.sleep(2)
        loaded = dnsperf(follower.dns, names, args.duration, near)
        wrk_out = wrk.communicate()[0]
        writes = next((line.split(":")[1].strip() for line in wrk_out.splitlines() if "Requests/sec" in line), "?")
        placement = f"follower and dnsperf on CPU {near}, the rest on CPUs {rest}" if pinned else "all sharing every CPU"
        print(f"DNS on a follower while the leader takes {WRITE_CLIENTS} clients of registrations ({writes} registrations/s; {placement}):")
        print(f"  idle {idle:10.0f} q/s   under load {loaded:10.0f} q/s   ratio {loaded / idle:.2f}")
    finally:
        cluster.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
