import DNSServer
import DNSTesting
import DNSWire
import DNSZone
import Foundation
import Testing

/// Asks one question; returns the parsed response and its length.
func ask(_ answerer: Answerer, _ view: View, _ name: DomainName, _ type: RRType, edns: EDNS? = EDNS(),
         transport: Transport = .udp) throws -> (message: Message, length: Int) {
    let query = try Message.query(name, type, id: 9, edns: edns).serialized()
    var output = [UInt8](repeating: 0, count: 65535)
    let length = query.withUnsafeBytes { q in
        output.withUnsafeMutableBytes { answerer.answer(query: q, into: $0, view: view, transport: transport) }
    }
    return (try Message(parsing: Array(output[0..<length])), length)
}

@Suite("per-query selection of service answers")
struct SelectionTests {
    /// How often each record comes first over `queries` answers.
    func firstCounts(_ fixture: ServiceFixture, queries: Int, seed: UInt64, edns: EDNS? = EDNS(),
                     now: UInt64 = 0, cache: Bool = false) throws -> [Int] {
        let view = try fixture.view()
        let answerer = Answerer(cache: cache, seed: seed)
        answerer.clock = { now }
        var counts = [Int](repeating: 0, count: fixture.count)
        for _ in 0..<queries {
            let answer = try ask(answerer, view, ServiceFixture.name, .a, edns: edns).message
            let first = try #require(answer.answers.first.flatMap { ServiceFixture.index(of: $0.rdata) })
            counts[first] += 1
        }
        return counts
    }

    /// With the response cache too: a cached service answer is a template re-ordered per hit.
    @Test(arguments: [1, 2, 3] as [UInt64], [false, true])
    func everyInstanceLeadsAboutEquallyOften(seed: UInt64, cache: Bool) throws {
        let counts = try firstCounts(ServiceFixture(count: 10), queries: 1000, seed: seed, cache: cache)
        for (i, count) in counts.enumerated() {
            #expect((50...170).contains(count), "instance \(i) first \(count) times of 1000 (seed \(seed))")
        }
    }

    @Test func consecutiveQueriesGetDifferentOrders() throws {
        let view = try ServiceFixture(count: 10).view()
        let answerer = Answerer(seed: 7)
        var orders = Set<[String]>()
        for _ in 0..<20 {
            let answer = try ask(answerer, view, ServiceFixture.name, .a).message
            #expect(answer.answers.count == 10)
            orders.insert(answer.answers.map { "\($0.rdata)" })
        }
        #expect(orders.count >= 19)
    }

    @Test(arguments: [1, 2, 3] as [UInt64], [false, true])
    func aHeavierInstanceLeadsInProportion(seed: UInt64, cache: Bool) throws {
        let counts = try firstCounts(ServiceFixture(count: 2, weights: [9, 1]), queries: 1000, seed: seed, cache: cache)
        let ratio = Double(counts[0]) / Double(max(counts[1], 1))
        #expect(ratio >= 5 && ratio <= 16, "9:1 weights led \(counts) (seed \(seed))")
    }

    /// Weights 1, 2, 3, 4 over many queries: each leads in proportion, within 20%.
    @Test(arguments: [4, 200] as [Int])
    func weightsAreRespected(count: Int) throws {
        // In a small set every record is shuffled; a large one is drawn from (alias table).
        let weights = (0..<count).map { UInt32($0 % 4 + 1) }
        let counts = try firstCounts(ServiceFixture(count: count, weights: weights), queries: 8000, seed: 11, edns: nil)
        var byWeight = [Int](repeating: 0, count: 5)
        for (i, n) in counts.enumerated() { byWeight[Int(weights[i])] += n }
        let total = Double(byWeight.reduce(0, +))
        for w in 1...4 {
            let expected = total * Double(w) / 10
            #expect(abs(Double(byWeight[w]) - expected) < 0.2 * expected, "weight \(w): \(byWeight[w]) of \(Int(total)), expected \(expected)")
        }
    }

    /// Large sets answered over UDP are a random subset: over many queries every record shows.
    @Test func largeSetsAnswerDifferentSubsets() throws {
        let view = try ServiceFixture(count: 300).view()
        let answerer = Answerer(seed: 5)
        var seen = Set<Int>()
        for _ in 0..<100 {
            let answer = try ask(answerer, view, ServiceFixture.name, .a, edns: nil).message
            #expect(!answer.flags.tc)
            // (512 − header 12 − question 18) / 16 bytes per A record.
            #expect(answer.answers.count == 30)
            let indices = answer.answers.compactMap { ServiceFixture.index(of: $0.rdata) }
            #expect(Set(indices).count == indices.count, "a record answered twice")
            seen.formUnion(indices)
        }
        #expect(seen.count >= 290)
    }

