#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Write admission control (issue 13.4; Consul's `rpc_rate_limit`): a global token bucket for
/// the writes the cluster's log takes, and one per client address, checked before a write
/// becomes a proposal. A write over either is refused with a `Retry-After` that grows with the
/// load (how many were refused lately), jittered so that a refused herd comes back spread out
/// instead of all at once: the Target 2019 outage was 41,000 agents re-registering together,
/// retrying together, and taking the servers' queues and elections down with them.
///
/// On the HTTP path, not the DNS one: one lock, a few arithmetic operations per write.
public final class WriteAdmission: Sendable {
    /// Consul's mode names (`limits.request_limits.mode`).
    public enum Mode: String, Sendable, CaseIterable {
        /// Admit everything, count nothing.
        case disabled
        /// Admit everything, but count (and log) what enforcing would refuse: to size the
        /// limits on a live cluster first.
        case permissive
        /// Refuse with 429 + Retry-After.
        case enforcing
    }

    public struct Configuration: Sendable, Equatable {
        public var mode: Mode
        /// Writes per second the whole cluster takes (counted on the leader, where every write
        /// is proposed); 0: no global limit. 2,000/s is above what a 3-server cluster on this
        /// project's 2-core benchmark machine commits (about 1,300 registrations/s) with room to
        /// spare on real hardware, and low enough that a herd is shaped before Raft slows down.
        public var writesPerSecond: Int
        /// Writes above the rate a quiet cluster takes at once (a deploy registering a fleet).
        public var burst: Int
        /// Writes per second from one client address; 0: no per-client limit. Off by default: a
        /// Consul agent writes a few times a minute, but one address may front many (a NAT, a
        /// load balancer, every test on loopback), and the global bucket already protects Raft.
        public var perClientWritesPerSecond: Int
        public var perClientBurst: Int

        public static let writesPerSecondDefault = 2000
        public static let burstDefault = 4000
        public static let perClientWritesPerSecondDefault = 0
        public static let perClientBurstDefault = 100

        public init(mode: Mode = .enforcing, writesPerSecond: Int = Self.writesPerSecondDefault,
                    burst: Int = Self.burstDefault, perClientWritesPerSecond: Int = Self.perClientWritesPerSecondDefault,
                    perClientBurst: Int = Self.perClientBurstDefault) {
            self.mode = mode
            self.writesPerSecond = writesPerSecond
            self.burst = burst
            self.perClientWritesPerSecond = perClientWritesPerSecond
            self.perClientBurst = perClientBurst
        }
    }

    /// Per-client buckets kept at most; beyond it the fullest (idlest) half is forgotten, so a
    /// storm of addresses costs bounded memory (about 64 bytes each).
    public static let clientsTrackedMax = 65_536
    /// The longest Retry-After given, in seconds: beyond it a client would rather be told the
    /// service is down.
    public static let retryAfterSecondsMax = 60

    /// What to tell one write.
    public enum Decision: Equatable, Sendable {
        case admit
        /// Refused (enforcing): come back after this many seconds.
        case refuse(retryAfterSeconds: Int, reason: String)
    }

    /// Counts since start, for /metrics.
    public struct Counters: Sendable, Equatable {
        public var admitted = 0
        public var refusedGlobal = 0
        public var refusedClient = 0
        /// Permissive mode: writes enforcing would have refused.
        public var wouldRefuse = 0

        public init() {}
    }

    private struct Bucket {
        var tokens: Double
        var updated: Double

        mutating func refill(now: Double, rate: Double, capacity: Double) {
            tokens = min(capacity, tokens + max(0, now - updated) * rate)
            updated = now
        }
    }

    private struct State {
        var global: Bucket
        var clients: [String: Bucket] = [:]
        /// Refusals in the current one-second slot and the one before: the load that sets how
        /// far away a refused client is sent.
        var slot: Int = 0
        var refusedThisSlot = 0
        var refusedLastSlot = 0
        var counters = Counters()
    }

    public let configuration: Configuration
    private let state: Mutex<State>

    public init(_ configuration: Configuration, now: Double = WriteAdmission.monotonicSeconds()) {
        self.configuration = configuration
        state = Mutex(State(global: Bucket(tokens: Double(configuration.burst), updated: now)))
    }

