import Atomics
import DNSWire
import Foundation
import Logging
import RateLimit
import NIOCore
import NIOPosix

/// Serves DNS over TCP (RFC 1035 §4.2.2, RFC 7766): 2-byte length framing, several queries
/// per connection answered in order, and the limits of `ClientLimits.TCP`: connections in all
/// and per client network, a deadline per query and between queries, bounded unread answers
/// (back-pressure), and a query cap per connection.
public final class TCPServer: @unchecked Sendable {
    // @unchecked: `channels` is written only by start()/stop() on the owner's thread.

    /// Listen backlog: connections the kernel completes before we accept them.
    static let backlogConnections: Int32 = 256
    /// Reads per readiness event, and the largest read: with `readBytesMax` they bound what one
    /// connection can have buffered unanswered (4 × 16 KiB) once it has stopped being read.
    static let readsPerEventMax = 4
    static let readBytesMax = 16 << 10

    private let addresses: [ListenAddress]
    private let store: ViewStore
    private let group: EventLoopGroup
    private let limits: ClientLimits
    private let minimalResponses: Bool
    private let selection: SelectionOptions
    private let logger: Logger
    private let connections = ManagedAtomic<Int>(0)
    private let perClient: ConnectionsPerClient
    private let panics = ManagedAtomic<Int>(0)
    private var channels: [Channel] = []
    public private(set) var boundAddresses: [ListenAddress] = []
    /// Listening sockets the service manager passed (socket activation): served instead of
    /// `addresses`.
    public var inheritedSockets: [(fd: Int32, address: ListenAddress)] = []
    /// The sampled query log (`dns.query_log_every`); nil: off.
    public var queryLog: QueryLog?

    public init(addresses: [ListenAddress], store: ViewStore, group: EventLoopGroup,
                limits: ClientLimits = ClientLimits(), minimalResponses: Bool = false,
                selection: SelectionOptions = SelectionOptions(), logger: Logger) {
        self.minimalResponses = minimalResponses
        self.selection = selection
        self.addresses = addresses
        self.store = store
        self.group = group
        self.limits = limits
        self.perClient = ConnectionsPerClient(limit: limits.tcp.connectionsPerClientMax,
                                              ipv4PrefixLength: limits.queries.configuration.ipv4PrefixLength,
                                              ipv6PrefixLength: limits.queries.configuration.ipv6PrefixLength,
                                              exempt: limits.queries.configuration.exempt)
        self.logger = logger
    }

    /// Open connections now, for metrics and tests.
    public var connectionCount: Int { connections.load(ordering: .relaxed) }

    /// Service answers given from every instance (panic threshold) over TCP.
    public var panicAnswers: Int { panics.load(ordering: .relaxed) }

    public func start() throws(ServerError) {
        let store = self.store
        let connections = self.connections
        let perClient = self.perClient
        let limits = self.limits
        let logger = self.logger
        let minimalResponses = self.minimalResponses
        let outbound = limits.tcp.outboundBytesMax
        let selection = self.selection
        let panics = self.panics
        let queryLog = self.queryLog.flatMap { $0.every > 0 ? $0 : nil }
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: Self.backlogConnections)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.maxMessagesPerRead, value: UInt(Self.readsPerEventMax))
            .childChannelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(
                minimum: 512, initial: 2048, maximum: Self.readBytesMax))
            .childChannelOption(.writeBufferWaterMark, value: .init(low: outbound / 2, high: outbound))
            .childChannelInitializer { channel in
                let open = connections.wrappingIncrementThenLoad(ordering: .relaxed)
                let client = channel.remoteAddress.map(ClientAddress.init(nioAddress:))
                let admitted = client.map { perClient.open($0) } ?? true
                channel.closeFuture.whenComplete { _ in
                    connections.wrappingDecrement(ordering: .relaxed)
                    if admitted, let client { perClient.close(client) }
                }
                guard open <= limits.tcp.connectionsMax, admitted else {
                    limits.tcpRefused.wrappingIncrement(ordering: .relaxed)
                    logger.debug("TCP connection refused: limit reached",
                                 metadata: ["dns.tcp.connections": "\(open)", "dns.tcp.client": "\(client.map { "\($0)" } ?? "?")"])
                    return channel.close()
                }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        DNSConnectionHandler(store: store, limits: limits, minimalResponses: minimalResponses,
                                             selection: selection, panics: panics, queryLog: queryLog))
                }
            }
        var started: [Channel] = []
        var bound: [ListenAddress] = []
        for (fd, address) in inheritedSockets {
            do {
                started.append(try bootstrap.withBoundSocket(fd).wait())
                bound.append(address)
            } catch {
                for channel in started { try? channel.close().wait() }
                throw ServerError.bind(address: address.description, transport: "tcp", errno: (error as? IOError)?.errnoCode ?? 0)
            }
        }
        for address in addresses where inheritedSockets.isEmpty {
            do {
                let channel = try bootstrap.bind(host: address.host, port: address.port).wait()
                started.append(channel)
                bound.append(ListenAddress(host: address.host, port: channel.localAddress?.port ?? address.port))
            } catch {
                for channel in started { try? channel.close().wait() }
                let code = (error as? IOError)?.errnoCode ?? 0
                throw ServerError.bind(address: address.description, transport: "tcp", errno: code)
            }
        }
        channels = started
        boundAddresses = bound
    }

    public func stop() {
        for channel in channels { try? channel.close().wait() }
        channels = []
    }
}

