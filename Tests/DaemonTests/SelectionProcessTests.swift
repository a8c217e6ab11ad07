import DNSWire
import Dispatch
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Large services on a real discod: answered over UDP and TCP with records and never TC, a
/// different random subset per query.
@Suite("service answers on discod", .serialized)
struct SelectionProcessTests {
    typealias Cluster = ClusterProcessTests.ClusterFixture

    static let name = try! DomainName("big.service.disco.")

    /// Registers `count` instances of `big`, one node each (address 10.2.x.y), through the
    /// catalog endpoint with `concurrency` clients; returns how many were refused.
    func register(_ count: Int, httpPort: Int, concurrency: Int = 16) -> Int {
        final class Failures: @unchecked Sendable {
            let lock = NSLock()
            var count = 0
        }
        let failures = Failures()
        DispatchQueue.concurrentPerform(iterations: concurrency) { worker in
            for i in stride(from: worker, to: count, by: concurrency) {
                let body = #"{"Node": "n\#(i)", "Address": "10.2.\#(i >> 8).\#(i & 255)", "#
                    + #""Service": {"Service": "big", "ID": "big-\#(i)", "Port": 80}}"#
                if http("PUT", port: httpPort, "/v1/catalog/register", body: body)?.status != 200 {
                    failures.lock.withLock { failures.count += 1 }
                }
            }
        }
        return failures.count
    }

    static func index(_ record: ResourceRecord) -> Int? {
        guard case .a(let a) = record.rdata else { return nil }
        return Int(a.array[2]) << 8 | Int(a.array[3])
    }

    /// Waits until a TCP answer holds `expected` records (the View has them all).
    func waitForAnswers(_ expected: Int, port: UInt16, seconds: Double = 60) -> Bool {
        waitUntil(seconds: seconds) {
            (try? DNSClient.tcp([Message.query(Self.name, .a, id: 1)], port: port).first?.answers.count) == expected
        }
    }

    @Test func threeHundredInstancesAnswerOverUDPWithAndWithoutEDNS() throws {
        let cluster = try Cluster(size: 1)
        let node = cluster.nodes[0]
        _ = try #require(cluster.leader())
        #expect(register(300, httpPort: node.httpPort) == 0)
        let port = try #require(node.process?.port)
        #expect(waitForAnswers(300, port: port))
        for edns in [EDNS(), nil] {
            var seen = Set<Int>()
            for id in 0..<300 {
                let answer = try DNSClient.udp(Message.query(Self.name, .a, id: UInt16(id), edns: edns), port: port)
                #expect(answer.rcode == .noError)
                #expect(!answer.flags.tc, "TC set (EDNS \(edns != nil))")
                #expect(answer.answers.count >= (edns == nil ? 25 : 70), "\(answer.answers.count) records (EDNS \(edns != nil))")
                seen.formUnion(answer.answers.compactMap(Self.index))
            }
            // Random subsets: 300 queries of ~30 or ~74 records cover nearly all 300.
            #expect(seen.count >= 270, "\(seen.count) of 300 instances answered (EDNS \(edns != nil))")
            let srv = try DNSClient.udp(Message.query(try DomainName("_big._tcp.service.disco."), .srv, id: 1, edns: edns), port: port)
            #expect(!srv.flags.tc && !srv.answers.isEmpty)
        }
    }

    @Test func thirteenThousandInstancesAnswerOverUDPAndTCP() throws {
        let cluster = try Cluster(size: 1)
        let node = cluster.nodes[0]
        _ = try #require(cluster.leader())
        #expect(register(13_000, httpPort: node.httpPort, concurrency: 32) == 0)
        let port = try #require(node.process?.port)
        #expect(waitUntil(seconds: 60) {
            http("GET", port: node.httpPort, "/metrics")?.body.contains("disco_catalog_instances 13000") == true
        })
        // TCP: as many as 64 KiB hold (about 4,000 A records), never TC.
        var tcpSeen = Set<Int>()
        #expect(waitUntil(seconds: 30) {
            (try? DNSClient.tcp([Message.query(Self.name, .a, id: 1)], port: port).first?.answers.count ?? 0) ?? 0 > 3_500
        })
        for answer in try DNSClient.tcp((0..<3).map { Message.query(Self.name, .a, id: UInt16($0)) }, port: port) {
            #expect(answer.rcode == .noError && !answer.flags.tc)
            #expect(answer.answers.count > 3_500 && answer.answers.count < 13_000)
            tcpSeen.formUnion(answer.answers.compactMap(Self.index))
        }
        #expect(tcpSeen.count > 4_000, "three TCP answers are different subsets")
        for edns in [EDNS(), nil] {
            let answer = try DNSClient.udp(Message.query(Self.name, .a, id: 2, edns: edns), port: port)
            #expect(answer.rcode == .noError && !answer.flags.tc)
            #expect(answer.answers.count >= 25)
        }
        let srv = try DNSClient.tcp([Message.query(try DomainName("_big._tcp.service.disco."), .srv, id: 3)], port: port)
        #expect(srv.first.map { !$0.flags.tc && $0.answers.count > 1_000 } == true)
    }
}
