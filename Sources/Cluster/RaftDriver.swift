import Dispatch
import Logging
import NIOConcurrencyHelpers
import NIOCore
import Raft

/// Why a proposal did not take effect.
public enum ProposeError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Refused by the core (e.g. not the leader: the caller forwards or redirects).
    case refused(ProposalError)
    /// Accepted, but another leader's entry took its index: it never committed.
    case superseded
    /// The driver stopped (shutdown, or storage failed) before the entry applied.
    case stopped
    /// Whether the entry committed is not known here: a snapshot from the leader replaced the
    /// log past its index. The client may retry (or read to find out).
    case outcomeUnknown
    /// No outcome within `RaftDriver.proposalTimeoutSeconds` (e.g. leadership lost and no leader
    /// since). The entry may still commit later; the client may retry.
    case timedOut
    /// A read barrier (ReadIndex) not confirmed within its timeout: no leader, or leadership
    /// changed while it waited. Nothing was written; the client may retry.
    case readTimedOut

    public var description: String {
        switch self {
        case .refused(let error): "\(error)"
        case .superseded: "the proposal was superseded by another leader's entry and did not commit"
        case .stopped: "the Raft driver stopped"
        case .outcomeUnknown: "a snapshot replaced the log past the proposal before this server saw it apply; its outcome is unknown"
        case .timedOut: "the proposal had no outcome within \(RaftDriver.proposalTimeoutSeconds) s"
        case .readTimedOut: "the read barrier was not confirmed by a leader in time (no leader, or leadership changed)"
        }
    }
}

/// What a server knows of the cluster right now (for status endpoints and tests).
public struct RaftStatus: Sendable, Equatable {
    public var id: NodeID
    public var role: Role
    public var term: Term
    public var leader: NodeID?
    public var commitIndex: LogIndex
    public var appliedIndex: LogIndex
    /// How long ago this server last heard from a leader: zero on the leader, nil if never
    /// since start (Consul's X-Consul-LastContact, and staleness in /ready).
    public var lastContact: TimeAmount?
}

/// Runs one `RaftNode` against the real world (DESIGN.md: Cluster owns all I/O in one loop):
/// ticks from a clock, messages from `PeerTransport`, proposals from the API. After every event
/// it carries out the `Ready` contract in order: **persist** (one SQLite transaction, fsynced),
/// **send**, **apply**, **advance**.
///
/// Everything runs on one event loop, which also does the fsync. discod gives it a thread of its
/// own (`ClusterRuntime`): the DNS workers, the HTTP API and the peer transport run elsewhere,
/// and API requests read `currentStatus` without a hop onto it.
public final class RaftDriver: @unchecked Sendable {
    // @unchecked: `node`, `pending` and `stoppedReason` are touched only on `loop`.

    /// Wall-clock length of a tick. With the core's defaults (election after 10–20 ticks,
    /// heartbeat every tick) a dead leader is replaced within 0.5–1 s, and 50 ms heartbeats stay
    /// far inside the timeout on a loaded 2-core machine.
    public static let tickMillisecondsDefault: Int64 = 50

    /// Snapshot and compaction settings (see `RaftDriver+Snapshots.swift`).
    public struct Options: Sendable {
        /// A snapshot is taken every this many applied entries.
        public var snapshotIntervalEntries: UInt64 = RaftDriver.snapshotIntervalEntriesDefault
        /// The log is compacted through a snapshot only once this many entries were applied
        /// after it, so a follower that is a little behind gets entries, not the snapshot.
        /// Must be below `snapshotIntervalEntries`.
        public var snapshotTrailingEntries: UInt64 = RaftDriver.snapshotTrailingEntriesDefault
        /// Test failpoint: pause this long while installing a snapshot from the leader, after
        /// raft.db holds it and before the state machines are replaced (0: no pause).
        public var snapshotInstallPauseMilliseconds: Int64 = 0
        /// A proposal without an outcome after this long fails with `ProposeError.timedOut`
        /// (checked every tick; tests shorten it).
        public var proposalTimeoutMilliseconds: Int64 = RaftDriver.proposalTimeoutSeconds * 1000

        public init() {}
    }

