import Foundation
import DNSWire
import MallocCounter
import Testing
import RateLimit

#if DEBUG
private let optimized = false
#else
private let optimized = true
#endif

/// Responses as the answer path writes them, built with DNSWire.
enum Responses {
    static let soa = RData.soa(SOAData(mname: try! DomainName("ns1.example.test."), rname: try! DomainName("hostmaster.example.test."),
                                       serial: 1, refresh: 7200, retry: 900, expire: 1_209_600, minimum: 60))

    static func make(_ qname: String, _ qtype: RRType = .a, rcode: RCode = .noError, aa: Bool = true,
                     answers: [ResourceRecord] = [], authority: [ResourceRecord] = []) -> [UInt8] {
        var flags = HeaderFlags(rawValue: 0)
        flags.qr = true
        flags.aa = aa
        flags.rcodeBits = UInt8(rcode.rawValue & 0xF)
        let message = Message(id: 7, flags: flags, questions: [Question(name: try! DomainName(qname), type: qtype)],
                              answers: answers, authority: authority, edns: EDNS())
        return try! message.serialized()
    }

    static func answer(_ qname: String, _ qtype: RRType = .a) -> [UInt8] {
        make(qname, qtype, answers: [ResourceRecord(name: try! DomainName(qname), ttl: 300, rdata: .a(IPv4Address(192, 0, 2, 1)))])
    }

    static func nodata(_ qname: String) -> [UInt8] {
        make(qname, .aaaa, authority: [ResourceRecord(name: try! DomainName("example.test."), ttl: 60, rdata: soa)])
    }

    static func nxdomain(_ qname: String, zone: String = "example.test.") -> [UInt8] {
        make(qname, rcode: .nxDomain, authority: [ResourceRecord(name: try! DomainName(zone), ttl: 60, rdata: soa)])
    }

    static func referral(_ qname: String, cut: String) -> [UInt8] {
        make(qname, aa: false, authority: [ResourceRecord(name: try! DomainName(cut), ttl: 300,
                                                          rdata: .ns(try! DomainName("ns." + cut)))])
    }

    static func refused(_ qname: String) -> [UInt8] { make(qname, rcode: .refused, aa: false) }
}

/// A limiter and one worker, with a clock the test moves.
final class Harness {
    let limiter: ResponseRateLimiter
    let worker: ResponseRateLimiter.Worker
    var now: UInt32 = 1_000

    init(_ configuration: ResponseRateLimiter.Configuration) {
        limiter = ResponseRateLimiter(configuration, seed: 42)
        worker = limiter.makeWorker()
    }

    convenience init(rate: Int = 10, window: Int = 2, slip: Int = 2, exempt: [String] = [], logOnly: Bool = false,
                     entries: Int = 1024) {
        self.init(ResponseRateLimiter.Configuration(responsesPerSecond: rate, windowSeconds: window, slip: slip,
                                                    exempt: exempt.map { ClientNetwork($0)! }, logOnly: logOnly,
                                                    tableEntries: entries))
    }

    /// Sends `response` to `client`: what would go out.
    func send(_ response: [UInt8], to client: String) -> ResponseRateLimiter.Decision {
        var bytes = response
        return bytes.withUnsafeMutableBytes {
            worker.decide(response: $0, length: response.count, client: ClientAddress(client)!, nowMilliseconds: now)
        }
    }

    /// Sends it `count` times; how many were sent whole.
    func sent(_ response: [UInt8], to client: String, times count: Int) -> Int {
        (0..<count).filter { _ in send(response, to: client) == .send }.count
    }
}

@Suite("RRL buckets")
struct BucketTests {
    @Test func aBurstOfTheRatePassesThenResponsesAreLimited() {
        let h = Harness(rate: 10)
        #expect(h.sent(Responses.answer("www.example.test."), to: "192.0.2.1", times: 25) == 10)
        #expect(h.limiter.counters.limited == 15)
    }

    @Test func creditComesBackAtTheRate() {
        let h = Harness(rate: 10, window: 1)
        let response = Responses.answer("www.example.test.")
        #expect(h.sent(response, to: "192.0.2.1", times: 10) == 10)
        // 300 ms earn 3 responses.
        h.now += 300
        #expect(h.sent(response, to: "192.0.2.1", times: 5) == 3)
    }

