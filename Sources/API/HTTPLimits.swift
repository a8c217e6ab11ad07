import Cluster
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1

/// What HTTP clients may hold of a server (issue 13): a client that opens connections without end,
/// sends a request line a byte a minute, or streams a 64 MiB body at an endpoint that takes none,
/// must cost a bounded amount and never take the file descriptors Raft and SQLite need.
public struct HTTPLimits: Sendable, Equatable {
    /// Open API connections in total. Each costs a file descriptor (discod raises its soft
    /// limit to the hard one, typically 1,048,576 under systemd; 524,288 otherwise is common)
    /// and about 10 KiB; 4,096 leaves the rest to Raft, SQLite and DNS over TCP.
    public static let connectionsMaxDefault = 4096
    /// Open connections per client IP address. A Consul client library keeps a pool of a few
    /// connections per agent, and 41,000 agents are 41,000 addresses; a single address with more
    /// than 512 is a leak or an attack (the storm benchmark's 256 keep-alive connections from one
    /// loopback address fit).
    public static let connectionsPerClientMaxDefault = 512
    /// A keep-alive connection with no request in flight is closed after this (nginx: 75 s; Go's
    /// http.Server: none, which is how one client held 19,900 idle connections).
    public static let idleTimeoutSecondsDefault = 60
    /// A request's line, headers and body must arrive within this from its first byte, however
    /// slowly a byte trickles in (slowloris). 64 MiB of snapshot at 10 MB/s fits.
    public static let requestReadTimeoutSecondsDefault = 10
    /// A client refused for too many connections is told to come back after this, jittered.
    public static let refusedRetryAfterSeconds = 1

    /// Default `http.forward_connections_max`: keep-alive connections from this server to one
    /// target. A forwarded write holds its connection for about one commit (1-5 ms on a LAN), so
    /// 32 carry 6,000-30,000 writes/s, more than a leader commits; the leader sees 32 × (servers
    /// - 1) connections from its peers, far below its `http.connections_per_client_max` of 512.
    public static let forwardConnectionsMaxDefault = 32
    /// Default `http.forward_queued_requests_max`: requests waiting for one of those
    /// connections before more are answered 429. 1,024 is about 1 s of a storm's writes through
    /// one follower; a write waiting longer than that is better retried by its client later.
    public static let forwardQueuedRequestsMaxDefault = 1024

    public var connectionsMax = HTTPLimits.connectionsMaxDefault
    public var connectionsPerClientMax = HTTPLimits.connectionsPerClientMaxDefault
    public var idleTimeoutSeconds = HTTPLimits.idleTimeoutSecondsDefault
    public var requestReadTimeoutSeconds = HTTPLimits.requestReadTimeoutSecondsDefault
    public var forwardConnectionsMax = HTTPLimits.forwardConnectionsMaxDefault
    public var forwardQueuedRequestsMax = HTTPLimits.forwardQueuedRequestsMaxDefault

    public init() {}

    /// The largest request body accepted for `method` on `uri`, decided from the request head,
    /// before any of the body is read (an early 413): a snapshot restore (PUT /v1/snapshot) up
    /// to a snapshot's size, a method that carries no payload (GET, HEAD, DELETE, OPTIONS) a
    /// small one, every other write the KV value limit.
    public static func requestBodyBytesMax(method: HTTPMethod, uri: String) -> Int {
        switch method {
        case .GET, .HEAD, .DELETE, .OPTIONS:
            return bodylessRequestBytesMax
        default:
            if isSnapshot(uri) { return method == .PUT ? SnapshotContainer.bytesMax : bodylessRequestBytesMax }
            return APIServer.requestBodyBytesMax
        }
    }

    /// What a method without a payload may still carry (some clients send a small JSON body
    /// with DELETE): 4 KiB.
    public static let bodylessRequestBytesMax = 4096

    static func isSnapshot(_ uri: String) -> Bool { uri == "/v1/snapshot" || uri.hasPrefix("/v1/snapshot?") }
}

/// Counts open API connections, in total and per client address (thread-safe: connections are
/// accepted on every loop of the group).
final class ConnectionCounter: Sendable {
    private let state = NIOLockedValueBox((total: 0, perClient: [String: Int]()))
    let limits: HTTPLimits

    init(limits: HTTPLimits) { self.limits = limits }

    /// Takes a slot for `client`, or says which limit refused it.
    func acquire(_ client: String) -> String? {
        state.withLockedValue { state in
            guard state.total < limits.connectionsMax else { return "the server's \(limits.connectionsMax) connections" }
            let mine = state.perClient[client, default: 0]
            guard mine < limits.connectionsPerClientMax else {
                return "\(limits.connectionsPerClientMax) connections from \(client)"
            }
            state.total += 1
            state.perClient[client] = mine + 1
            return nil
        }
    }

    func release(_ client: String) {
        state.withLockedValue { state in
            state.total -= 1
            let left = state.perClient[client, default: 1] - 1
            state.perClient[client] = left > 0 ? left : nil
        }
    }

    var open: Int { state.withLockedValue { $0.total } }
}

