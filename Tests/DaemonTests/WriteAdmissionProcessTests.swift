import Foundation
import Testing

/// Write admission on a real discod (issue 13.4): writes over the rate get 429 and a
/// Retry-After, never a reset or a 5xx; a re-registration that changes nothing costs no token.
@Suite("write admission on a real discod", .serialized)
struct WriteAdmissionProcessTests {
    typealias Cluster = ClusterProcessTests.ClusterFixture

    @Test func writesOverTheRateGet429AndNoOpsAreFree() throws {
        let cluster = try Cluster(size: 3, environment: [
            "DISCO_HTTP_WRITE_LIMIT_WRITES_PER_SECOND": "2", "DISCO_HTTP_WRITE_LIMIT_BURST": "5",
        ])
        let leader = try #require(cluster.leader())
        let follower = try #require(cluster.nodes.first { $0 !== leader })
        let body = #"{"Name": "web", "ID": "web-1", "Address": "10.0.0.1", "Port": 80}"#
        #expect(http("PUT", port: leader.httpPort, "/v1/agent/service/register", body: body)?.status == 200)

        // A burst of real writes, through the leader and forwarded by a follower.
        var statuses: [Int] = []
        var retryAfter: [Int] = []
        for i in 0..<20 {
            let node = i.isMultiple(of: 2) ? leader : follower
            let reply = http("PUT", port: node.httpPort, "/v1/kv/burst/\(i)", body: "\(i)")
            statuses.append(reply?.status ?? -1)
            if let seconds = reply?.headers["retry-after"].flatMap({ Int($0) }) { retryAfter.append(seconds) }
        }
        #expect(statuses.allSatisfy { $0 == 200 || $0 == 429 }, "\(statuses)")
        #expect(statuses.filter { $0 == 200 }.count <= 8, "\(statuses)")
        #expect(statuses.filter { $0 == 429 }.count >= 10, "\(statuses)")
        #expect(retryAfter.count == statuses.filter { $0 == 429 }.count && retryAfter.allSatisfy { $0 >= 1 })

        // The buckets are empty, yet re-registering what is already there is answered: no token.
        for _ in 0..<10 {
            #expect(http("PUT", port: leader.httpPort, "/v1/agent/service/register", body: body)?.status == 200)
        }
        let metrics = http("GET", port: leader.httpPort, "/metrics")?.body ?? ""
        #expect(metrics.contains("disco_http_writes_refused_total{limit=\"global\"} "), "\(metrics)")
        #expect(!metrics.contains("disco_http_writes_refused_total{limit=\"global\"} 0\n"))
        // Shedding is one log line when it starts, not one per refused write (issue 17).
        let log = leader.process?.stderr ?? ""
        #expect(log.components(separatedBy: "write admission is refusing writes").count - 1 == 1, "\(log)")
        #expect(metrics.contains("disco_http_requests_total{route=\"/v1/kv\",method=\"PUT\",code=\"429\"}"))
    }
}
