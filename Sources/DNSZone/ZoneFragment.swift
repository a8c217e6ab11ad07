import DNSWire

/// Records of some owners, grouped and compiled once, for assembling zones from repeatedly.
///
/// The registry keeps one fragment per service (a `ZoneFragmentTally`) and assembles its zone
/// from them after every catalog change (`Zone(origin:fragments:source:)`): a registration
/// compiles one instance's records, and the assembly only links the cached fragments, with no
/// grouping, validation, sorting or encoding of the rest.
///
/// A fragment holds plain authoritative data: SOA and NS only at the origin, and no CNAME or
/// DNAME anywhere. Those are what make master files need `Zone(origin:records:source:)`'s
/// checks (cuts, occlusion, CNAME exclusivity), so an assembled zone needs none of them.
public struct ZoneFragment: Sendable {
    struct Owner: Sendable {
        let name: DomainName
        /// `name` lowercased, in wire form: the key of the zone's name table.
        let key: [UInt8]
        let rrsets: [RRSet]
        /// For each RRset whose records have additional-section targets (NS, MX, SRV): its
        /// index in `rrsets` and each record's lowercased target (empty for none).
        let targets: [(rrset: Int, keys: [[UInt8]])]
    }

    let owners: [Owner]

    public static let empty = ZoneFragment(owners: [])

    fileprivate init(owners: [Owner]) {
        self.owners = owners
    }

    /// Groups and compiles `records`, all at or below `origin`.
    ///
    /// As in a master file, duplicates collapse and the first TTL of an RRset holds for it
    /// (RFC 2181 §5, §5.2); owners and types keep the order they first appear in.
    public init(records: [ResourceRecord], origin: DomainName, source: String) throws(ZoneLoadError) {
        let position = SourcePosition(file: source, line: 1, column: 1)
        var errors: [ZoneError] = []
        var index: [[UInt8]: Int] = [:]
        var grouped: [(name: DomainName, key: [UInt8], sets: [(type: RRType, ttl: UInt32, records: [RData])])] = []
        for record in records {
            if let problem = Self.problem(with: record, origin: origin) {
                if errors.count < ZoneLoadError.errorsMax { errors.append(ZoneError(position, problem)) }
                continue
            }
            let key = record.name.lowercased().wire
            let owner: Int
            if let known = index[key] {
                owner = known
            } else {
                owner = grouped.count
                index[key] = owner
                grouped.append((record.name, key, []))
            }
            if let set = grouped[owner].sets.firstIndex(where: { $0.type == record.rdata.type }) {
                if !grouped[owner].sets[set].records.contains(record.rdata) {
                    grouped[owner].sets[set].records.append(record.rdata)
                }
            } else {
                grouped[owner].sets.append((record.rdata.type, record.ttl, [record.rdata]))
            }
        }
        guard errors.isEmpty else { throw ZoneLoadError(errors) }
        owners = grouped.map { owner in
            var targets: [(rrset: Int, keys: [[UInt8]])] = []
            let rrsets = owner.sets.enumerated().map { offset, set in
                let keys = set.records.map { $0.additionalTarget?.lowercased().wire ?? [] }
                if keys.contains(where: { !$0.isEmpty }) { targets.append((offset, keys)) }
                return RRSet(type: set.type, ttl: set.ttl, records: set.records,
                             compiled: set.records.map { CompiledRData($0, additionalNode: -1) })
            }
            return Owner(name: owner.name, key: owner.key, rrsets: rrsets, targets: targets)
        }
    }

