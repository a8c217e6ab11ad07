import Raft
import RaftTesting
import Testing

/// The CI seed budget: 10 batches × 100 seeds, alternating 3 and 5 voters, each with a short
/// fault phase so the whole suite stays fast in debug builds. `raft-sim` runs long ones in release.
@Suite struct SimulationTests {
    static let batches = 10
    static let seedsPerBatch = 100
    static let faultMilliseconds = 3_000

    static func options(_ seed: UInt64) -> SimulationOptions {
        var options = SimulationOptions(seed: seed, nodeCount: seed % 2 == 0 ? 3 : 5)
        options.faultMilliseconds = faultMilliseconds
        return options
    }

    @Test(arguments: 0..<batches)
    func seedsPassEveryInvariantAndLinearizability(batch: Int) {
        var total = SimulationStats()
        for k in 0..<Self.seedsPerBatch {
            let seed = UInt64(batch * Self.seedsPerBatch + k)
            let result = Simulation.run(Self.options(seed))
            total.add(result.stats)
            #expect(result.violation == nil,
                    "seed \(seed): \(result.violation!) — replay: swift run -c release raft-sim --seed \(seed) --nodes \(result.nodeCount) --fault-ms \(Self.faultMilliseconds) --trace")
        }
        // Every fault kind really happened in this batch, and clients got work done.
        #expect(total.messagesDropped > 0 && total.messagesDuplicated > 0 && total.messagesDelayed > 0)
        #expect(total.partitions > 0 && total.asymmetricPartitions > 0)
        #expect(total.crashes > 0 && total.restarts > 0)
        #expect(total.membershipChanges > 0 && total.leaderTransfers > 0)
        #expect(total.snapshotsMade > 0 && total.snapshotsInstalled > 0)
        #expect(total.operationsCompleted > 100 * Self.seedsPerBatch / 10)
    }

    @Test func sevenNodeClusters() {
        for seed in UInt64(10_000)..<10_020 {
            var options = SimulationOptions(seed: seed, nodeCount: 7)
            options.faultMilliseconds = Self.faultMilliseconds
            let result = Simulation.run(options)
            #expect(result.violation == nil, "seed \(seed): \(result.violation!)")
        }
    }

    @Test func aSeedReplaysExactly() {
        var options = Self.options(12345)
        options.trace = true
        let first = Simulation.run(options)
        let second = Simulation.run(options)
        #expect(first.trace.count > 100)
        #expect(first.trace == second.trace && first.history == second.history)
        var other = options
        other.seed = 12346
        #expect(Simulation.run(other).trace != first.trace)
    }

    /// The mutation test: granting votes without the §5.4.1 log check must be found within the
    /// CI budget (it usually is within a few seeds).
    @Test func voteWithoutLogCheckIsCaught() {
        var found: Violation?
        for seed in UInt64(0)..<200 {
            var options = Self.options(seed)
            options.inject(.grantVoteWithoutLogCheck)
            if let violation = Simulation.run(options).violation {
                found = violation
                break
            }
        }
        #expect(found != nil)
        #expect([.leaderCompleteness, .stateMachineSafety, .logMatching, .linearizability].contains(found?.kind))
    }
}
