import Auth
import Cluster
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

/// Forwards a request that only the leader can serve (a write, a default-consistency read) to
/// the leader's HTTP API and relays its answer, so a client may talk to any server, as with
/// Consul.
///
/// Requests go over a pool of keep-alive connections per target (`ForwardPool`): under a
/// registration storm every follower forwards hundreds of writes a second, and a connection
/// per write spent the CPU on connection set-up and filled the port range with TIME_WAIT.
/// Blocking queries (`?index=`, which may wait minutes) each get a connection of their own, as
/// before, so that parked reads never take the connections writes need.
final class Forwarder: Sendable {
    /// Marks a forwarded request: a server never forwards it again (no loops while leadership
    /// moves; the client gets a 503 and retries).
    static let forwardedHeader = "X-Disco-Forwarded"
    /// Connecting to the leader must not take longer than an election would.
    static let connectTimeoutMilliseconds: Int64 = 1000
    /// Added to a request's own wait (blocking queries) before the forward is given up. For a
    /// pooled request the time counts from when it is submitted (waiting for a connection
    /// included); for a blocking query, from when its connection is open.
    static let responseTimeoutSecondsMin: Double = 10
    /// Headers that belong to one connection, not to the request (RFC 9110 §7.6.1).
    static let hopByHop: Set<String> = ["connection", "keep-alive", "content-length", "transfer-encoding", "host", "upgrade"]
    /// A pooled connection unused for this long is closed. Below the leader's
    /// `http.idle_timeout_seconds` (60 s by default; the pool takes half of this server's
    /// setting, the cluster's being alike), so the leader rarely closes a connection that this
    /// side is about to use.
    static let idleTimeoutSecondsMax: Int64 = 30

    private let group: EventLoopGroup
    /// HTTPS between servers (`tls.*`): each connection presents this server's certificate and
    /// checks the other's against the cluster CA.
    private let tls: ClusterTLS.Current?

