#!/usr/bin/env python3
"""Chaos test for the replicated KV store and the service registry.

Starts N real discod processes (default 3) on loopback with their own data directories. Every
directed Raft link (server X's connections to server Y) goes through a proxy in this process,
so the nemesis can partition the network as well as kill -9 servers. Concurrent clients run
two workloads against them:
- KV: puts and ?consistent gets on a small key set;
- registry: register, deregister and re-register the same few instances (catalog API, with
  an explicit node), and ?consistent reads of whether each is registered; each instance is a
  register in the model ("registered" / "absent"), so a re-registration acknowledged from a
  stale catalog and then lost is a violation.
Meanwhile the nemesis, every 2-5 s, kill -9s a random server (restarted 0.5-2.5 s later), or cuts
the cluster in two (a minority cut off both ways), or cuts one server's outbound or inbound links
only, and heals after 1-3 s. Every operation is recorded with its invocation and completion
times (JSON lines, the format of RaftTesting's HistoryFile); after healing everything, every key
and instance is read once more, and the history is checked with `raft-sim check-history`: zero
acknowledged writes lost, the history linearizable. Exit status: the checker's (0 = linearizable).

Usage: scripts/chaos.py [--minutes M] [--nodes N] [--clients C] [--keys K] [--instances I]
                        [--no-partitions] [--discod PATH] [--raft-sim PATH] [--keep]
"""
import argparse, base64, http.client, json, os, random, shutil, signal, socket, subprocess, sys
import tempfile, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUEST_TIMEOUT_SECONDS = 2.0
LEADER_WAIT_SECONDS = 30
PROXY_BUFFER_BYTES = 65536
REGISTRY_NODE = "chaos-host"


class LinkProxy:
    """One directed Raft link X->Y: listens on a loopback port that X uses as Y's address and
    relays to Y. `cut()` closes its connections and refuses new ones (a partition: X's messages
    to Y are lost until `mend()`); the transport redials on its own."""

    def __init__(self, upstream_port):
        self.upstream_port = upstream_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.is_cut = False
        self.sockets = []
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self):
        with self.lock:
            self.is_cut = True
            sockets, self.sockets = self.sockets, []
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def mend(self):
        with self.lock:
            self.is_cut = False

    def stop(self):
        self.stopped = True
        self.cut()
        try:
            self.listener.close()
        except OSError:
            pass

    def _accept(self):
        while not self.stopped:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                refuse = self.is_cut
            if refuse:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=1)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.sockets += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()

    def _pipe(self, source, sink):
        try:
            while True:
                data = source.recv(PROXY_BUFFER_BYTES)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def free_ports(count):
    """Distinct free loopback ports below the kernel's ephemeral range, so that a port released by
    a killed server is not taken meanwhile as the source port of some outgoing connection."""
    low = 32768
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except OSError:
        pass
    rng = random.Random()
    ports = []
    while len(ports) < count:
        port = rng.randrange(max(1024, low - 12000), low)
        if port in ports:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
    return ports


class Node:
    def __init__(self, ident, root, raft, http, dns):
        self.id, self.raft, self.http, self.dns = ident, raft, http, dns
        self.data = os.path.join(root, f"node{ident}")
        self.log = os.path.join(root, f"node{ident}.log")
        self.process = None


