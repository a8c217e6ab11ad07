import DNSWire
import DNSZone

/// Everything the DNS server answers from: an immutable set of zones, swapped as a whole
/// when anything changes (DESIGN.md: the View is rebuilt, not patched). A new View usually
/// shares most of its zones with the last (the registry's changes, the zone files' not).
public final class View: Sendable {
    public let zones: [Zone]
    /// What `CH TXT id.server` and `version.bind` answer (nil: REFUSED, as any other CH query).
    public let identity: ServerIdentity
    private let origins: NameTable
    private let originLabelsMax: Int

    public init(zones: [Zone], identity: ServerIdentity = ServerIdentity()) {
        self.identity = identity
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

/// The server's answers to the CHAOS-class names operators ask to see which server answered
/// and what it runs (NSD, Knot, BIND): `id.server` and `hostname.bind` (RFC 4892), and
/// `version.bind` and `version.server`. Kept as ready TXT RDATA.
public struct ServerIdentity: Sendable, Equatable {
    /// TXT RDATA of the identity, or nil to refuse `id.server` and `hostname.bind`.
    public let identityRecord: [UInt8]?
    /// TXT RDATA of the version, or nil to refuse `version.bind` and `version.server`.
    public let versionRecord: [UInt8]?

    /// Empty or nil strings hide what they would tell.
    public init(identity: String? = nil, version: String? = nil) {
        identityRecord = identity.flatMap(Self.txt)
        versionRecord = version.flatMap(Self.txt)
    }

    /// One TXT character-string (at most 255 bytes; longer text is cut).
    static func txt(_ text: String) -> [UInt8]? {
        let bytes = Array(text.utf8.prefix(255))
        return bytes.isEmpty ? nil : [UInt8(bytes.count)] + bytes
    }

    /// The lowercased wire names asked for, and which record answers each.
    static let identityNames: [[UInt8]] = [Self.wire(["id", "server"]), Self.wire(["hostname", "bind"])]
    static let versionNames: [[UInt8]] = [Self.wire(["version", "bind"]), Self.wire(["version", "server"])]

    static func wire(_ labels: [String]) -> [UInt8] {
        labels.flatMap { [UInt8($0.utf8.count)] + Array($0.utf8) } + [0]
    }

    /// The TXT RDATA answering `name` (lowercased wire form), if any.
    func record(for name: UnsafeRawBufferPointer) -> [UInt8]? {
        if Self.identityNames.contains(where: { $0.elementsEqual(name) }) { return identityRecord }
        if Self.versionNames.contains(where: { $0.elementsEqual(name) }) { return versionRecord }
        return nil
    }
}
