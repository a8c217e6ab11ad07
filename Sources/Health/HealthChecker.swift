import Foundation
import Logging
import NIOCore
import NIOPosix
import Registry

/// The `[health]` settings (Configuration.swift reads them; Config/discod.toml documents them).
public struct HealthSettings: Sendable, Equatable {
    /// Run the checks this server owns. Keep it the same on every server: a server with it off
    /// still counts as a check runner, and its share of the checks would not run.
    public var enabled = true
    public var damping = Damping.default
    /// Transitions decided within this window travel in one log entry.
    public var batchWindowMilliseconds: Int64 = 200
    /// Connections the HTTP client keeps to one host:port (its pool's soft limit).
    public var httpConnectionsPerHostMax = 8
    /// Probes (HTTP and TCP) in flight at once on this server; a check due while the limit is
    /// reached skips that round (counted in `disco_health_probes_skipped_total`).
    public var probesInflightMax = 1024
    /// Bytes of an HTTP check's body kept in its output (Consul's check_output_max_size).
    public var outputBytesMax = 4096

    public init() {}

    /// Consul's minimum interval: a shorter one is raised to it.
    public static let intervalSecondsMin: Double = 1
    /// The interval of an HTTP or TCP check registered without one (through the catalog).
    public static let intervalSecondsDefault: Double = 10
    /// Consul's default probe timeout.
    public static let timeoutSecondsDefault: Double = 10
    /// Each round fires at interval × (1 ± this), uniformly: a fleet registered at one instant
    /// spreads out instead of probing in lockstep.
    public static let jitterFraction = 0.1
    /// How often TTL expiry, release from damping and DeregisterCriticalServiceAfter are looked at:
    /// a TTL check is marked critical at most this late.
    public static let sweepMilliseconds: Int64 = 100
    /// Catalog changes are folded into one ownership pass per this delay.
    public static let reconcileDelayMilliseconds: Int64 = 20
    /// Ownership passes are spaced at least this many times their own duration apart (found by
    /// the registration storm: 41,000 checks and a pass per catalog change took a third of the
    /// cluster's CPU). 9: a pass every 10 of its durations, 10 % of the checker's thread.
    public static let reconcileDutyFactor: Double = 9
    /// After a failed proposal (no leader), transitions are retried after this long.
    public static let retryMilliseconds: Int64 = 1000
    /// Renewals of TTL checks this server does not own, remembered for when it takes them over.
    public static let unownedRenewalsMax = 10_000
    /// Output kept in a log entry at most (Consul's default check_output_max_size).
    public static let outputBytesMaxLimit = 64 * 1024
}

/// Counters for /metrics.
public struct HealthCounters: Sendable, Equatable {
    public var checksOwned = 0
    public var probes = 0
    /// Probes whose result was not passing (warning or critical: refused, timed out, a bad status).
    public var probesFailed = 0
    public var probesSkipped = 0
    public var transitions = 0
    public var entries = 0
    /// Times a check entered flap damping.
    public var dampedTotal = 0
    /// Checks held by flap damping now.
    public var dampedNow = 0
    public var deregistrations = 0
    public var proposalFailures = 0
    /// Ownership passes run, and the checks they looked at (a pass looks only at the checks
    /// that changed, unless the servers that run checks changed).
    public var ownershipPasses = 0
    public var checksReconciled = 0
}

/// What a TTL renewal came to.
public enum RenewOutcome: Sendable, Equatable {
    /// Another server runs the check; the renewal was remembered here.
    case notOwned
    /// The status did not change: no log entry.
    case unchanged
    /// The status changed, and the entry holding it applied at this index.
    case committed(UInt64)
}

public enum HealthError: Error, Sendable, CustomStringConvertible {
    case proposalFailed(String)
    case stopped

    public var description: String {
        switch self {
        case .proposalFailed(let why): "the check's new status could not be written: \(why)"
        case .stopped: "health checking stopped"
        }
    }
}

/// Runs the checks this server owns (DESIGN.md: Health) and proposes only their transitions.
///
/// Everything mutable lives on one event loop of the checker's own group, which also runs the
/// probes: no check ever waits on, or holds up, the Raft loop, the HTTP API or the DNS workers.
/// Ownership comes from the replicated check runners (`Rendezvous`); the catalog's observer
/// triggers a coalesced pass that starts the checks this server now owns and stops the others.
public final class HealthChecker: @unchecked Sendable {
    // @unchecked: `runners`, `renewals` and the scheduling flags are touched only on `loop`;
    // `counters` is guarded by `lock`.

