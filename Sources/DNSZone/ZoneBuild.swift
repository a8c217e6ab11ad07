import DNSWire
import Dispatch

#if canImport(Glibc)
import Glibc
#endif

/// What building a zone reads of its owners to check them and lay its names out. Owner `o` is
/// key `o` of `owners` (lowercased wire names, in first-appearance order).
protocol ZoneOwners {
    /// Emptied by `ZoneLayout` once it has what it needs of it (the zone gets its own table).
    var owners: NameTable { get set }
    /// The owner's name as first written.
    func name(of owner: Int) -> DomainName
    /// The owner's types, in the order they first appear.
    func types(of owner: Int) -> [RRType]
    /// How many distinct records of `type` the owner has.
    func count(of owner: Int, type: RRType) -> Int
    /// Where the owner's first record (`type` nil), or its first of `type`, was written; nil
    /// when positions are not kept.
    func position(of owner: Int, type: RRType?) -> SourcePosition?
    /// The owner's (first) SOA record and the TTL of its SOA RRset.
    func soa(at owner: Int) -> (data: SOAData?, ttl: UInt32)
}

/// A checked zone's names: each owner's kind, the apex's SOA, every name (owners and empty
/// non-terminals) in canonical order, and the name table of the nodes.
struct ZoneLayout {
    /// Each owner's kind.
    let kinds: [Node.Kind]
    let soa: SOAData
    let soaTTL: UInt32
    /// Slot `s`'s name: the owners first (slot `o` is owner `o`), then the empty non-terminals.
    let names: [DomainName]
    /// The slots in canonical order, apex first: node `n` is slot `ordered[n]`.
    let ordered: [Int32]
    /// The nodes' names (node `n` is key `n`).
    let table: NameTable
    /// The zone cuts (delegations below the apex), by lowercased wire name.
    private let cuts: NameTable

