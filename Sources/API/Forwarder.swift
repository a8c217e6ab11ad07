import Cluster
import NIOCore
import NIOHTTP1
import NIOPosix

/// Forwards a request that only the leader can serve (a write, a default-consistency read) to
/// the leader's HTTP API and relays its answer, so a client may talk to any server, as with
/// Consul. One connection per forwarded request: forwarding is the uncommon path (clients that
/// care go to the leader), and it keeps a slow blocking query from holding up others.
final class Forwarder: Sendable {
    /// Marks a forwarded request: a server never forwards it again (no loops while leadership
    /// moves; the client gets a 503 and retries).
    static let forwardedHeader = "X-Disco-Forwarded"
    /// Connecting to the leader must not take longer than an election would.
    static let connectTimeoutMilliseconds: Int64 = 1000
    /// Added to a request's own wait (blocking queries) before the forward is given up.
    static let responseTimeoutSecondsMin: Double = 10
    /// Headers that belong to one connection, not to the request (RFC 9110 §7.6.1).
    static let hopByHop: Set<String> = ["connection", "keep-alive", "content-length", "transfer-encoding", "host", "upgrade"]

    private let group: EventLoopGroup

    init(group: EventLoopGroup) {
        self.group = group
    }

    func forward(_ request: APIRequest, to leader: PeerAddress, extraHeaders: [(String, String)], timeoutSeconds: Double,
                 on loop: EventLoop) -> EventLoopFuture<APIResponse> {
        let promise = loop.makePromise(of: APIResponse.self)
        var headers = HTTPHeaders()
        for (name, value) in request.headers where !Self.hopByHop.contains(name.lowercased()) { headers.add(name: name, value: value) }
        for (name, value) in extraHeaders { headers.replaceOrAdd(name: name, value: value) }
        headers.replaceOrAdd(name: Self.forwardedHeader, value: "1")
        headers.replaceOrAdd(name: "Host", value: leader.description)
        headers.replaceOrAdd(name: "Content-Length", value: "\(request.body.count)")
        headers.replaceOrAdd(name: "Connection", value: "close")
        let head = HTTPRequestHead(version: .http1_1, method: request.method, uri: request.uri, headers: headers)
        let body = request.body
        ClientBootstrap(group: loop)
            .connectTimeout(.milliseconds(Self.connectTimeoutMilliseconds))
            .channelInitializer { channel in
                channel.pipeline.addHTTPClientHandlers().flatMap {
                    channel.pipeline.addHandler(ResponseCollector(promise: promise))
                }
            }
            .connect(host: leader.host, port: leader.port)
            .whenComplete { result in
                switch result {
                case .failure(let error):
                    promise.fail(error)
                case .success(let channel):
                    let timeout = loop.scheduleTask(in: .milliseconds(Int64(timeoutSeconds * 1000))) {
                        promise.fail(ChannelError.connectTimeout(.seconds(Int64(timeoutSeconds))))
                        channel.close(promise: nil)
                    }
                    promise.futureResult.whenComplete { _ in
                        timeout.cancel()
                        channel.close(promise: nil)
                    }
                    channel.write(HTTPClientRequestPart.head(head), promise: nil)
                    var buffer = channel.allocator.buffer(capacity: body.count)
                    buffer.writeBytes(body)
                    channel.write(HTTPClientRequestPart.body(.byteBuffer(buffer)), promise: nil)
                    channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
                }
            }
        return promise.futureResult
    }
}

/// Collects one HTTP response into an `APIResponse`.
private final class ResponseCollector: ChannelInboundHandler, @unchecked Sendable {
    // @unchecked: used only on its channel's event loop.
    typealias InboundIn = HTTPClientResponsePart

    private let promise: EventLoopPromise<APIResponse>
    private var response: APIResponse?

    init(promise: EventLoopPromise<APIResponse>) {
        self.promise = promise
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            response = APIResponse(status: head.status,
                                   headers: head.headers.filter { !Forwarder.hopByHop.contains($0.name.lowercased()) })
        case .body(var buffer):
            response?.body += buffer.readBytes(length: buffer.readableBytes) ?? []
        case .end:
            if let response { promise.succeed(response) }
            context.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        promise.fail(ChannelError.eof)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        promise.fail(error)
        context.close(promise: nil)
    }
}