    /// Proposes a command through the log; the future gives the index it applied at.
    public typealias Propose = @Sendable (CatalogCommand) -> EventLoopFuture<UInt64>

    private struct Runner {
        var check: CheckRecord
        var createIndex: UInt64
        var machine: CheckMachine
        let generation: UInt64
        var timer: Scheduled<Void>?
        var probing = false
        /// `machine.published` is to be proposed.
        var dirty = false
        /// In an entry not yet answered.
        var proposing = false
        var deregister = false
        /// The last entry of ours that applied: the catalog before it is not news to adopt.
        var committedIndex: UInt64 = 0
        /// Renewals waiting for their transition to commit.
        var waiters: [EventLoopPromise<RenewOutcome>] = []
    }

    private struct Renewal {
        var status: HealthStatus
        var output: String
        var at: Double
    }

    public static let eventLoopThreads = 1

    public let selfID: UInt64
    private let settings: HealthSettings
    private let catalog: Catalog
    private let propose: Propose
    private let logger: Logger
    /// The checker's own threads (the daemon runs them below the DNS workers, as the rest of
    /// the write path).
    public let group: MultiThreadedEventLoopGroup
    private let loop: EventLoop
    /// Made by `start()`: AsyncHTTPClient insists on being shut down, which `stop()` does.
    private var prober: Prober?
    private let lock = NSLock()
    private var countersValue = HealthCounters()

    private var runners: [NodeScopedID: Runner] = [:]
    private var renewals: [NodeScopedID: Renewal] = [:]
    private var generation: UInt64 = 0
    private var reconcileScheduled = false
    /// The checks to look at in the next ownership pass; nil: all of them (at start, and when
    /// the servers that run checks or everything changed).
    private var pendingChecks: Set<NodeScopedID>? = nil
    /// How long the last ownership pass took: the next waits `reconcileDutyFactor` times as long,
    /// so under a registration storm the passes take at most a tenth of this thread (a full
    /// pass, after the runners changed, is O(checks)).
    private var lastReconcileSeconds: Double = 0
    private var flushScheduled = false
    private var flushInflight = false
    private var sweeper: RepeatedTask?
    private var probesInflight = 0
    private var stopped = false

    public init(selfID: UInt64, settings: HealthSettings, catalog: Catalog, logger: Logger, propose: @escaping Propose) {
        self.selfID = selfID
        self.settings = settings
        self.catalog = catalog
        self.propose = propose
        self.logger = logger
        group = MultiThreadedEventLoopGroup(numberOfThreads: Self.eventLoopThreads)
        loop = group.next()
    }

    public func start() {
        let prober = Prober(group: group, connectionsPerHostMax: settings.httpConnectionsPerHostMax,
                            outputBytesMax: min(settings.outputBytesMax, HealthSettings.outputBytesMaxLimit))
        catalog.observe { [weak self] change, _ in
            self?.catalogChanged(change)
        }
        loop.execute {
            self.prober = prober
            self.sweeper = self.loop.scheduleRepeatedTask(initialDelay: .milliseconds(HealthSettings.sweepMilliseconds),
                                                          delay: .milliseconds(HealthSettings.sweepMilliseconds)) { _ in
                self.sweep()
            }
            self.reconcile()
        }
    }

    public func stop() {
        let prober: Prober? = (try? loop.submit { () -> Prober? in
            self.stopped = true
            self.sweeper?.cancel()
            for key in Array(self.runners.keys) { self.remove(key) }
            defer { self.prober = nil }
            return self.prober
        }.wait()) ?? nil
        prober?.shutdown()
        try? group.syncShutdownGracefully()
    }

    public var counters: HealthCounters { lock.withLock { countersValue } }

    private func count(_ body: (inout HealthCounters) -> Void) { lock.withLock { body(&countersValue) } }

    /// The server that runs `checkID` of `node`, from the replicated runners (nil: none yet).
    public func owner(node: String, checkID: String) -> UInt64? {
        Rendezvous.owner(of: Rendezvous.key(node: node, checkID: checkID), among: catalog.state.checkRunners)
    }

