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
    package static func isLabel(_ text: String) -> Bool {
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

    /// Builds the whole zone, nothing cached (tests; `ServiceViewBuilder` is the incremental one).
    public static func zone(from state: CatalogState, config: ServiceViewConfig) throws(ZoneLoadError) -> Zone {
        var records = apexRecords(state, config) + nodeRecords(state, config)
        for service in state.registeredServiceNames.sorted() { records += self.records(ofService: service, in: state, config) }
        return try zone(records, config)
    }

    static let position = SourcePosition(file: "<registry>", line: 1, column: 1)

    static func zone(_ records: [ResourceRecord], _ config: ServiceViewConfig) throws(ZoneLoadError) -> Zone {
        try Zone(origin: config.domain, records: records.map { ParsedRecord(record: $0, position: position) }, source: "<registry>")
    }

    /// SOA (serial: the catalog index), NS and the name servers' addresses.
    static func apexRecords(_ state: CatalogState, _ config: ServiceViewConfig) -> [ResourceRecord] {
        let names = Names(domain: config.domain)
        let negativeTTL = config.negativeTTLSeconds
        let nameServer = names.name("ns")
        var records = [
            ResourceRecord(name: config.domain, ttl: negativeTTL, rdata: .soa(SOAData(
                mname: nameServer, rname: names.name("hostmaster"), serial: UInt32(truncatingIfNeeded: state.index),
                refresh: 3600, retry: 600, expire: 86_400, minimum: negativeTTL))),
            ResourceRecord(name: config.domain, ttl: negativeTTL, rdata: .ns(nameServer)),
        ]
        for address in config.nameServerAddresses {
            if let ip = IPAddress(address) { records.append(ResourceRecord(name: nameServer, ttl: config.nodeTTLSeconds, rdata: ip.rdata)) }
        }
        return records
    }

    /// NODE.node.DOMAIN for every node with an IP address.
    static func nodeRecords(_ state: CatalogState, _ config: ServiceViewConfig) -> [ResourceRecord] {
        let names = Names(domain: config.domain)
        var records: [ResourceRecord] = []
        for (name, node) in state.nodes where isLabel(name) {
            if let ip = IPAddress(node.value.address) {
                records.append(ResourceRecord(name: names.name(name, "node"), ttl: config.nodeTTLSeconds, rdata: ip.rdata))
            }
        }
        return records
    }

    /// Everything one service puts in DNS: its healthy instances' addresses and SRV records
    /// under every name form, and the `.addr.` names its SRV targets need. Depends only on the
    /// service's instances, their checks and their nodes: what its modify index covers.
    static func records(ofService service: String, in state: CatalogState, _ config: ServiceViewConfig) -> [ResourceRecord] {
        guard isLabel(service) else { return [] }
        let ttl = ttl(of: service, in: state, config)
        return state.instances(of: service).flatMap { records(of: $0.value, ttl: ttl, in: state, config) }
    }

    /// What one instance adds to its service's names (nothing unless it is healthy). Depends
    /// on the instance, its health, its node's address and the service's TTL.
    static func records(of instance: ServiceInstance, ttl: UInt32, in state: CatalogState,
                        _ config: ServiceViewConfig) -> [ResourceRecord] {
        let service = instance.name
        guard isLabel(service) else { return [] }
        let health = state.health(of: instance)
        guard health == .passing || (health == .warning && !config.onlyPassing) else { return [] }
        guard let ip = IPAddress(state.address(of: instance)) else { return [] }
        let names = Names(domain: config.domain)
        var records: [ResourceRecord] = []
        func add(_ owner: DomainName, _ ttl: UInt32, _ rdata: RData) { records.append(ResourceRecord(name: owner, ttl: ttl, rdata: rdata)) }
        // SRV target: the node's name when the instance uses the node's address, else
        // a name for the address itself (Consul's `HEX.addr.DOMAIN`).
        let target: DomainName
        if isLabel(instance.node), state.nodes[instance.node].flatMap({ IPAddress($0.value.address) }) == ip {
            target = names.name(instance.node, "node")
        } else {
            target = names.name(ip.hexLabel, "addr")
            add(target, config.nodeTTLSeconds, ip.rdata)
        }
        let weight = health == .passing ? instance.weights.passing : instance.weights.warning
        let srv = RData.srv(priority: 1, weight: UInt16(clamping: weight), port: UInt16(clamping: instance.port), target: target)
        let serviceName = names.name(service, "service")
        add(serviceName, ttl, ip.rdata)
        add(serviceName, ttl, srv)
        add(names.name("_" + service, "_tcp", "service"), ttl, srv)
        for tag in Set(instance.tags) where isLabel(tag) {
            let tagged = names.name(tag, service, "service")
            add(tagged, ttl, ip.rdata)
            add(tagged, ttl, srv)
            // RFC 2782 form with the tag as protocol label; `_tcp`/`_udp` mean any tag.
            if tag != "tcp" && tag != "udp" { add(names.name("_" + service, "_" + tag, "service"), ttl, srv) }
        }
        return records
    }

    /// The first instance (by node, ID) that sets the meta key `dns-ttl` decides its service's TTL.
    static func ttl(of service: String, in state: CatalogState, _ config: ServiceViewConfig) -> UInt32 {
        var first: (key: NodeScopedID, seconds: UInt32)?
        for instance in state.unorderedInstances(of: service) {
            guard let seconds = ttlSetting(of: instance.value) else { continue }
            let key = NodeScopedID(node: instance.value.node, id: instance.value.id)
            if first == nil || key < first!.key { first = (key, seconds) }
        }
        return first?.seconds ?? config.serviceTTLSeconds
    }

    /// The TTL an instance asks for with the meta key `dns-ttl`, clamped; nil if none.
    static func ttlSetting(of instance: ServiceInstance) -> UInt32? {
        instance.meta[ServiceViewConfig.ttlMetaKey].flatMap { UInt32($0) }.map { min($0, ServiceViewConfig.serviceTTLSecondsMax) }
    }

    /// Names under the domain from labels that `isLabel` accepted, so they always parse.
    struct Names {
        let domain: DomainName

        func name(_ labels: String...) -> DomainName {
            do {
                return try DomainName(labels.joined(separator: "."), origin: domain)
            } catch {
                preconditionFailure("label check let through \(labels): \(error)")
            }
        }
    }
}

