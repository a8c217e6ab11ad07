import Cluster
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Raft
import Store

/// The HTTP API (SwiftNIO HTTP/1.1): the first, Consul-compatible endpoints of the KV store and
/// /v1/status. Writes are proposed through Raft and answered once applied; on a follower they
/// (and default-consistency reads) are refused with 503 and the leader's address in
/// `X-Disco-Leader`.
public final class APIServer: @unchecked Sendable {
    // @unchecked: `channel` is written only by start()/stop() on the owner's thread.

    /// Request bodies above this get 413 (Consul's KV value limit is 512 KiB).
    public static let requestBodyBytesMax = KVCommand.valueBytesMax + 1024

    private let listen: PeerAddress
    private let group: EventLoopGroup
    private let service: KVService
    private var channel: Channel?

    public init(listen: PeerAddress, group: EventLoopGroup, kv: KVStore, driver: RaftDriver, directory: ClusterDirectory,
                logger: Logger) {
        self.listen = listen
        self.group = group
        self.service = KVService(kv: kv, driver: driver, directory: directory, logger: logger)
    }

    public func start() throws -> Int {
        let service = self.service
        let channel = try ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.pipeline.configureHTTPServerPipeline().flatMap {
                    channel.pipeline.addHandler(HTTPHandler(service: service))
                }
            }
            .bind(host: listen.host, port: listen.port).wait()
        self.channel = channel
        return channel.localAddress?.port ?? listen.port
    }

    public func stop() {
        try? channel?.close().wait()
        channel = nil
    }
}

/// A parsed request and the response the service builds for it.
struct APIRequest {
    var method: HTTPMethod
    var path: String
    var query: [String: String]
    var body: [UInt8]
}

struct APIResponse {
    var status: HTTPResponseStatus
    var headers: [(String, String)] = []
    var body: [UInt8] = []

    static func json(_ value: Any, status: HTTPResponseStatus = .ok, headers: [(String, String)] = []) -> APIResponse {
        let data = (try? JSONSerialization.data(withJSONObject: value, options: [.fragmentsAllowed, .sortedKeys])) ?? Data()
        return APIResponse(status: status, headers: [("Content-Type", "application/json")] + headers, body: Array(data))
    }

    static func text(_ text: String, status: HTTPResponseStatus, headers: [(String, String)] = []) -> APIResponse {
        APIResponse(status: status, headers: [("Content-Type", "text/plain; charset=utf-8")] + headers,
                    body: Array((text + "\n").utf8))
    }
}

final class KVService: Sendable {
    let kv: KVStore
    let driver: RaftDriver
    let directory: ClusterDirectory
    let logger: Logger

    init(kv: KVStore, driver: RaftDriver, directory: ClusterDirectory, logger: Logger) {
        self.kv = kv
        self.driver = driver
        self.directory = directory
        self.logger = logger
    }

    func handle(_ request: APIRequest, on loop: EventLoop) -> EventLoopFuture<APIResponse> {
        driver.status.hop(to: loop).flatMap { status in
            self.route(request, status: status, on: loop)
        }
    }

    func leaderHeaders(_ status: RaftStatus) -> [(String, String)] {
        var headers = [("X-Consul-KnownLeader", status.leader == nil ? "false" : "true"), ("X-Consul-LastContact", "0")]
        if let leader = status.leader, let http = directory.http[leader] { headers.append(("X-Disco-Leader", http.description)) }
        return headers
    }

    func notLeader(_ status: RaftStatus) -> APIResponse {
        let where_ = status.leader.flatMap { directory.http[$0] }.map { "leader is \($0)" } ?? "no leader is known"
        return .text("this server is not the leader; \(where_)", status: .serviceUnavailable, headers: leaderHeaders(status))
    }

    private func route(_ request: APIRequest, status: RaftStatus, on loop: EventLoop) -> EventLoopFuture<APIResponse> {
        let parts = request.path.split(separator: "/", maxSplits: 2, omittingEmptySubsequences: true)
        if let response = clusterRoute(request, status: status, on: loop) { return response }
        if request.path == "/v1/status/leader" {
            let leader = status.leader.flatMap { directory.raft[$0] }.map(\.description) ?? ""
            return loop.makeSucceededFuture(.json(leader))
        }
        if request.path == "/v1/status/peers" {
            return loop.makeSucceededFuture(.json(directory.raft.sorted { $0.key < $1.key }.map(\.value.description)))
        }
        guard parts.count >= 2, parts[0] == "v1", parts[1].hasPrefix("kv") else {
            return loop.makeSucceededFuture(.text("no such endpoint: \(request.path)", status: .notFound))
        }
        let key = String(request.path.dropFirst("/v1/kv/".count))
        switch request.method {
        case .GET where request.query["consistent"] != nil:
            // ReadIndex: linearizable on any server (a follower asks the leader).
            return driver.linearizableRead().hop(to: loop).map { _ in
                self.read(key, request, status, confirmed: true)
            }.flatMapErrorThrowing { error in
                .text("consistent read failed: \(error)", status: .serviceUnavailable, headers: self.leaderHeaders(status))
            }
        case .GET: return loop.makeSucceededFuture(read(key, request, status))
        case .PUT: return write(key, request, status, on: loop)
        case .DELETE: return write(key, request, status, on: loop)
        default: return loop.makeSucceededFuture(.text("method not allowed", status: .methodNotAllowed))
        }
    }