    public let id: NodeID
    let loop: EventLoop
    let storage: RaftStorage
    let transport: PeerTransport
    private let tick: TimeAmount
    let applyToStateMachines: (Entry) -> Void
    let logger: Logger
    let options: Options
    /// The state machines whose state goes into snapshots.
    let participants: [any SnapshotParticipant]
    var node: RaftNode
    /// A snapshot taken and not yet used to compact (waiting for the trailing entries).
    var pendingCapture: (index: LogIndex, data: [UInt8])?
    /// Writes the files of the snapshots this server takes, off the Raft thread.
    let snapshotWriter = DispatchQueue(label: "disco-snapshot-writer")
    /// A compaction's snapshot file is being written (`snapshotWriter`).
    var snapshotWriteInFlight = false
    /// A capture pinned by `maybeSnapshot` is being encoded (`snapshotWriter`).
    var captureInFlight = false
    /// How long a capture of the state machines held the Raft thread in this Ready (slow Ready logs).
    var lastCaptureNanoseconds: Int64 = 0
    /// The applied index of the last capture attempt (a capture too large to ship is not retried
    /// before another interval).
    var lastCaptureIndex: LogIndex = .zero
    /// Operator restores that were refused when they applied, by index, for their proposer.
    var restoreFailures: [LogIndex: SnapshotError] = [:]
    /// Addresses from configuration or a join answer; the replicated list (servers entries and
    /// the snapshot's "servers" section) overrides them.
    var configuredServers: [NodeID: ServerAddresses] = [:]
    var replicatedServers: [NodeID: ServerAddresses] = [:]
    var publishedServers: [NodeID: ServerAddresses]?
    var publishedMembership: Membership?
    var serversChanged: (@Sendable ([NodeID: ServerAddresses], Membership) -> Void)?
    var managesPeers = false
    /// When a message last arrived from each server.
    var lastContact: [NodeID: NIODeadline] = [:]
    /// Per peer: when a refused message was last logged, and how many were refused since.
    private var refusals: [NodeID: (logged: NIODeadline?, suppressed: Int)] = [:]
    private var ticker: RepeatedTask?
    var pending: [LogIndex: (term: Term, promise: EventLoopPromise<LogIndex>, proposedAt: NIODeadline)] = [:]
    /// Proposals taken since the last Ready: appended together, as one batch, when it starts.
    private var proposalsQueued: [(data: [UInt8], promise: EventLoopPromise<LogIndex>, takenAt: NIODeadline)] = []
    /// When the Ready being handled started (the proposal stage histograms).
    var readyStarted = NIODeadline.now()
    /// Why the driver stopped; once set, this server claims nothing (no role, no leader).
    var stoppedReason: String?
    private var failureHandler: (@Sendable (String) -> Void)?
    /// ReadIndex requests sent, by context; then confirmed reads waiting for `applied` to reach them.
    var readsAsked: [UInt64: [UInt64: EventLoopPromise<Void>]] = [:]
    /// Reads waiting for the next round, by id; when the round in flight started.
    private var readsQueued: [UInt64: EventLoopPromise<Void>] = [:]
    var readRoundStarted: NIODeadline?
    private var readID: UInt64 = 0
    var readsWaiting: [(index: LogIndex, promise: EventLoopPromise<Void>)] = []
    var readSequence: UInt64 = 0
    private var readyScheduled = false
    /// Carries out the Ready contract's order (shared with the simulator).
    private var processor: ReadyProcessor
    /// The commit index raft.db holds (see `hardStateToStore`).
    private var storedCommit: LogIndex
    private var slowReadyLogged: NIODeadline?
    private var slowReadiesSuppressed = 0
    private var lastLeader: NodeID?
    private var lastLeaderContact: NIODeadline?
    /// What other threads read of this driver, published after every event.
    private let published: NIOLockedValueBox<(status: RaftStatus, lastLeaderContact: NIODeadline?, pendingProposals: Int)>

    /// Counters for /metrics (updated on `loop`).
    let countersBox = NIOLockedValueBox(RaftCounters())
    public var counters: RaftCounters { countersBox.withLockedValue { $0 } }

    /// Proposals waiting for their outcome here, as of the last event (admission control sheds
    /// writes beyond a bound instead of queueing them).
    public var pendingProposals: Int { published.withLockedValue { $0.pendingProposals } }

