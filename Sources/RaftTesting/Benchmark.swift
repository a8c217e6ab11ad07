import Raft

/// The core alone, no I/O: how many entries per second go through propose → ready → advance and
/// come out committed. One single-voter leader, or a leader with followers whose messages are
/// handed over in memory.
public enum CoreBenchmark {
    public struct Result: Sendable {
        public var entries: Int
        public var nanoseconds: UInt64
        public var entriesPerSecond: Double { Double(entries) / (Double(nanoseconds) / 1e9) }
    }

    /// Compact the log every this many entries so memory stays flat during long runs.
    public static let compactionIntervalEntries = 1 << 16

    /// Commits `total` entries of `payloadBytes` each in batches of `batch`, through `voters`
    /// servers (1 = leader only). `clock` returns monotonic nanoseconds (the caller owns time).
    public static func run(voters: Int, batch: Int, total: Int, payloadBytes: Int, clock: () -> UInt64) -> Result {
        let ids = (1...UInt64(voters)).map { NodeID(rawValue: $0) }
        var nodes = ids.map { id -> RaftNode in
            var config = RaftConfig(id: id, initialMembership: Membership(voters: ids))
            config.appendsInflightMax = 1024
            return RaftNode(config: config)
        }
        nodes[0].campaign()
        var mailbox: [Message] = []
        func pump(_ nodes: inout [RaftNode], _ mailbox: inout [Message]) -> Int {
            var committed = 0
            for k in nodes.indices where nodes[k].hasReady {
                let ready = nodes[k].ready()
                mailbox.append(contentsOf: ready.messages)
                if k == 0 { committed += ready.committedEntries.count }
                nodes[k].advance(ready)
            }
            let delivered = mailbox
            mailbox.removeAll(keepingCapacity: true)
            for message in delivered { try! nodes[Int(message.to.rawValue) - 1].step(message) }
            return committed
        }
        // Elect and commit the no-op.
        for _ in 0..<20 { _ = pump(&nodes, &mailbox) }
        precondition(nodes[0].isLeader, "benchmark leader not elected")
        let payload = [UInt8](repeating: 0xAB, count: payloadBytes)
        let proposals = [[UInt8]](repeating: payload, count: batch)
        let start = clock()
        var committed = 0
        var sinceCompaction = 0
        while committed < total {
            _ = try! nodes[0].propose(batch: proposals)
            committed += pump(&nodes, &mailbox)
            sinceCompaction += batch
            if sinceCompaction >= compactionIntervalEntries {
                sinceCompaction = 0
                for k in nodes.indices where nodes[k].appliedIndex > nodes[k].snapshotIndex {
                    nodes[k].compact(through: nodes[k].appliedIndex, data: [])
                }
            }
        }
        return Result(entries: committed, nanoseconds: clock() - start)
    }
}
