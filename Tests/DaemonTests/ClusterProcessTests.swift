import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Distinct free TCP ports on loopback below the kernel's ephemeral range, so that the port of a
/// killed server is not taken meanwhile as the source port of an outgoing connection.
/// Ports handed out by `freePorts` in this test process: tests run in parallel, and one whose
/// servers have not bound their ports yet must not see them handed to another.
private let handedOutPorts = PortLedger()

final class PortLedger: @unchecked Sendable {
    private let lock = NSLock()
    private var ports = Set<Int>()
    /// Takes `port` unless it was handed out before.
    func take(_ port: Int) -> Bool { lock.withLock { ports.insert(port).inserted } }
}

func freePorts(_ count: Int) -> [Int] {
    let range = (try? String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8))?
        .split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).first.flatMap { Int($0) } ?? 32768
    var ports: [Int] = []
    while ports.count < count {
        let port = Int.random(in: max(1024, range - 12000)..<range)
        guard !ports.contains(port) else { continue }
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = DNSClient.loopback(UInt16(port))
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        close(fd)
        if bound == 0, handedOutPorts.take(port) { ports.append(port) }
    }
    return ports
}

/// HTTP/1.1 over a plain socket, `Connection: close`: enough for the API's tests.
struct HTTPReply {
    var status: Int
    var headers: [String: String]
    var body: String
}

/// Everything `fd` receives until the peer closes it (or the socket's receive timeout).
func readUntilClosed(_ fd: Int32) -> String {
    var response: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = recv(fd, &chunk, chunk.count, 0)
        if n <= 0 { break }
        response += chunk[0..<n]
    }
    return String(decoding: response, as: UTF8.self)
}

