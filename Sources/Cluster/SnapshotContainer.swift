/// Why snapshot bytes were refused: where decoding stopped and what was wrong. A refused
/// snapshot changes nothing.
public struct SnapshotError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Byte offset in the snapshot where the problem is.
    public var offset: Int
    public var message: String

    public init(offset: Int, message: String) {
        self.offset = offset
        self.message = message
    }

    public var description: String { "snapshot, byte \(offset): \(message)" }
}

/// The bytes of a Raft snapshot and of a `discoctl snapshot save` file: the images of every
/// state machine at one log index, each in a named section.
///
/// Layout (integers big-endian):
/// ```
/// magic      8 bytes  "DISCOSNP"
/// version    u16      1
/// reserved   u16      0
/// index      u64      the log index the state machines had applied
/// term       u64      that entry's term
/// sections   u32      count, then per section:
///   name     u16 length + UTF-8 (1...sectionNameBytesMax, unique)
///   data     u64 length + bytes
/// checksum   u32      CRC-32 (IEEE 802.3, as zlib's crc32) of every byte before it
/// ```
/// Decoding checks the magic, version, every length against what is left, and the checksum, so
/// a truncated or damaged snapshot is an error with its offset, never a partial restore.
public struct SnapshotContainer: Sendable, Equatable {
    public static let magic: [UInt8] = Array("DISCOSNP".utf8)
    public static let version: UInt16 = 1
    /// Longest section name (they are state machine names: "kv", "registry", "servers").
    public static let sectionNameBytesMax = 64
    /// The largest snapshot: a snapshot travels to a follower whole in one peer frame, so it
    /// must fit `PeerCodec.frameBytesMax` with room for the frame's own fields (64 KiB is far
    /// more than they take). About 64 MiB of state machines.
    public static let bytesMax = PeerCodec.frameBytesMax - (64 << 10)
    /// magic + version + reserved + index + term + section count.
    static let headerBytes = 8 + 2 + 2 + 8 + 8 + 4
    static let checksumBytes = 4

    public var index: UInt64
    public var term: UInt64
    /// Sections in order; names are unique.
    public private(set) var sections: [(name: String, data: [UInt8])]

    public init(index: UInt64, term: UInt64, sections: [(name: String, data: [UInt8])]) {
        precondition(Set(sections.map(\.name)).count == sections.count, "duplicate snapshot section")
        precondition(sections.allSatisfy { !$0.name.isEmpty && $0.name.utf8.count <= Self.sectionNameBytesMax },
                     "bad snapshot section name")
        self.index = index
        self.term = term
        self.sections = sections
    }

    public func section(_ name: String) -> [UInt8]? { sections.first { $0.name == name }?.data }

    public static func == (a: SnapshotContainer, b: SnapshotContainer) -> Bool {
        a.index == b.index && a.term == b.term && a.sections.count == b.sections.count
            && zip(a.sections, b.sections).allSatisfy { $0.name == $1.name && $0.data == $1.data }
    }

    public var encoded: [UInt8] {
        var out = ByteWriter()
        out.bytes.reserveCapacity(Self.headerBytes + Self.checksumBytes + sections.reduce(0) { $0 + 10 + $1.name.utf8.count + $1.data.count })
        out.bytes += Self.magic
        out.u16(Self.version)
        out.u16(0)
        out.u64(index)
        out.u64(term)
        out.u32(UInt32(sections.count))
        for section in sections {
            out.u16(UInt16(section.name.utf8.count))
            out.bytes += Array(section.name.utf8)
            out.u64(UInt64(section.data.count))
            out.bytes += section.data
        }
        out.u32(CRC32.checksum(out.bytes[...]))
        return out.bytes
    }

    public init(decoding bytes: [UInt8]) throws(SnapshotError) {
        func fail(_ offset: Int, _ message: String) -> SnapshotError { SnapshotError(offset: offset, message: message) }
        guard bytes.count >= Self.magic.count, Array(bytes[0..<Self.magic.count]) == Self.magic else {
            throw fail(0, "not a Disco snapshot (no DISCOSNP magic)")
        }
        guard bytes.count >= Self.headerBytes + Self.checksumBytes else {
            throw fail(bytes.count, "truncated: \(bytes.count) bytes is shorter than the \(Self.headerBytes + Self.checksumBytes)-byte minimum")
        }
        // Everything before the checksum; lengths are checked against this, not the whole.
        let bodyEnd = bytes.count - Self.checksumBytes
        var r = ByteReader(Array(bytes[0..<bodyEnd]))
        func take(_ what: String, _ count: Int) throws(SnapshotError) -> ArraySlice<UInt8> {
            guard count <= r.remaining else {
                throw fail(r.offset, "truncated: \(what) needs \(count) bytes, \(r.remaining) left")
            }
            return try! r.take(count)
        }
        func integer(_ what: String, _ width: Int) throws(SnapshotError) -> UInt64 {
            try take(what, width).reduce(0) { $0 << 8 | UInt64($1) }
        }
        _ = try take("magic", Self.magic.count)
        let version = try integer("version", 2)
        guard version == UInt64(Self.version) else {
            throw fail(8, "version \(version) is not supported (this discod reads version \(Self.version))")
        }
        _ = try integer("reserved", 2)
        index = try integer("index", 8)
        term = try integer("term", 8)
        let count = try integer("section count", 4)
        // Each section takes at least 2 + 1 + 8 bytes: a larger count is a lie, not a reason to allocate.
        guard count <= UInt64(r.remaining / 11) else {
            throw fail(r.offset - 4, "truncated: \(count) sections do not fit in \(r.remaining) bytes")
        }
        var sections: [(name: String, data: [UInt8])] = []
        for k in 0..<Int(count) {
            let at = r.offset
            let nameLength = Int(try integer("the name length of section \(k + 1)", 2))
            guard nameLength >= 1, nameLength <= Self.sectionNameBytesMax else {
                throw fail(at, "section \(k + 1) has a name of \(nameLength) bytes (1 to \(Self.sectionNameBytesMax) allowed)")
            }
            guard let name = String(validating: try take("the name of section \(k + 1)", nameLength), as: UTF8.self) else {
                throw fail(at + 2, "section \(k + 1) has a name that is not UTF-8")
            }
            guard !sections.contains(where: { $0.name == name }) else { throw fail(at, "section '\(name)' appears twice") }
            let dataLength = try integer("the length of section '\(name)'", 8)
            guard dataLength <= UInt64(r.remaining) else {
                throw fail(r.offset - 8, "truncated: section '\(name)' needs \(dataLength) bytes, \(r.remaining) left")
            }
            sections.append((name, Array(try take("section '\(name)'", Int(dataLength)))))
        }
        guard r.remaining == 0 else { throw fail(r.offset, "\(r.remaining) unexpected bytes after the last section") }
        let stored = bytes[bodyEnd...].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
        let computed = CRC32.checksum(bytes[0..<bodyEnd])
        guard stored == computed else {
            throw fail(bodyEnd, "checksum mismatch (stored \(hex(stored)), computed \(hex(computed))): the snapshot is damaged")
        }
        self.sections = sections
    }
}

private func hex(_ value: UInt32) -> String {
    let digits = String(value, radix: 16)
    return "0x" + String(repeating: "0", count: 8 - digits.count) + digits
}

/// CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320), the checksum of zlib, gzip and PNG.