class Cluster:
    def __init__(self, args, root):
        self.args, self.root = args, root
        self.zones = os.path.join(root, "zones")
        os.makedirs(self.zones)
        with open(os.path.join(self.zones, "chaos.test.zone"), "w") as f:
            f.write("$TTL 60\n@ SOA ns h 1 2 3 4 5\n NS ns\nns A 192.0.2.1\n")
        ports = free_ports(3 * args.nodes)
        self.nodes = [Node(i, root, ports[3 * i - 3], ports[3 * i - 2], ports[3 * i - 1]) for i in range(1, args.nodes + 1)]
        self.lock = threading.Lock()
        self.kills = 0
        self.partitions = 0
        # links[(x, y)]: the proxy carrying x's messages to y.
        self.links = {}
        if getattr(args, "partitions", False):  # other scripts reuse this fixture without proxies
            for x in self.nodes:
                for y in self.nodes:
                    if x is not y:
                        self.links[(x.id, y.id)] = LinkProxy(y.raft)

    def raft_port(self, peer, seen_from):
        link = self.links.get((seen_from.id, peer.id))
        return link.port if link else peer.raft

    def start(self, node):
        argv = [self.args.discod, "--zones", self.zones, "--dns", f"127.0.0.1:{node.dns}", "--workers", "1",
                "--node-id", str(node.id), "--raft", f"127.0.0.1:{node.raft}",
                "--http", f"127.0.0.1:{node.http}", "--data-dir", node.data, "--log-level", os.environ.get("CHAOS_LOG_LEVEL", "warning")]
        for peer in self.nodes:
            argv += ["--server", f"{peer.id}=127.0.0.1:{self.raft_port(peer, node)},127.0.0.1:{peer.http}"]
        log = open(node.log, "a")
        node.process = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)

    def kill9(self, node):
        if node.process:
            node.process.send_signal(signal.SIGKILL)
            node.process.wait()
            node.process = None
            self.kills += 1

    def cut(self, pairs):
        for pair in pairs:
            self.links[pair].cut()

    def heal(self):
        for link in self.links.values():
            link.mend()

    def stop_all(self):
        for link in self.links.values():
            link.stop()
        for node in self.nodes:
            if node.process:
                node.process.terminate()
        for node in self.nodes:
            if node.process:
                try:
                    node.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    node.process.kill()
                    node.process.wait()
                node.process = None

    def leader(self):
        deadline = time.time() + LEADER_WAIT_SECONDS
        while time.time() < deadline:
            for node in self.nodes:
                if not node.process:
                    continue
                status, _, body = request(node, "GET", "/v1/status/leader")
                if status == 200 and body not in (b'""', b""):
                    address = json.loads(body)
                    for candidate in self.nodes:
                        if address == f"127.0.0.1:{self.raft_port(candidate, node)}" and candidate.process:
                            return candidate
            time.sleep(0.1)
        raise SystemExit("chaos: no leader within %d s" % LEADER_WAIT_SECONDS)


def request(node, method, path, body=None):
    """(status, headers, body); status None when the outcome is unknown (timeout, reset)."""
    try:
        connection = http.client.HTTPConnection("127.0.0.1", node.http, timeout=REQUEST_TIMEOUT_SECONDS)
        connection.request(method, path, body=body)
        response = connection.getresponse()
        data = response.read()
        headers = {k.lower(): v for k, v in response.getheaders()}
        connection.close()
        return response.status, headers, data
    except (OSError, http.client.HTTPException):
        return None, {}, b""


class History:
    def __init__(self):
        self.lock = threading.Lock()
        self.lines = []
        self.counts = {"put ok": 0, "put refused": 0, "put ambiguous": 0, "get ok": 0, "get failed": 0,
                       "register ok": 0, "deregister ok": 0, "registry write refused": 0, "registry write ambiguous": 0,
                       "registry read ok": 0, "registry read failed": 0}

    def add(self, record, tally):
        with self.lock:
            self.lines.append(json.dumps(record))
            self.counts[tally] += 1


def client(ident, cluster, args, history, deadline):
    rng = random.Random(ident)
    client_id = ident
    node = rng.choice(cluster.nodes)
    seq = 0
    while time.time() < deadline:
        key = f"k{rng.randrange(args.keys)}"
        if rng.random() < 0.5:
            seq += 1
            value = f"{ident}-{seq}"
            call = time.monotonic_ns()
            status, headers, body = request(node, "PUT", f"/v1/kv/{key}", body=value.encode())
            ret = time.monotonic_ns()
            record = {"client": client_id, "op": "put", "key": key, "value": value, "call": call}
            if status == 200 and body.strip() == b"true":
                record["return"] = ret
                history.add(record, "put ok")
            elif status == 503 and (body.startswith(b"this server is not the leader") or body.startswith(b"No cluster leader")):
                record["return"], record["error"] = ret, "not leader"  # refused before the log
                history.add(record, "put refused")
            else:
                record["return"] = None  # may take effect later, or never
                history.add(record, "put ambiguous")
                # Jepsen's rule: a client with an operation in limbo continues as a new process.
                client_id += 1000
        else:
            call = time.monotonic_ns()
            status, headers, body = request(node, "GET", f"/v1/kv/{key}?consistent")
            ret = time.monotonic_ns()
            if status == 200:
                value = base64.b64decode(json.loads(body)[0]["Value"] or "").decode()
                history.add({"client": client_id, "op": "get", "key": key, "value": value, "call": call, "return": ret}, "get ok")
            elif status == 404:
                history.add({"client": client_id, "op": "get", "key": key, "value": None, "call": call, "return": ret}, "get ok")
            else:
                history.add({"client": client_id, "op": "get", "key": key, "value": None, "call": call, "return": ret,
                             "error": f"status {status}"}, "get failed")
        leader_http = headers.get("x-disco-leader") if status != 200 else None
        if leader_http:
            port = int(leader_http.rsplit(":", 1)[1])
            node = next((n for n in cluster.nodes if n.http == port), node)
        elif status is None or status >= 500:
            node = rng.choice(cluster.nodes)


