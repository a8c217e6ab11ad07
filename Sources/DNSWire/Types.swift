/// A resource record type (RFC 1035 §3.2.2 and later registrations). Unknown types are
/// carried as `TYPEnnn` (RFC 3597).
public struct RRType: RawRepresentable, Hashable, Sendable, Comparable {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public init(_ rawValue: UInt16) { self.rawValue = rawValue }

    public static let a = RRType(1)
    public static let ns = RRType(2)
    public static let cname = RRType(5)
    public static let soa = RRType(6)
    public static let ptr = RRType(12)
    public static let hinfo = RRType(13)
    public static let mx = RRType(15)
    public static let txt = RRType(16)
    public static let aaaa = RRType(28)
    public static let srv = RRType(33)
    public static let naptr = RRType(35)
    public static let dname = RRType(39)
    public static let opt = RRType(41)
    public static let ds = RRType(43)
    public static let sshfp = RRType(44)
    public static let rrsig = RRType(46)
    public static let nsec = RRType(47)
    public static let dnskey = RRType(48)
    public static let tlsa = RRType(52)
    public static let tkey = RRType(249)
    public static let tsig = RRType(250)
    public static let ixfr = RRType(251)
    public static let axfr = RRType(252)
    public static let mailb = RRType(253)
    public static let maila = RRType(254)
    public static let any = RRType(255)
    public static let caa = RRType(257)

    static let mnemonics: [(RRType, String)] = [
        (.a, "A"), (.ns, "NS"), (.cname, "CNAME"), (.soa, "SOA"), (.ptr, "PTR"), (.hinfo, "HINFO"),
        (.mx, "MX"), (.txt, "TXT"), (.aaaa, "AAAA"), (.srv, "SRV"), (.naptr, "NAPTR"), (.dname, "DNAME"),
        (.opt, "OPT"), (.ds, "DS"), (.sshfp, "SSHFP"), (.rrsig, "RRSIG"), (.nsec, "NSEC"),
        (.dnskey, "DNSKEY"), (.tlsa, "TLSA"), (.tkey, "TKEY"), (.tsig, "TSIG"), (.ixfr, "IXFR"),
        (.axfr, "AXFR"), (.mailb, "MAILB"), (.maila, "MAILA"), (.any, "ANY"), (.caa, "CAA"),
    ]
    private static let byName: [String: RRType] = Dictionary(uniqueKeysWithValues: mnemonics.map { ($0.1, $0.0) })
    private static let byValue: [UInt16: String] = Dictionary(uniqueKeysWithValues: mnemonics.map { ($0.0.rawValue, $0.1) })

    /// The mnemonics of up to 8 bytes, uppercase, packed into an integer: a master file's
    /// type field is looked up without building a `String`.
    private static let byPackedName: [UInt64: RRType] = Dictionary(uniqueKeysWithValues: mnemonics.compactMap { entry in
        Array(entry.1.utf8).withUnsafeBytes { packed($0) }.map { ($0, entry.0) }
    })

    private static func packed(_ bytes: UnsafeRawBufferPointer) -> UInt64? {
        guard bytes.count <= 8 else { return nil }
        var key: UInt64 = 0
        for byte in bytes {
            guard byte > 0x20, byte < 0x7F else { return nil }
            key = key << 8 | UInt64(byte >= 97 && byte <= 122 ? byte - 32 : byte)
        }
        return key
    }

    /// Parses a mnemonic (case-insensitive) or `TYPEnnn` from ASCII bytes.
    public init?(mnemonic bytes: UnsafeRawBufferPointer) {
        if let key = Self.packed(bytes), let known = Self.byPackedName[key] {
            self = known
            return
        }
        self.init(mnemonic: String(decoding: bytes, as: UTF8.self))
    }

    /// Parses a mnemonic (case-insensitive) or `TYPEnnn`.
    public init?(mnemonic: String) {
        let upper = mnemonic.uppercased()
        if let known = Self.byName[upper] {
            self = known
        } else if upper.hasPrefix("TYPE"), let value = UInt16(upper.dropFirst(4)) {
            self.rawValue = value
        } else {
            return nil
        }
    }

    /// RFC 6895 §3.1: meta-types and QTYPEs (OPT, 128–255) never appear as data.
    public var isMetaType: Bool { self == .opt || (rawValue >= 128 && rawValue <= 255) }

    public static func < (lhs: RRType, rhs: RRType) -> Bool { lhs.rawValue < rhs.rawValue }
}

extension RRType: CustomStringConvertible {
    public var description: String { Self.byValue[rawValue] ?? "TYPE\(rawValue)" }
}

/// A record class. Disco serves IN only.
public struct RRClass: RawRepresentable, Hashable, Sendable {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let `in` = RRClass(rawValue: 1)
    public static let chaos = RRClass(rawValue: 3)
    public static let hesiod = RRClass(rawValue: 4)
    public static let none = RRClass(rawValue: 254)
    public static let any = RRClass(rawValue: 255)

    public init?(mnemonic: String) {
        switch mnemonic.uppercased() {
        case "IN": self = .in
        case "CH": self = .chaos
        case "HS": self = .hesiod
        case "NONE": self = .none
        case "ANY": self = .any
        case let other where other.hasPrefix("CLASS"):
            guard let value = UInt16(other.dropFirst(5)) else { return nil }
            self.rawValue = value
        default: return nil
        }
    }
}