    /// - Parameters:
    ///   - participants: the state machines that snapshots hold and restore.
    ///   - apply: called on the driver's loop with every committed entry for the state machines,
    ///     in order (entries the driver handles itself, such as operator restores, excepted).
    public init(config: RaftConfig, storage: RaftStorage, transport: PeerTransport, loop: EventLoop,
                tickMilliseconds: Int64 = RaftDriver.tickMillisecondsDefault, logger: Logger,
                participants: [any SnapshotParticipant] = [], options: Options = Options(),
                apply: @escaping (Entry) -> Void) throws(RaftStorageError) {
        precondition(options.snapshotTrailingEntries < options.snapshotIntervalEntries,
                     "snapshot trailing entries (\(options.snapshotTrailingEntries)) must be below the interval (\(options.snapshotIntervalEntries))")
        precondition(Set(participants.map(\.snapshotName)).count == participants.count, "two state machines with one snapshot name")
        self.id = config.id
        self.loop = loop
        self.storage = storage
        self.transport = transport
        self.tick = .milliseconds(tickMilliseconds)
        self.logger = logger
        self.applyToStateMachines = apply
        self.participants = participants
        self.options = options
        let persistent = try storage.load()
        storage.removeLeftoverSnapshotFiles()
        self.node = RaftNode(config: config, persistent: persistent)
        self.lastIndexAtStart = node.lastIndex
        self.published = NIOLockedValueBox((RaftStatus(id: config.id, role: .follower, term: persistent.hardState.term,
                                                       leader: nil, commitIndex: .zero, appliedIndex: .zero), nil, 0))
        self.processor = ReadyProcessor(durable: persistent.hardState)
        self.storedCommit = persistent.hardState.commit
        if let snapshot = persistent.snapshot { try restoreParticipantsBehind(snapshot) }
        loadServers(persistent)
    }

    public func start() {
        loop.execute {
            // The only voter need not wait out an election timeout to find nobody else
            // (`discod --dev` accepted writes only after about 0.6 s; issue 15).
            if self.node.membership.voters == [self.node.id] { self.event { $0.campaign() } }
            self.ticker = self.loop.scheduleRepeatedTask(initialDelay: self.tick, delay: self.tick) { _ in
                self.ticksHandled.withLockedValue { $0 &+= 1 }
                self.event { $0.tick() }
                self.expireProposals()
                self.startReadRound()
                self.maybePromoteLearners()
            }
        }
    }

    /// Stops ticking and fails every pending proposal; waits for a snapshot file being written.
    public func stop() {
        try? loop.submit { self.halt("stopped", failed: false) }.wait()
        snapshotWriter.sync {}
    }

    /// `handler` is called once (on the driver's loop) if the driver stops because its storage
    /// or a state machine failed: the server can no longer take part, and should exit so that
    /// its supervisor restarts it from what is durable.
    public func onFailure(_ handler: @escaping @Sendable (String) -> Void) {
        loop.execute { self.failureHandler = handler }
    }

    /// A message from a peer (any thread).
    public func receive(_ message: Message) {
        loop.execute {
            guard self.stoppedReason == nil else { return }
            do throws(InvalidMessage) {
                try self.node.step(message)
            } catch {
                self.logRefusal(error)
                return
            }
            self.lastContact[message.from] = .now()
            self.scheduleReady()
            if message.from == self.node.leader {
                self.lastLeaderContact = .now()
                self.published.withLockedValue { $0.lastLeaderContact = self.lastLeaderContact }
            }
        }
    }

    /// A Ready that holds the Raft thread longer than this is logged (a heartbeat waits for it;
    /// the election timeout is 10–20 ticks of 50 ms).
    public static let slowReadyMilliseconds: Int64 = 100
    /// Slow Readies are logged at most once per this interval; the count in between is reported.
    public static let slowReadyLogIntervalSeconds: Int64 = 10

