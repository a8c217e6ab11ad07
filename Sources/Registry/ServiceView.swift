import DNSWire
import DNSZone

/// How the catalog is turned into DNS (Consul's DNS interface, DESIGN.md "DNS names served
/// from the registry").
public struct ServiceViewConfig: Sendable {
    /// `disco.` by default; `consul.` makes Disco a drop-in for Consul's DNS.
    public var domain: DomainName
    /// TTL of service answers; a service overrides it with meta `dns-ttl` (seconds).
    public var serviceTTLSeconds: UInt32
    /// TTL of `NODE.node.DOMAIN` and `HEX.addr.DOMAIN` answers.
    public var nodeTTLSeconds: UInt32
    /// SOA minimum and TTL: how long resolvers cache NXDOMAIN/NODATA (RFC 2308 §5).
    public var negativeTTLSeconds: UInt32
    /// Answer only passing instances (Consul's `only_passing`); by default warning ones too.
    public var onlyPassing: Bool
    /// Addresses of the servers, answered at `ns.DOMAIN` (the apex NS target).
    public var nameServerAddresses: [String]

    public static let serviceTTLSecondsDefault: UInt32 = 5
    public static let nodeTTLSecondsDefault: UInt32 = 5
    public static let negativeTTLSecondsDefault: UInt32 = 5
    /// A per-service TTL above this is clamped: a day is as long as any resolver should cache.
    public static let serviceTTLSecondsMax: UInt32 = 86_400
    /// The service meta key that overrides the TTL of one service's answers.
    public static let ttlMetaKey = "dns-ttl"

    public init(domain: DomainName, serviceTTLSeconds: UInt32 = Self.serviceTTLSecondsDefault,
                nodeTTLSeconds: UInt32 = Self.nodeTTLSecondsDefault,
                negativeTTLSeconds: UInt32 = Self.negativeTTLSecondsDefault, onlyPassing: Bool = false,
                nameServerAddresses: [String] = []) {
        self.domain = domain
        self.serviceTTLSeconds = serviceTTLSeconds
        self.nodeTTLSeconds = nodeTTLSeconds
        self.negativeTTLSeconds = negativeTTLSeconds
        self.onlyPassing = onlyPassing
        self.nameServerAddresses = nameServerAddresses
    }
}

