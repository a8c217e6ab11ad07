import Logging
import NIOCore
import NIOPosix
import NIOSSL
import Raft

/// A peer's Raft address.
public struct PeerAddress: Hashable, Sendable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

/// Raft messages between servers over TCP (SwiftNIO), framed by `PeerCodec`.
///
/// Each server listens for its peers and keeps one outbound connection to each peer, over which
/// its messages to that peer are pipelined (writes never wait for answers; Raft's own
/// acknowledgements drive flow control). A connection that drops is dialled again on demand with
/// exponential backoff; messages queued meanwhile are bounded and the oldest dropped first, and
/// once the backoff has reached its maximum (the peer has been unreachable for over a second) a
/// failed attempt drops the queue: by the time such a peer is back they are stale (appends it
/// would reject, a snapshot of megabytes held for nothing) — Raft
/// tolerates loss and resends what matters. A malformed or oversized inbound frame closes that
/// connection and is logged.
public final class PeerTransport: @unchecked Sendable {
    // @unchecked: `peers`, `outbound` and `listener` are touched only on `loop`.

    /// Messages waiting for a connection to one peer; beyond it the oldest are dropped.
    public static let queueMessagesMax = 1024
    /// Reconnect backoff: starts here, doubles per failure, capped below.
    public static let reconnectBackoffMillisecondsMin: Int64 = 20
    public static let reconnectBackoffMillisecondsMax: Int64 = 1000
    public static let connectTimeoutMilliseconds: Int64 = 500

    public let id: NodeID
    private let listen: PeerAddress
    private let group: EventLoopGroup
    private let loop: EventLoop
    private let logger: Logger
    private let deliver: @Sendable (Message) -> Void
    private var peers: [NodeID: PeerAddress]
    private var outbound: [NodeID: Outbound] = [:]
    private var listener: Channel?
    private var stopped = false
    /// Every frame carries it; frames from another cluster close their connection.
    public let cluster: UInt64
    /// Mutual TLS (`tls.*`): the contexts in force, read for each new connection (a SIGHUP
    /// reload swaps them); nil: plaintext.
    private let tls: (@Sendable () -> PeerTLS)?

    /// The TLS contexts of the Raft transport: both require the peer's certificate.
    public struct PeerTLS: Sendable {
        public var server: NIOSSLContext
        public var client: NIOSSLContext
        public init(server: NIOSSLContext, client: NIOSSLContext) {
            self.server = server
            self.client = client
        }
    }

    /// - Parameters:
    ///   - cluster: the cluster's identity (`PeerCodec.clusterID(token:)`).
    ///   - deliver: called (on a NIO thread) with every well-formed inbound message.
    public init(id: NodeID, listen: PeerAddress, peers: [NodeID: PeerAddress], group: EventLoopGroup, logger: Logger,
                cluster: UInt64 = 0, tls: (@Sendable () -> PeerTLS)? = nil, deliver: @escaping @Sendable (Message) -> Void) {
        self.tls = tls
        self.id = id
        self.cluster = cluster
        self.listen = listen
        self.peers = peers
        self.group = group
        self.loop = group.next()
        self.logger = logger
        self.deliver = deliver
    }