    private func noteSlowReady(_ ready: Ready, started: NIODeadline, saved: NIODeadline) {
        let now = NIODeadline.now()
        guard now - started >= .milliseconds(Self.slowReadyMilliseconds) else { return }
        if let last = slowReadyLogged, now - last < .seconds(Self.slowReadyLogIntervalSeconds) {
            slowReadiesSuppressed += 1
            return
        }
        logger.warning("a Raft Ready held the Raft thread", metadata: [
            "raft.ready_ms": "\((now - started).nanoseconds / 1_000_000)",
            "raft.save_ms": "\((saved - started).nanoseconds / 1_000_000)",
            "raft.apply_send_ms": "\((now - saved).nanoseconds / 1_000_000)",
            "raft.snapshot_capture_ms": "\(lastCaptureNanoseconds / 1_000_000)",
            "raft.entries": "\(ready.entries.count)", "raft.committed": "\(ready.committedEntries.count)",
            "raft.committed_bytes": "\(ready.committedEntries.reduce(0) { $0 + $1.data.count })",
            "raft.slow_since_last_log": "\(slowReadiesSuppressed)"])
        slowReadyLogged = now
        slowReadiesSuppressed = 0
    }

    /// Refused peer messages are logged at most once per peer per this interval (a peer with a
    /// wiped disk is refused at every heartbeat); the count in between is reported.
    public static let refusalLogIntervalSeconds: Int64 = 10

    private func logRefusal(_ error: InvalidMessage) {
        let now = NIODeadline.now()
        var record = refusals[error.from] ?? (logged: nil, suppressed: 0)
        if let last = record.logged, now - last < .seconds(Self.refusalLogIntervalSeconds) {
            record.suppressed += 1
        } else {
            logger.error("refused a peer's Raft message", metadata: [
                "raft.peer": "\(error.from)", "raft.error": "\(error.reason)",
                "raft.refused_since_last_log": "\(record.suppressed)"])
            record = (now, 0)
        }
        refusals[error.from] = record
    }

    /// Every proposal has an outcome within this: an HTTP request never hangs on a proposal
    /// whose leader was deposed with no successor in sight. 10 s is 10–20 election timeouts.
    public static let proposalTimeoutSeconds: Int64 = 10

    static func seconds(_ amount: TimeAmount) -> Double { Double(max(amount.nanoseconds, 0)) / 1e9 }

    /// Proposes `data`; the future succeeds with the entry's index once it is applied here, and
    /// fails with a `ProposeError` otherwise (at the latest after `proposalTimeoutSeconds`).
    /// It completes on `resultLoop` (default: the driver's): an HTTP loop that passes its own
    /// gets the outcome there with no futures in between (issue 16: the submit, its inner
    /// promise and a hop were three per write).
    public func propose(_ data: [UInt8], on resultLoop: EventLoop? = nil) -> EventLoopFuture<LogIndex> {
        let submitted = NIODeadline.now()
        let promise = (resultLoop ?? loop).makePromise(of: LogIndex.self)
        loop.execute {
            guard self.stoppedReason == nil else { return promise.fail(ProposeError.stopped) }
            let taken = NIODeadline.now()
            self.countersBox.withLockedValue { $0.proposalQueue.record(seconds: Self.seconds(taken - submitted)) }
            self.proposalsQueued.append((data, promise, taken))
            self.scheduleReady()
        }
        return promise.futureResult
    }

    /// Appends the proposals taken since the last Ready as one batch: one append message per
    /// follower for all of them, one answer from each, instead of one of each per proposal
    /// (at 64 clients the peer sockets were the Raft threads' largest cost; issue 16).
    private func appendQueuedProposals() {
        guard !proposalsQueued.isEmpty else { return }
        let batch = proposalsQueued
        proposalsQueued = []
        do throws(ProposalError) {
            let indexes = try node.propose(batch: batch.map(\.data))
            let term = node.hardState.term
            for (index, proposal) in zip(indexes, batch) {
                // An older proposal at this index (from an earlier term of ours) was superseded.
                pending.updateValue((term, proposal.promise, proposal.takenAt), forKey: index)?.promise.fail(ProposeError.superseded)
            }
        } catch {
            countersBox.withLockedValue { $0.proposalsRefused += UInt64(batch.count) }
            for proposal in batch { proposal.promise.fail(ProposeError.refused(error)) }
        }
    }

