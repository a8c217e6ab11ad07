/// An open-addressing hash table from lowercased wire-form names to node indices.
///
/// Lookups take raw bytes (a suffix of the query name in a scratch buffer), so the answer
/// path finds nodes without building a `DomainName` or allocating.
package struct NameTable: Sendable {
    /// Slots per key at least this factor; keeps probe sequences short.
    static let slotsPerKeyMin = 2

    private let slots: [Int32]
    private let mask: Int
    private let keys: [[UInt8]]

    /// - Parameter keys: lowercased wire names, distinct; index i maps to value i.
    package init(keys: [[UInt8]]) {
        var capacity = 16
        while capacity < keys.count * Self.slotsPerKeyMin { capacity <<= 1 }
        var slots = [Int32](repeating: -1, count: capacity)
        let mask = capacity - 1
        for (index, key) in keys.enumerated() {
            var slot = key.withUnsafeBytes { Self.hash($0) } & mask
            while slots[slot] >= 0 {
                precondition(keys[Int(slots[slot])] != key, "NameTable: duplicate key")
                slot = (slot + 1) & mask
            }
            slots[slot] = Int32(index)
        }
        self.slots = slots
        self.mask = mask
        self.keys = keys
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