    /// Checks the owners (RFC 1034 §4.2.1 and §4.3.2, RFC 2181 §10.1, RFC 6672 §2.4) and lays
    /// their names out. Every error is reported (up to `ZoneLoadError.errorsMax`), after
    /// `earlier` ones; on any, nothing is built.
    init<Owners: ZoneOwners>(_ source: inout Owners, origin: DomainName, file: String, earlier: [ZoneError]) throws(ZoneLoadError) {
        var errors = Array(earlier.prefix(ZoneLoadError.errorsMax))
        let zonePosition = SourcePosition(file: file, line: 1, column: 1)
        func fail(_ position: SourcePosition?, _ message: String) {
            if errors.count < ZoneLoadError.errorsMax { errors.append(ZoneError(position ?? zonePosition, message)) }
        }
        let owners = source.owners
        let ownerCount = owners.count

        let apexKey = origin.lowercased().wire
        let apex = Int(owners.find(apexKey))
        let apexTypes = apex >= 0 ? source.types(of: apex) : []
        let apexPosition = apex >= 0 ? source.position(of: apex, type: nil) : zonePosition
        var soaData: SOAData?
        var soaTTL: UInt32 = 0
        if apexTypes.contains(.soa) {
            if source.count(of: apex, type: .soa) != 1 { fail(source.position(of: apex, type: .soa), "more than one SOA record at the apex \(origin)") }
            (soaData, soaTTL) = source.soa(at: apex)
        } else {
            fail(apexPosition, "no SOA record at the apex \(origin) (expected exactly one)")
        }
        if !apexTypes.contains(.ns) {
            fail(apexPosition, "no NS records at the apex \(origin)")
        }

        // Zone cuts and DNAMEs, to classify what lies below them.
        var cutKeys: [[UInt8]] = []
        var dnameKeys: [[UInt8]] = []
        for owner in 0..<ownerCount {
            let types = source.types(of: owner)
            if owner != apex, types.contains(.ns) { cutKeys.append(owners.key(at: owner)) }
            if types.contains(.dname) {
                if source.count(of: owner, type: .dname) > 1 { fail(source.position(of: owner, type: .dname), "more than one DNAME at \(source.name(of: owner))") }
                dnameKeys.append(owners.key(at: owner))
            }
        }
        let cuts = NameTable(keys: cutKeys)
        let dnames = NameTable(keys: dnameKeys)
        func display(_ key: [UInt8]) -> DomainName { DomainName(uncheckedWire: key) }

        var kinds = [Node.Kind?](repeating: nil, count: ownerCount)
        for owner in 0..<ownerCount {
            let key = owners.key(at: owner)
            let types = source.types(of: owner)
            let addressOnly = types.allSatisfy { $0 == .a || $0 == .aaaa }
            if types.contains(.soa), owner != apex {
                fail(source.position(of: owner, type: .soa), "SOA record at \(source.name(of: owner)), not at the apex \(origin)")
            }
            if types.contains(.cname) {
                let position = source.position(of: owner, type: .cname)
                if source.count(of: owner, type: .cname) > 1 { fail(position, "more than one CNAME at \(source.name(of: owner))") }
                if types.count > 1 {
                    let others = types.filter { $0 != .cname }.sorted().map(\.description).joined(separator: ", ")
                    fail(position, "CNAME at \(source.name(of: owner)) alongside other data (\(others)); a CNAME must be alone")
                }
            }
            if let cut = Self.strictlyBelow(key, cuts) {
                if !addressOnly {
                    fail(source.position(of: owner, type: nil),
                         "\(source.name(of: owner)) is below the delegation \(display(cut)): only A/AAAA glue may be there")
                }
                kinds[owner] = .glue
                continue
            }
            if let dname = Self.strictlyBelow(key, dnames) {
                fail(source.position(of: owner, type: nil), "\(source.name(of: owner)) is below the DNAME at \(display(dname)) (occluded data)")
                continue
            }
            if owner == apex {
                kinds[owner] = .apex
            } else if types.contains(.ns) {
                let allowed: Set<RRType> = [.ns, .ds, .a, .aaaa]
                if let bad = types.filter({ !allowed.contains($0) }).min() {
                    fail(source.position(of: owner, type: bad),
                         "\(bad) at the delegation point \(source.name(of: owner)) (only NS, DS and glue belong there)")
                }
                kinds[owner] = .delegation
            } else {
                kinds[owner] = .authoritative
            }
        }
        guard errors.isEmpty, let soaData else { throw ZoneLoadError(errors) }

        // Every ancestor between a name and the apex exists: empty non-terminals (RFC 4592 §2.2.2).
        var names: [DomainName] = []
        names.reserveCapacity(ownerCount)
        for owner in 0..<ownerCount { names.append(source.name(of: owner)) }
        var emptyNonTerminals = NameTable(capacity: 64)
        let originBytes = origin.wire.count
        for owner in 0..<ownerCount {
            owners.withKey(at: owner) { wire in
                var offset = 1 + Int(wire[0])
                while wire.count - offset > originBytes {
                    let suffix = UnsafeRawBufferPointer(rebasing: wire[offset...])
                    // An ancestor already there has its own ancestors there too.
                    guard owners.find(suffix) < 0, emptyNonTerminals.find(suffix) < 0 else { break }
                    _ = emptyNonTerminals.insert(suffix)
                    names.append(DomainName(uncheckedWire: Array(names[owner].wire[offset...])))
                    offset += 1 + Int(wire[offset])
                }
            }
        }
        var apexSlot = apex
        if apex < 0 {
            apexSlot = names.count
            names.append(origin)
        }
        // What is left needs only the names: the owners' table goes before the zone's is built.
        source.owners = NameTable(capacity: 0)
        let ordered = Self.canonicalOrder(names, apex: apexSlot)
        var table = NameTable(capacity: ordered.count)
        for slot in ordered {
            names[Int(slot)].wire.withUnsafeBufferPointer { wire in
                withUnsafeTemporaryAllocation(of: UInt8.self, capacity: wire.count) { lowered in
                    for i in 0..<wire.count { lowered[i] = asciiLowerByte(wire[i]) }
                    _ = table.insert(UnsafeRawBufferPointer(lowered))
                }
            }
        }

        self.kinds = kinds.map { $0! }
        self.soa = soaData
        self.soaTTL = soaTTL
        self.names = names
        self.ordered = ordered
        self.table = table
        self.cuts = cuts
    }