    /// Fails the proposals that have waited `proposalTimeoutSeconds` (every tick: one sweep, not
    /// a timer per proposal, whose heap was a visible cost at thousands of writes a second).
    private func expireProposals() {
        let now = NIODeadline.now()
        let timeout = TimeAmount.milliseconds(options.proposalTimeoutMilliseconds)
        for (index, waiting) in pending where now - waiting.proposedAt >= timeout {
            pending[index] = nil
            waiting.promise.fail(ProposeError.timedOut)
        }
    }

    /// A linearizable read barrier (ReadIndex, thesis §6.4): the future succeeds once this server
    /// has applied everything committed when the leader confirmed its leadership, so a read of the
    /// local state machine after it is linearizable. Works on followers too (the core forwards to
    /// the leader). Fails after `timeout` if leadership changed and the answer never came.
    ///
    /// Reads are batched into rounds (as etcd's read loop does): one round, one ReadIndex and one
    /// heartbeat broadcast, is in flight at a time, and every read that arrives meanwhile waits
    /// for the *next* round, which starts only after it arrived, so its index is at least the
    /// commit index when it was asked. A herd of agents re-registering what is already there
    /// costs a few rounds a heartbeat, not one broadcast each.
    public func linearizableRead(timeout: TimeAmount = .seconds(2)) -> EventLoopFuture<Void> {
        loop.flatSubmit {
            guard self.stoppedReason == nil else { return self.loop.makeFailedFuture(ProposeError.stopped) }
            let promise = self.loop.makePromise(of: Void.self)
            self.readID &+= 1
            let id = self.readID
            self.readsQueued[id] = promise
            self.loop.scheduleTask(in: timeout) {
                // Still queued, or its round never came back: the read fails (the caller retries).
                if let waiting = self.readsQueued.removeValue(forKey: id) { waiting.fail(ProposeError.readTimedOut) }
                for (sequence, var round) in self.readsAsked {
                    guard let waiting = round.removeValue(forKey: id) else { continue }
                    waiting.fail(ProposeError.readTimedOut)
                    self.readsAsked[sequence] = round.isEmpty ? nil : round
                }
            }
            self.startReadRound()
            return promise.futureResult
        }
    }

    /// Sends the queued reads as one ReadIndex round, unless a round is in flight. A round that
    /// has not come back within `readRoundTimeout` (leadership changed; the core drops it) no
    /// longer holds the next one up.
    private func startReadRound() {
        guard !readsQueued.isEmpty else { return }
        if let started = readRoundStarted, NIODeadline.now() - started < Self.readRoundTimeout { return }
        readSequence &+= 1
        let sequence = readSequence
        var context = [UInt8](repeating: 0, count: 8)
        for i in 0..<8 { context[i] = UInt8(truncatingIfNeeded: sequence >> UInt64(56 - 8 * i)) }
        let round = readsQueued
        readsQueued = [:]
        do throws(ProposalError) {
            try node.readIndex(context: context)
        } catch {
            for (_, promise) in round { promise.fail(ProposeError.refused(error)) }
            return
        }
        readsAsked[sequence] = round
        readRoundStarted = .now()
        scheduleReady()
    }

    /// ReadIndex rounds sent so far (tests and metrics: reads per round is the batching).
    public var readRounds: EventLoopFuture<UInt64> { loop.submit { self.readSequence } }

    /// A read round unanswered for this long is given up for the purpose of starting the next
    /// (its reads still wait for their own timeout).
    static let readRoundTimeout: TimeAmount = .milliseconds(500)

    /// Succeeds once this server has applied `index`, fails after `timeout`: a follower that
    /// forwarded a write answers its client only once it holds the write itself, so the client's
    /// next read on this server sees it (read-your-writes, as a Consul agent gives).
    public func waitApplied(_ index: LogIndex, timeout: TimeAmount) -> EventLoopFuture<Void> {
        loop.flatSubmit {
            guard self.stoppedReason == nil else { return self.loop.makeFailedFuture(ProposeError.stopped) }
            guard self.node.appliedIndex < index else { return self.loop.makeSucceededVoidFuture() }
            let promise = self.loop.makePromise(of: Void.self)
            self.readsWaiting.append((index, promise))
            self.loop.scheduleTask(in: timeout) {
                guard let k = self.readsWaiting.firstIndex(where: { $0.promise.futureResult === promise.futureResult }) else { return }
                self.readsWaiting.remove(at: k)
                promise.fail(ProposeError.timedOut)
            }
            return promise.futureResult
        }
    }

