import Atomics
import DNSWire
import Foundation
import Logging

/// One DNS worker's counters (a UDP worker thread, or a TCP event-loop thread): written only by
/// that thread with relaxed loads and stores (plain moves: no lock prefix, no cache line shared
/// with another writer), read by the scrape, which sums every worker's (`DNSMetrics`). STYLE.md:
/// the answer path takes no lock and touches no shared atomic.
public final class DNSWorkerCounters: @unchecked Sendable {
    // @unchecked: each slot is written by one thread only, and read with atomic loads.

    /// The query types counted by name; the rest count as "other".
    static let qtypes: [RRType] = [.a, .aaaa, .srv, .cname, .ns, .soa, .mx, .txt, .ptr, .any, RRType(65)]
    static let qtypeNames = ["A", "AAAA", "SRV", "CNAME", "NS", "SOA", "MX", "TXT", "PTR", "ANY", "HTTPS", "other"]
    static let rcodeNames = ["NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN", "YXRRSET",
                             "NXRRSET", "NOTAUTH", "NOTZONE", "other"]
    /// Upper bounds (seconds) of the answer-path latency histogram's buckets (+Inf above).
    static let latencyBucketsSeconds: [Double] = [1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3]
    /// One query in this many is timed (a clock read costs about a tenth of an answer).
    public static let latencySampleEvery: UInt64 = 64
    /// Upper bounds (seconds) of the UDP queue-wait histogram's buckets (+Inf above).
    static let queueWaitBucketsSeconds: [Double] = [1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2,
                                                    2.5e-2, 5e-2, 0.1, 0.25, 1]

    enum Slot {
        static let queries = 0                                   // by qtype
        static let responses = queries + qtypeNames.count        // by rcode
        static let truncated = responses + rcodeNames.count
        static let dropped = truncated + 1                       // no answer: malformed, a response, not ours
        static let cacheHits = dropped + 1
        static let cacheMisses = cacheHits + 1
        static let latency = cacheMisses + 1                     // buckets, then +Inf (their sum is the count)
        static let latencySumNanoseconds = latency + latencyBucketsSeconds.count + 1
        static let realtime = latencySumNanoseconds + 1          // 1 while the worker may answer in SCHED_FIFO
        static let realtimeDemotions = realtime + 1
        static let queueWait = realtimeDemotions + 1             // buckets, then +Inf
        static let queueWaitSumNanoseconds = queueWait + queueWaitBucketsSeconds.count + 1
        static let count = queueWaitSumNanoseconds + 1
    }

    public let transport: Transport
    private typealias Storage = UnsafeAtomic<UInt64>.Storage
    private let slots: UnsafeMutablePointer<Storage>
    private var sampled: UInt64 = 0

    init(transport: Transport) {
        self.transport = transport
        slots = .allocate(capacity: Slot.count)
        slots.initialize(repeating: Storage(0), count: Slot.count)
    }

    deinit {
        slots.deinitialize(count: Slot.count)
        slots.deallocate()
    }

    @inline(__always) private func add(_ slot: Int, _ amount: UInt64 = 1) {
        let atomic = UnsafeAtomic<UInt64>(at: slots + slot)
        atomic.store(atomic.load(ordering: .relaxed) &+ amount, ordering: .relaxed)
    }

    func value(_ slot: Int) -> UInt64 { UnsafeAtomic<UInt64>(at: slots + slot).load(ordering: .relaxed) }

    /// Counts one query and what was done with it: `response` holds `length` bytes (0: none).
    @inline(__always) func count(qtype: RRType, response: UnsafeMutableRawBufferPointer, length: Int) {
        var index = Self.qtypes.count
        for (i, type) in Self.qtypes.enumerated() where type == qtype {
            index = i
            break
        }
        add(Slot.queries + index)
        guard length >= Message.headerBytes else {
            add(Slot.dropped)
            return
        }
        let flags = response[2]
        let rcode = Int(response[3] & 0x0F)
        add(Slot.responses + min(rcode, Self.rcodeNames.count - 1))
        if flags & 0x02 != 0 { add(Slot.truncated) }
    }

    /// Whether the next query is one to time.
    @inline(__always) func shouldTime() -> Bool {
        sampled &+= 1
        return sampled % Self.latencySampleEvery == 0
    }

    func recordLatency(nanoseconds: UInt64) {
        record(nanoseconds, bounds: Self.latencyBucketsSeconds, buckets: Slot.latency, sum: Slot.latencySumNanoseconds)
    }

    /// How long the oldest query of a batch waited in the socket's receive queue (kernel
    /// receive timestamp to the worker reading it): the part of a query's latency that the
    /// answer-path histogram cannot see, and all of it when CPU is short.
    func recordQueueWait(nanoseconds: UInt64) {
        record(nanoseconds, bounds: Self.queueWaitBucketsSeconds, buckets: Slot.queueWait, sum: Slot.queueWaitSumNanoseconds)
    }

    private func record(_ nanoseconds: UInt64, bounds: [Double], buckets: Int, sum: Int) {
        let seconds = Double(nanoseconds) / 1e9
        var bucket = bounds.count
        for (i, bound) in bounds.enumerated() where seconds <= bound {
            bucket = i
            break
        }
        add(buckets + bucket)
        add(sum, nanoseconds)
    }

    /// The answer cache's totals of this worker's Answerer (set, not added: it counts itself).
    func setCache(hits: Int, misses: Int) {
        UnsafeAtomic<UInt64>(at: slots + Slot.cacheHits).store(UInt64(hits), ordering: .relaxed)
        UnsafeAtomic<UInt64>(at: slots + Slot.cacheMisses).store(UInt64(misses), ordering: .relaxed)
    }