    /// Binds the listener; returns the port (useful with port 0).
    public func start() throws -> Int {
        let deliver = self.deliver
        let logger = self.logger
        let cluster = self.cluster
        let tls = self.tls
        let channel = try ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tls { try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls().server)) }
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(PeerFrameDecoder(cluster: cluster)))
                    try channel.pipeline.syncOperations.addHandler(PeerInboundHandler(deliver: deliver, logger: logger))
                }
            }
            .bind(host: listen.host, port: listen.port).wait()
        let port = channel.localAddress?.port ?? listen.port
        try loop.submit { self.listener = channel }.wait()
        return port
    }

    public func stop() {
        try? loop.submit {
            self.stopped = true
            for (_, connection) in self.outbound { connection.channel?.close(promise: nil) }
            self.outbound = [:]
            self.listener?.close(promise: nil)
            self.listener = nil
        }.wait()
    }

    /// Changes where peers are (membership changes); connections to moved or removed peers close.
    public func setPeers(_ peers: [NodeID: PeerAddress]) {
        loop.execute {
            for (id, connection) in self.outbound where peers[id] != self.peers[id] {
                connection.channel?.close(promise: nil)
                self.outbound[id] = nil
            }
            self.peers = peers
        }
    }

    /// Sends messages to their `to` servers. Thread-safe; never blocks. Called on the
    /// transport's own loop (discod's Raft thread, which the driver shares), the messages are
    /// written at once: a leader's appends leave before its fsync, and a follower's answer
    /// before it applies, instead of after the Ready that sent them (issue 16).
    public func send(_ messages: [Message]) {
        guard !messages.isEmpty else { return }
        if loop.inEventLoop {
            write(messages)
        } else {
            loop.execute { self.write(messages) }
        }
    }

    /// One flush per connection per batch: a Ready's appends to a follower go out in one write
    /// syscall, not one each (the leader's sends were a sixth of its CPU).
    private func write(_ messages: [Message]) {
        var touched: [ObjectIdentifier: Channel] = [:]
        for message in messages where message.to != id {
            if let channel = enqueue(message) { touched[ObjectIdentifier(channel)] = channel }
        }
        for channel in touched.values { channel.flush() }
    }

    // MARK: - Outbound, on `loop`

    // @unchecked: touched only on `loop` (enqueue, and the connect callbacks that run there).
    private final class Outbound: @unchecked Sendable {
        var channel: Channel?
        var connecting = false
        var queue: [[UInt8]] = []
        var backoffMilliseconds = PeerTransport.reconnectBackoffMillisecondsMin
        var retryAt: NIODeadline = .uptimeNanoseconds(0)
        var dropped = 0
    }

    /// Writes (without flushing) to a live connection and returns it, or queues and connects.
    private func enqueue(_ message: Message) -> Channel? {
        guard !stopped, let address = peers[message.to] else { return nil }
        let connection = outbound[message.to] ?? Outbound()
        outbound[message.to] = connection
        let frame = PeerCodec.encode(message, cluster: cluster)
        if let channel = connection.channel, channel.isActive {
            var buffer = channel.allocator.buffer(capacity: frame.count)
            buffer.writeBytes(frame)
            channel.write(buffer, promise: nil)
            return channel
        }
        if connection.queue.count >= Self.queueMessagesMax {
            connection.queue.removeFirst()
            connection.dropped += 1
        }
        connection.queue.append(frame)
        connect(message.to, address, connection)
        return nil
    }

    private func connect(_ peer: NodeID, _ address: PeerAddress, _ connection: Outbound) {
        guard !connection.connecting, NIODeadline.now() >= connection.retryAt else { return }
        connection.connecting = true
        let tls = self.tls
        ClientBootstrap(group: loop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tls {
                        try channel.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: tls().client, serverHostname: nil))
                    }
                }
            }
            .connectTimeout(.milliseconds(Self.connectTimeoutMilliseconds))
            .connect(host: address.host, port: address.port)
            .whenComplete { result in
                connection.connecting = false
                switch result {
                case .success(let channel):
                    guard !self.stopped, self.outbound[peer] === connection else {
                        channel.close(promise: nil)
                        return
                    }
                    connection.channel = channel
                    connection.backoffMilliseconds = Self.reconnectBackoffMillisecondsMin
                    if connection.dropped > 0 {
                        self.logger.debug("dropped messages while disconnected",
                                          metadata: ["raft.peer": "\(peer)", "raft.dropped": "\(connection.dropped)"])
                        connection.dropped = 0
                    }
                    for frame in connection.queue {
                        var buffer = channel.allocator.buffer(capacity: frame.count)
                        buffer.writeBytes(frame)
                        channel.write(buffer, promise: nil)
                    }
                    connection.queue = []
                    channel.flush()
                    channel.closeFuture.whenComplete { _ in
                        if connection.channel === channel { connection.channel = nil }
                    }
                case .failure(let error):
                    if connection.backoffMilliseconds >= Self.reconnectBackoffMillisecondsMax {
                        connection.dropped += connection.queue.count
                        connection.queue = []
                    }
                    connection.retryAt = .now() + .milliseconds(connection.backoffMilliseconds)
                    self.logger.debug("cannot reach peer", metadata: [
                        "raft.peer": "\(peer)", "raft.peer.address": "\(address)", "error": "\(error)",
                        "raft.backoff_ms": "\(connection.backoffMilliseconds)",
                    ])
                    let retryIn = connection.backoffMilliseconds
                    connection.backoffMilliseconds = min(connection.backoffMilliseconds * 2, Self.reconnectBackoffMillisecondsMax)
                    // Try again after the backoff if messages are still waiting.
                    self.loop.scheduleTask(in: .milliseconds(retryIn)) {
                        if !connection.queue.isEmpty, let address = self.peers[peer] {
                            self.connect(peer, address, connection)
                        }
                    }
                }
            }
    }
}

/// Frames from the byte stream: `PeerCodec` length, then the body. An oversized length closes
/// the connection before the body is buffered.
struct PeerFrameDecoder: ByteToMessageDecoder {
    typealias InboundOut = Message
    let cluster: UInt64

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let header = buffer.getBytes(at: buffer.readerIndex, length: PeerCodec.lengthFieldBytes) else { return .needMoreData }
        guard let length = try PeerCodec.bodyLength(header: header) else { return .needMoreData }
        guard buffer.readableBytes >= PeerCodec.lengthFieldBytes + length else { return .needMoreData }
        buffer.moveReaderIndex(forwardBy: PeerCodec.lengthFieldBytes)
        let body = buffer.readBytes(length: length)!
        context.fireChannelRead(wrapInboundOut(try PeerCodec.decode(body: body, cluster: cluster)))
        return .continue
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        .needMoreData
    }
}

final class PeerInboundHandler: ChannelInboundHandler {
    typealias InboundIn = Message

    private let deliver: @Sendable (Message) -> Void
    private let logger: Logger

    init(deliver: @escaping @Sendable (Message) -> Void, logger: Logger) {
        self.deliver = deliver
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        deliver(unwrapInboundIn(data))
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        let what = error is NIOSSLError || error is BoringSSLError
            ? "refused a peer connection: its TLS handshake failed (a certificate from the cluster CA is required)"
            : "closing a peer connection"
        logger.warning("\(what): \(error)",
                       metadata: ["raft.peer.remote": "\(context.remoteAddress.map { "\($0)" } ?? "?")"])
        context.close(promise: nil)
    }
}
