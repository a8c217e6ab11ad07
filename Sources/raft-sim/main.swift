import ArgumentParser
import Foundation
import Raft
import RaftTesting
import Synchronization

/// `raft-sim`: many seeded simulations of whole clusters, the replay of one seed with a trace,
/// and the core micro-benchmark. The logic lives in RaftTesting; this only parses and prints.
struct RaftSim: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "raft-sim",
        abstract: "Deterministic Raft cluster simulation and core benchmark.",
        subcommands: [Simulate.self, Bench.self, CheckHistory.self],
        defaultSubcommand: Simulate.self)
}

struct Simulate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run seeds; print seeds/s, failures and how to replay them.",
        discussion: """
            Each seed draws its cluster and its faults: message drop, duplication, delay and reordering; \
            symmetric and one-way partitions; crashes that lose unsynced writes, keeping a torn tail \
            (a prefix of the records: head, entries, commit); fsync errors (the server stops without the \
            sync taking effect); a stored entry damaged under its checksum (the restart must detect it and \
            the server stays down, at most one per seed); whole-cluster crashes; process pauses (no ticks, \
            messages or requests, then resume with stale messages); clock skew (each server's tick rate \
            within ±5-20%); leader crashes right after election; the Figure 8 nemesis (a leader cut off \
            right after its election, its first commit, or a proposal, each cut healing the previous one); \
            membership bursts (two changes at once, then a partition along the new quorum); membership \
            changes, leader transfers and compaction. Each kind is off in some seeds; --every-fault turns \
            all of them on.

            Checked after every event: election safety, log matching, leader completeness, state machine \
            safety, every committed entry on a quorum of the voters' synced storage; at the end: every \
            acknowledged write kept, liveness after healing (a leader, every member caught up, every client \
            operation decided within 6 s) and linearizability of the clients' history.

            Mutations (--mutation), each caught by the simulator alone within a few hundred seeds \
            (SimulationTests.mutationIsCaught): commit-previous-term commits by counting replicas of an \
            earlier term's entry (Figure 8); vote-without-log-check grants votes without the §5.4.1 log \
            check; read-without-quorum answers ReadIndex without the heartbeat round that confirms \
            leadership; send-before-fsync sends every message before its Ready is durable (acks, votes); \
            two-membership-changes accepts a membership change while another is uncommitted.
            """)

    @Option(help: "Number of seeds to run, from --first-seed.") var seeds: Int = 1000
    @Option(help: "First seed.") var firstSeed: UInt64 = 0
    @Option(help: "Run exactly this seed (implies --seeds 1).") var seed: UInt64?
    @Option(help: "Voters: 3, 5 or 7; 0 alternates 3 and 5 by seed. With 5, --seven-voter-percent of the seeds run 7.")
    var nodes: Int = 5
    @Option(help: "Percent of the seeds that run 7 voters when --nodes is 5 (chosen by a hash of the seed; 0: never).")
    var sevenVoterPercent: Int = SimulationOptions.sevenVoterPercentDefault
    @Option(help: "Virtual milliseconds of faults per seed.") var faultMs: Int = 3000
    @Flag(help: "Print the step trace (with --seed).") var trace = false
    @Flag(help: "Run every fault kind in every seed (by default each seed draws which kinds it runs).")
    var everyFault = false
    @Option(help: "Parallel workers.") var jobs: Int = 1
    @Option(help: "Inject a known bug into every server: \(Simulate.mutationNames.joined(separator: ", ")).")
    var mutation: String?

    static let mutationNames = TestingMutation.allCases.compactMap(\.name)

    func options(for seed: UInt64) -> SimulationOptions {
        let voters = nodes == 0 ? (seed % 2 == 0 ? 3 : 5)
            : SimulationOptions.voterCount(seed: seed, nodes: nodes, sevenVoterPercent: sevenVoterPercent)
        var options = SimulationOptions(seed: seed, nodeCount: voters)
        options.faultMilliseconds = faultMs
        options.trace = trace
        options.everyFault = everyFault
        if let mutation, let injected = TestingMutation(rawValue: mutation) { options.inject(injected) }
        return options
    }

    func replayCommand(_ seed: UInt64, _ nodeCount: Int) -> String {
        // --seed runs exactly the voter count given: the one this seed ran with.
        var command = "swift run -c release raft-sim --seed \(seed) --nodes \(nodeCount) --seven-voter-percent 0 --fault-ms \(faultMs) --trace"
        if everyFault { command += " --every-fault" }
        if let mutation { command += " --mutation \(mutation)" }
        return command
    }

    func run() throws {
        if let mutation, !Simulate.mutationNames.contains(mutation) {
            throw ValidationError("unknown mutation \(mutation); known: \(Simulate.mutationNames.joined(separator: ", "))")
        }
        if let seed {
            let result = Simulation.run(options(for: seed))
            for line in result.trace { print(line) }
            print("seed \(seed) nodes \(result.nodeCount): " + (result.violation.map { "FAILED: \($0)" } ?? "ok"))
            print(describe(result.stats))
            if result.violation != nil { throw ExitCode(1) }
            return
        }
        let start = DispatchTime.now().uptimeNanoseconds
        struct Tally: Sendable {
            var failures: [SimulationResult] = []
            var total = SimulationStats()
            var done = 0
        }
        let tally = Mutex(Tally())
        let workers = max(1, jobs)
        let seeds = self.seeds, firstSeed = self.firstSeed, command = self
        DispatchQueue.concurrentPerform(iterations: workers) { worker in
            var k = worker
            while k < seeds {
                let result = Simulation.run(command.options(for: firstSeed + UInt64(k)))
                tally.withLock { tally in
                    tally.done += 1
                    tally.total.add(result.stats)
                    if let violation = result.violation {
                        tally.failures.append(result)
                        print("seed \(result.seed) FAILED: \(violation)")
                        print("  replay: \(command.replayCommand(result.seed, result.nodeCount))")
                    }
                    if tally.done % 10_000 == 0 { print("... \(tally.done) seeds, \(tally.failures.count) failures") }
                }
                k += workers
            }
        }
        let (failures, total) = tally.withLock { ($0.failures, $0.total) }
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        print(String(format: "%d seeds in %.1f s: %.0f seeds/s, %d failures", seeds, seconds, Double(seeds) / seconds, failures.count))
        print(describe(total))
        if !failures.isEmpty { throw ExitCode(1) }
    }

    func describe(_ s: SimulationStats) -> String {
        "messages \(s.messagesSent) (dropped \(s.messagesDropped), duplicated \(s.messagesDuplicated), delayed \(s.messagesDelayed)); "
            + "partitions \(s.partitions) + one-way \(s.asymmetricPartitions); crashes \(s.crashes) (unsynced records lost \(s.unsyncedWritesLost)), "
            + "restarts \(s.restarts); membership changes \(s.membershipChanges); transfers \(s.leaderTransfers); "
            + "snapshots made \(s.snapshotsMade), installed \(s.snapshotsInstalled); leaders \(s.leadersElected); "
            + "client ops \(s.operationsCompleted); entries committed \(s.entriesCommitted); "
            + "appends sent before the leader's fsync \(s.earlySends); worst heal \(s.healMilliseconds) ms\n"
            + "storage: torn tails \(s.tornTails), fsync errors \(s.fsyncErrors), corruptions \(s.corruptionsInjected) "
            + "(detected at restart \(s.corruptionsDetected)); whole-cluster crashes \(s.wholeClusterCrashes); pauses \(s.pauses); "
            + "skewed clocks \(s.skewedClocks); targeted leader crashes \(s.leaderCrashes), leaders cut off \(s.leaderIsolations); "
            + "membership bursts \(s.membershipBursts) (partitioned along the new quorum \(s.membershipPartitions))"
    }
}

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Committed entries per second through the core alone.")

    @Option(help: "Entries per propose batch.") var batch: Int = 256
    @Option(help: "Entries to commit.") var entries: Int = 5_000_000
    @Option(help: "Payload bytes per entry.") var payload: Int = 64
    @Option(help: "Voters (1 = leader alone; 3 = leader and two in-memory followers).") var voters: Int = 1

    func run() {
        let result = CoreBenchmark.run(voters: voters, batch: batch, total: entries, payloadBytes: payload) {
            DispatchTime.now().uptimeNanoseconds
        }
        print(String(format: "voters %d, batch %d, payload %d B: %d entries in %.2f s = %.2f M entries/s",
                     voters, batch, payload, result.entries, Double(result.nanoseconds) / 1e9, result.entriesPerSecond / 1e6))
    }
}