def instance_key(k):
    return f"instance/chaos-{k}"


def registry_write(node, k, register):
    """Registers or deregisters instance k (service chaos-k on REGISTRY_NODE)."""
    if register:
        body = json.dumps({"Node": REGISTRY_NODE, "Address": "10.9.0.1",
                           "Service": {"ID": f"i{k}", "Service": f"chaos-{k}", "Port": 80}})
        return request(node, "PUT", "/v1/catalog/register", body=body.encode())
    body = json.dumps({"Node": REGISTRY_NODE, "ServiceID": f"i{k}"})
    return request(node, "PUT", "/v1/catalog/deregister", body=body.encode())


def registry_read(node, k):
    """(status, headers, "registered" | "absent" | None)."""
    status, headers, body = request(node, "GET", f"/v1/catalog/service/chaos-{k}?consistent")
    if status != 200:
        return status, headers, None
    present = any(item.get("ServiceID") == f"i{k}" for item in json.loads(body))
    return status, headers, "registered" if present else "absent"


def refused_before_the_log(status, body):
    return status == 503 and (body.startswith(b"this server is not the leader") or body.startswith(b"No cluster leader"))


def registry_client(ident, cluster, args, history, deadline):
    """Register, deregister, re-register the same instances; read whether each is registered."""
    rng = random.Random(ident)
    client_id = ident
    node = rng.choice(cluster.nodes)
    while time.time() < deadline:
        k = rng.randrange(args.instances)
        key = instance_key(k)
        roll = rng.random()
        if roll < 0.6:
            # Registering twice in a row is common on purpose: the second one changes nothing.
            register = roll < 0.4
            value = "registered" if register else "absent"
            call = time.monotonic_ns()
            status, headers, body = registry_write(node, k, register)
            ret = time.monotonic_ns()
            record = {"client": client_id, "op": "put", "key": key, "value": value, "call": call}
            if status == 200 and body.strip() == b"true":
                record["return"] = ret
                history.add(record, "register ok" if register else "deregister ok")
            elif refused_before_the_log(status, body):
                record["return"], record["error"] = ret, "not leader"
                history.add(record, "registry write refused")
            else:
                record["return"] = None
                history.add(record, "registry write ambiguous")
                client_id += 1000
        else:
            call = time.monotonic_ns()
            status, headers, value = registry_read(node, k)
            ret = time.monotonic_ns()
            record = {"client": client_id, "op": "get", "key": key, "value": value, "call": call, "return": ret}
            if value is not None:
                history.add(record, "registry read ok")
            else:
                record["error"] = f"status {status}"
                history.add(record, "registry read failed")
        leader_http = headers.get("x-disco-leader") if status != 200 else None
        if leader_http:
            port = int(leader_http.rsplit(":", 1)[1])
            node = next((n for n in cluster.nodes if n.http == port), node)
        elif status is None or status >= 500:
            node = rng.choice(cluster.nodes)