extension RRClass: CustomStringConvertible {
    public var description: String {
        switch self {
        case .in: "IN"
        case .chaos: "CH"
        case .hesiod: "HS"
        case .none: "NONE"
        case .any: "ANY"
        default: "CLASS\(rawValue)"
        }
    }
}

/// Header opcode (RFC 1035 §4.1.1, RFC 1996, RFC 2136).
public struct Opcode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue & 0x0F }
    public static let query = Opcode(rawValue: 0)
    public static let iquery = Opcode(rawValue: 1)
    public static let status = Opcode(rawValue: 2)
    public static let notify = Opcode(rawValue: 4)
    public static let update = Opcode(rawValue: 5)

    public var description: String {
        switch rawValue {
        case 0: "QUERY"
        case 1: "IQUERY"
        case 2: "STATUS"
        case 4: "NOTIFY"
        case 5: "UPDATE"
        case 6: "DSO"
        default: "OPCODE\(rawValue)"
        }
    }
}

/// Response code, including the extended codes carried in EDNS(0) (RFC 6891 §6.1.3).
public struct RCode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    public static let noError = RCode(rawValue: 0)
    public static let formErr = RCode(rawValue: 1)
    public static let servFail = RCode(rawValue: 2)
    public static let nxDomain = RCode(rawValue: 3)
    public static let notImp = RCode(rawValue: 4)
    public static let refused = RCode(rawValue: 5)
    public static let yxDomain = RCode(rawValue: 6)
    public static let yxRRSet = RCode(rawValue: 7)
    public static let nxRRSet = RCode(rawValue: 8)
    public static let notAuth = RCode(rawValue: 9)
    public static let notZone = RCode(rawValue: 10)
    public static let dsoTypeNI = RCode(rawValue: 11)
    public static let badVers = RCode(rawValue: 16)
    public static let badKey = RCode(rawValue: 17)
    public static let badTime = RCode(rawValue: 18)
    public static let badMode = RCode(rawValue: 19)
    public static let badName = RCode(rawValue: 20)
    public static let badAlg = RCode(rawValue: 21)
    public static let badTrunc = RCode(rawValue: 22)
    public static let badCookie = RCode(rawValue: 23)

    /// The low 4 bits, carried in the header.
    public var headerBits: UInt8 { UInt8(rawValue & 0x0F) }
    /// The high 8 bits, carried in the OPT record's TTL field.
    public var extendedBits: UInt8 { UInt8((rawValue >> 4) & 0xFF) }

    public var description: String {
        switch rawValue {
        case 0: "NOERROR"
        case 1: "FORMERR"
        case 2: "SERVFAIL"
        case 3: "NXDOMAIN"
        case 4: "NOTIMP"
        case 5: "REFUSED"
        case 6: "YXDOMAIN"
        case 7: "YXRRSET"
        case 8: "NXRRSET"
        case 9: "NOTAUTH"
        case 10: "NOTZONE"
        case 11: "DSOTYPENI"
        case 16: "BADVERS"
        case 17: "BADKEY"
        case 18: "BADTIME"
        case 19: "BADMODE"
        case 20: "BADNAME"
        case 21: "BADALG"
        case 22: "BADTRUNC"
        case 23: "BADCOOKIE"
        default: "RCODE\(rawValue)"
        }
    }
}

/// The 16-bit flags word of the header (RFC 1035 §4.1.1, RFC 4035 §3.2 for AD/CD).
public struct HeaderFlags: Hashable, Sendable {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    public var qr: Bool { get { bit(15) } set { set(15, newValue) } }
    public var opcode: Opcode {
        get { Opcode(rawValue: UInt8((rawValue >> 11) & 0x0F)) }
        set { rawValue = (rawValue & ~0x7800) | (UInt16(newValue.rawValue) << 11) }
    }
    public var aa: Bool { get { bit(10) } set { set(10, newValue) } }
    public var tc: Bool { get { bit(9) } set { set(9, newValue) } }
    public var rd: Bool { get { bit(8) } set { set(8, newValue) } }
    public var ra: Bool { get { bit(7) } set { set(7, newValue) } }
    public var z: Bool { get { bit(6) } set { set(6, newValue) } }
    public var ad: Bool { get { bit(5) } set { set(5, newValue) } }
    public var cd: Bool { get { bit(4) } set { set(4, newValue) } }
    /// The 4-bit header rcode.
    public var rcodeBits: UInt8 {
        get { UInt8(rawValue & 0x0F) }
        set { rawValue = (rawValue & ~0x000F) | UInt16(newValue & 0x0F) }
    }

    @inline(__always) private func bit(_ n: UInt16) -> Bool { rawValue & (1 << n) != 0 }
    @inline(__always) private mutating func set(_ n: UInt16, _ on: Bool) {
        if on { rawValue |= (1 << n) } else { rawValue &= ~(1 << n) }
    }

    /// dig-style flag list, e.g. "qr aa rd".
    public var flagNames: String {
        var names: [String] = []
        if qr { names.append("qr") }
        if aa { names.append("aa") }
        if tc { names.append("tc") }
        if rd { names.append("rd") }
        if ra { names.append("ra") }
        if ad { names.append("ad") }
        if cd { names.append("cd") }
        return names.joined(separator: " ")
    }
}
