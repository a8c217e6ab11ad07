import Atomics

/// A per-client-network query rate limit (dnsdist's MaxQPSIPRule), applied before a query is
/// answered, whatever the response: a token bucket of `queriesPerSecond` with one second of
/// burst, and no debt (a client over the rate gets `queriesPerSecond` answered). Queries over
/// it are dropped. Unlike RRL it does not care what is asked, so it also bounds what one
/// network can make the server compute.
///
/// Shared by every worker through one lock-free `RateTable` keyed by the client prefix.
public final class QueryRateLimiter: @unchecked Sendable {
    // @unchecked: the table is lock-free; the counters are atomics, each worker writes its own.

    public struct Configuration: Sendable, Equatable {
        /// Queries per second from one client network; 0: no limit.
        public var queriesPerSecond: Int
        public var ipv4PrefixLength: Int
        public var ipv6PrefixLength: Int
        /// Clients in these networks are never limited.
        public var exempt: [ClientNetwork]
        public var tableEntries: Int

        /// Off by default: an authoritative server's clients are resolvers, and one /24 may be a
        /// whole resolver farm (a public resolver sends tens of thousands of queries per second
        /// from one prefix); RRL already stops amplification, and TCP has its own caps. Set it
        /// where clients are known, e.g. to a few times the busiest legitimate network's rate.
        public static let queriesPerSecondDefault = 0
        /// Buckets: one per active client network (16 bytes each).
        public static let tableEntriesDefault = 1 << 16

        public init(queriesPerSecond: Int = Self.queriesPerSecondDefault,
                    ipv4PrefixLength: Int = ResponseRateLimiter.Configuration.ipv4PrefixLengthDefault,
                    ipv6PrefixLength: Int = ResponseRateLimiter.Configuration.ipv6PrefixLengthDefault,
                    exempt: [ClientNetwork] = [], tableEntries: Int = Self.tableEntriesDefault) {
            self.queriesPerSecond = queriesPerSecond
            self.ipv4PrefixLength = ipv4PrefixLength
            self.ipv6PrefixLength = ipv6PrefixLength
            self.exempt = exempt
            self.tableEntries = tableEntries
        }

        public var enabled: Bool { queriesPerSecond > 0 }
    }

    public let configuration: Configuration
    private let table: RateTable?
    private let seed: UInt64

    public init(_ configuration: Configuration, seed: UInt64 = UInt64.random(in: .min ... .max)) {
        self.configuration = configuration
        self.seed = seed
        table = configuration.enabled
            ? RateTable(entries: configuration.tableEntries,
                        policy: BucketPolicy(ratePerSecond: configuration.queriesPerSecond, windowSeconds: 0))
            : nil
    }

    /// Whether a query from `client` at `now` (monotonic milliseconds) is answered.
    /// Allocation-free.
    @inline(__always)
    public func admit(_ client: ClientAddress, nowMilliseconds now: UInt32) -> Bool {
        guard let table else { return true }
        for network in configuration.exempt where network.contains(client) { return true }
        var key = BucketKey(seed: seed)
        key.add(client.prefix(ipv4: configuration.ipv4PrefixLength, ipv6: configuration.ipv6PrefixLength))
        return !table.record(key: key.value, nowMilliseconds: now).limited
    }
}

/// A per-thread event counter that other threads may read: written with a plain relaxed store
/// by its one owner (no read-modify-write, no contention), summed by readers.
public final class WorkerCounter: @unchecked Sendable {
    // @unchecked: one writer thread; readers only load the atomic.
    private let value = ManagedAtomic<Int>(0)

    public init() {}

    @inline(__always) public func increment() {
        value.store(value.load(ordering: .relaxed) &+ 1, ordering: .relaxed)
    }

    public var count: Int { value.load(ordering: .relaxed) }
}