    /// The kind of the node in slot `slot`: an owner's, or for an empty non-terminal, glue
    /// below a cut and authoritative elsewhere.
    func kind(ofSlot slot: Int) -> Node.Kind {
        if slot < kinds.count { return kinds[slot] }
        return Self.strictlyBelow(names[slot].lowercased().wire, cuts) != nil ? .glue : .authoritative
    }

    /// The key of the nearest strict ancestor of `key` in `table`, if any.
    private static func strictlyBelow(_ key: [UInt8], _ table: NameTable) -> [UInt8]? {
        guard table.count > 0 else { return nil }
        return key.withUnsafeBytes { wire -> [UInt8]? in
            var offset = 0
            while wire[offset] != 0 {
                offset += 1 + Int(wire[offset])
                let suffix = UnsafeRawBufferPointer(rebasing: wire[offset...])
                if table.find(suffix) >= 0 { return Array(suffix) }
            }
            return nil
        }
    }

    /// The slots of `names` in canonical order (RFC 4034 §6.1), `apex` first: sorted by their
    /// canonical sort keys, laid end to end in one buffer (not an array per name).
    private static func canonicalOrder(_ names: [DomainName], apex: Int) -> [Int32] {
        var keys: [UInt8] = []
        var ends: [Int32] = []
        ends.reserveCapacity(names.count)
        for name in names {
            name.appendCanonicalSortKey(to: &keys)
            ends.append(Int32(keys.count))
        }
        var order: [Int32] = []
        order.reserveCapacity(names.count)
        for slot in 0..<names.count where slot != apex { order.append(Int32(slot)) }
        keys.withUnsafeBytes { keys in
            ends.withUnsafeBufferPointer { ends in
                order.sort { a, b in
                    let aStart = a == 0 ? 0 : Int(ends[Int(a) - 1]), bStart = b == 0 ? 0 : Int(ends[Int(b) - 1])
                    let aCount = Int(ends[Int(a)]) - aStart, bCount = Int(ends[Int(b)]) - bStart
                    let common = memcmp(keys.baseAddress! + aStart, keys.baseAddress! + bStart, min(aCount, bCount))
                    return common != 0 ? common < 0 : aCount < bCount
                }
            }
        }
        return [Int32(apex)] + order
    }
}

/// The owners of a master file (or of one part of it) compiled as soon as they are parsed: each
/// owner's RRsets in their final form, whose additional-section nodes the zone resolves when it
/// is built (`Zone.init(origin:compiled:source:files:)`). Positions are not kept: a zone that
/// fails its checks is loaded again from record logs to name the lines (`Zone.load`).
package struct CompiledOwners: Sendable, ZoneOwners {
    var owners: NameTable
    private var names: [DomainName]
    fileprivate var rrsets: [[RRSet]]
    /// Records that could not be kept (outside the zone), with their positions.
    private(set) var errors: [ZoneError]

    /// Compiles a log's records by owner (its buffer goes with it).
    init(log: consuming RecordLog) {
        let all = LoggedRecords(logs: [log])
        var scratch = CompiledRecords.CompileScratch()
        owners = all.owners
        names = []
        rrsets = []
        names.reserveCapacity(all.owners.count)
        rrsets.reserveCapacity(all.owners.count)
        for owner in 0..<all.owners.count {
            names.append(all.name(of: owner))
            rrsets.append(all.sets(of: owner).map { RRSet($0, from: all, scratch: &scratch, table: nil) })
        }
        errors = all.logs.first?.errors ?? []
    }

    /// Adds the owners of the part of the file after this one: the same as compiling both parts'
    /// records at once (an RRset split between them is merged: duplicates collapse, the first
    /// TTL holds).
    mutating func merge(_ later: consuming CompiledOwners) {
        errors += later.errors.prefix(max(0, ZoneLoadError.errorsMax - errors.count))
        for owner in 0..<later.owners.count {
            let (index, inserted) = later.owners.withKey(at: owner) { owners.insert($0) }
            guard !inserted else {
                names.append(later.names[owner])
                rrsets.append(later.rrsets[owner])
                continue
            }
            for rrset in later.rrsets[owner] {
                if let at = rrsets[Int(index)].firstIndex(where: { $0.type == rrset.type }) {
                    rrsets[Int(index)][at] = rrsets[Int(index)][at].merging(rrset)
                } else {
                    rrsets[Int(index)].append(rrset)
                }
            }
        }
    }

    func name(of owner: Int) -> DomainName { names[owner] }
    func types(of owner: Int) -> [RRType] { rrsets[owner].map(\.type) }
    func count(of owner: Int, type: RRType) -> Int { rrsets[owner].first { $0.type == type }?.count ?? 0 }
    func position(of owner: Int, type: RRType?) -> SourcePosition? { nil }
    func soa(at owner: Int) -> (data: SOAData?, ttl: UInt32) {
        guard let set = rrsets[owner].first(where: { $0.type == .soa }), case .soa(let data)? = set.records.first else { return (nil, 0) }
        return (data, set.ttl)
    }
}

