import Atomics
import CShims
import Dispatch
import Foundation
import RateLimit
#if canImport(Glibc)
import Glibc
#endif

/// Every limit DNS puts on its clients, as configured: RRL and the query rate limit on UDP, the
/// connection, timing and buffering caps on TCP. The servers share one instance (and so one RRL
/// table and one set of counters).
public final class ClientLimits: @unchecked Sendable {
    // @unchecked: the limiters are thread-safe (lock-free tables, per-worker counters);
    // `queryDrops` is appended to under `lock` at worker start and summed under it.

    public struct TCP: Sendable, Equatable {
        /// Concurrent TCP connections in all; more are closed on accept.
        public var connectionsMax: Int
        /// Concurrent TCP connections from one client network (the query limit's prefix lengths).
        public var connectionsPerClientMax: Int
        /// Seconds a connection may sit between queries (RFC 7766 §6.2.3).
        public var idleTimeoutSeconds: Int
        /// Seconds from the first byte of a query to its last, and that a connection may wait
        /// for its client to read its answers: not reset per byte, so a client trickling one
        /// byte at a time (slowloris) or never reading is closed.
        public var queryTimeoutSeconds: Int
        /// Queries answered on one connection, after which it is closed (0: no cap).
        public var queriesPerConnectionMax: Int
        /// Answer bytes waiting to be written to one connection before it stops being read.
        public var outboundBytesMax: Int

        /// Connections beyond this are closed on accept, so a flood cannot exhaust descriptors.
        public static let connectionsMaxDefault = 1024
        /// One network may hold 1/16 of the connections: a single host (or NAT) cannot take
        /// them all, while 16 busy resolver networks still fit. Per /24 (IPv4) and /56 (IPv6).
        public static let connectionsPerClientMaxDefault = 64
        /// Knot's tcp-idle-timeout (10 s); RFC 7766 §6.2.3 asks for seconds, not minutes.
        public static let idleTimeoutSecondsDefault = 10
        /// Knot's tcp-io-timeout is 0.5 s and NSD's tcp-timeout 120 s; 5 s lets a query cross a
        /// slow mobile link, and bounds what a trickling client holds to 5 s per connection.
        public static let queryTimeoutSecondsDefault = 5
        /// A resolver that keeps a connection open reconnects every 10 000 queries: one
        /// handshake per 10 000 answers, while no single connection is served forever.
        public static let queriesPerConnectionMaxDefault = 10_000
        /// 128 KiB: two of the largest responses (64 KiB each), so answers keep flowing to a
        /// client that reads, while one that does not costs at most this (plus one read burst).
        public static let outboundBytesMaxDefault = 128 << 10

        public init(connectionsMax: Int = Self.connectionsMaxDefault,
                    connectionsPerClientMax: Int = Self.connectionsPerClientMaxDefault,
                    idleTimeoutSeconds: Int = Self.idleTimeoutSecondsDefault,
                    queryTimeoutSeconds: Int = Self.queryTimeoutSecondsDefault,
                    queriesPerConnectionMax: Int = Self.queriesPerConnectionMaxDefault,
                    outboundBytesMax: Int = Self.outboundBytesMaxDefault) {
            self.connectionsMax = connectionsMax
            self.connectionsPerClientMax = connectionsPerClientMax
            self.idleTimeoutSeconds = idleTimeoutSeconds
            self.queryTimeoutSeconds = queryTimeoutSeconds
            self.queriesPerConnectionMax = queriesPerConnectionMax
            self.outboundBytesMax = outboundBytesMax
        }
    }

    /// What the limits did since start-up, summed over the workers.
    public struct Counters: Sendable, Equatable {
        public var rrl = ResponseRateLimiter.Counters()
        /// UDP queries dropped by the per-network query rate limit.
        public var queriesDropped = 0
        /// TCP connections closed on accept: over the total or the per-network cap.
        public var tcpRefused = 0
        /// TCP connections closed for a query not received in time, or answers not read in time.
        public var tcpTimedOut = 0
        /// TCP connections closed after their query cap.
        public var tcpQueryCapReached = 0
    }

    public let rrl: ResponseRateLimiter
    public let queries: QueryRateLimiter
    public let tcp: TCP
    private let lock = NSLock()
    private var queryDrops: [WorkerCounter] = []
    // Written by whichever event loop runs a connection: shared atomics, off the hot path.
    let tcpRefused = ManagedAtomic<Int>(0)
    let tcpTimedOut = ManagedAtomic<Int>(0)
    let tcpQueryCapReached = ManagedAtomic<Int>(0)

    public init(rrl: ResponseRateLimiter.Configuration = .default,
                queries: QueryRateLimiter.Configuration = QueryRateLimiter.Configuration(), tcp: TCP = TCP()) {
        self.rrl = ResponseRateLimiter(rrl)
        self.queries = QueryRateLimiter(queries)
        self.tcp = tcp
    }

    /// A counter of the calling UDP worker's dropped queries.
    func makeQueryDropCounter() -> WorkerCounter {
        let counter = WorkerCounter()
        lock.withLock { queryDrops.append(counter) }
        return counter
    }

    public var counters: Counters {
        var counters = Counters()
        counters.rrl = rrl.counters
        counters.queriesDropped = lock.withLock { queryDrops.reduce(0) { $0 + $1.count } }
        counters.tcpRefused = tcpRefused.load(ordering: .relaxed)
        counters.tcpTimedOut = tcpTimedOut.load(ordering: .relaxed)
        counters.tcpQueryCapReached = tcpQueryCapReached.load(ordering: .relaxed)
        return counters
    }

    /// Monotonic milliseconds (wrapping), the RRL tables' clock.
    @inline(__always)
    static func nowMilliseconds() -> UInt32 {
        UInt32(truncatingIfNeeded: DispatchTime.now().uptimeNanoseconds / 1_000_000)
    }
}

extension ClientAddress {
    /// The address of a `sockaddr_in` or `sockaddr_in6` (an IPv4-mapped IPv6 address counts as
    /// IPv4). Allocation-free.
    init(socketAddress address: UnsafePointer<sockaddr>) {
        switch Int32(address.pointee.sa_family) {
        case AF_INET:
            let v4 = address.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee.sin_addr.s_addr }
            self.init(ipv4: UInt32(bigEndian: v4))
        case AF_INET6:
            var v6 = address.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { $0.pointee.sin6_addr }
            self = withUnsafeBytes(of: &v6) { ClientAddress(ipv6: $0) }
        default:
            self.init(high: 0, low: 0)
        }
    }
}
