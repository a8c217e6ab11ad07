#!/usr/bin/env python3
"""Acceptance: an unmodified Consul client library (py-consul, from PyPI) against a real 3-server
discod cluster, talking to a follower (so every write is forwarded to the leader).

Registers and deregisters services with checks, reads the catalog and health, runs a blocking
query that a later registration wakes, passes and fails a TTL check, runs an HTTP check against a
local endpoint, puts services and the client's node in maintenance, re-registers through
another server (one instance, no write), uses the KV store (CAS deletes, key
listings rolled up by a separator), and checks that DNS on every server answers what was
registered.

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install py-consul
    /tmp/venv/bin/python scripts/consul-client.py --discod .build/debug/discod

With --acl the servers enforce ACLs (default policy deny): the script bootstraps through the
library, makes a policy and a token with it, checks that a client without a token is refused
and one with the token sees itself, then runs every step above with that token.

Exit status 0 when every step passed; each failure is printed with the step's name.
"""
import argparse, http.server, json, os, subprocess, sys, tempfile, threading, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import chaos  # noqa: E402  (the cluster fixture: real discod processes on loopback)

import consul  # noqa: E402

PROPAGATION_WAIT_SECONDS = 10
# The agent node of a client on 127.0.0.1: Disco names a client's host node after its address.
CLIENT_NODE = "ip-127-0-0-1"

failures = []


def check(name, condition, detail=""):
    print(("ok    " if condition else "FAIL  ") + name + ("" if condition else f"  ({detail})"))
    if not condition:
        failures.append(name)


def dig(port, name, rtype="A"):
    out = subprocess.run(["dig", "@127.0.0.1", "-p", str(port), "+short", "+time=2", "+tries=1", name, rtype],
                         capture_output=True, text=True).stdout
    return sorted(line for line in out.splitlines() if line)


def eventually(predicate, seconds=PROPAGATION_WAIT_SECONDS):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


class Endpoint(http.server.BaseHTTPRequestHandler):
    """A service's health endpoint whose answer the script sets (Endpoint.code)."""
    code = 200

    def do_GET(self):
        body = f"status {Endpoint.code}".encode()
        self.send_response(Endpoint.code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


TOKEN = None  # with --acl, the token every request of the steps carries


def put_json(port, path, body):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), method="PUT",
                                     headers={"X-Consul-Token": TOKEN} if TOKEN else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status


