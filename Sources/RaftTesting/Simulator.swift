import Raft

/// What one simulation run does. Everything not given here is drawn from `seed`, so a seed alone
/// replays a run exactly (TigerBeetle's VOPR, FoundationDB's simulation).
public struct SimulationOptions: Sendable {
    /// One virtual millisecond per simulation step; servers tick every `tickMilliseconds`.
    public static let tickMilliseconds = 10
    /// A client gives up on an attempt after this long and retries (same sequence number).
    public static let clientAttemptTimeoutMilliseconds = 300

    public var seed: UInt64
    /// Voters at the start (3, 5 or 7); two more servers stand by to be added.
    public var nodeCount: Int
    /// Virtual time with faults and client load.
    public var faultMilliseconds: Int = 3_000
    /// After the fault phase everything is healed and restarted: within this much virtual time a
    /// leader must exist, every server must have caught up and every client operation must be
    /// decided (the liveness check).
    public var healMillisecondsMax: Int = 6_000
    public var clientCount: Int = 3
    public var keyCount: Int = 3
    /// Record a step trace (for `raft-sim --seed N --trace`).
    public var trace: Bool = false
    /// Every seed draws which fault kinds it runs (each of leader crashes, the Figure 8 nemesis,
    /// fsync errors, corruption, whole-cluster crashes, pauses, membership bursts and clock skew
    /// is off in a third to a half of the seeds, so that the others are also seen alone).
    /// true: all of them are on in every seed, at a rate drawn as usual (`raft-sim --every-fault`).
    public var everyFault: Bool = false
    package var mutation: TestingMutation = .none

    public init(seed: UInt64, nodeCount: Int) {
        self.seed = seed
        self.nodeCount = nodeCount
    }

    /// Test-only: run with a known bug in every server.
    package mutating func inject(_ mutation: TestingMutation) { self.mutation = mutation }

    /// Of the seeds asked to run 5 voters, this share runs 7 instead (`raft-sim --nodes 5`), so
    /// that long runs cover the largest supported cluster without a separate campaign.
    public static let sevenVoterPercentDefault = 20

    /// The voter count for `seed` when `nodes` are asked for: 5 becomes 7 for `sevenVoterPercent`
    /// of the seeds (decided by a hash of the seed alone, so `--seed N --nodes 7` replays such a
    /// seed exactly); other counts are kept.
    public static func voterCount(seed: UInt64, nodes: Int, sevenVoterPercent: Int = sevenVoterPercentDefault) -> Int {
        guard nodes == 5, sevenVoterPercent > 0 else { return nodes }
        var random = SplitMix64(seed: seed ^ 0x7E7E_7E7E_7E7E_7E7E)
        return random.chance(UInt64(sevenVoterPercent), in: 100) ? 7 : 5
    }
}

/// A broken invariant, with the virtual time at which it was seen.
public struct Violation: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Kind: String, Hashable, Sendable {
        case electionSafety = "election safety"
        case logMatching = "log matching"
        case leaderCompleteness = "leader completeness"
        case stateMachineSafety = "state machine safety"
        case acknowledgedWriteLost = "acknowledged write lost"
        case liveness = "liveness"
        case linearizability = "linearizability"
        case invalidMessage = "a correct server's message refused"
        /// An entry became committed while fewer than a quorum of the voters had it synced: a
        /// crash of the others could still take it back (the `Ready` contract broken).
        case committedNotDurable = "committed entry not on a quorum's synced storage"
    }

    public var kind: Kind
    public var time: Int
    public var detail: String

    public var description: String { "\(kind.rawValue) at t=\(time)ms: \(detail)" }
}

/// Counts of what happened in a run, to show the faults were really exercised.
public struct SimulationStats: Sendable {
    public var messagesSent = 0
    public var messagesDropped = 0
    public var messagesDuplicated = 0
    public var messagesDelayed = 0
    public var partitions = 0
    public var asymmetricPartitions = 0
    public var crashes = 0
    /// Unsynced records (a Ready's head, entries, commit) that crashes threw away.
    public var unsyncedWritesLost = 0
    public var restarts = 0
    public var membershipChanges = 0
    public var leaderTransfers = 0
    public var snapshotsMade = 0
    public var snapshotsInstalled = 0
    public var leadersElected = 0
    public var operationsCompleted = 0
    public var entriesCommitted = 0
    public var healMilliseconds = 0
    /// Appends a leader sent before its own write was synced (the driver's early send).
    public var earlySends = 0
    /// Crashes that kept some but not all of the unsynced records (a torn tail, `MemoryDisk`).
    public var tornTails = 0
    /// fsync failures: the server stopped (as the driver halts) without the sync taking effect.
    public var fsyncErrors = 0
    /// Stored entries damaged under their checksum, and restarts that found the damage and kept
    /// the server down (every injected corruption must be detected: the two are equal).
    public var corruptionsInjected = 0
    public var corruptionsDetected = 0
    /// All servers crashed at once.
    public var wholeClusterCrashes = 0
    /// A server stopped (no ticks, no messages, no requests) and later resumed with its state.
    public var pauses = 0
    /// Servers whose clock ran at a rate other than the nominal one.
    public var skewedClocks = 0
    /// Targeted crashes of a leader right after its election.
    public var leaderCrashes = 0
    /// Partitions that cut a leader off right after its election, its first commit or a
    /// proposal (the Figure 8 nemesis).
    public var leaderIsolations = 0
    /// Two membership changes proposed back to back (the second refused unless the core is
    /// broken), and partitions along the new configuration's quorum right after.
    public var membershipBursts = 0
    public var membershipPartitions = 0

    public init() {}

    public mutating func add(_ o: SimulationStats) {
        messagesSent += o.messagesSent; messagesDropped += o.messagesDropped
        messagesDuplicated += o.messagesDuplicated; messagesDelayed += o.messagesDelayed
        partitions += o.partitions; asymmetricPartitions += o.asymmetricPartitions
        crashes += o.crashes; unsyncedWritesLost += o.unsyncedWritesLost; restarts += o.restarts
        membershipChanges += o.membershipChanges; leaderTransfers += o.leaderTransfers
        earlySends += o.earlySends
        snapshotsMade += o.snapshotsMade; snapshotsInstalled += o.snapshotsInstalled
        leadersElected += o.leadersElected; operationsCompleted += o.operationsCompleted
        entriesCommitted += o.entriesCommitted; healMilliseconds = max(healMilliseconds, o.healMilliseconds)
        tornTails += o.tornTails; fsyncErrors += o.fsyncErrors
        corruptionsInjected += o.corruptionsInjected; corruptionsDetected += o.corruptionsDetected
        wholeClusterCrashes += o.wholeClusterCrashes; pauses += o.pauses; skewedClocks += o.skewedClocks
        leaderCrashes += o.leaderCrashes; leaderIsolations += o.leaderIsolations
        membershipBursts += o.membershipBursts; membershipPartitions += o.membershipPartitions
    }
}

