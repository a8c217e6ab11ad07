/// An open-addressing hash table from lowercased wire-form names to node indices.
///
/// Lookups take raw bytes (a suffix of the query name in a scratch buffer), so the answer
/// path finds nodes without building a `DomainName` or allocating.
package struct NameTable: Sendable {
    /// Slots per key at least this factor; keeps probe sequences short.
    static let slotsPerKeyMin = 2

    private var slots: [Int32]
    private var mask: Int
    private var keys: [[UInt8]]

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
        keys = []
        keys.reserveCapacity(capacity)
    }

    package var count: Int { keys.count }

    /// Adds `key` with the next index (`count`), unless it is already there.
    /// - Returns: the key's index, and whether it was added.
    package mutating func insert(_ key: [UInt8]) -> (index: Int32, inserted: Bool) {
        let found = key.withUnsafeBytes { find($0) }
        if found >= 0 { return (found, false) }
        if (keys.count + 1) * Self.slotsPerKeyMin > slots.count { grow() }
        let index = Int32(keys.count)
        place(index, hash: key.withUnsafeBytes { Self.hash($0) })
        keys.append(key)
        return (index, true)
    }

    private mutating func place(_ index: Int32, hash: Int) {
        var slot = hash & mask
        while slots[slot] >= 0 { slot = (slot + 1) & mask }
        slots[slot] = index
    }

    private mutating func grow() {
        slots = [Int32](repeating: -1, count: slots.count * 2)
        mask = slots.count - 1
        for (index, key) in keys.enumerated() {
            place(Int32(index), hash: key.withUnsafeBytes { Self.hash($0) })
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
            keys.withUnsafeBufferPointer { keys in
                while true {
                    let index = slots[slot]
                    if index < 0 { return -1 }
                    let equal = keys[Int(index)].withUnsafeBytes { key in
                        key.count == name.count && memcmpEqual(key.baseAddress!, name.baseAddress!, name.count)
                    }
                    if equal { return index }
                    slot = (slot + 1) & mask
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
