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
