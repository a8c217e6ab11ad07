import Registry

/// Consul's thresholds on a probed check (HTTP, TCP): how many results in a row it takes to
/// change its status. Zero means at once, as in Consul.
public struct Thresholds: Sendable, Equatable {
    public var successBeforePassing: Int
    public var failuresBeforeWarning: Int
    public var failuresBeforeCritical: Int

    public static let none = Thresholds(successBeforePassing: 0, failuresBeforeWarning: 0, failuresBeforeCritical: 0)

    public init(successBeforePassing: Int, failuresBeforeWarning: Int, failuresBeforeCritical: Int) {
        self.successBeforePassing = successBeforePassing
        self.failuresBeforeWarning = failuresBeforeWarning
        self.failuresBeforeCritical = failuresBeforeCritical
    }

    /// Consul: FailuresBeforeWarning defaults to FailuresBeforeCritical.
    public init(_ definition: CheckDefinition) {
        let critical = max(definition.failuresBeforeCritical ?? 0, 0)
        self.init(successBeforePassing: max(definition.successBeforePassing ?? 0, 0),
                  failuresBeforeWarning: max(definition.failuresBeforeWarning ?? critical, 0), failuresBeforeCritical: critical)
    }
}

/// Flap damping: a check whose status changes more than `transitionsMax` times within
/// `windowSeconds` is held at the worst status it showed until its status has not changed for
/// `stableSeconds`. Without it, a check that alternates every interval costs a log entry and
/// a View rebuild every interval, and clients see the instance come and go.
public struct Damping: Sendable, Equatable {
    public var transitionsMax: Int
    public var windowSeconds: Double
    public var stableSeconds: Double

    /// 5 changes in 60 s is well above what a real recovery does (critical → passing once)
    /// and well below a check flipping every 1 s interval; 30 s of stability releases it.
    public static let `default` = Damping(transitionsMax: 5, windowSeconds: 60, stableSeconds: 30)

    public init(transitionsMax: Int, windowSeconds: Double, stableSeconds: Double) {
        self.transitionsMax = transitionsMax
        self.windowSeconds = windowSeconds
        self.stableSeconds = stableSeconds
    }
}

/// One check as its owning server runs it: thresholds, TTL expiry, flap damping and
/// DeregisterCriticalServiceAfter, as a value with one mutating func per event (STYLE.md). No
/// clock and no I/O: `now` is given (monotonic seconds), and each event returns what to do.
///
/// Three statuses are kept apart: the result of the last probe; `current`, that result after
/// the thresholds; and `published`, what the catalog should say (current, unless damped).
/// Only a change of `published` is an action, so only transitions reach the log.
public struct CheckMachine: Sendable {
    public enum Kind: Sendable, Equatable {
        /// HTTP or TCP: results arrive from probes, through the thresholds.
        case probe(Thresholds)
        /// Renewed by clients; critical once `seconds` pass without a renewal.
        case ttl(seconds: Double)
    }

    public enum Action: Sendable, Equatable {
        case none
        /// The catalog should show this status (a transition).
        case publish(HealthStatus, output: String)
        /// The check was critical for its DeregisterCriticalServiceAfter: remove the instance.
        case deregisterService
    }

    private enum State: Sendable {
        /// `published` follows `current`.
        case following
        /// Flapping: `published` is held at `held`, the worst status seen since damping began.
        case damped(held: HealthStatus)
        /// The instance's removal was asked for; the check does nothing more.
        case deregistering
    }

    /// The output a TTL check gets when it expires (Consul's words).
    public static let ttlExpiredOutput = "TTL expired"

    private let kind: Kind
    private let damping: Damping
    private let deregisterAfterSeconds: Double?
    private var state: State = .following
    public private(set) var published: HealthStatus
    public private(set) var publishedOutput: String
    private var current: HealthStatus
    private var currentOutput: String
    private var successes = 0
    private var failures = 0
    /// When `current` changed lately, oldest first; at most `transitionsMax + 1` kept.
    private var changes: [Double] = []
    private var lastChange: Double
    private var ttlDeadline: Double?
    private var criticalSince: Double?
    /// How many times this check entered damping.
    public private(set) var dampedCount = 0