    /// A fragment of RRsets built by the caller (a service's selected sets), each owner once
    /// with its RRsets (one per type); they must be plain authoritative data, as
    /// `init(records:origin:source:)` checks.
    public init(owners given: [(name: DomainName, rrsets: [RRSet])], origin: DomainName, source: String) throws(ZoneLoadError) {
        let position = SourcePosition(file: source, line: 1, column: 1)
        var errors: [ZoneError] = []
        var owners: [Owner] = []
        owners.reserveCapacity(given.count)
        for (name, rrsets) in given {
            var targets: [(rrset: Int, keys: [[UInt8]])] = []
            for (index, rrset) in rrsets.enumerated() {
                if let first = rrset.records.first,
                   let problem = Self.problem(with: ResourceRecord(name: name, ttl: rrset.ttl, rdata: first), origin: origin) {
                    if errors.count < ZoneLoadError.errorsMax { errors.append(ZoneError(position, problem)) }
                }
                let keys = rrset.records.map { $0.additionalTarget?.lowercased().wire ?? [] }
                if keys.contains(where: { !$0.isEmpty }) { targets.append((index, keys)) }
            }
            owners.append(Owner(name: name, key: name.lowercased().wire, rrsets: rrsets, targets: targets))
        }
        guard errors.isEmpty else { throw ZoneLoadError(errors) }
        self.owners = owners
    }

    public var isEmpty: Bool { owners.isEmpty }

    /// Why `record` cannot be in a fragment of `origin`, or nil.
    static func problem(with record: ResourceRecord, origin: DomainName) -> String? {
        guard record.name.isSubdomain(of: origin) else { return "\(record.name) is outside the zone \(origin)" }
        let allowed = switch record.rdata.type {
        case .soa, .ns: record.name == origin
        case .cname, .dname: false
        default: true
        }
        return allowed ? nil
            : "\(record.rdata.type) at \(record.name) cannot be in a zone fragment (SOA and NS only at \(origin); no CNAME or DNAME)"
    }
}

/// A fragment kept up to date by adding and removing records, for a service whose instances
/// change one at a time: each record is counted, so one that several instances share stays
/// until the last of them goes, and a record is compiled once, when it first arrives. An
/// RRset's TTL is that of the record added last.
/// `fragment` costs time linear in the distinct records, however many changes came before.
public struct ZoneFragmentTally: Sendable {
    private struct Entry: Sendable {
        var count: Int
        let compiled: CompiledRData
        let targetKey: [UInt8]
    }

    private struct Owner: Sendable {
        let name: DomainName
        var sets: [RRType: (ttl: UInt32, entries: [RData: Entry])] = [:]
    }

    private let origin: DomainName
    private let source: String
    private var owners: [[UInt8]: Owner] = [:]

    public init(origin: DomainName, source: String) {
        self.origin = origin
        self.source = source
    }

    /// Counts `records` in; nothing changes if any of them cannot be in a fragment.
    public mutating func add(_ records: [ResourceRecord]) throws(ZoneLoadError) {
        let problems = records.compactMap { ZoneFragment.problem(with: $0, origin: origin) }
        guard problems.isEmpty else {
            let position = SourcePosition(file: source, line: 1, column: 1)
            throw ZoneLoadError(problems.prefix(ZoneLoadError.errorsMax).map { ZoneError(position, $0) })
        }
        for record in records {
            let key = record.name.lowercased().wire
            var owner = owners.removeValue(forKey: key) ?? Owner(name: record.name)
            var set = owner.sets.removeValue(forKey: record.rdata.type) ?? (record.ttl, [:])
            // One TTL per RRset (RFC 2181 §5.2): the latest added, so re-adding every record
            // with a new TTL moves the set to it.
            set.ttl = record.ttl
            if set.entries[record.rdata] != nil {
                set.entries[record.rdata]!.count += 1
            } else {
                set.entries[record.rdata] = Entry(count: 1, compiled: CompiledRData(record.rdata, additionalNode: -1),
                                                  targetKey: record.rdata.additionalTarget?.lowercased().wire ?? [])
            }
            owner.sets[record.rdata.type] = set
            owners[key] = owner
        }
    }

