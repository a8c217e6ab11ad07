import Foundation
import DNSServer
import DNSWire
import DNSZone
import Registry
import Testing

/// Answers `name type` from the registry's zone built from `catalog`, as the DNS server would.
func ask(_ catalog: Catalog, _ name: String, _ type: RRType, config: ServiceViewConfig? = nil) throws -> Message {
    let domain = try DomainName("disco.")
    let zone = try ServiceView.zone(from: catalog.state, config: config ?? ServiceViewConfig(domain: domain))
    let view = View(zones: [zone])
    let query = try Message.query(try DomainName(name), type, id: 7).serialized()
    var output = [UInt8](repeating: 0, count: 65535)
    let length = query.withUnsafeBytes { q in
        output.withUnsafeMutableBytes { o in Answerer().answer(query: q, into: o, view: view, transport: .tcp) }
    }
    return try Message(parsing: Array(output[0..<length]))
}

func rdata(_ message: Message, _ section: KeyPath<Message, [ResourceRecord]> = \.answers) -> [String] {
    message[keyPath: section].map { "\($0.name) \($0.ttl) \($0.rdata)" }.sorted()
}

@Suite("DNS service view")
struct ServiceViewTests {
    func catalogWithWeb() throws -> (TemporaryDirectory, Catalog) {
        let directory = try TemporaryDirectory()
        let catalog = try Catalog(path: directory.path("registry.db"))
        try apply(catalog,
                  web("web-1", tags: ["v2", "primary"]),
                  web("web-2", on: node2, address: "10.0.0.22", tags: ["v1"]),
                  web("web-3", on: node2, address: "2001:db8::3"))
        return (directory, catalog)
    }

    @Test func serviceNamesAnswerEveryHealthyInstance() throws {
        let (_, catalog) = try catalogWithWeb()
        let a = try ask(catalog, "web.service.disco.", .a)
        #expect(a.flags.aa)
        #expect(rdata(a) == ["web.service.disco. 5 10.0.0.1", "web.service.disco. 5 10.0.0.22"])
        #expect(rdata(try ask(catalog, "web.service.disco.", .aaaa)) == ["web.service.disco. 5 2001:db8::3"])
        // Tags filter.
        #expect(rdata(try ask(catalog, "v2.web.service.disco.", .a)) == ["v2.web.service.disco. 5 10.0.0.1"])
        #expect(rdata(try ask(catalog, "V1.WEB.service.disco.", .a)).count == 1)
    }

