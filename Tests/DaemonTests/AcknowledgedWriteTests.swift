import Foundation
import Raft
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Every answer to a write is a promise that survives a leader change: replays of the
/// schedules that broke it, on real discod processes with message-precise link faults.
@Suite("acknowledged writes across leader changes", .serialized)
struct AcknowledgedWriteTests {
    typealias Cluster = ClusterProcessTests.ClusterFixture

    /// A value set once by another thread.
    final class Slot<Value>: @unchecked Sendable {
        private let lock = NSLock()
        private var stored: Value?
        var value: Value? { lock.withLock { stored } }
        func set(_ value: Value) { lock.withLock { stored = value } }
    }

    static let registration = """
        {"Node": "web-host", "Address": "10.0.0.9",
         "Service": {"ID": "x1", "Service": "lost", "Address": "10.0.0.9", "Port": 80}}
        """
    static let deregistration = #"{"Node": "web-host", "ServiceID": "x1"}"#

    /// The instance IDs of service `lost` in `node`'s catalog (a stale read: what it has applied).
    func instances(on node: ClusterProcessTests.Node, consistency: String = "stale") -> [String]? {
        guard let reply = http("GET", port: node.httpPort, "/v1/catalog/service/lost?\(consistency)"), reply.status == 200,
              let list = json(reply) as? [[String: Any]] else { return nil }
        return list.compactMap { $0["ServiceID"] as? String }
    }

    /// Issue 11, scenario 1. Leader L1 acknowledges `deregister x1` with only F2 holding the
    /// entry, and dies before F2 learns that it committed. F2 is elected, but cannot commit its
    /// own no-op (its appends to F1 are lost), so its catalog still holds x1. A client then
    /// registers x1 through F2: against F2's catalog that changes nothing. Answered at once, the
    /// registration would be lost as soon as F2 commits and applies L1's deregister. It must
    /// instead wait until F2 has committed an entry of its term and applied everything before it,
    /// and then go through the log.
    @Test func aNoOpWriteOnANewLeaderWaitsForItsTerm() throws {
        let cluster = try Cluster(size: 3, proxiedLinks: true)
        let first = try #require(cluster.leader())
        let others = cluster.nodes.filter { $0 !== first }
        let (f1, f2) = (others[0], others[1])

        #expect(http("PUT", port: first.httpPort, "/v1/catalog/register", body: Self.registration)?.body == "true")
        for node in others { #expect(waitUntil { instances(on: node) == ["x1"] }, "node \(node.id)") }

        // F1 hears nothing more from L1; F2 receives what L1 sends up to the deregistration's
        // entry, then nothing. (Not "the next entries": an entry a server proposed by itself,
        // e.g. the check runners of a cluster just formed, once passed first under CI load, and
        // the deregistration then never committed.)
        cluster.link(first, f1).setPolicy(PeerLinkProxy.dropAll)
        let entriesPassed = Slot<Bool>()
        cluster.link(first, f2).setPolicy { message in
            if entriesPassed.value == true { return .drop }
            // The deregistration names the node; the registration also has its address.
            if message.carriesEntry(containing: "web-host", excluding: "10.0.0.9") { entriesPassed.set(true) }
            return .forward
        }
        // Once F2 leads, its log never reaches F1 (votes and heartbeats still do).
        cluster.link(f2, f1).setPolicy { $0.movesLog ? .drop : .forward }

        let deregistered = http("PUT", port: first.httpPort, "/v1/catalog/deregister", body: Self.deregistration)
        #expect(deregistered?.status == 200 && deregistered?.body == "true", "\(String(describing: deregistered))")
        cluster.kill9(first)

        // Only F2 can win (its log is longer); it leads without being able to commit.
        let second = try #require(cluster.leader())
        try #require(second === f2, "F2 (\(f2.id)) should lead, not \(second.id)")
        try #require(instances(on: f2) == ["x1"], "the scenario needs F2 to still hold x1")

        let reply = Slot<HTTPReply?>()
        let port = f2.httpPort
        Thread { reply.set(http("PUT", port: port, "/v1/catalog/register", body: Self.registration)) }.start()
        usleep(800_000)
        #expect(reply.value == nil, "a no-op write was acknowledged before the new leader committed an entry of its term")

        cluster.link(f2, f1).setPolicy(PeerLinkProxy.forwardAll)
        #expect(waitUntil(seconds: 10) { reply.value != nil })
        let registered = try #require(reply.value ?? nil)
        #expect(registered.status == 200 && registered.body == "true", "\(registered)")
        // The acknowledged registration is there, after the deregister that preceded it.
        #expect(instances(on: f2, consistency: "consistent") == ["x1"])
        #expect(waitUntil { instances(on: f1) == ["x1"] })
    }
}

extension AcknowledgedWriteTests {
    /// Issue 11.3: a proposal pending on a leader that is cut off, while the others move on and
    /// compact their logs, is covered by the snapshot the old leader installs when it is back.
    /// Its outcome must then be reported (unknown: retry), not left hanging for ever.
    @Test func proposalsCoveredByAnInstalledSnapshotResolve() throws {
        let cluster = try Cluster(size: 3, environment: ["DISCO_SNAPSHOT_ENTRIES": "20"], proxiedLinks: true)
        let old = try #require(cluster.leader())
        let others = cluster.nodes.filter { $0 !== old }
        for other in others {
            cluster.link(old, other).setPolicy(PeerLinkProxy.dropAll)
            cluster.link(other, old).setPolicy(PeerLinkProxy.dropAll)
        }
        let reply = Slot<HTTPReply?>()
        let port = old.httpPort
        Thread { reply.set(http("PUT", port: port, "/v1/kv/orphan", body: "1", timeoutSeconds: 30)) }.start()

        // The others elect a leader between them and write well past a snapshot.
        var next: ClusterProcessTests.Node?
        #expect(waitUntil {
            next = others.first { node in
                http("GET", port: node.httpPort, "/v1/status/leader")?.body == "\"127.0.0.1:\(node.raftPort)\""
            }
            return next != nil
        })
        let leader = try #require(next)
        for i in 0..<60 { #expect(http("PUT", port: leader.httpPort, "/v1/kv/k\(i)", body: "\(i)")?.body == "true") }
        #expect(reply.value == nil, "the cut-off proposal cannot have an outcome yet")

        for other in others {
            cluster.link(old, other).setPolicy(PeerLinkProxy.forwardAll)
            cluster.link(other, old).setPolicy(PeerLinkProxy.forwardAll)
        }
        let process = try #require(old.process)
        #expect(process.waitForLog("snapshot installed"), "\(process.stderr.suffix(2000))")
        #expect(waitUntil(seconds: 5) { reply.value != nil })
        let answer = try #require(reply.value ?? nil)
        #expect(answer.status == 503 && answer.body.contains("outcome is unknown"), "\(answer)")
        #expect(cluster.eventually(old, "k59", "59"))
    }
}

