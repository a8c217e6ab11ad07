import Atomics
import DNSWire

/// Response Rate Limiting (RRL) over UDP, with the semantics of BIND's, NSD's and Knot's: a
/// client network may receive so many responses per second of each class and key; beyond that
/// responses are dropped, except every `slip`-th, which goes out truncated (TC=1, no records)
/// so that a real client behind a spoofed victim's address retries over TCP, which cannot be
/// spoofed. A spoofed-source flood then cannot turn the server into an amplifier: what it
/// sends to the victim is no larger than what the attacker sends.
///
/// One limiter is shared by the UDP workers; each worker takes a `Worker` (its scratch memory,
/// slip counter and counters) and the workers share the lock-free `RateTable`.
public final class ResponseRateLimiter: @unchecked Sendable {
    // @unchecked: `workers` is appended to under `workersLock` (worker start-up) and read
    // under it (counters); everything else is immutable or the lock-free table.

    public struct Configuration: Sendable, Equatable {
        /// Off: every response is sent.
        public var enabled: Bool
        /// Responses per second to one client network, per class and key.
        public var responsesPerSecond: Int
        /// Seconds of debt a client over the rate must pay off before it is answered again.
        public var windowSeconds: Int
        /// Every `slip`-th limited response goes out truncated; 0: all dropped; 1: all truncated.
        public var slip: Int
        /// Client networks: IPv4 addresses are grouped by their first `ipv4PrefixLength` bits…
        public var ipv4PrefixLength: Int
        /// …and IPv6 addresses by their first `ipv6PrefixLength` bits.
        public var ipv6PrefixLength: Int
        /// Clients in these networks are never limited.
        public var exempt: [ClientNetwork]
        /// Loopback is exempt by default: the usual way to use discod (as Consul's DNS) is a
        /// caching resolver on the same host forwarding to it, all from 127.0.0.1, and a
        /// spoofed flood cannot arrive from loopback (the kernel drops 127/8 and ::1 sources
        /// from other interfaces). `exempt = []` limits loopback like anything else.
        public static let exemptDefault: [ClientNetwork] = [ClientNetwork("127.0.0.0/8")!, ClientNetwork("::1")!]
        /// Count and log what would be limited, but send every response.
        public var logOnly: Bool
        /// Buckets in the shared table (a power of two; 16 bytes each).
        public var tableEntries: Int

        /// NSD's default (rrl-ratelimit: 200). A resolver rarely asks one authoritative server
        /// the same question 200 times a second; a reflection flood needs thousands.
        public static let responsesPerSecondDefault = 200
        /// BIND's default window (15 s).
        public static let windowSecondsDefault = 15
        /// NSD's and BIND's default (2): half of the limited responses slip, so a real client
        /// sharing the victim's network gets through by TCP within a retry or two, while the
        /// truncated responses carry less than the queries that caused them.
        public static let slipDefault = 2
        /// The largest slip accepted (BIND's limit).
        public static let slipMax = 10
        /// NSD's and BIND's default prefix lengths.
        public static let ipv4PrefixLengthDefault = 24
        public static let ipv6PrefixLengthDefault = 56

        public init(enabled: Bool = true, responsesPerSecond: Int = Self.responsesPerSecondDefault,
                    windowSeconds: Int = Self.windowSecondsDefault, slip: Int = Self.slipDefault,
                    ipv4PrefixLength: Int = Self.ipv4PrefixLengthDefault, ipv6PrefixLength: Int = Self.ipv6PrefixLengthDefault,
                    exempt: [ClientNetwork] = Self.exemptDefault, logOnly: Bool = false, tableEntries: Int = RateTable.entriesDefault) {
            self.enabled = enabled
            self.responsesPerSecond = responsesPerSecond
            self.windowSeconds = windowSeconds
            self.slip = slip
            self.ipv4PrefixLength = ipv4PrefixLength
            self.ipv6PrefixLength = ipv6PrefixLength
            self.exempt = exempt
            self.logOnly = logOnly
            self.tableEntries = tableEntries
        }

        public static let `default` = Configuration()
    }

    /// Totals over every worker.
    public struct Counters: Sendable, Equatable {
        /// Responses over the rate (in log-only mode: that would have been).
        public var limited = 0
        /// Limited responses sent truncated.
        public var slipped = 0
        /// Limited responses not sent.
        public var dropped = 0
        /// Buckets pushed out of the full table while still active (a sign of a prefix storm or
        /// of a table too small).
        public var evictions = 0

        public init() {}
    }

    public let configuration: Configuration
    /// The shared table (package: tests read its size).
    package let table: RateTable
    let seed: UInt64
    private let workersLock = ManagedAtomic<Bool>(false)
    private var workers: [Worker] = []

    public init(_ configuration: Configuration, seed: UInt64 = UInt64.random(in: .min ... .max)) {
        self.configuration = configuration
        self.seed = seed
        table = RateTable(entries: configuration.tableEntries,
                          policy: BucketPolicy(ratePerSecond: configuration.responsesPerSecond,
                                               windowSeconds: configuration.windowSeconds))
    }

    /// A worker's handle; one per thread, not shared.
    public func makeWorker() -> Worker {
        let worker = Worker(limiter: self)
        withWorkersLocked { workers.append(worker) }
        return worker
    }

    /// The counters summed over every worker (a racy but never torn snapshot).
    public var counters: Counters {
        withWorkersLocked {
            var total = Counters()
            for worker in workers {
                let c = worker.counters
                total.limited += c.limited
                total.slipped += c.slipped
                total.dropped += c.dropped
                total.evictions += c.evictions
            }
            return total
        }
    }