    /// Puts TLS first in a new connection's pipeline when the cluster speaks HTTPS.
    static func addTLS(_ tls: ClusterTLS.Current?, to channel: Channel) -> EventLoopFuture<Void> {
        guard let tls else { return channel.eventLoop.makeSucceededVoidFuture() }
        return channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: tls.tls.httpsClient, serverHostname: nil))
        }
    }
    private let connectionsMax: Int
    private let queuedRequestsMax: Int
    private let idleTimeoutSeconds: Int64
    private let pools = NIOLockedValueBox(Pools())
    let counters = ForwardCounters()

    private struct Pools {
        var byTarget: [PeerAddress: ForwardPool] = [:]
        /// The target forwards to the leader go to; its pool is retired when it changes.
        var leader: PeerAddress?
    }

    init(group: EventLoopGroup, limits: HTTPLimits = HTTPLimits(), tls: ClusterTLS.Current? = nil) {
        self.tls = tls
        self.group = group
        self.connectionsMax = limits.forwardConnectionsMax
        self.queuedRequestsMax = limits.forwardQueuedRequestsMax
        self.idleTimeoutSeconds = max(1, min(Self.idleTimeoutSecondsMax, Int64(limits.idleTimeoutSeconds / 2)))
    }

    /// Sends `request` to `target` and gives its answer (any status); fails if there is none
    /// (connection refused or lost, timed out: the caller answers 503), or answers 429 when
    /// `target`'s pool is full. `toLeader`: `target` is the leader now (a different leader
    /// than before retires the previous one's pool). `blocking`: a blocking query, sent on a
    /// connection of its own.
    func forward(_ request: APIRequest, to target: PeerAddress, toLeader: Bool, blocking: Bool = false,
                 extraHeaders: [(String, String)], timeoutSeconds: Double, on loop: EventLoop) -> EventLoopFuture<APIResponse> {
        let head = Self.head(request, to: target, extraHeaders: extraHeaders, keepAlive: !blocking)
        if blocking {
            return forwardAlone(head, body: request.body, to: target, timeoutSeconds: timeoutSeconds, on: loop)
        }
        let promise = loop.makePromise(of: APIResponse.self)
        let pool = self.pool(for: target, toLeader: toLeader)
        let retriable = request.method == .GET || request.method == .HEAD || request.method == .OPTIONS
        pool.submit(ForwardPool.Pending(head: head, body: request.body, retriable: retriable, timeoutSeconds: timeoutSeconds,
                                        promise: promise))
        return promise.futureResult
    }

    private func pool(for target: PeerAddress, toLeader: Bool) -> ForwardPool {
        let (pool, retired) = pools.withLockedValue { pools -> (ForwardPool, ForwardPool?) in
            var retired: ForwardPool?
            if toLeader && pools.leader != target {
                if let previous = pools.leader { retired = pools.byTarget.removeValue(forKey: previous) }
                pools.leader = target
            }
            if let pool = pools.byTarget[target] { return (pool, retired) }
            let pool = ForwardPool(target: target, loop: group.next(), connectionsMax: connectionsMax,
                                   queuedRequestsMax: queuedRequestsMax, idleTimeoutSeconds: idleTimeoutSeconds, counters: counters,
                                   tls: tls)
            pools.byTarget[target] = pool
            return (pool, retired)
        }
        // Waiting requests move to the new leader's pool; those in flight finish where they are.
        retired?.retire(handingOverTo: pool)
        return pool
    }

    static func head(_ request: APIRequest, to target: PeerAddress, extraHeaders: [(String, String)],
                     keepAlive: Bool) -> HTTPRequestHead {
        var headers = HTTPHeaders()
        for (name, value) in request.headers where !Self.hopByHop.contains(name.lowercased()) { headers.add(name: name, value: value) }
        for (name, value) in extraHeaders { headers.replaceOrAdd(name: name, value: value) }
        headers.replaceOrAdd(name: Self.forwardedHeader, value: "1")
        headers.replaceOrAdd(name: "Host", value: target.description)
        headers.replaceOrAdd(name: "Content-Length", value: "\(request.body.count)")
        if !keepAlive { headers.replaceOrAdd(name: "Connection", value: "close") }
        return HTTPRequestHead(version: .http1_1, method: request.method, uri: request.uri, headers: headers)
    }

    /// One connection for one request (a blocking query): closed after its answer.
    private func forwardAlone(_ head: HTTPRequestHead, body: [UInt8], to target: PeerAddress, timeoutSeconds: Double,
                              on loop: EventLoop) -> EventLoopFuture<APIResponse> {
        let promise = loop.makePromise(of: APIResponse.self)
        ClientBootstrap(group: loop)
            .connectTimeout(.milliseconds(Self.connectTimeoutMilliseconds))
            .channelInitializer { channel in
                Forwarder.addTLS(self.tls, to: channel).flatMap { channel.pipeline.addHTTPClientHandlers() }.flatMap {
                    channel.pipeline.addHandler(ResponseCollector { event in
                        switch event {
                        case .response(let response, _): promise.succeed(response)
                        case .lost: promise.fail(ChannelError.eof)
                        }
                    })
                }
            }
            .connect(host: target.host, port: target.port)
            .whenComplete { result in
                switch result {
                case .failure(let error):
                    promise.fail(error)
                case .success(let channel):
                    self.counters.opened(channel)
                    let timeout = loop.scheduleTask(in: .milliseconds(Int64(timeoutSeconds * 1000))) {
                        promise.fail(ForwardError.timedOut(seconds: timeoutSeconds))
                        channel.close(promise: nil)
                    }
                    promise.futureResult.whenComplete { _ in
                        timeout.cancel()
                        channel.close(promise: nil)
                    }
                    ForwardPool.write(head, body: body, on: channel)
                }
            }
        return promise.futureResult
    }

    /// Prometheus lines for /metrics.
    var metricLines: [String] {
        let c = counters.value
        return [
            Metric(name: "disco_http_forward_connections_opened_total",
                   help: "Connections this server opened to forward requests (to the leader, or a TTL check's owner).",
                   kind: .counter, value: "\(c.opened)"),
            Metric(name: "disco_http_forward_connections_open", help: "Forwarding connections open now.", kind: .gauge,
                   value: "\(c.opened - c.closed)"),
            Metric(name: "disco_http_forward_requests_total", help: "Requests forwarded over pooled connections.",
                   kind: .counter, value: "\(c.requests)"),
            Metric(name: "disco_http_forward_queued_requests", help: "Forwarded requests waiting for a pooled connection.",
                   kind: .gauge, value: "\(c.queued)"),
            Metric(name: "disco_http_forward_refused_total",
                   help: "Requests answered 429 because every forwarding connection was busy and the queue full.",
                   kind: .counter, value: "\(c.refused)"),
            Metric(name: "disco_http_forward_retries_total",
                   help: "Safe requests sent again after their pooled connection broke before any answer.",
                   kind: .counter, value: "\(c.retries)"),
        ].flatMap(\.lines)
    }
}

/// Why a forward produced no answer.
enum ForwardError: Error, CustomStringConvertible {
    case timedOut(seconds: Double)
    case connectFailed
    case connectionLost

    var description: String {
        switch self {
        case .timedOut(let seconds): "no answer within \(seconds) s"
        case .connectFailed: "cannot connect"
        case .connectionLost: "the connection broke before the answer"
        }
    }
}

