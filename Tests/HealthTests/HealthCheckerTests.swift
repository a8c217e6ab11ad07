import Foundation
import Health
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Registry
import Testing

#if canImport(Glibc)
import Glibc
#endif

final class TemporaryDirectory {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("disco-health-\(UUID().uuidString)")
    init() throws { try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true) }
    func path(_ name: String) -> String { url.appendingPathComponent(name).path }
    deinit { try? FileManager.default.removeItem(at: url) }
}

/// A catalog whose "log" is this object: every proposal is applied at the next index and kept,
/// so a test sees exactly which entries the checker wrote.
final class FakeLog: @unchecked Sendable {
    // @unchecked: `entries` is guarded by `lock`.
    let catalog: Catalog
    let loop: EventLoop
    private let lock = NSLock()
    private var entries: [CatalogCommand] = []

    init(catalog: Catalog, loop: EventLoop) {
        self.catalog = catalog
        self.loop = loop
    }

    var proposed: [CatalogCommand] { lock.withLock { entries } }

    func append(_ command: CatalogCommand) throws {
        try lock.withLock {
            entries.append(command)
            try catalog.apply(index: catalog.appliedIndex + 1, data: command.encoded)
        }
    }

    func propose(_ command: CatalogCommand) -> EventLoopFuture<UInt64> {
        loop.submit {
            try self.append(command)
            return self.catalog.appliedIndex
        }
    }
}

func waitUntil(seconds: Double = 10, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if condition() { return true }
        usleep(10_000)
    }
    return condition()
}

@Suite("health checker", .serialized)
struct HealthCheckerTests {
    let node = NodeRecord(name: "node1", address: "127.0.0.1")

    func instance(_ i: Int, check definition: CheckDefinition, status: HealthStatus = .passing) -> CatalogCommand {
        let id = "web-\(i)"
        return .register(node: node, service: ServiceInstance(id: id, node: node.name, name: "web", port: 80 + i),
                         checks: [CheckRegistration(CheckRecord(id: "service:\(id)", node: node.name, name: id, serviceID: id,
                                                                status: status, definition: definition), statusGiven: true)],
                         replaceChecks: false)
    }

    func statuses(_ catalog: Catalog) -> [HealthStatus] {
        catalog.state.checks.values.sorted { $0.value.id < $1.value.id }.map(\.value.status)
    }

    /// Ten TTL checks expiring together cost one entry; renewals that change nothing cost none;
    /// a renewal that changes the status is answered once its entry applied.
    @Test func transitionsAreBatchedAndRenewalsAreFree() throws {
        let directory = try TemporaryDirectory()
        let catalog = try Catalog(path: directory.path("registry.db"))
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let log = FakeLog(catalog: catalog, loop: group.next())
        try log.append(.checkRunners([7]))
        for i in 0..<10 { try log.append(instance(i, check: CheckDefinition(ttlSeconds: 1))) }
        let written = log.proposed.count
        let checker = HealthChecker(selfID: 7, settings: HealthSettings(), catalog: catalog, logger: Logger(label: "test"),
                                    propose: log.propose)
        checker.start()
        defer { checker.stop() }
        #expect(waitUntil { checker.counters.checksOwned == 10 })

        // Renewing with the status they have: no entry.
        for _ in 0..<3 {
            for i in 0..<10 {
                #expect(try checker.renew(node: "node1", checkID: "service:web-\(i)", status: .passing, output: "").wait() == .unchanged)
            }
        }
        #expect(log.proposed.count == written)

        // Not renewed for their TTL: all critical, in one entry.
        #expect(waitUntil(seconds: 5) { statuses(catalog).allSatisfy { $0 == .critical } })
        #expect(log.proposed.count == written + 1, "\(log.proposed.dropFirst(written))")
        guard case .checkStatuses(let updates) = log.proposed.last else {
            Issue.record("expected one checkStatuses entry, got \(String(describing: log.proposed.last))")
            return
        }
        #expect(updates.count == 10)
        #expect(updates.allSatisfy { $0.status == .critical && $0.output == CheckMachine.ttlExpiredOutput })

        // A renewal that makes it passing again is answered after its entry applied.
        let outcome = try checker.renew(node: "node1", checkID: "service:web-3", status: .passing, output: "back").wait()
        guard case .committed(let index) = outcome else {
            Issue.record("expected committed, got \(outcome)")
            return
        }
        #expect(catalog.appliedIndex >= index)
        #expect(catalog.state.checks[NodeScopedID(node: "node1", id: "service:web-3")]?.value.status == .passing)
        #expect(checker.counters.entries == 2)
    }