def acl_steps(follower, leader):
    """Bootstrap, a policy and a token through the library; returns the token's SecretID."""
    anonymous = consul.Consul(host="127.0.0.1", port=follower.http)
    try:
        anonymous.kv.put("app/x", "1")
        check("without a token a write is refused", False, "accepted")
    except consul.ACLPermissionDenied:
        check("without a token a write is refused", True)
    root = anonymous.acl.bootstrap()
    check("acl.bootstrap returns a management token",
          [p["Name"] for p in root.get("Policies", [])] == ["global-management"] and root.get("SecretID"), root)
    try:
        anonymous.acl.bootstrap()
        check("a second bootstrap is refused", False, "accepted")
    except consul.ACLPermissionDenied:
        check("a second bootstrap is refused", True)
    admin = consul.Consul(host="127.0.0.1", port=leader.http, token=root["SecretID"])
    rules = {"service_prefix": {"": {"policy": "write"}}, "node_prefix": {"": {"policy": "write"}},
             "key_prefix": {"": {"policy": "write"}}}
    policy = admin.acl.policy.create("acceptance", rules=rules, description="what the steps below do")
    check("acl.policy.create", policy.get("Name") == "acceptance", policy)
    token = admin.acl.token.create(description="acceptance steps", policies_name=["acceptance"])
    check("acl.token.create returns a SecretID", bool(token.get("SecretID")), token)
    scoped = consul.Consul(host="127.0.0.1", port=follower.http, token=token["SecretID"])
    me = scoped.acl.token.read_self()
    check("acl.token.read_self through a follower", me.get("AccessorID") == token["AccessorID"], me)
    try:
        scoped.acl.token.list()
        check("the scoped token may not list tokens", False, "listed")
    except consul.ACLPermissionDenied:
        check("the scoped token may not list tokens", True)
    return token["SecretID"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--discod", default=os.path.join(chaos.ROOT, ".build/debug/discod"))
    parser.add_argument("--acl", action="store_true", help="servers enforce ACLs; the steps run with a token")
    args = parser.parse_args()
    if args.acl:
        os.environ.update({"DISCO_ACL_ENABLED": "true", "DISCO_ACL_DEFAULT_POLICY": "deny",
                           "DISCO_RAFT_CLUSTER_TOKEN": "consul-client-acceptance-secret"})
    args.nodes = 3
    root = tempfile.mkdtemp(prefix="disco-consul-client-")
    cluster = chaos.Cluster(args, root)
    try:
        for node in cluster.nodes:
            cluster.start(node)
        leader = cluster.leader()
        follower = next(n for n in cluster.nodes if n is not leader)
        if args.acl:
            global TOKEN
            TOKEN = acl_steps(follower, leader)
        c = consul.Consul(host="127.0.0.1", port=follower.http, token=TOKEN)

        # Register through the agent API, with a TTL check: out of DNS until it passes.
        c.agent.service.register("web", service_id="web-1", address="10.1.0.1", port=8080, tags=["v2"],
                                 meta={"team": "core"}, check=consul.Check.ttl("30s"))
        c.agent.service.register("web", service_id="web-2", address="10.1.0.2", port=8080, tags=["v1"])
        index, services = c.catalog.services()
        check("catalog.services lists web with its tags", sorted(services.get("web", [])) == ["v1", "v2"], services)
        check("X-Consul-Index is a positive integer", int(index) > 0, index)
        _, instances = c.catalog.service("web")
        check("catalog.service returns both instances", sorted(i["ServiceID"] for i in instances) == ["web-1", "web-2"],
              instances)
        _, tagged = c.catalog.service("web", tag="v2")
        check("catalog.service filters by tag", [i["ServiceID"] for i in tagged] == ["web-1"], tagged)
        _, passing = c.health.service("web", passing=True)
        check("health.service(passing) leaves out the unchecked-yet instance",
              [e["Service"]["ID"] for e in passing] == ["web-2"], passing)
        check("the follower's DNS answers only the healthy instance",
              eventually(lambda: dig(follower.dns, "web.service.disco.") == ["10.1.0.2"]), dig(follower.dns, "web.service.disco."))

        # A blocking query on web, woken by the TTL check passing.
        index, _ = c.health.service("web")
        result = {}

        def watch():
            result["index"], result["entries"] = c.health.service("web", index=index, wait="20s")
            result["at"] = time.time()

        watcher = threading.Thread(target=watch)
        watcher.start()
        time.sleep(0.5)
        check("a blocking query waits while nothing changes", watcher.is_alive())
        passed_at = time.time()
        c.agent.check.ttl_pass("service:web-1", notes="all good")
        watcher.join(timeout=10)
        check("the blocking query returns after the change", "at" in result and result["at"] >= passed_at, result)
        check("... with a higher index", int(result.get("index", 0)) > int(index), result.get("index"))
        entry = next((e for e in result.get("entries", []) if e["Service"]["ID"] == "web-1"), None)
        check("... and web-1's check passing", entry and entry["Checks"][0]["Status"] == "passing", entry)
        for node in cluster.nodes:
            check(f"server {node.id} answers both instances in DNS",
                  eventually(lambda: dig(node.dns, "web.service.disco.") == ["10.1.0.1", "10.1.0.2"]),
                  dig(node.dns, "web.service.disco."))
        check("SRV through a tag", dig(follower.dns, "_web._v2.service.disco.", "SRV") == ["1 1 8080 0a010001.addr.disco."],
              dig(follower.dns, "_web._v2.service.disco.", "SRV"))

        c.agent.check.ttl_fail("service:web-1", notes="down")
        _, checks = c.health.checks("web")
        check("ttl_fail turns the check critical", any(x["CheckID"] == "service:web-1" and x["Status"] == "critical"
                                                       for x in checks), checks)
        _, critical = c.health.state("critical")
        check("health.state('critical') lists it", [x["CheckID"] for x in critical] == ["service:web-1"], critical)
        check("DNS drops the failing instance", eventually(lambda: dig(follower.dns, "web.service.disco.") == ["10.1.0.2"]))

        # The catalog API registers external services on nodes of their own.
        c.catalog.register("db-host", "10.2.0.1", service={"Service": "db", "ID": "db-1", "Port": 5432})
        _, nodes = c.catalog.nodes()
        check("catalog.nodes has the external node", "db-host" in [n["Node"] for n in nodes], nodes)
        _, node = c.catalog.node("db-host")
        check("catalog.node shows its service", node and "db-1" in node["Services"], node)
        check("NODE.node answers", eventually(lambda: dig(follower.dns, "db-host.node.disco.") == ["10.2.0.1"]))
        c.catalog.deregister("db-host")
        check("catalog.deregister removes the node", eventually(lambda: dig(follower.dns, "db.service.disco.") == []))

        services = c.agent.services()
        check("agent.services is this client's host's node", sorted(services) == ["web-1", "web-2"], services)
        # The agent is the client's host, not the server: a client that fails over to another
        # server (here the leader) sees the same agent, and re-registering is a no-op.
        other = consul.Consul(host="127.0.0.1", port=leader.http, token=TOKEN)
        check("... whichever server it asks", sorted(other.agent.services()) == ["web-1", "web-2"], other.agent.services())
        before, _ = c.catalog.service("web")
        other.agent.service.register("web", service_id="web-2", address="10.1.0.2", port=8080, tags=["v1"])
        after, instances = c.catalog.service("web")
        check("re-registering through another server is one instance", len(instances) == 2, instances)
        check("... and a no-op (the service's index stays)", before == after, (before, after))
        check("the instances live on the client's node",
              {i["Node"] for i in instances} == {CLIENT_NODE}, [i["Node"] for i in instances])
        c.agent.service.deregister("web-2")
        _, instances = c.catalog.service("web")
        check("agent.service.deregister removes the instance", [i["ServiceID"] for i in instances] == ["web-1"], instances)

        # KV through the same client.
        check("kv.put", c.kv.put("app/color", "blue") is True)
        _, item = c.kv.get("app/color")
        check("kv.get", item and item["Value"] == b"blue", item)
        kv_index, _ = c.kv.get("app/color")
        kv_result = {}

        def watch_kv():
            kv_result["index"], kv_result["item"] = c.kv.get("app/color", index=kv_index, wait="20s")

        kv_watcher = threading.Thread(target=watch_kv)
        kv_watcher.start()
        time.sleep(0.3)
        c.kv.put("app/other", "x")
        time.sleep(0.3)
        check("a blocking kv.get sleeps through writes to other keys", kv_watcher.is_alive())
        c.kv.put("app/color", "green")
        kv_watcher.join(timeout=10)
        check("... and returns the key's new value", kv_result.get("item") and kv_result["item"]["Value"] == b"green",
              kv_result)
        _, stale = c.kv.get("app/color", consistency="stale")
        check("kv.get stale on a follower", eventually(lambda: c.kv.get("app/color", consistency="stale")[1]["Value"] == b"green"),
              stale)
        check("status.leader names a server", c.status.leader() == f"127.0.0.1:{leader.raft}", c.status.leader())

        # Every server's own node is in the catalog, as a Consul agent's is.
        check("catalog.nodes lists every server's node",
              eventually(lambda: {f"disco-{n.id}" for n in cluster.nodes} <= {x["Node"] for x in c.catalog.nodes()[1]}),
              c.catalog.nodes()[1])

        # KV: a DELETE with a stale ?cas= fails, with the current one succeeds; ?keys&separator= rolls up.
        c.kv.put("tree/a", "1")
        c.kv.put("tree/b/c", "2")
        c.kv.put("tree/b/d", "3")
        _, item = c.kv.get("tree/a")
        check("kv.delete with a stale cas returns False", c.kv.delete("tree/a", cas=item["ModifyIndex"] - 1) is False)
        check("... and leaves the key", c.kv.get("tree/a")[1] is not None)
        check("kv.delete with the current cas returns True", c.kv.delete("tree/a", cas=item["ModifyIndex"]) is True)
        c.kv.put("tree/a", "1")
        _, keys = c.kv.get("tree/", keys=True, separator="/")
        check("kv.get(keys, separator='/') rolls up", keys == ["tree/a", "tree/b/"], keys)

        # An HTTP check against a local endpoint: in DNS while 2xx, out on 500, back on 200.
        endpoint = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
        threading.Thread(target=endpoint.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{endpoint.server_address[1]}/health"
        # A lone instance is its service's whole set: at the default panic threshold (50%) a
        # failing one is still answered (fail open). Here it opts out, as Consul behaves.
        c.agent.service.register("api", service_id="api-1", address="10.3.0.1", port=80, meta={"panic-threshold": "0"},
                                 check=consul.Check.http(url, interval="1s", timeout="1s"))
        check("an HTTP-checked instance is answered once its check passes",
              eventually(lambda: all(dig(n.dns, "api.service.disco.") == ["10.3.0.1"] for n in cluster.nodes)))
        Endpoint.code = 500
        check("... and dropped on every server when it answers 500",
              eventually(lambda: all(dig(n.dns, "api.service.disco.") == [] for n in cluster.nodes)))
        _, checks = c.health.checks("api")
        check("... with the status code in the check's output", checks and "500" in checks[0]["Output"], checks)
        Endpoint.code = 200
        check("... and back on 200", eventually(lambda: dig(follower.dns, "api.service.disco.") == ["10.3.0.1"]))

        # Maintenance: Python sends enable=True; Consul accepts what Go's ParseBool does. The
        # instance is back at the default panic threshold: maintenance is not a failure, and
        # takes it out of DNS even when its service is in panic.
        c.agent.service.register("api", service_id="api-1", address="10.3.0.1", port=80,
                                 check=consul.Check.http(url, interval="1s", timeout="1s"))
        c.agent.service.maintenance("api-1", True, reason="upgrade")
        _, checks = c.health.checks("api")
        check("service maintenance adds the critical _service_maintenance check",
              any(x["CheckID"] == "_service_maintenance:api-1" and x["Status"] == "critical" for x in checks), checks)
        check("... which takes it out of DNS", eventually(lambda: dig(follower.dns, "api.service.disco.") == []))
        c.agent.service.maintenance("api-1", False)
        check("... until it is disabled", eventually(lambda: dig(follower.dns, "api.service.disco.") == ["10.3.0.1"]))
        c.agent.maintenance(True, reason="kernel update")
        _, node_checks = c.health.node(CLIENT_NODE)
        check("node maintenance adds _node_maintenance", any(x["CheckID"] == "_node_maintenance" for x in node_checks),
              node_checks)
        check("... which takes the node's instances out of DNS",
              eventually(lambda: dig(follower.dns, "api.service.disco.") == []))
        c.agent.maintenance(False)
        check("... until it is disabled", eventually(lambda: dig(follower.dns, "api.service.disco.") == ["10.3.0.1"]))
        endpoint.shutdown()

        # Documented fields are read in both spellings (Consul's agent decodes snake_case too).
        put_json(follower.http, "/v1/agent/service/register", {"name": "tagged", "enable_tag_override": True})
        check("snake_case enable_tag_override is read", c.agent.services().get("tagged", {}).get("EnableTagOverride") is True,
              c.agent.services().get("tagged"))
        c.agent.service.register("tagged2", enable_tag_override=True)
        check("EnableTagOverride is read", c.agent.services().get("tagged2", {}).get("EnableTagOverride") is True,
              c.agent.services().get("tagged2"))
    finally:
        cluster.stop_all()
    if failures:
        print(f"\n{len(failures)} step(s) failed; logs in {root}")
        return 1
    print("\nall steps passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