/// Open TCP connections per client network, against `ClientLimits.TCP.connectionsPerClientMax`.
/// Touched once per accept and once per close, under a lock: not the answer path.
final class ConnectionsPerClient: @unchecked Sendable {
    // @unchecked: `open` is only touched under `lock`.
    private let lock = NSLock()
    private var open: [ClientAddress: Int] = [:]
    private let limit: Int
    private let ipv4PrefixLength: Int
    private let ipv6PrefixLength: Int
    private let exempt: [ClientNetwork]

    init(limit: Int, ipv4PrefixLength: Int, ipv6PrefixLength: Int, exempt: [ClientNetwork]) {
        self.limit = limit
        self.ipv4PrefixLength = ipv4PrefixLength
        self.ipv6PrefixLength = ipv6PrefixLength
        self.exempt = exempt
    }

    /// Counts a new connection from `client`; false (and not counted) if its network is full.
    func open(_ client: ClientAddress) -> Bool {
        if exempt.contains(where: { $0.contains(client) }) { return true }
        let prefix = client.prefix(ipv4: ipv4PrefixLength, ipv6: ipv6PrefixLength)
        return lock.withLock {
            let count = open[prefix, default: 0]
            guard count < limit else { return false }
            open[prefix] = count + 1
            return true
        }
    }

    func close(_ client: ClientAddress) {
        if exempt.contains(where: { $0.contains(client) }) { return }
        let prefix = client.prefix(ipv4: ipv4PrefixLength, ipv6: ipv6PrefixLength)
        lock.withLock {
            let count = open[prefix, default: 0] - 1
            open[prefix] = count > 0 ? count : nil
        }
    }
}

extension ClientAddress {
    init(nioAddress address: SocketAddress) {
        var client = ClientAddress(high: 0, low: 0)
        switch address {
        case .v4, .v6:
            address.withSockAddr { pointer, _ in client = ClientAddress(socketAddress: pointer) }
        case .unixDomainSocket:
            break
        }
        self = client
    }
}

/// What the TCP path needs per event-loop thread: an Answerer and a full-size response
/// buffer, so connections share them instead of each holding 64 KiB.
final class TCPAnswerContext {
    let answerer: Answerer
    let output = UnsafeMutableRawBufferPointer.allocate(byteCount: Answerer.responseBytesMax, alignment: 8)
    /// This thread's TCP counters (one writer: the event loop).
    let counters = DNSMetrics.shared.register(.tcp)
    private var queriesSinceLogged: UInt64 = 0

    /// Whether this query is the one in `every` to log.
    func sampleQueryLog(every: UInt64) -> Bool {
        queriesSinceLogged &+= 1
        guard queriesSinceLogged >= every else { return false }
        queriesSinceLogged = 0
        return true
    }

    init(minimalResponses: Bool, selection: SelectionOptions) {
        answerer = Answerer(minimalResponses: minimalResponses, selection: selection)
    }

    deinit { output.deallocate() }

    // Each thread sees only its own value: the variable is safe to share.
    nonisolated(unsafe) private static let perThread = ThreadSpecificVariable<TCPAnswerContext>()

