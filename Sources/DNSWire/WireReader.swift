/// Why a message could not be parsed, and where.
public struct WireError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Reason: Sendable, Equatable {
        case truncated
        case badLabelType
        case pointerLoop
        case nameTooLong
        case badRData(String)
        case trailingBytes
        case duplicateOPT
        case badOPT(String)
    }
    /// Offset in the message where the problem was found.
    public var offset: Int
    public var reason: Reason

    public init(offset: Int, reason: Reason) {
        self.offset = offset
        self.reason = reason
    }

    public var description: String {
        let what: String
        switch reason {
        case .truncated: what = "message truncated"
        case .badLabelType: what = "reserved label type (expected length < 64 or a compression pointer)"
        case .pointerLoop: what = "compression pointer does not point backwards"
        case .nameTooLong: what = "name longer than 255 bytes"
        case .badRData(let detail): what = "bad RDATA: \(detail)"
        case .trailingBytes: what = "bytes after the last record"
        case .duplicateOPT: what = "more than one OPT record"
        case .badOPT(let detail): what = "bad OPT record: \(detail)"
        }
        return "offset \(offset): \(what)"
    }
}

/// A bounds-checked cursor over a DNS message. Every read checks the remaining length and
/// throws `WireError` with the offset instead of trapping: packets are untrusted input.
public struct WireReader {
    public let bytes: UnsafeRawBufferPointer
    public var offset: Int
    /// Reads stop at this offset (end of the current RDATA when parsing one), not past it.
    public var limit: Int

    public init(_ bytes: UnsafeRawBufferPointer, offset: Int = 0) {
        self.bytes = bytes
        self.offset = offset
        self.limit = bytes.count
    }

    public var remaining: Int { limit - offset }

    @inline(__always)
    public mutating func u8() throws(WireError) -> UInt8 {
        guard offset < limit else { throw WireError(offset: offset, reason: .truncated) }
        let value = bytes[offset]
        offset += 1
        return value
    }

    @inline(__always)
    public mutating func u16() throws(WireError) -> UInt16 {
        guard offset + 2 <= limit else { throw WireError(offset: offset, reason: .truncated) }
        let value = UInt16(bytes[offset]) << 8 | UInt16(bytes[offset + 1])
        offset += 2
        return value
    }

    @inline(__always)
    public mutating func u32() throws(WireError) -> UInt32 {
        guard offset + 4 <= limit else { throw WireError(offset: offset, reason: .truncated) }
        var value: UInt32 = 0
        for i in 0..<4 { value = value << 8 | UInt32(bytes[offset + i]) }
        offset += 4
        return value
    }

    public mutating func bytes(_ count: Int) throws(WireError) -> [UInt8] {
        guard count >= 0, offset + count <= limit else { throw WireError(offset: offset, reason: .truncated) }
        let value = Array(bytes[offset..<(offset + count)])
        offset += count
        return value
    }

    public mutating func skip(_ count: Int) throws(WireError) {
        guard count >= 0, offset + count <= limit else { throw WireError(offset: offset, reason: .truncated) }
        offset += count
    }

    /// Reads a possibly compressed name (RFC 1035 §4.1.4).
    ///
    /// Every compression pointer must point strictly before the pointer itself, so decoding
    /// always terminates (no loops, no forward references), and the expanded name is at most
    /// 255 bytes. Pointers may reach anywhere earlier in the message, beyond `limit`'s RDATA.
    public mutating func name() throws(WireError) -> DomainName {
        var wire: [UInt8] = []
        wire.reserveCapacity(32)
        try readName { byte in wire.append(byte) }
        return DomainName(uncheckedWire: wire)
    }

    /// Skips a possibly compressed name, validating it as `name()` does.
    public mutating func skipName() throws(WireError) {
        try readName { _ in }
    }

    /// Copies the expanded name into `output` (at least 255 bytes), lowercased if asked;
    /// returns its length. Does not allocate: this is the answer path's question reader.
    public mutating func name(into output: UnsafeMutableRawPointer, lowercase: Bool) throws(WireError) -> Int {
        var count = 0
        if lowercase {
            try readName { byte in
                output.storeBytes(of: asciiLower(byte), toByteOffset: count, as: UInt8.self)
                count += 1
            }
        } else {
            try readName { byte in
                output.storeBytes(of: byte, toByteOffset: count, as: UInt8.self)
                count += 1
            }
        }
        return count
    }

    @inline(__always)
    private mutating func readName(_ emit: (UInt8) -> Void) throws(WireError) {
        var position = offset
        var jumped = false
        var expanded = 0
        while true {
            // Once a pointer is followed, labels may lie anywhere earlier in the message.
            let bound = jumped ? bytes.count : limit
            guard position < bound else { throw WireError(offset: position, reason: .truncated) }
            let length = Int(bytes[position])
            switch length & 0xC0 {
            case 0x00:
                expanded += 1 + length
                guard expanded <= DomainName.nameBytesMax else {
                    throw WireError(offset: position, reason: .nameTooLong)
                }
                if length == 0 {
                    emit(0)
                    if !jumped { offset = position + 1 }
                    return
                }
                guard position + 1 + length <= bound else { throw WireError(offset: position, reason: .truncated) }
                emit(UInt8(length))
                for i in 1...length { emit(bytes[position + i]) }
                position += 1 + length
            case 0xC0:
                guard position + 2 <= bound else { throw WireError(offset: position, reason: .truncated) }
                let target = (length & 0x3F) << 8 | Int(bytes[position + 1])
                // Strictly backwards: guarantees termination.
                guard target < position else { throw WireError(offset: position, reason: .pointerLoop) }
                if !jumped {
                    offset = position + 2
                    jumped = true
                }
                position = target
            default:
                throw WireError(offset: position, reason: .badLabelType)
            }
        }
    }
}