    /// Checks move with the replicated runners: none run here when another server owns them all.
    @Test func onlyTheOwnerRunsACheck() throws {
        let directory = try TemporaryDirectory()
        let catalog = try Catalog(path: directory.path("registry.db"))
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let log = FakeLog(catalog: catalog, loop: group.next())
        for i in 0..<30 { try log.append(instance(i, check: CheckDefinition(ttlSeconds: 60))) }
        let checkers = (1...3).map { id in
            HealthChecker(selfID: UInt64(id), settings: HealthSettings(), catalog: catalog, logger: Logger(label: "test"),
                          propose: log.propose)
        }
        for checker in checkers { checker.start() }
        defer { for checker in checkers { checker.stop() } }
        try log.append(.checkRunners([1, 2, 3]))
        #expect(waitUntil { checkers.map(\.counters.checksOwned).reduce(0, +) == 30 })
        #expect(checkers.allSatisfy { $0.counters.checksOwned > 0 }, "\(checkers.map(\.counters.checksOwned))")
        // Server 2 leaves: its checks go to 1 and 3, the others stay.
        let before = checkers.map(\.counters.checksOwned)
        try log.append(.checkRunners([1, 3]))
        #expect(waitUntil { checkers[1].counters.checksOwned == 0 && checkers[0].counters.checksOwned + checkers[2].counters.checksOwned == 30 })
        #expect(checkers[0].counters.checksOwned >= before[0] && checkers[2].counters.checksOwned >= before[2])
        // A renewal on a server that does not own the check is remembered, not run.
        #expect(try checkers[1].renew(node: "node1", checkID: "service:web-0", status: .passing, output: "").wait() == .notOwned)
    }

    /// An entry costs an ownership pass over the checks it touched, not over every check; a
    /// change of the servers that run checks looks at them all.
    @Test func ownershipPassesLookOnlyAtTheChecksThatChanged() throws {
        let directory = try TemporaryDirectory()
        let catalog = try Catalog(path: directory.path("registry.db"))
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let log = FakeLog(catalog: catalog, loop: group.next())
        try log.append(.checkRunners([1, 2]))
        for i in 0..<200 { try log.append(instance(i, check: CheckDefinition(ttlSeconds: 60))) }
        let checkers = (1...2).map { id in
            HealthChecker(selfID: UInt64(id), settings: HealthSettings(), catalog: catalog, logger: Logger(label: "test"),
                          propose: log.propose)
        }
        for checker in checkers { checker.start() }
        defer { for checker in checkers { checker.stop() } }
        #expect(waitUntil { checkers.map(\.counters.checksOwned).reduce(0, +) == 200 })
        func reconciled() -> Int { checkers.map(\.counters.checksReconciled).reduce(0, +) }
        func owned() -> Int { checkers.map(\.counters.checksOwned).reduce(0, +) }
        let afterStart = reconciled()
        #expect(afterStart == 400, "each server's first pass looks at all 200")

        // Ten more instances, one at a time: each pass looks at the new checks only.
        for i in 200..<210 { try log.append(instance(i, check: CheckDefinition(ttlSeconds: 60))) }
        #expect(waitUntil { owned() == 210 })
        #expect(waitUntil { reconciled() - afterStart == 20 }, "\(reconciled() - afterStart)")

        // Gone, and a definition changed: the runners follow.
        try log.append(.deregister(node: "node1", serviceID: "web-3", checkID: nil))
        try log.append(instance(4, check: CheckDefinition(ttlSeconds: 30)))
        #expect(waitUntil { owned() == 209 })
        #expect(waitUntil { reconciled() - afterStart == 24 }, "\(reconciled() - afterStart)")
        let key4 = NodeScopedID(node: "node1", id: "service:web-4")
        #expect(catalog.state.checks[key4]?.value.definition.ttlSeconds == 30)

        // Server 2 leaves: server 1 looks at every check once and runs them all.
        let passes = reconciled()
        try log.append(.checkRunners([1]))
        #expect(waitUntil { checkers[0].counters.checksOwned == 209 && checkers[1].counters.checksOwned == 0 })
        #expect(waitUntil { reconciled() - passes == 2 * 209 }, "\(reconciled() - passes)")
    }

