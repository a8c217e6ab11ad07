import DNSWire

/// RDATA precompiled for the answer path: the uncompressed wire bytes, where the names that
/// may be compressed start, and the node (in the same zone) whose A/AAAA records go into the
/// additional section for it.
public struct CompiledRData: Sendable {
    public let bytes: [UInt8]
    /// Offsets in `bytes` of compressible names (RFC 3597 §4), -1 when absent. SOA has two.
    public let firstNameAt: Int16
    public let secondNameAt: Int16
    /// For NS, MX and SRV: the node of the target name in this zone, or -1.
    public internal(set) var additionalNode: Int32
    /// For CNAME and DNAME: the lowercased target, to continue the lookup without decoding.
    public let lowercasedTarget: [UInt8]

    /// Compiles `rdata` with no additional-section node (a zone assembly links it).
    public init(_ rdata: RData) {
        self.init(rdata, additionalNode: -1)
    }

    init(_ rdata: RData, additionalNode: Int32) {
        let (bytes, names) = rdata.encoded()
        var lowercasedTarget: [UInt8] = []
        switch rdata {
        case .cname(let target), .dname(let target): lowercasedTarget = target.lowercased().wire
        default: break
        }
        self.bytes = bytes
        self.firstNameAt = Int16(names.first ?? -1)
        self.secondNameAt = Int16(names.count > 1 ? names[1] : -1)
        self.additionalNode = additionalNode
        self.lowercasedTarget = lowercasedTarget
    }

    /// The same RDATA with its additional-section node resolved in another zone.
    func resolving(additionalNode node: Int32) -> CompiledRData {
        var resolved = self
        resolved.additionalNode = node
        return resolved
    }
}

/// The records of one owner and type (RFC 2181 §5).
public struct RRSet: Sendable {
    public let type: RRType
    /// RFC 2181 §5.2: one TTL for the whole set.
    public let ttl: UInt32
    public let records: [RData]
    public let compiled: [CompiledRData]
    /// Set for a service's RRsets: the answer path picks their records per query (order,
    /// subset, panic); nil: every record is answered, in this order.
    public let selection: RecordSelection?

    public init(type: RRType, ttl: UInt32, records: [RData], compiled: [CompiledRData], selection: RecordSelection? = nil) {
        precondition(records.count == compiled.count, "one compiled form per record")
        precondition(selection.map { $0.weights.count == records.count } ?? true, "one weight per record")
        self.type = type
        self.ttl = ttl
        self.records = records
        self.compiled = compiled
        self.selection = selection
    }
}

/// A name in the zone tree: with data, an empty non-terminal, a delegation point or glue.
public struct Node: Sendable {
    public enum Kind: Sendable, Equatable {
        case apex
        /// Authoritative data (or an empty non-terminal when `rrsets` is empty).
        case authoritative
        /// A zone cut: NS records below the apex (RFC 1034 §4.2.1).
        case delegation
        /// Below a zone cut: only address records kept as glue, never answered.
        case glue
    }

    public let name: DomainName
    public let kind: Kind
    /// In the order their types first appear in the master file.
    public let rrsets: [RRSet]

    public func rrsetIndex(of type: RRType) -> Int? {
        for (index, rrset) in rrsets.enumerated() where rrset.type == type { return index }
        return nil
    }
}

/// What a lookup found for (name, type) within one zone (RFC 1034 §4.3.2 step 3).
/// Indices refer to `Zone.nodes` and `Node.rrsets`; nothing here allocates.
public enum LookupResult: Sendable, Equatable {
    /// The RRset of the asked type. `wildcard`: synthesized from a wildcard (RFC 4592).
    case answer(node: Int32, rrset: Int32, wildcard: Bool)
    /// QTYPE ANY at an existing name with data.
    case any(node: Int32, wildcard: Bool)
    /// A CNAME at the name; the caller follows its target.
    case cname(node: Int32, rrset: Int32, wildcard: Bool)
    /// A DNAME at an ancestor of the name (RFC 6672): the caller synthesizes a CNAME.
    case dname(node: Int32, rrset: Int32)
    /// The name is at or below a zone cut: a referral to the delegation at `node`.
    case delegation(node: Int32)
    /// The name exists (or a wildcard matches) but has no data of the type.
    case noData
    /// The name does not exist and no wildcard matches.
    case nxDomain
}

