import HashTreeCollections
/// A record with the Raft indices at which it was created and last changed (Consul's
/// CreateIndex / ModifyIndex).
public struct Indexed<Value: Sendable & Equatable>: Sendable, Equatable {
    public var value: Value
    public var createIndex: UInt64
    public var modifyIndex: UInt64
}

/// Identifies a service instance or a check: IDs are unique per node.
public struct NodeScopedID: Hashable, Sendable, Comparable {
    public var node: String
    public var id: String

    public init(node: String, id: String) {
        self.node = node
        self.id = id
    }

    public static func < (lhs: NodeScopedID, rhs: NodeScopedID) -> Bool { (lhs.node, lhs.id) < (rhs.node, rhs.id) }
}

/// A check to register, and whether its status was given (else a new check starts critical,
/// as in Consul, and an existing one keeps its status: re-registering must not flap).
public struct CheckRegistration: Codable, Sendable, Equatable {
    public var check: CheckRecord
    public var statusGiven: Bool

    public init(_ check: CheckRecord, statusGiven: Bool) {
        self.check = check
        self.statusGiven = statusGiven
    }
}

/// One row-level change, written to registry.db in the transaction of its entry.
enum Mutation: Sendable {
    case putNode(Indexed<NodeRecord>)
    case removeNode(String)
    case putService(Indexed<ServiceInstance>)
    case removeService(NodeScopedID)
    case putCheck(Indexed<CheckRecord>)
    case removeCheck(NodeScopedID)
    case serviceIndex(name: String, index: UInt64)
    case checkRunners([UInt64])
}

/// What one applied entry changed, for watchers and the DNS view rebuild.
public struct CatalogChange: Sendable, Equatable {
    public var index: UInt64
    public var services: Set<String>
    public var nodesChanged: Bool
    /// The servers that run checks changed (`CatalogState.checkRunners`).
    public var checkRunnersChanged = false
    /// The instances whose DNS records may have changed (their record, checks or node), gone
    /// ones included; nil: any of them (a snapshot restore).
    public var instances: Set<NodeScopedID>? = []
    /// The checks put or removed (keyed by node and check ID); nil: any of them (a snapshot
    /// restore). The health checker reconciles only these, not every check, per entry.
    public var checks: Set<NodeScopedID>? = []

    /// `instance` of service `name` changed.
    mutating func affect(_ name: String, _ instance: NodeScopedID) {
        services.insert(name)
        instances?.insert(instance)
    }
}

/// The whole catalog in memory: the authority for reads and the DNS view; registry.db is its
/// durable copy. A value type: readers take a copy (copy-on-write) and read it without a lock.
public struct CatalogState: Sendable {
    // Persistent hash tries (swift-collections' TreeDictionary/TreeSet), not Dictionary/Set: a
    // reader's copy shares structure, so the apply after it copies the paths it changes, not the
    // whole catalog. With Dictionary, an apply while the DNS view rebuild or an HTTP request held
    // a copy duplicated every table: 100–170 ms per entry at 20,000 agents on the Raft thread.
    public private(set) var nodes: TreeDictionary<String, Indexed<NodeRecord>> = [:]
    public private(set) var services: TreeDictionary<NodeScopedID, Indexed<ServiceInstance>> = [:]
    public private(set) var checks: TreeDictionary<NodeScopedID, Indexed<CheckRecord>> = [:]
    /// Per service name, the last index at which any of its instances or their health changed.
    /// Kept after the last instance goes, so a blocking query on it sees the removal.
    public private(set) var serviceIndex: TreeDictionary<String, UInt64> = [:]
    /// The last index at which anything in the catalog changed.
    public private(set) var index: UInt64 = 0
    /// The last index at which a node was added, changed or removed.
    public private(set) var nodesIndex: UInt64 = 0
    /// The Raft IDs of the servers that run health checks, ascending (the last `checkRunners`
    /// command): not catalog data, so changing it moves no index.
    public private(set) var checkRunners: [UInt64] = []

    private(set) var instancesByName: TreeDictionary<String, TreeSet<NodeScopedID>> = [:]
    private(set) var servicesByNode: TreeDictionary<String, Set<String>> = [:]
    private(set) var checksByNode: TreeDictionary<String, Set<String>> = [:]
    /// Check IDs by what they watch: (node, service ID), or (node, "") for node checks. An
    /// instance's health reads two of these, not every check of its node.
    private var checksByOwner: TreeDictionary<NodeScopedID, Set<String>> = [:]

    public init() {}

    // MARK: - Applying

