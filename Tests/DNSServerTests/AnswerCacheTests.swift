import Foundation
import DNSServer
import DNSWire
import DNSZone
import Testing

@Suite("response cache")
struct AnswerCacheTests {
    static let zoneText = """
        $TTL 300
        @    SOA ns1 hostmaster 1 7200 900 1209600 60
             NS  ns1
        ns1  A   192.0.2.53
        www  A   192.0.2.10
        _s._tcp SRV 1 1 80 a
                SRV 1 1 80 b
                SRV 1 1 80 c
                SRV 1 1 80 d
        a A 192.0.2.1
        b A 192.0.2.2
        c A 192.0.2.3
        d A 192.0.2.4
        """

    func answer(_ answerer: Answerer, _ query: Message, view: View) throws -> [UInt8] {
        let bytes = try query.serialized()
        var output = [UInt8](repeating: 0, count: 65535)
        let length = bytes.withUnsafeBytes { q in
            output.withUnsafeMutableBytes { answerer.answer(query: q, into: $0, view: view, transport: .udp) }
        }
        return Array(output[0..<length])
    }

    @Test func hitsAreByteForByteWhatThePipelineWrites() throws {
        let view = View(zones: [try Zone.parse(text: Self.zoneText, origin: try DomainName("example.test."))])
        let cached = Answerer(cache: true)
        let plain = Answerer()
        var queries: [Message] = []
        for (name, type) in [("www", RRType.a), ("_s._tcp", .srv), ("nope", .a), ("www", .aaaa)] {
            var query = Message.query(try DomainName("\(name).example.test."), type, id: 1)
            queries.append(query)
            query.id = 2; query.flags.rd = true; query.edns?.dnssecOK = true
            queries.append(query)
            query.id = 3; query.edns = nil
            queries.append(query)
            query.questions[0].name = try DomainName("\(name.uppercased()).Example.TEST.")
            queries.append(query)
        }
        for query in queries + queries {
            #expect(try answer(cached, query, view: view) == answer(plain, query, view: view), "\(query.questions[0])")
        }
        #expect(cached.cacheHits >= queries.count)
    }

    /// Answers that follow a CNAME or DNAME chain are cached under the question's name. The
    /// chain once overwrote the question's name before the answer was stored, so these were
    /// stored where no lookup finds them: every chained query missed.
    @Test func chainedAnswersAreHitsAndByteForByteWhatThePipelineWrites() throws {
        let zone = try Zone.parse(text: Self.zoneText + """

            alias  CNAME web
            web    CNAME www
            out    CNAME www.disco.
            old    DNAME new.example.test.
            www.new A   192.0.2.99
            into   CNAME www.old
            """, origin: try DomainName("example.test."))
        let registry = try Zone.parse(text: Self.zoneText, origin: try DomainName("disco."))
        let view = View(zones: [zone, registry])
        let cached = Answerer(cache: true)
        let plain = Answerer()
        let names = ["alias.example.test.", "ALIAS.Example.test.", "out.example.test.", "www.old.example.test.",
                     "into.example.test."]
        for name in names {
            let query = Message.query(try DomainName(name), .a, id: 9)
            let first = try answer(cached, query, view: view)
            let hits = cached.cacheHits
            let second = try answer(cached, query, view: view)
            #expect(cached.cacheHits == hits + 1, "\(name) is answered from the cache the second time")
            let uncached = try answer(plain, query, view: view)
            #expect(first == second && second == uncached, "\(name)")
            #expect(try Message(parsing: second).answers.count >= 2, "\(name) is a chain")
        }
        // A DNAME reached through a CNAME synthesizes from the name the chain reached.
        let into = try Message(parsing: try answer(cached, Message.query(try DomainName("into.example.test."), .a), view: view))
        #expect(into.answers.map { "\($0.rdata)" }.suffix(2) == ["www.new.example.test.", "192.0.2.99"], "\(into.answers)")
    }

    @Test func aNewViewEmptiesTheCache() throws {
        let origin = try DomainName("example.test.")
        let first = View(zones: [try Zone.parse(text: Self.zoneText, origin: origin)])
        let second = View(zones: [try Zone.parse(text: Self.zoneText.replacingOccurrences(of: "192.0.2.10", with: "192.0.2.20"),
                                                 origin: origin)])
        let answerer = Answerer(cache: true)
        let query = Message.query(try DomainName("www.example.test."), .a)
        _ = try answer(answerer, query, view: first)
        let before = try Message(parsing: try answer(answerer, query, view: first))
        #expect(answerer.cacheHits == 1)
        let after = try Message(parsing: try answer(answerer, query, view: second))
        #expect(before.answers.first?.rdata == .a(IPv4Address(192, 0, 2, 10)))
        #expect(after.answers.first?.rdata == .a(IPv4Address(192, 0, 2, 20)))
    }