public struct SimulationResult: Sendable {
    public var seed: UInt64
    public var nodeCount: Int
    /// The first violation; the run stops there.
    public var violation: Violation?
    public var stats: SimulationStats
    public var history: [HistoryOperation]
    public var trace: [String]
}

/// A deterministic simulation of a whole cluster: servers over the pure core with in-memory disks,
/// a network that drops, duplicates, delays and reorders, partitions (symmetric, one-way, and
/// along a new configuration's quorum), crashes that lose unsynced writes (keeping a torn tail),
/// fsync errors, damaged entries that a restart must detect, whole-cluster crashes, process
/// pauses, clock skew, targeted leader crashes (the Figure 8 nemesis), membership changes,
/// leader transfers and compaction, all decided by one seeded generator and a virtual clock.
/// Invariants (paper Figure 3, and every committed entry on a quorum's synced storage) are
/// checked after every event; at the end the history is checked for linearizability.
public struct Simulation: Sendable {
    public static func run(_ options: SimulationOptions) -> SimulationResult {
        var world = World(options)
        world.run()
        var result = SimulationResult(seed: options.seed, nodeCount: options.nodeCount, violation: world.violation,
                                      stats: world.stats, history: world.history, trace: world.trace)
        if result.violation == nil {
            switch LinearizabilityChecker.check(world.history) {
            case .linearizable: break
            case .violation(let key, let ops):
                result.violation = Violation(
                    kind: .linearizability, time: world.now,
                    detail: "key \(key): " + ops.map(\.description).joined(separator: "; "))
            case .inconclusive(let key):
                // Not a proof of a bug; reported so that it is never silently taken for a pass.
                result.violation = Violation(kind: .linearizability, time: world.now, detail: "inconclusive on key \(key)")
            }
        }
        return result
    }
}

private struct World {
    struct Server {
        var id: NodeID
        var config: RaftConfig
        var raft: RaftNode
        var disk = MemoryDisk()
        var store = KVStore()
        var up = true
        var pendingReady: Ready?
        /// The messages of `pendingReady` that wait for its fsync (the processor sent the rest).
        var pendingLater = ReadyProcessor.Held()
        /// The Ready contract's order: the driver's own (`ReadyProcessor`).
        var processor = ReadyProcessor(durable: HardState())
        var readyDoneAt = 0
        var deferredTicks = 0
        /// The server's clock, in thousandths of a virtual millisecond: it gains `clockRatePermille`
        /// per step and ticks the core every `tickMilliseconds` of its own time (clock skew).
        var clock: Int
        var clockRatePermille: Int
        /// A process pause (SIGSTOP, a long GC): until then no ticks, messages or requests.
        var pausedUntil = 0
        /// A restart found damaged storage: the server stays down for good (the daemon exits and
        /// waits for an operator) and never uses what it stored.
        var failed = false
        /// The last term in which this server, as leader, advanced its commit index (the Figure 8
        /// nemesis watches each leader's first commit).
        var firstCommitTerm: Term?
        var wasLeader = false
        /// Proposals this server accepted: index → (client, sequence, term).
        var proposals: [LogIndex: (client: Int, sequence: UInt64, term: Term)] = [:]
        /// ReadIndex requests: context → (client, attempt, key).
        var reads: [[UInt8]: (client: Int, attempt: Int, key: String)] = [:]
        /// Confirmed reads waiting for the applied index.
        var readsWaiting: [(index: LogIndex, context: [UInt8])] = []
        var downUntil = 0
        /// A targeted fault: crash at this time (a leader soon after its election).
        var crashAt = Int.max
        var compactEvery: Int
    }

    struct Client {
        var id: Int
        var sequence: UInt64 = 0
        var leaderHint: NodeID?
        var current: Request?
        var nextOperationAt = 0
        var attempt = 0
    }

    struct Request {
        var operation: KVOperation
        var sequence: UInt64
        var call: Int
        var attempt: Int
        var deadline: Int
        var retryAt: Int?
    }

    let options: SimulationOptions
    var random: SplitMix64
    var now = 0
    var servers: [Server] = []
    var clients: [Client] = []
    var inFlight: [Int: [Message]] = [:]
    var cut: Set<Pair> = []
    var violation: Violation?
    var stats = SimulationStats()
    /// The server whose Ready the processor is working through (`ReadyEffects`).
    var effectsServer = 0
    /// The last normal entry applied on `effectsServer`: its index, command and result.
    var lastApplied: (index: LogIndex, command: KVStore.Command, result: KVResult)?
    var history: [HistoryOperation] = []
    var trace: [String] = []
    var faultsOn = true
    // Network character of this seed.
    let dropPercent: UInt64
    let duplicatePercent: UInt64
    let delayPercent: UInt64
    let diskLatencyMax: Int
    /// Chance that a newly elected leader crashes within a few milliseconds: the schedules of
    /// the paper's Figure 8 need several leaders to fail right after winning.
    let leaderCrashPercent: UInt64
    /// The Figure 8 nemesis (`isolateLeader`): chance that a leader is cut off right after its
    /// election or its first commit (a quarter of that after a proposal).
    let figure8Percent: UInt64
    /// Storage faults: one fsync in this many fails (0: none); chance per crash of damaging a
    /// stored entry (at most one server per run, which then stays down).
    let fsyncErrorOdds: UInt64
    let corruptionPercent: UInt64
    /// One step in this many crashes every server at once (0: never).
    let wholeClusterCrashOdds: UInt64
    /// One step in this many pauses a server (0: never).
    let pauseOdds: UInt64
    /// Chance that a membership change is followed at once by a second one, and then by a
    /// partition along the new configuration's quorum.
    let membershipBurstPercent: UInt64
    /// Only one server per run may lose its storage to corruption.
    var corruptionUsed = false
    // Invariant state.
    var leaderOfTerm: [Term: NodeID] = [:]
    /// Every (index, term) ever persisted anywhere: the entry and the term before it.
    var persisted: [IndexTerm: (entry: Entry, previousTerm: Term?)] = [:]
    /// Every index committed or applied anywhere: the entry and the lowest term a server that
    /// committed or applied it was in.
    var committed: [LogIndex: (entry: Entry, term: Term)] = [:]
    var highestCommitted: LogIndex = .zero
    /// Every index up to this one was checked to be on a quorum's synced storage when it committed.
    var commitChecked: LogIndex = .zero
    /// Writes acknowledged to clients, with the entry index that carried them when the server saw
    /// that entry applied (nil when a snapshot's session table decided it: an earlier attempt at
    /// another index may have been the one applied).
    var acknowledged: [(client: Int, sequence: UInt64, index: LogIndex?)] = []