    @Test func srvTargetsAreNodesOrAddressesWithGlue() throws {
        let (_, catalog) = try catalogWithWeb()
        let srv = try ask(catalog, "_web._tcp.service.disco.", .srv)
        #expect(rdata(srv) == [
            "_web._tcp.service.disco. 5 1 1 80 0a000016.addr.disco.",
            "_web._tcp.service.disco. 5 1 1 80 20010db8000000000000000000000003.addr.disco.",
            "_web._tcp.service.disco. 5 1 1 80 node1.node.disco.",
        ])
        let additional = rdata(srv, \.additional).filter { !$0.contains("OPT") }
        #expect(additional.contains("node1.node.disco. 5 10.0.0.1"))
        #expect(additional.contains("0a000016.addr.disco. 5 10.0.0.22"))
        #expect(additional.contains("20010db8000000000000000000000003.addr.disco. 5 2001:db8::3"))
        // RFC 2782 with a tag as the protocol label.
        #expect(rdata(try ask(catalog, "_web._v1.service.disco.", .srv)) == ["_web._v1.service.disco. 5 1 1 80 0a000016.addr.disco."])
        #expect(rdata(try ask(catalog, "node2.node.disco.", .a)) == ["node2.node.disco. 5 10.0.0.2"])
    }

    @Test func unknownNamesAreNXDOMAINAndKnownNamesWithoutTheTypeNODATA() throws {
        let (_, catalog) = try catalogWithWeb()
        let unknown = try ask(catalog, "db.service.disco.", .a)
        #expect(unknown.rcode == .nxDomain)
        #expect(unknown.authority.first?.type == .soa)
        let nodata = try ask(catalog, "v2.web.service.disco.", .aaaa)
        #expect(nodata.rcode == .noError)
        #expect(nodata.answers.isEmpty)
        #expect(nodata.authority.first?.type == .soa)
        let apex = try ask(catalog, "disco.", .soa)
        #expect(apex.answers.count == 1)
        if case .soa(let soa) = apex.answers[0].rdata {
            #expect(soa.serial == UInt32(catalog.state.index))
            #expect(soa.minimum == ServiceViewConfig.negativeTTLSecondsDefault)
        }
    }

    @Test func onlyHealthyInstancesAreAnswered() throws {
        let directory = try TemporaryDirectory()
        let catalog = try Catalog(path: directory.path("registry.db"))
        let service = ServiceInstance(id: "api-1", node: "node1", name: "api", port: 9000)
        try apply(catalog, .register(node: node1, service: service, checks: [ttlCheck("c", service: "api-1")], replaceChecks: false))
        // Without a panic threshold (Consul): an instance whose check has not passed yet is not in DNS.
        let domain = try DomainName("disco.")
        let noPanic = ServiceViewConfig(domain: domain, panicThresholdPercent: 0)
        #expect(try ask(catalog, "api.service.disco.", .a, config: noPanic).rcode == .nxDomain)
        // With the default threshold its only instance failing is a panic: answered (fail open).
        #expect(rdata(try ask(catalog, "api.service.disco.", .a)) == ["api.service.disco. 5 10.0.0.1"])
        try apply(catalog, .updateCheck(node: "node1", checkID: "c", status: .passing, output: ""))
        #expect(rdata(try ask(catalog, "api.service.disco.", .a, config: noPanic)) == ["api.service.disco. 5 10.0.0.1"])
        try apply(catalog, .updateCheck(node: "node1", checkID: "c", status: .warning, output: ""))
        #expect(try ask(catalog, "api.service.disco.", .a, config: noPanic).answers.count == 1)
        let strict = ServiceViewConfig(domain: domain, onlyPassing: true, panicThresholdPercent: 0)
        #expect(try ask(catalog, "api.service.disco.", .a, config: strict).rcode == .nxDomain)
        try apply(catalog, .updateCheck(node: "node1", checkID: "c", status: .critical, output: ""))
        #expect(try ask(catalog, "api.service.disco.", .a, config: noPanic).rcode == .nxDomain)
    }

    @Test func ttlComesFromConfigOrServiceMeta() throws {
        let directory = try TemporaryDirectory()
        let catalog = try Catalog(path: directory.path("registry.db"))
        try apply(catalog, .register(node: node1, service: ServiceInstance(id: "a", node: "node1", name: "a", meta: ["dns-ttl": "30"]),
                                     checks: [], replaceChecks: false),
                  .register(node: node1, service: ServiceInstance(id: "b", node: "node1", name: "b"), checks: [], replaceChecks: false))
        let config = ServiceViewConfig(domain: try DomainName("disco."), serviceTTLSeconds: 2)
        #expect(try ask(catalog, "a.service.disco.", .a, config: config).answers.first?.ttl == 30)
        #expect(try ask(catalog, "b.service.disco.", .a, config: config).answers.first?.ttl == 2)
    }

    @Test func namesThatAreNotDNSLabelsStayOutOfDNS() throws {
        let directory = try TemporaryDirectory()
        let catalog = try Catalog(path: directory.path("registry.db"))
        try apply(catalog, .register(node: node1, service: ServiceInstance(id: "x", node: "node1", name: "has.dot", tags: ["a b"]),
                                     checks: [], replaceChecks: false),
                  .register(node: node1, service: ServiceInstance(id: "y", node: "node1", name: "ok", tags: ["bad tag", "good"]),
                            checks: [], replaceChecks: false),
                  .register(node: NodeRecord(name: "host-without-ip", address: "db.example.com"),
                            service: ServiceInstance(id: "z", node: "host-without-ip", name: "ok"), checks: [], replaceChecks: false))
        #expect(try ask(catalog, "dot.service.disco.", .a).rcode == .nxDomain)
        #expect(try ask(catalog, "has.dot.service.disco.", .a).rcode == .nxDomain)
        #expect(rdata(try ask(catalog, "good.ok.service.disco.", .a)) == ["good.ok.service.disco. 5 10.0.0.1"])
        // An instance whose address is not an IP has no A record to give: left out.
        #expect(try ask(catalog, "ok.service.disco.", .a).answers.count == 1)
    }

    @Test func anotherDomainWorksForADropInReplacement() throws {
        let (_, catalog) = try catalogWithWeb()
        let domain = try DomainName("consul.")
        let zone = try ServiceView.zone(from: catalog.state, config: ServiceViewConfig(domain: domain))
        #expect(zone.origin == domain)
    }
}

