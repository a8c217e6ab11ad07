import DNSWire
import Dispatch

/// RDATA precompiled for the answer path: the uncompressed wire bytes, where the names that
/// may be compressed start, and the node (in the same zone) whose A/AAAA records go into the
/// additional section for it.
public struct CompiledRData: Sendable {
    /// A slice of a buffer that a zone's RRset shares between its records (no heap block per
    /// record), or of the record's own.
    public let bytes: ArraySlice<UInt8>
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
        self.init(rdata, bytes: bytes[...], names: names, additionalNode: additionalNode)
    }

    private init(_ rdata: RData, bytes: ArraySlice<UInt8>, names: [Int], additionalNode: Int32) {
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

    /// A record of a packed RRset (no copy: the bytes are a slice of the set's buffer).
    init(bytes: ArraySlice<UInt8>, firstNameAt: Int16, secondNameAt: Int16, additionalNode: Int32, lowercasedTarget: [UInt8]) {
        self.bytes = bytes
        self.firstNameAt = firstNameAt
        self.secondNameAt = secondNameAt
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

/// The compiled records of an RRset, packed in one buffer: 12 bytes of metadata per record,
/// then their wire bytes end to end; instead of a `CompiledRData` (48 bytes and a heap block of
/// its own) per record, one heap block per RRset. Subscripting builds a `CompiledRData` view
/// without allocating.
public struct CompiledRecords: RandomAccessCollection, Sendable {
    struct Entry: Sendable {
        /// Where the record's bytes end among the wire bytes (they start where the previous one's end).
        var end: UInt32
        var firstNameAt: Int16
        var secondNameAt: Int16
        var additionalNode: Int32
    }
    static let entryBytes = 12

    /// `count` entries, then the wire bytes.
    let storage: [UInt8]
    private let recordCount: UInt32
    /// The lowercased CNAME/DNAME targets, one per record; empty for every other type.
    let targets: [[UInt8]]

    public var startIndex: Int { 0 }
    public var endIndex: Int { Int(recordCount) }

    @inline(__always)
    func entry(_ index: Int) -> Entry {
        storage.withUnsafeBytes { raw in
            let at = index * Self.entryBytes
            return Entry(end: raw.loadUnaligned(fromByteOffset: at, as: UInt32.self),
                         firstNameAt: raw.loadUnaligned(fromByteOffset: at + 4, as: Int16.self),
                         secondNameAt: raw.loadUnaligned(fromByteOffset: at + 6, as: Int16.self),
                         additionalNode: raw.loadUnaligned(fromByteOffset: at + 8, as: Int32.self))
        }
    }

    @inline(__always)
    public subscript(index: Int) -> CompiledRData {
        let entry = entry(index)
        let wireStart = Int(recordCount) * Self.entryBytes
        let start = index == 0 ? 0 : Int(self.entry(index - 1).end)
        return CompiledRData(bytes: storage[(wireStart + start)..<(wireStart + Int(entry.end))], firstNameAt: entry.firstNameAt,
                             secondNameAt: entry.secondNameAt, additionalNode: entry.additionalNode,
                             lowercasedTarget: targets.isEmpty ? [] : targets[index])
    }

    /// The additional-section node of record `index` (without building its view).
    @inline(__always)
    public func additionalNode(at index: Int) -> Int32 {
        storage.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: index * Self.entryBytes + 8, as: Int32.self) }
    }

    /// Packs entries and the wire bytes they describe into one exactly sized buffer.
    private init(entries: [Entry], wire: [UInt8], targets: [[UInt8]]) {
        let header = entries.count * Self.entryBytes
        storage = [UInt8](unsafeUninitializedCapacity: header + wire.count) { buffer, initialized in
            let raw = UnsafeMutableRawBufferPointer(buffer)
            for (index, entry) in entries.enumerated() {
                let at = index * Self.entryBytes
                raw.storeBytes(of: entry.end, toByteOffset: at, as: UInt32.self)
                raw.storeBytes(of: entry.firstNameAt, toByteOffset: at + 4, as: Int16.self)
                raw.storeBytes(of: entry.secondNameAt, toByteOffset: at + 6, as: Int16.self)
                raw.storeBytes(of: entry.additionalNode, toByteOffset: at + 8, as: Int32.self)
            }
            wire.withUnsafeBytes { bytes in
                if !bytes.isEmpty { (raw.baseAddress! + header).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count) }
            }
            initialized = header + wire.count
        }
        recordCount = UInt32(entries.count)
        self.targets = targets
    }

    /// Packs compiled records.
    init(_ records: some Collection<CompiledRData>) {
        var wire: [UInt8] = []
        wire.reserveCapacity(records.reduce(0) { $0 + $1.bytes.count })
        var entries: [Entry] = []
        entries.reserveCapacity(records.count)
        var targets: [[UInt8]] = []
        let hasTargets = records.contains { !$0.lowercasedTarget.isEmpty }
        for record in records {
            wire.append(contentsOf: record.bytes)
            entries.append(Entry(end: UInt32(wire.count), firstNameAt: record.firstNameAt,
                                 secondNameAt: record.secondNameAt, additionalNode: record.additionalNode))
            if hasTargets { targets.append(record.lowercasedTarget) }
        }
        self.init(entries: entries, wire: wire, targets: targets)
    }

    /// Compiles and packs records, with each one's additional-section node.
    init(compiling records: [RData], additionalNode: (RData) -> Int32) {
        var scratch = CompileScratch()
        self.init(compiling: records, scratch: &scratch, additionalNode: additionalNode)
    }

    /// Buffers reused from one RRset's compilation to the next (a zone compiles hundreds of
    /// thousands): only the packed result is allocated per RRset.
    struct CompileScratch {
        var wire: [UInt8] = []
        var entries: [Entry] = []
    }

    init(compiling records: [RData], scratch: inout CompileScratch, additionalNode: (RData) -> Int32) {
        scratch.wire.removeAll(keepingCapacity: true)
        scratch.entries.removeAll(keepingCapacity: true)
        var targets: [[UInt8]] = []
        for rdata in records {
            let (first, second) = rdata.encode(appendingTo: &scratch.wire)
            scratch.entries.append(Entry(end: UInt32(scratch.wire.count), firstNameAt: Int16(first), secondNameAt: Int16(second),
                                         additionalNode: additionalNode(rdata)))
            switch rdata {
            case .cname(let target), .dname(let target): targets.append(target.lowercased().wire)
            default: break
            }
        }
        self.init(entries: scratch.entries, wire: scratch.wire, targets: targets.count == records.count ? targets : [])
    }

    /// Decodes the records back (for the few readers that want `RData`, off the answer path).
    func decoded(type: RRType) -> [RData] {
        indices.map { index in
            self[index].bytes.withUnsafeBytes { buffer -> RData in
                var reader = WireReader(buffer)
                return (try? RData.parse(type: type, from: &reader)) ?? .unknown(type, Array(buffer))
            }
        }
    }
}

