import Foundation
import Testing

/// ACLs end to end on a 3-server cluster of real discod processes (issue 14): every endpoint
/// class with no token, a read token, a write token scoped to a prefix and a management token.
@Suite("ACLs on a discod cluster", .serialized)
struct ACLProcessTests {
    typealias Cluster = ClusterProcessTests.ClusterFixture

    static let environment = ["DISCO_ACL_ENABLED": "true", "DISCO_ACL_DEFAULT_POLICY": "deny",
                              "DISCO_RAFT_CLUSTER_TOKEN": "a-secret-cluster-token"]

    func call(_ method: String, _ node: ClusterProcessTests.Node, _ path: String, token: String?, body: String = "",
              bearer: Bool = false) -> HTTPReply? {
        let headers: [(String, String)] = token.map { bearer ? [("Authorization", "Bearer \($0)")] : [("X-Consul-Token", $0)] } ?? []
        return http(method, port: node.httpPort, path, body: body, headers: headers)
    }

    func object(_ reply: HTTPReply?) -> [String: Any] { json(reply) as? [String: Any] ?? [:] }

    /// Creates a policy and a token holding it; returns the token's SecretID.
    func token(_ rules: String, named name: String, on node: ClusterProcessTests.Node, management: String,
               extra: String = "") throws -> String {
        let policy = call("PUT", node, "/v1/acl/policy", token: management,
                          body: try jsonText(["Name": name, "Rules": rules]))
        try #require(policy?.status == 200, "policy \(name): \(policy?.body ?? "no reply")")
        let made = call("PUT", node, "/v1/acl/token", token: management,
                        body: "{\"Description\": \"\(name)\", \"Policies\": [{\"Name\": \"\(name)\"}]\(extra)}")
        try #require(made?.status == 200, "token \(name): \(made?.body ?? "no reply")")
        return try #require(object(made)["SecretID"] as? String)
    }

    func jsonText(_ value: [String: String]) throws -> String {
        String(decoding: try JSONSerialization.data(withJSONObject: value), as: UTF8.self)
    }