    /// Counts out records added before (a record not counted in is ignored).
    public mutating func remove(_ records: [ResourceRecord]) {
        for record in records {
            let key = record.name.lowercased().wire
            guard var owner = owners.removeValue(forKey: key) else { continue }
            if var set = owner.sets.removeValue(forKey: record.rdata.type) {
                if let entry = set.entries[record.rdata] {
                    set.entries[record.rdata] = entry.count > 1
                        ? Entry(count: entry.count - 1, compiled: entry.compiled, targetKey: entry.targetKey) : nil
                }
                if !set.entries.isEmpty { owner.sets[record.rdata.type] = set }
            }
            if !owner.sets.isEmpty { owners[key] = owner }
        }
    }

    public var isEmpty: Bool { owners.isEmpty }

    /// The records counted in, as a fragment (owners and records in no particular order).
    public var fragment: ZoneFragment {
        ZoneFragment(owners: owners.map { key, owner in
            var targets: [(rrset: Int, keys: [[UInt8]])] = []
            var rrsets: [RRSet] = []
            for (type, set) in owner.sets {
                let entries = Array(set.entries)
                if entries.contains(where: { !$0.value.targetKey.isEmpty }) {
                    targets.append((rrsets.count, entries.map(\.value.targetKey)))
                }
                rrsets.append(RRSet(type: type, ttl: set.ttl, records: entries.map(\.key), compiled: entries.map(\.value.compiled)))
            }
            return ZoneFragment.Owner(name: owner.name, key: key, rrsets: rrsets, targets: targets)
        })
    }
}

extension Zone {
    /// Assembles a zone from fragments: their owners become the zone's nodes (an owner in
    /// several fragments merges, as records of one owner do in a master file), the empty
    /// non-terminals between them and the origin are added (RFC 4592 §2.2.2), and the
    /// additional-section targets are linked to their nodes.
    ///
    /// The only check left is the apex's: exactly one SOA and at least one NS, across all
    /// fragments. Nodes are in the order their owners first appear, not canonical order:
    /// nothing answers from the order.
    public convenience init(origin: DomainName, fragments: [ZoneFragment], source: String) throws(ZoneLoadError) {
        let ownerCount = fragments.reduce(0) { $0 + $1.owners.count }
        var table = NameTable(capacity: ownerCount * 2 + 1)
        var nodes: [Node] = []
        nodes.reserveCapacity(ownerCount * 2 + 1)
        _ = table.insert(origin.lowercased().wire)
        nodes.append(Node(name: origin, kind: .apex, rrsets: []))
        let originBytes = origin.wire.count
        // RRsets whose additional targets are linked once every node is in: by node, the
        // RRset's index and each record's target key. Owners met again in later fragments
        // are gathered in `merged` instead and become nodes at the end.
        var unresolved: [Int: [(rrset: Int, keys: [[UInt8]])]] = [:]
        var merged: [Int: [MergedSet]] = [:]

        for fragment in fragments {
            for owner in fragment.owners {
                let (found, inserted) = table.insert(owner.key)
                let node = Int(found)
                if inserted {
                    nodes.append(Node(name: owner.name, kind: .authoritative, rrsets: owner.rrsets))
                    // Ancestors up to the first one present: each node's were added with it.
                    var offset = 1 + Int(owner.key[0])
                    while owner.key.count - offset > originBytes {
                        let present = owner.key.withUnsafeBytes { table.find(UnsafeRawBufferPointer(rebasing: $0[offset...])) }
                        if present >= 0 { break }
                        _ = table.insert(Array(owner.key[offset...]))
                        nodes.append(Node(name: DomainName(uncheckedWire: Array(owner.name.wire[offset...])),
                                          kind: .authoritative, rrsets: []))
                        offset += 1 + Int(owner.key[offset])
                    }
                    if !owner.targets.isEmpty { unresolved[node] = owner.targets }
                    continue
                }
                // Taken out while it grows, so the dictionary holds no second reference and
                // appending never copies what was gathered.
                var sets = merged.removeValue(forKey: node) ?? nodes[node].rrsets.enumerated().map { index, set in
                    MergedSet(set, keys: unresolved[node]?.first { $0.rrset == index }?.keys)
                }
                if sets.isEmpty && nodes[node].kind != .apex {
                    // An empty non-terminal takes the spelling of the first data at its name.
                    nodes[node] = Node(name: owner.name, kind: nodes[node].kind, rrsets: [])
                }
                for (index, rrset) in owner.rrsets.enumerated() {
                    let keys = owner.targets.first { $0.rrset == index }?.keys
                    if let at = sets.firstIndex(where: { $0.type == rrset.type }) {
                        sets[at].add(rrset, keys: keys)
                    } else {
                        sets.append(MergedSet(rrset, keys: keys))
                    }
                }
                merged[node] = sets
            }
        }

        func link(_ compiled: some Collection<CompiledRData>, _ keys: [[UInt8]]) -> [CompiledRData] {
            compiled.enumerated().map { i, code in
                i < keys.count && !keys[i].isEmpty ? code.resolving(additionalNode: table.find(keys[i])) : code
            }
        }
        for (node, targets) in unresolved where merged[node] == nil {
            var rrsets = nodes[node].rrsets
            for (at, keys) in targets {
                let set = rrsets[at]
                rrsets[at] = RRSet(type: set.type, ttl: set.ttl, records: set.records, compiled: link(set.compiled, keys),
                                   selection: set.selection)
            }
            nodes[node] = Node(name: nodes[node].name, kind: nodes[node].kind, rrsets: rrsets)
        }
        for (node, sets) in merged {
            let rrsets = sets.map { set in
                RRSet(type: set.type, ttl: set.ttl, records: set.records,
                      compiled: set.keys.isEmpty ? set.compiled : link(set.compiled, set.keys), selection: set.selection)
            }
            nodes[node] = Node(name: nodes[node].name, kind: nodes[node].kind, rrsets: rrsets)
        }

        let apex = nodes[0]
        let position = SourcePosition(file: source, line: 1, column: 1)
        var errors: [ZoneError] = []
        var soa: (data: SOAData, ttl: UInt32)?
        if let at = apex.rrsetIndex(of: .soa), case .soa(let data) = apex.rrsets[at].records[0] {
            if apex.rrsets[at].records.count == 1 {
                soa = (data, apex.rrsets[at].ttl)
            } else {
                errors.append(ZoneError(position, "more than one SOA record at the apex \(origin)"))
            }
        } else {
            errors.append(ZoneError(position, "no SOA record at the apex \(origin) (expected exactly one)"))
        }
        if apex.rrsetIndex(of: .ns) == nil { errors.append(ZoneError(position, "no NS records at the apex \(origin)")) }
        guard errors.isEmpty, let soa else { throw ZoneLoadError(errors) }
        self.init(origin: origin, source: source, nodes: nodes, table: table, soa: soa.data, soaTTL: soa.ttl)
    }
}