/// The records of one owner and type (RFC 2181 §5).
public struct RRSet: Sendable {
    public let type: RRType
    /// RFC 2181 §5.2: one TTL for the whole set.
    public let ttl: UInt32
    public let compiled: CompiledRecords
    /// Set for a service's RRsets: the answer path picks their records per query (order,
    /// subset, panic); nil: every record is answered, in this order.
    public let selection: RecordSelection?
    /// The records as `RData`, when kept: a master-file zone keeps only those of the types the
    /// answer path decodes (SOA, CNAME, DNAME) and decodes the others when asked.
    private let storedRecords: [RData]?

    /// The records, in answer order.
    public var records: [RData] { storedRecords ?? compiled.decoded(type: type) }
    /// How many records (without decoding them).
    @inline(__always)
    public var count: Int { compiled.count }

    public init(type: RRType, ttl: UInt32, records: [RData], compiled: [CompiledRData], selection: RecordSelection? = nil) {
        precondition(records.count == compiled.count, "one compiled form per record")
        precondition(selection.map { $0.weights.count == records.count } ?? true, "one weight per record")
        self.type = type
        self.ttl = ttl
        self.storedRecords = records
        self.compiled = CompiledRecords(compiled)
        self.selection = selection
    }

    /// A master-file RRset: packed, with `RData` kept only where the answer path reads it.
    init(type: RRType, ttl: UInt32, records: [RData], compiled: CompiledRecords) {
        self.type = type
        self.ttl = ttl
        self.storedRecords = type == .soa || type == .cname || type == .dname ? records : nil
        self.compiled = compiled
        self.selection = nil
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

/// The records of one owner and type, while a zone is built.
struct PendingSet {
    var type: RRType
    var ttl: UInt32
    var records: [RData]
    /// Built once a set grows past `duplicateScanRecordsMax`, to keep duplicate checks linear.
    var seen: Set<RData>?
    var position: SourcePosition

    mutating func appendUnique(_ rdata: RData) {
        if seen != nil {
            if seen?.insert(rdata).inserted == true { records.append(rdata) }
            return
        }
        guard !records.contains(rdata) else { return }
        records.append(rdata)
        if records.count > Zone.duplicateScanRecordsMax { seen = Set(records) }
    }
}

/// One owner's records by type, while a zone is built.
struct PendingOwner {
    var name: DomainName
    /// Lowercased wire form: the name's key in the name table.
    var key: [UInt8]
    var position: SourcePosition
    var sets: [PendingSet] = []
    func set(_ type: RRType) -> PendingSet? { sets.first { $0.type == type } }

    /// Adds a record: RFC 2181 §5, duplicates collapse; §5.2, the first TTL holds for the set.
    mutating func add(type: RRType, ttl: UInt32, rdata: RData, position: SourcePosition) {
        if let setIndex = sets.firstIndex(where: { $0.type == type }) {
            sets[setIndex].appendUnique(rdata)
        } else {
            sets.append(PendingSet(type: type, ttl: ttl, records: [rdata], position: position))
        }
    }
}

/// Records grouped by owner in first-appearance order (a record usually follows one of the same
/// owner, which is then found without a lookup).
package struct OwnerGrouping {
    var owners: [PendingOwner] = []
    var index: [DomainName: Int] = [:]
    /// Records outside the zone (at most `ZoneLoadError.errorsMax`).
    var errors: [ZoneError] = []
    private var lastWire: [UInt8] = []
    private var last = -1

    mutating func add(_ parsed: ParsedRecord, origin: DomainName) {
        let rr = parsed.record
        let position: Int
        if last >= 0 && rr.name.wire == lastWire {
            position = last
        } else if let known = index[rr.name] {
            position = known
        } else {
            guard rr.name.isSubdomain(of: origin) else {
                if errors.count < ZoneLoadError.errorsMax {
                    errors.append(ZoneError(parsed.position, "\(rr.name) is outside the zone \(origin)"))
                }
                return
            }
            position = owners.count
            owners.append(PendingOwner(name: rr.name, key: rr.name.lowercased().wire, position: parsed.position))
            index[rr.name] = position
        }
        last = position
        lastWire = rr.name.wire
        owners[position].add(type: rr.type, ttl: rr.ttl, rdata: rr.rdata, position: parsed.position)
    }

    /// Adds the groups of the records that follow these in the file: the result is what adding
    /// those records one by one would have given.
    mutating func merge(_ later: OwnerGrouping) {
        for owner in later.owners {
            guard let known = index[owner.name] else {
                index[owner.name] = owners.count
                owners.append(owner)
                continue
            }
            for set in owner.sets {
                for rdata in set.records { owners[known].add(type: set.type, ttl: set.ttl, rdata: rdata, position: set.position) }
            }
        }
        errors += later.errors.prefix(ZoneLoadError.errorsMax - errors.count)
        last = -1
    }
}

/// An immutable, validated zone, ready for lookups.
public final class Zone: Sendable {
    /// Labels deeper than this are not walked (a name has at most 127 labels).
    public static let labelsMax = 128

    public let origin: DomainName
    /// Where it was loaded from, for logs.
    public let source: String
    /// The files it was read from (with `$INCLUDE`s), as they were then; empty when not read
    /// from files.
    public let files: [FileStamp]
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
    ///
    /// Linear in the records apart from one sort of the distinct names: owners are grouped in
    /// first-appearance order (a record usually follows one of the same owner, which is then
    /// found without a lookup), and the checks against zone cuts and DNAMEs walk each name's
    /// ancestors instead of every cut.
    public convenience init(origin: DomainName, records: [ParsedRecord], source: String, files: [FileStamp] = []) throws(ZoneLoadError) {
        try self.init(origin: origin, recordParts: [records], source: source, files: files)
    }

    /// The same from records in parts (in file order): a large file's parts as they were parsed
    /// (`MasterFileParser.parse(text:...parts:...)`), not copied into one array first.
    public convenience init(origin: DomainName, recordParts: consuming [[ParsedRecord]], source: String,
                            files: [FileStamp] = []) throws(ZoneLoadError) {
        // Group by owner, then by type: each part on a core of its own.
        let groupings = ParallelResults<OwnerGrouping>(count: recordParts.count)
        do {
            let parts = recordParts
            DispatchQueue.concurrentPerform(iterations: parts.count) { k in
                var grouping = OwnerGrouping()
                for parsed in parts[k] { grouping.add(parsed, origin: origin) }
                groupings.set(k, grouping)
            }
        }
        // The parsed records are not needed any more: their memory goes before the zone's is
        // taken (the caller gave them up).
        recordParts = []
        try self.init(origin: origin, groupings: groupings.takeAll(), source: source, files: files)
    }

    /// The same from the records already grouped, part by part in file order
    /// (`MasterFileParser.parseFileGroups` groups them as they are parsed: no array of parsed
    /// records is ever held).
    package convenience init(origin: DomainName, groupings parts: consuming [OwnerGrouping], source: String,
                     files: [FileStamp] = []) throws(ZoneLoadError) {
        var errors: [ZoneError] = []
        func fail(_ position: SourcePosition, _ message: String) {
            if errors.count < ZoneLoadError.errorsMax { errors.append(ZoneError(position, message)) }
        }
        let zonePosition = SourcePosition(file: source, line: 1, column: 1)

        // The parts' groups merged in file order, keeping the first position of each owner and type.
        var grouping = parts.isEmpty ? OwnerGrouping() : parts.removeFirst()
        while !parts.isEmpty { grouping.merge(parts.removeFirst()) }
        for error in grouping.errors { fail(error.position, error.message) }
        let owners = grouping.owners
        let ownerIndex = grouping.index
        grouping = OwnerGrouping()

        let apexKey = origin.lowercased().wire
        let apex = ownerIndex[origin].map { owners[$0] }
        var soaData: SOAData?
        var soaTTL: UInt32 = 0
        if let soaSet = apex?.set(.soa) {
            if soaSet.records.count != 1 { fail(soaSet.position, "more than one SOA record at the apex \(origin)") }
            if case .soa(let data) = soaSet.records[0] { soaData = data }
            soaTTL = soaSet.ttl
        } else {
            fail(apex?.position ?? zonePosition, "no SOA record at the apex \(origin) (expected exactly one)")
        }
        if apex?.set(.ns) == nil {
            fail(apex?.position ?? zonePosition, "no NS records at the apex \(origin)")
        }

        // Zone cuts and DNAMEs, to classify what lies below them.
        var cutKeys: [[UInt8]] = []
        var dnameKeys: [[UInt8]] = []
        for owner in owners {
            if owner.key != apexKey, owner.set(.ns) != nil { cutKeys.append(owner.key) }
            if let set = owner.set(.dname) {
                if set.records.count > 1 { fail(set.position, "more than one DNAME at \(owner.name)") }
                dnameKeys.append(owner.key)
            }
        }
        let cuts = NameTable(keys: cutKeys)
        let dnames = NameTable(keys: dnameKeys)
        /// The key of the nearest strict ancestor of `key` in `table`, if any.
        @Sendable func strictlyBelow(_ key: [UInt8], _ table: NameTable) -> [UInt8]? {
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
        func display(_ key: [UInt8]) -> DomainName { DomainName(uncheckedWire: key) }

        var kinds = [Node.Kind?](repeating: nil, count: owners.count)
        for (index, owner) in owners.enumerated() {
            let key = owner.key
            let addressOnly = owner.sets.allSatisfy { $0.type == .a || $0.type == .aaaa }
            if let soa = owner.set(.soa), key != apexKey {
                fail(soa.position, "SOA record at \(owner.name), not at the apex \(origin)")
            }
            if let cname = owner.set(.cname) {
                if cname.records.count > 1 { fail(cname.position, "more than one CNAME at \(owner.name)") }
                if owner.sets.count > 1 {
                    let others = owner.sets.map(\.type).filter { $0 != .cname }.sorted().map(\.description).joined(separator: ", ")
                    fail(cname.position, "CNAME at \(owner.name) alongside other data (\(others)); a CNAME must be alone")
                }
            }
            if let cut = strictlyBelow(key, cuts) {
                if !addressOnly {
                    fail(owner.position, "\(owner.name) is below the delegation \(display(cut)): only A/AAAA glue may be there")
                }
                kinds[index] = .glue
                continue
            }
            if let dname = strictlyBelow(key, dnames) {
                fail(owner.position, "\(owner.name) is below the DNAME at \(display(dname)) (occluded data)")
                continue
            }
            if key == apexKey {
                kinds[index] = .apex
            } else if owner.set(.ns) != nil {
                let allowed: Set<RRType> = [.ns, .ds, .a, .aaaa]
                if let bad = owner.sets.filter({ !allowed.contains($0.type) }).min(by: { $0.type < $1.type }) {
                    fail(bad.position, "\(bad.type) at the delegation point \(owner.name) (only NS, DS and glue belong there)")
                }
                kinds[index] = .delegation
            } else {
                kinds[index] = .authoritative
            }
        }
        guard errors.isEmpty, let soaData else { throw ZoneLoadError(errors) }

        // Every ancestor between a name and the apex exists: empty non-terminals (RFC 4592 §2.2.2).
        // A name's slot: an owner's index, or an empty non-terminal's (past the owners).
        var slotOfKey = NameTable(capacity: owners.count)
        var slotNames: [DomainName] = []
        var slotOwner: [Int32] = []
        slotNames.reserveCapacity(owners.count)
        slotOwner.reserveCapacity(owners.count)
        for (index, owner) in owners.enumerated() where kinds[index] != nil {
            let (_, inserted) = slotOfKey.insert(owner.key)
            if inserted {
                // A copy of its own: the parsed name was allocated where the file (or its part)
                // was parsed, possibly another thread's malloc arena, where it would keep the
                // pages of the parse's freed records from going back to the kernel.
                slotNames.append(DomainName(uncheckedWire: owner.name.wire.withUnsafeBufferPointer { Array($0) }))
                slotOwner.append(Int32(index))
            }
        }
        let originBytes = origin.wire.count
        for (index, owner) in owners.enumerated() where kinds[index] != nil {
            owner.key.withUnsafeBytes { wire in
                var offset = 1 + Int(wire[0])
                while wire.count - offset > originBytes {
                    let suffix = UnsafeRawBufferPointer(rebasing: wire[offset...])
                    // An ancestor already there has its own ancestors there too.
                    guard slotOfKey.find(suffix) < 0 else { break }
                    _ = slotOfKey.insert(Array(suffix))
                    slotNames.append(DomainName(uncheckedWire: Array(owner.name.wire[offset...])))
                    slotOwner.append(-1)
                    offset += 1 + Int(wire[offset])
                }
            }
        }
        if slotOfKey.find(apexKey) < 0 {
            _ = slotOfKey.insert(apexKey)
            slotNames.append(origin)
            slotOwner.append(-1)
        }
        // Canonical order, apex first, with each name's sort key computed once.
        let apexSlot = Int(slotOfKey.find(apexKey))
        var sortable: [(key: [UInt8], slot: Int32)] = []
        sortable.reserveCapacity(slotNames.count)
        for slot in 0..<slotNames.count where slot != apexSlot {
            sortable.append((slotNames[slot].canonicalSortKey, Int32(slot)))
        }
        sortable.sort { $0.key.lexicographicallyPrecedes($1.key) }
        var ordered: [Int32] = [Int32(apexSlot)]
        ordered.reserveCapacity(slotNames.count)
        for entry in sortable { ordered.append(entry.slot) }
        sortable = []
        var table = NameTable(capacity: ordered.count)
        for slot in ordered { _ = table.insert(slotOfKey.key(at: Int(slot))) }

        // The nodes, their records compiled: in slices of the canonical order on the cores when
        // there are many.
        let (orderedSlots, slotKinds, slotKeys, finalTable, slotOwners, names) = (ordered, kinds, slotOfKey, table, slotOwner, slotNames)
        @Sendable func compileNodes(_ slots: ArraySlice<Int32>) -> [Node] {
            var nodes: [Node] = []
            nodes.reserveCapacity(slots.count)
            var scratch = CompiledRecords.CompileScratch()
            for slot in slots {
                let ownerIndex = Int(slotOwners[Int(slot)])
                let kind: Node.Kind
                if ownerIndex >= 0, let known = slotKinds[ownerIndex] {
                    kind = known
                } else {
                    kind = strictlyBelow(slotKeys.key(at: Int(slot)), cuts) != nil ? .glue : .authoritative
                }
                var rrsets: [RRSet] = []
                // File order: minimal ANY answers with the name's first RRset, as NSD does.
                if ownerIndex >= 0 {
                    for set in owners[ownerIndex].sets {
                        let compiled = CompiledRecords(compiling: set.records, scratch: &scratch) {
                            Zone.additionalNode(of: $0, table: finalTable)
                        }
                        rrsets.append(RRSet(type: set.type, ttl: set.ttl, records: set.records, compiled: compiled))
                    }
                }
                nodes.append(Node(name: names[Int(slot)], kind: kind, rrsets: rrsets))
            }
            return nodes
        }
        let slices = min(MasterFileParser.processorCount(), orderedSlots.count / Self.compileSliceNodesMin)
        var nodes: [Node]
        if slices > 1 {
            let compiled = ParallelResults<[Node]>(count: slices)
            let sliceSize = (orderedSlots.count + slices - 1) / slices
            DispatchQueue.concurrentPerform(iterations: slices) { k in
                let start = k * sliceSize
                compiled.set(k, compileNodes(orderedSlots[start..<min(orderedSlots.count, start + sliceSize)]))
            }
            nodes = compiled.take(0)
            nodes.reserveCapacity(orderedSlots.count)
            for k in 1..<slices { nodes += compiled.take(k) }
        } else {
            nodes = compileNodes(orderedSlots[...])
        }

        self.init(origin: origin, source: source, nodes: nodes, table: table, soa: soaData, soaTTL: soaTTL, files: files)
    }

    /// An RRset is checked for duplicates by scanning it up to this size, by hashing beyond.
    static let duplicateScanRecordsMax = 16
    /// A zone's nodes are compiled on several cores when each gets at least this many.
    static let compileSliceNodesMin = 20_000

    /// Adopts checked nodes: the apex is `nodes[0]`, with exactly one SOA and an NS RRset.
    init(origin: DomainName, source: String, nodes: [Node], table: NameTable, soa: SOAData, soaTTL: UInt32,
         files: [FileStamp] = []) {
        self.files = files
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

    /// True when it was read from files and none of them has changed since.
    public var filesUnchanged: Bool {
        !files.isEmpty && files.allSatisfy { FileStamp.current($0.path) == $0 }
    }

    /// Parses and validates a master file.
    public static func load(path: String, origin: DomainName) throws(ZoneLoadError) -> Zone {
        let (groups, files) = try MasterFileParser.parseFileGroups(path: path, origin: origin)
        return try Zone(origin: origin, groupings: groups, source: path, files: files)
    }

    public static func parse(text: String, origin: DomainName, file: String = "<text>") throws(ZoneLoadError) -> Zone {
        let records = try MasterFileParser.parse(text: Array(text.utf8), file: file, origin: origin)
        return try Zone(origin: origin, records: records, source: file)
    }

    private static func additionalNode(of rdata: RData, table: NameTable) -> Int32 {
        guard let target = rdata.additionalTarget else { return -1 }
        return table.find(target.lowercased().wire)
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
