import Cluster
import Foundation
import Logging
import NIOCore
import NIOPosix
import Raft
import Store
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Snapshots and compaction with the real driver, storage, transport and KV store, in one process.
@Suite("snapshots and log compaction", .serialized)
struct CompactionTests {
    final class Box: @unchecked Sendable { var driver: RaftDriver? }

    final class Server {
        let id: NodeID
        var transport: PeerTransport!
        var driver: RaftDriver!
        var kv: KVStore!
        var port = 0
        init(id: NodeID) { self.id = id }
    }

    final class Cluster {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("disco-compaction-\(UUID().uuidString)")
        let ids: [NodeID]
        var servers: [Server] = []
        var options = RaftDriver.Options()
        let logger: Logger

        init(size: Int, interval: UInt64, trailing: UInt64) throws {
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            ids = (1...size).map { NodeID(rawValue: UInt64($0)) }
            options.snapshotIntervalEntries = interval
            options.snapshotTrailingEntries = trailing
            var logger = Logger(label: "test")
            logger.logLevel = .warning
            self.logger = logger
            servers = ids.map { Server(id: $0) }
            for server in servers { try start(server) }
        }

        func raftPath(_ id: NodeID) -> String { directory.appendingPathComponent("raft-\(id).db").path }

        func start(_ server: Server) throws {
            let box = Box()
            server.transport = PeerTransport(id: server.id, listen: PeerAddress(host: "127.0.0.1", port: 0), peers: [:],
                                             group: group, logger: logger) { box.driver?.receive($0) }
            server.port = try server.transport.start()
            var config = RaftConfig(id: server.id, initialMembership: Membership(voters: ids))
            config.randomSeed = server.id.rawValue &* 7919 &+ UInt64(server.port)
            let kv = try KVStore(path: directory.appendingPathComponent("kv-\(server.id).db").path)
            server.kv = kv
            server.driver = try RaftDriver(config: config, storage: try RaftStorage(path: raftPath(server.id)),
                                           transport: server.transport, loop: group.next(), logger: logger,
                                           participants: [kv], options: options) { entry in try! kv.apply(entry) }
            box.driver = server.driver
            updatePeers()
            server.driver.start()
        }

        func updatePeers() {
            let addresses = Dictionary(uniqueKeysWithValues: servers.filter { $0.port != 0 }.map {
                ($0.id, PeerAddress(host: "127.0.0.1", port: $0.port))
            })
            for server in servers where server.transport != nil { server.transport.setPeers(addresses.filter { $0.key != server.id }) }
        }

        func stop(_ server: Server) {
            server.driver.stop()
            server.transport.stop()
            server.port = 0
            updatePeers()
        }

        func leader(seconds: Double = 10) throws -> Server {
            let deadline = Date().addingTimeInterval(seconds)
            while Date() < deadline {
                for server in servers where server.port != 0 {
                    if try server.driver.status.wait().role == .leader { return server }
                }
                usleep(20_000)
            }
            throw TestError("no leader within \(seconds) s")
        }

        deinit {
            for server in servers where server.port != 0 { stop(server) }
            try? group.syncShutdownGracefully()
            try? FileManager.default.removeItem(at: directory)
        }
    }

    struct TestError: Error, CustomStringConvertible {
        var description: String
        init(_ description: String) { self.description = description }
    }

    func put(_ driver: RaftDriver, _ key: String) throws {
        _ = try driver.propose(KVCommand.put(key: key, value: Array(key.utf8), flags: 0).encoded).wait()
    }

    @Test func theLogIsCompactedAndALaggingFollowerInstallsTheSnapshot() throws {
        let interval: UInt64 = 40, trailing: UInt64 = 5
        let cluster = try Cluster(size: 3, interval: interval, trailing: trailing)
        let leader = try cluster.leader()
        let lagging = cluster.servers.first { $0.id != leader.id }!
        cluster.stop(lagging)
        for i in 0..<200 { try put(leader.driver, "key/\(i)") }

        // The leader's stored log was compacted: a snapshot, and no more than interval + trailing
        // entries after it (once the last snapshot's file, written off the Raft thread, is recorded).
        var state = try RaftStorage(path: cluster.raftPath(leader.id)).load()
        let recorded = Date().addingTimeInterval(5)
        while state.entries.count > Int(interval + trailing) + 2 && Date() < recorded {
            usleep(20_000)
            state = try RaftStorage(path: cluster.raftPath(leader.id)).load()
        }
        let snapshot = try #require(state.snapshot)
        #expect(snapshot.index.rawValue >= 200 - interval - trailing)
        // Its bytes are in a file of their own beside raft.db, not in it.
        let file = try RaftStorage(path: cluster.raftPath(leader.id)).snapshotFilePath(for: snapshot.index)
        #expect(FileManager.default.fileExists(atPath: file))
        #expect(try Database(path: cluster.raftPath(leader.id)).scalar("SELECT length(data) FROM snapshot") == .integer(0))
        #expect(state.entries.count <= Int(interval + trailing) + 2, "\(state.entries.count) entries after \(snapshot.index)")
        #expect(state.entries.first?.index == snapshot.index.next)
        let container = try SnapshotContainer(decoding: snapshot.data)
        #expect(container.index == snapshot.index.rawValue)
        #expect(container.section("kv") != nil)

        // The follower that missed all of it restarts and must be sent the snapshot.
        try cluster.start(lagging)
        let deadline = Date().addingTimeInterval(15)
        while try lagging.kv.get("key/", recurse: true).count < 200 && Date() < deadline { usleep(50_000) }
        #expect(try lagging.kv.get("key/", recurse: true).count == 200)
        let status = try lagging.driver.detailedStatus.wait()
        #expect(status.snapshotIndex > .zero, "the follower caught up without a snapshot: \(status)")
        // Writes go on and reach the follower from the log after the snapshot.
        try put(leader.driver, "after")
        let later = Date().addingTimeInterval(10)
        while try lagging.kv.get("after", recurse: false).isEmpty && Date() < later { usleep(20_000) }
        #expect(try lagging.kv.get("after", recurse: false).count == 1)
    }

