import API
import Foundation
import NIOCore
import NIOPosix
import Raft
import Registry
import Testing

/// A "driver" that applies every proposed entry to a real catalog at the next index and keeps
/// what it was given, so a test sees exactly the entries the batcher made.
final class RecordingLog: @unchecked Sendable {
    // @unchecked: everything is touched on `loop` only.
    let catalog: Catalog
    let loop: EventLoop
    var entries: [[UInt8]] = []
    var failing = false

    init(catalog: Catalog, loop: EventLoop) {
        self.catalog = catalog
        self.loop = loop
    }

    func propose(_ data: [UInt8]) -> EventLoopFuture<LogIndex> {
        loop.submit {
            struct Refused: Error {}
            if self.failing { throw Refused() }
            self.entries.append(data)
            let index = self.catalog.appliedIndex + 1
            try self.catalog.apply(index: index, data: data)
            return LogIndex(index)
        }
    }
}

@Suite("proposal batching")
struct ProposalBatcherTests {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("disco-batch-\(UUID().uuidString)")

    func registration(_ i: Int, metaBytes: Int = 0) -> CatalogCommand {
        let node = NodeRecord(name: "agent-\(i)", address: "10.0.\(i / 256 % 256).\(i % 256)")
        var service = ServiceInstance(id: "web-\(i)", node: node.name, name: "web", port: 8000)
        if metaBytes > 0 { service.meta = ["pad": String(repeating: "x", count: metaBytes)] }
        return .register(node: node, service: service, checks: [], replaceChecks: false)
    }

    /// A batcher on `loop` over a recording log on the same loop, and what it needs cleaned up.
    func withBatcher(_ body: (ProposalBatcher, RecordingLog, EventLoop) throws -> Void) throws {
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let loop = group.next()
        let log = RecordingLog(catalog: try Catalog(path: directory.appendingPathComponent("registry.db").path), loop: loop)
        try body(ProposalBatcher(loop: loop, propose: log.propose), log, loop)
    }

    /// Submits `commands` from one task on `loop`, as writes that arrive while it is busy.
    func submitTogether(_ batcher: ProposalBatcher, _ commands: [CatalogCommand], on loop: EventLoop) throws -> [Result<LogIndex, Error>] {
        let futures = try loop.submit { commands.map { batcher.submit($0) } }.wait()
        return futures.map { future in Result { try future.wait() } }
    }

    @Test func writesThatArriveTogetherShareOneEntryAndAllApply() throws {
        try withBatcher { batcher, log, loop in
            let commands = (0..<300).map { registration($0) }
            let results = try submitTogether(batcher, commands, on: loop)
            let indexes = Set(results.compactMap { try? $0.get() })
            #expect(indexes.count == 1, "every write answered with the one entry's index: \(indexes)")
            #expect(try loop.submit { log.entries.count }.wait() == 1)
            let state = log.catalog.state
            #expect(state.services.count == 300)
            #expect(state.nodes.count == 300)
            #expect(batcher.batchCounters == .init(entries: 1, commands: 300))
        }
    }

    @Test func aLoneWriteIsProposedAsItself() throws {
        try withBatcher { batcher, log, loop in
            let command = registration(7)
            _ = try batcher.submit(command).wait()
            #expect(try loop.submit { log.entries }.wait() == [command.encoded])
        }
    }

    @Test func batchesStopAtTheirCommandAndByteLimits() throws {
        try withBatcher { batcher, log, loop in
            let many = (0..<(ProposalBatcher.commandsMax + 1)).map { registration($0) }
            _ = try submitTogether(batcher, many, on: loop)
            let sizes = try loop.submit { log.entries }.wait().map { try CatalogCommand(decoding: $0) }.map { command in
                if case .batch(let commands) = command { commands.count } else { 1 }
            }
            #expect(sizes == [ProposalBatcher.commandsMax, 1])

            // Commands of about 40 KiB: a batch holds at most bytesMax of them.
            let before = try loop.submit { log.entries.count }.wait()
            let big = (0..<20).map { registration(5000 + $0, metaBytes: 40 << 10) }
            _ = try submitTogether(batcher, big, on: loop)
            let entries = try loop.submit { Array(log.entries.dropFirst(before)) }.wait()
            #expect(entries.count > 1)
            #expect(entries.allSatisfy { $0.count <= ProposalBatcher.bytesMax + 1024 }, "\(entries.map(\.count))")
            #expect(log.catalog.state.services.count == ProposalBatcher.commandsMax + 1 + 20)
        }
    }

    @Test func aFailedEntryFailsEveryWriteInIt() throws {
        try withBatcher { batcher, log, loop in
            try loop.submit { log.failing = true }.wait()
            let results = try submitTogether(batcher, (0..<10).map { registration($0) }, on: loop)
            #expect(results.allSatisfy { if case .failure = $0 { true } else { false } })
            #expect(log.catalog.state.services.isEmpty)
        }
    }
}
