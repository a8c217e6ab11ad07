import Atomics
import CShims
import DNSWire
import Foundation
import Logging
import RateLimit

/// Serves DNS over UDP: for each address, one socket per worker thread bound with
/// SO_REUSEPORT (the kernel spreads datagrams across them), each thread looping over
/// recvmmsg → answer → sendmmsg on preallocated buffers.
public final class UDPServer: @unchecked Sendable {
    // @unchecked: `sockets` and `threads` are written only in start()/stop(), which the owner
    // calls from one thread; workers read only their own fd and the atomic `running` flag.

    /// Datagrams taken per recvmmsg call. 32 amortises the syscall; more adds latency under light load.
    public static let batchDatagramsMax: UInt32 = 32
    /// Largest query datagram read; longer ones arrive truncated and get FORMERR.
    public static let queryBytesMax: UInt32 = 4096
    /// How long a blocked worker waits before it checks for shutdown.
    public static let receiveTimeoutMilliseconds: Int32 = 200
    /// Kernel receive buffer per socket, to ride out bursts.
    public static let receiveBufferBytes: Int32 = 4 << 20
    /// At most one "RRL limiting" log line per worker per this interval (never per query).
    static let rrlLogIntervalMilliseconds: UInt32 = 1000
    /// A worker that has limited nothing for this long logs that it stopped limiting.
    static let rrlQuietMillisecondsBeforeStopLog: UInt32 = 10_000

    private let addresses: [ListenAddress]
    private let workers: Int
    private let store: ViewStore
    private let udpPayloadBytes: Int
    private let minimalResponses: Bool
    private let limits: ClientLimits
    private let selection: SelectionOptions
    private let logger: Logger
    private let running = ManagedAtomicFlag()
    private var sockets: [Int32] = []
    private var threads: [Thread] = []
    private let finished = DispatchGroup()
    /// Ports actually bound, in `addresses` order (differs from the request for port 0).
    public private(set) var boundAddresses: [ListenAddress] = []

    /// Each worker's panic answers (`Answerer.panicAnswers`), published once per batch.
    private var panicCounters: [ManagedAtomic<Int>] = []
    /// Each worker's loop iterations (a received batch or a receive timeout): proof of life for
    /// systemd's watchdog, which a stuck worker stops.
    private var progressCounters: [ManagedAtomic<UInt64>] = []

    public init(addresses: [ListenAddress], workers: Int, store: ViewStore,
                udpPayloadBytes: Int = Answerer.udpPayloadBytesMax, minimalResponses: Bool = false,
                limits: ClientLimits = ClientLimits(), selection: SelectionOptions = SelectionOptions(), logger: Logger) {
        self.minimalResponses = minimalResponses
        self.limits = limits
        self.selection = selection
        precondition(workers >= 1, "at least one UDP worker")
        self.addresses = addresses
        self.workers = workers
        self.store = store
        self.udpPayloadBytes = udpPayloadBytes
        self.logger = logger
    }

    /// Sockets the service manager passed (socket activation), with their addresses: served
    /// instead of `addresses`, each by `workers` threads (they share the one socket).
    public var inheritedSockets: [(fd: Int32, address: ListenAddress)] = []
    /// The sampled query log (`dns.query_log_every`); nil: off.
    public var queryLog: QueryLog?
    /// Whether the workers answer at real-time priority (`RealtimeSettings`).
    public var realtime = RealtimeSettings.disabled
    /// When the workers shed new queries at the door (`OverloadSettings`).
    public var overload = OverloadSettings.disabled
    /// What the metrics scrape reads from another thread: the open sockets (each once) and the
    /// overload state, set by start() and stop() under `metricsLock`.
    private let metricsLock = NSLock()
    private var openSockets: Set<Int32> = []
    private var overloadState: OverloadState?