    /// A client renewed a TTL check here. The owner decides: a renewal that changes the status
    /// is answered once the entry holding the transition applied; one that does not costs no
    /// entry. Elsewhere the renewal is remembered, for when this server takes the check over.
    public func renew(node: String, checkID: String, status: HealthStatus, output: String) -> EventLoopFuture<RenewOutcome> {
        let output = Self.bounded(output, settings.outputBytesMax)
        return loop.flatSubmit {
            let key = NodeScopedID(node: node, id: checkID)
            let now = Self.now()
            guard let runner = self.runners[key], case .ttl = Self.kind(of: runner.check.definition) else {
                if self.renewals.count >= HealthSettings.unownedRenewalsMax { self.renewals.removeAll() }
                self.renewals[key] = Renewal(status: status, output: output, at: now)
                return self.loop.makeSucceededFuture(.notOwned)
            }
            self.event(key) { $0.renewed(status, output: output, now: now) }
            guard let after = self.runners[key], after.dirty || after.proposing else {
                return self.loop.makeSucceededFuture(.unchanged)
            }
            let promise = self.loop.makePromise(of: RenewOutcome.self)
            self.runners[key]?.waiters.append(promise)
            return promise.futureResult
        }
    }

    // MARK: - Ownership (on `loop`)

    private func catalogChanged(_ change: CatalogChange) {
        loop.execute {
            guard !self.stopped else { return }
            if change.checkRunnersChanged || change.checks == nil {
                self.pendingChecks = nil
            } else if let checks = change.checks {
                guard !checks.isEmpty else { return }
                self.pendingChecks?.formUnion(checks)
            }
            guard !self.reconcileScheduled else { return }
            self.reconcileScheduled = true
            let spaced = Int64(self.lastReconcileSeconds * HealthSettings.reconcileDutyFactor * 1000)
            self.loop.scheduleTask(in: .milliseconds(max(HealthSettings.reconcileDelayMilliseconds, spaced))) { self.reconcile() }
        }
    }

    /// Starts the checks this server owns now, stops the others, and adopts statuses that others
    /// wrote. A pass looks at the checks that changed since the last one, or at every check
    /// (O(checks)) when the servers that run checks changed; passes are coalesced.
    private func reconcile() {
        reconcileScheduled = false
        guard !stopped else { return }
        let started = Self.now()
        defer { lastReconcileSeconds = Self.now() - started }
        let state = catalog.state
        let now = Self.now()
        let looked: Int
        if let changed = pendingChecks {
            pendingChecks = []
            looked = changed.count
            for key in changed { reconcile(key, state.checks[key], state.checkRunners, now: now) }
        } else {
            looked = state.checks.count
            pendingChecks = []
            var seen = Set<NodeScopedID>()
            seen.reserveCapacity(state.checks.count)
            for (key, record) in state.checks {
                seen.insert(key)
                reconcile(key, record, state.checkRunners, now: now)
            }
            for key in runners.keys where !seen.contains(key) { remove(key) }
        }
        let total = runners.count
        count {
            $0.checksOwned = total
            $0.ownershipPasses += 1
            $0.checksReconciled += looked
        }
    }

    /// Runs, stops or updates `key`'s check: `record` as the catalog has it now (nil: gone).
    private func reconcile(_ key: NodeScopedID, _ record: Indexed<CheckRecord>?, _ servers: [UInt64], now: Double) {
        guard let record, record.value.definition.isRunnable,
              Rendezvous.owner(of: Rendezvous.key(node: key.node, checkID: key.id), among: servers) == selfID else {
            remove(key)
            return
        }
        if let runner = runners[key] {
            if runner.check.definition != record.value.definition || runner.createIndex != record.createIndex
                || runner.check.serviceID != record.value.serviceID {
                remove(key)
            } else {
                if !runner.dirty && !runner.proposing && record.modifyIndex > runner.committedIndex
                    && record.value.status != runner.machine.published {
                    runners[key]?.machine.adopt(record.value.status, output: record.value.output, now: now)
                }
                runners[key]?.check = record.value
                return
            }
        }
        add(record, now: now)
    }

    private func add(_ record: Indexed<CheckRecord>, now: Double) {
        let check = record.value
        let key = NodeScopedID(node: check.node, id: check.id)
        generation &+= 1
        var machine = CheckMachine(kind: Self.kind(of: check.definition), status: check.status, output: check.output,
                                   damping: settings.damping,
                                   deregisterAfterSeconds: check.serviceID.isEmpty ? nil : check.definition.deregisterCriticalAfterSeconds,
                                   now: now)
        var action = CheckMachine.Action.none
        if let renewal = renewals.removeValue(forKey: key), case .ttl(let ttl) = Self.kind(of: check.definition),
           now - renewal.at < ttl {
            action = machine.renewed(renewal.status, output: renewal.output, now: renewal.at)
        }
        runners[key] = Runner(check: check, createIndex: record.createIndex, machine: machine, generation: generation,
                              committedIndex: record.modifyIndex)
        handle(action, key)
        if case .probe = Self.kind(of: check.definition) {
            // A random phase: checks registered together do not fire together.
            let interval = Self.interval(of: check.definition)
            schedule(key, generation, after: Double.random(in: 0..<interval))
        }
        logger.debug("running check", metadata: ["health.check": "\(key.node)/\(key.id)", "health.type": "\(check.definition.type)"])
    }

