import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Registry

/// What one probe found.
public struct ProbeResult: Sendable, Equatable {
    public var status: HealthStatus
    public var output: String

    public init(_ status: HealthStatus, _ output: String) {
        self.status = status
        self.output = output
    }
}

/// Runs HTTP and TCP probes on the checker's own event loop group (never the Raft, HTTP API or
/// DNS threads). HTTP goes through one AsyncHTTPClient whose connection pool is bounded per
/// host; HTTPS is supported, with certificate verification off for checks that ask
/// (TLSSkipVerify).
final class Prober: Sendable {
    /// Redirects an HTTP check follows (Go's http.Client, which Consul uses, stops at 10).
    static let redirectsMax = 10
    static let userAgent = "Disco Health Check"

    private let client: HTTPClient
    private let group: EventLoopGroup
    private let outputBytesMax: Int
    private let insecureTLS: TLSConfiguration

    init(group: EventLoopGroup, connectionsPerHostMax: Int, outputBytesMax: Int) {
        self.group = group
        self.outputBytesMax = outputBytesMax
        var configuration = HTTPClient.Configuration(
            redirectConfiguration: .follow(max: Self.redirectsMax, allowCycles: false),
            connectionPool: .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: connectionsPerHostMax))
        configuration.httpVersion = .http1Only
        // A refused connection is a failed check now, not a retry until the timeout (Consul).
        configuration.connectionPool.retryConnectionEstablishment = false
        client = HTTPClient(eventLoopGroup: group, configuration: configuration)
        var insecure = TLSConfiguration.makeClientConfiguration()
        insecure.certificateVerification = .none
        insecureTLS = insecure
    }

    func shutdown() {
        try? client.syncShutdown()
    }

    /// Consul's HTTP check: 2xx passing, 429 warning, anything else, a refused connection or a
    /// timeout critical. The output keeps the first `outputBytesMax` bytes of the body.
    func http(_ definition: CheckDefinition, timeoutSeconds: Double) -> EventLoopFuture<ProbeResult> {
        let loop = group.next()
        let method = HTTPMethod(rawValue: (definition.method ?? "GET").uppercased())
        guard let url = definition.http else { return loop.makeSucceededFuture(ProbeResult(.critical, "no URL")) }
        let label = "HTTP \(method.rawValue) \(url)"
        var headers = HTTPHeaders()
        headers.add(name: "User-Agent", value: Self.userAgent)
        headers.add(name: "Accept", value: "text/plain, text/*, */*")
        for (name, values) in (definition.header ?? [:]).sorted(by: { $0.key < $1.key }) {
            headers.remove(name: name)
            for value in values { headers.add(name: name, value: value) }
        }
        let request: HTTPClient.Request
        do {
            request = try HTTPClient.Request(url: url, method: method, headers: headers,
                                             tlsConfiguration: definition.tlsSkipVerify == true ? insecureTLS : nil)
        } catch {
            return loop.makeSucceededFuture(ProbeResult(.critical, "\(label): \(error)"))
        }
        let delegate = BoundedBodyDelegate(bytesMax: outputBytesMax)
        let deadline = NIODeadline.now() + .nanoseconds(Int64(timeoutSeconds * 1e9))
        return client.execute(request: request, delegate: delegate, eventLoop: .delegate(on: loop), deadline: deadline)
            .futureResult
            .map { response in
                let code = Int(response.status.code)
                let status: HealthStatus = (200..<300).contains(code) ? .passing : code == 429 ? .warning : .critical
                return ProbeResult(status, "\(label): \(code) \(response.status.reasonPhrase) Output: \(response.body)")
            }
            .flatMapErrorThrowing { error in
                if let error = error as? HTTPClientError, error == .deadlineExceeded || error == .readTimeout
                    || error == .connectTimeout {
                    return ProbeResult(.critical, "\(label): timed out after \(timeoutSeconds)s")
                }
                return ProbeResult(.critical, "\(label): \(error)")
            }
    }

    /// Consul's TCP check: passing once a connection is established within the timeout.
    func tcp(_ address: String, timeoutSeconds: Double) -> EventLoopFuture<ProbeResult> {
        let loop = group.next()
        guard let (host, port) = Self.split(address) else {
            return loop.makeSucceededFuture(ProbeResult(.critical, "TCP connect \(address): expected host:port"))
        }
        return ClientBootstrap(group: loop)
            .connectTimeout(.nanoseconds(Int64(timeoutSeconds * 1e9)))
            .connect(host: host, port: port)
            .flatMap { channel in channel.close().map { ProbeResult(.passing, "TCP connect \(address): Success") } }
            .flatMapErrorThrowing { error in
                if case ChannelError.connectTimeout = error {
                    return ProbeResult(.critical, "TCP connect \(address): timed out after \(timeoutSeconds)s")
                }
                return ProbeResult(.critical, "TCP connect \(address): \(error)")
            }
    }

    /// "host:port" or "[v6]:port".
    static func split(_ address: String) -> (String, Int)? {
        guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]),
              (1...65535).contains(port) else { return nil }
        var host = String(address[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty else { return nil }
        return (host, port)
    }
}

/// Keeps the status and the first `bytesMax` bytes of the body; the rest is read and dropped
/// (so a large or endless body costs no memory; the deadline bounds its time).
final class BoundedBodyDelegate: HTTPClientResponseDelegate, @unchecked Sendable {
    // @unchecked: AsyncHTTPClient calls a delegate on one event loop, one call at a time.
    struct Response: Sendable {
        var status: HTTPResponseStatus
        var body: String
    }

    private let bytesMax: Int
    private var status: HTTPResponseStatus = .ok
    private var body: [UInt8] = []

    init(bytesMax: Int) {
        self.bytesMax = bytesMax
    }

    func didReceiveHead(task: HTTPClient.Task<Response>, _ head: HTTPResponseHead) -> EventLoopFuture<Void> {
        status = head.status
        return task.eventLoop.makeSucceededVoidFuture()
    }

    func didReceiveBodyPart(task: HTTPClient.Task<Response>, _ buffer: ByteBuffer) -> EventLoopFuture<Void> {
        let room = bytesMax - body.count
        if room > 0 { body += buffer.readableBytesView.prefix(room) }
        return task.eventLoop.makeSucceededVoidFuture()
    }

    func didFinishRequest(task: HTTPClient.Task<Response>) throws -> Response {
        Response(status: status, body: String(decoding: body, as: UTF8.self))
    }
}
