import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The pooled forwarder and streamed snapshot uploads on real discod processes (issue 13.3).
@Suite("Forwarding pool and snapshot uploads on real discod", .serialized)
struct ForwardingProcessTests {
    typealias Cluster = ClusterProcessTests.ClusterFixture

    /// `count` writes sent through `port` from `concurrency` clients at once; their replies
    /// (nil: no answer).
    func writes(_ count: Int, concurrency: Int, port: Int, prefix: String) -> [HTTPReply?] {
        let replies = Replies()
        let perClient = (count + concurrency - 1) / concurrency
        DispatchQueue.concurrentPerform(iterations: concurrency) { client in
            var mine: [HTTPReply?] = []
            for n in 0..<perClient where client * perClient + n < count {
                mine.append(http("PUT", port: port, "/v1/kv/\(prefix)/\(client)-\(n)", body: "v", timeoutSeconds: 15))
            }
            replies.append(mine)
        }
        return replies.all
    }

    /// Replies gathered from several threads.
    final class Replies: @unchecked Sendable {
        // @unchecked: every access holds `lock`.
        private let lock = NSLock()
        private var replies: [HTTPReply?] = []
        func append(_ more: [HTTPReply?]) { lock.withLock { replies += more } }
        var all: [HTTPReply?] { lock.withLock { replies } }
    }

    func follower(_ cluster: Cluster) throws -> ClusterProcessTests.Node {
        let leader = try #require(cluster.leader())
        return try #require(cluster.nodes.first { $0 !== leader })
    }

    @Test func manyWritesThroughAFollowerAllSucceedOverAFewConnections() throws {
        let cluster = try Cluster(size: 3, environment: [
            "DISCO_HTTP_FORWARD_CONNECTIONS_MAX": "4",
            "DISCO_HTTP_WRITE_LIMIT_MODE": "disabled",
        ])
        let follower = try follower(cluster)
        let opened = metric("disco_http_forward_connections_opened_total", port: follower.httpPort) ?? -1
        let statuses = writes(400, concurrency: 32, port: follower.httpPort, prefix: "pool").map { $0?.status ?? -1 }
        #expect(statuses.count == 400)
        #expect(statuses.allSatisfy { $0 == 200 }, "statuses: \(Dictionary(grouping: statuses, by: { $0 }).mapValues(\.count))")
        // One connection per forwarded write before the pool: 400. Now at most the cap (a
        // connection the leader closes would be replaced, but it keeps them alive).
        let after = try #require(metric("disco_http_forward_connections_opened_total", port: follower.httpPort))
        #expect(after - opened >= 1 && after - opened <= 4, "connections opened: \(opened) → \(after)")
        #expect(metric("disco_http_forward_requests_total", port: follower.httpPort).map { $0 >= 400 } == true)
        // Every write is there, read on the leader.
        let leader = try #require(cluster.leader())
        let keys = http("GET", port: leader.httpPort, "/v1/kv/pool?keys")?.body ?? ""
        #expect(keys.split(separator: ",").count == 400, "\(keys.prefix(200))")
    }

    @Test func afterTheLeaderIsKilledWritesThroughAFollowerReachTheNewLeader() throws {
        let cluster = try Cluster(size: 3, environment: ["DISCO_HTTP_FORWARD_CONNECTIONS_MAX": "4"])
        let leader = try #require(cluster.leader())
        let followers = cluster.nodes.filter { $0 !== leader }
        for follower in followers {
            let statuses = writes(40, concurrency: 8, port: follower.httpPort, prefix: "old-\(follower.id)").map { $0?.status ?? -1 }
            #expect(statuses.allSatisfy { $0 == 200 }, "\(statuses)")
        }
        cluster.kill9(leader)
        let newLeader = try #require(cluster.leader())
        let follower = try #require(followers.first { $0 !== newLeader })
        // Its pool to the dead leader is dropped and the writes go to the new one (while the
        // cluster elects they may be answered 503: the batch is sent again until all are 200).
        var statuses: [Int] = []
        let deadline = Date().addingTimeInterval(10)
        repeat {
            statuses = writes(40, concurrency: 8, port: follower.httpPort, prefix: "new").map { $0?.status ?? -1 }
        } while !statuses.allSatisfy({ $0 == 200 }) && Date() < deadline
        #expect(statuses.allSatisfy { $0 == 200 }, "\(statuses)")
        let keys = http("GET", port: newLeader.httpPort, "/v1/kv/new?keys")?.body ?? ""
        #expect(keys.split(separator: ",").count == 40)
        #expect(metric("disco_http_forward_connections_open", port: follower.httpPort).map { $0 <= 4 } == true)
    }