/// Builds the registry's zone from a catalog state. The whole zone is rebuilt and swapped in
/// (DESIGN.md: the View is rebuilt, not patched); the caller coalesces rebuilds.
public enum ServiceView {
    /// Names in the service view are single DNS labels of letters, digits, `-` and `_`; a
    /// service or tag with any other character is not in DNS (Consul does the same).
    static func isLabel(_ text: String) -> Bool {
        let bytes = text.utf8
        return !bytes.isEmpty && bytes.count <= 63 && bytes.allSatisfy {
            ($0 >= UInt8(ascii: "a") && $0 <= UInt8(ascii: "z")) || ($0 >= UInt8(ascii: "A") && $0 <= UInt8(ascii: "Z"))
                || ($0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9")) || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: "_")
        }
    }

    enum IPAddress: Hashable {
        case v4(IPv4Address), v6(IPv6Address)

        init?(_ text: String) {
            if let v4 = IPv4Address(text) { self = .v4(v4) } else if let v6 = IPv6Address(text) { self = .v6(v6) } else { return nil }
        }

        var rdata: RData {
            switch self {
            case .v4(let a): .a(a)
            case .v6(let a): .aaaa(a)
            }
        }

        /// Consul's `.addr.` label: the address bytes in hex.
        var hexLabel: String {
            let bytes: [UInt8] = switch self {
            case .v4(let a): a.array
            case .v6(let a): a.bytes
            }
            let digits = Array("0123456789abcdef".utf8)
            return String(decoding: bytes.flatMap { [digits[Int($0 >> 4)], digits[Int($0 & 15)]] }, as: UTF8.self)
        }
    }

    public static func zone(from state: CatalogState, config: ServiceViewConfig) throws(ZoneLoadError) -> Zone {
        var builder = Builder(domain: config.domain)
        let negativeTTL = config.negativeTTLSeconds
        let nameServer = builder.name("ns")
        builder.add(config.domain, negativeTTL, .soa(SOAData(
            mname: nameServer, rname: builder.name("hostmaster"), serial: UInt32(truncatingIfNeeded: state.index),
            refresh: 3600, retry: 600, expire: 86_400, minimum: negativeTTL)))
        builder.add(config.domain, negativeTTL, .ns(nameServer))
        for address in config.nameServerAddresses {
            if let ip = IPAddress(address) { builder.add(nameServer, config.nodeTTLSeconds, ip.rdata) }
        }

        // NODE.node.DOMAIN
        for (name, node) in state.nodes where isLabel(name) {
            if let ip = IPAddress(node.value.address) { builder.add(builder.name(name, "node"), config.nodeTTLSeconds, ip.rdata) }
        }

        for (service, _) in state.serviceNames.sorted(by: { $0.key < $1.key }) where isLabel(service) {
            let ttl = ttl(of: service, in: state, config)
            let serviceName = builder.name(service, "service")
            let rfc2782 = builder.name("_" + service, "_tcp", "service")
            for instance in state.instances(of: service) {
                let health = state.health(of: instance.value)
                guard health == .passing || (health == .warning && !config.onlyPassing) else { continue }
                guard let ip = IPAddress(state.address(of: instance.value)) else { continue }
                // SRV target: the node's name when the instance uses the node's address, else
                // a name for the address itself (Consul's `HEX.addr.DOMAIN`).
                let target: DomainName
                if isLabel(instance.value.node), state.nodes[instance.value.node].flatMap({ IPAddress($0.value.address) }) == ip {
                    target = builder.name(instance.value.node, "node")
                } else {
                    target = builder.name(ip.hexLabel, "addr")
                    builder.add(target, config.nodeTTLSeconds, ip.rdata)
                }
                let weight = health == .passing ? instance.value.weights.passing : instance.value.weights.warning
                let srv = RData.srv(priority: 1, weight: UInt16(clamping: weight), port: UInt16(clamping: instance.value.port),
                                    target: target)
                builder.add(serviceName, ttl, ip.rdata)
                builder.add(serviceName, ttl, srv)
                builder.add(rfc2782, ttl, srv)
                for tag in Set(instance.value.tags) where isLabel(tag) {
                    let tagged = builder.name(tag, service, "service")
                    builder.add(tagged, ttl, ip.rdata)
                    builder.add(tagged, ttl, srv)
                    // RFC 2782 form with the tag as protocol label; `_tcp`/`_udp` mean any tag.
                    if tag != "tcp" && tag != "udp" { builder.add(builder.name("_" + service, "_" + tag, "service"), ttl, srv) }
                }
            }
        }
        return try Zone(origin: config.domain, records: builder.records, source: "<registry>")
    }

    static func ttl(of service: String, in state: CatalogState, _ config: ServiceViewConfig) -> UInt32 {
        // The first instance (by node, ID) that sets the meta key decides.
        for instance in state.instances(of: service) {
            if let text = instance.value.meta[ServiceViewConfig.ttlMetaKey], let seconds = UInt32(text) {
                return min(seconds, ServiceViewConfig.serviceTTLSecondsMax)
            }
        }
        return config.serviceTTLSeconds
    }

    struct Builder {
        let domain: DomainName
        var records: [ParsedRecord] = []
        private var seen: Set<ResourceRecord> = []
        private let position = SourcePosition(file: "<registry>", line: 1, column: 1)

        init(domain: DomainName) { self.domain = domain }

        /// `labels` are single labels already checked by `isLabel`, so the name always parses.
        func name(_ labels: String...) -> DomainName {
            do {
                return try DomainName(labels.joined(separator: "."), origin: domain)
            } catch {
                preconditionFailure("label check let through \(labels): \(error)")
            }
        }

        mutating func add(_ owner: DomainName, _ ttl: UInt32, _ rdata: RData) {
            let record = ResourceRecord(name: owner, ttl: ttl, rdata: rdata)
            guard seen.insert(record).inserted else { return }
            records.append(ParsedRecord(record: record, position: position))
        }
    }
}
