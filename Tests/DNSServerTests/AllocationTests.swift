import DNSServer
import DNSTesting
import DNSWire
import DNSZone
import MallocCounter
import RateLimit
import Testing

#if DEBUG
private let optimized = false
#else
private let optimized = true
#endif

/// DESIGN.md contract: the answer path does not allocate per query in the steady state.
///
/// Measured in optimised builds, the way discod runs: unoptimised (debug) code boxes generic
/// values on the heap. `.ci/run` runs this suite with `swift test -c release`.
/// Serialized: the counter sets Swift Testing's throw hooks aside process-wide while it counts
/// (a throw would allocate a backtrace), so one test stopping must not put them back while
/// another counts answers that throw internally (a full buffer).
@Suite("answer path allocations", .serialized)
struct AllocationTests {
    static let zone = """
        $TTL 300
        @      SOA ns1 hostmaster 1 7200 900 1209600 60
               NS  ns1
        ns1    A   192.0.2.53
        www    A   192.0.2.10
               A   192.0.2.11
        alias  CNAME www
        mail   MX  10 ns1
        _s._tcp SRV 1 1 80 www
        *.wild A   192.0.2.80
        sub    NS  ns.sub
        ns.sub A   192.0.2.99
        old    DNAME new
        x.new  A   192.0.2.1
        many   TXT "\(String(repeating: "x", count: 250))" "\(String(repeating: "y", count: 250))"
               TXT "\(String(repeating: "z", count: 250))"
        """

    @Test(.enabled(if: optimized, "debug builds allocate in unoptimised code; run with swift test -c release"))
    func answeringDoesNotAllocate() throws {
        let view = View(zones: [try Zone.parse(text: Self.zone, origin: try DomainName("example.test."))])
        let answerer = Answerer()
        let cases: [(String, RRType, Bool)] = [
            ("www.example.test.", .a, true), ("WWW.EXAMPLE.TEST.", .a, true), ("alias.example.test.", .a, true),
            ("example.test.", .mx, true), ("mail.example.test.", .mx, true), ("_s._tcp.example.test.", .srv, true),
            ("nope.example.test.", .a, true), ("www.example.test.", .aaaa, true), ("a.b.wild.example.test.", .a, true),
            ("deep.sub.example.test.", .a, true), ("y.x.old.example.test.", .a, true), ("many.example.test.", .txt, false),
            ("example.org.", .a, true), ("www.example.test.", .any, true), ("example.test.", .soa, false),
        ]
        var queries: [[UInt8]] = try cases.map { name, type, edns in
            try Message.query(try DomainName(name), type, edns: edns ? EDNS() : nil).serialized()
        }
        queries.append([0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0])  // two questions, none present: FORMERR
        var output = [UInt8](repeating: 0, count: 65535)
        var lengths = [Int](repeating: 0, count: queries.count)
        try output.withUnsafeMutableBytes { out in
            // Warm up: first calls may resolve lazily-initialised runtime metadata.
            for query in queries {
                _ = query.withUnsafeBytes { answerer.answer(query: $0, into: out, view: view, transport: .udp) }
            }
            disco_malloc_counting_start()
            for _ in 0..<100 {
                for (index, query) in queries.enumerated() {
                    lengths[index] = query.withUnsafeBytes { answerer.answer(query: $0, into: out, view: view, transport: .udp) }
                }
            }
            let allocations = disco_malloc_counting_stop()
            #expect(allocations == 0, "\(allocations) allocations for \(100 * queries.count) answers")
            _ = try #require(lengths.allSatisfy { $0 > 0 })
        }
    }