/// Counters of the forwarder (thread-safe: pools run on different loops).
final class ForwardCounters: Sendable {
    struct Value {
        var opened = 0
        var closed = 0
        var requests = 0
        var queued = 0
        var refused = 0
        var retries = 0
    }

    private let box = NIOLockedValueBox(Value())
    var value: Value { box.withLockedValue { $0 } }
    func add(_ field: WritableKeyPath<Value, Int>, _ amount: Int = 1) { box.withLockedValue { $0[keyPath: field] += amount } }

    /// Counts `channel` opened now, and closed when it closes.
    func opened(_ channel: Channel) {
        add(\.opened)
        channel.closeFuture.whenComplete { _ in self.add(\.closed) }
    }
}

/// The keep-alive connections to one target, driven by `ForwardPoolState` on one event loop
/// (every method hops there; `@unchecked Sendable` for that reason: its state is only touched
/// on `loop`).
final class ForwardPool: @unchecked Sendable {
    typealias ConnectionID = ForwardPoolState.ConnectionID
    typealias RequestID = ForwardPoolState.RequestID

    struct Pending: Sendable {
        var head: HTTPRequestHead
        var body: [UInt8]
        var retriable: Bool
        var timeoutSeconds: Double
        /// Completed on whichever loop; the caller's future is on the caller's loop.
        var promise: EventLoopPromise<APIResponse>
        var timeout: Scheduled<Void>?
        /// Sent at least once (a second send is a retry).
        var sent = false

        init(head: HTTPRequestHead, body: [UInt8], retriable: Bool, timeoutSeconds: Double, promise: EventLoopPromise<APIResponse>) {
            self.head = head
            self.body = body
            self.retriable = retriable
            self.timeoutSeconds = timeoutSeconds
            self.promise = promise
        }
    }

    let target: PeerAddress
    let loop: EventLoop
    private let idleTimeoutSeconds: Int64
    private let counters: ForwardCounters
    private let tls: ClusterTLS.Current?
    private var state: ForwardPoolState
    private var channels: [ConnectionID: Channel] = [:]
    private var responses: [ConnectionID: APIResponse] = [:]
    private var requests: [RequestID: Pending] = [:]
    private var nextRequest: UInt64 = 0
    /// Retired with these requests still waiting: they go to this pool.
    private var successor: ForwardPool?

    init(target: PeerAddress, loop: EventLoop, connectionsMax: Int, queuedRequestsMax: Int, idleTimeoutSeconds: Int64,
         counters: ForwardCounters, tls: ClusterTLS.Current? = nil) {
        self.tls = tls
        self.target = target
        self.loop = loop
        self.idleTimeoutSeconds = idleTimeoutSeconds
        self.counters = counters
        state = ForwardPoolState(connectionsMax: connectionsMax, queuedRequestsMax: queuedRequestsMax)
    }

    func submit(_ pending: Pending) {
        loop.execute { self.submitOnLoop(pending) }
    }

    func retire(handingOverTo successor: ForwardPool) {
        loop.execute {
            self.successor = successor
            self.perform(self.state.retire())
        }
    }

    // MARK: - On `loop`

    private func submitOnLoop(_ pending: Pending) {
        if state.retired, let successor {
            successor.submit(pending)
            return
        }
        var pending = pending
        let id = RequestID(nextRequest)
        nextRequest += 1
        counters.add(\.requests)
        pending.timeout = loop.scheduleTask(in: .milliseconds(Int64(pending.timeoutSeconds * 1000))) {
            self.timedOut(id)
        }
        requests[id] = pending
        perform(state.submit(id, retriable: pending.retriable))
    }

    private func timedOut(_ id: RequestID) {
        guard let pending = requests.removeValue(forKey: id) else { return }
        perform(state.timedOut(id))
        publishQueued()
        pending.promise.fail(ForwardError.timedOut(seconds: pending.timeoutSeconds))
    }