extension LoggedRecords: ZoneOwners {
    func types(of owner: Int) -> [RRType] { firstRecords(of: owner).map(\.type) }
    func count(of owner: Int, type: RRType) -> Int { distinctCount(of: owner, type: type) }
    func position(of owner: Int, type: RRType?) -> SourcePosition? {
        guard let type else { return position(of: owner) }
        return firstRecords(of: owner).first { $0.type == type }.map { position($0.first) }
    }
    func soa(at owner: Int) -> (data: SOAData?, ttl: UInt32) {
        guard let first = firstRecords(of: owner).first(where: { $0.type == .soa })?.first, case .soa(let data) = decode(first) else {
            return (nil, 0)
        }
        return (data, record(first).ttl)
    }
}

extension RRSet {
    /// A master-file RRset compiled from a zone load's logs: the records' wire bytes copied as
    /// they are, each with the node of its additional-section target in `table`.
    /// `table` nil: no nodes yet (`resolveAdditionalNodes` sets them once the zone's names are known).
    init(_ set: LoggedSet, from all: LoggedRecords, scratch: inout CompiledRecords.CompileScratch, table: NameTable?) {
        scratch.wire.removeAll(keepingCapacity: true)
        scratch.entries.removeAll(keepingCapacity: true)
        var targets: [[UInt8]] = []
        var stored: [RData] = []
        for ref in set.members {
            let record = all.record(ref)
            all.withRData(ref) { rdata in
                scratch.wire.append(contentsOf: rdata)
                let additional = table.map { Zone.additionalNode(type: set.type, rdata: rdata, table: $0) } ?? -1
                scratch.entries.append(CompiledRecords.Entry(end: UInt32(scratch.wire.count), firstNameAt: record.firstNameAt,
                                                             secondNameAt: record.secondNameAt, additionalNode: additional))
                if set.type == .cname || set.type == .dname { targets.append(rdata.map(asciiLowerByte)) }
            }
            if RRSet.storesRecords(of: set.type) { stored.append(all.decode(ref)) }
        }
        self.init(type: set.type, ttl: set.ttl, records: stored,
                  compiled: CompiledRecords(entries: scratch.entries, wire: scratch.wire, targets: targets))
    }

    /// The records of `later` (the same owner's RRset of this type, further on in the file)
    /// added to these: duplicates collapse and this set's TTL holds (RFC 2181 §5, §5.2).
    func merging(_ later: RRSet) -> RRSet {
        var records = self.records
        var seen = Set(records)
        for record in later.records where seen.insert(record).inserted { records.append(record) }
        return RRSet(type: type, ttl: ttl, records: records, compiled: CompiledRecords(compiling: records) { _ in -1 })
    }

    /// Sets each record's additional-section node from the zone's names.
    mutating func resolveAdditionalNodes(table: NameTable) {
        compiled.resolveAdditionalNodes(type: type, table: table)
    }
}