    private func remove(_ key: NodeScopedID) {
        guard let runner = runners.removeValue(forKey: key) else { return }
        runner.timer?.cancel()
        // Ownership moved or the check went: a waiting renewal was recorded, nothing more.
        for waiter in runner.waiters { waiter.succeed(.notOwned) }
    }

    // MARK: - Probes (on `loop`)

    private func schedule(_ key: NodeScopedID, _ generation: UInt64, after seconds: Double) {
        let task = loop.scheduleTask(in: .nanoseconds(Int64(seconds * 1e9))) { self.fire(key, generation) }
        runners[key]?.timer = task
    }

    private func fire(_ key: NodeScopedID, _ generation: UInt64) {
        guard let runner = runners[key], runner.generation == generation, !stopped else { return }
        let definition = runner.check.definition
        let interval = Self.interval(of: definition)
        let jitter = HealthSettings.jitterFraction
        schedule(key, generation, after: interval * Double.random(in: (1 - jitter)...(1 + jitter)))
        guard !runner.probing else { return }  // the previous round is still waiting for its timeout
        guard probesInflight < settings.probesInflightMax else {
            count { $0.probesSkipped += 1 }
            return
        }
        let timeout = (definition.timeoutSeconds ?? 0) > 0 ? definition.timeoutSeconds! : HealthSettings.timeoutSecondsDefault
        let probe: EventLoopFuture<ProbeResult>
        guard let prober else { return }
        if definition.http != nil {
            probe = prober.http(definition, timeoutSeconds: timeout)
        } else if let tcp = definition.tcp {
            probe = prober.tcp(tcp, timeoutSeconds: timeout)
        } else {
            return
        }
        runners[key]?.probing = true
        probesInflight += 1
        count { $0.probes += 1 }
        let outputBytesMax = settings.outputBytesMax
        probe.hop(to: loop).whenSuccess { result in
            self.probesInflight -= 1
            if result.status != .passing { self.count { $0.probesFailed += 1 } }
            guard let runner = self.runners[key], runner.generation == generation else { return }
            self.runners[key]?.probing = false
            self.event(key) { $0.probed(result.status, output: Self.bounded(result.output, outputBytesMax), now: Self.now()) }
        }
    }

    private func sweep() {
        let now = Self.now()
        var damped = 0
        for key in runners.keys {
            event(key) { $0.tick(now: now) }
            if runners[key]?.machine.isDamped == true { damped += 1 }
        }
        count { $0.dampedNow = damped }
        let ttlMax = 3600.0
        if !renewals.isEmpty { renewals = renewals.filter { now - $0.value.at < ttlMax } }
    }

    /// Runs one event of `key`'s machine and carries out its action.
    private func event(_ key: NodeScopedID, _ body: (inout CheckMachine) -> CheckMachine.Action) {
        guard var machine = runners[key]?.machine else { return }
        let dampedBefore = machine.dampedCount
        let action = body(&machine)
        runners[key]?.machine = machine
        if machine.dampedCount > dampedBefore {
            count { $0.dampedTotal += 1 }
            logger.info("check is flapping; holding its worst status until it is stable",
                        metadata: ["health.check": "\(key.node)/\(key.id)", "health.status": "\(machine.published.rawValue)"])
        }
        handle(action, key)
    }

    private func handle(_ action: CheckMachine.Action, _ key: NodeScopedID) {
        switch action {
        case .none:
            return
        case .publish(let status, _):
            runners[key]?.dirty = true
            count { $0.transitions += 1 }
            logTransition(key, status)
        case .deregisterService:
            runners[key]?.deregister = true
        }
        scheduleFlush(after: settings.batchWindowMilliseconds)
    }

    /// Check transitions logged at info per second, at most: a mass failure (a rack losing power,
    /// 41,000 checks) writes a summary, not a line per check.
    static let transitionLogLinesPerSecondMax = 10
    private var transitionLogSecond: UInt64 = 0
    private var transitionLogLines = 0
    private var transitionsNotLogged = 0