    @Test func aFloodRunsUpDebtThatTakesTheWindowToPayOff() {
        let h = Harness(rate: 10, window: 3)
        let response = Responses.answer("www.example.test.")
        // 10 s of flood at 100/s: all limited after the first second's credit.
        for _ in 0..<100 {
            _ = h.sent(response, to: "192.0.2.1", times: 10)
            h.now += 100
        }
        #expect(h.sent(response, to: "192.0.2.1", times: 1) == 0)
        // Silent for 2 s: still in debt (3 s × 10/s deep, 2 s × 10/s paid).
        h.now += 2_000
        #expect(h.sent(response, to: "192.0.2.1", times: 1) == 0)
        // After the window and a second more of credit, answered again.
        h.now += 2_000
        #expect(h.sent(response, to: "192.0.2.1", times: 1) == 1)
    }

    @Test func aClientUnderTheRateIsNeverLimited() {
        let h = Harness(rate: 10)
        let response = Responses.answer("www.example.test.")
        for _ in 0..<200 {
            #expect(h.send(response, to: "192.0.2.1") == .send)
            h.now += 110
        }
        #expect(h.limiter.counters.limited == 0)
    }
}

@Suite("RRL classes")
struct ClassTests {
    @Test(arguments: [
        (Responses.answer("a.example.test."), ResponseClass.answer),
        (Responses.nodata("a.example.test."), .nodata),
        (Responses.nxdomain("a.example.test."), .nxdomain),
        (Responses.referral("x.sub.example.test.", cut: "sub.example.test."), .referral),
        (Responses.refused("a.example.org."), .error),
        (Responses.make("a.example.test.", rcode: .formErr), .error),
    ])
    func classification(response: [UInt8], expected: ResponseClass) {
        let found = response.withUnsafeBytes { ResponseClassifier.classify($0).responseClass }
        #expect(found == expected)
    }

    @Test func answersForDifferentNamesAreCountedApart() {
        let h = Harness(rate: 5)
        #expect(h.sent(Responses.answer("a.example.test."), to: "192.0.2.1", times: 8) == 5)
        #expect(h.sent(Responses.answer("b.example.test."), to: "192.0.2.1", times: 8) == 5)
        // Another type of the same name is another bucket too.
        #expect(h.sent(Responses.answer("a.example.test.", .mx), to: "192.0.2.1", times: 8) == 5)
        // Names compare case-insensitively.
        #expect(h.sent(Responses.answer("A.Example.TEST."), to: "192.0.2.1", times: 1) == 0)
    }

    @Test func nxdomainForRandomNamesSharesTheZonesBucket() {
        let h = Harness(rate: 5)
        let sent = (0..<20).filter { h.send(Responses.nxdomain("r\($0).example.test."), to: "192.0.2.1") == .send }.count
        #expect(sent == 5)
        // Another zone has its own bucket.
        #expect(h.sent(Responses.nxdomain("r1.other.test.", zone: "other.test."), to: "192.0.2.1", times: 1) == 1)
    }

    @Test func referralsShareTheDelegationsBucket() {
        let h = Harness(rate: 5)
        let sent = (0..<20).filter { h.send(Responses.referral("h\($0).sub.example.test.", cut: "sub.example.test."),
                                            to: "192.0.2.1") == .send }.count
        #expect(sent == 5)
    }

    @Test func nodataIsPerName() {
        let h = Harness(rate: 5)
        #expect(h.sent(Responses.nodata("a.example.test."), to: "192.0.2.1", times: 8) == 5)
        #expect(h.sent(Responses.nodata("b.example.test."), to: "192.0.2.1", times: 8) == 5)
    }

    @Test func errorsArePerClientWhateverTheName() {
        let h = Harness(rate: 5)
        let sent = (0..<20).filter { h.send(Responses.refused("n\($0).example.org."), to: "192.0.2.1") == .send }.count
        #expect(sent == 5)
    }

    /// Answers synthesized from one wildcard share its bucket, whatever the name asked: a
    /// random-subdomain flood under `*.example.test.` is limited like one name.
    @Test func answersFromAWildcardShareTheWildcardsBucket() {
        let h = Harness(rate: 5)
        let wildcard = try! DomainName("*.Example.test.").wire
        func sendFromWildcard(_ qname: String, _ qtype: RRType = .a) -> ResponseRateLimiter.Decision {
            var bytes = Responses.answer(qname, qtype)
            let count = bytes.count
            return bytes.withUnsafeMutableBytes { response in
                wildcard.withUnsafeBytes {
                    h.worker.decide(response: response, length: count, client: ClientAddress("192.0.2.1")!,
                                    nowMilliseconds: h.now, wildcard: $0)
                }
            }
        }
        #expect((0..<20).filter { sendFromWildcard("r\($0).example.test.") == .send }.count == 5)
        // Another type under the wildcard has its own bucket; so do names answered without it.
        #expect((0..<3).filter { sendFromWildcard("r\($0).example.test.", .txt) == .send }.count == 3)
        #expect(h.sent(Responses.answer("r1.example.test."), to: "192.0.2.1", times: 3) == 3)
    }

