import Foundation
import Health
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A plain-socket HTTP server in the test process: `GET /N` answers the status code the test set
/// for instance N. One thread, one connection at a time, `Connection: close`.
final class InstanceEndpoints: @unchecked Sendable {
    // @unchecked: `codes` and `running` are guarded by `lock`; `fd` is set before the thread starts.
    private let lock = NSLock()
    private var codes: [Int]
    private var running = true
    private let fd: Int32
    let port: Int
    private var thread: Thread?

    init(count: Int) throws {
        codes = Array(repeating: 200, count: count)
        (fd, port) = try listenOnLoopback()
        let thread = Thread { [self] in serve() }
        self.thread = thread
        thread.start()
    }

    func set(_ instance: Int, _ code: Int) { lock.withLock { codes[instance] = code } }

    private func serve() {
        while lock.withLock({ running }) {
            var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&poller, 1, 100) > 0 else { continue }
            let client = accept(fd, nil, nil)
            guard client >= 0 else { continue }
            DNSClient.setTimeout(client)
            var request: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 2048)
            while !String(decoding: request, as: UTF8.self).contains("\r\n\r\n") {
                let n = recv(client, &chunk, chunk.count, 0)
                if n <= 0 { break }
                request += chunk[0..<n]
            }
            let line = String(decoding: request, as: UTF8.self).split(separator: " ")
            let index = line.count > 1 ? Int(line[1].dropFirst()) : nil
            let code = index.flatMap { i in lock.withLock { i < codes.count ? codes[i] : nil } } ?? 404
            let body = "instance \(index.map(String.init) ?? "?") says \(code)"
            let response = Array("HTTP/1.1 \(code) X\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)".utf8)
            _ = send(client, response, response.count, Int32(MSG_NOSIGNAL))
            close(client)
        }
    }

    func stop() {
        let wasRunning = lock.withLock { () -> Bool in
            defer { running = false }
            return running
        }
        guard wasRunning else { return }
        while thread?.isExecuting == true { usleep(10_000) }
        close(fd)
    }

    deinit { stop() }
}

/// Health checks run by a real 3-server cluster against real HTTP endpoints, answered in DNS.
@Suite("health checks on a discod cluster", .serialized)
struct HealthProcessTests {
    typealias Cluster = ClusterProcessTests.ClusterFixture

    static let intervalSeconds = 1.0
    static let failuresBeforeCritical = 1.0
    /// DESIGN: a failing instance leaves DNS within interval × threshold + 2 s on every server.
    static var dropSecondsMax: Double { intervalSeconds * failuresBeforeCritical + 2 }

    func addresses(_ name: String, _ node: ClusterProcessTests.Node) -> [String]? {
        guard let port = node.process?.port else { return nil }
        return resolveA("\(name).service.disco.", port: port)
    }

    @Test func failingInstancesLeaveDNSOnEveryServerAndChecksMoveWhenTheirOwnerDies() throws {
        let cluster = try Cluster(size: 3)
        let leader = try #require(cluster.leader())
        let endpoints = try InstanceEndpoints(count: 10)
        defer { endpoints.stop() }
        let all = (0..<10).map { "10.0.1.\($0 + 1)" }

        // Ten instances, registered through the three servers in turn, each with an HTTP check.
        for i in 0..<10 {
            let node = cluster.nodes[i % 3]
            let body = #"{"Name": "web", "ID": "web-\#(i)", "Address": "10.0.1.\#(i + 1)", "Port": 80, "Check": {"#
                + #""HTTP": "http://127.0.0.1:\#(endpoints.port)/\#(i)", "Interval": "1s", "Timeout": "1s"}}"#
            #expect(http("PUT", port: node.httpPort, "/v1/agent/service/register", body: body)?.status == 200)
        }
        // New checks start critical (Consul); all ten pass once their first probe does. (DNS
        // answers all ten before that too: with none passing the service is in panic, and a
        // panicking service is answered whole.)
        func passing() -> Int {
            let checks = json(http("GET", port: leader.httpPort, "/v1/health/checks/web")) as? [[String: Any]] ?? []
            return checks.filter { $0["Status"] as? String == "passing" }.count
        }
        #expect(waitUntil(seconds: 15) { passing() == 10 }, "\(passing()) passing")
        for node in cluster.nodes {
            #expect(waitUntil(seconds: 15) { addresses("web", node) == all.sorted() }, "node \(node.id): \(String(describing: addresses("web", node)))")
        }
        // Each check runs on exactly one server; together they run all ten.
        func owned(_ node: ClusterProcessTests.Node) -> Int? {
            http("GET", port: node.httpPort, "/metrics")?.body.split(separator: "\n")
                .first { $0.hasPrefix("disco_health_checks_owned ") }.flatMap { Int($0.split(separator: " ")[1]) }
        }
        #expect(waitUntil(seconds: 5) { cluster.nodes.compactMap(owned).reduce(0, +) == 10 },
                "\(cluster.nodes.map(owned))")

