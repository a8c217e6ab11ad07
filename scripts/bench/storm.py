#!/usr/bin/env python3
"""Registration storm benchmark (issue 13): Target's 2019 outage on a real 3-server cluster.

About 41,000 Consul agents re-registered at once after a restart; the servers' queues and
elections collapsed and DNS discovery failed for everything. Here, on loopback:

0. 3 release discod servers (RRL at its defaults), one service `web` with one instance for DNS
   to answer, and DNS measured idle on every server.
1. Phase 1: N agents (default 41,000) each register their host and one instance with a TTL
   check through the catalog endpoint, one node per agent (`agent-00001` ...: a host each, as
   Consul's agents are), over 256 keep-alive HTTP connections spread over the 3 servers, as fast
   as the servers take them. A 429 puts that agent back after its Retry-After (the server
   already jitters it over [1x, 2x); `--client-jitter` adds a real agent's own on top, default
   none). Any other status, a reset or a timeout is counted as a failure and the agent retried.
2. Phase 2: all N re-register at once (the restart); each is a no-op for the catalog.
During both phases dnsperf asks every server a fixed rate of queries (a zone name and a
registry name) in back-to-back chunks; latencies are pooled per server and phase.

Reported: registrations/s per phase, 429s, other outcomes, Raft term and leader before and
after (a changed term is an election, even a failed one), instances in every server's catalog
at the end and whether every agent's node is there, DNS p50/p99 idle vs during, failed queries
(lost or not NOERROR), and whether every server is alive. Exit status 1 when an acceptance
target is missed, 0 when all are met.

Placement (2 cores): no CPU pinning. The servers answer DNS in SCHED_FIFO (dns.realtime_priority)
and run their write path `dns.background_nice` levels below; the load generator runs at nice +10
(the agents are other machines: their CPU should not be taken from the servers' DNS); dnsperf
runs in SCHED_FIFO 2 as resolvers on other machines would see the servers, reading each reply
the moment it arrives (`--dnsperf-scheduling normal`: at nice 0, as a resolver sharing these 2
CPUs, whose own wait for a CPU then counts in its latencies; `--dnsperf-nice N` in between).
Beside dnsperf's figures, the servers' own: the p99 of how long queries waited in their UDP
receive queues (/metrics). `--pin` instead puts the leader and the load generator on CPU 1 and
the followers and the dnsperfs on CPU 0.

    scripts/bench/storm.sh [--agents 41000] [--connections 256] [--dns-rate 2000]
"""
import argparse, asyncio, resource, types, heapq, json, os, random, re, subprocess, sys, tempfile, threading, time, http.client

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import chaos  # noqa: E402

REQUEST_TIMEOUT_SECONDS = 30.0
FAILED_RETRY_SECONDS = 1.0
DNS_CHUNK_SECONDS = 3
DNS_IDLE_SECONDS = 10
DNS_TIMEOUT_SECONDS = 2
SERVICES = 200  # the agents' instances are spread over this many service names


def percentile(values, p):
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def agent_body(n):
    node = f"agent-{n:05d}"
    return json.dumps({
        "Node": node, "Address": f"10.{100 + n // 65536}.{n // 256 % 256}.{n % 256}",
        "Service": {"ID": "app", "Service": f"app-{n % SERVICES}", "Port": 8080, "Tags": ["v1"]},
        "Check": {"CheckID": "service:app", "Name": "app TTL", "ServiceID": "app", "TTL": "30s"},
    }, separators=(",", ":")).encode()