    @Test func classesDoNotShareBuckets() {
        let h = Harness(rate: 5)
        #expect(h.sent(Responses.nxdomain("x.example.test."), to: "192.0.2.1", times: 10) == 5)
        #expect(h.sent(Responses.answer("x.example.test."), to: "192.0.2.1", times: 10) == 5)
    }
}

@Suite("RRL slip")
struct SlipTests {
    @Test(arguments: [(0, 0), (1, 20), (2, 10), (3, 6)])
    func everyNthLimitedResponseIsTruncated(slip: Int, truncated: Int) {
        let h = Harness(rate: 5, slip: slip)
        let response = Responses.answer("www.example.test.")
        _ = h.sent(response, to: "192.0.2.1", times: 5)
        let decisions = (0..<20).map { _ in h.send(response, to: "192.0.2.1") }
        let slipped = decisions.filter { if case .slip = $0 { true } else { false } }.count
        #expect(slipped == truncated)
        #expect(decisions.filter { $0 == .drop }.count == 20 - truncated)
        #expect(h.limiter.counters.slipped == truncated)
        #expect(h.limiter.counters.dropped == 20 - truncated)
    }

    @Test func aSlippedResponseIsTheQuestionWithTCAndNothingElse() throws {
        let h = Harness(rate: 1, slip: 1)
        var response = Responses.nxdomain("www.example.test.")
        _ = h.send(response, to: "192.0.2.1")
        let count = response.count
        let decision = response.withUnsafeMutableBytes {
            h.worker.decide(response: $0, length: count, client: ClientAddress("192.0.2.1")!, nowMilliseconds: h.now)
        }
        guard case .slip(let length) = decision else {
            Issue.record("expected a slip, got \(decision)")
            return
        }
        #expect(length < Responses.nxdomain("www.example.test.").count)
        let message = try Message(parsing: Array(response[0..<length]))
        #expect(message.flags.tc)
        #expect(message.flags.qr)
        #expect(message.id == 7)
        #expect(message.rcode == .noError)
        #expect(message.questions.first?.name == (try DomainName("www.example.test.")))
        #expect(message.answers.isEmpty && message.authority.isEmpty && message.additional.isEmpty)
    }
}

@Suite("RRL client networks")
struct PrefixTests {
    @Test func ipv4AddressesOfOneSlash24ShareABucket() {
        let h = Harness(rate: 5)
        let response = Responses.answer("www.example.test.")
        let sent = (0..<20).filter { h.send(response, to: "192.0.2.\($0 * 12)") == .send }.count
        #expect(sent == 5)
        #expect(h.sent(response, to: "192.0.3.1", times: 1) == 1)
    }

    @Test func ipv6AddressesOfOneSlash56ShareABucket() {
        let h = Harness(rate: 5)
        let response = Responses.answer("www.example.test.")
        // 2001:db8:0:ff00::/56 holds …:ff00: to …:ffff:.
        let sent = (0..<20).filter { i in
            let byte = String(i, radix: 16)
            return h.send(response, to: "2001:db8:0:ff\(byte.count == 1 ? "0" + byte : byte):1::\(i)") == .send
        }.count
        #expect(sent == 5)
        #expect(h.sent(response, to: "2001:db8:0:fe00::1", times: 1) == 1)
    }

    @Test func prefixLengthsAreConfigurable() {
        var configuration = ResponseRateLimiter.Configuration(responsesPerSecond: 5, tableEntries: 1024)
        configuration.ipv4PrefixLength = 32
        let h = Harness(configuration)
        let response = Responses.answer("www.example.test.")
        #expect(h.sent(response, to: "192.0.2.1", times: 10) == 5)
        #expect(h.sent(response, to: "192.0.2.2", times: 10) == 5)
    }