        // Four fail: every server answers the six others within interval × threshold + 2 s.
        for i in 0..<4 { endpoints.set(i, 500) }
        let healthy = Array(all[4...]).sorted()
        let failedAt = Date()
        for node in cluster.nodes {
            let remaining = Self.dropSecondsMax - Date().timeIntervalSince(failedAt)
            #expect(waitUntil(seconds: max(remaining, 0)) { addresses("web", node) == healthy },
                    "node \(node.id) after \(Date().timeIntervalSince(failedAt)) s: \(String(describing: addresses("web", node)))")
        }
        let checks = json(http("GET", port: leader.httpPort, "/v1/health/checks/web")) as? [[String: Any]] ?? []
        let failing = checks.filter { $0["Status"] as? String == "critical" }
        #expect(failing.count == 4)
        // Each keeps the reason; on a loaded machine a probe may time out instead of reading the 500.
        #expect(failing.allSatisfy { ($0["Output"] as? String).map { $0.contains(": 500 ") || $0.contains("timed out") } == true },
                "\(failing)")
        #expect(failing.contains { ($0["Output"] as? String)?.contains(": 500 ") == true }, "\(failing)")
        // The failed probes are counted where they ran (issue 17).
        func failedProbes(_ node: ClusterProcessTests.Node) -> Int? {
            http("GET", port: node.httpPort, "/metrics")?.body.split(separator: "\n")
                .first { $0.hasPrefix("disco_health_probes_failed_total ") }.flatMap { Int($0.split(separator: " ")[1]) }
        }
        #expect(cluster.nodes.compactMap(failedProbes).reduce(0, +) >= 4, "\(cluster.nodes.map(failedProbes))")

        // Eight fail: 2 of 10 passing is below the 50% panic threshold, so every server answers
        // all ten (fail open: the two survivors would take the whole load) and says so.
        for i in 0..<8 { endpoints.set(i, 500) }
        #expect(waitUntil(seconds: 15) { passing() == 2 }, "\(passing()) passing")
        func inPanic(_ node: ClusterProcessTests.Node) -> Int? {
            http("GET", port: node.httpPort, "/metrics")?.body.split(separator: "\n")
                .first { $0.hasPrefix("disco_dns_services_in_panic ") }.flatMap { Int($0.split(separator: " ")[1]) }
        }
        for node in cluster.nodes {
            #expect(waitUntil(seconds: 10) { inPanic(node) == 1 && addresses("web", node) == all.sorted() },
                    "node \(node.id): panic \(String(describing: inPanic(node))), \(String(describing: addresses("web", node)))")
        }

        // They recover (all passing: DNS answered all ten in panic already).
        for i in 0..<8 { endpoints.set(i, 200) }
        #expect(waitUntil(seconds: 15) { passing() == 10 }, "\(passing()) passing")
        for node in cluster.nodes {
            #expect(waitUntil(seconds: 10) { addresses("web", node) == all.sorted() }, "node \(node.id)")
        }

        // kill -9 the server that runs web-0's check: another one runs it within a few seconds
        // (seen by failing the endpoint afterwards and watching the instance leave DNS).
        // Registered from 127.0.0.1: it lives on the client's node, whichever server took it.
        let key = Rendezvous.key(node: "ip-127-0-0-1", checkID: "service:web-0")
        let ownerID = try #require(Rendezvous.owner(of: key, among: [1, 2, 3]))
        let owner = try #require(cluster.nodes.first { UInt64($0.id) == ownerID })
        cluster.kill9(owner)
        let survivors = cluster.nodes.filter { $0.id != owner.id }
        endpoints.set(0, 503)
        let withoutFirst = Array(all.dropFirst()).sorted()
        for node in survivors {
            #expect(waitUntil(seconds: 10) { addresses("web", node) == withoutFirst },
                    "node \(node.id): \(String(describing: addresses("web", node)))")
        }
        let now = json(http("GET", port: survivors[0].httpPort, "/v1/health/checks/web?stale")) as? [[String: Any]] ?? []
        let first = now.first { $0["CheckID"] as? String == "service:web-0" }
        #expect((first?["Output"] as? String)?.contains(": 503 ") == true, "\(String(describing: first))")
    }

    @Test func aTTLCheckNotRenewedGoesCriticalAndRenewalsCostNoEntries() throws {
        let cluster = try Cluster(size: 3)
        _ = try #require(cluster.leader())
        let node = cluster.nodes[0]
        #expect(http("PUT", port: node.httpPort, "/v1/agent/service/register",
                     // A lone instance that fails is its service's whole set: the panic threshold
                     // (default 50%) would answer it anyway (fail open). This test is about
                     // expiry, so the service opts out of panic.
                     body: #"{"Name": "job", "Address": "10.0.2.1", "Meta": {"panic-threshold": "0"}, "Check": {"CheckID": "job-ttl", "TTL": "3s"}}"#)?.status == 200)
        #expect(http("PUT", port: node.httpPort, "/v1/agent/check/pass/job-ttl?note=alive")?.status == 200)
        for server in cluster.nodes {
            #expect(waitUntil(seconds: 10) { addresses("job", server) == ["10.0.2.1"] }, "node \(server.id)")
        }
        // Renewals through any server (each sends it to the check's owner: the check is on the
        // client's node whichever server is asked) change nothing: the catalog index stays.
        let index = http("GET", port: node.httpPort, "/v1/health/service/job")?.headers["x-consul-index"]
        for i in 0..<6 {
            let server = cluster.nodes[i % cluster.nodes.count]
            #expect(http("PUT", port: server.httpPort, "/v1/agent/check/pass/job-ttl?note=alive")?.status == 200, "server \(server.id)")
            usleep(250_000)
        }
        #expect(http("GET", port: node.httpPort, "/v1/health/service/job")?.headers["x-consul-index"] == index)
        #expect(addresses("job", cluster.nodes[2]) == ["10.0.2.1"])
        // Not renewed: critical after its TTL, and out of DNS everywhere.
        for server in cluster.nodes {
            #expect(waitUntil(seconds: 10) { addresses("job", server) == nil }, "node \(server.id)")
        }
        let checks = json(http("GET", port: node.httpPort, "/v1/health/checks/job")) as? [[String: Any]]
        #expect(checks?.first?["Status"] as? String == "critical")
        #expect(checks?.first?["Output"] as? String == CheckMachine.ttlExpiredOutput)
        // The server that runs the check logged the transition (issue 17: one line per event).
        #expect(cluster.nodes.contains { ($0.process?.stderr ?? "").contains("health.check=ip-127-0-0-1/job-ttl health.status=critical [Health] check status changed") },
                "\(cluster.nodes.map { $0.process?.stderr ?? "" })")
        // Renewed again: back.
        #expect(http("PUT", port: node.httpPort, "/v1/agent/check/pass/job-ttl")?.status == 200)
        for server in cluster.nodes {
            #expect(waitUntil(seconds: 10) { addresses("job", server) == ["10.0.2.1"] }, "node \(server.id)")
        }
    }
}