class Phase:
    """One storm: every agent registers until a 200."""

    def __init__(self, name, agents, ports, connections, client_jitter, seconds_max):
        self.seconds_max = seconds_max
        self.name, self.agents, self.ports = name, agents, ports
        self.connections, self.client_jitter = connections, client_jitter
        self.ok = 0
        self.refused = 0
        self.other = {}  # "status 503" / "reset" / "timeout" -> count
        self.examples = {}  # "status 503" -> the first such answer's body
        self.retry_after = []
        self.latencies = []
        self.per_second = []  # (seconds since start, 200s, 429s)
        self.started = self.finished = None

    def count_other(self, what):
        self.other[what] = self.other.get(what, 0) + 1

    async def run(self, bodies):
        ready = asyncio.Queue()
        for n in range(self.agents):
            ready.put_nowait(n)
        delayed = []  # (due, agent)
        remaining = [self.agents]
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        self.started = time.monotonic()

        async def timer():
            while not done.is_set():
                now = time.monotonic()
                while delayed and delayed[0][0] <= now:
                    ready.put_nowait(heapq.heappop(delayed)[1])
                await asyncio.sleep(0.01)

        async def sampler():
            last_ok, last_refused = 0, 0
            while not done.is_set():
                await asyncio.sleep(1)
                self.per_second.append((round(time.monotonic() - self.started), self.ok - last_ok, self.refused - last_refused))
                last_ok, last_refused = self.ok, self.refused

        def later(agent, seconds):
            heapq.heappush(delayed, (time.monotonic() + seconds, agent))

        async def connection(port):
            reader = writer = None
            while not done.is_set():
                try:
                    agent = await asyncio.wait_for(ready.get(), 0.1)
                except asyncio.TimeoutError:
                    continue
                body = bodies[agent]
                try:
                    if writer is None:
                        reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    t0 = time.monotonic()
                    writer.write(b"PUT /v1/catalog/register HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_SECONDS)
                    lines = head.decode("latin-1").split("\r\n")
                    status = int(lines[0].split(" ", 2)[1])
                    headers = {}
                    for line in lines[1:]:
                        if ":" in line:
                            k, v = line.split(":", 1)
                            headers[k.strip().lower()] = v.strip()
                    length = int(headers.get("content-length", "0"))
                    text = await asyncio.wait_for(reader.readexactly(length), REQUEST_TIMEOUT_SECONDS) if length else b""
                    if headers.get("connection", "").lower() == "close":
                        writer.close()
                        reader = writer = None
                except asyncio.TimeoutError:
                    self.count_other("timeout")
                    if writer:
                        writer.close()
                    reader = writer = None
                    later(agent, FAILED_RETRY_SECONDS)
                    continue
                except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as error:
                    self.count_other(f"reset/closed ({type(error).__name__})")
                    if writer:
                        writer.close()
                    reader = writer = None
                    later(agent, FAILED_RETRY_SECONDS)
                    continue
                if status == 200:
                    self.ok += 1
                    self.latencies.append(time.monotonic() - t0)
                    remaining[0] -= 1
                    if remaining[0] == 0:
                        self.finished = time.monotonic()
                        done.set()
                elif status == 429 and headers.get("retry-after", "").isdigit():
                    self.refused += 1
                    seconds = int(headers["retry-after"])
                    self.retry_after.append(seconds)
                    later(agent, seconds * (1 + random.random() * self.client_jitter))
                else:
                    what = f"status {status}" + ("" if status != 429 else " without Retry-After")
                    self.count_other(what)
                    self.examples.setdefault(what, text[:160].decode("utf-8", "replace"))
                    later(agent, FAILED_RETRY_SECONDS)
            if writer:
                writer.close()

        tasks = [loop.create_task(timer()), loop.create_task(sampler())]
        tasks += [loop.create_task(connection(self.ports[i % len(self.ports)])) for i in range(self.connections)]
        try:
            await asyncio.wait_for(done.wait(), self.seconds_max)
        except asyncio.TimeoutError:
            self.finished = time.monotonic()
            done.set()
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def seconds(self):
        return self.finished - self.started


class DNSProbe:
    """dnsperf against one server at a fixed rate, in chunks, until stopped; latencies pooled."""

    def __init__(self, node, names, rate, prefix):
        self.node, self.names, self.rate, self.prefix = node, names, rate, prefix
        self.latencies, self.sent, self.failed, self.rcodes = [], 0, 0, {}
        self.stop = threading.Event()
        self.thread = None

    def chunk(self, seconds):
        out = subprocess.run(self.prefix + ["dnsperf", "-s", "127.0.0.1", "-p", str(self.node.dns), "-d", self.names,
                                            "-l", str(seconds), "-c", "1", "-Q", str(self.rate), "-t", str(DNS_TIMEOUT_SECONDS), "-v"],
                             capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("> "):
                fields = line.split()
                self.rcodes[fields[1]] = self.rcodes.get(fields[1], 0) + 1
                if fields[1] == "T":
                    continue  # a timeout ("> T name type"): no latency; counted in "Queries lost"
                if fields[1] != "NOERROR":
                    self.failed += 1
                self.latencies.append(float(fields[-1]))
        sent = re.search(r"Queries sent:\s+(\d+)", out)
        lost = re.search(r"Queries lost:\s+(\d+)", out)
        if not sent:
            raise SystemExit(f"storm: dnsperf printed no statistics:\n{out}")
        self.sent += int(sent.group(1))
        self.failed += int(lost.group(1)) if lost else 0

    def start(self):
        def loop():
            while not self.stop.is_set():
                self.chunk(DNS_CHUNK_SECONDS)
        self.thread = threading.Thread(target=loop, daemon=True)
        self.thread.start()

    def finish(self):
        self.stop.set()
        self.thread.join()


def metric(node, name):
    status, _, body = chaos.request(node, "GET", "/metrics")
    if status != 200:
        return None
    m = re.search(rb"^" + name.encode() + rb" (\d+)", body, re.M)
    return int(m.group(1)) if m else None


def queue_wait(node):
    """The server's UDP queue-wait histogram: [(upper bound in seconds, cumulative count)]."""
    status, _, body = chaos.request(node, "GET", "/metrics")
    if status != 200:
        return []
    return [(float("inf") if le == b"+Inf" else float(le), int(count))
            for le, count in re.findall(rb'^disco_dns_udp_queue_wait_seconds_bucket\{le="([^"]+)"\} (\d+)', body, re.M)]


def queue_wait_p99(before, after):
    """The upper bound of the bucket holding the 99th percentile of the waits between two scrapes."""
    deltas = [(le, a - b) for (le, a), (_, b) in zip(after, before)]
    total = deltas[-1][1] if deltas else 0
    for le, cumulative in deltas:
        if total and cumulative >= 0.99 * total:
            return le, total
    return float("nan"), total


def leaders(cluster):
    out = {}
    for node in cluster.nodes:
        status, _, body = chaos.request(node, "GET", "/v1/status/leader")
        out[node.id] = json.loads(body) if status == 200 else None
    return out


def leader_node(cluster):
    try:
        return cluster.leader()
    except SystemExit:
        return cluster.nodes[0]


def pin(pid, cpus):
    subprocess.run(["taskset", "-a", "-cp", cpus, str(pid)], check=True, stdout=subprocess.DEVNULL)


def load_main(args):
    """The load generator (a child process): one phase, its figures as JSON on stdout."""
    bodies = [agent_body(n) for n in range(1, args.agents + 1)]
    phase = Phase(args.phase, args.agents, [int(p) for p in args.load.split(",")], args.connections, args.client_jitter, args.phase_seconds_max)
    before = resource.getrusage(resource.RUSAGE_SELF)
    asyncio.run(phase.run(bodies))
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    json.dump({"name": phase.name, "ok": phase.ok, "refused": phase.refused, "other": phase.other, "examples": phase.examples,
               "seconds": phase.seconds, "retry_after_p50": percentile(phase.retry_after, 50),
               "retry_after_max": max(phase.retry_after, default=0), "latency_p50": percentile(phase.latencies, 50),
               "latency_p99": percentile(phase.latencies, 99), "per_second": phase.per_second,
               "load_cpu": cpu / phase.seconds}, sys.stdout)
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--discod", default=os.path.join(chaos.ROOT, ".build/release/discod"))
    parser.add_argument("--agents", type=int, default=41000)
    parser.add_argument("--connections", type=int, default=256)
    parser.add_argument("--dns-rate", type=int, default=2000, help="queries/s to each server")
    parser.add_argument("--client-jitter", type=float, default=0.0,
                        help="a 429's agent waits Retry-After x [1, 1 + this) (default 0: the server's jitter only)")
    parser.add_argument("--phase-seconds-max", type=float, default=240, help="a phase gives up after this long")
    parser.add_argument("--pin", action="store_true", help="leader + load on CPU 1, followers + dnsperf on CPU 0")
    parser.add_argument("--dnsperf-nice", type=int, default=0,
                        help="run dnsperf at this nice (e.g. -10: as resolvers on other machines, whose CPU the servers do not share; needs root)")
    parser.add_argument("--dnsperf-scheduling", choices=["realtime", "normal"], default="realtime",
                        help="realtime (default): dnsperf in SCHED_FIFO 2 (chrt; needs root), as resolvers on other machines, whose replies "
                             "are read the moment they arrive; normal: as a resolver on the same 2 CPUs, whose own wait for CPU counts in its latencies")
    parser.add_argument("--keep", action="store_true", help="keep the servers' data and logs")
    parser.add_argument("--load", help=argparse.SUPPRESS)  # internal: run one phase against these HTTP ports
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        return load_main(args)
    args.nodes = 3
    root = tempfile.mkdtemp(prefix="disco-storm-")
    cluster = chaos.Cluster(args, root)
    failures = []
    try:
        for node in cluster.nodes:
            cluster.start(node)
        leader = cluster.leader()
        followers = [n for n in cluster.nodes if n is not leader]
        body = json.dumps({"Node": "web-host", "Address": "10.99.0.1", "Service": {"ID": "web-1", "Service": "web", "Port": 80}})
        status, _, _ = chaos.request(leader, "PUT", "/v1/catalog/register", body.encode())
        if status != 200:
            raise SystemExit(f"storm: registering web answered {status}")
        names = os.path.join(root, "names.txt")
        with open(names, "w") as f:
            f.write("ns.chaos.test A\nweb.service.disco A\n")
        dns_prefix = ["nice", "-n", str(args.dnsperf_nice)] if args.dnsperf_nice else []
        if args.dnsperf_scheduling == "realtime":
            dns_prefix += ["chrt", "-f", "2"]
        if args.pin:
            pin(leader.process.pid, "1")
            for node in followers:
                pin(node.process.pid, "0")
            os.sched_setaffinity(0, {1})
            dns_prefix += ["taskset", "-c", "0"]
        # Wait until every server's DNS answers web (the registration has applied everywhere).
        for node in cluster.nodes:
            deadline = time.time() + 10
            while subprocess.run(["dig", "+short", "+time=1", "+tries=1", "-p", str(node.dns), "@127.0.0.1", "web.service.disco"],
                                 capture_output=True, text=True).stdout.strip() != "10.99.0.1":
                if time.time() > deadline:
                    raise SystemExit(f"storm: server {node.id} does not answer web.service.disco")
                time.sleep(0.1)

        load_before = os.getloadavg()[0]
        term_before = {n.id: metric(n, "disco_raft_term") for n in cluster.nodes}
        leader_before = leaders(cluster)

        waits = {"idle": {n.id: queue_wait(n) for n in cluster.nodes}}
        idle = {n.id: DNSProbe(n, names, args.dns_rate, dns_prefix) for n in cluster.nodes}
        threads = [threading.Thread(target=p.chunk, args=(DNS_IDLE_SECONDS,)) for p in idle.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

        waits["idle end"] = {n.id: queue_wait(n) for n in cluster.nodes}
        ports = ",".join(str(n.http) for n in cluster.nodes)
        results = []
        during = {}
        for name in ("phase 1: register", "phase 2: re-register"):
            probes = {n.id: DNSProbe(n, names, args.dns_rate, dns_prefix) for n in cluster.nodes}
            waits[name] = {n.id: queue_wait(n) for n in cluster.nodes}
            for p in probes.values():
                p.start()
            time.sleep(1)
            # The load generator is its own process at nice +10, below the servers' DNS workers
            # (the agents are other machines: their CPU should not be taken from DNS).
            load = subprocess.run((["taskset", "-c", "1"] if args.pin else []) + [
                "nice", "-n", "10", sys.executable, os.path.abspath(__file__), "--load", ports, "--phase", name,
                "--agents", str(args.agents), "--connections", str(args.connections),
                "--client-jitter", str(args.client_jitter), "--phase-seconds-max", str(args.phase_seconds_max)], capture_output=True, text=True)
            if load.returncode != 0:
                raise SystemExit(f"storm: the load generator failed:\n{load.stderr}")
            time.sleep(1)
            for p in probes.values():
                p.finish()
            results.append(json.loads(load.stdout))
            during[name] = probes
            waits[name + " end"] = {n.id: queue_wait(n) for n in cluster.nodes}

        alive = {n.id: n.process.poll() is None for n in cluster.nodes}
        load_after = os.getloadavg()[0]
        term_after = {n.id: metric(n, "disco_raft_term") for n in cluster.nodes}
        leader_after = leaders(cluster)
        # Every server applies the last registrations within moments of the leader.
        deadline = time.time() + 10
        while True:
            instances = {n.id: metric(n, "disco_catalog_instances") for n in cluster.nodes}
            if all(v == args.agents + 1 for v in instances.values()) or time.time() > deadline:
                break
            time.sleep(0.2)
        connection = http.client.HTTPConnection("127.0.0.1", leader_node(cluster).http, timeout=60)
        connection.request("GET", "/v1/catalog/nodes")
        response = connection.getresponse()
        if response.status != 200:
            raise SystemExit(f"storm: GET /v1/catalog/nodes answered {response.status}")
        present = {item["Node"] for item in json.loads(response.read())}
        missing = [n for n in range(1, args.agents + 1) if f"agent-{n:05d}" not in present]

        # ---- report
        ms = lambda v: f"{v * 1000:.2f} ms"
        print(f"registration storm: {args.agents} agents, {args.connections} connections over 3 servers, "
              f"DNS {args.dns_rate} q/s per server (dnsperf scheduling {args.dnsperf_scheduling}), client jitter {args.client_jitter}, "
              f"{'pinned (leader + load on CPU 1)' if args.pin else 'not pinned'}; leader server {leader.id}; "
              f"load average {load_before:.1f} before, {load_after:.1f} after (on 2 CPUs; others' builds show here)")
        for phase in results:
            phase = types.SimpleNamespace(**phase)
            other = ", ".join(f"{k}: {v}" for k, v in sorted(phase.other.items())) or "none"
            ra = (f"Retry-After p50 {phase.retry_after_p50} s, max {phase.retry_after_max} s"
                  if phase.refused else "no Retry-After")
            print(f"{phase.name}: {phase.ok} registered in {phase.seconds:.1f} s = {phase.ok / phase.seconds:,.0f} registrations/s; "
                  f"429: {phase.refused} ({ra}); other: {other}; 200 latency p50 {ms(phase.latency_p50)} "
                  f"p99 {ms(phase.latency_p99)}; load generator {phase.load_cpu * 100:.0f}% of a core")
            for what, text in sorted(phase.examples.items()):
                print(f"  first {what}: {text!r}")
            print("  per second (s: 200s/429s): " + " ".join(f"{s}:{ok}/{r}" for s, ok, r in phase.per_second))
            if phase.ok != args.agents:
                failures.append(f"{phase.name}: only {phase.ok} of {args.agents} registered")
            if phase.other:
                failures.append(f"{phase.name}: outcomes other than 200 and 429: {other}")
        print(f"raft term before {term_before} after {term_after}; leader before {leader_before} after {leader_after}")
        if term_before != term_after or leader_before != leader_after:
            failures.append("a leader election during the storm")
        print(f"servers alive: {alive}; instances per server: {instances} (expected {args.agents + 1}); "
              f"agents' nodes missing from the catalog: {len(missing)}")
        if not all(alive.values()):
            failures.append("a server died")
        if any(v != args.agents + 1 for v in instances.values()) or missing:
            failures.append("registrations lost")
        print(f"DNS ({DNS_TIMEOUT_SECONDS} s timeout; failed = lost or not NOERROR):")
        print(f"  {'server':<14} {'idle p50':>10} {'idle p99':>10} " + " ".join(
            f"{label + ' p50':>12} {label + ' p99':>12} {'ratio':>6} {'failed':>12}" for label in ("ph1", "ph2")))
        for node in cluster.nodes:
            i = idle[node.id]
            idle99 = percentile(i.latencies, 99)
            row = f"  {str(node.id) + (' (leader)' if node is leader else ''):<14} {ms(percentile(i.latencies, 50)):>10} {ms(idle99):>10} "
            if i.failed:
                failures.append(f"server {node.id}: {i.failed} failed DNS queries idle")
            for name in during:
                p = during[name][node.id]
                p99 = percentile(p.latencies, 99)
                row += f"{ms(percentile(p.latencies, 50)):>12} {ms(p99):>12} {p99 / idle99:6.2f} {f'{p.failed}/{p.sent}':>12} "
                if p99 > 2 * idle99:
                    failures.append(f"server {node.id}, {name}: DNS p99 {ms(p99)} over 2x idle {ms(idle99)}")
                if p.failed:
                    failures.append(f"server {node.id}, {name}: {p.failed} failed DNS queries ({p.rcodes})")
            print(row)
        # The servers' own view: how long the oldest query of each UDP batch waited in the
        # receive queue (kernel timestamp to the worker reading it), p99 as its bucket's bound.
        # It excludes dnsperf's own scheduling, which the latencies above include.
        print("server side, UDP queue wait p99 (oldest query of each batch; the histogram bucket's upper bound):")
        for node in cluster.nodes:
            cells = []
            for label, start, end in (("idle", "idle", "idle end"), ("ph1", "phase 1: register", "phase 1: register end"),
                                      ("ph2", "phase 2: re-register", "phase 2: re-register end")):
                bound, count = queue_wait_p99(waits[start][node.id], waits[end][node.id])
                cells.append(f"{label} <= {ms(bound)} of {count} batches")
            print(f"  {node.id}: " + "; ".join(cells))
        print("acceptance: " + ("all targets met" if not failures else "MISSED:\n  - " + "\n  - ".join(failures)))
    finally:
        cluster.stop_all()
        if args.keep:
            print(f"kept {root}")
        else:
            import shutil
            shutil.rmtree(root, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
