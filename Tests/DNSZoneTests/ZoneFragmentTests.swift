import DNSWire
import DNSZone
import Testing

private let origin = try! DomainName("example.com.")

/// Everything a zone answers from, independent of node order: each node's name, its RRsets
/// (type, TTL, records in order) and, per record, the name of its additional-section node.
private func shape(_ zone: Zone) -> [String] {
    zone.nodes.map { node in
        let sets = node.rrsets.map { set in
            let records = zip(set.records, set.compiled).map { record, compiled in
                let additional = compiled.additionalNode >= 0 ? " +\(zone.nodes[Int(compiled.additionalNode)].name)" : ""
                return "\(record)\(additional)"
            }
            return "\(set.type) \(set.ttl) [\(records.sorted().joined(separator: ", "))]"
        }
        return "\(node.name.lowercased()) \(node.kind): \(sets.sorted().joined(separator: "; "))"
    }.sorted()
}

/// A lookup's outcome with node indices replaced by names.
private func outcome(_ zone: Zone, _ name: DomainName, _ type: RRType) -> String {
    let scratch = UnsafeMutableRawPointer.allocate(byteCount: 512, alignment: 8)
    defer { scratch.deallocate() }
    let result = name.lowercased().wire.withUnsafeBytes { zone.lookup($0, type: type, scratch: scratch) }
    func named(_ node: Int32) -> String { "\(zone.nodes[Int(node)].name.lowercased())" }
    switch result {
    case .answer(let node, let rrset, let wildcard): return "answer \(named(node)) \(zone.nodes[Int(node)].rrsets[Int(rrset)].type) \(wildcard)"
    case .any(let node, let wildcard): return "any \(named(node)) \(wildcard)"
    case .cname(let node, _, let wildcard): return "cname \(named(node)) \(wildcard)"
    case .dname(let node, _): return "dname \(named(node))"
    case .delegation(let node): return "delegation \(named(node))"
    case .noData: return "nodata"
    case .nxDomain: return "nxdomain"
    }
}

private func record(_ name: String, _ ttl: UInt32, _ rdata: RData) throws -> ResourceRecord {
    ResourceRecord(name: name == "@" ? origin : try DomainName(name, origin: origin), ttl: ttl, rdata: rdata)
}

@Suite("zone fragments")
struct ZoneFragmentTests {
    /// Apex, services with empty non-terminals between them, an owner and an RRset split over
    /// two fragments, SRV targets in another fragment, a duplicate, a wildcard, mixed case.
    func sample() throws -> [ResourceRecord] {
        let ns = try DomainName("ns", origin: origin)
        let node = try DomainName("n1.node", origin: origin)
        return [
            try record("@", 60, .soa(SOAData(mname: ns, rname: try DomainName("hostmaster", origin: origin), serial: 7,
                                             refresh: 3600, retry: 600, expire: 86_400, minimum: 30))),
            try record("@", 60, .ns(ns)),
            try record("ns", 60, .a(IPv4Address("192.0.2.53")!)),
            try record("Web.service", 5, .a(IPv4Address("10.0.0.1")!)),
            try record("web.service", 5, .srv(priority: 1, weight: 1, port: 80, target: node)),
            try record("_web._tcp.service", 5, .srv(priority: 1, weight: 1, port: 80, target: node)),
            try record("v2.web.service", 5, .a(IPv4Address("10.0.0.1")!)),
            try record("web.service", 5, .a(IPv4Address("10.0.0.2")!)),
            try record("web.service", 5, .a(IPv4Address("10.0.0.1")!)),
            try record("_web._tcp.service", 5, .srv(priority: 1, weight: 2, port: 81, target: try DomainName("0a000002.addr", origin: origin))),
            try record("0a000002.addr", 5, .a(IPv4Address("10.0.0.2")!)),
            try record("_db._v2.service", 5, .srv(priority: 1, weight: 1, port: 5432, target: node)),
            try record("*.wild", 5, .txt([Array("w".utf8)])),
            try record("N1.node", 5, .a(IPv4Address("10.0.0.1")!)),
        ]
    }

    func full(_ records: [ResourceRecord]) throws -> Zone {
        let position = SourcePosition(file: "t", line: 1, column: 1)
        return try Zone(origin: origin, records: records.map { ParsedRecord(record: $0, position: position) }, source: "t")
    }

