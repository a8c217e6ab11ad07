import Atomics
import DNSWire
import Logging
import NIOCore
import NIOPosix

/// Serves DNS over TCP (RFC 1035 §4.2.2, RFC 7766): 2-byte length framing, several queries
/// per connection answered in order, an idle timeout and a cap on concurrent connections.
public final class TCPServer: @unchecked Sendable {
    // @unchecked: `channels` is written only by start()/stop() on the owner's thread.

    /// Connections beyond this are closed on accept, so a flood cannot exhaust descriptors.
    public static let connectionsMaxDefault = 1024
    /// RFC 7766 §6.2.3: idle connections are closed after a few seconds.
    public static let idleTimeoutSecondsDefault: Int64 = 10

    private let addresses: [ListenAddress]
    private let store: ViewStore
    private let group: EventLoopGroup
    private let connectionsMax: Int
    private let idleTimeoutSeconds: Int64
    private let minimalResponses: Bool
    private let selection: SelectionOptions
    private let logger: Logger
    private let connections = ManagedAtomic<Int>(0)
    private let panics = ManagedAtomic<Int>(0)
    private var channels: [Channel] = []
    public private(set) var boundAddresses: [ListenAddress] = []

    public init(addresses: [ListenAddress], store: ViewStore, group: EventLoopGroup,
                connectionsMax: Int = TCPServer.connectionsMaxDefault,
                idleTimeoutSeconds: Int64 = TCPServer.idleTimeoutSecondsDefault, minimalResponses: Bool = false,
                selection: SelectionOptions = SelectionOptions(), logger: Logger) {
        self.minimalResponses = minimalResponses
        self.selection = selection
        self.addresses = addresses
        self.store = store
        self.group = group
        self.connectionsMax = connectionsMax
        self.idleTimeoutSeconds = idleTimeoutSeconds
        self.logger = logger
    }

    /// Open connections now, for metrics and tests.
    public var connectionCount: Int { connections.load(ordering: .relaxed) }

    /// Service answers given from every instance (panic threshold) over TCP.
    public var panicAnswers: Int { panics.load(ordering: .relaxed) }

    public func start() throws(ServerError) {
        let store = self.store
        let connections = self.connections
        let connectionsMax = self.connectionsMax
        let idle = TimeAmount.seconds(idleTimeoutSeconds)
        let logger = self.logger
        let minimalResponses = self.minimalResponses
        let selection = self.selection
        let panics = self.panics
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.maxMessagesPerRead, value: 4)
            .childChannelInitializer { channel in
                let open = connections.wrappingIncrementThenLoad(ordering: .relaxed)
                channel.closeFuture.whenComplete { _ in connections.wrappingDecrement(ordering: .relaxed) }
                guard open <= connectionsMax else {
                    logger.debug("TCP connection refused: limit reached", metadata: ["dns.tcp.connections": "\(open)"])
                    return channel.close()
                }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(IdleStateHandler(readTimeout: idle))
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(DNSFrameDecoder()))
                    try channel.pipeline.syncOperations.addHandler(DNSQueryHandler(store: store, minimalResponses: minimalResponses,
                                                                                     selection: selection, panics: panics))
                }
            }
        var started: [Channel] = []
        var bound: [ListenAddress] = []
        for address in addresses {
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

/// Splits the byte stream into DNS messages by their 2-byte length prefix.
struct DNSFrameDecoder: ByteToMessageDecoder {
    typealias InboundOut = ByteBuffer

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt16.self) else { return .needMoreData }
        guard buffer.readableBytes >= 2 + Int(length) else { return .needMoreData }
        buffer.moveReaderIndex(forwardBy: 2)
        let frame = buffer.readSlice(length: Int(length))!
        context.fireChannelRead(Self.wrapInboundOut(frame))
        return .continue
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        // A partial message at EOF is discarded.
        .needMoreData
    }
}

/// What the TCP path needs per event-loop thread: an Answerer and a full-size response
/// buffer, so connections share them instead of each holding 64 KiB.
final class TCPAnswerContext {
    let answerer: Answerer
    let output = UnsafeMutableRawBufferPointer.allocate(byteCount: Answerer.responseBytesMax, alignment: 8)

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

/// Answers each framed query in order; writes are flushed once per read burst.
final class DNSQueryHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let store: ViewStore
    private let minimalResponses: Bool
    private let selection: SelectionOptions
    private let panics: ManagedAtomic<Int>
    private var pendingFlush = false

    init(store: ViewStore, minimalResponses: Bool, selection: SelectionOptions, panics: ManagedAtomic<Int>) {
        self.store = store
        self.minimalResponses = minimalResponses
        self.selection = selection
        self.panics = panics
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let query = unwrapInboundIn(data)
        let view = store.load()
        let answering = TCPAnswerContext.current(minimalResponses: minimalResponses, selection: selection)
        let panicsBefore = answering.answerer.panicAnswers
        let length = query.withUnsafeReadableBytes { bytes in
            answering.answerer.answer(query: bytes, into: answering.output, view: view, transport: .tcp)
        }
        if answering.answerer.panicAnswers != panicsBefore { panics.wrappingIncrement(ordering: .relaxed) }
        guard length > 0 else {
            // Not a query we can answer (too short, or a response): end the connection.
            context.close(promise: nil)
            return
        }
        var response = context.channel.allocator.buffer(capacity: 2 + length)
        response.writeInteger(UInt16(length))
        response.writeBytes(UnsafeRawBufferPointer(rebasing: answering.output[0..<length]))
        context.write(wrapOutboundOut(response), promise: nil)
        pendingFlush = true
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if pendingFlush {
            pendingFlush = false
            context.flush()
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}