    @Test func beyondTheForwardQueueWritesGet429WithRetryAfterAndNoneFails() throws {
        let cluster = try Cluster(size: 3, environment: [
            "DISCO_HTTP_FORWARD_CONNECTIONS_MAX": "1",
            "DISCO_HTTP_FORWARD_QUEUED_REQUESTS_MAX": "0",
            "DISCO_HTTP_WRITE_LIMIT_MODE": "disabled",
        ])
        let follower = try follower(cluster)
        let replies = writes(200, concurrency: 16, port: follower.httpPort, prefix: "queue")
        let statuses = replies.map { $0?.status ?? -1 }
        let counts = Dictionary(grouping: statuses, by: { $0 }).mapValues(\.count)
        #expect(Set(statuses).isSubset(of: [200, 429]), "\(counts)")
        #expect((counts[200] ?? 0) > 0 && (counts[429] ?? 0) > 0, "\(counts)")
        // (The server's own forwarded writes, its node's registration, may have been refused too.)
        #expect(metric("disco_http_forward_refused_total", port: follower.httpPort).map { $0 >= Double(counts[429] ?? 0) } == true)
        #expect(metric("disco_http_forward_connections_opened_total", port: follower.httpPort).map { $0 <= 1 } == true)
        // The 429's form: Retry-After, as write admission's.
        #expect(replies.filter { $0?.status == 429 }.allSatisfy { Int($0?.headers["retry-after"] ?? "").map { $0 >= 1 } == true })
    }

    // MARK: - Snapshot uploads