    struct Pair: Hashable { var from: NodeID; var to: NodeID }
    struct IndexTerm: Hashable { var index: LogIndex; var term: Term }

    init(_ options: SimulationOptions) {
        self.options = options
        var random = SplitMix64(seed: options.seed)
        dropPercent = random.next(below: 4) == 0 ? 0 : random.next(below: 12)
        duplicatePercent = random.next(below: 6)
        delayPercent = random.next(below: 15)
        diskLatencyMax = Int(random.next(below: 4))
        leaderCrashPercent = random.chance(1, in: 2) && !options.everyFault ? 0 : UInt64(random.next(in: 10...50))
        figure8Percent = random.chance(1, in: 2) && !options.everyFault ? 0 : UInt64(random.next(in: 20...80))
        fsyncErrorOdds = random.chance(1, in: 3) && !options.everyFault ? 0 : UInt64(random.next(in: 300...3000))
        corruptionPercent = random.chance(1, in: 3) && !options.everyFault ? 0 : UInt64(random.next(in: 5...30))
        wholeClusterCrashOdds = random.chance(1, in: 2) && !options.everyFault ? 0 : UInt64(random.next(in: 2000...8000))
        pauseOdds = random.chance(1, in: 3) && !options.everyFault ? 0 : UInt64(random.next(in: 300...2000))
        membershipBurstPercent = random.chance(1, in: 3) && !options.everyFault ? 0 : UInt64(random.next(in: 20...80))
        // Clock skew: each server's clock runs within ±skew of the nominal rate.
        let skewPermille = random.chance(1, in: 3) && !options.everyFault ? 0 : random.next(in: 50...200)
        let voters = (1...UInt64(options.nodeCount)).map { NodeID(rawValue: $0) }
        let spares = (UInt64(options.nodeCount + 1)...UInt64(options.nodeCount + 2)).map { NodeID(rawValue: $0) }
        let tinyMessages = random.chance(1, in: 3)
        // Cluster-wide, as in a deployment: a server without PreVote and CheckQuorum among servers
        // with them ignores the leader's lower-term messages while their lease ignores its votes.
        let preVote = random.chance(7, in: 8)
        let checkQuorum = random.chance(7, in: 8)
        for id in voters + spares {
            var config = RaftConfig(id: id, initialMembership: voters.contains(id) ? Membership(voters: voters) : .empty)
            config.randomSeed = random.next()
            config.preVote = preVote
            config.checkQuorum = checkQuorum
            config.appendsInflightMax = random.next(in: 1...8)
            config.appendMessageBytesMax = tinyMessages ? 1 : random.next(in: 64...4096)
            config.testingMutation = options.mutation
            let compactEvery = random.chance(1, in: 5) ? Int.max : random.next(in: 5...60)
            let rate = 1000 + (skewPermille == 0 ? 0 : random.next(in: -skewPermille...skewPermille))
            var processor = ReadyProcessor(durable: HardState())
            processor.testingMutation = options.mutation
            servers.append(Server(id: id, config: config, raft: RaftNode(config: config), processor: processor,
                                  clock: random.next(in: 0...(SimulationOptions.tickMilliseconds * 1000 - 1)),
                                  clockRatePermille: rate, compactEvery: compactEvery))
            if rate != 1000 { stats.skewedClocks += 1 }
        }
        clients = (0..<options.clientCount).map { Client(id: $0 + 1) }
        self.random = random
        if options.trace {
            record("seed \(options.seed): \(options.nodeCount) voters, preVote \(preVote), checkQuorum \(checkQuorum), "
                   + "drop \(dropPercent)%, duplicate \(duplicatePercent)%, delay \(delayPercent)%, disk latency <= \(diskLatencyMax) ms, "
                   + "leader crash \(leaderCrashPercent)%, figure 8 nemesis \(figure8Percent)%, fsync error 1/\(fsyncErrorOdds), "
                   + "corruption \(corruptionPercent)% of crashes, whole-cluster crash 1/\(wholeClusterCrashOdds), "
                   + "pause 1/\(pauseOdds), membership burst \(membershipBurstPercent)%, clock skew ±\(skewPermille)‰, "
                   + "tiny messages \(tinyMessages), mutation \(options.mutation)")
        }
    }

    /// The leader the cluster follows: of the servers up that think they lead, the one with the
    /// highest term. An older one may linger (a leader removed from the configuration while cut
    /// off hears from nobody any more), but it can commit nothing.
    var currentLeader: Server? {
        servers.filter { $0.up && $0.raft.isLeader }.max { $0.raft.term < $1.raft.term }
    }

    /// Callers test `options.trace` first, so untraced runs build no strings.
    mutating func record(_ text: String) { trace.append("t=\(now) \(text)") }

    mutating func fail(_ kind: Violation.Kind, _ detail: String) {
        guard violation == nil else { return }
        violation = Violation(kind: kind, time: now, detail: detail)
        if options.trace { record("VIOLATION \(kind.rawValue): \(detail)") }
    }

    func index(of id: NodeID) -> Int { Int(id.rawValue) - 1 }

    // MARK: - Main loop