    /// The calling thread's context (an event loop thread: one context per loop).
    static func current(minimalResponses: Bool, selection: SelectionOptions) -> TCPAnswerContext {
        if let context = perThread.currentValue, context.answerer.minimalResponses == minimalResponses,
           context.answerer.selection == selection { return context }
        let context = TCPAnswerContext(minimalResponses: minimalResponses, selection: selection)
        perThread.currentValue = context
        return context
    }
}

/// One TCP connection's limits as a state machine (STYLE.md): what the connection is waiting
/// for, and until when. The handler feeds it events and performs the action it returns.
///
/// - `idle`: between queries, nothing buffered; closed after `idleTimeoutSeconds`.
/// - `receiving`: part of a query has arrived; the whole of it must within
///   `queryTimeoutSeconds` of its start (not reset per byte: slowloris).
/// - `stalled`: answers are not being read (outbound bytes above the high-water mark), so the
///   connection is not read either; the client must read within `queryTimeoutSeconds`.
/// - `draining`: the query cap was reached; the last answers are being written, then close.
struct TCPConnectionState {
    enum Phase: Equatable {
        case idle
        case receiving
        case stalled
        case draining
    }

    enum Action: Equatable {
        /// Nothing to do; the timer (if any) fires at `deadline`.
        case none
        /// Stop reading and close once what is written is flushed.
        case drain
        /// Close now: a deadline passed.
        case close
    }

    private(set) var phase: Phase = .idle
    private(set) var deadline: NIODeadline
    private(set) var queries = 0
    private let idle: TimeAmount
    private let query: TimeAmount
    private let queriesMax: Int

    init(now: NIODeadline, limits: ClientLimits.TCP) {
        idle = .seconds(Int64(limits.idleTimeoutSeconds))
        query = .seconds(Int64(limits.queryTimeoutSeconds))
        queriesMax = limits.queriesPerConnectionMax
        deadline = now + idle
    }

    /// One query was answered at `now`. `.drain` when it was the connection's last: its
    /// answers must then be read within the query timeout.
    mutating func answered(now: NIODeadline) -> Action {
        switch phase {
        case .draining: preconditionFailure("no query is answered after the cap")
        case .idle, .receiving, .stalled: break
        }
        queries += 1
        if queriesMax > 0 && queries >= queriesMax {
            phase = .draining
            deadline = now + query
            return .drain
        }
        return .none
    }

    /// The handler has answered every complete query it could: `buffered` bytes of a next
    /// query are left, and the connection is or is not `writable`.
    mutating func settled(now: NIODeadline, buffered: Int, writable: Bool) {
        switch phase {
        case .draining:
            return
        case .idle, .receiving, .stalled:
            let next: Phase = !writable ? .stalled : buffered > 0 ? .receiving : .idle
            // A deadline runs from the moment its phase began, not from the latest byte.
            if next != phase || next == .idle {
                deadline = now + (next == .idle ? idle : query)
            }
            phase = next
        }
    }

    /// The timer fired at `now`.
    func timerFired(now: NIODeadline) -> Action {
        now >= deadline ? .close : .none
    }
}