    private func perform(_ actions: [ForwardPoolState.Action]) {
        for action in actions {
            switch action {
            case .connect(let id):
                connect(id)
            case .send(let id, let connection):
                guard var pending = requests[id], let channel = channels[connection] else {
                    preconditionFailure("forward pool: send \(id) on \(connection) without the request or the channel")
                }
                if pending.sent { counters.add(\.retries) }
                pending.sent = true
                requests[id] = pending
                responses[connection] = nil
                Self.write(pending.head, body: pending.body, on: channel)
            case .deliver(let id, let connection):
                let response = responses.removeValue(forKey: connection)
                guard let pending = requests.removeValue(forKey: id) else { continue }
                pending.timeout?.cancel()
                if let response { pending.promise.succeed(response) } else { pending.promise.fail(ForwardError.connectionLost) }
            case .close(let connection):
                responses[connection] = nil
                channels.removeValue(forKey: connection)?.close(promise: nil)
            case .fail(let id, let failure):
                guard let pending = requests.removeValue(forKey: id) else { continue }
                pending.timeout?.cancel()
                switch failure {
                case .queueFull:
                    counters.add(\.refused)
                    let seconds = 1 + Int.random(in: 0...1)
                    pending.promise.succeed(.text("\(state.queuedCount) forwarded requests are waiting for the leader (\(target)); "
                                                  + "retry after \(seconds) s",
                                                  status: .tooManyRequests, headers: [("Retry-After", "\(seconds)")]))
                case .connectFailed:
                    pending.promise.fail(ForwardError.connectFailed)
                case .connectionLost:
                    pending.promise.fail(ForwardError.connectionLost)
                }
            case .armIdleTimer(let connection, let epoch):
                loop.scheduleTask(in: .seconds(idleTimeoutSeconds)) {
                    self.perform(self.state.idleTimerFired(connection, epoch: epoch))
                }
            case .handOver(let id):
                guard var pending = requests.removeValue(forKey: id) else { continue }
                pending.timeout?.cancel()
                pending.timeout = nil
                if let successor { successor.submit(pending) } else { pending.promise.fail(ForwardError.connectionLost) }
            }
        }
        publishQueued()
    }

    private var queuedPublished = 0

    private func publishQueued() {
        let queued = state.queuedCount
        if queued != queuedPublished {
            counters.add(\.queued, queued - queuedPublished)
            queuedPublished = queued
        }
    }

    private func connect(_ id: ConnectionID) {
        ClientBootstrap(group: loop)
            .connectTimeout(.milliseconds(Forwarder.connectTimeoutMilliseconds))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                Forwarder.addTLS(self.tls, to: channel).flatMap { channel.pipeline.addHTTPClientHandlers() }.flatMap {
                    channel.pipeline.addHandler(ResponseCollector { event in
                        // On the channel's loop, which is `loop`.
                        switch event {
                        case .response(let response, let keepAlive):
                            // A connection already given up (timed out, retired) is closing.
                            guard self.channels[id] != nil else { return }
                            self.responses[id] = response
                            self.perform(self.state.responded(on: id, keepAlive: keepAlive))
                        case .lost(let responseStarted):
                            self.responses[id] = nil
                            self.channels[id] = nil
                            self.perform(self.state.connectionLost(id, responseStarted: responseStarted))
                        }
                    })
                }
            }
            .connect(host: target.host, port: target.port)
            .whenComplete { result in
                switch result {
                case .failure:
                    self.perform(self.state.connectFailed(id))
                case .success(let channel):
                    self.counters.opened(channel)
                    self.channels[id] = channel
                    let actions = self.state.connected(id)
                    if actions.isEmpty { channel.close(promise: nil) }  // given up while it was opening
                    self.perform(actions)
                }
            }
    }

    static func write(_ head: HTTPRequestHead, body: [UInt8], on channel: Channel) {
        channel.write(HTTPClientRequestPart.head(head), promise: nil)
        if !body.isEmpty {
            var buffer = channel.allocator.buffer(capacity: body.count)
            buffer.writeBytes(body)
            channel.write(HTTPClientRequestPart.body(.byteBuffer(buffer)), promise: nil)
        }
        channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
    }
}

/// Collects each HTTP response on a connection into an `APIResponse` and reports it, or the
/// connection's end (once).
private final class ResponseCollector: ChannelInboundHandler, @unchecked Sendable {
    // @unchecked: used only on its channel's event loop.
    typealias InboundIn = HTTPClientResponsePart

    enum Event {
        /// A whole response; `keepAlive`: the connection may carry another request.
        case response(APIResponse, keepAlive: Bool)
        /// The connection ended; `responseStarted`: part of a response had arrived.
        case lost(responseStarted: Bool)
    }

    private let report: (Event) -> Void
    private var response: APIResponse?
    private var keepAlive = false
    private var ended = false

    init(report: @escaping (Event) -> Void) {
        self.report = report
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            keepAlive = head.isKeepAlive
            response = APIResponse(status: head.status,
                                   headers: head.headers.filter { !Forwarder.hopByHop.contains($0.name.lowercased()) })
        case .body(var buffer):
            response?.body += buffer.readBytes(length: buffer.readableBytes) ?? []
        case .end:
            if let response {
                self.response = nil
                report(.response(response, keepAlive: keepAlive))
            }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !ended {
            ended = true
            report(.lost(responseStarted: response != nil))
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}
