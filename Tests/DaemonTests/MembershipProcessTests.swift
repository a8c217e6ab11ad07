import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Membership changes with real discod processes: a fourth server joins with --join (through a
/// follower, catching up from a snapshot) and becomes a voter; a dead member is removed and the
/// rest keep a quorum; leadership moves to a named server.
@Suite("discod membership", .serialized)
struct MembershipProcessTests {
    typealias Cluster = ClusterProcessTests.ClusterFixture
    typealias Node = ClusterProcessTests.Node

    func servers(_ node: Node) -> [[String: Any]] {
        guard let reply = http("GET", port: node.httpPort, "/v1/operator/raft/configuration"), reply.status == 200 else { return [] }
        return ((try? JSONSerialization.jsonObject(with: Data(reply.body.utf8))) as? [String: Any])?["Servers"] as? [[String: Any]] ?? []
    }

    func waitUntil(seconds: Double = 20, _ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if condition() { return true }
            usleep(100_000)
        }
        return false
    }

    func keys(_ node: Node, _ prefix: String) -> [String] {
        guard let reply = http("GET", port: node.httpPort, "/v1/kv/\(prefix)?keys&stale"), reply.status == 200 else { return [] }
        return (try? JSONSerialization.jsonObject(with: Data(reply.body.utf8)) as? [String]) ?? []
    }

    @Test func aJoiningServerBecomesAVoterAndARemovedOneLeavesTheQuorumToTheRest() throws {
        let cluster = try Cluster(size: 3, environment: ["DISCO_SNAPSHOT_ENTRIES": "40"])
        let leader = try #require(cluster.leader())
        for i in 0..<100 { #expect(http("PUT", port: leader.httpPort, "/v1/kv/data/\(i)", body: "v\(i)")?.body == "true") }
        #expect(leader.process?.waitForLog("snapshot taken, log compacted") == true)

        // Server 4, empty data directory, joins through a follower (which points it to the leader).
        let follower = try #require(cluster.nodes.first { $0.id != leader.id })
        let ports = freePorts(6).filter { port in !cluster.nodes.contains { $0.raftPort == port || $0.httpPort == port } }
        let newcomer = Node(id: 4, root: cluster.directory.url, raftPort: ports[0], httpPort: ports[1])
        let process = try DiscodProcess(arguments: [
            "--zones", cluster.zones.path, "--dns", "127.0.0.1:0", "--workers", "1", "--node-id", "4",
            "--raft", "127.0.0.1:\(newcomer.raftPort)", "--http", "127.0.0.1:\(newcomer.httpPort)",
            "--data-dir", newcomer.data.path, "--join", "127.0.0.1:\(follower.httpPort)", "--log-level", "info",
        ])
        try process.waitForStart()
        newcomer.process = process
        #expect(process.waitForLog("joined the cluster as a learner", timeoutSeconds: 15), "\(process.stderr)")

        // Promoted to voter once caught up; it has every write, and takes new ones.
        #expect(waitUntil { servers(leader).contains { $0["ID"] as? String == "4" && $0["Voter"] as? Bool == true } },
                "\(servers(leader))")
        #expect(leader.process?.stderr.contains("promoting a caught-up learner to voter") == true)
        #expect(waitUntil { keys(newcomer, "data/").count == 100 }, "\(keys(newcomer, "data/").count) keys")
        // The leader had compacted its log, so the newcomer was sent the snapshot.
        #expect(process.stderr.contains("snapshot installed"), "\(process.stderr)")
        #expect(http("PUT", port: leader.httpPort, "/v1/kv/data/joined", body: "yes")?.body == "true")
        #expect(cluster.eventually(newcomer, "data/joined", "yes"))
        // Every server lists the newcomer's address (replicated, not configured).
        for node in cluster.nodes {
            #expect(waitUntil(seconds: 5) { servers(node).contains { $0["Address"] as? String == "127.0.0.1:\(newcomer.raftPort)" } },
                    "node \(node.id)")
        }
        let peers = http("GET", port: follower.httpPort, "/v1/status/peers")?.body ?? ""
        #expect(peers.contains("127.0.0.1:\(newcomer.raftPort)"), "\(peers)")

        // A dead follower is removed: three voters remain...
        let dead = try #require(cluster.nodes.first { $0.id != leader.id })
        cluster.kill9(dead)
        var run = try discoctl(["members", "remove", "\(dead.id)"], http: leader.httpPort)
        #expect(run.status == 0 && run.stdout == "removed \(dead.id)\n", "\(run)")
        #expect(servers(leader).count == 3 && !servers(leader).contains { $0["ID"] as? String == "\(dead.id)" })
        // ...so with one more of them down, two of three are still a quorum.
        let other = try #require(cluster.nodes.first { $0.id != leader.id && $0.id != dead.id })
        cluster.kill9(other)
        #expect(http("PUT", port: leader.httpPort, "/v1/kv/data/after-removal", body: "ok")?.body == "true")
        #expect(cluster.eventually(newcomer, "data/after-removal", "ok"))

        // Removing a server that is not a member: one line, exit 1.
        run = try discoctl(["members", "remove", "\(dead.id)"], http: leader.httpPort)
        #expect(run.status == 1 && run.stderr == "discoctl: discod answered 400: server \(dead.id) is not a member\n", "\(run)")

        // The newcomer restarts from its data directory (with --join still given) as a member.
        newcomer.process?.stop()
        let again = try DiscodProcess(arguments: process.process.arguments ?? [])
        try again.waitForStart()
        newcomer.process = again
        #expect(again.waitForLog("already a member of the cluster; not joining again"))
        // While the newcomer was down the leader had only itself of three voters: CheckQuorum
        // made it step down, so the write waits for the election that follows the restart.
        #expect(waitUntil(seconds: 15) { http("PUT", port: leader.httpPort, "/v1/kv/data/restarted", body: "r")?.body == "true" })
        #expect(cluster.eventually(newcomer, "data/restarted", "r"))
    }

    @Test func leadershipMovesToANamedServer() throws {
        let cluster = try Cluster(size: 3)
        let leader = try #require(cluster.leader())
        #expect(http("PUT", port: leader.httpPort, "/v1/kv/a", body: "1")?.body == "true")
        let target = try #require(cluster.nodes.first { $0.id != leader.id })

        // Asked through a follower: discoctl follows it to the leader.
        var run = try discoctl(["leader", "transfer", "\(target.id)"], http: target.httpPort)
        #expect(run.status == 0 && run.stdout == "leader is now \(target.id) (127.0.0.1:\(target.raftPort))\n", "\(run)")
        #expect(cluster.leader()?.id == target.id)
        #expect(http("PUT", port: target.httpPort, "/v1/kv/a", body: "2")?.body == "true")

        // Without an id: the most caught-up other voter.
        run = try discoctl(["leader", "transfer", "--json"], http: target.httpPort)
        #expect(run.status == 0, "\(run)")
        let next = try #require(cluster.leader())
        #expect(next.id != target.id)

        // members shows the last contact; a bad target is one line and exit 1.
        run = try discoctl(["members"], http: next.httpPort)
        #expect(run.stdout.hasPrefix("ID") && run.stdout.contains("CONTACT") && run.stdout.contains("ms"), "\(run)")
        run = try discoctl(["leader", "transfer", "9"], http: next.httpPort)
        #expect(run.status == 1 && run.stderr == "discoctl: discod answered 400: leader transfer refused: server 9 is not a voter\n", "\(run)")
        run = try discoctl(["leader"], http: next.httpPort)
        #expect(run.status == 0 && run.stdout == "127.0.0.1:\(next.raftPort)\n", "\(run)")
    }
}