    private func withWorkersLocked<T>(_ body: () -> T) -> T {
        while !workersLock.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged {}
        defer { workersLock.store(false, ordering: .releasing) }
        return body()
    }

    /// What to do with one response.
    public enum Decision: Sendable, Equatable {
        /// Send it as written.
        case send
        /// Send the first `length` bytes: it was rewritten as a truncated response.
        case slip(length: Int)
        /// Send nothing.
        case drop
    }

    /// One UDP worker's use of the limiter: scratch memory, the slip counter, counters and the
    /// last limiting event to log. Not thread-safe: one per worker thread.
    public final class Worker: @unchecked Sendable {
        // @unchecked: used by one worker thread; other threads only load the atomic counters.
        private let limiter: ResponseRateLimiter
        private let configuration: Configuration
        private let table: RateTable
        private let scratch: UnsafeMutableRawPointer
        private var slipCount = 0
        private let limited = WorkerCounter()
        private let slipped = WorkerCounter()
        private let dropped = WorkerCounter()
        private let evictions = WorkerCounter()

        /// A bucket that has just started to be limited, kept for the worker to log (the first
        /// one since the last `takeLimitingNotice`), and how many started since.
        public private(set) var limitingNotice: (prefix: ClientAddress, responseClass: ResponseClass)?
        public private(set) var limitingStarts = 0
        /// When a response was last limited (monotonic milliseconds), for "stopped limiting".
        public private(set) var lastLimitedMilliseconds: UInt32 = 0
        public private(set) var hasLimited = false

        init(limiter: ResponseRateLimiter) {
            self.limiter = limiter
            configuration = limiter.configuration
            table = limiter.table
            scratch = .allocate(byteCount: DomainName.nameBytesMax + 1, alignment: 8)
        }

        deinit { scratch.deallocate() }

        var counters: Counters {
            var c = Counters()
            c.limited = limited.count
            c.slipped = slipped.count
            c.dropped = dropped.count
            c.evictions = evictions.count
            return c
        }

        /// Decides the fate of the response of `length` bytes in `buffer` to `client`, at `now`
        /// (monotonic milliseconds). `wildcard`: the owner of the wildcard the answer was
        /// synthesized from (uncompressed wire form), if it was. A slipped response is rewritten
        /// in place. Allocation-free.
        public func decide(response buffer: UnsafeMutableRawBufferPointer, length: Int, client: ClientAddress,
                           nowMilliseconds now: UInt32, wildcard: UnsafeRawBufferPointer? = nil) -> Decision {
            guard configuration.enabled, length >= Message.headerBytes else { return .send }
            for network in configuration.exempt where network.contains(client) { return .send }
            let response = UnsafeRawBufferPointer(rebasing: buffer[0..<length])
            var classification = ResponseClassifier.classify(response)
            if wildcard != nil, classification.responseClass == .answer { classification.responseClass = .wildcard }
            let prefix = client.prefix(ipv4: configuration.ipv4PrefixLength, ipv6: configuration.ipv6PrefixLength)
            var key = BucketKey(seed: limiter.seed)
            key.add(prefix)
            key.add(classification.responseClass.rawValue)
            switch classification.keyName {
            case .none:
                break
            case .question:
                if classification.responseClass == .wildcard, let wildcard {
                    key.addName(wildcard)
                } else {
                    key.addName(in: response, at: Message.headerBytes, scratch: scratch)
                }
                if classification.responseClass == .answer || classification.responseClass == .wildcard {
                    key.add(UInt64(classification.qtype))
                }
            case .authorityOwner(let offset):
                key.addName(in: response, at: offset, scratch: scratch)
            }
            let outcome = table.record(key: key.value, nowMilliseconds: now)
            if outcome.evicted { evictions.increment() }
            guard outcome.limited else { return .send }
            limited.increment()
            lastLimitedMilliseconds = now
            hasLimited = true
            if outcome.startedLimiting {
                if limitingNotice == nil { limitingNotice = (prefix, classification.responseClass) }
                limitingStarts &+= 1
            }
            if configuration.logOnly { return .send }
            if configuration.slip > 0 {
                slipCount += 1
                if slipCount >= configuration.slip {
                    slipCount = 0
                    slipped.increment()
                    return .slip(length: Self.truncate(buffer, questionEnd: classification.questionEnd))
                }
            }
            dropped.increment()
            return .drop
        }

        /// Hands over the pending "started limiting" notice, if any, and how many buckets started
        /// being limited since the last call.
        public func takeLimitingNotice() -> (prefix: ClientAddress, responseClass: ResponseClass, starts: Int)? {
            guard let notice = limitingNotice else { return nil }
            let starts = limitingStarts
            limitingNotice = nil
            limitingStarts = 0
            return (notice.prefix, notice.responseClass, starts)
        }

        /// Marks the end of a limiting episode as logged.
        public func clearLimited() { hasLimited = false }

        /// Rewrites the response as header + question with TC set and no records (no OPT
        /// either: the client retries over TCP, where it gets the whole answer).
        static func truncate(_ buffer: UnsafeMutableRawBufferPointer, questionEnd: Int) -> Int {
            var flags = HeaderFlags(rawValue: UInt16(buffer[2]) << 8 | UInt16(buffer[3]))
            flags.tc = true
            flags.rcodeBits = 0
            buffer[2] = UInt8(flags.rawValue >> 8)
            buffer[3] = UInt8(flags.rawValue & 0xFF)
            let questions: UInt8 = questionEnd > Message.headerBytes ? 1 : 0
            buffer[4] = 0
            buffer[5] = questions
            for i in 6..<12 { buffer[i] = 0 }
            return questionEnd
        }
    }
}
