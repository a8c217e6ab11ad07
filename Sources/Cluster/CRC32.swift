/// CRC-32 (IEEE 802.3, as zlib's crc32): snapshots, peer frames and stored log entries carry
/// one, so damage on the wire or on disk is detected instead of applied.
///
/// Slicing-by-8 (Intel's, as in zlib's portable path): eight bytes per step through eight
/// tables, instead of one byte per step through one. Every entry is checksummed when it is
/// stored and every peer frame when it is sent and received, so this runs over each write
/// several times on the Raft threads (issue 16).
public enum CRC32 {
    /// `tables[k * 256 + n]`: the CRC of byte `n` followed by `k` zero bytes.
    static let tables: [UInt32] = {
        var tables = [UInt32](repeating: 0, count: 8 * 256)
        for n in 0..<256 {
            var c = UInt32(n)
            for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
            tables[n] = c
        }
        for k in 1..<8 {
            for n in 0..<256 {
                let previous = tables[(k - 1) * 256 + n]
                tables[k * 256 + n] = (previous >> 8) ^ tables[Int(previous & 0xFF)]
            }
        }
        return tables
    }()

    public static func checksum(_ bytes: ArraySlice<UInt8>) -> UInt32 {
        finish(update(start, bytes))
    }

    /// Incremental form: `finish(update(update(start, a), b))` is the checksum of `a + b`.
    public static let start: UInt32 = 0xFFFF_FFFF

    public static func update(_ crc: UInt32, _ bytes: ArraySlice<UInt8>) -> UInt32 {
        bytes.withUnsafeBufferPointer { update(crc, UnsafeRawBufferPointer($0)) }
    }

    public static func update(_ crc: UInt32, _ buffer: UnsafeRawBufferPointer) -> UInt32 {
        var crc = crc
        tables.withUnsafeBufferPointer { t in
            var offset = 0
            let count = buffer.count
            while count - offset >= 8 {
                let low = UInt32(littleEndian: buffer.loadUnaligned(fromByteOffset: offset, as: UInt32.self)) ^ crc
                let high = UInt32(littleEndian: buffer.loadUnaligned(fromByteOffset: offset + 4, as: UInt32.self))
                crc = t[7 * 256 + Int(low & 0xFF)] ^ t[6 * 256 + Int((low >> 8) & 0xFF)]
                    ^ t[5 * 256 + Int((low >> 16) & 0xFF)] ^ t[4 * 256 + Int(low >> 24)]
                    ^ t[3 * 256 + Int(high & 0xFF)] ^ t[2 * 256 + Int((high >> 8) & 0xFF)]
                    ^ t[1 * 256 + Int((high >> 16) & 0xFF)] ^ t[Int(high >> 24)]
                offset += 8
            }
            while offset < count {
                crc = t[Int((crc ^ UInt32(buffer[offset])) & 0xFF)] ^ (crc >> 8)
                offset += 1
            }
        }
        return crc
    }

    public static func finish(_ crc: UInt32) -> UInt32 { crc ^ 0xFFFF_FFFF }
}