RaftSim.main()

/// Checks a history recorded from real processes (scripts/chaos.sh) for linearizability.
struct CheckHistory: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-history",
        abstract: "Check a JSON-lines client history (format: RaftTesting's HistoryFile) for linearizability.")

    @Argument(help: "The history file.")
    var file: String

    func run() throws {
        guard let data = FileManager.default.contents(atPath: file) else {
            throw ValidationError("cannot read \(file)")
        }
        let operations: [HistoryOperation]
        do {
            operations = try HistoryFile.parse(String(decoding: data, as: UTF8.self))
        } catch {
            print("\(file): \(error)")
            throw ExitCode(2)
        }
        let keys = Set(operations.map(\.operation.key)).count
        let completed = operations.filter { $0.returned != nil }.count
        switch LinearizabilityChecker.check(operations) {
        case .linearizable:
            print("\(file): \(operations.count) operations (\(completed) completed, \(operations.count - completed) ambiguous) on \(keys) keys: linearizable")
        case .violation(let key, let ops):
            print("\(file): NOT linearizable on key \(key); the smallest failing set:")
            for op in ops { print("  \(op)") }
            throw ExitCode(1)
        case .inconclusive(let key):
            print("\(file): inconclusive on key \(key) (search budget exhausted)")
            throw ExitCode(3)
        }
    }
}