    /// Applies `command` at `index`, returning the row changes to persist and what changed.
    /// Deterministic and total: a command that refers to something absent is a no-op, so every
    /// server reaches the same state from the same log.
    mutating func apply(_ command: CatalogCommand, at index: UInt64) -> ([Mutation], CatalogChange) {
        var mutations: [Mutation] = []
        var change = CatalogChange(index: index, services: [], nodesChanged: false)
        execute(command, at: index, &mutations, &change)
        for name in change.services {
            serviceIndex[name] = index
            mutations.append(.serviceIndex(name: name, index: index))
        }
        if mutations.contains(where: { if case .checkRunners = $0 { false } else { true } }) { self.index = index }
        if change.nodesChanged { nodesIndex = index }
        return (mutations, change)
    }

    private mutating func execute(_ command: CatalogCommand, at index: UInt64, _ mutations: inout [Mutation],
                                  _ change: inout CatalogChange) {
        switch command {
        case .batch(let commands):
            for command in commands { execute(command, at: index, &mutations, &change) }
        case .register(let node, let service, let registrations, let replaceChecks):
            if nodes[node.name]?.value != node {
                let created = nodes[node.name]?.createIndex ?? index
                let record = Indexed(value: node, createIndex: created, modifyIndex: index)
                nodes[node.name] = record
                mutations.append(.putNode(record))
                change.nodesChanged = true
                // Node address and meta show in every answer of its services.
                for id in servicesByNode[node.name] ?? [] {
                    let key = NodeScopedID(node: node.name, id: id)
                    if let name = services[key]?.value.name { change.affect(name, key) }
                }
            }
            if var service {
                service.node = node.name
                let key = NodeScopedID(node: node.name, id: service.id)
                let existing = services[key]
                if existing?.value != service {
                    if let existing, existing.value.name != service.name {
                        // Renamed: the old name loses an instance.
                        instancesByName[existing.value.name]?.remove(key)
                        if instancesByName[existing.value.name]?.isEmpty == true { instancesByName[existing.value.name] = nil }
                        change.affect(existing.value.name, key)
                    }
                    let record = Indexed(value: service, createIndex: existing?.createIndex ?? index, modifyIndex: index)
                    services[key] = record
                    instancesByName[service.name, default: []].insert(key)
                    servicesByNode[node.name, default: []].insert(service.id)
                    mutations.append(.putService(record))
                    change.affect(service.name, key)
                }
                if replaceChecks {
                    let listed = Set(registrations.map(\.check.id))
                    for id in checksByOwner[key] ?? [] where !listed.contains(id) {
                        removeCheck(NodeScopedID(node: node.name, id: id), &mutations, &change)
                    }
                }
            }
            for registration in registrations {
                var check = registration.check
                check.node = node.name
                // A check of a service that is not on the node is ignored (the API refuses it first).
                if !check.serviceID.isEmpty && services[NodeScopedID(node: node.name, id: check.serviceID)] == nil { continue }
                putCheck(check, statusGiven: registration.statusGiven, at: index, &mutations, &change)
            }
        case .deregister(let node, let serviceID, let checkID):
            if let checkID {
                removeCheck(NodeScopedID(node: node, id: checkID), &mutations, &change)
            } else if let serviceID {
                removeService(NodeScopedID(node: node, id: serviceID), &mutations, &change)
            } else if nodes[node] != nil {
                for id in servicesByNode[node] ?? [] { removeService(NodeScopedID(node: node, id: id), &mutations, &change) }
                for id in checksByNode[node] ?? [] { removeCheck(NodeScopedID(node: node, id: id), &mutations, &change) }
                nodes[node] = nil
                servicesByNode[node] = nil
                checksByNode[node] = nil
                mutations.append(.removeNode(node))
                change.nodesChanged = true
            }
        case .updateCheck(let node, let checkID, let status, let output):
            setStatus(CheckStatusUpdate(node: node, checkID: checkID, status: status, output: output), at: index,
                      &mutations, &change)
        case .checkStatuses(let updates):
            for update in updates { setStatus(update, at: index, &mutations, &change) }
        case .checkRunners(let servers):
            let sorted = Array(Set(servers)).sorted()
            guard sorted != checkRunners else { return }
            checkRunners = sorted
            mutations.append(.checkRunners(sorted))
            change.checkRunnersChanged = true
        }
    }

    private mutating func setStatus(_ update: CheckStatusUpdate, at index: UInt64, _ mutations: inout [Mutation],
                                    _ change: inout CatalogChange) {
        guard var check = checks[NodeScopedID(node: update.node, id: update.checkID)]?.value else { return }
        check.status = update.status
        check.output = update.output
        putCheck(check, statusGiven: true, at: index, &mutations, &change)
    }