    mutating func run() {
        let end = options.faultMilliseconds + options.healMillisecondsMax
        while now < end && violation == nil {
            if now == options.faultMilliseconds { healEverything() }
            if faultsOn { injectFaults() }
            deliverMessages()
            tickServers()
            runClients()
            for k in servers.indices { driveReady(k) }
            if violation != nil { return }
            if !faultsOn && isSettled() {
                stats.healMilliseconds = now - options.faultMilliseconds
                checkFinalState()
                return
            }
            now += 1
        }
        if violation == nil {
            fail(.liveness, "not settled \(options.healMillisecondsMax)ms after healing: " + describeCluster())
        }
    }

    func describeCluster() -> String {
        servers.map { s in
            "\(s.id):\(s.up ? s.raft.role.rawValue : "down") t\(s.raft.term) c\(s.raft.commitIndex) a\(s.raft.appliedIndex) l\(s.raft.lastIndex)"
        }.joined(separator: " ") + " clients pending: \(clients.filter { $0.current != nil }.count)"
    }

    // MARK: - Faults

    /// Running: up and not paused. A paused server keeps its state but does nothing.
    func isRunning(_ k: Int) -> Bool { servers[k].up && now >= servers[k].pausedUntil }

    /// Whether one more server may stop (crash, pause, fsync error): while fewer servers than a
    /// quorum of the founding voters (spares included in the count) are down or paused, so at
    /// most that many are at once. Whole-cluster crashes ignore it; liveness is asked only after
    /// healing.
    var mayStopAnother: Bool {
        servers.indices.filter { !isRunning($0) }.count < (options.nodeCount - 1) / 2 + 1
    }

    mutating func injectFaults() {
        let n = servers.count
        // Crash a running server (`mayStopAnother` bounds how many are down at once).
        if random.chance(1, in: 700) {
            let k = Int(random.next(below: UInt64(n)))
            if servers[k].up && mayStopAnother { crash(k) }
        }
        for k in servers.indices where servers[k].up && now >= servers[k].crashAt {
            servers[k].crashAt = Int.max
            if mayStopAnother {
                stats.leaderCrashes += 1
                crash(k)
            }
        }
        for k in servers.indices where !servers[k].up && !servers[k].failed && now >= servers[k].downUntil { restart(k) }
        if wholeClusterCrashOdds > 0 && random.chance(1, in: wholeClusterCrashOdds) {
            // Power loss in the whole rack: everyone at once, each keeping what it synced.
            stats.wholeClusterCrashes += 1
            if options.trace { record("whole-cluster crash") }
            for k in servers.indices where servers[k].up { crash(k) }
        }
        if pauseOdds > 0 && random.chance(1, in: pauseOdds) {
            let k = Int(random.next(below: UInt64(n)))
            if isRunning(k) && mayStopAnother {
                stats.pauses += 1
                // Often longer than an election timeout, so the others move on meanwhile.
                servers[k].pausedUntil = now + random.next(in: 10...800)
                if options.trace { record("pause \(servers[k].id) until t=\(servers[k].pausedUntil)") }
            }
        }
        if random.chance(1, in: 900) {
            stats.partitions += 1
            var groups: [[NodeID]] = [[], []]
            for s in servers { groups[Int(random.next(below: 2))].append(s.id) }
            cutBetween(groups[0], groups[1])
            if options.trace { record("partition \(groups[0]) / \(groups[1])") }
        }
        if random.chance(1, in: 1200) {
            stats.asymmetricPartitions += 1
            let victim = servers[Int(random.next(below: UInt64(n)))].id
            let inbound = random.chance(1, in: 2)
            for s in servers where s.id != victim {
                cut.insert(inbound ? Pair(from: s.id, to: victim) : Pair(from: victim, to: s.id))
            }
            if options.trace { record("one-way cut: \(victim) \(inbound ? "hears nobody" : "reaches nobody")") }
        }
        if !cut.isEmpty && random.chance(1, in: 700) {
            cut = []
            if options.trace { record("heal partitions") }
        }
        if random.chance(1, in: 900) { changeMembership() }
        if random.chance(1, in: 1000) { transferLeadership() }
    }

    /// Replaces the cuts with a symmetric partition between `a` and `b`.
    mutating func cutBetween(_ a: [NodeID], _ b: [NodeID]) {
        cut = []
        for x in a { for y in b { cut.insert(Pair(from: x, to: y)); cut.insert(Pair(from: y, to: x)) } }
    }

    mutating func crash(_ k: Int) {
        stats.crashes += 1
        let unsynced = servers[k].disk.unsyncedRecordCount
        let keep = unsynced == 0 ? 0 : Int(random.next(below: UInt64(unsynced + 1)))
        stats.unsyncedWritesLost += unsynced - keep
        if keep > 0 && keep < unsynced { stats.tornTails += 1 }
        servers[k].disk.crash(keeping: keep)
        servers[k].up = false
        servers[k].pausedUntil = 0
        servers[k].pendingReady = nil
        servers[k].proposals = [:]
        servers[k].reads = [:]
        servers[k].readsWaiting = []
        servers[k].downUntil = now + (leaderCrashPercent > 0 ? random.next(in: 5...200) : random.next(in: 20...800))
        servers[k].wasLeader = false
        if options.trace { record("crash \(servers[k].id) (kept \(keep) of \(unsynced) unsynced records)") }
        // A bad sector found on the way down: one stored entry no longer matches its checksum.
        let stored = servers[k].disk.durable.entries.count
        if !corruptionUsed && stored > 0 && random.chance(corruptionPercent, in: 100) {
            corruptionUsed = true
            stats.corruptionsInjected += 1
            let index = servers[k].disk.corruptEntry(at: Int(random.next(below: UInt64(stored))))
            if options.trace { record("damage \(servers[k].id)'s stored entry \(index)") }
        }
    }

    mutating func restart(_ k: Int) {
        let durable: PersistentState
        do throws(StorageCorruption) {
            durable = try servers[k].disk.load()
        } catch {
            // The daemon exits with a storage error and waits for an operator; it never serves
            // from a damaged log.
            servers[k].failed = true
            stats.corruptionsDetected += 1
            if options.trace { record("\(servers[k].id) does not start: \(error)") }
            return
        }
        stats.restarts += 1
        servers[k].raft = RaftNode(config: servers[k].config, persistent: durable)
        servers[k].processor = ReadyProcessor(durable: durable.hardState)
        servers[k].processor.testingMutation = options.mutation
        servers[k].pendingLater = ReadyProcessor.Held()
        servers[k].store = durable.snapshot.map { KVStore(snapshot: $0.data) } ?? KVStore()
        servers[k].up = true
        servers[k].deferredTicks = 0
        if options.trace { record("restart \(servers[k].id): \(servers[k].raft.status.description.split(separator: "\n")[0])") }
    }

