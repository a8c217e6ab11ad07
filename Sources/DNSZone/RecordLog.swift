import DNSWire

/// The records of a master file (or of one part of it) as a zone load reads them: end to end in
/// one buffer, each with its RDATA already in wire form, and their owners in one name table.
///
/// Issue 15: a zone load used to hold every record as a `ParsedRecord` grouped by owner (names,
/// `RData` and arrays per record and per RRset): 120 MiB for a million records, next to the zone
/// being built. This holds them in a few large buffers of about 30 bytes per record, which go
/// back to the kernel whole when the zone is built (`Zone.init(origin:logs:source:files:)`).
package struct RecordLog: Sendable {
    /// Per record: owner u32, type u16, TTL u32, line u32, column u16, file u16, the offsets of
    /// the compressible names i16 and i16, RDATA length u16; then the RDATA.
    static let headerBytes = 24

    /// One record, read back.
    struct Record {
        var owner: Int32
        var type: RRType
        var ttl: UInt32
        var line: UInt32
        var column: UInt16
        var file: UInt16
        var firstNameAt: Int16
        var secondNameAt: Int16
        /// Where its RDATA is in `bytes`.
        var rdata: Range<Int>
    }

    /// The zone's origin: owners outside it are errors.
    let origin: DomainName
    private(set) var bytes: [UInt8] = []
    private(set) var count = 0
    /// Owners in first-appearance order, by lowercased wire name.
    private(set) var owners = NameTable(capacity: 64)
    /// Each owner's name as first written, end to end (node names keep their case).
    private var names: [UInt8] = []
    private var nameEnds: [UInt32] = []
    /// The files the records' positions name.
    private(set) var files: [String] = []
    /// Records that could not be kept (outside the zone), at most `ZoneLoadError.errorsMax`.
    private(set) var errors: [ZoneError] = []
    /// The owner of the record before (a record usually follows one of the same owner).
    private var lastName: DomainName?
    private var lastOwner: Int32 = -1

    package init(origin: DomainName) {
        self.origin = origin
    }

    /// Room for about `records` records before the buffer grows.
    mutating func reserve(records: Int) {
        bytes.reserveCapacity(records * Self.recordBytesEstimate)
    }

    /// A record's bytes in a zone of services (A, SRV and TXT records of short names): the
    /// header and 10 bytes of RDATA.
    static let recordBytesEstimate = headerBytes + 10

    mutating func append(_ parsed: ParsedRecord) {
        append(name: parsed.record.name, ttl: parsed.record.ttl, rdata: parsed.record.rdata, position: parsed.position)
    }

    mutating func append(name: DomainName, ttl: UInt32, rdata: RData, position: SourcePosition) {
        let owner: Int32
        if lastOwner >= 0, let lastName, lastName == name {
            owner = lastOwner
        } else {
            let known = name.wire.withUnsafeBufferPointer { wire in
                withUnsafeTemporaryAllocation(of: UInt8.self, capacity: wire.count) { lowered -> Int32 in
                    for i in 0..<wire.count { lowered[i] = asciiLowerByte(wire[i]) }
                    let key = UnsafeRawBufferPointer(lowered)
                    let found = owners.find(key)
                    guard found < 0 else { return found }
                    guard name.isSubdomain(of: origin) else { return -1 }
                    names.append(contentsOf: wire)
                    nameEnds.append(UInt32(names.count))
                    return owners.insert(key).index
                }
            }
            guard known >= 0 else {
                if errors.count < ZoneLoadError.errorsMax { errors.append(ZoneError(position, "\(name) is outside the zone \(origin)")) }
                return
            }
            owner = known
            lastName = name
            lastOwner = owner
        }
        let start = bytes.count
        bytes.append(contentsOf: repeatElement(0, count: Self.headerBytes))
        let (first, second) = rdata.encode(appendingTo: &bytes)
        let length = bytes.count - start - Self.headerBytes
        guard length <= RData.rdataBytesMax else {
            bytes.removeSubrange(start...)
            if errors.count < ZoneLoadError.errorsMax { errors.append(ZoneError(position, "RDATA longer than \(RData.rdataBytesMax) bytes")) }
            return
        }
        let file = fileIndex(position.file)
        bytes.withUnsafeMutableBytes { raw in
            raw.storeBytes(of: UInt32(owner), toByteOffset: start, as: UInt32.self)
            raw.storeBytes(of: rdata.type.rawValue, toByteOffset: start + 4, as: UInt16.self)
            raw.storeBytes(of: ttl, toByteOffset: start + 6, as: UInt32.self)
            raw.storeBytes(of: UInt32(clamping: position.line), toByteOffset: start + 10, as: UInt32.self)
            raw.storeBytes(of: UInt16(clamping: position.column), toByteOffset: start + 14, as: UInt16.self)
            raw.storeBytes(of: file, toByteOffset: start + 16, as: UInt16.self)
            raw.storeBytes(of: Int16(first), toByteOffset: start + 18, as: Int16.self)
            raw.storeBytes(of: Int16(second), toByteOffset: start + 20, as: Int16.self)
            raw.storeBytes(of: UInt16(length), toByteOffset: start + 22, as: UInt16.self)
        }
        count += 1
    }

    /// The index of `file` in `files` (records come from a handful of files, mostly the last one).
    private mutating func fileIndex(_ file: String) -> UInt16 {
        if let last = files.indices.last, files[last] == file { return UInt16(last) }
        if let known = files.lastIndex(of: file) { return UInt16(known) }
        // Past 65,535 files (includes) the last slot is reused: positions then name it.
        guard files.count <= Int(UInt16.max) else { return UInt16.max }
        files.append(file)
        return UInt16(files.count - 1)
    }

    /// The record at byte `offset` (0 for the first; the next starts at `rdata.upperBound`).
    @inline(__always)
    func record(at offset: Int) -> Record {
        bytes.withUnsafeBytes { raw in
            let length = Int(raw.loadUnaligned(fromByteOffset: offset + 22, as: UInt16.self))
            let rdata = offset + Self.headerBytes
            return Record(owner: Int32(raw.loadUnaligned(fromByteOffset: offset, as: UInt32.self)),
                          type: RRType(raw.loadUnaligned(fromByteOffset: offset + 4, as: UInt16.self)),
                          ttl: raw.loadUnaligned(fromByteOffset: offset + 6, as: UInt32.self),
                          line: raw.loadUnaligned(fromByteOffset: offset + 10, as: UInt32.self),
                          column: raw.loadUnaligned(fromByteOffset: offset + 14, as: UInt16.self),
                          file: raw.loadUnaligned(fromByteOffset: offset + 16, as: UInt16.self),
                          firstNameAt: raw.loadUnaligned(fromByteOffset: offset + 18, as: Int16.self),
                          secondNameAt: raw.loadUnaligned(fromByteOffset: offset + 20, as: Int16.self),
                          rdata: rdata..<(rdata + length))
        }
    }

    /// Where `record` was written.
    func position(of record: Record) -> SourcePosition {
        SourcePosition(file: files[Int(record.file)], line: Int(record.line), column: Int(record.column))
    }

    /// Owner `index`'s name, as first written.
    func ownerName(_ index: Int) -> DomainName {
        let start = index == 0 ? 0 : Int(nameEnds[index - 1])
        return DomainName(uncheckedWire: Array(names[start..<Int(nameEnds[index])]))
    }

    /// A record's RDATA decoded (for the types a zone keeps as `RData`, and for comparing
    /// records whose names differ only in case).
    func decode(_ record: Record) -> RData {
        bytes.withUnsafeBytes { raw in
            let rdata = UnsafeRawBufferPointer(rebasing: raw[record.rdata])
            var reader = WireReader(rdata)
            return (try? RData.parse(type: record.type, from: &reader)) ?? .unknown(record.type, Array(rdata))
        }
    }
}

