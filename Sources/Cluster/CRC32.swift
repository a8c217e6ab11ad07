/// CRC-32 (IEEE 802.3, as zlib's crc32): snapshots, peer frames and stored log entries carry
/// one, so damage on the wire or on disk is detected instead of applied.
public enum CRC32 {
    static let table: [UInt32] = (0..<256).map { n in
        var c = UInt32(n)
        for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }

    public static func checksum(_ bytes: ArraySlice<UInt8>) -> UInt32 {
        finish(update(start, bytes))
    }

    /// Incremental form: `finish(update(update(start, a), b))` is the checksum of `a + b`.
    public static let start: UInt32 = 0xFFFF_FFFF

    public static func update(_ crc: UInt32, _ bytes: ArraySlice<UInt8>) -> UInt32 {
        var crc = crc
        table.withUnsafeBufferPointer { table in
            bytes.withUnsafeBufferPointer { buffer in
                for byte in buffer { crc = table[Int((crc ^ UInt32(byte)) & 0xFF)] ^ (crc >> 8) }
            }
        }
        return crc
    }

    public static func finish(_ crc: UInt32) -> UInt32 { crc ^ 0xFFFF_FFFF }
}
