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
    /// A name whose healthy instances are fewer than this percentage of its instances answers
    /// with every instance, failing ones included (fail open, Envoy's panic threshold); 0: never.
    /// A service overrides it with meta `panic-threshold`.
    public var panicThresholdPercent: Int
    /// An instance that becomes answerable ramps from 10% to its full weight over this; 0: off.
    public var slowStartSeconds: UInt32
    /// At most this many records per service answer (Consul's `a_record_limit`); 0: as many
    /// as fit the client's buffer. A service lowers it with meta `dns-record-limit`.
    public var recordsMax: Int

    public static let serviceTTLSecondsDefault: UInt32 = 5
    public static let nodeTTLSecondsDefault: UInt32 = 5
    public static let negativeTTLSecondsDefault: UInt32 = 5
    /// A per-service TTL above this is clamped: a day is as long as any resolver should cache.
    public static let serviceTTLSecondsMax: UInt32 = 86_400
    /// The service meta key that overrides the TTL of one service's answers.
    public static let ttlMetaKey = "dns-ttl"
    /// Half the instances failing is the point where the survivors would take double their
    /// load: below it, spreading over every instance hurts less than overloading the rest.
    public static let panicThresholdPercentDefault = 50
    /// The service meta key that overrides the panic threshold (an integer percentage 0...100).
    public static let panicThresholdMetaKey = "panic-threshold"
    /// 30 s: long enough for a JIT, a connection pool or a cache to warm, short enough that a
    /// rolling restart of a fleet is not slowed (Envoy's `slow_start_window` examples).
    public static let slowStartSecondsDefault: UInt32 = 30
    /// A slow start longer than an hour is a misconfiguration.
    public static let slowStartSecondsMax: UInt32 = 3600
    /// The service meta key that caps one service's answers (a positive integer; it can only
    /// lower `recordsMax`).
    public static let recordsMaxMetaKey = "dns-record-limit"

    public init(domain: DomainName, serviceTTLSeconds: UInt32 = Self.serviceTTLSecondsDefault,
                nodeTTLSeconds: UInt32 = Self.nodeTTLSecondsDefault,
                negativeTTLSeconds: UInt32 = Self.negativeTTLSecondsDefault, onlyPassing: Bool = false,
                nameServerAddresses: [String] = [], panicThresholdPercent: Int = Self.panicThresholdPercentDefault,
                slowStartSeconds: UInt32 = Self.slowStartSecondsDefault, recordsMax: Int = 0) {
        self.panicThresholdPercent = panicThresholdPercent
        self.slowStartSeconds = slowStartSeconds
        self.recordsMax = recordsMax
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

    /// Builds the whole zone from scratch (tests; the daemon keeps a `ServiceViewBuilder`).
    /// Every instance counts as warm (no slow start).
    public static func zone(from state: CatalogState, config: ServiceViewConfig) throws(ZoneLoadError) -> Zone {
        try ServiceViewBuilder(config: config).zone(from: state)
    }

    static let position = SourcePosition(file: "<registry>", line: 1, column: 1)

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

    /// A record a service name answers by per-query selection (`RecordSelection`).
    struct Candidate {
        let owner: DomainName
        let rdata: RData
        let compiled: CompiledRData
        let weight: UInt32
    }

    /// What one instance adds to DNS: the records its service's names select from, and the
    /// plain records its SRV targets need (`HEX.addr.DOMAIN`). Empty unless the instance is
    /// answerable (passing, or warning unless `only_passing`) or, with a panic threshold, kept
    /// aside for panic. Depends on the instance, its health, its node's address and its
    /// service's settings.
    struct Derived {
        var candidates: [Candidate] = []
        var plain: [ResourceRecord] = []
        /// Answered outside panic.
        var answerable = false
    }

    static func derive(_ instance: ServiceInstance, settings: ServiceSettings, in state: CatalogState,
                       _ config: ServiceViewConfig) -> Derived {
        let service = instance.name
        guard isLabel(service) else { return Derived() }
        let health = state.health(of: instance)
        let answerable = health == .passing || (health == .warning && !config.onlyPassing)
        guard answerable || settings.panicThresholdPercent > 0 else { return Derived() }
        // An instance an operator put in maintenance is out of DNS, panic or not, and does not
        // count toward its service's healthy fraction: maintenance is a decision, not a failure.
        guard answerable || !state.isInMaintenance(instance) else { return Derived() }
        guard let ip = IPAddress(state.address(of: instance)) else { return Derived() }
        let names = Names(domain: config.domain)
        var derived = Derived(answerable: answerable)
        // SRV target: the node's name when the instance uses the node's address, else
        // a name for the address itself (Consul's `HEX.addr.DOMAIN`).
        let target: DomainName
        if isLabel(instance.node), state.nodes[instance.node].flatMap({ IPAddress($0.value.address) }) == ip {
            target = names.name(instance.node, "node")
        } else {
            target = names.name(ip.hexLabel, "addr")
            derived.plain.append(ResourceRecord(name: target, ttl: config.nodeTTLSeconds, rdata: ip.rdata))
        }
        // Passing: Weights.Passing. Warning, and (answered only in panic) critical: Weights.Warning.
        let weight = UInt32(clamping: min(max(health == .passing ? instance.weights.passing : instance.weights.warning, 0),
                                          Int(UInt16.max)))
        let srv = RData.srv(priority: 1, weight: UInt16(weight), port: UInt16(clamping: instance.port), target: target)
        let address = CompiledRData(ip.rdata)
        let compiledSRV = CompiledRData(srv)
        func add(_ owner: DomainName, _ rdata: RData, _ compiled: CompiledRData) {
            derived.candidates.append(Candidate(owner: owner, rdata: rdata, compiled: compiled, weight: weight))
        }
        let serviceName = names.name(service, "service")
        add(serviceName, ip.rdata, address)
        add(serviceName, srv, compiledSRV)
        add(names.name("_" + service, "_tcp", "service"), srv, compiledSRV)
        for tag in Set(instance.tags) where isLabel(tag) {
            let tagged = names.name(tag, service, "service")
            add(tagged, ip.rdata, address)
            add(tagged, srv, compiledSRV)
            // RFC 2782 form with the tag as protocol label; `_tcp`/`_udp` mean any tag.
            if tag != "tcp" && tag != "udp" { add(names.name("_" + service, "_" + tag, "service"), srv, compiledSRV) }
        }
        return derived
    }

    /// What an instance asks of its whole service through meta keys; the first instance by
    /// (node, ID) that sets a key decides it (as Consul's `dns-ttl`-like settings would).
    struct InstanceSettings: Equatable {
        var ttl: UInt32?
        var panicThresholdPercent: Int?
        var recordsMax: Int?

        init(_ instance: ServiceInstance) {
            ttl = instance.meta[ServiceViewConfig.ttlMetaKey].flatMap { UInt32($0) }.map { min($0, ServiceViewConfig.serviceTTLSecondsMax) }
            panicThresholdPercent = instance.meta[ServiceViewConfig.panicThresholdMetaKey]
                .flatMap { Int($0) }.flatMap { (0...100).contains($0) ? $0 : nil }
            recordsMax = instance.meta[ServiceViewConfig.recordsMaxMetaKey]
                .flatMap { Int($0) }.flatMap { $0 >= 0 ? $0 : nil }
        }

        var isEmpty: Bool { ttl == nil && panicThresholdPercent == nil && recordsMax == nil }
    }

    /// One service's settings: the config's, each overridden by the first instance setting it.
    struct ServiceSettings: Equatable {
        var ttl: UInt32
        var panicThresholdPercent: Int
        /// 0: as many as fit. The meta key can only lower the global cap.
        var recordsMax: Int

        init(_ setters: [NodeScopedID: InstanceSettings], _ config: ServiceViewConfig) {
            let ordered = setters.sorted { $0.key < $1.key }.map(\.value)
            ttl = ordered.lazy.compactMap(\.ttl).first ?? config.serviceTTLSeconds
            panicThresholdPercent = ordered.lazy.compactMap(\.panicThresholdPercent).first ?? config.panicThresholdPercent
            let own = ordered.lazy.compactMap(\.recordsMax).first ?? 0
            recordsMax = config.recordsMax == 0 ? own : (own == 0 ? config.recordsMax : min(own, config.recordsMax))
        }
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

/// Keeps the registry zone up to date instance by instance: a registration derives and
/// compiles the records of one instance, even in a service of thousands. A service's plain
/// records (`HEX.addr.` targets) are counted into a `ZoneFragmentTally`; its names' A/AAAA/SRV
/// RRsets are assembled, with their `RecordSelection` (weights, slow start, the failing
/// instances kept aside for panic), from the instances' cached records; the zone is then
/// linked from the services' fragments (the View is still rebuilt whole and swapped).
public final class ServiceViewBuilder {
    /// What an instance's records depend on besides the configuration.
    private struct Inputs: Equatable {
        let modifyIndex: UInt64
        let health: HealthStatus
        let nodeAddress: String?
        let settings: ServiceView.ServiceSettings
    }

    private struct Counted {
        let inputs: Inputs
        let derived: ServiceView.Derived
        /// When this server saw the instance become answerable (monotonic milliseconds); 0: warm.
        let answerableSince: UInt64
    }

    private struct Service {
        var tally: ZoneFragmentTally
        var plain = ZoneFragment.empty
        var selected = ZoneFragment.empty
        var instances: [NodeScopedID: Counted] = [:]
        /// Instances that set a meta key of the service's settings, with what they set.
        var setters: [NodeScopedID: ServiceView.InstanceSettings] = [:]
        var settings: ServiceView.ServiceSettings
        /// Whether the service as a whole is below its panic threshold.
        var panics = false
    }

    private let config: ServiceViewConfig
    private var services: [String: Service] = [:]
    /// The service each counted instance is in, to find it again once it moved or went.
    private var serviceOf: [NodeScopedID: String] = [:]
    private var nodes: (index: UInt64, fragment: ZoneFragment)?
    /// Whether `services` counts every instance: false until a build compared them all, and
    /// again after a failed build (it may have stopped half way).
    private var complete = false
    /// Whether a build ran: the first one treats every instance as warm (a fresh server does
    /// not know how long an instance has been passing).
    private var built = false
    /// Services whose instances are mostly failing: they answer with every instance.
    public private(set) var servicesInPanic = 0

    public init(config: ServiceViewConfig) {
        self.config = config
    }

    /// The zone for `state`. `changed`: the instances that changed since the last call
    /// (`CatalogChange.instances`, gathered), or nil to compare every instance (the first
    /// build, after a snapshot restore). `nowMilliseconds`: the server's monotonic clock, the
    /// one the answer path reads (slow start starts when a build first sees an instance
    /// answerable).
    public func zone(from state: CatalogState, changed: Set<NodeScopedID>? = nil,
                     nowMilliseconds: UInt64 = 0) throws(ZoneLoadError) -> Zone {
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
        let now = built ? nowMilliseconds : 0
        for (name, keys) in visits { try update(name, keys, state, now: now) }
        complete = true
        built = true

        var fragments = [try ZoneFragment(records: ServiceView.apexRecords(state, config), origin: config.domain,
                                          source: ServiceView.position.file), nodes!.fragment]
        fragments.reserveCapacity(2 * services.count + 2)
        for service in services.values {
            if !service.plain.isEmpty { fragments.append(service.plain) }
            if !service.selected.isEmpty { fragments.append(service.selected) }
        }
        return try Zone(origin: config.domain, fragments: fragments, source: ServiceView.position.file)
    }

    /// Re-derives the instances `keys` of service `name`, or all of them if its settings moved,
    /// then reassembles its selected RRsets.
    private func update(_ name: String, _ keys: Set<NodeScopedID>, _ state: CatalogState, now: UInt64) throws(ZoneLoadError) {
        var service = services.removeValue(forKey: name)
            ?? Service(tally: ZoneFragmentTally(origin: config.domain, source: ServiceView.position.file),
                       settings: ServiceView.ServiceSettings([:], config))
        if service.panics { servicesInPanic -= 1 }
        // An instance counts here while it is in this service (it may have moved or gone).
        func instance(_ key: NodeScopedID) -> Indexed<ServiceInstance>? {
            state.services[key].flatMap { $0.value.name == name ? $0 : nil }
        }
        for key in keys {
            let setting = instance(key).map { ServiceView.InstanceSettings($0.value) }
            service.setters[key] = setting?.isEmpty == false ? setting : nil
        }
        let settings = ServiceView.ServiceSettings(service.setters, config)
        let all = settings != service.settings
        service.settings = settings
        for key in all ? Set(service.instances.keys).union(keys) : keys {
            let instance = instance(key)
            let inputs = instance.map { Inputs(modifyIndex: $0.modifyIndex, health: state.health(of: $0.value),
                                               nodeAddress: state.nodes[$0.value.node]?.value.address, settings: settings) }
            let counted = service.instances[key]
            if counted?.inputs == inputs { continue }
            if let counted { service.tally.remove(counted.derived.plain) }
            if let instance, let inputs {
                let derived = ServiceView.derive(instance.value, settings: settings, in: state, config)
                try service.tally.add(derived.plain)
                // Slow start runs from the first build that sees it answerable.
                let since = derived.answerable ? (counted?.derived.answerable == true ? counted!.answerableSince : now) : 0
                service.instances[key] = Counted(inputs: inputs, derived: derived, answerableSince: since)
                serviceOf[key] = name
            } else {
                service.instances[key] = nil
                if serviceOf[key] == name { serviceOf[key] = nil }
            }
        }
        service.plain = service.tally.fragment
        service.selected = try selectedFragment(&service)
        if service.panics { servicesInPanic += 1 }
        if !service.instances.isEmpty { services[name] = service }
    }

    /// The service's A/AAAA/SRV RRsets, each with its selection: healthy records first, then
    /// the ones kept aside for panic; a record several instances share once, with their
    /// weights summed.
    private func selectedFragment(_ service: inout Service) throws(ZoneLoadError) -> ZoneFragment {
        struct Key: Hashable {
            let owner: DomainName
            let type: RRType
        }
        struct Entry {
            let rdata: RData
            let compiled: CompiledRData
            var weight: UInt32
            var since: UInt64
        }
        struct Group {
            var healthy: [Entry] = []
            var failing: [Entry] = []
            var healthyAt: [RData: Int] = [:]
            var failingAt: [RData: Int] = [:]
            var healthyInstances = 0
            var instances = 0
        }
        var groups: [Key: Group] = [:]
        var healthyInstances = 0
        var instances = 0
        for counted in service.instances.values where !counted.derived.candidates.isEmpty {
            let answerable = counted.derived.answerable
            instances += 1
            if answerable { healthyInstances += 1 }
            for candidate in counted.derived.candidates {
                let key = Key(owner: candidate.owner, type: candidate.rdata.type)
                var group = groups.removeValue(forKey: key) ?? Group()
                if answerable {
                    if let at = group.healthyAt[candidate.rdata] {
                        group.healthy[at].weight &+= candidate.weight
                        // Warm if any instance behind it is; else the earliest.
                        let since = group.healthy[at].since
                        group.healthy[at].since = since == 0 || counted.answerableSince == 0 ? 0 : min(since, counted.answerableSince)
                    } else {
                        group.healthyAt[candidate.rdata] = group.healthy.count
                        group.healthy.append(Entry(rdata: candidate.rdata, compiled: candidate.compiled, weight: candidate.weight,
                                                   since: counted.answerableSince))
                    }
                } else if let at = group.failingAt[candidate.rdata] {
                    group.failing[at].weight &+= candidate.weight
                } else {
                    group.failingAt[candidate.rdata] = group.failing.count
                    group.failing.append(Entry(rdata: candidate.rdata, compiled: candidate.compiled, weight: candidate.weight, since: 0))
                }
                // An instance counts once per name and type (its A and SRV are different sets).
                group.instances += 1
                if answerable { group.healthyInstances += 1 }
                groups[key] = group
            }
        }
        let settings = service.settings
        service.panics = healthyInstances * 100 < settings.panicThresholdPercent * instances
        let slowStart = UInt64(config.slowStartSeconds) * 1000
        var owners: [DomainName: [RRSet]] = [:]
        for (key, group) in groups {
            // A failing record that a healthy instance also answers is in the healthy part.
            let failing = group.failing.filter { group.healthyAt[$0.rdata] == nil }
            let entries = group.healthy + failing
            let records = entries.map(\.rdata)
            let selection = RecordSelection(
                records: records, type: key.type, ttl: settings.ttl, healthyCount: group.healthy.count, weights: entries.map(\.weight),
                answerableSinceMilliseconds: slowStart > 0 && group.healthy.contains { $0.since > 0 } ? group.healthy.map(\.since) : [],
                slowStartMilliseconds: slowStart, healthyInstances: group.healthyInstances, instances: group.instances,
                panicThresholdPercent: settings.panicThresholdPercent, recordsMax: settings.recordsMax)
            // A name none of whose instances is healthy, outside panic, is not in DNS (NXDOMAIN).
            guard selection.candidateCount > 0 else { continue }
            owners[key.owner, default: []].append(RRSet(type: key.type, ttl: settings.ttl, records: records,
                                                        compiled: entries.map(\.compiled), selection: selection))
        }
        return try ZoneFragment(owners: owners.map { ($0.key, $0.value) }, origin: config.domain, source: ServiceView.position.file)
    }
}