    /// The UDP worker's whole per-datagram path: query rate limit, answer, RRL (limiting, slipping).
    @Test(.enabled(if: optimized, "debug builds allocate in unoptimised code; run with swift test -c release"))
    func answeringWithLimitsDoesNotAllocate() throws {
        let view = View(zones: [try Zone.parse(text: Self.zone, origin: try DomainName("example.test."))])
        let answerer = Answerer(cache: true)
        let rrl = ResponseRateLimiter(ResponseRateLimiter.Configuration(responsesPerSecond: 5, tableEntries: 1024)).makeWorker()
        let queries = QueryRateLimiter(QueryRateLimiter.Configuration(queriesPerSecond: 1000, tableEntries: 1024))
        let packets: [[UInt8]] = try [("www.example.test.", RRType.a), ("nope.example.test.", .a), ("deep.sub.example.test.", .a),
                                      ("example.org.", .a), ("www.example.test.", .aaaa)].map { name, type in
            try Message.query(try DomainName(name), type, edns: EDNS()).serialized()
        }
        let clients = [ClientAddress("192.0.2.1")!, ClientAddress("2001:db8::1")!]
        var output = [UInt8](repeating: 0, count: 65535)
        var sent = 0
        output.withUnsafeMutableBytes { out in
            func round(_ now: UInt32) {
                for packet in packets {
                    for client in clients where queries.admit(client, nowMilliseconds: now) {
                        let length = packet.withUnsafeBytes { answerer.answer(query: $0, into: out, view: view, transport: .udp) }
                        if case .send = rrl.decide(response: out, length: length, client: client, nowMilliseconds: now) { sent += 1 }
                    }
                }
            }
            round(0)
            disco_malloc_counting_start()
            for now in 1...100 { round(UInt32(now)) }
            let allocations = disco_malloc_counting_stop()
            #expect(allocations == 0, "\(allocations) allocations")
        }
        #expect(sent > 0)
    }

    /// Service answers are picked per query (shuffled, drawn from a large set, ramped, in
    /// panic), after the cache: still no allocation once the worker has seen the largest set.
    @Test(.enabled(if: optimized, "debug builds allocate in unoptimised code; run with swift test -c release"),
          arguments: [SelectionPolicy.shuffle, .roundRobin])
    func pickingServiceAnswersDoesNotAllocate(policy: SelectionPolicy) throws {
        var small = ServiceFixture(count: 10, weights: (0..<10).map { UInt32($0 % 3) + 1 })
        small.since = (0..<10).map { $0 == 0 ? 1_000 : 0 }
        small.slowStartMilliseconds = 30_000
        var panicking = ServiceFixture(count: 10, healthy: 2)
        panicking.panicThresholdPercent = 50
        var large = ServiceFixture(count: 13_000, weights: (0..<13_000).map { UInt32($0 % 2) + 1 })
        large.since = (0..<13_000).map { $0 % 100 == 0 ? 1_000 : 0 }
        large.slowStartMilliseconds = 30_000
        let views = [try small.view(), try panicking.view(), try large.view(), try ServiceFixture(count: 13_000).view()]
        let answerer = Answerer(cache: true, selection: SelectionOptions(policy: policy, ttlJitterPercent: 10), seed: 1)
        answerer.clock = { 2_000 }
        var queries: [[UInt8]] = []
        for (name, type) in [(ServiceFixture.name, RRType.a), (ServiceFixture.name, .aaaa), (ServiceFixture.srvName, .srv)] {
            for edns in [EDNS(), nil] { queries.append(try Message.query(name, type, edns: edns).serialized()) }
        }
        var output = [UInt8](repeating: 0, count: 65535)
        try output.withUnsafeMutableBytes { out in
            func answerAll() -> Bool {
                var answered = true
                for view in views {
                    for query in queries {
                        for transport in [Transport.udp, .tcp] {
                            let length = query.withUnsafeBytes { answerer.answer(query: $0, into: out, view: view, transport: transport) }
                            // Answered, not truncated (TC is bit 1 of byte 2).
                            answered = answered && length > 0 && out[2] & 0x02 == 0
                        }
                    }
                }
                return answered
            }
            _ = answerAll()  // warm-up: the largest set grows the picker's stamps once
            disco_malloc_counting_start()
            var answered = true
            for _ in 0..<20 { answered = answerAll() && answered }
            let allocations = disco_malloc_counting_stop()
            #expect(allocations == 0, "\(allocations) allocations for \(20 * views.count * queries.count * 2) service answers")
            _ = try #require(answered)
        }
        #expect(answerer.panicAnswers > 0)
    }

    @Test func theCounterSeesAllocations() {
        // The counter itself must work, or the test above proves nothing.
        disco_malloc_counting_start()
        let array = [Int](repeating: 1, count: Int.random(in: 100...200))
        let allocations = disco_malloc_counting_stop()
        #expect(allocations >= 1)
        #expect(array.count >= 100)
    }
}