    /// A registry change replaces one zone of the View: answers from the other zones stay
    /// cached, answers that read the replaced zone (a CNAME into it too) are computed again.
    @Test func aNewViewKeepsTheEntriesOfTheZonesItDidNotReplace() throws {
        let files = try Zone.parse(text: Self.zoneText + "\nalias CNAME www.disco.\n", origin: try DomainName("example.test."))
        func registry(_ address: String) throws -> Zone {
            try Zone.parse(text: Self.zoneText.replacingOccurrences(of: "192.0.2.10", with: address), origin: try DomainName("disco."))
        }
        let first = View(zones: [files, try registry("10.0.0.1")])
        let second = View(zones: [files, try registry("10.0.0.2")])
        let answerer = Answerer(cache: true)
        let questions = [("www.example.test.", "192.0.2.10"), ("www.disco.", "10.0.0.2"), ("alias.example.test.", "10.0.0.2")]
        for (name, _) in questions { _ = try answer(answerer, Message.query(try DomainName(name), .a), view: first) }
        let hits = answerer.cacheHits
        for (name, expected) in questions {
            let reply = try Message(parsing: try answer(answerer, Message.query(try DomainName(name), .a), view: second))
            #expect(reply.answers.last?.rdata == .a(IPv4Address(expected)!), "\(name)")
        }
        #expect(answerer.cacheHits == hits + 1, "only www.example.test. is still cached")

        // Other origins: every name may map to another zone, so nothing is kept.
        let third = View(zones: [files, try registry("10.0.0.2"), try Zone.parse(text: Self.zoneText, origin: try DomainName("other.test."))])
        let before = answerer.cacheHits
        _ = try answer(answerer, Message.query(try DomainName("www.example.test."), .a), view: third)
        #expect(answerer.cacheHits == before)
    }

    @Test func responsesThatDependOnTheClientSizeAreNotCached() throws {
        let view = View(zones: [try Zone.parse(text: Self.zoneText, origin: try DomainName("example.test."))])
        let answerer = Answerer(cache: true)
        var small = Message.query(try DomainName("_s._tcp.example.test."), .srv)
        small.edns = nil
        // 512 bytes hold the SRV set but not all of ADDITIONAL: trimmed, so not cached.
        let first = try Message(parsing: try answer(answerer, small, view: view))
        let large = try Message(parsing: try answer(answerer, Message.query(try DomainName("_s._tcp.example.test."), .srv), view: view))
        #expect(first.answers.count == 4 && large.answers.count == 4)
        #expect(large.additional.count >= first.additional.count)
    }

    /// An answer synthesized from a wildcard names the wildcard (RRL's wildcard class keys on
    /// it) and is not cached: a flood of random names under it cannot evict real entries.
    @Test func wildcardAnswersNameTheirWildcardAndAreNotCached() throws {
        let zone = try Zone.parse(text: Self.zoneText + "\n*.wild A 192.0.2.80\nalias CNAME x.wild\n",
                                  origin: try DomainName("example.test."))
        let view = View(zones: [zone])
        let answerer = Answerer(cache: true)
        let wildcard = try DomainName("*.wild.example.test.").wire
        for name in ["a.wild", "B.Wild", "a.wild", "alias"] {
            let bytes = try answer(answerer, Message.query(try DomainName("\(name).example.test."), .a, id: 1), view: view)
            let response = try bytes.withUnsafeBytes { bytes throws(WireError) in try Message.parse(bytes) }
            #expect(response.answers.last?.rdata == .a(IPv4Address(192, 0, 2, 80)), "\(name)")
            #expect(answerer.lastWildcard.map { Array($0) } == wildcard, "\(name)")
        }
        #expect(answerer.cacheHits == 0)
        _ = try answer(answerer, Message.query(try DomainName("www.example.test."), .a, id: 1), view: view)
        #expect(answerer.lastWildcard == nil)
        _ = try answer(answerer, Message.query(try DomainName("www.example.test."), .a, id: 1), view: view)
        #expect(answerer.cacheHits == 1)
    }

    /// Responses above the small slots' 768 bytes (up to the 1232-byte UDP maximum) are cached
    /// in the large tier: a TXT RRset of about 1 KB is a hit the second time, byte for byte what
    /// the pipeline writes; without EDNS it does not fit and is truncated, and not cached.
    @Test func largeAnswersAreCachedInTheLargeTier() throws {
        let strings = (0..<4).map { "\"\($0)\(String(repeating: "x", count: 240))\"" }.joined(separator: " ")
        let view = View(zones: [try Zone.parse(text: Self.zoneText + "\nbig TXT \(strings)\n", origin: try DomainName("example.test."))])
        let cached = Answerer(cache: true)
        let plain = Answerer()
        let query = Message.query(try DomainName("big.example.test."), .txt, id: 9)
        let first = try answer(cached, query, view: view)
        #expect(first.count > 768 && first.count <= 1232, "\(first.count) bytes")
        for id in [UInt16(10), 11] {
            var again = query
            again.id = id
            #expect(try answer(cached, again, view: view) == answer(plain, again, view: view))
        }
        #expect(cached.cacheHits == 2 && cached.cacheMisses == 1)
        var classic = query
        classic.edns = nil
        for _ in 0..<2 {
            let response = try answer(cached, classic, view: view)
            #expect(response.count <= 512 && response[2] & 0x02 != 0, "TC over classic UDP")
        }
        #expect(cached.cacheHits == 2, "a truncated answer is not cached")
    }
}