    @Test(arguments: 1...20)
    func anyPartitionAssemblesTheZoneAMasterFileGives(seed: UInt64) throws {
        let records = try sample()
        var state = seed
        func next(_ bound: Int) -> Int {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return Int((state >> 33) % UInt64(bound))
        }
        // Cut the records into fragments in a seeded order; every cut keeps the records' order
        // within each fragment, as the full build sees them.
        var buckets = [[ResourceRecord]](repeating: [], count: 1 + next(5))
        for record in records { buckets[next(buckets.count)].append(record) }
        let fragments = try buckets.map { try ZoneFragment(records: $0, origin: origin, source: "t") }
        let assembled = try Zone(origin: origin, fragments: fragments, source: "t")
        let reference = try full(records)
        #expect(shape(assembled) == shape(reference))
        let names = ["example.com.", "web.service.example.com.", "WEB.service.example.com.", "service.example.com.",
                     "_tcp.service.example.com.", "_web._tcp.service.example.com.", "_v2.service.example.com.",
                     "x.wild.example.com.", "wild.example.com.", "a.b.wild.example.com.", "nope.example.com.",
                     "x.web.service.example.com.", "n1.node.example.com.", "addr.example.com.", "ns.example.com."]
        for name in names {
            for type in [RRType.a, .srv, .txt, .soa, .any] {
                let query = try DomainName(name)
                #expect(outcome(assembled, query, type) == outcome(reference, query, type), "\(name) \(type)")
            }
        }
        #expect(assembled.negativeTTL == 30)
    }

    @Test func mergedRRsetsLinkEveryTargetAcrossFragments() throws {
        let records = try sample()
        let fragments = try records.map { try ZoneFragment(records: [$0], origin: origin, source: "t") }
        let assembled = try Zone(origin: origin, fragments: fragments, source: "t")
        let srv = try #require(assembled.nodes.first { $0.name.lowercased() == (try! DomainName("_web._tcp.service.example.com.")) })
        let set = try #require(srv.rrsets.first { $0.type == .srv })
        #expect(set.compiled.count == 2)
        #expect(set.compiled.map { assembled.nodes[Int($0.additionalNode)].name.lowercased().description }.sorted()
            == ["0a000002.addr.example.com.", "n1.node.example.com."])
    }

    /// Contributors add and remove overlapping records in a seeded order; the tally must
    /// always assemble the zone of what is still counted in.
    @Test(arguments: 1...10)
    func aTallyKeepsARecordUntilItsLastContributorGoes(seed: UInt64) throws {
        let records = try sample()
        let apex = Array(records.prefix(3))
        var state = seed
        func next(_ bound: Int) -> Int {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return Int((state >> 33) % UInt64(bound))
        }
        // Eight contributors of a few records each, overlapping.
        let contributions = (0..<8).map { _ in (0..<3).map { _ in records[3 + next(records.count - 3)] } }
        var tally = ZoneFragmentTally(origin: origin, source: "t")
        var present = Set<Int>()
        for _ in 0..<40 {
            let who = next(contributions.count)
            if present.contains(who) {
                tally.remove(contributions[who])
                present.remove(who)
            } else {
                try tally.add(contributions[who])
                present.insert(who)
            }
            let counted = present.sorted().flatMap { contributions[$0] }
            let assembled = try Zone(origin: origin, fragments: [try ZoneFragment(records: apex, origin: origin, source: "t"),
                                                                tally.fragment], source: "t")
            #expect(shape(assembled) == shape(try full(apex + counted)), "seed \(seed), present \(present.sorted())")
            #expect(tally.isEmpty == counted.isEmpty)
        }
    }

    @Test func fragmentsRefuseWhatNeedsTheMasterFileChecks() throws {
        let target = try DomainName("x", origin: origin)
        for (bad, expected) in [
            (try record("a", 5, .cname(target)), "CNAME at a.example.com. cannot be in a zone fragment"),
            (try record("sub", 5, .ns(target)), "NS at sub.example.com. cannot be in a zone fragment"),
            (ResourceRecord(name: try DomainName("other.org."), ttl: 5, rdata: .a(IPv4Address("10.0.0.1")!)),
             "other.org. is outside the zone example.com."),
        ] {
            #expect(throws: ZoneLoadError.self) { try ZoneFragment(records: [bad], origin: origin, source: "t") }
            do throws(ZoneLoadError) {
                _ = try ZoneFragment(records: [bad], origin: origin, source: "t")
            } catch {
                #expect(error.errors[0].message.hasPrefix(expected), "\(error)")
            }
        }
    }

    @Test func theApexNeedsOneSOAAndNS() throws {
        let records = try sample()
        let withoutSOA = try ZoneFragment(records: Array(records.dropFirst()), origin: origin, source: "t")
        do throws(ZoneLoadError) {
            _ = try Zone(origin: origin, fragments: [withoutSOA], source: "t")
            Issue.record("a zone without SOA assembled")
        } catch {
            #expect(error.description == "t:1:1: no SOA record at the apex example.com. (expected exactly one)")
        }
        let otherSOA = try record("@", 60, .soa(SOAData(mname: origin, rname: origin, serial: 8, refresh: 1, retry: 1, expire: 1, minimum: 1)))
        let twice = [try ZoneFragment(records: records, origin: origin, source: "t"),
                     try ZoneFragment(records: [otherSOA], origin: origin, source: "t")]
        do throws(ZoneLoadError) {
            _ = try Zone(origin: origin, fragments: twice, source: "t")
            Issue.record("a zone with two SOAs assembled")
        } catch {
            #expect(error.description == "t:1:1: more than one SOA record at the apex example.com.")
        }
    }
}