def nemesis(cluster, deadline, rng, partitions):
    """kill -9 and restart, or (with proxied links) a partition, then heal."""
    while time.time() < deadline:
        time.sleep(rng.uniform(2, 5))
        if time.time() >= deadline:
            break
        choice = rng.random() if partitions else 0.0
        if choice < 0.4:
            victim = rng.choice([n for n in cluster.nodes if n.process])
            cluster.kill9(victim)
            time.sleep(rng.uniform(0.5, 2.5))
            cluster.start(victim)
            continue
        ids = [n.id for n in cluster.nodes]
        if choice < 0.8:
            # A minority cut off from the majority, both ways.
            rng.shuffle(ids)
            minority = set(ids[:(len(ids) - 1) // 2])
            pairs = [(x, y) for x in ids for y in ids if x != y and ((x in minority) != (y in minority))]
        else:
            # One server reaches nobody, or hears from nobody.
            victim = rng.choice(ids)
            outbound = rng.random() < 0.5
            pairs = [(victim, y) if outbound else (y, victim) for y in ids if y != victim]
        cluster.cut(pairs)
        cluster.partitions += 1
        time.sleep(rng.uniform(1, 3))
        cluster.heal()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--keys", type=int, default=4)
    parser.add_argument("--instances", type=int, default=3, help="registry instances the registry clients share")
    parser.add_argument("--no-partitions", dest="partitions", action="store_false",
                        help="only kill -9, no proxied links")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--discod", default=os.path.join(ROOT, ".build/release/discod"))
    parser.add_argument("--raft-sim", default=os.path.join(ROOT, ".build/release/raft-sim"))
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, data, history)")
    args = parser.parse_args()
    for tool in (args.discod, args.raft_sim):
        if not os.access(tool, os.X_OK):
            raise SystemExit(f"chaos: {tool} is not built (swift build -c release)")
    root = tempfile.mkdtemp(prefix="disco-chaos-")
    cluster = Cluster(args, root)
    history = History()
    status = 2
    try:
        for node in cluster.nodes:
            cluster.start(node)
        leader = cluster.leader()
        # Every instance starts absent, as a completed write the model knows of.
        for k in range(args.instances):
            call = time.monotonic_ns()
            status, _, body = registry_write(leader, k, register=False)
            if status != 200:
                raise SystemExit(f"chaos: setup deregister failed: {status} {body!r}")
            history.add({"client": 0, "op": "put", "key": instance_key(k), "value": "absent", "call": call,
                         "return": time.monotonic_ns()}, "deregister ok")
        deadline = time.time() + args.minutes * 60
        rng = random.Random(args.seed)
        threads = [threading.Thread(target=client, args=(i + 1, cluster, args, history, deadline)) for i in range(args.clients)]
        threads += [threading.Thread(target=registry_client, args=(100 + i, cluster, args, history, deadline))
                    for i in range(args.clients)]
        threads.append(threading.Thread(target=nemesis, args=(cluster, deadline, rng, args.partitions)))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # Heal: every link mended, every server up, then read every key once more through the leader.
        cluster.heal()
        for node in cluster.nodes:
            if not node.process:
                cluster.start(node)
        leader = cluster.leader()
        for k in range(args.instances):
            for _ in range(20):
                call = time.monotonic_ns()
                _, _, value = registry_read(leader, k)
                if value is not None:
                    history.add({"client": 0, "op": "get", "key": instance_key(k), "value": value, "call": call,
                                 "return": time.monotonic_ns()}, "registry read ok")
                    break
                time.sleep(0.2)
        for k in range(args.keys):
            key = f"k{k}"
            for _ in range(20):
                call = time.monotonic_ns()
                code, _, body = request(leader, "GET", f"/v1/kv/{key}?consistent")
                ret = time.monotonic_ns()
                if code in (200, 404):
                    value = base64.b64decode(json.loads(body)[0]["Value"] or "").decode() if code == 200 else None
                    history.add({"client": 0, "op": "get", "key": key, "value": value, "call": call, "return": ret}, "get ok")
                    break
                time.sleep(0.2)
        path = os.path.join(root, "history.jsonl")
        with open(path, "w") as f:
            f.write("\n".join(history.lines) + "\n")
        print(f"chaos: {args.minutes:g} min, {args.nodes} nodes, {args.clients}+{args.clients} clients, {args.keys} keys, "
              f"{args.instances} instances, seed {args.seed}, {cluster.kills} kill -9s, {cluster.partitions} partitions; "
              + ", ".join(f"{v} {k}" for k, v in history.counts.items()))
        cluster.stop_all()
        status = subprocess.run([args.raft_sim, "check-history", path]).returncode
        if status != 0:
            args.keep = True
    except BaseException:
        args.keep = True  # keep the logs of a run that failed
        raise
    finally:
        cluster.stop_all()
        if args.keep:
            print(f"chaos: kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    sys.exit(status)


if __name__ == "__main__":
    main()