    /// Asks the leader to hand over (thesis §3.10), e.g. before a planned shutdown.
    public func transferLeadership(to target: NodeID) -> EventLoopFuture<Void> {
        loop.submit {
            try self.node.transferLeadership(to: target)
            self.handleReady()
        }
    }

    /// Before a planned shutdown (SIGTERM): if this server leads, hand leadership to the most
    /// up-to-date voter and wait (at most `timeout`) until another server leads, so a rolling
    /// restart costs no election timeout. A follower returns at once.
    public func stepDownForShutdown(timeout: TimeAmount = .seconds(2)) -> EventLoopFuture<Bool> {
        loop.flatSubmit {
            // The most caught-up voter that has been heard from lately takes over.
            let candidates = self.node.status.progress.filter { !$0.learner && $0.id != self.id && $0.recentActive }
            guard self.stoppedReason == nil, self.node.isLeader,
                  let target = candidates.max(by: { $0.match < $1.match })?.id else { return self.loop.makeSucceededFuture(false) }
            do throws(ProposalError) {
                try self.node.transferLeadership(to: target)
            } catch {
                return self.loop.makeSucceededFuture(false)
            }
            self.handleReady()
            let done = self.loop.makePromise(of: Bool.self)
            let deadline = NIODeadline.now() + timeout
            @Sendable func check() {
                if !self.node.isLeader || NIODeadline.now() >= deadline {
                    done.succeed(!self.node.isLeader)
                } else {
                    self.loop.scheduleTask(in: self.tick) { check() }
                }
            }
            check()
            return done.futureResult
        }
    }

    /// The core's full status: membership, and on the leader each follower's progress.
    public var detailedStatus: EventLoopFuture<Raft.Status> {
        loop.submit { self.node.status }
    }

    /// What this server knows of the cluster, as of the last event the driver handled: read
    /// without a hop onto the driver's loop (every API request asks; the loop is Raft's alone).
    /// A stopped driver reports a follower that knows no leader: it must not be taken for one
    /// (`/ready`, `disco_raft_leader`, default-consistency reads) while its state is frozen.
    public var currentStatus: RaftStatus {
        let (status, lastLeaderContact) = published.withLockedValue { ($0.status, $0.lastLeaderContact) }
        var current = status
        if current.role != .leader { current.lastContact = lastLeaderContact.map { .now() - $0 } }
        return current
    }

    public var status: EventLoopFuture<RaftStatus> { loop.makeSucceededFuture(currentStatus) }

    /// The last index of the log this server started with.
    public let lastIndexAtStart: LogIndex

    /// Whether the state machines hold every entry this server's log may have committed when it
    /// started: all of that log is applied, or a leader was heard from (or this server leads)
    /// and everything committed as of then is applied. Until then a restarted server's state
    /// can lack writes it answered before it stopped: the stored commit index lags (issue 16),
    /// and the state machines' last transaction may not have been committed when it was killed.
    public var caughtUpSinceStart: Bool {
        let status = currentStatus
        if status.appliedIndex >= lastIndexAtStart { return true }
        return status.lastContact != nil && status.commitIndex > .zero && status.appliedIndex >= status.commitIndex
    }

    /// Ticks the driver's loop has run: proof of life for systemd's watchdog (a loop stuck in
    /// a Ready, or a dead thread, stops counting).
    public var tickCount: UInt64 { ticksHandled.withLockedValue { $0 } }
    private let ticksHandled = NIOLockedValueBox<UInt64>(0)

    /// Publishes the status `currentStatus` reads (on `loop`, after every event).
    func publishStatus() {
        let halted = stoppedReason != nil
        let status = RaftStatus(id: id, role: halted ? .follower : node.role, term: node.hardState.term,
                                leader: halted ? nil : node.leader, commitIndex: node.commitIndex,
                                appliedIndex: node.appliedIndex, lastContact: !halted && node.isLeader ? .zero : nil)
        let contact = halted ? nil : lastLeaderContact
        published.withLockedValue { $0 = (status, contact, pending.count + proposalsQueued.count) }
    }