@Suite("incremental service view")
struct ServiceViewBuilderTests {
    /// The incremental builder must give exactly the zone a full build gives, after any change,
    /// told what changed as the daemon tells it (several entries' changes gathered, sometimes),
    /// or comparing every instance.
    @Test(arguments: 1...10)
    func incrementalBuildsEqualFullBuilds(seed: UInt64) throws {
        let directory = try TemporaryDirectory()
        let catalog = try Catalog(path: directory.path("registry.db"))
        let config = ServiceViewConfig(domain: try DomainName("disco."))
        let builder = ServiceViewBuilder(config: config)
        let told = ServiceViewBuilder(config: config)
        final class Gathered: @unchecked Sendable {
            let lock = NSLock()
            var instances: Set<NodeScopedID>? = []
            func take() -> Set<NodeScopedID>? { lock.withLock { defer { instances = [] }; return instances } }
        }
        let gathered = Gathered()
        catalog.observe { change, _ in
            gathered.lock.withLock {
                if let changed = change.instances { gathered.instances?.formUnion(changed) } else { gathered.instances = nil }
            }
        }
        var random = SplitMix(seed: seed)
        let nodes = [node1, node2, NodeRecord(name: "node1", address: "10.0.0.9")]
        // Every name (empty non-terminals too), record and additional-section link.
        func dump(_ zone: Zone) -> [String] {
            var lines: [String] = []
            for node in zone.nodes {
                lines.append("\(node.name.lowercased()) \(node.kind)")
                for set in node.rrsets {
                    for (record, compiled) in zip(set.records, set.compiled) {
                        let target = compiled.additionalNode
                        let additional = target >= 0 ? " +\(zone.nodes[Int(target)].name.lowercased())" : ""
                        lines.append("\(node.name) \(set.ttl) \(record)\(additional)")
                    }
                    // Which records are healthy, their weights, and the panic state.
                    guard let selection = set.selection else { continue }
                    for i in set.records.indices {
                        let part = i < selection.healthyCount ? "healthy" : "failing"
                        lines.append("\(node.name) \(set.type) \(set.records[i]) \(part) w\(selection.weights[i])")
                    }
                    lines.append("\(node.name) \(set.type) panics \(selection.panics) max \(selection.recordsMax)")
                }
            }
            return lines.sorted()
        }
        for _ in 0..<60 {
            let node = nodes[random.below(nodes.count)]
            let id = "s\(random.below(5))"
            switch random.below(4) {
            case 0, 1:
                try apply(catalog, .register(node: node, service: ServiceInstance(
                    id: id, node: node.name, name: ["web", "db", "api"][random.below(3)], tags: random.below(2) == 0 ? [] : ["v\(random.below(2))"],
                    address: random.below(2) == 0 ? "" : "10.1.0.\(random.below(4))", port: 80,
                    // A TTL, panic threshold or record limit set on one instance changes every instance's records.
                    meta: [[:], [:], [ServiceViewConfig.ttlMetaKey: "\(10 * random.below(3))"],
                           [ServiceViewConfig.panicThresholdMetaKey: "\(40 * random.below(3))"],
                           [ServiceViewConfig.recordsMaxMetaKey: "\(random.below(3))"]][random.below(5)],
                    weights: Weights(passing: 1 + random.below(3), warning: random.below(2))),
                    checks: [ttlCheck("c\(id)", service: id, on: node, status: .passing)], replaceChecks: false))
            case 2:
                try apply(catalog, .updateCheck(node: node.name, checkID: "c\(id)", status: HealthStatus.allCases[random.below(3)], output: ""))
            default:
                try apply(catalog, .deregister(node: node.name, serviceID: id, checkID: nil))
            }
            let full = dump(try ServiceView.zone(from: catalog.state, config: config))
            func differences(_ built: [String]) -> String {
                "seed \(seed): missing \(Set(full).subtracting(built).sorted()), extra \(Set(built).subtracting(full).sorted())"
            }
            let compared = dump(try builder.zone(from: catalog.state))
            #expect(compared == full, "\(differences(compared))")
            if random.below(3) != 0 {
                let incremental = dump(try told.zone(from: catalog.state, changed: gathered.take()))
                #expect(incremental == full, "\(differences(incremental))")
            }
        }
    }
}
