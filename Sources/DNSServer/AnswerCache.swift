/// A per-worker cache of complete responses (PowerDNS's packet cache), keyed by the
/// lowercased question and whether the query had EDNS. It is tied to one `View`: any other
/// View empties it, so a reload or registry change is visible on the next query.
///
/// A hit is one hash, one comparison and one copy; the query's ID, RD/CD bits, question
/// (the client's case; pointers into it keep that case for owners) and DO bit are patched in.
/// Only responses that are complete whatever the client's size (no TC, nothing left out of
/// AUTHORITY or ADDITIONAL) and small are stored, so a hit is byte-for-byte what the full
/// pipeline would write.
///
/// Memory: `entriesMax × entryBytesMax` (8 MiB), allocated once; no allocation per query.
final class AnswerCache {
    /// Direct-mapped slots; a power of two. 16384 keeps a service-shaped working set of ~10,000
    /// distinct questions mostly resident.
    static let entriesMax = 16384
    /// Responses longer than this are not cached (they are rare and bigger to copy anyway).
    static let entryBytesMax = 512

    private let storage: UnsafeMutableRawPointer
    /// Length of each slot's response; 0 = empty.
    private let lengths: UnsafeMutablePointer<UInt16>
    /// Bit 0: the query had EDNS. Bit 1: the response carries OPT last (DO patched there).
    private let keys: UnsafeMutablePointer<UInt8>
    /// The View the entries were computed from; held strongly so its identity cannot be reused.
    private var view: View?

    init() {
        storage = .allocate(byteCount: Self.entriesMax * Self.entryBytesMax, alignment: 64)
        lengths = .allocate(capacity: Self.entriesMax)
        lengths.initialize(repeating: 0, count: Self.entriesMax)
        keys = .allocate(capacity: Self.entriesMax)
        keys.initialize(repeating: 0, count: Self.entriesMax)
    }

    deinit {
        storage.deallocate()
        lengths.deallocate()
        keys.deallocate()
    }

    /// Empties the cache if `view` is not the one its entries came from.
    @inline(__always)
    func use(_ view: View) {
        if self.view !== view {
            lengths.update(repeating: 0, count: Self.entriesMax)
            self.view = view
        }
    }

    @inline(__always)
    private func slot(name: UnsafeRawBufferPointer, typeAndClass: UInt32) -> Int {
        var h: UInt32 = 2_166_136_261 ^ typeAndClass
        for byte in name { h = (h ^ UInt32(byte)) &* 16_777_619 }
        return Int(h) & (Self.entriesMax - 1)
    }

    /// Writes the cached response for this question into `output`, patched for `query`, and
    /// returns its length; 0 on a miss or when it would not fit in `limit`.
    @inline(__always)
    func answer(name: UnsafeRawBufferPointer, query: UnsafeRawBufferPointer, questionEnd: Int, hasEDNS: Bool,
                dnssecOK: Bool, limit: Int, into output: UnsafeMutableRawBufferPointer) -> Int {
        let typeAndClass = query.loadUnaligned(fromByteOffset: questionEnd - 4, as: UInt32.self)
        let index = slot(name: name, typeAndClass: typeAndClass)
        let length = Int(lengths[index])
        guard length > 0, length <= limit, (keys[index] & 1 != 0) == hasEDNS else { return 0 }
        let entry = storage + index * Self.entryBytesMax
        // Same question: the name compared case-insensitively, then type and class exactly.
        let questionBytes = questionEnd - 12
        guard length >= 12 + questionBytes else { return 0 }
        for i in 0..<name.count where asciiLowerByte(entry.load(fromByteOffset: 12 + i, as: UInt8.self)) != name[i] {
            return 0
        }
        guard entry.loadUnaligned(fromByteOffset: questionEnd - 4, as: UInt32.self) == typeAndClass else { return 0 }

        let out = output.baseAddress!
        out.copyMemory(from: entry, byteCount: length)
        // ID, then the query's RD and CD bits over the cached flags (stored with both clear).
        out.copyMemory(from: query.baseAddress!, byteCount: 2)
        let queryFlags = UInt16(query[2]) << 8 | UInt16(query[3])
        let flags = (UInt16(out.load(fromByteOffset: 2, as: UInt8.self)) << 8 | UInt16(out.load(fromByteOffset: 3, as: UInt8.self)))
            | (queryFlags & Self.copiedFlagBits)
        out.storeBytes(of: flags.bigEndian, toByteOffset: 2, as: UInt16.self)
        (out + 12).copyMemory(from: query.baseAddress! + 12, byteCount: questionBytes)
        if keys[index] & 2 != 0 {
            // OPT is last, without options: its DO byte is 4 bytes from the end (RFC 6891 §6.1.3).
            out.storeBytes(of: dnssecOK ? 0x80 : 0, toByteOffset: length - 4, as: UInt8.self)
        }
        return length
    }

    /// RD (bit 8) and CD (bit 4) come from each query.
    static let copiedFlagBits: UInt16 = 0x0100 | 0x0010

    /// Stores a complete response written for `name`.
    @inline(__always)
    func store(name: UnsafeRawBufferPointer, response: UnsafeRawBufferPointer, questionEnd: Int, hasEDNS: Bool) {
        guard response.count <= Self.entryBytesMax, response.count >= questionEnd else { return }
        let typeAndClass = response.loadUnaligned(fromByteOffset: questionEnd - 4, as: UInt32.self)
        let index = slot(name: name, typeAndClass: typeAndClass)
        let entry = storage + index * Self.entryBytesMax
        entry.copyMemory(from: response.baseAddress!, byteCount: response.count)
        let flags = (UInt16(response[2]) << 8 | UInt16(response[3])) & ~Self.copiedFlagBits
        entry.storeBytes(of: flags.bigEndian, toByteOffset: 2, as: UInt16.self)
        lengths[index] = UInt16(response.count)
        keys[index] = (hasEDNS ? 1 : 0) | (hasEDNS ? 2 : 0)
    }
}

@inline(__always)
private func asciiLowerByte(_ byte: UInt8) -> UInt8 { (byte >= 65 && byte <= 90) ? byte | 0x20 : byte }