    /// Binds every socket (throwing, with nothing left open, if any bind fails), then starts the workers.
    public func start() throws(ServerError) {
        var opened: [Int32] = []
        var bound: [ListenAddress] = []
        for (fd, address) in inheritedSockets {
            let wildcard = disco_udp_adopt(fd, Self.receiveTimeoutMilliseconds, Self.receiveBufferBytes)
            guard wildcard >= 0 else { throw ServerError.bind(address: address.description, transport: "udp", errno: -wildcard) }
            for _ in 0..<workers { opened.append(fd) }
            bound.append(address)
        }
        for address in addresses where inheritedSockets.isEmpty {
            var port = address.port
            for _ in 0..<workers {
                var current = address
                current.port = port
                var (storage, length) = current.sockaddr()
                let fd = withUnsafePointer(to: &storage) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        disco_udp_socket($0, length, Self.receiveTimeoutMilliseconds, Self.receiveBufferBytes)
                    }
                }
                guard fd >= 0 else {
                    opened.forEach { close($0) }
                    throw ServerError.bind(address: address.description, transport: "udp", errno: -fd)
                }
                // With port 0 the first socket picks the port; the other workers join it.
                if port == 0 { port = Int(disco_socket_port(fd)) }
                opened.append(fd)
            }
            bound.append(ListenAddress(host: address.host, port: port))
        }
        sockets = opened
        boundAddresses = bound
        let overloadState = OverloadState(settings: overload, normalReceiveBufferBytes: Self.receiveBufferBytes, logger: logger)
        metricsLock.withLock {
            openSockets = Set(opened)
            self.overloadState = overloadState
        }
        running.set(true)
        panicCounters = sockets.map { _ in ManagedAtomic(0) }
        progressCounters = sockets.map { _ in ManagedAtomic(0) }
        for ((fd, panics), progress) in zip(zip(sockets, panicCounters), progressCounters) {
            finished.enter()
            let thread = Thread { [self] in
                // Foundation does not name the kernel thread; `top -H` and the priority
                // split (dns.background_nice) know the workers by this name.
                disco_thread_set_name("disco-udp")
                self.serve(fd: fd, overloadState: overloadState, panics: panics, progress: progress)
                self.finished.leave()
            }
            thread.name = "disco-udp"
            thread.stackSize = 1 << 20
            threads.append(thread)
            thread.start()
        }
    }

    /// Stops the workers and closes the sockets; returns when every worker has exited.
    public func stop() {
        guard running.get() else { return }
        running.set(false)
        finished.wait()
        // Workers of an inherited socket share its descriptor: each is closed once.
        metricsLock.withLock { openSockets = [] }
        Set(sockets).forEach { close($0) }
        sockets = []
        threads = []
    }

    /// Service answers given from every instance (panic threshold), summed over the workers.
    public var panicAnswers: Int { panicCounters.reduce(0) { $0 + $1.load(ordering: .relaxed) } }
    /// Workers in overload mode now, and the times the server entered it.
    public var overloadSheddingWorkers: Int {
        metricsLock.withLock { overloadState }?.sheddingWorkers.load(ordering: .relaxed) ?? 0
    }
    public var overloadEpisodes: UInt64 { metricsLock.withLock { overloadState }?.episodes.load(ordering: .relaxed) ?? 0 }
    /// Queries the kernel dropped because a socket's receive queue was full, over every open
    /// socket (under the lock: stop() cannot close one meanwhile).
    public var receiveQueueDrops: Int64 {
        metricsLock.withLock { openSockets.reduce(0) { $0 + max(disco_udp_socket_drops($1), 0) } }
    }

    /// Each worker's loop iterations so far; a worker whose count stands still is stuck (it
    /// wakes at least every `receiveTimeoutMilliseconds` when idle).
    public var workerProgress: [UInt64] { progressCounters.map { $0.load(ordering: .relaxed) } }

    private func serve(fd: Int32, overloadState: OverloadState, panics: ManagedAtomic<Int>, progress: ManagedAtomic<UInt64>) {
        guard let batch = disco_udp_batch_create(Self.batchDatagramsMax, Self.queryBytesMax, UInt32(udpPayloadBytes)) else {
            logger.critical("cannot allocate UDP buffers")
            return
        }
        defer { disco_udp_batch_destroy(batch) }
        let answerer = Answerer(udpPayloadBytes: udpPayloadBytes, minimalResponses: minimalResponses, cache: true,
                                selection: selection)
        let outBytes = Int(disco_udp_batch_out_capacity(batch))
        var lastErrorLogged: Int32 = 0
        // The pipeline's limits (STYLE.md: their order lives here): query rate → answer → RRL.
        let queries = limits.queries.configuration.enabled ? limits.queries : nil
        let queryDrops = limits.makeQueryDropCounter()
        let rrl = limits.rrl.configuration.enabled ? limits.rrl.makeWorker() : nil
        var nextRRLLog: UInt32 = 0
        let counters = DNSMetrics.shared.register(.udp)
        let queryLog = self.queryLog.flatMap { $0.every > 0 ? $0 : nil }
        var queriesSinceLogged: UInt64 = 0
        var budget = RealtimeBudget(realtime, logger: logger)
        var overload = OverloadDetector(fd: fd, state: overloadState)
        defer { overload?.finish() }
        counters?.setRealtime(budget != nil)
        // A stopped worker's counts stay in the totals, but it answers no more: it is no longer
        // a real-time worker (port 0 retries stop the workers of a bind that failed over TCP).
        defer { counters?.setRealtime(false) }
        while running.get() {
            progress.wrappingIncrement(ordering: .relaxed)
            if budget?.account() == true { counters?.countRealtimeDemotion() }
            if let rrl { logLimiting(rrl, nextLog: &nextRRLLog) }
            let received = disco_udp_batch_recv(fd, batch)
            if received < 0 {
                if received != lastErrorLogged {
                    logger.error("UDP receive failed", metadata: ["dns.errno": "\(-received)"])
                    lastErrorLogged = received
                }
                continue
            }
            guard received > 0 else {
                overload?.observe(waitedNanoseconds: 0)
                continue
            }
            // The batch's first datagram is its oldest: how far behind this worker is.
            let waited = disco_udp_batch_waited_ns(batch, 0)
            overload?.observe(waitedNanoseconds: waited)
            if waited >= 0 { counters?.recordQueueWait(nanoseconds: UInt64(waited)) }
            let view = store.load()
            let now = (queries != nil || rrl != nil) ? ClientLimits.nowMilliseconds() : 0
            for i in 0..<UInt32(received) {
                let client = (queries != nil || rrl != nil)
                    ? ClientAddress(socketAddress: disco_udp_batch_peer(batch, i)) : ClientAddress(high: 0, low: 0)
                if let queries, !queries.admit(client, nowMilliseconds: now) {
                    queryDrops.increment()
                    disco_udp_batch_set_out_length(batch, i, 0)
                    continue
                }
                let query = UnsafeRawBufferPointer(start: disco_udp_batch_in(batch, i),
                                                   count: Int(disco_udp_batch_in_length(batch, i)))
                let output = UnsafeMutableRawBufferPointer(start: disco_udp_batch_out(batch, i), count: outBytes)
                let timed = counters?.shouldTime() ?? false
                let started = timed ? DNSWorkerCounters.nowNanoseconds() : 0
                var length = answerer.answer(query: query, into: output, view: view, transport: .udp)
                if timed { counters?.recordLatency(nanoseconds: DNSWorkerCounters.nowNanoseconds() &- started) }
                if let rrl, length > 0 {
                    switch rrl.decide(response: output, length: length, client: client, nowMilliseconds: now,
                                        wildcard: answerer.lastWildcard) {
                    case .send: break
                    case .slip(let truncated): length = truncated
                    case .drop: length = 0
                    }
                }
                disco_udp_batch_set_out_length(batch, i, UInt32(length))
                counters?.count(qtype: answerer.lastQType, response: output, length: length)
                if let queryLog {
                    queriesSinceLogged &+= 1
                    if queriesSinceLogged >= queryLog.every {
                        queriesSinceLogged = 0
                        queryLog.log(client: "\(ClientAddress(socketAddress: disco_udp_batch_peer(batch, i)))",
                                     response: UnsafeRawBufferPointer(rebasing: output[0..<length]), transport: .udp)
                    }
                }
            }
            counters?.setCache(hits: answerer.cacheHits, misses: answerer.cacheMisses)
            panics.store(answerer.panicAnswers, ordering: .relaxed)
            let sent = disco_udp_batch_send(fd, batch, UInt32(received))
            if sent < 0 && sent != lastErrorLogged {
                logger.error("UDP send failed", metadata: ["dns.errno": "\(-sent)"])
                lastErrorLogged = sent
            }
        }
        logger.debug("UDP worker stopped", metadata: ["dns.cache.hits": "\(answerer.cacheHits)",
                                                      "dns.cache.misses": "\(answerer.cacheMisses)"])
    }

    /// Logs, at most once a second per worker, that RRL started limiting a client network, and
    /// once that it stopped (nothing limited for 10 s). Never per query.
    private func logLimiting(_ rrl: ResponseRateLimiter.Worker, nextLog: inout UInt32) {
        let now = ClientLimits.nowMilliseconds()
        guard Int32(bitPattern: now &- nextLog) >= 0 else { return }
        if let notice = rrl.takeLimitingNotice() {
            nextLog = now &+ Self.rrlLogIntervalMilliseconds
            let mode = limits.rrl.configuration.logOnly ? " (log only)" : ""
            let prefixLength = notice.prefix.isIPv4 ? limits.rrl.configuration.ipv4PrefixLength
                                                    : limits.rrl.configuration.ipv6PrefixLength
            logger.info("RRL limiting responses\(mode) to \(notice.prefix)/\(prefixLength)",
                        metadata: ["dns.rrl.class": "\(notice.responseClass)", "dns.rrl.buckets_started": "\(notice.starts)"])
        } else if rrl.hasLimited, now &- rrl.lastLimitedMilliseconds >= Self.rrlQuietMillisecondsBeforeStopLog {
            rrl.clearLimited()
            let counters = limits.rrl.counters
            logger.info("RRL stopped limiting: nothing over the rate for \(Self.rrlQuietMillisecondsBeforeStopLog / 1000) s",
                        metadata: ["dns.rrl.limited": "\(counters.limited)", "dns.rrl.slipped": "\(counters.slipped)",
                                   "dns.rrl.dropped": "\(counters.dropped)"])
        }
    }
}

/// Why a server could not start.
public enum ServerError: Error, CustomStringConvertible {
    case bind(address: String, transport: String, errno: Int32)
    case other(String)

    public var description: String {
        switch self {
        case .bind(let address, let transport, let code):
            "cannot bind \(transport) \(address): \(String(cString: strerror(code)))"
        case .other(let message): message
        }
    }
}
