/// Thrown when a write does not fit in the writer's capacity. The caller decides what that
/// means: set TC and drop sections (UDP), or fail.
public struct WireOverflow: Error, Sendable {
    public init() {}
}

/// Writes a DNS message into caller-owned memory, with name compression (RFC 1035 §4.1.4).
///
/// No allocation: the buffer and the compression table are provided by the caller and reused
/// across messages. `capacity` may be lowered below the buffer size to honour a client's UDP
/// payload size; writes past it throw `WireOverflow` and leave `count` where it was for that
/// write, so the caller can roll back to a mark.
public struct WireWriter {
    /// Compression remembers at most this many name offsets per message; names beyond it are
    /// written uncompressed (correct, just longer). 128 entries cover a full 64 KiB answer of
    /// typical records; lookups cost O(entries) per name.
    public static let compressionEntriesMax = 128

    public let base: UnsafeMutableRawPointer
    public let bufferBytes: Int
    /// Writes beyond this offset throw. At most `bufferBytes`.
    public var capacity: Int
    public private(set) var count: Int = 0

    private let table: UnsafeMutablePointer<UInt16>
    private var tableCount: Int = 0

    /// - Parameters:
    ///   - buffer: where the message is written.
    ///   - compressionTable: scratch of at least `compressionEntriesMax` entries.
    public init(buffer: UnsafeMutableRawBufferPointer, compressionTable: UnsafeMutablePointer<UInt16>) {
        self.base = buffer.baseAddress!
        self.bufferBytes = buffer.count
        self.capacity = buffer.count
        self.table = compressionTable
    }

    /// A position to roll back to.
    public struct Mark {
        fileprivate let count: Int
        fileprivate let tableCount: Int
    }

    public var mark: Mark { Mark(count: count, tableCount: tableCount) }

    public mutating func rollback(to mark: Mark) {
        count = mark.count
        tableCount = mark.tableCount
    }

    /// Starts a new message in the same buffer.
    public mutating func reset(capacity: Int? = nil) {
        count = 0
        tableCount = 0
        self.capacity = min(capacity ?? bufferBytes, bufferBytes)
    }

    public var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base, count: count) }

    @inline(__always)
    public mutating func u8(_ value: UInt8) throws(WireOverflow) {
        guard count + 1 <= capacity else { throw WireOverflow() }
        base.storeBytes(of: value, toByteOffset: count, as: UInt8.self)
        count += 1
    }

    @inline(__always)
    public mutating func u16(_ value: UInt16) throws(WireOverflow) {
        guard count + 2 <= capacity else { throw WireOverflow() }
        base.storeBytes(of: value.bigEndian, toByteOffset: count, as: UInt16.self)
        count += 2
    }

    @inline(__always)
    public mutating func u32(_ value: UInt32) throws(WireOverflow) {
        guard count + 4 <= capacity else { throw WireOverflow() }
        base.storeBytes(of: value.bigEndian, toByteOffset: count, as: UInt32.self)
        count += 4
    }

    @inline(__always)
    public mutating func bytes(_ source: UnsafeRawBufferPointer) throws(WireOverflow) {
        guard count + source.count <= capacity else { throw WireOverflow() }
        if let from = source.baseAddress, source.count > 0 {
            (base + count).copyMemory(from: from, byteCount: source.count)
        }
        count += source.count
    }

    public mutating func bytes(_ source: [UInt8]) throws(WireOverflow) {
        guard count + source.count <= capacity else { throw WireOverflow() }
        guard !source.isEmpty else { return }
        source.withUnsafeBytes { (base + count).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        count += source.count
    }

    /// Overwrites a 16-bit value already written (counts, RDLENGTH).
    @inline(__always)
    public func patchU16(_ value: UInt16, at offset: Int) {
        precondition(offset + 2 <= count, "patchU16 past the written bytes")
        base.storeBytes(of: value.bigEndian, toByteOffset: offset, as: UInt16.self)
    }

    public func u16(at offset: Int) -> UInt16 {
        UInt16(base.load(fromByteOffset: offset, as: UInt8.self)) << 8
            | UInt16(base.load(fromByteOffset: offset + 1, as: UInt8.self))
    }

    /// Remembers a name already present in the buffer (e.g. the question echoed from the
    /// query) as a compression target.
    public mutating func registerName(at offset: Int) {
        guard offset < 0x4000, tableCount < Self.compressionEntriesMax else { return }
        table[tableCount] = UInt16(offset)
        tableCount += 1
    }

    public mutating func name(_ name: DomainName, compress: Bool = true) throws(WireOverflow) {
        let written = name.wire.withUnsafeBytes { wire in
            (try? self.name(wire: wire, compress: compress)) != nil
        }
        if !written { throw WireOverflow() }
    }

    /// Writes an uncompressed wire-form name, replacing its longest suffix already in the
    /// message by a pointer when `compress` is set. Offsets of the labels written are
    /// remembered for later names, whether or not this one was compressed.
    public mutating func name(wire: UnsafeRawBufferPointer, compress: Bool) throws(WireOverflow) {
        var start = 0
        let length = wire.count
        while start < length - 1 {
            if compress, let target = findSuffix(wire, from: start) {
                guard count + start + 2 <= capacity else { throw WireOverflow() }
                let written = count
                try bytes(UnsafeRawBufferPointer(rebasing: wire[0..<start]))
                remember(labelsOf: wire, upTo: start, writtenAt: written)
                try u16(0xC000 | UInt16(target))
                return
            }
            start += 1 + Int(wire[start])
        }
        let written = count
        try bytes(wire)
        remember(labelsOf: wire, upTo: length - 1, writtenAt: written)
    }

    private mutating func remember(labelsOf wire: UnsafeRawBufferPointer, upTo end: Int, writtenAt offset: Int) {
        var position = 0
        while position < end {
            registerName(at: offset + position)
            position += 1 + Int(wire[position])
        }
    }

    /// An offset in the buffer where the suffix `wire[from...]` is already written.
    private func findSuffix(_ wire: UnsafeRawBufferPointer, from start: Int) -> Int? {
        for entry in 0..<tableCount {
            let offset = Int(table[entry])
            if nameInBuffer(at: offset, equals: wire, from: start) { return offset }
        }
        return nil
    }

    private func nameInBuffer(at offset: Int, equals wire: UnsafeRawBufferPointer, from start: Int) -> Bool {
        var position = offset
        var index = start
        while true {
            var length = Int(base.load(fromByteOffset: position, as: UInt8.self))
            while length & 0xC0 == 0xC0 {
                position = (length & 0x3F) << 8 | Int(base.load(fromByteOffset: position + 1, as: UInt8.self))
                length = Int(base.load(fromByteOffset: position, as: UInt8.self))
            }
            guard length == Int(wire[index]) else { return false }
            if length == 0 { return true }
            for i in 1...length {
                let a = asciiLower(base.load(fromByteOffset: position + i, as: UInt8.self))
                if a != asciiLower(wire[index + i]) { return false }
            }
            position += 1 + length
            index += 1 + length
        }
    }
}