/// An immutable, validated zone, ready for lookups.
public final class Zone: Sendable {
    /// Labels deeper than this are not walked (a name has at most 127 labels).
    public static let labelsMax = 128

    public let origin: DomainName
    /// Where it was loaded from, for logs.
    public let source: String
    public let nodes: [Node]
    public let soa: SOAData
    public let soaTTL: UInt32
    /// RFC 2308 §5: the TTL of the SOA in negative answers is min(SOA TTL, SOA MINIMUM).
    public let negativeTTL: UInt32
    /// The apex's SOA RRset with its TTL lowered to `negativeTTL`, for negative answers.
    public let negativeSOA: RRSet
    /// The apex NS RRset, for AUTHORITY in positive answers.
    public let apexNS: RRSet
    let originLabelCount: Int
    let table: NameTable

    /// Builds a zone from parsed records, validating it. On any error nothing is built.
    public convenience init(origin: DomainName, records: [ParsedRecord], source: String) throws(ZoneLoadError) {
        var errors: [ZoneError] = []
        func fail(_ position: SourcePosition, _ message: String) {
            if errors.count < ZoneLoadError.errorsMax { errors.append(ZoneError(position, message)) }
        }
        let zonePosition = SourcePosition(file: source, line: 1, column: 1)

        // Group by owner, then by type, keeping the first position of each owner and type.
        struct Owner {
            var name: DomainName
            var position: SourcePosition
            var sets: [RRType: (ttl: UInt32, records: [RData], position: SourcePosition, order: Int)] = [:]
        }
        var owners: [DomainName: Owner] = [:]
        for (order, parsed) in records.enumerated() {
            let rr = parsed.record
            guard rr.name.isSubdomain(of: origin) else {
                fail(parsed.position, "\(rr.name) is outside the zone \(origin)")
                continue
            }
            let key = rr.name.lowercased()
            var owner = owners[key] ?? Owner(name: rr.name, position: parsed.position)
            if var set = owner.sets[rr.type] {
                // RFC 2181 §5: duplicates collapse; RFC 2181 §5.2: the first TTL holds for the set.
                if !set.records.contains(rr.rdata) { set.records.append(rr.rdata) }
                owner.sets[rr.type] = set
            } else {
                owner.sets[rr.type] = (rr.ttl, [rr.rdata], parsed.position, order)
            }
            owners[key] = owner
        }

        let apexKey = origin.lowercased()
        let apex = owners[apexKey]
        var soaData: SOAData?
        var soaTTL: UInt32 = 0
        if let soaSet = apex?.sets[.soa] {
            if soaSet.records.count != 1 { fail(soaSet.position, "more than one SOA record at the apex \(origin)") }
            if case .soa(let data) = soaSet.records[0] { soaData = data }
            soaTTL = soaSet.ttl
        } else {
            fail(apex?.position ?? zonePosition, "no SOA record at the apex \(origin) (expected exactly one)")
        }
        if apex?.sets[.ns] == nil {
            fail(apex?.position ?? zonePosition, "no NS records at the apex \(origin)")
        }

        // Zone cuts and DNAMEs, to classify what lies below them.
        var cuts: [DomainName] = []
        var dnames: [DomainName] = []
        for (key, owner) in owners {
            if key != apexKey, owner.sets[.ns] != nil { cuts.append(key) }
            if let set = owner.sets[.dname] {
                if set.records.count > 1 { fail(set.position, "more than one DNAME at \(owner.name)") }
                dnames.append(key)
            }
        }
        func strictlyBelow(_ name: DomainName, _ ancestors: [DomainName]) -> DomainName? {
            for ancestor in ancestors where name != ancestor && name.isSubdomain(of: ancestor) { return ancestor }
            return nil
        }

        var kinds: [DomainName: Node.Kind] = [:]
        for (key, owner) in owners.sorted(by: { $0.value.position.line < $1.value.position.line }) {
            let addressOnly = owner.sets.keys.allSatisfy { $0 == .a || $0 == .aaaa }
            if let soa = owner.sets[.soa], key != apexKey {
                fail(soa.position, "SOA record at \(owner.name), not at the apex \(origin)")
            }
            if let cname = owner.sets[.cname] {
                if cname.records.count > 1 { fail(cname.position, "more than one CNAME at \(owner.name)") }
                if owner.sets.count > 1 {
                    let others = owner.sets.keys.filter { $0 != .cname }.sorted().map(\.description).joined(separator: ", ")
                    fail(cname.position, "CNAME at \(owner.name) alongside other data (\(others)); a CNAME must be alone")
                }
            }
            if let cut = strictlyBelow(key, cuts) {
                if !addressOnly {
                    fail(owner.position, "\(owner.name) is below the delegation \(cut): only A/AAAA glue may be there")
                }
                kinds[key] = .glue
                continue
            }
            if let dname = strictlyBelow(key, dnames) {
                fail(owner.position, "\(owner.name) is below the DNAME at \(dname) (occluded data)")
                continue
            }
            if key == apexKey {
                kinds[key] = .apex
            } else if owner.sets[.ns] != nil {
                let allowed: Set<RRType> = [.ns, .ds, .a, .aaaa]
                if let bad = owner.sets.keys.filter({ !allowed.contains($0) }).sorted().first {
                    fail(owner.sets[bad]!.position, "\(bad) at the delegation point \(owner.name) (only NS, DS and glue belong there)")
                }
                kinds[key] = .delegation
            } else {
                kinds[key] = .authoritative
            }
        }
        guard errors.isEmpty, let soaData else { throw ZoneLoadError(errors) }

        // Every ancestor between a name and the apex exists: empty non-terminals (RFC 4592 §2.2.2).
        var names: [DomainName: DomainName] = [:]  // lowercased → as written
        for (key, owner) in owners where kinds[key] != nil {
            names[key] = owner.name
            var ancestor = owner.name.parent
            while let current = ancestor, current.isSubdomain(of: origin), current != origin {
                let ancestorKey = current.lowercased()
                if names[ancestorKey] == nil { names[ancestorKey] = owners[ancestorKey]?.name ?? current }
                ancestor = current.parent
            }
        }
        names[apexKey] = origin
        // Canonical order, with each name's sort key computed once (a registry zone has thousands).
        var ordered = names.keys.map { ($0, $0.canonicalKey) }
            .sorted { DomainName.canonicallyPrecedes($0.1, $1.1) }.map(\.0)
        ordered.removeAll { $0 == apexKey }
        ordered.insert(apexKey, at: 0)
        let table = NameTable(keys: ordered.map(\.wire))

        var nodes: [Node] = []
        nodes.reserveCapacity(ordered.count)
        for key in ordered {
            let kind: Node.Kind
            if let known = kinds[key] {
                kind = known
            } else {
                kind = strictlyBelow(key, cuts) != nil ? .glue : .authoritative
            }
            var rrsets: [RRSet] = []
            // File order: minimal ANY answers with the name's first RRset, as NSD does.
            for (type, set) in (owners[key]?.sets ?? [:]).sorted(by: { $0.value.order < $1.value.order }) {
                let compiled = set.records.map { rdata in Zone.compile(rdata, table: table) }
                rrsets.append(RRSet(type: type, ttl: set.ttl, records: set.records, compiled: compiled))
            }
            nodes.append(Node(name: names[key]!, kind: kind, rrsets: rrsets))
        }

        self.init(origin: origin, source: source, nodes: nodes, table: table, soa: soaData, soaTTL: soaTTL)
    }