    /// The changes the nemesis may ask of a leader whose membership is `membership`.
    func membershipChoices(_ membership: Membership, leader: NodeID) -> [MembershipChange] {
        var choices: [MembershipChange] = []
        for s in servers where !membership.contains(s.id) { choices.append(.addLearner(s.id)); choices.append(.addVoter(s.id)) }
        for id in membership.learners { choices.append(.addVoter(id)); choices.append(.remove(id)) }
        if membership.voters.count > 3 { for id in membership.voters where id != leader { choices.append(.remove(id)) } }
        return choices
    }

    /// One membership change; sometimes a second at once (refused by a correct core while the
    /// first is uncommitted), then a partition that gives the leader exactly a quorum of its
    /// newest configuration, new voters first: if both changes were accepted, the rest may hold
    /// a quorum of the old configuration, and two leaders commit different entries.
    mutating func changeMembership() {
        guard let k = servers.indices.first(where: { isRunning($0) && servers[$0].raft.isLeader && servers[$0].pendingReady == nil })
        else { return }
        let before = servers[k].raft.membership
        let leader = servers[k].id
        let burst = random.chance(membershipBurstPercent, in: 100)
        if burst { stats.membershipBursts += 1 }
        for _ in 0..<(burst ? 2 : 1) {
            let choices = membershipChoices(servers[k].raft.membership, leader: leader)
            guard !choices.isEmpty else { break }
            let change = choices[Int(random.next(below: UInt64(choices.count)))]
            do throws(ProposalError) {
                let at = try servers[k].raft.proposeMembershipChange(change)
                stats.membershipChanges += 1
                if options.trace { record("\(leader) proposes \(change) at \(at.term)/\(at.index)") }
            } catch {
                if options.trace { record("\(leader) refuses \(change): \(error)") }
            }
        }
        if burst && random.chance(1, in: 2) {
            let after = servers[k].raft.membership
            let newcomers = after.voters.filter { $0 != leader && !before.isVoter($0) }
            let others = after.voters.filter { $0 != leader && before.isVoter($0) }
            let side = Array(([leader] + newcomers + others).prefix(after.quorum))
            stats.membershipPartitions += 1
            cutBetween(side, servers.map(\.id).filter { !side.contains($0) })
            if options.trace { record("partition along \(after): \(side) / the rest") }
        }
        afterEvent(k)
    }

    mutating func transferLeadership() {
        guard let k = servers.indices.first(where: { isRunning($0) && servers[$0].raft.isLeader && servers[$0].pendingReady == nil })
        else { return }
        let voters = servers[k].raft.membership.voters.filter { $0 != servers[k].id }
        guard !voters.isEmpty else { return }
        let target = voters[Int(random.next(below: UInt64(voters.count)))]
        if (try? servers[k].raft.transferLeadership(to: target)) != nil {
            stats.leaderTransfers += 1
            if options.trace { record("\(servers[k].id) transfers leadership to \(target)") }
        }
        afterEvent(k)
    }

    mutating func healEverything() {
        faultsOn = false
        cut = []
        for k in servers.indices {
            servers[k].pausedUntil = 0
            servers[k].crashAt = Int.max
            if !servers[k].up && !servers[k].failed { restart(k) }
        }
        if options.trace { record("heal everything; no new client operations") }
    }

    // MARK: - Network

    mutating func send(_ message: Message) {
        stats.messagesSent += 1
        if faultsOn && random.chance(dropPercent, in: 100) {
            stats.messagesDropped += 1
            return
        }
        var delay = random.next(in: 1...3)
        if faultsOn && random.chance(delayPercent, in: 100) {
            stats.messagesDelayed += 1
            delay += random.next(in: 5...120)
        }
        inFlight[now + delay, default: []].append(message)
        if faultsOn && random.chance(duplicatePercent, in: 100) {
            stats.messagesDuplicated += 1
            inFlight[now + random.next(in: 1...60), default: []].append(message)
        }
    }

    mutating func deliverMessages() {
        guard let due = inFlight.removeValue(forKey: now) else { return }
        for message in due {
            let k = index(of: message.to)
            guard servers[k].up, !cut.contains(Pair(from: message.from, to: message.to)) else {
                stats.messagesDropped += 1
                continue
            }
            if now < servers[k].pausedUntil {
                // Paused: the message waits in the socket buffer, stale by the time it is read.
                inFlight[servers[k].pausedUntil, default: []].append(message)
                continue
            }
            if servers[k].pendingReady != nil {
                // The server is busy persisting: the message waits in its socket buffer.
                inFlight[now + 1, default: []].append(message)
                continue
            }
            if options.trace { record("\(message)") }
            do throws(InvalidMessage) {
                try servers[k].raft.step(message)
            } catch {
                // The simulated network delivers what correct servers sent: a refusal is a bug
                // in the sender or in validation.
                fail(.invalidMessage, "\(message.to) refused \(message): \(error.reason)")
                return
            }
            afterEvent(k)
            if violation != nil { return }
        }
    }

    mutating func tickServers() {
        let tickClock = SimulationOptions.tickMilliseconds * 1000
        for k in servers.indices where isRunning(k) {
            servers[k].clock += servers[k].clockRatePermille
            guard servers[k].clock >= tickClock else { continue }
            servers[k].clock -= tickClock
            if servers[k].pendingReady != nil {
                servers[k].deferredTicks += 1
            } else {
                servers[k].raft.tick()
                afterEvent(k)
            }
        }
    }

    // MARK: - Ready

