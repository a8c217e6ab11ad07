import DNSWire

/// A client's IP address as 128 bits, IPv4 as an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`,
/// RFC 4291 §2.5.5.2), so prefixes of both families are masked, compared and hashed alike.
/// A plain value: building one from a socket address does not allocate.
public struct ClientAddress: Hashable, Sendable, CustomStringConvertible {
    /// The first and last 64 bits, in network order read as big-endian integers.
    public var high: UInt64
    public var low: UInt64

    /// The IPv4-mapped prefix `::ffff:0:0/96` in `low`'s upper half.
    static let ipv4MappedMarker: UInt64 = 0x0000_FFFF_0000_0000

    public init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    /// An IPv4 address given as a host-order integer (`0x7F000001` is 127.0.0.1).
    public init(ipv4 value: UInt32) {
        self.init(high: 0, low: Self.ipv4MappedMarker | UInt64(value))
    }

    /// An IPv6 address from its 16 bytes in network order.
    public init(ipv6 bytes: UnsafeRawBufferPointer) {
        precondition(bytes.count == 16, "an IPv6 address is 16 bytes")
        var high: UInt64 = 0, low: UInt64 = 0
        for i in 0..<8 { high = high << 8 | UInt64(bytes[i]) }
        for i in 8..<16 { low = low << 8 | UInt64(bytes[i]) }
        self.init(high: high, low: low)
    }

    /// Parses "192.0.2.1" or an IPv6 literal.
    public init?(_ text: String) {
        if let v4 = IPv4Address(text) {
            let b = v4.bytes
            self.init(ipv4: UInt32(b.0) << 24 | UInt32(b.1) << 16 | UInt32(b.2) << 8 | UInt32(b.3))
        } else if let v6 = IPv6Address(text) {
            var address = ClientAddress(high: 0, low: 0)
            v6.bytes.withUnsafeBytes { address = ClientAddress(ipv6: $0) }
            self = address
        } else {
            return nil
        }
    }

    public var isIPv4: Bool { high == 0 && low & 0xFFFF_FFFF_0000_0000 == Self.ipv4MappedMarker }

    /// The first `length` bits kept, the rest zero (`length` counts from bit 0 of the 128).
    @inline(__always)
    public func masked(bits length: Int) -> ClientAddress {
        precondition((0...128).contains(length), "a prefix length is 0...128")
        if length >= 128 { return self }
        if length >= 64 {
            let keep = length - 64
            return ClientAddress(high: high, low: keep == 0 ? 0 : low & ~(UInt64.max >> UInt64(keep)))
        }
        return ClientAddress(high: length == 0 ? 0 : high & ~(UInt64.max >> UInt64(length)), low: 0)
    }

    /// The client's network: its first `ipv4` bits (IPv4) or `ipv6` bits (IPv6).
    @inline(__always)
    public func prefix(ipv4: Int, ipv6: Int) -> ClientAddress {
        isIPv4 ? masked(bits: 96 + ipv4) : masked(bits: ipv6)
    }

    public var description: String {
        if isIPv4 {
            let v = UInt32(truncatingIfNeeded: low)
            return "\(v >> 24).\(v >> 16 & 0xFF).\(v >> 8 & 0xFF).\(v & 0xFF)"
        }
        var bytes: [UInt8] = []
        for shift in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: high >> UInt64(shift))) }
        for shift in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: low >> UInt64(shift))) }
        return IPv6Address(bytes: bytes)!.description
    }
}

/// An address prefix in CIDR notation ("10.0.0.0/8", "2001:db8::/32"), e.g. an exempt network.
public struct ClientNetwork: Hashable, Sendable, CustomStringConvertible {
    /// The network's address, masked to `bits`.
    public let address: ClientAddress
    /// The prefix length over the 128-bit form (an IPv4 /24 is 120).
    public let bits: Int

    /// Parses "ADDRESS/LENGTH" or a bare address (a single host). Nil if malformed, or if the
    /// address has bits set beyond the prefix ("10.0.0.1/8"), which is almost always a typo.
    public init?(_ text: String) {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard let address = ClientAddress(String(parts[0])) else { return nil }
        let familyBits = address.isIPv4 ? 32 : 128
        var length = familyBits
        if parts.count == 2 {
            guard let value = Int(parts[1]), (0...familyBits).contains(value) else { return nil }
            length = value
        }
        let bits = address.isIPv4 ? 96 + length : length
        guard address.masked(bits: bits) == address else { return nil }
        self.address = address
        self.bits = bits
    }

    @inline(__always)
    public func contains(_ client: ClientAddress) -> Bool {
        client.masked(bits: bits) == address
    }

    public var description: String {
        "\(address)/\(address.isIPv4 ? bits - 96 : bits)"
    }
}
