import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Snapshots with real discod processes: compaction, a follower that must install the leader's
/// snapshot and is killed with -9 in the middle of it, and discoctl snapshot save/restore.
@Suite("discod snapshots", .serialized)
struct SnapshotProcessTests {
    typealias Cluster = ClusterProcessTests.ClusterFixture

    /// Keys under `prefix` that a stale read on `node` lists.
    func keys(_ node: ClusterProcessTests.Node, _ prefix: String) -> [String] {
        guard let reply = http("GET", port: node.httpPort, "/v1/kv/\(prefix)?keys&stale"), reply.status == 200 else { return [] }
        return (try? JSONSerialization.jsonObject(with: Data(reply.body.utf8)) as? [String]) ?? []
    }

    func waitForKeys(_ node: ClusterProcessTests.Node, _ prefix: String, count: Int, seconds: Double = 20) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if keys(node, prefix).count >= count { return true }
            usleep(100_000)
        }
        return false
    }

    @Test func aFollowerKilledDuringASnapshotInstallConvergesWithEveryAcknowledgedWrite() throws {
        let cluster = try Cluster(size: 3, environment: ["DISCO_SNAPSHOT_ENTRIES": "50"])
        let leader = try #require(cluster.leader())
        #expect(http("PUT", port: leader.httpPort, "/v1/kv/k/first", body: "1")?.body == "true")
        let follower = try #require(cluster.nodes.first { $0.id != leader.id })
        #expect(cluster.eventually(follower, "k/first", "1"))

        // The follower misses enough writes that the leader compacts them away.
        cluster.kill9(follower)
        var acknowledged: [String: String] = ["k/first": "1"]
        for i in 0..<300 {
            let key = "k/\(i)", value = "value-\(i)"
            if http("PUT", port: leader.httpPort, "/v1/kv/\(key)", body: value)?.body == "true" { acknowledged[key] = value }
        }
        #expect(acknowledged.count == 301)
        #expect(leader.process?.waitForLog("snapshot taken, log compacted") == true)
        // Long enough that the leader's transport gives up the messages it queued for the
        // follower (past its reconnect backoff ramp): the follower then needs the snapshot.
        usleep(3_000_000)

        // Restarted, it is sent the snapshot; kill -9 it while it installs.
        try cluster.start(follower, environment: ["DISCO_FAILPOINT_SNAPSHOT_INSTALL_PAUSE_MS": "4000"])
        let installing = try #require(follower.process)
        #expect(installing.waitForLog("installing snapshot", timeoutSeconds: 15), "\(installing.stderr)")
        cluster.kill9(follower)

        // Restarted once more (no failpoint): raft.db kept the snapshot, so kv.db is restored from
        // it at start, and the follower converges with every acknowledged write.
        try cluster.start(follower)
        let restarted = try #require(follower.process)
        #expect(waitForKeys(follower, "k/", count: acknowledged.count), "\(keys(follower, "k/").count) keys")
        #expect(restarted.stderr.contains("state machine behind the snapshot: restoring it"), "\(restarted.stderr)")
        for (key, value) in acknowledged.sorted(by: { $0.key < $1.key }) where key.hasSuffix("7") || key == "k/first" {
            #expect(http("GET", port: follower.httpPort, "/v1/kv/\(key)?stale&raw")?.body == value, "\(key)")
        }
        #expect(Set(keys(follower, "k/")) == Set(acknowledged.keys))
        // And it takes part in new writes.
        #expect(http("PUT", port: leader.httpPort, "/v1/kv/k/last", body: "z")?.body == "true")
        #expect(cluster.eventually(follower, "k/last", "z"))
    }

    @Test func discoctlSavesAndRestoresASnapshotAndRefusesATruncatedFile() throws {
        let cluster = try Cluster(size: 3)
        let leader = try #require(cluster.leader())
        let follower = try #require(cluster.nodes.first { $0.id != leader.id })
        for i in 0..<5 { #expect(http("PUT", port: leader.httpPort, "/v1/kv/app/\(i)", body: "saved-\(i)")?.body == "true") }

        // Saved through a follower: discoctl follows X-Disco-Leader to the leader.
        let file = cluster.directory.url.appendingPathComponent("cluster.snap").path
        var run = try discoctl(["snapshot", "save", file], http: follower.httpPort)
        #expect(run.status == 0 && run.stdout.hasPrefix("saved ") && run.stderr.isEmpty, "\(run)")
        let saved = try Data(contentsOf: URL(fileURLWithPath: file))
        #expect(saved.prefix(8) == Data("DISCOSNP".utf8))

        // Changes after the save.
        #expect(http("PUT", port: leader.httpPort, "/v1/kv/app/0", body: "changed")?.body == "true")
        #expect(http("PUT", port: leader.httpPort, "/v1/kv/app/new", body: "new")?.body == "true")

        // A truncated copy: one line naming the file, exit 1, nothing changed.
        let truncated = cluster.directory.url.appendingPathComponent("truncated.snap").path
        try saved.prefix(saved.count - 100).write(to: URL(fileURLWithPath: truncated))
        run = try discoctl(["snapshot", "restore", truncated], http: leader.httpPort)
        #expect(run.status == 1, "\(run)")
        #expect(run.stderr.hasPrefix("discoctl: \(truncated): ") && run.stderr.contains("truncated")
                && run.stderr.contains("nothing was changed") && run.stderr.filter { $0 == "\n" }.count == 1, "\(run)")
        #expect(http("GET", port: leader.httpPort, "/v1/kv/app/0?raw")?.body == "changed")
        // A damaged byte fails the checksum; a missing file is named too.
        var damaged = saved
        damaged[1000] ^= 0xFF  // inside the kv section's database image
        try damaged.write(to: URL(fileURLWithPath: truncated))
        run = try discoctl(["snapshot", "restore", truncated], http: leader.httpPort)
        #expect(run.status == 1 && run.stderr.contains("checksum mismatch"), "\(run)")
        run = try discoctl(["snapshot", "restore", file + ".missing"], http: leader.httpPort)
        #expect(run.status == 1 && run.stderr.hasPrefix("discoctl: \(file).missing: cannot read"), "\(run)")

        // The whole file restores on every server, through a follower too.
        run = try discoctl(["snapshot", "restore", file], http: follower.httpPort)
        #expect(run.status == 0 && run.stdout == "restored \(file)\n", "\(run)")
        for node in cluster.nodes {
            #expect(cluster.eventually(node, "app/0", "saved-0"), "node \(node.id)")
            #expect(http("GET", port: node.httpPort, "/v1/kv/app/new?stale")?.status == 404, "node \(node.id)")
        }
        // Writes go on after the restore.
        #expect(http("PUT", port: leader.httpPort, "/v1/kv/app/after", body: "x")?.body == "true")
        #expect(cluster.eventually(follower, "app/after", "x"))
    }
}