    mutating func driveReady(_ k: Int) {
        guard isRunning(k) else { return }
        if servers[k].pendingReady == nil {
            guard servers[k].raft.hasReady else { return }
            let ready = servers[k].raft.ready()
            checkPersisted(k, ready)
            // The driver's order (ReadyProcessor): a leader's appends leave now, before the
            // write below is synced; a crash meanwhile loses the unsynced write.
            effectsServer = k
            let later = servers[k].processor.begin(ready, &self)
            servers[k].disk.write(ready)
            servers[k].pendingReady = ready
            servers[k].pendingLater = later
            servers[k].readyDoneAt = now + (diskLatencyMax == 0 ? 0 : random.next(in: 0...diskLatencyMax))
        }
        guard let ready = servers[k].pendingReady, now >= servers[k].readyDoneAt else { return }
        if faultsOn && fsyncErrorOdds > 0 && random.chance(1, in: fsyncErrorOdds) && mayStopAnother {
            // fsync failed: the driver halts and the process exits without the sync taking
            // effect (what reached the disk before the error is a random prefix, as in a crash).
            stats.fsyncErrors += 1
            if options.trace { record("\(servers[k].id): fsync error") }
            crash(k)
            return
        }
        // Contract step 1 done (fsync), then send, install, apply and resolve, reads, advance.
        servers[k].disk.sync()
        effectsServer = k
        var processor = servers[k].processor
        let finished = processor.finish(ready, later: servers[k].pendingLater, &self)
        servers[k].processor = processor
        if violation != nil || !finished { return }
        servers[k].raft.advance(ready)
        servers[k].pendingReady = nil
        serveReads(k)
        while servers[k].deferredTicks > 0 {
            servers[k].deferredTicks -= 1
            servers[k].raft.tick()
        }
        afterEvent(k)
        maybeCompact(k)
    }

    mutating func maybeCompact(_ k: Int) {
        let raft = servers[k].raft
        guard servers[k].compactEvery != Int.max,
              raft.appliedIndex.rawValue >= raft.snapshotIndex.rawValue + UInt64(servers[k].compactEvery)
        else { return }
        servers[k].raft.compact(through: raft.appliedIndex, data: servers[k].store.snapshot())
        servers[k].disk.saveSnapshot(servers[k].raft.snapshot!)
        stats.snapshotsMade += 1
        if options.trace { record("\(servers[k].id) compacts through \(raft.appliedIndex)") }
    }

    mutating func installSnapshot(_ k: Int, _ snapshot: Snapshot) {
        stats.snapshotsInstalled += 1
        if let known = committed[snapshot.index], known.entry.term != snapshot.term {
            fail(.stateMachineSafety, "\(servers[k].id) installs snapshot \(snapshot.term)/\(snapshot.index), committed there: \(known.entry)")
        }
        servers[k].store = KVStore(snapshot: snapshot.data)
        if options.trace { record("\(servers[k].id) installs \(snapshot)") }
    }

    mutating func apply(_ k: Int, _ entry: Entry) {
        let id = servers[k].id
        guard recordCommitted(k, entry, "applies") else { return }
        lastApplied = nil
        if entry.kind == .normal {
            let command = KVStore.decode(entry.data)
            lastApplied = (entry.index, command, servers[k].store.apply(command))
        }
        if entry.kind == .membership, !servers[k].raft.membership.contains(id) {
            // Removed: proposals beyond this point can no longer be decided here.
            for index in servers[k].proposals.keys.sorted() {
                let p = servers[k].proposals.removeValue(forKey: index)!
                attemptFailed(client: p.client, sequence: p.sequence)
            }
        }
    }

    mutating func serveReads(_ k: Int) {
        let applied = servers[k].raft.appliedIndex
        var waiting: [(index: LogIndex, context: [UInt8])] = []
        for read in servers[k].readsWaiting {
            guard read.index <= applied else {
                waiting.append(read)
                continue
            }
            guard let r = servers[k].reads.removeValue(forKey: read.context) else { continue }
            completeRead(client: r.client, attempt: r.attempt, value: servers[k].store.values[r.key])
        }
        servers[k].readsWaiting = waiting
    }

    // MARK: - Invariants

    /// An entry server `k` commits or applies: State Machine Safety (one entry per committed
    /// index, whoever commits it), and the lowest term it was known committed in, for Leader
    /// Completeness. false: a violation.
    mutating func recordCommitted(_ k: Int, _ entry: Entry, _ verb: String) -> Bool {
        let term = servers[k].raft.term
        if let known = committed[entry.index] {
            if known.entry != entry {
                fail(.stateMachineSafety, "\(servers[k].id) \(verb) \(entry) at \(entry.index), committed there before: \(known.entry)")
                return false
            }
            if term < known.term { committed[entry.index]!.term = term }
        } else {
            committed[entry.index] = (entry, term)
            stats.entriesCommitted += 1
            if entry.index > highestCommitted { highestCommitted = entry.index }
        }
        return true
    }

    /// Every committed entry is on a quorum of the voters' synced storage, judged when the first
    /// server's commit index covers it (the leader that commits it), with that server's
    /// membership: the leader counted the voters of its own membership, and single-server
    /// changes keep the quorums of consecutive memberships overlapping, so a later membership
    /// need not hold it on a quorum of its own. Synced storage is lost only to damage, which
    /// keeps its server down for good (`MemoryDisk.holds`). The entry is recorded as committed
    /// at once, so Leader Completeness holds a new leader to entries no server applied yet.
    mutating func checkCommitted(_ k: Int) {
        let raft = servers[k].raft
        guard raft.commitIndex > commitChecked else { return }
        let membership = raft.membership
        var index = commitChecked.next
        while index <= raft.commitIndex {
            // Compacted (a snapshot, made or installed, holds only entries checked before).
            if let entry = raft.entry(at: index) {
                let holders = membership.voters.filter { servers[self.index(of: $0)].disk.holds(index: index, term: entry.term) }
                if holders.count < membership.quorum {
                    fail(.committedNotDurable, "\(raft.id) commits \(entry) in term \(raft.term); synced on \(holders) only, "
                         + "a quorum of \(membership) is \(membership.quorum)")
                    return
                }
                guard recordCommitted(k, entry, "commits") else { return }
            }
            index = index.next
        }
        commitChecked = raft.commitIndex
        if raft.isLeader && servers[k].firstCommitTerm != raft.term {
            servers[k].firstCommitTerm = raft.term
            // A new leader's first commit: with a correct core it covers its no-op; with a
            // broken commit rule, old-term entries its no-op has not joined on a quorum yet.
            if faultsOn && random.chance(figure8Percent, in: 100) { isolateLeader(k, withMinority: false) }
        }
    }