    // MARK: - On `loop`

    private func event(_ body: (inout RaftNode) -> Void) {
        guard stoppedReason == nil else { return }
        body(&node)
        scheduleReady()
    }

    /// Group commit: events (proposals, messages, ticks) that arrive together are handled into
    /// one Ready — one fsync for all of them — by deferring the Ready to the end of the loop's
    /// current batch of tasks instead of running it per event.
    private func scheduleReady() {
        guard !readyScheduled else { return }
        readyScheduled = true
        loop.execute {
            self.readyScheduled = false
            self.handleReady()
        }
    }

    func handleReady() {
        defer { publishStatus() }
        if stoppedReason == nil { appendQueuedProposals() }
        while stoppedReason == nil && node.hasReady {
            let ready = node.ready()
            let started = NIODeadline.now()
            readyStarted = started
            lastCaptureNanoseconds = 0
            // Only the commit index moved: nothing to make durable (etcd's MustSync). The commit
            // index is volatile state (Raft §5, Figure 2): one stored lower than it was is safe,
            // the leader tells it again and the state machines skip what they applied. Under
            // load this spares an fsync per heartbeat round on every follower.
            let termOrVoteChanged = ready.hardState.map { $0.term != processor.durableTerm || $0.vote != processor.durableVote } ?? false
            let mustSync = !ready.entries.isEmpty || ready.snapshot != nil || termOrVoteChanged
            // The contract's order is ReadyProcessor's, shared with the simulator.
            var effects = DriverEffects(driver: self)
            let later = processor.begin(ready, &effects)
            // 1. Persist: nothing below may happen before this is durable.
            do throws(RaftStorageError) {
                if mustSync {
                    try storage.save(snapshot: ready.snapshot, entries: ready.entries, hardState: hardStateToStore(ready, termOrVoteChanged: termOrVoteChanged))
                }
            } catch {
                // The environment failed; this server must not act on state it could not keep.
                logger.critical("Raft storage failed; this server stops taking part", metadata: ["raft.error": "\(error)"])
                halt("storage failed: \(error)")
                return
            }
            let saved = NIODeadline.now()
            if mustSync {
                countersBox.withLockedValue { $0.persist.record(seconds: Self.seconds(saved - started)) }
            }
            // 2-4. Send, install, apply and resolve proposals, confirmed reads.
            guard processor.finish(ready, later: later, &effects) else { return }
            // The Ready's applies are one transaction per state machine (issue 16). Proposals
            // resolved above already read their writes: the connection sees its own.
            if !ready.committedEntries.isEmpty {
                do {
                    for participant in participants { try participant.commitApplied() }
                } catch {
                    logger.critical("cannot commit the applied entries; this server stops taking part",
                                    metadata: ["raft.error": "\(error)"])
                    halt("state machine commit failed: \(error)")
                    return
                }
            }
            // 4. Advance.
            node.advance(ready)
            releaseReads()
            startReadRound()
            publishServersIfChanged()
            guard maybeSnapshot() else { return }
            // After the snapshot step too: a capture of the state machines holds the thread.
            noteSlowReady(ready, started: started, saved: saved)
            if ready.leader != lastLeader {
                lastLeader = ready.leader
                countersBox.withLockedValue { $0.leaderChanges += 1 }
                logger.info("leader changed", metadata: ["raft.term": "\(node.hardState.term)",
                                                         "raft.leader": "\(ready.leader.map(\.description) ?? "none")"])
            }
        }
    }

    /// The stored commit index may lag this many entries behind (a bound on what a restart
    /// replays before it hears from a leader, and on how stale `commitIndex` is until then).
    public static let storedCommitLagEntriesMax: UInt64 = 4096

