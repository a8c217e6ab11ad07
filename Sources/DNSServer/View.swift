import DNSWire
import DNSZone

/// Everything the DNS server answers from: an immutable set of zones, swapped as a whole
/// when anything changes (DESIGN.md: the View is rebuilt, not patched). A new View usually
/// shares most of its zones with the last (the registry's changes, the zone files' not).
public final class View: Sendable {
    public let zones: [Zone]
    private let origins: NameTable
    private let originLabelsMax: Int

    public init(zones: [Zone]) {
        let unique = Dictionary(zones.map { ($0.origin.lowercased(), $0) }, uniquingKeysWith: { _, last in last })
        let sorted = unique.sorted { $0.key < $1.key }
        self.zones = sorted.map(\.value)
        self.origins = NameTable(keys: sorted.map(\.key.wire))
        self.originLabelsMax = zones.map { $0.origin.labelCount }.max() ?? 0
    }

    public static let empty = View(zones: [])

    /// The index in `zones` of the most specific zone containing `name` (lowercased wire
    /// form), or -1.
    @inline(__always)
    public func zoneIndex(containing name: UnsafeRawBufferPointer) -> Int {
        guard !zones.isEmpty else { return -1 }
        // Skip labels that no origin is deep enough to match.
        var labels = 0
        var offset = 0
        while name[offset] != 0 {
            labels += 1
            offset += 1 + Int(name[offset])
        }
        offset = 0
        while labels > originLabelsMax {
            offset += 1 + Int(name[offset])
            labels -= 1
        }
        while true {
            let index = origins.find(UnsafeRawBufferPointer(rebasing: name[offset...]))
            if index >= 0 { return Int(index) }
            if name[offset] == 0 { return -1 }
            offset += 1 + Int(name[offset])
        }
    }

    /// The zones, as bits of `zoneBit(_:)`, that are the same objects at the same places in
    /// `newer`; 0 unless both hold zones of the same origins (then every name still maps to
    /// the zone at the same index).
    public func unchangedZones(in newer: View) -> UInt64 {
        guard zones.count == newer.zones.count else { return 0 }
        var kept: UInt64 = 0
        var beyondKept = true  // the shared bit 63 stands for every zone from index 63 on
        for index in zones.indices {
            guard zones[index].origin == newer.zones[index].origin else { return 0 }
            if zones[index] === newer.zones[index] {
                if index < 63 { kept |= Self.zoneBit(index) }
            } else if index >= 63 {
                beyondKept = false
            }
        }
        return beyondKept ? kept | Self.zoneBit(63) : kept
    }

    /// A zone's bit in a set of zones: its index, with every index from 63 on sharing bit 63.
    @inline(__always)
    public static func zoneBit(_ index: Int) -> UInt64 { 1 << UInt64(min(index, 63)) }

    public func zone(named origin: DomainName) -> Zone? {
        let index = origin.lowercased().wire.withUnsafeBytes { origins.find($0) }
        return index >= 0 ? zones[Int(index)] : nil
    }
}