/// - Parameter timeoutSeconds: how long the answer may keep the socket silent (default: the DNS
///   client's 3 s).
func http(_ method: String, port: Int, _ path: String, body: String = "", headers extra: [(String, String)] = [],
          timeoutSeconds: Int? = nil) -> HTTPReply? {
    guard let fd = try? DNSClient.connectTCP(port: UInt16(port)) else { return nil }
    defer { close(fd) }
    if let timeoutSeconds {
        var tv = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }
    let fields = extra.map { "\($0.0): \($0.1)\r\n" }.joined()
    let request = "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\(fields)Content-Length: \(body.utf8.count)\r\n\r\n\(body)"
    let bytes = Array(request.utf8)
    guard send(fd, bytes, bytes.count, 0) == bytes.count else { return nil }
    let text = readUntilClosed(fd)
    guard let split = text.range(of: "\r\n\r\n") else { return nil }
    let lines = text[..<split.lowerBound].components(separatedBy: "\r\n")
    guard let status = lines.first?.split(separator: " ").dropFirst().first.flatMap({ Int($0) }) else { return nil }
    var headers: [String: String] = [:]
    for line in lines.dropFirst() {
        if let colon = line.firstIndex(of: ":") {
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
    }
    return HTTPReply(status: status, headers: headers, body: String(text[split.upperBound...]))
}

/// Real discod processes forming a Raft cluster on loopback, with real fsync and kill -9.
@Suite("discod cluster processes", .serialized)
struct ClusterProcessTests {
    final class Node {
        let id: Int
        let raftPort: Int
        let httpPort: Int
        let data: URL
        var process: DiscodProcess?

        init(id: Int, root: URL, raftPort: Int, httpPort: Int) {
            self.id = id
            self.raftPort = raftPort
            self.httpPort = httpPort
            data = root.appendingPathComponent("node\(id)")
        }
    }

    final class ClusterFixture {
        let directory: TemporaryDirectory
        let nodes: [Node]
        let zones: URL
        /// Extra environment of every discod started (hidden knobs such as DISCO_SNAPSHOT_ENTRIES).
        let environment: [String: String]
        /// With `proxiedLinks`, every directed Raft link X→Y goes through `links["X>Y"]`.
        private(set) var links: [String: PeerLinkProxy] = [:]

        /// Data directories that are tmpfs mounts of their own (unmounted on deinit).
        private var mounts: [URL] = []

        /// - Parameter dataMountBytes: give each server's data directory a tmpfs of this size, so a
        ///   test can fill one server's disk (needs root, as CI and the sessions here have).
        init(size: Int, environment: [String: String] = [:], proxiedLinks: Bool = false, dataMountBytes: Int? = nil) throws {
            self.environment = environment
            let directory = try TemporaryDirectory()
            let zones = directory.url.appendingPathComponent("zones")
            try FileManager.default.createDirectory(at: zones, withIntermediateDirectories: true)
            try testZone.write(to: zones.appendingPathComponent("example.test.zone"), atomically: true, encoding: .utf8)
            self.directory = directory
            self.zones = zones
            let ports = freePorts(2 * size)
            nodes = (1...size).map { Node(id: $0, root: directory.url, raftPort: ports[2 * $0 - 2], httpPort: ports[2 * $0 - 1]) }
            if proxiedLinks {
                for from in nodes {
                    for to in nodes where to.id != from.id { links["\(from.id)>\(to.id)"] = try PeerLinkProxy(upstreamPort: to.raftPort) }
                }
            }
            if let bytes = dataMountBytes {
                for node in nodes {
                    try FileManager.default.createDirectory(at: node.data, withIntermediateDirectories: true)
                    let mount = Process()
                    mount.executableURL = URL(fileURLWithPath: "/bin/mount")
                    mount.arguments = ["-t", "tmpfs", "-o", "size=\(bytes)", "tmpfs", node.data.path]
                    try mount.run()
                    mount.waitUntilExit()
                    guard mount.terminationStatus == 0 else { throw TestFailure("cannot mount a tmpfs on \(node.data.path)") }
                    mounts.append(node.data)
                }
            }
            for node in nodes { try start(node) }
        }

        deinit {
            for link in links.values { link.stop() }
            for node in nodes { node.process?.stop() }
            for mount in mounts {
                let umount = Process()
                umount.executableURL = URL(fileURLWithPath: "/bin/umount")
                umount.arguments = ["-l", mount.path]
                try? umount.run()
                umount.waitUntilExit()
            }
        }

        /// The proxy carrying `from`'s messages to `to` (a fixture made with `proxiedLinks`).
        func link(_ from: Node, _ to: Node) -> PeerLinkProxy {
            guard let link = links["\(from.id)>\(to.id)"] else { preconditionFailure("no proxied link \(from.id)>\(to.id)") }
            return link
        }

        /// The Raft port at which `from` reaches `to`: its own, or the proxy in between.
        func raftPort(of to: Node, seenFrom from: Node) -> Int {
            links["\(from.id)>\(to.id)"]?.port ?? to.raftPort
        }

        /// - Parameter dnsPort: the DNS port to bind (default: one the kernel picks).
        func start(_ node: Node, environment extra: [String: String] = [:], dnsPort: Int = 0) throws {
            var arguments = ["--zones", zones.path, "--dns", "127.0.0.1:\(dnsPort)", "--workers", "1",
                             "--node-id", "\(node.id)", "--raft", "127.0.0.1:\(node.raftPort)",
                             "--http", "127.0.0.1:\(node.httpPort)", "--data-dir", node.data.path, "--log-level", "info"]
            for peer in nodes {
                arguments += ["--server", "\(peer.id)=127.0.0.1:\(raftPort(of: peer, seenFrom: node)),127.0.0.1:\(peer.httpPort)"]
            }
            let process = try DiscodProcess(arguments: arguments, environment: environment.merging(extra) { $1 })
            try process.waitForStart()
            node.process = process
        }

        func kill9(_ node: Node) {
            node.process?.stop()  // SIGKILL and reap
            node.process = nil
        }

        /// The node every running node names as leader, waiting up to `seconds`.
        func leader(seconds: Double = 15) -> Node? {
            let deadline = Date().addingTimeInterval(seconds)
            while Date() < deadline {
                let running = nodes.filter { $0.process != nil }
                // Each server names the leader by the address it reaches it at.
                let named = running.compactMap { server -> Node? in
                    // A cluster with TLS (issue 14) answers HTTPS only.
                    let answer = environment["DISCO_TLS_CA_FILE"].map { ca in
                        // With the servers' own certificate: it serves as a client one too.
                        curlHTTPS("GET", port: server.httpPort, "/v1/status/leader", ca: ca,
                                  cert: environment["DISCO_TLS_CERT_FILE"].map { ($0, environment["DISCO_TLS_KEY_FILE"] ?? "") }).map { $0.1 }
                    } ?? http("GET", port: server.httpPort, "/v1/status/leader")?.body
                    guard let answer else { return nil }
                    return nodes.first { answer == "\"127.0.0.1:\(raftPort(of: $0, seenFrom: server))\"" }
                }
                if named.count == running.count, let first = named.first, named.allSatisfy({ $0 === first }),
                   first.process != nil {
                    return first
                }
                usleep(50_000)
            }
            return nil
        }

        /// Waits until a stale read of `key` on `node` returns `value`.
        func eventually(_ node: Node, _ key: String, _ value: String, seconds: Double = 15) -> Bool {
            let deadline = Date().addingTimeInterval(seconds)
            while Date() < deadline {
                if http("GET", port: node.httpPort, "/v1/kv/\(key)?stale&raw")?.body == value { return true }
                usleep(50_000)
            }
            return false
        }
    }

    @Test func writesSurviveKillingTheLeaderAndARestartedNodeCatchesUp() throws {
        let cluster = try ClusterFixture(size: 3)
        let leader = try #require(cluster.leader())

        // A write through the leader is readable on every node.
        #expect(http("PUT", port: leader.httpPort, "/v1/kv/service/web", body: "v1")?.body == "true")
        for node in cluster.nodes { #expect(cluster.eventually(node, "service/web", "v1"), "node \(node.id)") }

        // The leader reports every server with its match index.
        let configuration = http("GET", port: leader.httpPort, "/v1/operator/raft/configuration")
        let servers = (try? JSONSerialization.jsonObject(with: Data((configuration?.body ?? "").utf8)) as? [String: Any])?["Servers"] as? [[String: Any]]
        #expect(servers?.count == 3)
        #expect(servers?.allSatisfy { $0["MatchIndex"] is Int && $0["Voter"] as? Bool == true } == true, "\(String(describing: servers))")
        #expect(servers?.filter { $0["Leader"] as? Bool == true }.count == 1)

        // A follower forwards writes (and default reads) to the leader, as a Consul server does.
        let follower = try #require(cluster.nodes.first { $0.id != leader.id })
        let forwarded = http("PUT", port: follower.httpPort, "/v1/kv/x", body: "y")
        #expect(forwarded?.status == 200)
        #expect(forwarded?.body == "true")
        #expect(http("GET", port: leader.httpPort, "/v1/kv/x?raw")?.body == "y")
        #expect(http("GET", port: follower.httpPort, "/v1/kv/x?raw")?.body == "y")
        #expect(http("GET", port: follower.httpPort, "/v1/kv/x?raw&stale")?.status == 200)

        // kill -9 the leader: the others elect a new one and writes resume.
        cluster.kill9(leader)
        let next = try #require(cluster.leader())
        #expect(next.id != leader.id)
        #expect(http("PUT", port: next.httpPort, "/v1/kv/service/web", body: "v2")?.body == "true")
        #expect(http("GET", port: next.httpPort, "/v1/kv/service/web?raw")?.body == "v2")

        // The killed node restarts from its data directory and catches up.
        try cluster.start(leader)
        #expect(cluster.eventually(leader, "service/web", "v2"))
        let index = http("GET", port: next.httpPort, "/v1/kv/service/web")?.headers["x-consul-index"]
        #expect(index.flatMap { Int($0) }.map { $0 > 2 } == true)
    }

    @Test func sigtermOnTheLeaderHandsLeadershipOverFirst() throws {
        let cluster = try ClusterFixture(size: 3)
        let leader = try #require(cluster.leader())
        #expect(http("PUT", port: leader.httpPort, "/v1/kv/a", body: "1")?.body == "true")
        let process = try #require(leader.process)
        process.signal(SIGTERM)
        #expect(process.waitForExit() == 0)
        #expect(process.stderr.contains("leadership handed over before shutdown"))
        leader.process = nil
        let next = try #require(cluster.leader(seconds: 5))
        #expect(next.id != leader.id)
        #expect(http("GET", port: next.httpPort, "/v1/kv/a?raw")?.body == "1")
    }

    /// Two servers configured as one cluster but with different cluster tokens: each refuses
    /// the other's frames with a clear log line, and no leader is ever elected.
    @Test func aPeerFromAnotherClusterIsRefused() throws {
        let directory = try TemporaryDirectory()
        let ports = freePorts(4)
        var servers: [String] = []
        for i in 0..<2 { servers += ["--server", "\(i + 1)=127.0.0.1:\(ports[2 * i]),127.0.0.1:\(ports[2 * i + 1])"] }
        let processes = try (0..<2).map { i -> DiscodProcess in
            let process = try DiscodProcess.serving(zones: directory.url, extra: [
                "--node-id", "\(i + 1)", "--raft", "127.0.0.1:\(ports[2 * i])", "--http", "127.0.0.1:\(ports[2 * i + 1])",
                "--data-dir", directory.url.appendingPathComponent("node\(i)").path] + servers,
                environment: ["DISCO_RAFT_CLUSTER_TOKEN": i == 0 ? "prod" : "staging"])
            return process
        }
        #expect(processes[0].waitForLog("raft.cluster_token differs"), "\(processes[0].stderr)")
        #expect(processes[1].waitForLog("raft.cluster_token differs"), "\(processes[1].stderr)")
        #expect(http("GET", port: ports[1], "/v1/status/leader")?.body == "\"\"")
    }
}
