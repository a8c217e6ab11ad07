import DNSWire
import DNSZone

/// Everything the DNS server answers from: an immutable set of zones, swapped as a whole
/// when anything changes (DESIGN.md: the View is rebuilt, not patched).
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

    /// The most specific zone containing `name` (lowercased wire form), or nil.
    @inline(__always)
    public func zone(containing name: UnsafeRawBufferPointer) -> Zone? {
        guard !zones.isEmpty else { return nil }
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
            if index >= 0 { return zones[Int(index)] }
            if name[offset] == 0 { return nil }
            offset += 1 + Int(name[offset])
        }
    }

    public func zone(named origin: DomainName) -> Zone? {
        let index = origin.lowercased().wire.withUnsafeBytes { origins.find($0) }
        return index >= 0 ? zones[Int(index)] : nil
    }
}