    /// A real TCP check against a listening socket, then a closed one.
    @Test func aTCPCheckFollowsTheSocket() throws {
        let directory = try TemporaryDirectory()
        let catalog = try Catalog(path: directory.path("registry.db"))
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let server = try ServerBootstrap(group: group).serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .bind(host: "127.0.0.1", port: 0).wait()
        let port = try #require(server.localAddress?.port)
        let log = FakeLog(catalog: catalog, loop: group.next())
        try log.append(.checkRunners([1]))
        try log.append(instance(0, check: CheckDefinition(tcp: "127.0.0.1:\(port)", intervalSeconds: 1, timeoutSeconds: 1),
                                status: .critical))
        let checker = HealthChecker(selfID: 1, settings: HealthSettings(), catalog: catalog, logger: Logger(label: "test"),
                                    propose: log.propose)
        checker.start()
        defer { checker.stop() }
        #expect(waitUntil(seconds: 5) { statuses(catalog) == [.passing] })
        #expect(catalog.state.checks.values.first?.value.output.contains("Success") == true)
        try server.close().wait()
        #expect(waitUntil(seconds: 5) { statuses(catalog) == [.critical] })
        #expect(catalog.state.checks.values.first?.value.output.contains("TCP connect 127.0.0.1:\(port)") == true)
    }
}

/// A tiny HTTP server whose answer the test sets: status code and body.
final class FlippableHTTPServer: @unchecked Sendable {
    // @unchecked: `code` and `body` are guarded by `lock`.
    private let lock = NSLock()
    private var code = 200
    private var body = "ok"
    let channel: Channel

    init(group: EventLoopGroup, tls: (@Sendable (Channel) -> EventLoopFuture<Void>)? = nil) throws {
        final class Handler: ChannelInboundHandler, @unchecked Sendable {
            typealias InboundIn = HTTPServerRequestPart
            typealias OutboundOut = HTTPServerResponsePart
            let server: () -> FlippableHTTPServer?
            init(server: @escaping () -> FlippableHTTPServer?) { self.server = server }
            func channelRead(context: ChannelHandlerContext, data: NIOAny) {
                guard case .end = unwrapInboundIn(data), let server = server() else { return }
                let (code, body) = server.answer
                var headers = HTTPHeaders()
                headers.add(name: "Content-Length", value: "\(body.utf8.count)")
                context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: HTTPResponseStatus(statusCode: code),
                                                                     headers: headers))), promise: nil)
                context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: body)))), promise: nil)
                context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
            }
        }
        final class Box: @unchecked Sendable { weak var server: FlippableHTTPServer? }
        let box = Box()
        channel = try ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                (tls?(channel) ?? channel.eventLoop.makeSucceededVoidFuture()).flatMap {
                    channel.pipeline.configureHTTPServerPipeline()
                }.flatMap {
                    channel.pipeline.addHandler(Handler { box.server })
                }
            }
            .bind(host: "127.0.0.1", port: 0).wait()
        box.server = self
    }

    var port: Int { channel.localAddress?.port ?? 0 }
    var answer: (Int, String) { lock.withLock { (code, body) } }
    func set(_ code: Int, _ body: String = "") { lock.withLock { (self.code, self.body) = (code, body) } }
}

