import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// KV blocking queries are indexed by what they read (issue 13.5): a write wakes the queries of
/// its key and of the prefixes above it, and no others.
@Suite("KV blocking queries on a real discod", .serialized)
struct KVWatchProcessTests {
    typealias Cluster = ClusterProcessTests.ClusterFixture

    /// A parked `GET /v1/kv/PATH` on its own connection.
    func park(_ port: Int, _ path: String, index: String) throws -> Int32 {
        let fd = try DNSClient.connectTCP(port: UInt16(port))
        let separator = path.contains("?") ? "&" : "?"
        let request = Array("GET /v1/kv/\(path)\(separator)index=\(index)&wait=20s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".utf8)
        _ = send(fd, request, request.count, 0)
        return fd
    }

    func answered(_ fd: Int32, withinMilliseconds timeout: Int32) -> Bool {
        var polls = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0)]
        return poll(&polls, 1, timeout) > 0
    }

    @Test func aWriteWakesOnlyTheQueriesThatReadIt() throws {
        let cluster = try Cluster(size: 1)
        let node = try #require(cluster.leader())
        let port = node.httpPort
        for key in ["app/a", "app/b", "other/c"] { #expect(http("PUT", port: port, "/v1/kv/\(key)", body: "1")?.body == "true") }
        let index = try #require(http("GET", port: port, "/v1/kv/other/c")?.headers["x-consul-index"])

        let keyA = try park(port, "app/a", index: index)
        let prefixApp = try park(port, "app/?recurse", index: index)
        let keyC = try park(port, "other/c", index: index)
        defer { [keyA, prefixApp, keyC].forEach { close($0) } }
        #expect(waitUntil(seconds: 5) {
            http("GET", port: port, "/metrics")?.body.contains("disco_blocking_queries 3") == true
        })

        // A key nobody reads: nothing wakes.
        #expect(http("PUT", port: port, "/v1/kv/elsewhere", body: "2")?.body == "true")
        #expect(!answered(keyA, withinMilliseconds: 400) && !answered(prefixApp, withinMilliseconds: 10)
                && !answered(keyC, withinMilliseconds: 10))

        // app/b: the prefix query wakes, the query of app/a sleeps on.
        #expect(http("PUT", port: port, "/v1/kv/app/b", body: "2")?.body == "true")
        #expect(answered(prefixApp, withinMilliseconds: 3000))
        #expect(!answered(keyA, withinMilliseconds: 400) && !answered(keyC, withinMilliseconds: 10))

        // Deleting the tree other/ wakes the query of other/c.
        #expect(http("DELETE", port: port, "/v1/kv/other/?recurse")?.body == "true")
        #expect(answered(keyC, withinMilliseconds: 3000))
        #expect(!answered(keyA, withinMilliseconds: 300))

        #expect(http("PUT", port: port, "/v1/kv/app/a", body: "3")?.body == "true")
        #expect(answered(keyA, withinMilliseconds: 3000))
        #expect(readUntilClosed(keyA).contains("Mw=="))  // the new value, "3"
    }
}