    /// Whether this worker answers at real-time priority (`RealtimeBudget`).
    func setRealtime(_ on: Bool) {
        UnsafeAtomic<UInt64>(at: slots + Slot.realtime).store(on ? 1 : 0, ordering: .relaxed)
    }

    /// This worker spent its real-time budget and answers at normal priority until the window ends.
    func countRealtimeDemotion() { add(Slot.realtimeDemotions) }

    @inline(__always) static func nowNanoseconds() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
    }
}

/// Every DNS worker's counters, summed into Prometheus text on scrape. Process-wide: one
/// registry however many servers a process (a test) runs.
public final class DNSMetrics: @unchecked Sendable {
    // @unchecked: `workers` is guarded by `lock` (taken when a worker starts and on scrape).
    public static let shared = DNSMetrics()

    private let lock = NSLock()
    private var workers: [DNSWorkerCounters] = []
    private var isEnabled = true

    /// Whether workers started from now on count (`dns.metrics`; read when a worker starts).
    public var enabled: Bool {
        get { lock.withLock { isEnabled } }
        set { lock.withLock { isEnabled = newValue } }
    }

    /// A new worker's counters, kept for the life of the process (a stopped worker's counts
    /// stay in the totals, as counters must).
    func register(_ transport: Transport) -> DNSWorkerCounters? {
        lock.withLock {
            guard isEnabled else { return nil }
            let counters = DNSWorkerCounters(transport: transport)
            workers.append(counters)
            return counters
        }
    }

    /// One transport's counts, summed over its workers.
    public struct Totals: Sendable {
        /// By `DNSWorkerCounters.qtypeNames`, by `rcodeNames`.
        public var queries: [UInt64]
        public var responses: [UInt64]
        public var truncated: UInt64
        public var unanswered: UInt64
        public var cacheHits: UInt64
        public var cacheMisses: UInt64
        /// Sampled answer latency by `latencyBucketsSeconds` (then +Inf), and its sum.
        public var latencyBuckets: [UInt64]
        public var latencySumSeconds: Double
        /// Workers allowed to answer in SCHED_FIFO, and the windows in which one spent its budget.
        public var realtimeWorkers: UInt64
        public var realtimeDemotions: UInt64
        /// UDP batches by their oldest query's wait in the receive queue (`queueWaitBucketsSeconds`,
        /// then +Inf), and the sum of those waits.
        public var queueWaitBuckets: [UInt64]
        public var queueWaitSumSeconds: Double
    }

    public static let qtypeNames = DNSWorkerCounters.qtypeNames
    public static let rcodeNames = DNSWorkerCounters.rcodeNames
    public static let latencyBucketsSeconds = DNSWorkerCounters.latencyBucketsSeconds
    public static let latencySampleEvery = DNSWorkerCounters.latencySampleEvery
    public static let queueWaitBucketsSeconds = DNSWorkerCounters.queueWaitBucketsSeconds

    /// Every worker's counts for `transport`, summed (Daemon turns them into /metrics).
    public func totals(_ transport: Transport) -> Totals {
        let workers = lock.withLock { self.workers }.filter { $0.transport == transport }
        typealias Slot = DNSWorkerCounters.Slot
        func sum(_ slot: Int) -> UInt64 { workers.reduce(0) { $0 &+ $1.value(slot) } }
        return Totals(queries: Self.qtypeNames.indices.map { sum(Slot.queries + $0) },
                      responses: Self.rcodeNames.indices.map { sum(Slot.responses + $0) },
                      truncated: sum(Slot.truncated), unanswered: sum(Slot.dropped),
                      cacheHits: sum(Slot.cacheHits), cacheMisses: sum(Slot.cacheMisses),
                      latencyBuckets: (0...Self.latencyBucketsSeconds.count).map { sum(Slot.latency + $0) },
                      latencySumSeconds: Double(sum(Slot.latencySumNanoseconds)) / 1e9,
                      realtimeWorkers: sum(Slot.realtime), realtimeDemotions: sum(Slot.realtimeDemotions),
                      queueWaitBuckets: (0...Self.queueWaitBucketsSeconds.count).map { sum(Slot.queueWait + $0) },
                      queueWaitSumSeconds: Double(sum(Slot.queueWaitSumNanoseconds)) / 1e9)
    }
}

/// The optional sampled query log (`dns.query_log_every`): one query in `every` logged at info
/// with its client, question, response code and size. Never every query: a log line costs
/// microseconds, an answer a fraction of one.
public struct QueryLog: Sendable {
    /// One query in this many is logged; 0: none.
    public let every: UInt64
    let logger: Logger

    public init(every: UInt64, logger: Logger) {
        self.every = every
        self.logger = logger
    }

    /// Logs one answered (or unanswered: `response` empty) query.
    func log(client: String, response: UnsafeRawBufferPointer, transport: Transport) {
        var metadata: Logger.Metadata = ["dns.client": "\(client)", "dns.proto": "\(transport == .udp ? "udp" : "tcp")",
                                         "dns.bytes": "\(response.count)"]
        if response.isEmpty {
            metadata["dns.rcode"] = "none (dropped)"
        } else if let message = try? Message.parse(response) {
            if let question = message.questions.first {
                metadata["dns.qname"] = "\(question.name)"
                metadata["dns.qtype"] = "\(question.type)"
            }
            metadata["dns.rcode"] = "\(message.rcode)"
            metadata["dns.answers"] = "\(message.answers.count)"
            metadata["dns.truncated"] = "\(message.flags.tc)"
        }
        logger.info("query", metadata: metadata)
    }
}