extension Zone {
    /// Builds a zone from parsed records, validating it. On any error nothing is built.
    public convenience init(origin: DomainName, records: [ParsedRecord], source: String, files: [FileStamp] = []) throws(ZoneLoadError) {
        var log = RecordLog(origin: origin)
        log.reserve(records: records.count)
        for record in records { log.append(record) }
        try self.init(origin: origin, logs: [log], source: source, files: files)
    }

    /// The same from record logs (`MasterFileParser.parseFileLogs`: a file's parts, in file
    /// order), with every error's position. Each RRset is compiled straight from the logs.
    ///
    /// Linear in the records apart from one sort of the distinct names: the checks against zone
    /// cuts and DNAMEs walk each name's ancestors instead of every cut.
    package convenience init(origin: DomainName, logs: consuming [RecordLog], source: String,
                             files: [FileStamp] = []) throws(ZoneLoadError) {
        var records = LoggedRecords(logs: logs)
        let ownerCount = records.owners.count
        let layout = try ZoneLayout(&records, origin: origin, file: source, earlier: records.logs.flatMap(\.errors))
        let all = records
        // The nodes, their records compiled: in slices of the canonical order on the cores when
        // there are many.
        @Sendable func compileNodes(_ slots: ArraySlice<Int32>) -> [Node] {
            var nodes: [Node] = []
            nodes.reserveCapacity(slots.count)
            var scratch = CompiledRecords.CompileScratch()
            for slot in slots.lazy.map({ Int($0) }) {
                // File order: minimal ANY answers with the name's first RRset, as NSD does.
                let rrsets = slot < ownerCount
                    ? all.sets(of: slot).map { RRSet($0, from: all, scratch: &scratch, table: layout.table) } : []
                nodes.append(Node(name: layout.names[slot], kind: layout.kind(ofSlot: slot), rrsets: rrsets))
            }
            return nodes
        }
        let ordered = layout.ordered
        let slices = min(MasterFileParser.processorCount(), ordered.count / Self.compileSliceNodesMin)
        var nodes: [Node]
        if slices > 1 {
            let compiled = ParallelResults<[Node]>(count: slices)
            let sliceSize = (ordered.count + slices - 1) / slices
            DispatchQueue.concurrentPerform(iterations: slices) { k in
                let start = k * sliceSize
                compiled.set(k, compileNodes(ordered[start..<min(ordered.count, start + sliceSize)]))
            }
            nodes = compiled.take(0)
            nodes.reserveCapacity(ordered.count)
            for k in 1..<slices { nodes += compiled.take(k) }
        } else {
            nodes = compileNodes(ordered[...])
        }
        self.init(origin: origin, source: source, nodes: nodes, table: layout.table, soa: layout.soa, soaTTL: layout.soaTTL, files: files)
    }

    /// The same from parts compiled as they were parsed (`MasterFileParser.parseFileCompiled`),
    /// in file order: their RRsets become the nodes' without another copy. Errors carry no
    /// positions (`Zone.load` loads such a zone again from logs to report them).
    package convenience init(origin: DomainName, compiled parts: consuming [CompiledOwners], source: String,
                             files: [FileStamp] = []) throws(ZoneLoadError) {
        var merged = parts.isEmpty ? CompiledOwners(log: RecordLog(origin: origin)) : parts.removeFirst()
        while !parts.isEmpty { merged.merge(parts.removeFirst()) }
        let ownerCount = merged.owners.count
        let layout = try ZoneLayout(&merged, origin: origin, file: source, earlier: merged.errors)
        var nodes: [Node] = []
        nodes.reserveCapacity(layout.ordered.count)
        for slot in layout.ordered.lazy.map({ Int($0) }) {
            var rrsets: [RRSet] = []
            if slot < ownerCount {
                // Moved out, so that the records' buffers are not shared and resolve in place.
                swap(&rrsets, &merged.rrsets[slot])
                for k in rrsets.indices { rrsets[k].resolveAdditionalNodes(table: layout.table) }
            }
            nodes.append(Node(name: layout.names[slot], kind: layout.kind(ofSlot: slot), rrsets: rrsets))
        }
        self.init(origin: origin, source: source, nodes: nodes, table: layout.table, soa: layout.soa, soaTTL: layout.soaTTL, files: files)
    }
}