    /// One line per check transition, up to `transitionLogLinesPerSecondMax` a second; the
    /// rest are counted and reported in the next second's first line.
    private func logTransition(_ key: NodeScopedID, _ status: HealthStatus) {
        let second = DispatchTime.now().uptimeNanoseconds / 1_000_000_000
        if second != transitionLogSecond {
            if transitionsNotLogged > 0 {
                logger.info("more check transitions, not logged one by one",
                            metadata: ["health.transitions_not_logged": "\(transitionsNotLogged)"])
            }
            transitionLogSecond = second
            transitionLogLines = 0
            transitionsNotLogged = 0
        }
        guard transitionLogLines < Self.transitionLogLinesPerSecondMax else {
            transitionsNotLogged += 1
            return
        }
        transitionLogLines += 1
        logger.info("check status changed", metadata: ["health.check": "\(key.node)/\(key.id)", "health.status": "\(status.rawValue)"])
    }

    // MARK: - Batching (on `loop`)

    private func scheduleFlush(after milliseconds: Int64) {
        guard !flushScheduled, !flushInflight, !stopped else { return }
        flushScheduled = true
        loop.scheduleTask(in: .milliseconds(milliseconds)) { self.flush() }
    }

    /// One entry for every transition decided in the window (and the deregistrations), at most
    /// `CatalogCommand.batchCommandsMax` transitions per entry; one entry in flight at a time.
    private func flush() {
        flushScheduled = false
        guard !flushInflight, !stopped else { return }
        var updates: [CheckStatusUpdate] = []
        var deregistrations: [CatalogCommand] = []
        var included: [NodeScopedID] = []
        var waiters: [EventLoopPromise<RenewOutcome>] = []
        for (key, runner) in runners where (runner.dirty || runner.deregister) && !runner.proposing {
            guard updates.count + deregistrations.count < CatalogCommand.batchCommandsMax else { break }
            if runner.deregister {
                deregistrations.append(.deregister(node: key.node, serviceID: runner.check.serviceID, checkID: nil))
                runners[key]?.deregister = false
            }
            if runner.dirty {
                updates.append(CheckStatusUpdate(node: key.node, checkID: key.id, status: runner.machine.published,
                                                 output: runner.machine.publishedOutput))
            }
            runners[key]?.dirty = false
            runners[key]?.proposing = true
            waiters += runner.waiters
            runners[key]?.waiters = []
            included.append(key)
        }
        guard !included.isEmpty else { return }
        let commands: [CatalogCommand] = (updates.isEmpty ? [] : [.checkStatuses(updates)]) + deregistrations
        let command = commands.count == 1 ? commands[0] : .batch(commands)
        flushInflight = true
        let generations = included.map { runners[$0]?.generation }
        let sent = (keys: included, waiters: waiters)
        count {
            $0.entries += 1
            $0.deregistrations += deregistrations.count
        }
        propose(command).hop(to: loop).whenComplete { result in
            self.flushInflight = false
            for (key, generation) in zip(sent.keys, generations) where self.runners[key]?.generation == generation {
                self.runners[key]?.proposing = false
                switch result {
                case .success(let index): self.runners[key]?.committedIndex = index
                case .failure: self.runners[key]?.dirty = true  // retried: the machine still holds the status
                }
            }
            switch result {
            case .success(let index):
                for waiter in sent.waiters { waiter.succeed(.committed(index)) }
                if self.runners.values.contains(where: { $0.dirty || $0.deregister }) {
                    self.scheduleFlush(after: self.settings.batchWindowMilliseconds)
                }
            case .failure(let error):
                self.count { $0.proposalFailures += 1 }
                for waiter in sent.waiters { waiter.fail(HealthError.proposalFailed("\(error)")) }
                self.logger.debug("check transitions not written; retrying", metadata: ["health.error": "\(error)"])
                self.scheduleFlush(after: HealthSettings.retryMilliseconds)
            }
        }
    }

    // MARK: - Helpers

    static func kind(of definition: CheckDefinition) -> CheckMachine.Kind {
        if definition.http == nil && definition.tcp == nil, let ttl = definition.ttlSeconds { return .ttl(seconds: ttl) }
        return .probe(Thresholds(definition))
    }

    static func interval(of definition: CheckDefinition) -> Double {
        max(definition.intervalSeconds.flatMap { $0 > 0 ? $0 : nil } ?? HealthSettings.intervalSecondsDefault,
            HealthSettings.intervalSecondsMin)
    }

    static func now() -> Double { Double(NIODeadline.now().uptimeNanoseconds) / 1e9 }

    /// `text` cut to at most `bytes` UTF-8 bytes, on a character boundary.
    static func bounded(_ text: String, _ bytes: Int) -> String {
        guard text.utf8.count > bytes else { return text }
        var out = ""
        var used = 0
        for character in text {
            let size = character.utf8.count
            guard used + size <= bytes else { break }
            out.append(character)
            used += size
        }
        return out
    }
}