    /// The upload files in `node`'s data directory.
    func uploadFiles(_ node: ClusterProcessTests.Node) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: node.data.path)) ?? []).filter { $0.hasPrefix("snapshot-upload-") }
    }

    /// Resident memory of `pid` in KiB.
    func residentKiB(_ pid: Int32) -> Int? {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") }
        return line.flatMap { Int($0.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") }
    }

    @Test func aSnapshotUploadedOverHTTPIsRestoredAndLeavesNoFile() throws {
        let cluster = try Cluster(size: 1)
        let node = try #require(cluster.leader())
        #expect(http("PUT", port: node.httpPort, "/v1/kv/restore/a", body: "before")?.body == "true")
        let saved = try #require(rawHTTP("GET", port: node.httpPort, "/v1/snapshot", body: []))
        #expect(saved.status == 200 && saved.body.count > 100)
        #expect(http("PUT", port: node.httpPort, "/v1/kv/restore/a", body: "after")?.body == "true")
        #expect(http("PUT", port: node.httpPort, "/v1/kv/restore/b", body: "new")?.body == "true")

        let restored = try #require(rawHTTP("PUT", port: node.httpPort, "/v1/snapshot", body: saved.body))
        #expect(restored.status == 200, "\(String(decoding: restored.body, as: UTF8.self))")
        #expect(http("GET", port: node.httpPort, "/v1/kv/restore/a?raw")?.body == "before")
        #expect(http("GET", port: node.httpPort, "/v1/kv/restore/b")?.status == 404)
        #expect(uploadFiles(node).isEmpty, "\(uploadFiles(node))")

        // A damaged upload changes nothing and leaves no file either.
        var damaged = saved.body
        damaged[damaged.count / 2] ^= 0xFF
        let refused = try #require(rawHTTP("PUT", port: node.httpPort, "/v1/snapshot", body: damaged))
        #expect(refused.status == 400, "\(String(decoding: refused.body, as: UTF8.self))")
        #expect(http("GET", port: node.httpPort, "/v1/kv/restore/a?raw")?.body == "before")
        #expect(uploadFiles(node).isEmpty)
    }

    @Test func anUploadIsStreamedToDiskAndAClientGoneMidBodyLeavesNothingBehind() throws {
        let cluster = try Cluster(size: 1)
        let node = try #require(cluster.leader())
        let pid = try #require(node.process?.process.processIdentifier)
        #expect(http("PUT", port: node.httpPort, "/v1/kv/k", body: "v")?.body == "true")
        let before = try #require(residentKiB(pid))

        // 48 MiB promised, 32 MiB sent, then the client goes away.
        let upload = try DNSClient.connectTCP(port: UInt16(node.httpPort))
        let head = Array("PUT /v1/snapshot HTTP/1.1\r\nHost: x\r\nContent-Length: \(48 << 20)\r\n\r\n".utf8)
        #expect(send(upload, head, head.count, Int32(MSG_NOSIGNAL)) == head.count)
        let chunk = [UInt8](repeating: 0x5A, count: 1 << 20)
        for _ in 0..<32 { #expect(sendAll(upload, chunk)) }

        // It is in a file in the data directory, not in the server's memory.
        var files: [String] = []
        var size = 0
        let deadline = Date().addingTimeInterval(5)
        while Date() < deadline {
            files = uploadFiles(node)
            size = files.first.flatMap {
                (try? FileManager.default.attributesOfItem(atPath: node.data.appendingPathComponent($0).path))?[.size] as? Int
            } ?? 0
            if size >= 32 << 20 { break }
            usleep(50_000)
        }
        #expect(files.count == 1 && size == 32 << 20, "\(files), \(size) bytes")
        let during = try #require(residentKiB(pid))
        #expect(during - before < 16 << 10, "resident memory grew from \(before) KiB to \(during) KiB during a 32 MiB upload")

        // A second upload meanwhile is refused from its head, with Retry-After.
        let second = try DNSClient.connectTCP(port: UInt16(node.httpPort))
        #expect(send(second, head, head.count, Int32(MSG_NOSIGNAL)) == head.count)
        let reply = readUntilClosed(second)
        close(second)
        #expect(reply.hasPrefix("HTTP/1.1 429") && reply.contains("Retry-After: "), "\(reply.prefix(200))")

        close(upload)
        let gone = Date().addingTimeInterval(5)
        while !uploadFiles(node).isEmpty && Date() < gone { usleep(50_000) }
        #expect(uploadFiles(node).isEmpty, "left behind: \(uploadFiles(node))")

        // The server goes on, and takes the next upload (an empty one: refused as no snapshot).
        #expect(http("PUT", port: node.httpPort, "/v1/kv/k", body: "w")?.body == "true")
        let next = try #require(rawHTTP("PUT", port: node.httpPort, "/v1/snapshot", body: Array("junk".utf8)))
        #expect(next.status == 400)
        #expect(uploadFiles(node).isEmpty)
    }

    @Test func uploadFilesLeftByACrashAreRemovedAtStart() throws {
        let cluster = try Cluster(size: 1)
        let node = try #require(cluster.leader())
        cluster.kill9(node)
        let leftover = node.data.appendingPathComponent("snapshot-upload-1-abc.tmp")
        try Data("partial".utf8).write(to: leftover)
        try cluster.start(node)
        #expect(uploadFiles(node).isEmpty)
    }
}

/// Sends all of `bytes` (false: the connection broke).
func sendAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
    var offset = 0
    while offset < bytes.count {
        let n = bytes[offset...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        if n <= 0 { return false }
        offset += n
    }
    return true
}

/// One request with a binary body, `Connection: close`; the status and the raw body.
func rawHTTP(_ method: String, port: Int, _ path: String, body: [UInt8]) -> (status: Int, body: [UInt8])? {
    guard let fd = try? DNSClient.connectTCP(port: UInt16(port)) else { return nil }
    defer { close(fd) }
    var tv = timeval(tv_sec: 30, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    let head = Array("\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: \(body.count)\r\n\r\n".utf8)
    guard sendAll(fd, head + body) else { return nil }
    var response: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = recv(fd, &chunk, chunk.count, 0)
        if n <= 0 { break }
        response += chunk[0..<n]
    }
    let separator: [UInt8] = [13, 10, 13, 10]
    guard let split = (0..<max(0, response.count - 3)).first(where: { Array(response[$0..<$0 + 4]) == separator }) else { return nil }
    let headText = String(decoding: response[..<split], as: UTF8.self)
    guard let status = headText.split(separator: " ").dropFirst().first.flatMap({ Int($0) }) else { return nil }
    return (status, Array(response[(split + 4)...]))
}