/// Keeps the registry zone's records up to date instance by instance: a registration derives
/// and compiles the records of one instance, even in a service of thousands, and counts them
/// into its service's `ZoneFragmentTally`; the zone is then assembled from the services' cached
/// fragments (the View is still rebuilt whole and swapped, never patched in place).
public final class ServiceViewBuilder {
    /// What an instance's records depend on besides the configuration.
    private struct Inputs: Equatable {
        let modifyIndex: UInt64
        let health: HealthStatus
        let nodeAddress: String?
        let ttl: UInt32
    }

    private struct Service {
        var tally: ZoneFragmentTally
        var fragment = ZoneFragment.empty
        var instances: [NodeScopedID: (inputs: Inputs, records: [ResourceRecord])] = [:]
        /// Instances that set the `dns-ttl` meta key, with its value: they decide the TTL.
        var ttlSetters: [NodeScopedID: UInt32] = [:]
        var ttl: UInt32
    }

    private let config: ServiceViewConfig
    private var services: [String: Service] = [:]
    /// The service each counted instance is in, to find it again once it moved or went.
    private var serviceOf: [NodeScopedID: String] = [:]
    private var nodes: (index: UInt64, fragment: ZoneFragment)?
    /// Whether `services` counts every instance: false until a build compared them all, and
    /// again after a failed build (it may have stopped half way).
    private var complete = false

    public init(config: ServiceViewConfig) {
        self.config = config
    }

    /// The zone for `state`. `changed`: the instances that changed since the last call
    /// (`CatalogChange.instances`, gathered), or nil to compare every instance (the first
    /// build, after a snapshot restore).
    public func zone(from state: CatalogState, changed: Set<NodeScopedID>? = nil) throws(ZoneLoadError) -> Zone {
        if nodes == nil || nodes?.index != state.nodesIndex {
            nodes = (state.nodesIndex, try ZoneFragment(records: ServiceView.nodeRecords(state, config), origin: config.domain,
                                                        source: ServiceView.position.file))
        }
        // Which instances to look at, by service: where each is now, and where it was counted.
        var visits: [String: Set<NodeScopedID>] = [:]
        if complete, let changed {
            for key in changed {
                if let name = state.services[key]?.value.name { visits[name, default: []].insert(key) }
                if let name = serviceOf[key] { visits[name, default: []].insert(key) }
            }
        } else {
            for name in state.registeredServiceNames {
                visits[name, default: []].formUnion(state.unorderedInstances(of: name).map { NodeScopedID(node: $0.value.node, id: $0.value.id) })
            }
            for (key, name) in serviceOf { visits[name, default: []].insert(key) }
        }
        complete = false
        for (name, keys) in visits { try update(name, keys, state) }
        complete = true

        var fragments = [try ZoneFragment(records: ServiceView.apexRecords(state, config), origin: config.domain,
                                          source: ServiceView.position.file), nodes!.fragment]
        fragments.reserveCapacity(services.count + 2)
        for service in services.values where !service.fragment.isEmpty { fragments.append(service.fragment) }
        return try Zone(origin: config.domain, fragments: fragments, source: ServiceView.position.file)
    }

    /// Re-derives the instances `keys` of service `name`, or all of them if its TTL moved.
    private func update(_ name: String, _ keys: Set<NodeScopedID>, _ state: CatalogState) throws(ZoneLoadError) {
        var service = services.removeValue(forKey: name)
            ?? Service(tally: ZoneFragmentTally(origin: config.domain, source: ServiceView.position.file), ttl: config.serviceTTLSeconds)
        // An instance counts here while it is in this service (it may have moved or gone).
        func instance(_ key: NodeScopedID) -> Indexed<ServiceInstance>? {
            state.services[key].flatMap { $0.value.name == name ? $0 : nil }
        }
        for key in keys { service.ttlSetters[key] = instance(key).flatMap { ServiceView.ttlSetting(of: $0.value) } }
        // As ServiceView.ttl: the first setter by (node, ID) decides.
        let ttl = service.ttlSetters.min { $0.key < $1.key }?.value ?? config.serviceTTLSeconds
        let all = ttl != service.ttl
        service.ttl = ttl
        for key in all ? Set(service.instances.keys).union(keys) : keys {
            let instance = instance(key)
            let inputs = instance.map { Inputs(modifyIndex: $0.modifyIndex, health: state.health(of: $0.value),
                                               nodeAddress: state.nodes[$0.value.node]?.value.address, ttl: ttl) }
            let counted = service.instances[key]
            if counted?.inputs == inputs { continue }
            if let counted { service.tally.remove(counted.records) }
            if let instance, let inputs {
                let records = ServiceView.records(of: instance.value, ttl: ttl, in: state, config)
                try service.tally.add(records)
                service.instances[key] = (inputs, records)
                serviceOf[key] = name
            } else {
                service.instances[key] = nil
                if serviceOf[key] == name { serviceOf[key] = nil }
            }
        }
        service.fragment = service.tally.fragment
        if !service.instances.isEmpty { services[name] = service }
    }
}