    @Test func everyEndpointClassIsAllowedOrRefusedByItsToken() throws {
        let cluster = try Cluster(size: 3, environment: Self.environment)
        let leader = try #require(cluster.leader())
        let follower = try #require(cluster.nodes.first { $0.id != leader.id })

        // Before bootstrap: the anonymous token under default deny may do nothing.
        #expect(call("PUT", leader, "/v1/kv/a", token: nil, body: "x")?.status == 403)
        #expect(call("GET", leader, "/v1/snapshot", token: nil)?.status == 403)
        #expect(call("GET", follower, "/v1/acl/tokens", token: nil)?.status == 403)

        // Bootstrap through a follower (forwarded to the leader), once.
        let boot = call("PUT", follower, "/v1/acl/bootstrap", token: nil)
        #expect(boot?.status == 200, "\(boot?.body ?? "no reply")")
        let management = try #require(object(boot)["SecretID"] as? String)
        let again = call("PUT", leader, "/v1/acl/bootstrap", token: nil)
        #expect(again?.status == 403)
        #expect(again?.body.contains("ACL bootstrap no longer allowed") == true)

        let reader = try token("key_prefix \"\" { policy = \"read\" }\nservice_prefix \"\" { policy = \"read\" }\nnode_prefix \"\" { policy = \"read\" }",
                               named: "read-all", on: leader, management: management)
        let app = try token("""
            key_prefix "app/" { policy = "write" }
            service "web" { policy = "write" }
            node_prefix "" { policy = "read" }
            """, named: "app-writer", on: follower, management: management)

        // A token made a moment ago works on every server (a follower that has not applied it
        // yet forwards to the leader).
        for node in cluster.nodes {
            #expect(call("PUT", node, "/v1/kv/app/\(node.id)", token: app, body: "v")?.status == 200)
        }

        // KV.
        #expect(call("PUT", leader, "/v1/kv/shared/k", token: management, body: "m")?.status == 200)
        #expect(call("GET", leader, "/v1/kv/shared/k?raw", token: reader)?.body == "m")
        #expect(call("PUT", leader, "/v1/kv/shared/k", token: reader, body: "r")?.status == 403)
        let refused = call("PUT", follower, "/v1/kv/shared/k", token: app, body: "a")
        #expect(refused?.status == 403)
        #expect(refused?.body.contains("lacks permission 'key:write' on \"shared/k\"") == true)
        #expect(call("GET", leader, "/v1/kv/shared/k", token: app)?.status == 403)
        let listed = call("GET", leader, "/v1/kv/?keys", token: app)
        #expect((json(listed) as? [String])?.sorted() == ["app/1", "app/2", "app/3"], "filtered to what the token may read")
        #expect(call("GET", leader, "/v1/kv/?recurse", token: app)?.headers["x-consul-results-filtered-by-acls"] == "true")
        #expect(call("DELETE", leader, "/v1/kv/?recurse", token: app)?.status == 403)
        #expect(call("DELETE", leader, "/v1/kv/?recurse", token: nil)?.status == 403)
        #expect(call("GET", leader, "/v1/kv/shared/k?raw", token: management)?.body == "m", "a refused delete changed nothing")
        #expect(call("DELETE", leader, "/v1/kv/app/?recurse", token: app)?.status == 200)

        // Registry writes: service write for the service, reads filtered.
        let web = "{\"Name\": \"web\", \"ID\": \"web1\", \"Port\": 80, \"Address\": \"10.0.0.1\"}"
        let db = "{\"Name\": \"db\", \"ID\": \"db1\", \"Port\": 5432, \"Address\": \"10.0.0.2\"}"
        #expect(call("PUT", follower, "/v1/agent/service/register", token: app, body: web)?.status == 200)
        #expect(call("PUT", follower, "/v1/agent/service/register", token: app, body: db)?.status == 403)
        #expect(call("PUT", follower, "/v1/agent/service/register", token: nil, body: db)?.status == 403)
        #expect(call("PUT", follower, "/v1/agent/service/register", token: management, body: db)?.status == 200)
        let catalogRegister = "{\"Node\": \"ext1\", \"Address\": \"10.0.0.9\", \"Service\": {\"Service\": \"web\", \"Port\": 80}}"
        #expect(call("PUT", leader, "/v1/catalog/register", token: app, body: catalogRegister)?.status == 403,
                "a new node needs node write")
        let names = { (token: String?) in Set((self.object(self.call("GET", leader, "/v1/catalog/services", token: token))).keys) }
        #expect(names(reader).isSuperset(of: ["web", "db"]))
        #expect(names(app).contains("web") && !names(app).contains("db"))
        #expect(names(nil).isEmpty)
        #expect((json(call("GET", leader, "/v1/health/service/db", token: app)) as? [Any])?.isEmpty == true)
        #expect((json(call("GET", leader, "/v1/health/service/db", token: reader)) as? [Any])?.count == 1)
        #expect(call("PUT", follower, "/v1/agent/service/deregister/db1", token: app)?.status == 403)
        #expect((json(call("GET", leader, "/v1/catalog/service/db", token: reader)) as? [Any])?.count == 1,
                "the refused deregistration changed nothing")

        // Cluster endpoints: snapshot and ACL management need management, operator its rule.
        #expect(call("GET", leader, "/v1/snapshot", token: reader)?.status == 403)
        #expect(call("GET", leader, "/v1/snapshot", token: management, bearer: true)?.status == 200)
        #expect(call("GET", leader, "/v1/operator/raft/configuration", token: reader)?.status == 403)
        #expect(call("GET", leader, "/v1/operator/raft/configuration?token=\(management)", token: nil)?.status == 200)
        #expect(call("DELETE", leader, "/v1/operator/raft/peer?id=\(follower.id)", token: app)?.status == 403)
        #expect(call("GET", leader, "/v1/acl/tokens", token: reader)?.status == 403)
        #expect(call("PUT", leader, "/v1/internal/catalog/propose", token: management, body: "x")?.status != 403,
                "management may; a client without it may not")
        #expect(call("PUT", leader, "/v1/internal/catalog/propose", token: app, body: "x")?.status == 403)
        // A client cannot pose as a server: forwarding headers without the servers' token, or
        // with a wrong one, are refused.
        let posing = http("PUT", port: leader.httpPort, "/v1/kv/app/posed", body: "p",
                          headers: [("X-Consul-Token", app), ("X-Disco-Forwarded", "1"), ("X-Disco-Client-Address", "10.9.9.9")])
        #expect(posing?.status == 403)
        #expect(http("PUT", port: leader.httpPort, "/v1/kv/app/posed", body: "p",
                     headers: [("X-Consul-Token", management), ("X-Disco-Server-Token", "guess")])?.status == 403)

        // Every server's own node registered itself through the leader's internal endpoint,
        // with the servers' token.
        #expect(waitUntil {
            let nodes = (json(call("GET", leader, "/v1/catalog/nodes", token: reader)) as? [[String: Any]]) ?? []
            return Set(nodes.compactMap { $0["Node"] as? String }).isSuperset(of: ["disco-1", "disco-2", "disco-3"])
        })

        // The anonymous token can be given policies: requests without a token then read.
        let readAll = try #require(object(call("GET", leader, "/v1/acl/policy/name/read-all", token: management))["ID"] as? String)
        #expect(call("PUT", leader, "/v1/acl/token/00000000-0000-0000-0000-000000000002", token: management,
                     body: "{\"Policies\": [{\"ID\": \"\(readAll)\"}]}")?.status == 200)
        #expect(call("GET", leader, "/v1/kv/shared/k?raw", token: nil)?.body == "m")
        #expect(call("PUT", leader, "/v1/kv/shared/k", token: nil, body: "x")?.status == 403)
        #expect(call("PUT", leader, "/v1/acl/token/00000000-0000-0000-0000-000000000002", token: management,
                     body: "{\"Policies\": []}")?.status == 200)
        #expect(call("GET", leader, "/v1/kv/shared/k?raw", token: nil)?.status == 403)

        // Unknown, expired and self.
        #expect(call("GET", leader, "/v1/kv/shared/k", token: "not-a-token")?.body.contains("ACL not found") == true)
        let short = try token("key_prefix \"\" { policy = \"read\" }", named: "short", on: leader, management: management,
                              extra: ", \"ExpirationTTL\": \"1s\"")
        #expect(call("GET", leader, "/v1/kv/shared/k", token: short)?.status == 200)
        usleep(1_300_000)
        #expect(call("GET", leader, "/v1/kv/shared/k", token: short)?.status == 403)
        let me = object(call("GET", follower, "/v1/acl/token/self", token: app))
        #expect(me["SecretID"] as? String == app)
        #expect((me["Policies"] as? [[String: Any]])?.first?["Name"] as? String == "app-writer")

        // Bad input: a malformed policy is refused naming the rule and field; nothing is made.
        let before = (json(call("GET", leader, "/v1/acl/policies", token: management)) as? [Any])?.count
        let bad = call("PUT", leader, "/v1/acl/policy", token: management,
                       body: try jsonText(["Name": "bad", "Rules": "service \"web\" { policy = \"rw\" }"]))
        #expect(bad?.status == 400)
        #expect(bad?.body.contains("Rules: line 1: service \"web\": policy: expected read, write or deny, got \"rw\"") == true)
        #expect((json(call("GET", leader, "/v1/acl/policies", token: management)) as? [Any])?.count == before)

        // Deleting a token revokes it everywhere.
        let accessor = try #require(me["AccessorID"] as? String)
        #expect(call("DELETE", leader, "/v1/acl/token/\(accessor)", token: management)?.status == 200)
        #expect(waitUntil { cluster.nodes.allSatisfy { self.call("GET", $0, "/v1/kv/app/x?stale", token: app)?.status == 403 } })
    }

    @Test func discoctlBootstrapsAndTakesItsTokenFromFlagFileOrEnvironment() throws {
        let cluster = try Cluster(size: 1, environment: Self.environment)
        let node = try #require(cluster.leader())
        let boot = try discoctl(["acl", "bootstrap", "--json"], http: node.httpPort)
        #expect(boot.status == 0, "\(boot.stderr)")
        let management = try #require((try? JSONSerialization.jsonObject(with: Data(boot.stdout.utf8)) as? [String: Any])?["SecretID"] as? String)
        let refused = try discoctl(["kv", "put", "a", "1"], http: node.httpPort)
        #expect(refused.status == 1)
        #expect(refused.stderr.contains("403: Permission denied"))
        #expect(try discoctl(["kv", "put", "a", "1"], http: node.httpPort, environment: ["DISCO_HTTP_TOKEN": management]).status == 0)
        #expect(try discoctl(["kv", "get", "a"], http: node.httpPort, environment: ["CONSUL_HTTP_TOKEN": management]).stdout == "1\n")
        let file = cluster.directory.url.appendingPathComponent("token")
        try (management + "\n").write(to: file, atomically: true, encoding: .utf8)
        #expect(try discoctl(["kv", "get", "a", "--token-file", file.path], http: node.httpPort).stdout == "1\n")
        #expect(try discoctl(["kv", "get", "a"], http: node.httpPort, environment: ["DISCO_HTTP_TOKEN_FILE": file.path]).status == 0)
        let env = ["DISCO_HTTP_TOKEN": management]
        let bad = try discoctl(["acl", "policy", "create", "--name", "x", "--rules", "key_prefix \"\" { policy = \"writ\" }"],
                               http: node.httpPort, environment: env)
        #expect(bad.status == 1)
        #expect(bad.stderr.contains("400: Rules: line 1: key_prefix \"\": policy: expected read, write, list or deny, got \"writ\""))
        #expect(try discoctl(["acl", "policy", "create", "--name", "readers", "--rules", "key_prefix \"\" { policy = \"read\" }"],
                             http: node.httpPort, environment: env).status == 0)
        let made = try discoctl(["acl", "token", "create", "--description", "ro", "--policy", "readers", "--json"],
                                http: node.httpPort, environment: env)
        let reader = try #require((try? JSONSerialization.jsonObject(with: Data(made.stdout.utf8)) as? [String: Any])?["SecretID"] as? String)
        #expect(try discoctl(["kv", "get", "a", "--token", reader], http: node.httpPort).stdout == "1\n")
        #expect(try discoctl(["kv", "put", "a", "2", "--token", reader], http: node.httpPort).status == 1)
        let list = try discoctl(["acl", "token", "list"], http: node.httpPort, environment: env)
        #expect(list.stdout.contains("ro") && list.stdout.contains("readers") && !list.stdout.contains(reader))
    }

    @Test func theACLStateSurvivesARestartAndASnapshot() throws {
        // Snapshots every 20 entries, so the restarted server's ACLs come from a snapshot and the log.
        let cluster = try Cluster(size: 3, environment: Self.environment.merging(["DISCO_SNAPSHOT_ENTRIES": "20"]) { $1 })
        let leader = try #require(cluster.leader())
        let management = try #require(object(call("PUT", leader, "/v1/acl/bootstrap", token: nil))["SecretID"] as? String)
        let writer = try token("key_prefix \"\" { policy = \"write\" }", named: "kv-writer", on: leader, management: management)
        for i in 0..<40 { #expect(call("PUT", leader, "/v1/kv/k\(i)", token: writer, body: "\(i)")?.status == 200) }
        let follower = try #require(cluster.nodes.first { $0.id != leader.id })
        cluster.kill9(follower)
        try cluster.start(follower)
        #expect(waitUntil { self.call("GET", follower, "/v1/kv/k39?stale&raw", token: writer)?.body == "39" })
        #expect(call("GET", follower, "/v1/kv/k1?stale", token: nil)?.status == 403)
        #expect(call("GET", follower, "/v1/acl/token/self?stale", token: management)?.status == 200)
    }
}