    @Test func addressesAndNetworks() {
        #expect(ClientAddress("192.0.2.1")!.isIPv4)
        #expect(ClientAddress("::ffff:192.0.2.1") == ClientAddress("192.0.2.1"))
        #expect(!ClientAddress("2001:db8::1")!.isIPv4)
        #expect(ClientAddress("192.0.2.77")!.prefix(ipv4: 24, ipv6: 56).description == "192.0.2.0")
        #expect(ClientAddress("2001:db8:1:2345::1")!.prefix(ipv4: 24, ipv6: 56).description == "2001:db8:1:2300::")
        #expect(ClientNetwork("10.0.0.0/8")!.contains(ClientAddress("10.200.1.1")!))
        #expect(!ClientNetwork("10.0.0.0/8")!.contains(ClientAddress("11.0.0.1")!))
        #expect(ClientNetwork("2001:db8::/32")!.contains(ClientAddress("2001:db8:ffff::1")!))
        #expect(ClientNetwork("192.0.2.1")!.description == "192.0.2.1/32")
        #expect(ClientNetwork("10.0.0.1/8") == nil, "host bits set")
        #expect(ClientNetwork("10.0.0.0/33") == nil)
        #expect(ClientNetwork("nonsense/8") == nil)
    }
}

@Suite("RRL table, exemption, log-only")
struct TableTests {
    @Test func aPrefixStormEvictsWithinAFixedTable() {
        let h = Harness(rate: 5, entries: 64)
        #expect(h.limiter.table.entries == 64)
        let response = Responses.answer("www.example.test.")
        // 10,000 networks, all active within the window: the 64 slots are recycled.
        for i in 0..<10_000 {
            _ = h.send(response, to: "10.\(i >> 8 & 0xFF).\(i & 0xFF).1")
        }
        #expect(h.limiter.counters.evictions > 9_000)
        #expect(h.limiter.table.entries == 64)
        // A recently seen network's bucket outlives the storm's older entries.
        #expect(h.limiter.counters.limited == 0)
    }

    @Test func aTableTakesMemoryOnlyWhereBucketsLand() throws {
        // 2²⁴ slots = 256 MiB of address space: resident only for the pages that buckets use
        // (other tests run beside this one, so the bound leaves them room).
        let before = try #require(residentKiB())
        let table = RateTable(entries: 1 << 24, policy: BucketPolicy(ratePerSecond: 5, windowSeconds: 15))
        for key in 1...1_000 as ClosedRange<UInt64> {
            #expect(!table.record(key: key &* 0x9E37_79B9_7F4A_7C15, nowMilliseconds: 1_000).limited)
        }
        let after = try #require(residentKiB())
        #expect(table.entries == 1 << 24)
        #expect(after - before < 64 << 10, "a 256 MiB table made \(after - before) KiB resident")
    }

    /// This process's resident memory in KiB (VmRSS).
    private func residentKiB() -> Int? {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return nil }
        return status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") }
            .flatMap { Int($0.split(separator: " ", omittingEmptySubsequences: true)[1]) }
    }

    @Test func idleBucketsAreReusedWithoutCountingEvictions() {
        let h = Harness(rate: 5, window: 1, entries: 64)
        let response = Responses.answer("www.example.test.")
        for i in 0..<16 { _ = h.send(response, to: "10.0.\(i).1") }
        let evictionsFilling = h.limiter.counters.evictions
        h.now += 3_000
        for i in 0..<16 { _ = h.send(response, to: "10.1.\(i).1") }
        // Every bucket of the first round is idle past the window: reused, not evicted.
        #expect(h.limiter.counters.evictions == evictionsFilling)
    }

    @Test func exemptNetworksAreNeverLimited() {
        let h = Harness(rate: 5, exempt: ["192.0.2.0/24", "2001:db8::/32"])
        let response = Responses.answer("www.example.test.")
        #expect(h.sent(response, to: "192.0.2.9", times: 50) == 50)
        #expect(h.sent(response, to: "2001:db8::9", times: 50) == 50)
        #expect(h.sent(response, to: "198.51.100.9", times: 50) == 5)
    }

    @Test func logOnlyCountsButSendsEverything() {
        let h = Harness(rate: 5, logOnly: true)
        let response = Responses.answer("www.example.test.")
        #expect(h.sent(response, to: "192.0.2.1", times: 50) == 50)
        #expect(h.limiter.counters.limited == 45)
        #expect(h.limiter.counters.dropped == 0 && h.limiter.counters.slipped == 0)
        #expect(h.worker.takeLimitingNotice()?.prefix.description == "192.0.2.0")
    }

    @Test func theFirstLimitedResponseOfARunIsNoticedOnce() {
        let h = Harness(rate: 5)
        _ = h.sent(Responses.answer("www.example.test."), to: "192.0.2.1", times: 50)
        let notice = h.worker.takeLimitingNotice()
        #expect(notice?.prefix.description == "192.0.2.0")
        #expect(notice?.responseClass == .answer)
        #expect(notice?.starts == 1)
        #expect(h.worker.takeLimitingNotice() == nil)
    }

    @Test func disabledSendsEverything() {
        var configuration = ResponseRateLimiter.Configuration(responsesPerSecond: 1, tableEntries: 64)
        configuration.enabled = false
        let h = Harness(configuration)
        #expect(h.sent(Responses.answer("www.example.test."), to: "192.0.2.1", times: 50) == 50)
    }

    @Test func countersAreSummedOverWorkers() {
        let h = Harness(rate: 5)
        let second = h.limiter.makeWorker()
        var response = Responses.answer("www.example.test.")
        _ = h.sent(response, to: "192.0.2.1", times: 10)
        for _ in 0..<10 {
            _ = response.withUnsafeMutableBytes {
                second.decide(response: $0, length: $0.count, client: ClientAddress("192.0.2.1")!, nowMilliseconds: h.now)
            }
            response = Responses.answer("www.example.test.")
        }
        // The workers share the table: 5 in all, not 5 each.
        #expect(h.limiter.counters.limited == 15)
    }
}