    private mutating func putCheck(_ check: CheckRecord, statusGiven: Bool, at index: UInt64,
                                   _ mutations: inout [Mutation], _ change: inout CatalogChange) {
        let key = NodeScopedID(node: check.node, id: check.id)
        let existing = checks[key]
        var check = check
        if !statusGiven, let existing {
            check.status = existing.value.status
            check.output = existing.value.output
        }
        guard existing?.value != check else { return }
        let record = Indexed(value: check, createIndex: existing?.createIndex ?? index, modifyIndex: index)
        checks[key] = record
        checksByNode[check.node, default: []].insert(check.id)
        if let old = existing?.value, old.serviceID != check.serviceID { unindex(owner: old) }
        checksByOwner[Self.owner(of: check), default: []].insert(check.id)
        mutations.append(.putCheck(record))
        change.checks?.insert(key)
        markAffected(by: check, &change)
        if let old = existing?.value, old.serviceID != check.serviceID { markAffected(by: old, &change) }
    }

    private mutating func removeCheck(_ key: NodeScopedID, _ mutations: inout [Mutation], _ change: inout CatalogChange) {
        guard let existing = checks.removeValue(forKey: key) else { return }
        checksByNode[key.node]?.remove(key.id)
        unindex(owner: existing.value)
        mutations.append(.removeCheck(key))
        change.checks?.insert(key)
        markAffected(by: existing.value, &change)
    }

    private mutating func removeService(_ key: NodeScopedID, _ mutations: inout [Mutation], _ change: inout CatalogChange) {
        guard let existing = services.removeValue(forKey: key) else { return }
        instancesByName[existing.value.name]?.remove(key)
        if instancesByName[existing.value.name]?.isEmpty == true { instancesByName[existing.value.name] = nil }
        servicesByNode[key.node]?.remove(key.id)
        mutations.append(.removeService(key))
        change.affect(existing.value.name, key)
        // Consul removes a service's checks with it.
        for id in checksByOwner[key] ?? [] where !key.id.isEmpty {
            removeCheck(NodeScopedID(node: key.node, id: id), &mutations, &change)
        }
    }

    private static func owner(of check: CheckRecord) -> NodeScopedID {
        NodeScopedID(node: check.node, id: check.serviceID)
    }

    private mutating func unindex(owner check: CheckRecord) {
        let owner = Self.owner(of: check)
        checksByOwner[owner]?.remove(check.id)
        if checksByOwner[owner]?.isEmpty == true { checksByOwner[owner] = nil }
    }

    /// A service check affects its service; a node check affects every service on the node.
    private func markAffected(by check: CheckRecord, _ change: inout CatalogChange) {
        if !check.serviceID.isEmpty {
            let key = NodeScopedID(node: check.node, id: check.serviceID)
            if let name = services[key]?.value.name { change.affect(name, key) }
        } else {
            for id in servicesByNode[check.node] ?? [] {
                let key = NodeScopedID(node: check.node, id: id)
                if let name = services[key]?.value.name { change.affect(name, key) }
            }
        }
    }

    /// Whether applying `command` now would change anything: a registration or check update
    /// that would not is answered without a log entry (herd safety: re-registration storms
    /// and TTL renewals cost no writes).
    public func wouldChange(_ command: CatalogCommand) -> Bool {
        switch command {
        case .batch(let commands):
            return commands.contains { wouldChange($0) }
        case .register(let node, let service, let registrations, let replaceChecks):
            if nodes[node.name]?.value != node { return true }
            if var service {
                service.node = node.name
                if services[NodeScopedID(node: node.name, id: service.id)]?.value != service { return true }
                if replaceChecks {
                    let listed = Set(registrations.map(\.check.id))
                    let owned = checksByOwner[NodeScopedID(node: node.name, id: service.id)] ?? []
                    if !owned.isSubset(of: listed) { return true }
                }
            }
            for registration in registrations {
                var check = registration.check
                check.node = node.name
                guard let existing = checks[NodeScopedID(node: node.name, id: check.id)] else { return true }
                if !registration.statusGiven {
                    check.status = existing.value.status
                    check.output = existing.value.output
                }
                if existing.value != check { return true }
            }
            return false
        case .deregister(let node, let serviceID, let checkID):
            if let checkID { return checks[NodeScopedID(node: node, id: checkID)] != nil }
            if let serviceID { return services[NodeScopedID(node: node, id: serviceID)] != nil }
            return nodes[node] != nil
        case .updateCheck(let node, let checkID, let status, let output):
            guard let check = checks[NodeScopedID(node: node, id: checkID)]?.value else { return false }
            return check.status != status || check.output != output
        case .checkStatuses(let updates):
            return updates.contains { update in
                guard let check = checks[NodeScopedID(node: update.node, id: update.checkID)]?.value else { return false }
                return check.status != update.status || check.output != update.output
            }
        case .checkRunners(let servers):
            return Array(Set(servers)).sorted() != checkRunners
        }
    }