    /// - Parameter status: the status the catalog holds now (a new check's initial status).
    public init(kind: Kind, status: HealthStatus, output: String = "", damping: Damping = .default,
                deregisterAfterSeconds: Double? = nil, now: Double) {
        self.kind = kind
        self.damping = damping
        self.deregisterAfterSeconds = deregisterAfterSeconds.flatMap { $0 > 0 ? $0 : nil }
        published = status
        publishedOutput = output
        current = status
        currentOutput = output
        lastChange = now
        if case .ttl(let seconds) = kind { ttlDeadline = now + seconds }
        if status == .critical { criticalSince = now }
    }

    public var isDamped: Bool {
        if case .damped = state { return true }
        return false
    }

    // MARK: - Events

    /// A probe finished with `status` (passing, warning or critical).
    public mutating func probed(_ status: HealthStatus, output: String, now: Double) -> Action {
        guard case .probe(let thresholds) = kind else { preconditionFailure("a probe result for a TTL check") }
        // Consul's StatusHandler: passing and warning count as successes, critical as failures.
        var next: HealthStatus?
        if status == .critical {
            failures += 1
            successes = 0
            if failures >= thresholds.failuresBeforeCritical {
                next = .critical
            } else if failures >= thresholds.failuresBeforeWarning {
                next = .warning
            }
        } else {
            successes += 1
            failures = 0
            if successes >= thresholds.successBeforePassing { next = status }
        }
        if let next { set(next, output: output, now: now) }
        return settle(now: now)
    }

    /// A client renewed a TTL check with `status` (`/v1/agent/check/pass|warn|fail|update`).
    public mutating func renewed(_ status: HealthStatus, output: String, now: Double) -> Action {
        guard case .ttl(let seconds) = kind else { preconditionFailure("a renewal of a probed check") }
        ttlDeadline = now + seconds
        set(status, output: output, now: now)
        return settle(now: now)
    }

    /// Time passed: TTL expiry, release from damping, DeregisterCriticalServiceAfter.
    public mutating func tick(now: Double) -> Action {
        if let deadline = ttlDeadline, now >= deadline, current != .critical {
            set(.critical, output: Self.ttlExpiredOutput, now: now)
        }
        if case .damped = state, now - lastChange >= damping.stableSeconds {
            state = .following
        }
        let action = settle(now: now)
        guard action == .none else { return action }
        if case .following = state, let after = deregisterAfterSeconds, published == .critical,
           let since = criticalSince, now - since >= after {
            state = .deregistering
            return .deregisterService
        }
        return .none
    }

    /// Someone else set the catalog's status (a re-registration with `Status`, or the previous
    /// owner's last transition): it becomes the starting point, counters reset.
    public mutating func adopt(_ status: HealthStatus, output: String, now: Double) {
        if case .deregistering = state { return }
        published = status
        publishedOutput = output
        current = status
        currentOutput = output
        successes = 0
        failures = 0
        state = .following
        criticalSince = status == .critical ? (criticalSince ?? now) : nil
    }

    // MARK: - Internals

    private mutating func set(_ status: HealthStatus, output: String, now: Double) {
        currentOutput = output
        guard status != current else { return }
        current = status
        lastChange = now
        changes.append(now)
        changes.removeAll { now - $0 > damping.windowSeconds }
        if changes.count > damping.transitionsMax + 1 { changes.removeFirst(changes.count - damping.transitionsMax - 1) }
        if case .following = state, changes.count > damping.transitionsMax {
            state = .damped(held: max(published, current))
            dampedCount += 1
        }
    }

    /// Publishes what `state` says the catalog should show, if it differs.
    private mutating func settle(now: Double) -> Action {
        let wanted: HealthStatus
        switch state {
        case .following:
            wanted = current
        case .damped(let held):
            wanted = max(held, current)
            state = .damped(held: wanted)
        case .deregistering:
            return .none
        }
        guard wanted != published else { return .none }
        published = wanted
        publishedOutput = wanted == current ? currentOutput : "\(currentOutput) (held \(wanted.rawValue): flapping)"
        if wanted == .critical {
            if criticalSince == nil { criticalSince = now }
        } else {
            criticalSince = nil
        }
        return .publish(wanted, output: publishedOutput)
    }
}