/// An RRset gathered from several fragments (one owner in many, such as a service name in
/// each of its instances' fragments): duplicates collapse and the first TTL holds, as in a
/// master file, in time linear in the records.
private struct MergedSet {
    let type: RRType
    let ttl: UInt32
    var records: [RData]
    var compiled: [CompiledRData]
    /// Each record's additional-target key, or empty when no record has one.
    var keys: [[UInt8]]
    var seen: Set<RData>
    /// The first set's, while no other set added records to it: a selection describes the
    /// records of one set (a service name in two fragments is answered whole, unselected).
    var selection: RecordSelection?

    init(_ set: RRSet, keys: [[UInt8]]?) {
        type = set.type
        ttl = set.ttl
        records = set.records
        compiled = Array(set.compiled)
        self.keys = keys ?? []
        seen = Set(set.records)
        selection = set.selection
    }

    mutating func add(_ set: RRSet, keys: [[UInt8]]?) {
        if set.selection != nil { selection = nil }
        for (i, record) in set.records.enumerated() where seen.insert(record).inserted {
            selection = nil
            if keys != nil, self.keys.isEmpty { self.keys = [[UInt8]](repeating: [], count: records.count) }
            records.append(record)
            compiled.append(set.compiled[i])
            if !self.keys.isEmpty { self.keys.append(keys?[i] ?? []) }
        }
    }
}