    /// What of a synced Ready's hard state goes to raft.db. A new term or vote always: a vote
    /// must survive a crash. The commit index alone is volatile (Raft §5, Figure 2; etcd's
    /// MustSync): the leader tells it again, the state machines skip what they applied, and
    /// the loader raises a lagging one to the snapshot's index. Storing it with every Ready
    /// wrote a second page to raft.db's WAL per fsync: without it, 1 and 64 clients did 25%
    /// more writes/s (issue 16). It is still stored every `storedCommitLagEntriesMax` entries,
    /// and when a servers entry commits, which a restart reads from the log up to it
    /// (`loadServers`: the addresses of joined servers).
    private func hardStateToStore(_ ready: Ready, termOrVoteChanged: Bool) -> HardState? {
        guard let hard = ready.hardState else { return nil }
        let lagging = hard.commit.rawValue >= storedCommit.rawValue + Self.storedCommitLagEntriesMax
        let servers = ready.committedEntries.contains { $0.kind == .normal && $0.data.first == ClusterCommandTag.servers }
        guard termOrVoteChanged || lagging || servers else { return nil }
        storedCommit = hard.commit
        return hard
    }

    private func releaseReads() {
        guard !readsWaiting.isEmpty else { return }
        let applied = node.appliedIndex
        readsWaiting.removeAll { waiting in
            guard waiting.index <= applied else { return false }
            waiting.promise.succeed(())
            return true
        }
    }

    /// Stops taking part: no ticks, no steps, every waiting proposal and read failed.
    /// - Parameter failed: the environment failed (storage, a state machine), as opposed to a shutdown.
    func halt(_ reason: String, failed: Bool = true) {
        guard stoppedReason == nil else { return }
        stoppedReason = reason
        ticker?.cancel()
        ticker = nil
        for (_, waiting) in pending { waiting.promise.fail(ProposeError.stopped) }
        pending = [:]
        for proposal in proposalsQueued { proposal.promise.fail(ProposeError.stopped) }
        proposalsQueued = []
        for (_, round) in readsAsked { for (_, promise) in round { promise.fail(ProposeError.stopped) } }
        readsAsked = [:]
        for (_, promise) in readsQueued { promise.fail(ProposeError.stopped) }
        readsQueued = [:]
        for waiting in readsWaiting { waiting.promise.fail(ProposeError.stopped) }
        readsWaiting = []
        publishStatus()
        if failed { failureHandler?(reason) }
    }
}

/// The driver's side of each step of the Ready contract (on `loop`).
struct DriverEffects: ReadyEffects {
    let driver: RaftDriver

    func sendEarly(_ messages: [Message]) { driver.transport.send(messages) }

    func send(_ messages: [Message]) { driver.transport.send(messages) }

    func install(_ snapshot: Snapshot) -> Bool {
        do {
            try driver.install(snapshot: snapshot)
            return true
        } catch {
            driver.logger.critical("cannot install the snapshot at \(snapshot.index); this server stops taking part",
                            metadata: ["raft.error": "\(error)"])
            driver.halt("snapshot install failed: \(error)")
            return false
        }
    }

    func apply(_ entry: Entry) -> Bool {
        guard entry.kind == .normal else { return true }
        switch entry.data.first {
        case ClusterCommandTag.snapshotRestore?:
            return driver.applyRestore(entry)
        case ClusterCommandTag.servers?:
            driver.applyServers(entry)
        default:
            driver.applyToStateMachines(entry)
        }
        return true
    }

    func proposalTerm(at index: LogIndex) -> Term? { driver.pending[index]?.term }

    func resolveProposal(at index: LogIndex, _ outcome: ProposalOutcome) {
        guard let waiting = driver.pending.removeValue(forKey: index) else { return }
        switch outcome {
        case .committed:
            let started = driver.readyStarted
            driver.countersBox.withLockedValue {
                $0.proposalCommit.record(seconds: RaftDriver.seconds(started - waiting.proposedAt))
                $0.proposalApply.record(seconds: RaftDriver.seconds(.now() - started))
            }
            waiting.promise.succeed(index)
        case .superseded: waiting.promise.fail(ProposeError.superseded)
        case .unknown: waiting.promise.fail(ProposeError.outcomeUnknown)
        }
    }

    func proposals(through index: LogIndex) -> [LogIndex] { driver.pending.keys.filter { $0 <= index } }

    func confirmRead(_ state: ReadState) {
        // Reads confirmed by the leader wait until this server has applied their index.
        let sequence = state.context.reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        guard let round = driver.readsAsked.removeValue(forKey: sequence) else { return }
        for (_, promise) in round { driver.readsWaiting.append((state.index, promise)) }
        if sequence == driver.readSequence { driver.readRoundStarted = nil }
    }
}