/// One RRset of an owner while a zone is built: its records, as references into the logs
/// (`LoggedRecords`), in file order, without duplicates.
struct LoggedSet {
    var type: RRType
    /// RFC 2181 §5.2: the first record's TTL holds for the set.
    var ttl: UInt32
    var members: [UInt64]
    /// Members by the hash of their RDATA, once the set grows past `Zone.duplicateScanRecordsMax`
    /// (duplicate checks stay linear).
    var seen: [Int: [UInt64]]?
}

/// A zone load's record logs (one per part of the file, in file order) with every owner's
/// records found: what `Zone.init(origin:logs:source:files:)` validates and compiles.
struct LoggedRecords: Sendable {
    let logs: [RecordLog]
    /// Every owner of the logs once, in first-appearance order, by lowercased wire name.
    var owners: NameTable
    /// Where each owner's name was first written: a log, and the owner's index in it.
    private let firstWritten: [UInt64]
    /// Owner `o`'s records are `refs[starts[o] ..< starts[o + 1]]`, in file order; a reference
    /// is a log's index (high 24 bits) and the record's offset in it.
    private let starts: [Int32]
    private let refs: [UInt64]

    init(logs: consuming [RecordLog]) {
        let logs = logs
        var owners = NameTable(capacity: logs.reduce(0) { $0 + $1.owners.count })
        var firstWritten: [UInt64] = []
        // Each log's owner indices in the merged table.
        var merged: [[Int32]] = []
        for (k, log) in logs.enumerated() {
            var map: [Int32] = []
            map.reserveCapacity(log.owners.count)
            for local in 0..<log.owners.count {
                let (index, inserted) = log.owners.withKey(at: local) { owners.insert($0) }
                if inserted { firstWritten.append(UInt64(k) << 40 | UInt64(local)) }
                map.append(index)
            }
            merged.append(map)
        }
        // Counted, then placed: each owner's references in file order.
        var starts = [Int32](repeating: 0, count: owners.count + 1)
        for (k, log) in logs.enumerated() {
            var offset = 0
            while offset < log.bytes.count {
                let record = log.record(at: offset)
                starts[Int(merged[k][Int(record.owner)]) + 1] += 1
                offset = record.rdata.upperBound
            }
        }
        for o in 0..<owners.count { starts[o + 1] += starts[o] }
        var next = starts
        var refs = [UInt64](repeating: 0, count: Int(starts[owners.count]))
        for (k, log) in logs.enumerated() {
            var offset = 0
            while offset < log.bytes.count {
                let record = log.record(at: offset)
                let owner = Int(merged[k][Int(record.owner)])
                refs[Int(next[owner])] = UInt64(k) << 40 | UInt64(offset)
                next[owner] += 1
                offset = record.rdata.upperBound
            }
        }
        self.logs = logs
        self.owners = owners
        self.firstWritten = firstWritten
        self.starts = starts
        self.refs = refs
    }