    /// `?stale`: any server, from what it has applied. Default: the leader, from what it has
    /// applied (Consul's default mode: a deposed leader may briefly serve a stale value).
    /// `?consistent`: after a ReadIndex round (`confirmed`), any server, linearizable.
    private func read(_ key: String, _ request: APIRequest, _ status: RaftStatus, confirmed: Bool = false) -> APIResponse {
        if !confirmed && request.query["stale"] == nil && status.role != .leader { return notLeader(status) }
        let recurse = request.query["recurse"] != nil || request.query["keys"] != nil
        let entries: [KVEntry]
        do throws(StoreError) {
            entries = try kv.get(key, recurse: recurse)
        } catch {
            logger.error("KV read failed: \(error)")
            return .text("storage error", status: .internalServerError)
        }
        // Consul: the highest ModifyIndex of what was read, else the store's; never 0.
        let index = entries.map(\.modifyIndex).max() ?? max(kv.lastModifyIndex, 1)
        let headers = [("X-Consul-Index", "\(index)")] + leaderHeaders(status)
        guard !entries.isEmpty else { return APIResponse(status: .notFound, headers: headers) }
        if request.query["keys"] != nil { return .json(entries.map(\.key), headers: headers) }
        if request.query["raw"] != nil {
            return APIResponse(status: .ok, headers: [("Content-Type", "application/octet-stream")] + headers, body: entries[0].value)
        }
        let json: [[String: Any]] = entries.map { entry in
            ["Key": entry.key, "Flags": entry.flags, "LockIndex": 0, "CreateIndex": entry.createIndex,
             "ModifyIndex": entry.modifyIndex,
             "Value": entry.value.isEmpty ? NSNull() : Data(entry.value).base64EncodedString() as Any]
        }
        return .json(json, headers: headers)
    }

    private func write(_ key: String, _ request: APIRequest, _ status: RaftStatus,
                       on loop: EventLoop) -> EventLoopFuture<APIResponse> {
        guard !key.isEmpty || request.method == .DELETE, key.utf8.count <= KVCommand.keyBytesMax else {
            return loop.makeSucceededFuture(.text("key: expected 1 to \(KVCommand.keyBytesMax) bytes", status: .badRequest))
        }
        func number(_ name: String) -> UInt64?? {
            guard let text = request.query[name] else { return .some(nil) }
            return UInt64(text).map { .some($0) } ?? nil
        }
        guard let cas = number("cas"), let flags = number("flags") else {
            return loop.makeSucceededFuture(.text("cas and flags: expected unsigned integers", status: .badRequest))
        }
        let command: KVCommand
        if request.method == .PUT {
            guard request.body.count <= KVCommand.valueBytesMax else {
                return loop.makeSucceededFuture(.text("value larger than \(KVCommand.valueBytesMax) bytes", status: .payloadTooLarge))
            }
            command = cas.map { .compareAndSet(key: key, value: request.body, flags: flags ?? 0, modifyIndex: $0) }
                ?? .put(key: key, value: request.body, flags: flags ?? 0)
        } else {
            command = request.query["recurse"] != nil ? .deleteTree(prefix: key) : .delete(key: key)
        }
        guard status.role == .leader else { return loop.makeSucceededFuture(notLeader(status)) }
        return driver.propose(command.encoded).hop(to: loop).map { index in
            let applied = self.kv.outcome(at: index.rawValue) ?? false
            return .json(applied, headers: [("X-Consul-Index", "\(index.rawValue)")])
        }.flatMapErrorThrowing { error in
            if case ProposeError.refused(.notLeader) = error { return self.notLeader(status) }
            return .text("write failed: \(error)", status: .serviceUnavailable)
        }
    }
}

final class HTTPHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let service: KVService
    private var head: HTTPRequestHead?
    private var body: [UInt8] = []
    private var tooLarge = false
    private var bodyBytesMax = APIServer.requestBodyBytesMax

    init(service: KVService) {
        self.service = service
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
            body = []
            tooLarge = false
            bodyBytesMax = APIServer.requestBodyBytesMax(uri: head.uri)
        case .body(var buffer):
            if body.count + buffer.readableBytes > bodyBytesMax {
                tooLarge = true
            } else {
                body += buffer.readBytes(length: buffer.readableBytes) ?? []
            }
        case .end:
            guard let head else { return }
            self.head = nil
            let keepAlive = head.isKeepAlive
            if tooLarge {
                respond(context, .text("request body too large", status: .payloadTooLarge), head: head, keepAlive: false)
                return
            }
            let (path, query) = Self.split(head.uri)
            let request = APIRequest(method: head.method, path: path, query: query, body: body)
            let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            service.handle(request, on: context.eventLoop).whenComplete { result in
                let (handler, context) = loopBound.value
                let response = (try? result.get()) ?? .text("internal error", status: .internalServerError)
                handler.respond(context, response, head: head, keepAlive: keepAlive)
            }
        }
    }

    private func respond(_ context: ChannelHandlerContext, _ response: APIResponse, head: HTTPRequestHead, keepAlive: Bool) {
        var headers = HTTPHeaders(response.headers)
        headers.add(name: "Content-Length", value: "\(response.body.count)")
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: response.status, headers: headers))),
                      promise: nil)
        var buffer = context.channel.allocator.buffer(capacity: response.body.count)
        buffer.writeBytes(response.body)
        context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if !keepAlive { done.whenComplete { _ in context.close(promise: nil) } }
    }

    /// `/v1/kv/a%20b?recurse&cas=3` → ("/v1/kv/a b", ["recurse": "", "cas": "3"]).
    static func split(_ uri: String) -> (String, [String: String]) {
        let pieces = uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
        let path = String(pieces[0]).removingPercentEncoding ?? String(pieces[0])
        var query: [String: String] = [:]
        if pieces.count > 1 {
            for pair in pieces[1].split(separator: "&") {
                let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                let name = String(kv[0]).removingPercentEncoding ?? String(kv[0])
                query[name] = kv.count > 1 ? (String(kv[1]).removingPercentEncoding ?? String(kv[1])) : ""
            }
        }
        return (path, query)
    }
}