@Suite("query rate limit")
struct QueryRateLimitTests {
    @Test func aNetworkGetsItsRateAndNoMore() {
        let limiter = QueryRateLimiter(QueryRateLimiter.Configuration(queriesPerSecond: 10, tableEntries: 64), seed: 1)
        let client = ClientAddress("192.0.2.1")!
        var now: UInt32 = 5
        #expect((0..<30).filter { _ in limiter.admit(client, nowMilliseconds: now) }.count == 10)
        // A token bucket without debt: a client over the rate still gets the rate through.
        var admitted = 0
        for _ in 0..<100 {
            now += 10
            admitted += (0..<5).filter { _ in limiter.admit(client, nowMilliseconds: now) }.count
        }
        #expect(admitted == 10)  // 1 s of 500 queries: 10 admitted
        #expect(limiter.admit(ClientAddress("192.0.3.1")!, nowMilliseconds: now))
    }

    @Test func offByDefaultAndExemptions() {
        let off = QueryRateLimiter(QueryRateLimiter.Configuration())
        #expect((0..<1000).allSatisfy { _ in off.admit(ClientAddress("192.0.2.1")!, nowMilliseconds: 1) })
        let on = QueryRateLimiter(QueryRateLimiter.Configuration(queriesPerSecond: 1, exempt: [ClientNetwork("127.0.0.0/8")!]))
        #expect((0..<1000).allSatisfy { _ in on.admit(ClientAddress("127.0.0.1")!, nowMilliseconds: 1) })
        #expect((0..<10).filter { _ in on.admit(ClientAddress("192.0.2.1")!, nowMilliseconds: 1) }.count == 1)
    }
}

/// DESIGN.md contract: RRL on the answer path allocates nothing (CI runs *AllocationTests in release).
@Suite("RRL allocations")
struct RRLAllocationTests {
    @Test(.enabled(if: optimized, "debug builds allocate in unoptimised code; run with swift test -c release"))
    func decidingDoesNotAllocate() {
        let h = Harness(rate: 5, entries: 1024)
        let responses = [Responses.answer("www.example.test."), Responses.nxdomain("x.example.test."),
                         Responses.referral("a.sub.example.test.", cut: "sub.example.test."), Responses.refused("x.org.")]
        var buffers = responses
        let client = ClientAddress("192.0.2.1")!
        for i in buffers.indices {
            _ = buffers[i].withUnsafeMutableBytes { h.worker.decide(response: $0, length: $0.count, client: client, nowMilliseconds: 1) }
        }
        disco_malloc_counting_start()
        for round in 0..<100 {
            for i in buffers.indices {
                _ = buffers[i].withUnsafeMutableBytes {
                    h.worker.decide(response: $0, length: $0.count, client: client, nowMilliseconds: UInt32(round))
                }
            }
        }
        let allocations = disco_malloc_counting_stop()
        #expect(allocations == 0)
    }
}