/// Reads 2-byte-length-framed queries (RFC 1035 §4.2.2), answers them in order, and applies
/// the connection's limits. Answers are flushed once per read burst; a connection whose client
/// does not read its answers stops being read (back-pressure through NIO's writability).
final class DNSConnectionHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let store: ViewStore
    private let limits: ClientLimits
    private let minimalResponses: Bool
    private let selection: SelectionOptions
    private let panics: ManagedAtomic<Int>
    private let queryLog: QueryLog?
    private var buffer = ByteBuffer()
    private var state: TCPConnectionState
    private var timer: Scheduled<Void>?
    private var timerAt: NIODeadline = .distantFuture

    init(store: ViewStore, limits: ClientLimits, minimalResponses: Bool, selection: SelectionOptions,
         panics: ManagedAtomic<Int>, queryLog: QueryLog? = nil) {
        self.queryLog = queryLog
        self.selection = selection
        self.panics = panics
        self.store = store
        self.limits = limits
        self.minimalResponses = minimalResponses
        state = TCPConnectionState(now: .now(), limits: limits.tcp)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        armTimer(context: context)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        if buffer.readableBytes == 0 {
            buffer = bytes
        } else {
            buffer.writeBuffer(&bytes)
        }
        answerBuffered(context: context)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable, state.phase == .stalled {
            answerBuffered(context: context)
            context.flush()
            if state.phase != .draining && state.phase != .stalled {
                context.channel.setOption(ChannelOptions.autoRead, value: true).whenFailure { _ in }
            }
        }
        context.fireChannelWritabilityChanged()
    }

    /// Answers every complete query in the buffer while the channel is writable.
    private func answerBuffered(context: ChannelHandlerContext) {
        guard state.phase != .draining else { return }
        while context.channel.isWritable,
              let length = buffer.getInteger(at: buffer.readerIndex, as: UInt16.self),
              buffer.readableBytes >= 2 + Int(length) {
            buffer.moveReaderIndex(forwardBy: 2)
            let query = buffer.readSlice(length: Int(length))!
            guard answer(query, context: context) else {
                // Not a query we can answer (too short, or a response): end the connection.
                context.close(promise: nil)
                return
            }
            if state.answered(now: .now()) == .drain {
                limits.tcpQueryCapReached.wrappingIncrement(ordering: .relaxed)
                context.channel.setOption(ChannelOptions.autoRead, value: false).whenFailure { _ in }
                context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(capacity: 0)))
                    .assumeIsolated().whenComplete { _ in context.close(promise: nil) }
                armTimer(context: context)
                return
            }
        }
        buffer.discardReadBytes()
        let writable = context.channel.isWritable
        state.settled(now: .now(), buffered: buffer.readableBytes, writable: writable)
        if !writable {
            // Back-pressure: read no more from a client that does not read its answers.
            context.channel.setOption(ChannelOptions.autoRead, value: false).whenFailure { _ in }
        }
        armTimer(context: context)
    }

    /// Writes the answer to `query`; false if the query is not one to answer.
    private func answer(_ query: ByteBuffer, context: ChannelHandlerContext) -> Bool {
        let view = store.load()
        let answering = TCPAnswerContext.current(minimalResponses: minimalResponses, selection: selection)
        let panicsBefore = answering.answerer.panicAnswers
        let counters = answering.counters
        let timed = counters?.shouldTime() ?? false
        let started = timed ? DNSWorkerCounters.nowNanoseconds() : 0
        let length = query.withUnsafeReadableBytes { bytes in
            answering.answerer.answer(query: bytes, into: answering.output, view: view, transport: .tcp)
        }
        if timed { counters?.recordLatency(nanoseconds: DNSWorkerCounters.nowNanoseconds() &- started) }
        counters?.count(qtype: answering.answerer.lastQType, response: answering.output, length: length)
        if let queryLog, answering.sampleQueryLog(every: queryLog.every) {
            queryLog.log(client: context.remoteAddress.map { "\(ClientAddress(nioAddress: $0))" } ?? "?",
                         response: UnsafeRawBufferPointer(rebasing: answering.output[0..<length]), transport: .tcp)
        }
        if answering.answerer.panicAnswers != panicsBefore { panics.wrappingIncrement(ordering: .relaxed) }
        guard length > 0 else { return false }
        var response = context.channel.allocator.buffer(capacity: 2 + length)
        response.writeInteger(UInt16(length))
        response.writeBytes(UnsafeRawBufferPointer(rebasing: answering.output[0..<length]))
        context.write(wrapOutboundOut(response), promise: nil)
        return true
    }

    /// Makes sure a timer fires no later than the state's deadline. Deadlines mostly move
    /// later, so a timer that fires early just re-arms: one scheduled task per timeout period,
    /// not one per query.
    private func armTimer(context: ChannelHandlerContext) {
        let deadline = state.deadline
        guard timer == nil || deadline < timerAt else { return }
        timer?.cancel()
        timerAt = deadline
        timer = context.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) { [weak self] in
            guard let self else { return }
            self.timer = nil
            self.timerAt = .distantFuture
            switch self.state.timerFired(now: .now()) {
            case .close:
                // An idle connection timing out is routine; the others are a slow or stuck client.
                if self.state.phase != .idle { self.limits.tcpTimedOut.wrappingIncrement(ordering: .relaxed) }
                context.close(promise: nil)
            case .none, .drain:
                self.armTimer(context: context)
            }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}

