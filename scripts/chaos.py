#!/usr/bin/env python3
"""Chaos test for the replicated KV store.

Starts N real discod processes (default 3) on loopback with their own data directories, runs
concurrent clients (puts and ?consistent gets on a small key set) against them while a loop
kill -9s a random server and restarts it, records every operation with its invocation and
completion times (JSON lines, the format of RaftTesting's HistoryFile), heals everything, reads
every key once more, and checks the history with `raft-sim check-history`: zero acknowledged
writes lost, the history linearizable. Exit status: the checker's (0 = linearizable).

Usage: scripts/chaos.py [--minutes M] [--nodes N] [--clients C] [--keys K]
                        [--discod PATH] [--raft-sim PATH] [--keep]
"""
import argparse, base64, http.client, json, os, random, shutil, signal, socket, subprocess, sys
import tempfile, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUEST_TIMEOUT_SECONDS = 2.0
LEADER_WAIT_SECONDS = 30


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

    def start(self, node):
        argv = [self.args.discod, "--zones", self.zones, "--dns", f"127.0.0.1:{node.dns}", "--workers", "1",
                "--node-id", str(node.id), "--raft", f"127.0.0.1:{node.raft}",
                "--http", f"127.0.0.1:{node.http}", "--data-dir", node.data, "--log-level", os.environ.get("CHAOS_LOG_LEVEL", "warning")]
        for peer in self.nodes:
            argv += ["--server", f"{peer.id}=127.0.0.1:{peer.raft},127.0.0.1:{peer.http}"]
        log = open(node.log, "a")
        node.process = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)

    def kill9(self, node):
        if node.process:
            node.process.send_signal(signal.SIGKILL)
            node.process.wait()
            node.process = None
            self.kills += 1

    def stop_all(self):
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
                        if address == f"127.0.0.1:{candidate.raft}" and candidate.process:
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
        self.counts = {"put ok": 0, "put refused": 0, "put ambiguous": 0, "get ok": 0, "get failed": 0}

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


def killer(cluster, deadline, rng):
    while time.time() < deadline:
        time.sleep(rng.uniform(2, 5))
        if time.time() >= deadline:
            break
        victim = rng.choice([n for n in cluster.nodes if n.process])
        cluster.kill9(victim)
        time.sleep(rng.uniform(0.5, 2.5))
        cluster.start(victim)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--keys", type=int, default=4)
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
        cluster.leader()
        deadline = time.time() + args.minutes * 60
        rng = random.Random(args.seed)
        threads = [threading.Thread(target=client, args=(i + 1, cluster, args, history, deadline)) for i in range(args.clients)]
        threads.append(threading.Thread(target=killer, args=(cluster, deadline, rng)))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # Heal: every server up, then read every key once more through the leader.
        for node in cluster.nodes:
            if not node.process:
                cluster.start(node)
        leader = cluster.leader()
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
        print(f"chaos: {args.minutes:g} min, {args.nodes} nodes, {args.clients} clients, {args.keys} keys, seed {args.seed}, "
              f"{cluster.kills} kill -9s; " + ", ".join(f"{v} {k}" for k, v in history.counts.items()))
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