extension HealthCheckerTests {
    /// Consul's HTTP mapping on a real server: 2xx passing, 429 warning, 500 critical; the output
    /// keeps the start of the body, bounded.
    @Test func anHTTPCheckMapsStatusCodesAndBoundsItsOutput() throws {
        let directory = try TemporaryDirectory()
        let catalog = try Catalog(path: directory.path("registry.db"))
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let server = try FlippableHTTPServer(group: group)
        defer { try? server.channel.close().wait() }
        let log = FakeLog(catalog: catalog, loop: group.next())
        try log.append(.checkRunners([1]))
        try log.append(instance(0, check: CheckDefinition(http: "http://127.0.0.1:\(server.port)/health", intervalSeconds: 1,
                                                          timeoutSeconds: 1), status: .critical))
        var settings = HealthSettings()
        settings.outputBytesMax = 100
        let checker = HealthChecker(selfID: 1, settings: settings, catalog: catalog, logger: Logger(label: "test"),
                                    propose: log.propose)
        checker.start()
        defer { checker.stop() }
        func output() -> String { catalog.state.checks.values.first?.value.output ?? "" }
        server.set(200, "fine")
        #expect(waitUntil(seconds: 5) { statuses(catalog) == [.passing] })
        #expect(output().hasSuffix("200 OK Output: fine"), "\(output())")
        server.set(429, String(repeating: "x", count: 10_000))
        #expect(waitUntil(seconds: 5) { statuses(catalog) == [.warning] })
        #expect(output().utf8.count <= 100)
        server.set(503, "down")
        #expect(waitUntil(seconds: 5) { statuses(catalog) == [.critical] })
        #expect(output().contains("503"), "\(output())")
    }
}

extension HealthCheckerTests {
    /// DeregisterCriticalServiceAfter: the owner removes the instance through the log.
    @Test func anInstanceCriticalLongerThanItsDeregisterAfterIsRemoved() throws {
        let directory = try TemporaryDirectory()
        let catalog = try Catalog(path: directory.path("registry.db"))
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let log = FakeLog(catalog: catalog, loop: group.next())
        try log.append(.checkRunners([1]))
        try log.append(instance(0, check: CheckDefinition(ttlSeconds: 0.5, deregisterCriticalAfterSeconds: 1)))
        try log.append(instance(1, check: CheckDefinition(ttlSeconds: 60, deregisterCriticalAfterSeconds: 1)))
        let checker = HealthChecker(selfID: 1, settings: HealthSettings(), catalog: catalog, logger: Logger(label: "test"),
                                    propose: log.propose)
        checker.start()
        defer { checker.stop() }
        #expect(waitUntil(seconds: 10) { catalog.state.instances(of: "web").map(\.value.id) == ["web-1"] })
        #expect(log.proposed.contains(.deregister(node: "node1", serviceID: "web-0", checkID: nil)))
        #expect(checker.counters.deregistrations == 1)
    }
}

extension HealthCheckerTests {
    /// HTTPS with a self-signed certificate: passing only for the check that skips verification.
    @Test func anHTTPSCheckVerifiesTheCertificateUnlessTLSSkipVerify() throws {
        let directory = try TemporaryDirectory()
        let openssl = Process()
        openssl.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        openssl.arguments = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                             "-keyout", directory.path("key.pem"), "-out", directory.path("cert.pem")]
        openssl.standardError = FileHandle.nullDevice
        try openssl.run()
        openssl.waitUntilExit()
        try #require(openssl.terminationStatus == 0)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let tls = TLSConfiguration.makeServerConfiguration(
            certificateChain: try NIOSSLCertificate.fromPEMFile(directory.path("cert.pem")).map { .certificate($0) },
            privateKey: .privateKey(try NIOSSLPrivateKey(file: directory.path("key.pem"), format: .pem)))
        let context = try NIOSSLContext(configuration: tls)
        let server = try FlippableHTTPServer(group: group) { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: context))
            }
        }
        defer { try? server.channel.close().wait() }
        let catalog = try Catalog(path: directory.path("registry.db"))
        let log = FakeLog(catalog: catalog, loop: group.next())
        try log.append(.checkRunners([1]))
        let url = "https://127.0.0.1:\(server.port)/health"
        try log.append(instance(0, check: CheckDefinition(http: url, intervalSeconds: 1, timeoutSeconds: 2, tlsSkipVerify: true),
                                status: .critical))
        try log.append(instance(1, check: CheckDefinition(http: url, intervalSeconds: 1, timeoutSeconds: 2), status: .passing))
        let checker = HealthChecker(selfID: 1, settings: HealthSettings(), catalog: catalog, logger: Logger(label: "test"),
                                    propose: log.propose)
        checker.start()
        defer { checker.stop() }
        #expect(waitUntil(seconds: 10) { statuses(catalog) == [.passing, .critical] }, "\(catalog.state.checks.values.map(\.value.output))")
    }
}
