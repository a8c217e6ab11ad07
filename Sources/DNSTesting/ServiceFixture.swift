import DNSServer
import DNSWire
import DNSZone

/// A service the way the registry puts it in a View: `web.svc.test.` A/AAAA and
/// `_web._tcp.svc.test.` SRV with a `RecordSelection`, SRV targets `nN.node.svc.test.` with
/// plain A records (tests, and the answer benchmark). Record i is 10.(i/65536).(i/256).(i%256).
public struct ServiceFixture {
    public static let origin = try! DomainName("svc.test.")
    public static let name = try! DomainName("web.svc.test.")
    public static let srvName = try! DomainName("_web._tcp.svc.test.")

    public var count: Int
    public var healthy: Int
    public var weights: [UInt32]
    public var since: [UInt64] = []
    public var slowStartMilliseconds: UInt64 = 0
    public var panicThresholdPercent = 0
    public var recordsMax = 0
    public var ttl: UInt32 = 5

    public init(count: Int, healthy: Int? = nil, weights: [UInt32]? = nil) {
        self.count = count
        self.healthy = healthy ?? count
        self.weights = weights ?? Array(repeating: 1, count: count)
    }

    public static func address(_ i: Int) -> IPv4Address { IPv4Address(10, UInt8(i >> 16 & 255), UInt8(i >> 8 & 255), UInt8(i & 255)) }
    public static func address6(_ i: Int) -> IPv6Address { IPv6Address("2001:db8::\(String(i, radix: 16))")! }
    public static func target(_ i: Int) -> DomainName { try! DomainName("n\(i).node.svc.test.") }

    /// The index of an answered A record.
    public static func index(of rdata: RData) -> Int? {
        guard case .a(let a) = rdata else { return nil }
        let b = a.array
        return Int(b[1]) << 16 | Int(b[2]) << 8 | Int(b[3])
    }

    public static func index(ofTarget rdata: RData) -> Int? {
        guard case .srv(_, _, _, let target) = rdata, let label = target.description.split(separator: ".").first else { return nil }
        return Int(label.dropFirst())
    }

    public func selection(_ type: RRType, _ records: [RData]) -> RecordSelection {
        RecordSelection(records: records, type: type, ttl: ttl, healthyCount: healthy, weights: weights, answerableSinceMilliseconds: since,
                        slowStartMilliseconds: slowStartMilliseconds, healthyInstances: healthy, instances: count,
                        panicThresholdPercent: panicThresholdPercent, recordsMax: recordsMax)
    }

    public func view() throws -> View {
        let apex = try ZoneFragment(records: [
            ResourceRecord(name: Self.origin, ttl: 60, rdata: .soa(SOAData(
                mname: try DomainName("ns.svc.test."), rname: try DomainName("h.svc.test."), serial: 1, refresh: 1, retry: 1,
                expire: 1, minimum: 5))),
            ResourceRecord(name: Self.origin, ttl: 60, rdata: .ns(try DomainName("ns.svc.test."))),
            ResourceRecord(name: try DomainName("ns.svc.test."), ttl: 60, rdata: .a(IPv4Address(192, 0, 2, 53))),
        ] + (0..<count).map { ResourceRecord(name: Self.target($0), ttl: 5, rdata: .a(Self.address($0))) },
            origin: Self.origin, source: "<test>")
        let a = (0..<count).map { RData.a(Self.address($0)) }
        let aaaa = (0..<count).map { RData.aaaa(Self.address6($0)) }
        let srv = (0..<count).map { RData.srv(priority: 1, weight: UInt16(clamping: weights[$0]), port: 80, target: Self.target($0)) }
        func set(_ type: RRType, _ records: [RData]) -> RRSet {
            RRSet(type: type, ttl: ttl, records: records, compiled: records.map { CompiledRData($0) },
                  selection: selection(type, records))
        }
        let selected = try ZoneFragment(owners: [(Self.name, [set(.a, a), set(.aaaa, aaaa)]), (Self.srvName, [set(.srv, srv)])],
                                        origin: Self.origin, source: "<test>")
        return View(zones: [try Zone(origin: Self.origin, fragments: [apex, selected], source: "<test>")])
    }
}