    /// The Figure 8 nemesis (paper §5.4.2): cut a leader off right after it accepted a proposal
    /// (with a minority that may get the entry), right after its election, and right after its
    /// first commit in its term. Each cut replaces the previous one and so heals whoever that
    /// isolated: a leader's entries on a minority, a rival elected and cut off with its own
    /// entries at those indexes, the first leader back and committing, cut off in turn, the
    /// rival back: the paper's Figure 8, which random faults alone almost never produce.
    mutating func isolateLeader(_ k: Int, withMinority: Bool) {
        let raft = servers[k].raft
        var others = raft.membership.members.filter { $0 != raft.id }
        var side = [raft.id]
        if withMinority {
            for _ in 0..<random.next(in: 0...max(0, raft.membership.quorum - 2)) where !others.isEmpty {
                side.append(others.remove(at: Int(random.next(below: UInt64(others.count)))))
            }
        }
        stats.leaderIsolations += 1
        cutBetween(side, servers.map(\.id).filter { !side.contains($0) })
        if options.trace { record("cut off leader \(raft.id) of term \(raft.term) with \(side)") }
    }

    /// After every event on a server: every committed entry durable on a quorum, Election
    /// Safety, and Leader Completeness for a new leader.
    mutating func afterEvent(_ k: Int) {
        checkCommitted(k)
        if violation != nil { return }
        let raft = servers[k].raft
        let isLeader = raft.isLeader
        defer { servers[k].wasLeader = isLeader }
        guard isLeader, !servers[k].wasLeader else { return }
        stats.leadersElected += 1
        if options.trace { record("\(raft.id) is leader of term \(raft.term)") }
        if let other = leaderOfTerm[raft.term], other != raft.id {
            fail(.electionSafety, "\(other) and \(raft.id) both leader in term \(raft.term)")
            return
        }
        leaderOfTerm[raft.term] = raft.id
        if faultsOn && random.chance(leaderCrashPercent, in: 100) { servers[k].crashAt = now + random.next(in: 0...8) }
        if faultsOn && random.chance(figure8Percent, in: 100) { isolateLeader(k, withMinority: false) }
        // Paper §5.4.1: an entry committed in an earlier term is in every later leader's log.
        var index = raft.snapshotIndex.next
        while index <= highestCommitted {
            if let known = committed[index], known.term < raft.term, raft.term(at: index) != known.entry.term {
                fail(.leaderCompleteness, "leader \(raft.id) of term \(raft.term) lacks committed \(known.entry)"
                     + " (has \(raft.entry(at: index).map(\.description) ?? "nothing"))")
                return
            }
            index = index.next
        }
    }

    /// Log Matching (paper §5.3), incrementally: an (index, term) pair names one entry, with one
    /// predecessor term, across every log that ever held it.
    mutating func checkPersisted(_ k: Int, _ ready: Ready) {
        var previousTerm: Term? = ready.entries.first.flatMap { servers[k].raft.term(at: $0.index.previous) }
        for entry in ready.entries {
            let key = IndexTerm(index: entry.index, term: entry.term)
            if let seen = persisted[key] {
                if seen.entry != entry {
                    fail(.logMatching, "\(servers[k].id) persists \(entry), another log holds \(seen.entry)")
                    return
                }
                if let a = seen.previousTerm, let b = previousTerm, a != b {
                    fail(.logMatching, "\(servers[k].id): entry \(entry) follows term \(b), elsewhere term \(a)")
                    return
                }
            } else {
                persisted[key] = (entry, previousTerm)
            }
            previousTerm = entry.term
        }
    }

    /// Liveness: a leader, every member caught up, every client operation decided.
    mutating func isSettled() -> Bool {
        guard clients.allSatisfy({ $0.current == nil }) else { return false }
        guard let leader = currentLeader else { return false }
        let commit = leader.raft.commitIndex
        guard commit == leader.raft.lastIndex else { return false }
        for id in leader.raft.membership.members where !servers[index(of: id)].failed {
            let s = servers[index(of: id)]
            if !s.up || s.pendingReady != nil || s.raft.appliedIndex != commit || s.raft.term != leader.raft.term { return false }
        }
        return true
    }

    // MARK: - The simulated driver's side of the Ready contract (ReadyEffects)

    /// Every acknowledged write is in the committed log that every member applied.
    mutating func checkFinalState() {
        let leader = currentLeader!
        for ack in acknowledged {
            // The session table holds the last applied request per client; clients are sequential.
            guard let session = leader.store.session(of: ack.client), session.sequence >= ack.sequence else {
                fail(.acknowledgedWriteLost, "client \(ack.client) #\(ack.sequence) acknowledged, not in the final state")
                return
            }
            guard let index = ack.index else { continue }
            guard let known = committed[index], known.entry.kind == .normal else {
                fail(.acknowledgedWriteLost, "client \(ack.client) #\(ack.sequence) acknowledged at \(index), never committed")
                return
            }
            let c = KVStore.decode(known.entry.data)
            if c.client != ack.client || c.sequence != ack.sequence {
                fail(.acknowledgedWriteLost, "client \(ack.client) #\(ack.sequence) acknowledged at \(index), committed there: \(known.entry)")
                return
            }
        }
        for id in leader.raft.membership.members where !servers[index(of: id)].failed {
            let s = servers[index(of: id)]
            if let last = acknowledged.compactMap(\.index).max(), s.raft.appliedIndex < last {
                fail(.acknowledgedWriteLost, "\(id) applied only \(s.raft.appliedIndex) < \(last)")
            }
            if s.store.values != leader.store.values {
                fail(.stateMachineSafety, "\(id) state \(s.store.values.sorted { $0.key < $1.key }) differs from leader's")
            }
        }
    }

    // MARK: - Clients

    mutating func runClients() {
        for c in clients.indices {
            if clients[c].current == nil {
                guard faultsOn, now >= clients[c].nextOperationAt else { continue }
                startOperation(c)
            } else if let retryAt = clients[c].current!.retryAt, now >= retryAt {
                submit(c)
            } else if now >= clients[c].current!.deadline {
                clients[c].leaderHint = nil
                submit(c)
            }
        }
    }