/// A server whose storage fails stops claiming anything: it must not keep leading on frozen state.
@Suite("storage failure on a discod cluster", .serialized)
struct StorageFailureProcessTests {
    typealias Cluster = ClusterProcessTests.ClusterFixture

    /// Takes every byte `directory`'s file system has left.
    func fill(_ directory: URL) {
        let path = directory.appendingPathComponent("filler").path
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        defer { close(fd) }
        let chunk = [UInt8](repeating: 0xAB, count: 64 << 10)
        while write(fd, chunk, chunk.count) > 0 {}
        var byte: UInt8 = 0
        while write(fd, &byte, 1) > 0 {}
    }

    @Test func aLeaderWhoseDiskIsFullStopsLeadingAndExits() throws {
        let cluster = try Cluster(size: 3, dataMountBytes: 64 << 20)
        let leader = try #require(cluster.leader())
        let process = try #require(leader.process)
        #expect(http("PUT", port: leader.httpPort, "/v1/kv/before", body: "1")?.body == "true")

        fill(leader.data)
        // The next entries cannot be made durable on the leader: it must stop, not go on leading.
        let value = String(repeating: "v", count: 16 << 10)
        for i in 0..<50 where process.process.isRunning {
            _ = http("PUT", port: leader.httpPort, "/v1/kv/full-\(i)", body: value)
        }
        #expect(process.waitForExit() == 75, "\(process.stderr.suffix(2000))")
        #expect(process.stderr.contains("Raft storage failed"))
        leader.process = nil

        // The others elect a leader among themselves and go on.
        let next = try #require(cluster.leader())
        #expect(next !== leader)
        #expect(http("PUT", port: next.httpPort, "/v1/kv/after", body: "2")?.body == "true")
        #expect(http("GET", port: next.httpPort, "/v1/kv/before?raw")?.body == "1")
    }
}