    // MARK: - Loading (from registry.db at start-up)

    mutating func load(node: Indexed<NodeRecord>) {
        nodes[node.value.name] = node
    }

    mutating func load(service: Indexed<ServiceInstance>) {
        let key = NodeScopedID(node: service.value.node, id: service.value.id)
        services[key] = service
        instancesByName[service.value.name, default: []].insert(key)
        servicesByNode[service.value.node, default: []].insert(service.value.id)
    }

    mutating func load(check: Indexed<CheckRecord>) {
        checks[NodeScopedID(node: check.value.node, id: check.value.id)] = check
        checksByNode[check.value.node, default: []].insert(check.value.id)
        checksByOwner[Self.owner(of: check.value), default: []].insert(check.value.id)
    }

    mutating func load(serviceIndex name: String, _ index: UInt64) {
        serviceIndex[name] = index
    }

    mutating func load(checkRunners servers: [UInt64]) {
        checkRunners = servers.sorted()
    }

    mutating func load(index: UInt64, nodesIndex: UInt64) {
        self.index = index
        self.nodesIndex = nodesIndex
    }

    // MARK: - Reading

    /// Every service name with at least one instance, and the union of its instances' tags.
    public var serviceNames: [String: [String]] {
        var out: [String: [String]] = [:]
        for (name, keys) in instancesByName where !keys.isEmpty {
            var tags = Set<String>()
            for key in keys { tags.formUnion(services[key]?.value.tags ?? []) }
            out[name] = tags.sorted()
        }
        return out
    }

    /// The modify index a blocking query on service `name` waits on. A name never seen gets the
    /// catalog's index, which any later registration of it exceeds.
    public func modifyIndex(ofService name: String) -> UInt64 {
        max(serviceIndex[name] ?? index, 1)
    }

    /// The highest per-service index: what /v1/catalog/services waits on.
    public var servicesIndex: UInt64 { max(serviceIndex.values.max() ?? 0, 1) }

    /// The instances of `name` carrying every tag in `tags`, ordered by node then ID.
    public func instances(of name: String, tags: [String] = []) -> [Indexed<ServiceInstance>] {
        (instancesByName[name] ?? []).sorted().compactMap { services[$0] }.filter { instance in
            tags.allSatisfy { instance.value.tags.contains($0) }
        }
    }

    /// The checks that decide an instance's health: its own and its node's.
    public func checks(of instance: ServiceInstance) -> [Indexed<CheckRecord>] {
        let own = checksByOwner[NodeScopedID(node: instance.node, id: instance.id)] ?? []
        let node = checksByOwner[NodeScopedID(node: instance.node, id: "")] ?? []
        return own.union(node).sorted().compactMap { checks[NodeScopedID(node: instance.node, id: $0)] }
    }

    /// Whether the instance or its node is in maintenance (`_service_maintenance:ID` or
    /// `_node_maintenance` critical).
    public func isInMaintenance(_ instance: ServiceInstance) -> Bool {
        for id in [maintenanceCheckPrefix + instance.id, nodeMaintenanceCheckID] {
            if checks[NodeScopedID(node: instance.node, id: id)]?.value.status == .critical { return true }
        }
        return false
    }

    /// The worst status of an instance's checks; passing when it has none (Consul).
    public func health(of instance: ServiceInstance) -> HealthStatus {
        var worst = HealthStatus.passing
        for owner in [instance.id, ""] {
            for id in checksByOwner[NodeScopedID(node: instance.node, id: owner)] ?? [] {
                if let status = checks[NodeScopedID(node: instance.node, id: id)]?.value.status, status > worst { worst = status }
            }
        }
        return worst
    }

    /// The names of the services with at least one instance, in no order (cheaper than
    /// `serviceNames`, which collects every service's tags).
    public var registeredServiceNames: TreeDictionary<String, TreeSet<NodeScopedID>>.Keys { instancesByName.keys }

    /// The instances of `name`, in no order.
    public func unorderedInstances(of name: String) -> [Indexed<ServiceInstance>] {
        (instancesByName[name] ?? []).compactMap { services[$0] }
    }

    public func services(onNode node: String) -> [Indexed<ServiceInstance>] {
        (servicesByNode[node] ?? []).sorted().compactMap { services[NodeScopedID(node: node, id: $0)] }
    }

    public func checks(onNode node: String) -> [Indexed<CheckRecord>] {
        (checksByNode[node] ?? []).sorted().compactMap { checks[NodeScopedID(node: node, id: $0)] }
    }

    /// The address clients reach an instance on: its own, else its node's (Consul).
    public func address(of instance: ServiceInstance) -> String {
        instance.address.isEmpty ? (nodes[instance.node]?.value.address ?? "") : instance.address
    }
}