    mutating func startOperation(_ c: Int) {
        clients[c].sequence += 1
        let key = "k\(random.next(below: UInt64(options.keyCount)))"
        let value = "c\(clients[c].id)-\(clients[c].sequence)"
        let operation: KVOperation
        switch random.next(below: 10) {
        case 0..<4: operation = .put(key: key, value: value)
        case 4..<8: operation = .get(key: key)
        default:
            // Compare against a value some client may have written, or absence.
            let guess = random.chance(1, in: 4) ? nil
                : "c\(random.next(in: 1...options.clientCount))-\(random.next(in: max(1, Int(clients[c].sequence) - 3)...Int(clients[c].sequence)))"
            operation = .cas(key: key, expected: guess, new: value)
        }
        clients[c].current = Request(operation: operation, sequence: clients[c].sequence, call: now, attempt: 0,
                                     deadline: 0, retryAt: nil)
        if options.trace { record("client \(clients[c].id) calls \(operation)") }
        submit(c)
    }

    mutating func submit(_ c: Int) {
        guard var request = clients[c].current else { return }
        clients[c].attempt += 1
        request.attempt = clients[c].attempt
        request.retryAt = nil
        request.deadline = now + SimulationOptions.clientAttemptTimeoutMilliseconds
        let target: NodeID
        if let hint = clients[c].leaderHint, random.chance(7, in: 8) {
            target = hint
        } else {
            target = servers[Int(random.next(below: UInt64(servers.count)))].id
        }
        let k = index(of: target)
        clients[c].current = request
        // A paused server reads the request only later; the client times out first (no answer).
        if servers[k].up && !isRunning(k) { return }
        guard servers[k].up, servers[k].pendingReady == nil else {
            clients[c].current!.retryAt = now + random.next(in: 5...30)
            clients[c].leaderHint = nil
            return
        }
        let outcome: ProposalError?
        if case .get = request.operation {
            var context: [UInt8] = []
            for value in [UInt64(clients[c].id), UInt64(request.attempt)] {
                for b in 0..<8 { context.append(UInt8(truncatingIfNeeded: value >> (8 * UInt64(b)))) }
            }
            do throws(ProposalError) {
                try servers[k].raft.readIndex(context: context)
                servers[k].reads[context] = (clients[c].id, request.attempt, request.operation.key)
                outcome = nil
            } catch { outcome = error }
        } else {
            let command = KVStore.Command(client: clients[c].id, sequence: request.sequence, operation: request.operation)
            do throws(ProposalError) {
                let at = try servers[k].raft.propose(KVStore.encode(command))
                servers[k].proposals[at.index] = (clients[c].id, request.sequence, at.term)
                outcome = nil
                if faultsOn && random.chance(figure8Percent, in: 400) { isolateLeader(k, withMinority: true) }
            } catch { outcome = error }
        }
        switch outcome {
        case nil:
            clients[c].leaderHint = target
        case .notLeader(let leader)?:
            clients[c].leaderHint = leader
            clients[c].current!.retryAt = now + random.next(in: 1...5)
        case .some:
            clients[c].current!.retryAt = now + random.next(in: 5...30)
        }
        afterEvent(k)
    }

    mutating func complete(client id: Int, sequence: UInt64, result: KVResult, index: LogIndex?) {
        let c = id - 1
        guard let request = clients[c].current, request.sequence == sequence else { return }
        if request.operation.isWrite { acknowledged.append((id, sequence, index)) }
        finish(c, request, result)
    }

    mutating func attemptFailed(client id: Int, sequence: UInt64) {
        let c = id - 1
        guard let request = clients[c].current, request.sequence == sequence, request.retryAt == nil else { return }
        clients[c].current!.retryAt = now + 1
    }

    mutating func completeRead(client id: Int, attempt: Int, value: String?) {
        let c = id - 1
        guard let request = clients[c].current, request.attempt == attempt, case .get = request.operation else { return }
        finish(c, request, .value(value))
    }

    mutating func finish(_ c: Int, _ request: Request, _ result: KVResult) {
        history.append(HistoryOperation(client: clients[c].id, operation: request.operation, call: Int64(request.call),
                                        returned: Int64(now), result: result))
        stats.operationsCompleted += 1
        if options.trace { record("client \(clients[c].id) \(request.operation) returns \(result)") }
        clients[c].current = nil
        clients[c].nextOperationAt = now + random.next(in: 0...20)
    }
}

/// The simulated driver's side of each step of the Ready contract, for server `effectsServer`.
extension World: ReadyEffects {
    mutating func sendEarly(_ messages: [Message]) {
        stats.earlySends += messages.count
        for message in messages { send(message) }
    }

    mutating func send(_ messages: [Message]) {
        for message in messages { send(message) }
    }

    mutating func install(_ snapshot: Snapshot) -> Bool {
        installSnapshot(effectsServer, snapshot)
        return violation == nil
    }

    mutating func apply(_ entry: Entry) -> Bool {
        apply(effectsServer, entry)
        return violation == nil
    }

    func proposalTerm(at index: LogIndex) -> Term? { servers[effectsServer].proposals[index]?.term }

    mutating func resolveProposal(at index: LogIndex, _ outcome: ProposalOutcome) {
        let k = effectsServer
        guard let p = servers[k].proposals.removeValue(forKey: index) else { return }
        switch outcome {
        case .committed:
            if let (at, command, result) = lastApplied, at == index, command.client == p.client, command.sequence == p.sequence {
                complete(client: p.client, sequence: p.sequence, result: result, index: index)
            } else {
                fail(.stateMachineSafety, "\(servers[k].id): proposal of client \(p.client) #\(p.sequence) at \(index) "
                     + "committed in its term, but another command applied there")
            }
        case .superseded:
            attemptFailed(client: p.client, sequence: p.sequence)
        case .unknown:
            // The driver reports an unknown outcome; the simulated client reads its session to
            // know (its writes are idempotent by sequence).
            if let session = servers[k].store.session(of: p.client), session.sequence == p.sequence {
                complete(client: p.client, sequence: p.sequence, result: session.result, index: nil)
            } else {
                attemptFailed(client: p.client, sequence: p.sequence)
            }
        }
    }

    func proposals(through index: LogIndex) -> [LogIndex] {
        servers[effectsServer].proposals.keys.filter { $0 <= index }.sorted()
    }

    mutating func confirmRead(_ state: ReadState) {
        servers[effectsServer].readsWaiting.append((state.index, state.context))
    }
}