    /// Adopts checked nodes: the apex is `nodes[0]`, with exactly one SOA and an NS RRset.
    init(origin: DomainName, source: String, nodes: [Node], table: NameTable, soa: SOAData, soaTTL: UInt32) {
        self.origin = origin
        self.source = source
        self.nodes = nodes
        self.soa = soa
        self.soaTTL = soaTTL
        self.negativeTTL = min(soaTTL, soa.minimum)
        let soaSet = nodes[0].rrsets[nodes[0].rrsetIndex(of: .soa)!]
        self.negativeSOA = RRSet(type: .soa, ttl: min(soaTTL, soa.minimum), records: soaSet.records,
                                 compiled: soaSet.compiled)
        self.apexNS = nodes[0].rrsets[nodes[0].rrsetIndex(of: .ns)!]
        self.originLabelCount = origin.labelCount
        self.table = table
    }

    /// Parses and validates a master file.
    public static func load(path: String, origin: DomainName) throws(ZoneLoadError) -> Zone {
        let records = try MasterFileParser.parse(path: path, origin: origin)
        return try Zone(origin: origin, records: records, source: path)
    }

    public static func parse(text: String, origin: DomainName, file: String = "<text>") throws(ZoneLoadError) -> Zone {
        let records = try MasterFileParser.parse(text: Array(text.utf8), file: file, origin: origin)
        return try Zone(origin: origin, records: records, source: file)
    }

