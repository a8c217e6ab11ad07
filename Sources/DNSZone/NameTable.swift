/// An open-addressing hash table from lowercased wire-form names to node indices.
///
/// Lookups take raw bytes (a suffix of the query name in a scratch buffer), so the answer
/// path finds nodes without building a `DomainName` or allocating. The keys live end to end in
/// one buffer (no array per name: a zone of a million names would pay a heap block each).
package struct NameTable: Sendable {
    /// Slots per key at least this factor; keeps probe sequences short.
    static let slotsPerKeyMin = 2

    private var slots: [Int32]
    private var mask: Int
    /// Key i is `bytes[ends[i - 1] ..< ends[i]]` (from 0 for the first).
    private var bytes: [UInt8]
    private var ends: [Int32]

    /// - Parameter keys: lowercased wire names, distinct; index i maps to value i.
    package init(keys: [[UInt8]]) {
        self.init(capacity: keys.count)
        for key in keys {
            let (_, inserted) = insert(key)
            precondition(inserted, "NameTable: duplicate key")
        }
    }

    /// An empty table with room for `capacity` keys before it grows.
    package init(capacity: Int) {
        var slotCount = 16
        while slotCount < capacity * Self.slotsPerKeyMin { slotCount <<= 1 }
        slots = [Int32](repeating: -1, count: slotCount)
        mask = slotCount - 1
        bytes = []
        ends = []
        ends.reserveCapacity(capacity)
    }

    package var count: Int { ends.count }

    private func range(of index: Int) -> Range<Int> {
        (index == 0 ? 0 : Int(ends[index - 1]))..<Int(ends[index])
    }

    /// The key with index `index`.
    package func key(at index: Int) -> [UInt8] { Array(bytes[range(of: index)]) }

    /// Adds `key` with the next index (`count`), unless it is already there.
    /// - Returns: the key's index, and whether it was added.
    package mutating func insert(_ key: [UInt8]) -> (index: Int32, inserted: Bool) {
        key.withUnsafeBytes { insert($0) }
    }

    package mutating func insert(_ key: UnsafeRawBufferPointer) -> (index: Int32, inserted: Bool) {
        let found = find(key)
        if found >= 0 { return (found, false) }
        if (count + 1) * Self.slotsPerKeyMin > slots.count { grow() }
        let index = Int32(count)
        place(index, hash: Self.hash(key))
        bytes.append(contentsOf: key)
        ends.append(Int32(bytes.count))
        return (index, true)
    }

    /// The key with index `index`, in place (valid inside `body` only).
    package func withKey<T>(at index: Int, _ body: (UnsafeRawBufferPointer) throws -> T) rethrows -> T {
        try bytes.withUnsafeBytes { try body(UnsafeRawBufferPointer(rebasing: $0[range(of: index)])) }
    }

    private mutating func place(_ index: Int32, hash: Int) {
        var slot = hash & mask
        while slots[slot] >= 0 { slot = (slot + 1) & mask }
        slots[slot] = index
    }

    private mutating func grow() {
        slots = [Int32](repeating: -1, count: slots.count * 2)
        mask = slots.count - 1
        for index in 0..<count {
            let hash = bytes.withUnsafeBytes { Self.hash(UnsafeRawBufferPointer(rebasing: $0[range(of: index)])) }
            place(Int32(index), hash: hash)
        }
    }

    /// FNV-1a over the bytes.
    @inline(__always)
    static func hash(_ bytes: UnsafeRawBufferPointer) -> Int {
        var h: UInt32 = 2_166_136_261
        for byte in bytes {
            h = (h ^ UInt32(byte)) &* 16_777_619
        }
        return Int(h)
    }

    /// The index of `name` (lowercased wire form), or -1.
    @inline(__always)
    package func find(_ name: UnsafeRawBufferPointer) -> Int32 {
        var slot = Self.hash(name) & mask
        return slots.withUnsafeBufferPointer { slots in
            ends.withUnsafeBufferPointer { ends in
                bytes.withUnsafeBytes { bytes in
                    while true {
                        let index = Int(slots[slot])
                        if index < 0 { return -1 }
                        let start = index == 0 ? 0 : Int(ends[index - 1])
                        let count = Int(ends[index]) - start
                        if count == name.count && memcmpEqual(bytes.baseAddress! + start, name.baseAddress!, count) {
                            return Int32(index)
                        }
                        slot = (slot + 1) & mask
                    }
                }
            }
        }
    }

    package func find(_ name: [UInt8]) -> Int32 {
        name.withUnsafeBytes { find($0) }
    }
}

@inline(__always)
private func memcmpEqual(_ a: UnsafeRawPointer, _ b: UnsafeRawPointer, _ count: Int) -> Bool {
    var i = 0
    while i + 8 <= count {
        if a.loadUnaligned(fromByteOffset: i, as: UInt64.self) != b.loadUnaligned(fromByteOffset: i, as: UInt64.self) {
            return false
        }
        i += 8
    }
    while i < count {
        if a.load(fromByteOffset: i, as: UInt8.self) != b.load(fromByteOffset: i, as: UInt8.self) { return false }
        i += 1
    }
    return true
}