/// One snapshot upload at a time: each is streamed to a file in `directory`, and a restore
/// reads its file whole, so two at once would hold twice the disk and memory for nothing (the
/// second would wait on the first in the log anyway). A second is refused from its head.
final class UploadSlot: Sendable {
    /// Told to a second upload: a restore of 64 MiB takes a few seconds.
    static let busyRetryAfterSeconds = 5

    let directory: String
    private let taken = NIOLockedValueBox(false)

    init(directory: String) { self.directory = directory }

    func acquire() -> Bool { taken.withLockedValue { taken in defer { taken = true }; return !taken } }
    func release() { taken.withLockedValue { $0 = false } }
}

/// Events the HTTP handler sends back toward the connection guard (outbound user events).
enum RequestProgress {
    /// A whole request was read: no read deadline while it is being served (a blocking query
    /// may wait minutes).
    case received
    /// Its response was written: the connection is idle again.
    case answered
}

/// First in every API connection's pipeline, on raw bytes: refuses a connection over the limits
/// with a 429 and `Retry-After` (a herd backs off instead of seeing resets), and closes one that
/// is idle too long or takes too long to send a request.
///
/// State machine (STYLE.md): idle (deadline: idle timeout) → first byte → reading (deadline:
/// request read timeout, not moved by later bytes) → `.received` → serving (no deadline) →
/// `.answered` → idle.
final class ConnectionGuard: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private enum State {
        case idle
        case reading
        case serving
        case refused
    }

    private let counter: ConnectionCounter
    private var state = State.idle
    private var client: String?
    /// When the connection is closed unless it moves on (nil while a request is served).
    private var deadline: NIODeadline?
    /// The one timer that enforces `deadline`, and when it fires: never after `deadline`, but
    /// possibly before, when it looks again. Re-arming to a later deadline (every request moves
    /// it) keeps the timer; scheduling and cancelling one per state change was four heap
    /// operations per request on the HTTP loop (issue 16).
    private var timer: (at: NIODeadline, task: Scheduled<Void>)?

    init(counter: ConnectionCounter) { self.counter = counter }

    func channelActive(context: ChannelHandlerContext) {
        let address = context.channel.remoteAddress?.ipAddress ?? ""
        if let refusal = counter.acquire(address) {
            refuse(context, because: refusal)
        } else {
            client = address
            arm(context, seconds: counter.limits.idleTimeoutSeconds)
        }
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.task.cancel()
        timer = nil
        deadline = nil
        if let client { counter.release(client) }
        client = nil
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch state {
        case .refused:
            return  // discarded: the connection is closing
        case .idle:
            state = .reading
            arm(context, seconds: counter.limits.requestReadTimeoutSeconds)
        case .reading, .serving:
            break
        }
        context.fireChannelRead(data)
    }

    func triggerUserOutboundEvent(context: ChannelHandlerContext, event: Any, promise: EventLoopPromise<Void>?) {
        guard let progress = event as? RequestProgress else {
            context.triggerUserOutboundEvent(event, promise: promise)
            return
        }
        switch (progress, state) {
        case (.received, .reading), (.received, .idle):
            state = .serving
            deadline = nil
        case (.answered, .serving), (.answered, .reading):
            state = .idle
            arm(context, seconds: counter.limits.idleTimeoutSeconds)
        case (.received, .serving), (.answered, .idle), (_, .refused):
            break
        }
        promise?.succeed(())
    }

    private func arm(_ context: ChannelHandlerContext, seconds: Int) {
        let at = NIODeadline.now() + .seconds(Int64(seconds))
        deadline = at
        if let timer, timer.at <= at { return }
        timer?.task.cancel()
        schedule(at, channel: context.channel)
    }

    /// Fires at `at`: closes the connection if its deadline has passed, else waits for it.
    private func schedule(_ at: NIODeadline, channel: Channel) {
        let handler = NIOLoopBound(self, eventLoop: channel.eventLoop)
        let task = channel.eventLoop.scheduleTask(deadline: at) {
            let connectionGuard = handler.value
            connectionGuard.timer = nil
            guard let deadline = connectionGuard.deadline else { return }
            if deadline <= .now() {
                channel.close(promise: nil)
            } else {
                connectionGuard.schedule(deadline, channel: channel)
            }
        }
        timer = (at, task)
    }

    /// Answers 429 without reading the request, half-closes, and drops the connection shortly
    /// after (closing at once with unread bytes would reset it, and lose the answer).
    private func refuse(_ context: ChannelHandlerContext, because reason: String) {
        state = .refused
        let retry = HTTPLimits.refusedRetryAfterSeconds + Int.random(in: 0...HTTPLimits.refusedRetryAfterSeconds)
        let body = "too many connections: \(reason); retry after \(retry) s\n"
        let text = "HTTP/1.1 429 Too Many Requests\r\nRetry-After: \(retry)\r\nContent-Type: text/plain\r\n"
            + "Content-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n" + body
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(channel.allocator.buffer(string: text))).whenComplete { _ in
            channel.close(mode: .output, promise: nil)
        }
        context.eventLoop.scheduleTask(in: .seconds(1)) { channel.close(promise: nil) }
    }
}