    static let bufferSizes = [512, 700, 1232, 4096, 65535]
    static let setSizes = [1, 2, 28, 29, 30, 64, 65, 74, 75, 300, 4095, 13000, 20000]
    static let views: [Int: View] = {
        var views: [Int: View] = [:]
        for size in setSizes { views[size] = try! ServiceFixture(count: size).view() }
        return views
    }()

    /// Every buffer size gets as many records as fit, never TC, and no record twice.
    @Test(arguments: bufferSizes, setSizes)
    func answersFitTheBuffer(buffer: Int, size: Int) throws {
        let view = try #require(Self.views[size])
        // UDP with EDNS up to our payload size (raised to 4096 here), TCP for 65535.
        let transport: Transport = buffer > 4096 ? .tcp : .udp
        let answerer = Answerer(udpPayloadBytes: min(buffer, 4096), seed: UInt64(buffer * 31 + size))
        let edns: EDNS? = buffer == 512 ? nil : EDNS(udpPayloadSize: UInt16(min(buffer, 4096)))
        for (name, type, largest) in [(ServiceFixture.name, RRType.a, 16), (ServiceFixture.name, .aaaa, 28),
                                      (ServiceFixture.srvName, .srv, 12 + 6 + 2 + 8)] {
            let (answer, length) = try ask(answerer, view, name, type, edns: edns, transport: transport)
            #expect(answer.rcode == .noError)
            #expect(!answer.flags.tc, "\(type) of \(size) in \(buffer) bytes set TC")
            #expect(length <= buffer)
            let records = answer.answers.filter { $0.type == type }
            #expect(records.count >= 1)
            #expect(Set(records.map { "\($0.rdata)" }).count == records.count, "a record answered twice")
            // All of them, or no room for another (the OPT record was reserved).
            let opt = edns == nil ? 0 : 11
            #expect(records.count == size || length + opt + largest > buffer,
                    "\(type): \(records.count) of \(size) in \(length) of \(buffer) bytes")
            if type == .srv {
                // ADDITIONAL holds addresses of answered targets only (as many as fit).
                let answered = Set(records.compactMap { ServiceFixture.index(ofTarget: $0.rdata) })
                for extra in answer.additional where extra.type == .a && extra.name.description.hasSuffix(".node.svc.test.") {
                    let target = Int(extra.name.description.split(separator: ".").first!.dropFirst())
                    #expect(target.map { answered.contains($0) } ?? false, "\(extra.name) not an answered target")
                }
            }
        }
    }

    @Test func aRecordLimitCapsTheAnswer() throws {
        var fixture = ServiceFixture(count: 50)
        fixture.recordsMax = 3
        let answer = try ask(Answerer(), try fixture.view(), ServiceFixture.name, .a).message
        #expect(answer.answers.count == 3)
    }

    /// Panic: below the threshold every instance is answered, failing ones included.
    @Test(arguments: 0...10)
    func panicFlipsAtTheThreshold(healthy: Int) throws {
        var fixture = ServiceFixture(count: 10, healthy: healthy)
        fixture.panicThresholdPercent = 50
        let answerer = Answerer(seed: UInt64(healthy))
        let view = try fixture.view()
        var failingSeen = false
        for _ in 0..<20 {
            let answer = try ask(answerer, view, ServiceFixture.name, .a).message
            let indices = answer.answers.compactMap { ServiceFixture.index(of: $0.rdata) }
            failingSeen = failingSeen || indices.contains { $0 >= healthy }
            #expect(indices.count == (healthy < 5 ? 10 : healthy))
        }
        #expect(failingSeen == (healthy < 5))
        #expect(answerer.panicAnswers == (healthy < 5 ? 20 : 0))
    }

    /// Slow start: a record that turned healthy `elapsed` ms ago leads with its weight times
    /// 10% + 90% × elapsed / window, against 4 warm records of the same weight.
    @Test(arguments: [(0, 0.1), (15_000, 0.55), (30_000, 1.0)] as [(UInt64, Double)], [5, 100])
    func slowStartRamps(elapsed: (UInt64, Double), count: Int) throws {
        var fixture = ServiceFixture(count: count)
        // Every fifth record is warming since t = 1,000,000 ms; the others are warm.
        fixture.since = (0..<count).map { $0 % 5 == 0 ? 1_000_000 : 0 }
        fixture.slowStartMilliseconds = 30_000
        let counts = try firstCounts(fixture, queries: 6000, seed: 3, edns: nil, now: 1_000_000 + elapsed.0, cache: true)
        let warming = (0..<count).filter { $0 % 5 == 0 }.reduce(0) { $0 + counts[$1] }
        let share = elapsed.1 / (elapsed.1 + 4)
        let observed = Double(warming) / 6000
        #expect(abs(observed - share) < 0.2 * share + 0.01, "after \(elapsed.0) ms: \(observed), expected \(share)")
    }

    @Test func roundRobinRotatesAndFixedDoesNot() throws {
        let view = try ServiceFixture(count: 5).view()
        let rotating = Answerer(selection: SelectionOptions(policy: .roundRobin))
        let fixed = Answerer(selection: SelectionOptions(policy: .fixed))
        var firsts: [Int] = []
        for _ in 0..<10 {
            let answer = try ask(rotating, view, ServiceFixture.name, .a).message
            let indices = answer.answers.compactMap { ServiceFixture.index(of: $0.rdata) }
            #expect(indices.count == 5)
            firsts.append(indices[0])
            // The rest follow in the View's order.
            #expect(indices == (0..<5).map { (indices[0] + $0) % 5 })
            #expect(try ask(fixed, view, ServiceFixture.name, .a).message.answers.compactMap { ServiceFixture.index(of: $0.rdata) }
                        == [0, 1, 2, 3, 4])
        }
        #expect(zip(firsts, firsts.dropFirst()).allSatisfy { ($0 + 1) % 5 == $1 })
    }

    @Test func ttlJitterLowersTheTTLByUpToItsShare() throws {
        var fixture = ServiceFixture(count: 3)
        fixture.ttl = 100
        let view = try fixture.view()
        let answerer = Answerer(selection: SelectionOptions(ttlJitterPercent: 20), seed: 1)
        var ttls = Set<UInt32>()
        for _ in 0..<200 {
            let answer = try ask(answerer, view, ServiceFixture.name, .a).message
            #expect(Set(answer.answers.map(\.ttl)).count == 1, "one TTL per RRset (RFC 2181 §5.2)")
            ttls.insert(answer.answers[0].ttl)
        }
        #expect(ttls.allSatisfy { (80...100).contains($0) })
        #expect(ttls.count > 10)
    }

    /// A service answer holding every candidate is cached as a template: hits get their own
    /// order, byte for byte what the pipeline writes apart from it; one cut by the buffer is not.
    @Test(arguments: [SelectionPolicy.shuffle, .roundRobin, .fixed], [RRType.a, .srv])
    func wholeServiceAnswersAreCachedAsTemplates(policy: SelectionPolicy, type: RRType) throws {
        var fixture = ServiceFixture(count: 10)
        fixture.panicThresholdPercent = 50
        fixture.healthy = 4
        fixture.ttl = 10
        let view = try fixture.view()
        let name = type == .a ? ServiceFixture.name : ServiceFixture.srvName
        let cached = Answerer(cache: true, selection: SelectionOptions(policy: policy, ttlJitterPercent: 50), seed: 4)
        let plain = Answerer(selection: SelectionOptions(policy: policy, ttlJitterPercent: 50), seed: 4)
        var orders = Set<[String]>()
        for _ in 0..<50 {
            let hit = try ask(cached, view, name, type).message
            let written = try ask(plain, view, name, type).message
            #expect(hit.answers.count == 10)
            #expect(Set(hit.answers.map { "\($0.rdata)" }) == Set(written.answers.map { "\($0.rdata)" }))
            #expect(Set(hit.additional.map { "\($0.name) \($0.rdata)" }) == Set(written.additional.map { "\($0.name) \($0.rdata)" }))
            #expect(Set(hit.answers.map(\.ttl)).count == 1)
            #expect((5...10).contains(hit.answers[0].ttl))
            orders.insert(hit.answers.map { "\($0.rdata)" })
        }
        #expect(cached.cacheHits == 49)
        #expect(cached.panicAnswers == 50, "a hit in panic counts as a panic answer")
        #expect(orders.count >= (policy == .fixed ? 1 : 10))
        if policy == .fixed { #expect(orders.count == 1) }
        // 300 records do not fit: the subset depends on the buffer, not cached.
        let large = try ServiceFixture(count: 300).view()
        let answerer = Answerer(cache: true, selection: SelectionOptions(policy: policy))
        for _ in 0..<5 { _ = try ask(answerer, large, ServiceFixture.name, .a) }
        #expect(answerer.cacheHits == 0)
    }
}