    @inline(__always)
    func record(_ ref: UInt64) -> RecordLog.Record { logs[Int(ref >> 40)].record(at: Int(ref & 0xFF_FFFF_FFFF)) }

    func position(_ ref: UInt64) -> SourcePosition { logs[Int(ref >> 40)].position(of: record(ref)) }

    func decode(_ ref: UInt64) -> RData { logs[Int(ref >> 40)].decode(record(ref)) }

    /// The RDATA of `ref`, in place.
    @inline(__always)
    func withRData<T>(_ ref: UInt64, _ body: (UnsafeRawBufferPointer) -> T) -> T {
        let range = record(ref).rdata
        return logs[Int(ref >> 40)].bytes.withUnsafeBytes { body(UnsafeRawBufferPointer(rebasing: $0[range])) }
    }

    /// Owner `owner`'s name as first written.
    func name(of owner: Int) -> DomainName {
        let written = firstWritten[owner]
        return logs[Int(written >> 40)].ownerName(Int(written & 0xFF_FFFF_FFFF))
    }

    /// Owner `owner`'s records, in file order.
    func records(of owner: Int) -> ArraySlice<UInt64> { refs[Int(starts[owner])..<Int(starts[owner + 1])] }

    /// The position of owner `owner`'s first record.
    func position(of owner: Int) -> SourcePosition { position(refs[Int(starts[owner])]) }

    /// The types at `owner` in the order they first appear, each with its first record (no
    /// duplicates dropped: for checks that need only the types).
    func firstRecords(of owner: Int) -> [(type: RRType, first: UInt64)] {
        var types: [(type: RRType, first: UInt64)] = []
        for ref in records(of: owner) {
            let type = record(ref).type
            if !types.contains(where: { $0.type == type }) { types.append((type, ref)) }
        }
        return types
    }

    /// Owner `owner`'s RRsets, in the order their types first appear: RFC 2181 §5, duplicates
    /// collapse; §5.2, the first TTL holds for the set.
    func sets(of owner: Int) -> [LoggedSet] {
        var sets: [LoggedSet] = []
        for ref in records(of: owner) {
            let record = record(ref)
            guard let k = sets.firstIndex(where: { $0.type == record.type }) else {
                sets.append(LoggedSet(type: record.type, ttl: record.ttl, members: [ref]))
                continue
            }
            if sets[k].seen == nil {
                if sets[k].members.contains(where: { same($0, ref, type: record.type) }) { continue }
                sets[k].members.append(ref)
                if sets[k].members.count > Zone.duplicateScanRecordsMax {
                    var seen: [Int: [UInt64]] = [:]
                    for member in sets[k].members { seen[hash(member, type: record.type), default: []].append(member) }
                    sets[k].seen = seen
                }
            } else {
                let key = hash(ref, type: record.type)
                if sets[k].seen![key]?.contains(where: { same($0, ref, type: record.type) }) == true { continue }
                sets[k].seen![key, default: []].append(ref)
                sets[k].members.append(ref)
            }
        }
        return sets
    }

    /// How many distinct records of `type` `owner` has.
    func distinctCount(of owner: Int, type: RRType) -> Int {
        sets(of: owner).first { $0.type == type }?.members.count ?? 0
    }

    /// Whether two records of `type` are the same record: the same RDATA, where names compare
    /// without regard to case (as `RData`'s `==`).
    func same(_ a: UInt64, _ b: UInt64, type: RRType) -> Bool {
        let equal = withRData(a) { x in
            withRData(b) { y -> Bool? in
                guard x.count == y.count else { return false }
                if x.elementsEqual(y) { return true }
                guard Self.hasNames(type), x.indices.allSatisfy({ asciiLowerByte(x[$0]) == asciiLowerByte(y[$0]) }) else { return false }
                return nil
            }
        }
        // Equal but for case somewhere: whether that is in a name, the types know.
        return equal ?? (decode(a) == decode(b))
    }

    /// A hash that records `same` calls equal share.
    private func hash(_ ref: UInt64, type: RRType) -> Int {
        withRData(ref) { rdata in
            var hasher = Hasher()
            if Self.hasNames(type) {
                for byte in rdata { hasher.combine(asciiLowerByte(byte)) }
            } else {
                hasher.combine(bytes: rdata)
            }
            return hasher.finalize()
        }
    }

    /// Types whose RDATA holds domain names (which compare without regard to case).
    static func hasNames(_ type: RRType) -> Bool {
        switch type {
        case .ns, .cname, .ptr, .dname, .soa, .mx, .srv, .naptr: true
        default: false
        }
    }
}
