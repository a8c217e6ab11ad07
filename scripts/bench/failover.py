#!/usr/bin/env python3
"""Failover benchmark: kill -9 the leader of a 3-server Disco cluster and of a 3-member etcd 3.4
cluster, ROUNDS times each, and measure the time from the kill until the first write that succeeds
on a surviving server. Prints median and worst for both, side by side.

Usage: scripts/bench/failover.py [--rounds 10] [--discod PATH]     (needs Debian etcd-server)
"""
import argparse, base64, http.client, json, os, shutil, signal, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import chaos  # noqa: E402  (the Disco cluster launcher and free-port picker)

WRITE_TIMEOUT_SECONDS = 0.3


def post(port, method, path, body):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=WRITE_TIMEOUT_SECONDS)
        c.request(method, path, body=body)
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, data
    except (OSError, http.client.HTTPException):
        return None, b""


def time_to_write(write_ports, write):
    start = time.monotonic()
    while True:
        for port in write_ports:
            if write(port):
                return time.monotonic() - start
        if time.monotonic() - start > 30:
            return float("inf")


def disco_rounds(args, root):
    ns = argparse.Namespace(discod=args.discod, nodes=3)
    cluster = chaos.Cluster(ns, os.path.join(root, "disco"))
    times = []
    try:
        for node in cluster.nodes:
            cluster.start(node)
        for _ in range(args.rounds):
            leader = cluster.leader()
            cluster.kill9(leader)
            others = [n.http for n in cluster.nodes if n.process]
            ok = lambda port: post(port, "PUT", "/v1/kv/failover", b"x") == (200, b"true")
            times.append(time_to_write(others, ok))
            cluster.start(leader)
            time.sleep(2)  # let it catch up before the next round
    finally:
        cluster.stop_all()
    return times


def etcd_rounds(args, root):
    ports = chaos.free_ports(6)
    peer = {i: ports[i - 1] for i in (1, 2, 3)}
    client = {i: ports[i + 2] for i in (1, 2, 3)}
    initial = ",".join(f"e{i}=http://127.0.0.1:{peer[i]}" for i in (1, 2, 3))
    procs = {}

    def start(i):
        argv = ["etcd", "--name", f"e{i}", "--data-dir", os.path.join(root, f"etcd{i}"),
                "--listen-client-urls", f"http://127.0.0.1:{client[i]}", "--advertise-client-urls", f"http://127.0.0.1:{client[i]}",
                "--listen-peer-urls", f"http://127.0.0.1:{peer[i]}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer[i]}",
                "--initial-cluster", initial, "--initial-cluster-state", "new", "--initial-cluster-token", "failover",
                "--log-level", "error"]
        procs[i] = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    body = json.dumps({"key": base64.b64encode(b"failover").decode(), "value": base64.b64encode(b"x").decode()}).encode()
    ok = lambda port: post(port, "POST", "/v3/kv/put", body)[0] == 200
    times = []
    try:
        for i in (1, 2, 3):
            start(i)
        time_to_write(list(client.values()), ok)
        for _ in range(args.rounds):
            leader = None
            while leader is None:
                for i in (1, 2, 3):
                    status, data = post(client[i], "POST", "/v3/maintenance/status", b"{}")
                    if status == 200:
                        answer = json.loads(data)
                        if answer.get("leader") == answer.get("header", {}).get("member_id"):
                            leader = i
                time.sleep(0.05)
            procs[leader].send_signal(signal.SIGKILL)
            procs[leader].wait()
            times.append(time_to_write([client[i] for i in (1, 2, 3) if i != leader], ok))
            start(leader)
            time.sleep(2)
    finally:
        for p in procs.values():
            p.kill()
            p.wait()
    return times


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--discod", default=os.path.join(chaos.ROOT, ".build/release/discod"))
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="disco-failover-")
    try:
        disco = disco_rounds(args, root)
        etcd = etcd_rounds(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"failover: kill -9 of the leader, time to the first successful write, {args.rounds} rounds, 3 servers each")
    print(f"{'':10}{'median s':>10}{'worst s':>10}")
    for name, times in (("disco", disco), ("etcd", etcd)):
        print(f"{name:10}{statistics.median(times):>10.3f}{max(times):>10.3f}")


if __name__ == "__main__":
    main()