    private static func compile(_ rdata: RData, table: NameTable) -> CompiledRData {
        var additional: Int32 = -1
        if let target = rdata.additionalTarget {
            additional = table.find(target.lowercased().wire)
        }
        return CompiledRData(rdata, additionalNode: additional)
    }

    /// The node of a lowercased wire name, or -1.
    @inline(__always)
    public func node(named lowercasedWire: UnsafeRawBufferPointer) -> Int32 {
        table.find(lowercasedWire)
    }

    /// Looks `name` up (RFC 1034 §4.3.2 step 3, RFC 4592, RFC 6672).
    ///
    /// - Parameters:
    ///   - name: the lowercased wire-form query name, at or below `origin`.
    ///   - scratch: at least 256 writable bytes, used to build the wildcard name.
    public func lookup(_ name: UnsafeRawBufferPointer, type: RRType, scratch: UnsafeMutableRawPointer) -> LookupResult {
        withUnsafeTemporaryAllocation(of: Int.self, capacity: Zone.labelsMax) { starts in
            // starts[i]: offset of the suffix with (labels - i) labels.
            var labels = 0
            var offset = 0
            while name[offset] != 0 && labels < Zone.labelsMax - 1 {
                starts[labels] = offset
                labels += 1
                offset += 1 + Int(name[offset])
            }
            starts[labels] = offset
            let depth = labels - originLabelCount
            precondition(depth >= 0, "lookup of a name outside the zone")

            // Walk from just below the apex towards the name: a cut or DNAME on the way decides.
            var closestEncloser = depth  // index into starts of the deepest existing ancestor
            var level = depth - 1
            while level >= 1 {
                let suffix = UnsafeRawBufferPointer(rebasing: name[starts[level]...])
                let index = table.find(suffix)
                if index < 0 { break }
                let node = nodes[Int(index)]
                if node.kind == .delegation { return .delegation(node: index) }
                if let dname = node.rrsetIndex(of: .dname) { return .dname(node: index, rrset: Int32(dname)) }
                closestEncloser = level
                level -= 1
            }
            if level == 0 || depth == 0 {
                let index = table.find(name)
                if index >= 0 { return match(node: index, type: type, wildcard: false) }
            }
            // RFC 4592 §3.3.1: the source of synthesis is "*." + closest encloser.
            let encloser = UnsafeRawBufferPointer(rebasing: name[starts[closestEncloser]...])
            scratch.storeBytes(of: 1, toByteOffset: 0, as: UInt8.self)
            scratch.storeBytes(of: UInt8(ascii: "*"), toByteOffset: 1, as: UInt8.self)
            guard encloser.count + 2 <= DomainName.nameBytesMax + 2 else { return .nxDomain }
            (scratch + 2).copyMemory(from: encloser.baseAddress!, byteCount: encloser.count)
            let wildcard = table.find(UnsafeRawBufferPointer(start: scratch, count: encloser.count + 2))
            if wildcard >= 0 { return match(node: wildcard, type: type, wildcard: true) }
            return .nxDomain
        }
    }

    @inline(__always)
    private func match(node index: Int32, type: RRType, wildcard: Bool) -> LookupResult {
        let node = nodes[Int(index)]
        switch node.kind {
        case .delegation:
            // RFC 4035 §3.1.4.1: DS is answered by the parent; we serve no DS, so NODATA.
            if type == .ds { return .noData }
            return .delegation(node: index)
        case .glue:
            preconditionFailure("glue node reached by the lookup walk; the cut above it should have matched")
        case .apex, .authoritative:
            break
        }
        if type == .any {
            return node.rrsets.isEmpty ? .noData : .any(node: index, wildcard: wildcard)
        }
        var cname: Int32 = -1
        for (i, rrset) in node.rrsets.enumerated() {
            if rrset.type == type { return .answer(node: index, rrset: Int32(i), wildcard: wildcard) }
            if rrset.type == .cname { cname = Int32(i) }
        }
        if cname >= 0 { return .cname(node: index, rrset: cname, wildcard: wildcard) }
        return .noData
    }
}