    @Test func aFollowerAFewEntriesBehindCatchesUpFromTheTrailingLog() throws {
        let cluster = try Cluster(size: 3, interval: 40, trailing: 30)
        let leader = try cluster.leader()
        let lagging = cluster.servers.first { $0.id != leader.id }!
        for i in 0..<45 { try put(leader.driver, "a/\(i)") }
        cluster.stop(lagging)
        // Fewer entries than the trailing window: the follower needs no snapshot.
        for i in 0..<20 { try put(leader.driver, "b/\(i)") }
        let before = try RaftStorage(path: cluster.raftPath(lagging.id)).load().snapshot?.index
        try cluster.start(lagging)
        let deadline = Date().addingTimeInterval(10)
        while try lagging.kv.get("b/", recurse: true).count < 20 && Date() < deadline { usleep(20_000) }
        #expect(try lagging.kv.get("b/", recurse: true).count == 20)
        let status = try lagging.driver.detailedStatus.wait()
        #expect(status.snapshotIndex == (before ?? .zero), "the follower was sent a snapshot: \(status)")
    }

    @Test func anOperatorRestoreReplacesTheStateOnEveryServer() throws {
        let cluster = try Cluster(size: 3, interval: 1000, trailing: 10)
        let leader = try cluster.leader()
        for i in 0..<10 { try put(leader.driver, "old/\(i)") }
        let saved = try leader.driver.takeSnapshot().wait()
        for i in 0..<5 { try put(leader.driver, "new/\(i)") }
        #expect(throws: SnapshotError.self) { _ = try leader.driver.validateRestore(Array(saved.dropLast(3))) }
        _ = try leader.driver.validateRestore(saved)
        let index = try leader.driver.proposeRestore(saved).wait()
        try put(leader.driver, "after")
        for server in cluster.servers {
            let deadline = Date().addingTimeInterval(10)
            while try server.kv.get("after", recurse: false).isEmpty && Date() < deadline { usleep(20_000) }
            #expect(try server.kv.get("old/", recurse: true).count == 10, "server \(server.id)")
            #expect(try server.kv.get("new/", recurse: true).isEmpty, "server \(server.id)")
            #expect(server.kv.appliedIndex > index.rawValue)
        }
    }
}

extension CompactionTests {
    /// A state machine added in a newer version has no section in older snapshots: a server that
    /// has it still starts from such a snapshot (rolling upgrade), leaving that state machine as is.
    @Test func aSnapshotWithoutASectionForANewStateMachineStillLoads() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("disco-sections-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let old = try KVStore(path: directory.appendingPathComponent("old.db").path)
        try old.apply(Entry(term: 1, index: 1, data: KVCommand.put(key: "a", value: [1], flags: 0).encoded))
        let container = SnapshotContainer(index: 5, term: 1, sections: [("kv", try old.snapshotData())])
        let storage = try RaftStorage(path: directory.appendingPathComponent("raft.db").path)
        try storage.save(snapshot: Snapshot(index: 5, term: 1, membership: Membership(voters: [1]), data: container.encoded),
                         entries: [], hardState: HardState(term: 1, commit: 5))
        final class Empty: SnapshotParticipant, @unchecked Sendable {
            var snapshotName: String { "registry" }
            var appliedIndex: UInt64 { 0 }
            var restored = false
            func snapshotData() throws -> [UInt8] { [] }
            func validateSnapshot(_ data: [UInt8]) throws {}
            func restoreSnapshot(_ data: [UInt8], appliedIndex: UInt64) throws { restored = true }
        }
        let registry = Empty()
        let kv = try KVStore(path: directory.appendingPathComponent("kv.db").path)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let logger = Logger(label: "test")
        let transport = PeerTransport(id: 1, listen: PeerAddress(host: "127.0.0.1", port: 0), peers: [:], group: group, logger: logger) { _ in }
        let driver = try RaftDriver(config: RaftConfig(id: 1, initialMembership: Membership(voters: [1])), storage: storage,
                                    transport: transport, loop: group.next(), logger: logger, participants: [kv, registry]) { _ in }
        #expect(kv.appliedIndex == 5)
        #expect(try kv.get("a", recurse: false).count == 1)
        #expect(!registry.restored)
        // An operator's restore, though, must cover every state machine.
        #expect(throws: SnapshotError.self) { _ = try driver.validateRestore(container.encoded) }
    }
}
