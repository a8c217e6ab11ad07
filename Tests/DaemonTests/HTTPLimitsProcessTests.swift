import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// What one HTTP client may hold of a real discod (issue 13.3): connections, slow requests,
/// bodies sent where none is taken.
@Suite("HTTP limits on a real discod", .serialized)
struct HTTPLimitsProcessTests {
    typealias Cluster = ClusterProcessTests.ClusterFixture

    static let environment = [
        "DISCO_HTTP_CONNECTIONS_PER_CLIENT_MAX": "5",
        "DISCO_HTTP_IDLE_TIMEOUT_SECONDS": "2",
        "DISCO_HTTP_REQUEST_READ_TIMEOUT_SECONDS": "2",
    ]

    /// Sends `text` on a new connection and returns what comes back before the server closes
    /// it (or 3 s of silence).
    func exchange(_ port: Int, _ text: String) throws -> String {
        let fd = try DNSClient.connectTCP(port: UInt16(port))
        defer { close(fd) }
        let bytes = Array(text.utf8)
        _ = send(fd, bytes, bytes.count, Int32(MSG_NOSIGNAL))
        return readUntilClosed(fd)
    }

    /// Seconds until the server closes `fd` (nil: not within `limit`).
    func secondsUntilClosed(_ fd: Int32, limit: Double) -> Double? {
        var tv = timeval(tv_sec: Int(limit) + 1, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        let start = Date()
        var byte: UInt8 = 0
        while recv(fd, &byte, 1, 0) > 0 {}
        let elapsed = Date().timeIntervalSince(start)
        return elapsed <= limit ? elapsed : nil
    }

    @Test func connectionsOverTheClientCapGet429AndTheRestStillWork() throws {
        let cluster = try Cluster(size: 1, environment: Self.environment)
        let node = try #require(cluster.leader())
        let held = try (0..<5).map { _ in try DNSClient.connectTCP(port: UInt16(node.httpPort)) }
        // held[0] is closed below; closing it twice could close whatever reused its number.
        defer { held.dropFirst().forEach { close($0) } }
        usleep(200_000)
        let refused = try exchange(node.httpPort, "GET /v1/status/leader HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(refused.hasPrefix("HTTP/1.1 429"), "\(refused)")
        #expect(refused.contains("Retry-After: "))
        close(held[0])
        usleep(200_000)
        #expect(http("GET", port: node.httpPort, "/v1/status/leader")?.status == 200)
    }

    @Test func idleAndSlowConnectionsAreClosed() throws {
        let cluster = try Cluster(size: 1, environment: Self.environment)
        let node = try #require(cluster.leader())
        // Idle: no byte at all.
        let idle = try DNSClient.connectTCP(port: UInt16(node.httpPort))
        defer { close(idle) }
        let idleFor = secondsUntilClosed(idle, limit: 5)
        #expect(idleFor.map { $0 >= 1.5 } == true, "closed after \(String(describing: idleFor)) s")

        // Slowloris: a request line one byte every 300 ms never completes within 2 s; every byte
        // arrives well within the idle timeout, so only the per-request deadline can close it.
        let slow = try DNSClient.connectTCP(port: UInt16(node.httpPort))
        defer { close(slow) }
        let line = Array("GET /v1/status/leader HTTP/1.1\r\nHost: x\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n".utf8)
        let start = Date()
        var closedAfter: Double?
        for byte in line {
            if send(slow, [byte], 1, Int32(MSG_NOSIGNAL)) <= 0 { closedAfter = Date().timeIntervalSince(start); break }
            var probe: UInt8 = 0
            if recv(slow, &probe, 1, Int32(MSG_DONTWAIT)) == 0 { closedAfter = Date().timeIntervalSince(start); break }
            usleep(300_000)
        }
        #expect(closedAfter.map { $0 < 4 } == true, "a slowloris request was still open after \(Date().timeIntervalSince(start)) s")
    }

    @Test func bodiesAreRefusedFromTheHeadBeforeTheyAreRead() throws {
        let cluster = try Cluster(size: 1, environment: Self.environment)
        let node = try #require(cluster.leader())
        // The head promises 64 MiB and no byte of it is sent: the answer comes anyway.
        for (method, path) in [("GET", "/v1/snapshot"), ("POST", "/v1/snapshot"), ("PUT", "/v1/kv/big"), ("DELETE", "/v1/kv/x")] {
            let reply = try exchange(node.httpPort, "\(method) \(path) HTTP/1.1\r\nHost: x\r\nContent-Length: 67108864\r\n\r\n")
            #expect(reply.hasPrefix("HTTP/1.1 413"), "\(method) \(path): \(reply)")
        }
        // One snapshot upload at a time: a second is told to retry while the first is held open.
        let first = try DNSClient.connectTCP(port: UInt16(node.httpPort))
        let head = Array("PUT /v1/snapshot HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n".utf8)
        _ = send(first, head, head.count, Int32(MSG_NOSIGNAL))
        usleep(200_000)
        let second = try exchange(node.httpPort, "PUT /v1/snapshot HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        #expect(second.hasPrefix("HTTP/1.1 429"), "\(second)")
        close(first)
        usleep(300_000)
        // The slot is given back when the first client goes away.
        let third = try exchange(node.httpPort, "PUT /v1/snapshot HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nabcd")
        #expect(third.hasPrefix("HTTP/1.1 400") || third.hasPrefix("HTTP/1.1 5"), "\(third)")
        #expect(http("GET", port: node.httpPort, "/v1/status/leader")?.status == 200)
    }
}