    /// Seconds on a monotonic clock.
    public static func monotonicSeconds() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    public var counters: Counters { state.withLock { $0.counters } }

    /// Whether a write from `client` (its IP address) is taken now. `jitter` in [0, 1) spreads
    /// the Retry-After of clients refused together (a test passes a fixed one); drawn only for
    /// a refusal, since the system generator is a `getrandom` syscall per draw (issue 16).
    public func admit(client: String, now: Double = WriteAdmission.monotonicSeconds(),
                      jitter: Double? = nil) -> Decision {
        let config = configuration
        guard config.mode != .disabled else { return .admit }
        return state.withLock { state in
            let second = Int(now)
            if second != state.slot {
                state.refusedLastSlot = second == state.slot + 1 ? state.refusedThisSlot : 0
                state.refusedThisSlot = 0
                state.slot = second
            }
            // Which bucket is empty, if any: the cluster's first, then the client's.
            var refusal: (rate: Int, reason: String, global: Bool)?
            if config.writesPerSecond > 0 {
                state.global.refill(now: now, rate: Double(config.writesPerSecond), capacity: Double(config.burst))
                if state.global.tokens < 1 {
                    refusal = (config.writesPerSecond, "the cluster's \(config.writesPerSecond) writes/s", true)
                }
            }
            var clientBucket: Bucket?
            if refusal == nil, config.perClientWritesPerSecond > 0 {
                var bucket = state.clients[client] ?? Bucket(tokens: Double(config.perClientBurst), updated: now)
                bucket.refill(now: now, rate: Double(config.perClientWritesPerSecond), capacity: Double(config.perClientBurst))
                if bucket.tokens < 1 {
                    refusal = (config.perClientWritesPerSecond, "\(config.perClientWritesPerSecond) writes/s from \(client)", false)
                    state.clients[client] = bucket
                }
                clientBucket = bucket
            }
            if let refusal {
                switch config.mode {
                case .permissive:
                    state.counters.wouldRefuse += 1
                    state.counters.admitted += 1
                    return .admit
                case .enforcing:
                    if refusal.global { state.counters.refusedGlobal += 1 } else { state.counters.refusedClient += 1 }
                case .disabled:
                    preconditionFailure("a disabled admission counts nothing")
                }
                state.refusedThisSlot += 1
                // The refused of the last second, spread at the rate: how long until the bucket
                // has served them all. Grows with the herd; jitter spreads it over [1x, 2x).
                let pressure = Double(max(state.refusedThisSlot, state.refusedLastSlot)) / Double(max(refusal.rate, 1))
                let seconds = Int((max(1, pressure) * (1 + (jitter ?? Double.random(in: 0..<1)))).rounded(.up))
                return .refuse(retryAfterSeconds: min(Self.retryAfterSecondsMax, seconds), reason: refusal.reason)
            }
            if config.writesPerSecond > 0 { state.global.tokens -= 1 }
            if var bucket = clientBucket {
                bucket.tokens -= 1
                if state.clients.count >= Self.clientsTrackedMax && state.clients[client] == nil { Self.forgetIdlest(&state.clients) }
                state.clients[client] = bucket
            }
            state.counters.admitted += 1
            return .admit
        }
    }

    /// Drops the half of the tracked clients with the most tokens (the least active).
    private static func forgetIdlest(_ clients: inout [String: Bucket]) {
        let keep = clients.sorted { $0.value.tokens < $1.value.tokens }.prefix(clients.count / 2)
        clients = Dictionary(uniqueKeysWithValues: keep.map { ($0.key, $0.value) })
    }

    /// How many clients have a bucket (tests, metrics).
    public var clientsTracked: Int { state.withLock { $0.clients.count } }
}

/// A lock around a value. (Not Foundation's NSLock: importing Foundation here brings the
/// standard library's Synchronization atomics in beside swift-atomics and makes RateTable's
/// atomic types ambiguous. Swift 6's `Synchronization.Mutex` needs macOS 15.)
final class Mutex<Value>: @unchecked Sendable {
    // @unchecked: `value` is only touched while `mutex` is held.
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private var value: Value

    init(_ value: Value) {
        self.value = value
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    func withLock<T>(_ body: (inout Value) throws -> T) rethrows -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}
