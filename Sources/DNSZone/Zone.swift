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
    private(set) var storage: [UInt8]
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
    init(entries: [Entry], wire: [UInt8], targets: [[UInt8]]) {
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

    /// Sets every record's additional-section node from `table` (records compiled before the
    /// zone's names were known). In place when the buffer is not shared.
    mutating func resolveAdditionalNodes(type: RRType, table: NameTable) {
        guard type == .ns || type == .mx || type == .srv else { return }
        let count = Int(recordCount)
        let wireStart = count * Self.entryBytes
        storage.withUnsafeMutableBytes { raw in
            var start = 0
            for index in 0..<count {
                let end = Int(raw.loadUnaligned(fromByteOffset: index * Self.entryBytes, as: UInt32.self))
                let rdata = UnsafeRawBufferPointer(rebasing: raw[(wireStart + start)..<(wireStart + end)])
                raw.storeBytes(of: Zone.additionalNode(type: type, rdata: rdata, table: table),
                               toByteOffset: index * Self.entryBytes + 8, as: Int32.self)
                start = end
            }
        }
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
    public internal(set) var compiled: CompiledRecords
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
        self.storedRecords = Self.storesRecords(of: type) ? records : nil
        self.compiled = compiled
        self.selection = nil
    }

    /// Whether a master-file RRset of `type` keeps its `RData` (the answer path reads them).
    static func storesRecords(of type: RRType) -> Bool { type == .soa || type == .cname || type == .dname }
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
        let (parts, files) = try MasterFileParser.parseFileCompiled(path: path, origin: origin)
        do throws(ZoneLoadError) {
            return try Zone(origin: origin, compiled: parts, source: path, files: files)
        } catch {
            // Compiled parts keep no positions: the file is parsed again keeping them, so that
            // each error names its file and line (and what is reported is that load's).
            let (logs, files) = try MasterFileParser.parseFileLogs(path: path, origin: origin)
            return try Zone(origin: origin, logs: logs, source: path, files: files)
        }
    }

    public static func parse(text: String, origin: DomainName, file: String = "<text>") throws(ZoneLoadError) -> Zone {
        let records = try MasterFileParser.parse(text: Array(text.utf8), file: file, origin: origin)
        return try Zone(origin: origin, records: records, source: file)
    }

    /// The node in `table` of the name whose A/AAAA records go into the additional section for
    /// a record of `type` (the target of NS, MX and SRV; RFC 1035 §3.3.9, RFC 2782), read from its
    /// uncompressed wire RDATA; -1 for none (an SRV's root target means no service).
    static func additionalNode(type: RRType, rdata: UnsafeRawBufferPointer, table: NameTable) -> Int32 {
        let at: Int
        switch type {
        case .ns: at = 0
        case .mx: at = 2
        case .srv: at = 6
        default: return -1
        }
        guard at < rdata.count else { return -1 }
        let name = UnsafeRawBufferPointer(rebasing: rdata[at...])
        if type == .srv && name[0] == 0 { return -1 }
        return withUnsafeTemporaryAllocation(of: UInt8.self, capacity: name.count) { lowered in
            for i in 0..<name.count { lowered[i] = asciiLowerByte(name[i]) }
            return table.find(UnsafeRawBufferPointer(lowered))
        }
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
