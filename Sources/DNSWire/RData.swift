/// SOA RDATA (RFC 1035 §3.3.13).
public struct SOAData: Hashable, Sendable {
    public var mname: DomainName
    public var rname: DomainName
    public var serial: UInt32
    public var refresh: UInt32
    public var retry: UInt32
    public var expire: UInt32
    /// RFC 2308 §4: the negative-caching TTL.
    public var minimum: UInt32

    public init(mname: DomainName, rname: DomainName, serial: UInt32, refresh: UInt32, retry: UInt32,
                expire: UInt32, minimum: UInt32) {
        self.mname = mname
        self.rname = rname
        self.serial = serial
        self.refresh = refresh
        self.retry = retry
        self.expire = expire
        self.minimum = minimum
    }
}

/// The RDATA of a record, typed for the types Disco knows and opaque (RFC 3597) otherwise.
public enum RData: Hashable, Sendable {
    case a(IPv4Address)
    case aaaa(IPv6Address)
    case ns(DomainName)
    case cname(DomainName)
    case ptr(DomainName)
    case dname(DomainName)
    case soa(SOAData)
    case mx(preference: UInt16, exchange: DomainName)
    /// One or more character-strings, each at most 255 bytes.
    case txt([[UInt8]])
    case hinfo(cpu: [UInt8], os: [UInt8])
    case srv(priority: UInt16, weight: UInt16, port: UInt16, target: DomainName)
    case naptr(order: UInt16, preference: UInt16, flags: [UInt8], services: [UInt8], regexp: [UInt8],
               replacement: DomainName)
    case caa(flags: UInt8, tag: [UInt8], value: [UInt8])
    case sshfp(algorithm: UInt8, fingerprintType: UInt8, fingerprint: [UInt8])
    case tlsa(usage: UInt8, selector: UInt8, matchingType: UInt8, data: [UInt8])
    /// Any other type, as opaque bytes.
    case unknown(RRType, [UInt8])

    /// RFC 1035 §3.3: a <character-string> is at most 255 bytes.
    public static let characterStringBytesMax = 255
    /// RFC 1035 §3.2.1: RDLENGTH is 16 bits.
    public static let rdataBytesMax = 65535

    public var type: RRType {
        switch self {
        case .a: .a
        case .aaaa: .aaaa
        case .ns: .ns
        case .cname: .cname
        case .ptr: .ptr
        case .dname: .dname
        case .soa: .soa
        case .mx: .mx
        case .txt: .txt
        case .hinfo: .hinfo
        case .srv: .srv
        case .naptr: .naptr
        case .caa: .caa
        case .sshfp: .sshfp
        case .tlsa: .tlsa
        case .unknown(let type, _): type
        }
    }

    /// The name that additional-section processing looks up (RFC 1034 §3.6.2, RFC 2782):
    /// NS, MX and SRV targets.
    public var additionalTarget: DomainName? {
        switch self {
        case .ns(let name): name
        case .mx(_, let name): name
        case .srv(_, _, _, let target): target.isRoot ? nil : target
        default: nil
        }
    }

    /// The uncompressed wire form, with the offsets of the names that may be compressed on
    /// output (RFC 3597 §4: only the well-known types of RFC 1035 — NS, CNAME, PTR, MX, SOA).
    public func encoded() -> (bytes: [UInt8], compressibleNames: [Int]) {
        var out: [UInt8] = []
        let (first, second) = encode(appendingTo: &out)
        return (out, [first, second].filter { $0 >= 0 })
    }

    /// Appends the uncompressed wire form to `out` (a buffer that packs many records: no
    /// allocation of its own); returns the offsets, from where it starts, of the first and second
    /// names that may be compressed, -1 for none.
    public func encode(appendingTo out: inout [UInt8]) -> (firstName: Int, secondName: Int) {
        let start = out.count
        var first = -1, second = -1
        func u16(_ v: UInt16) { out.append(UInt8(v >> 8)); out.append(UInt8(v & 0xFF)) }
        func u32(_ v: UInt32) { for shift in stride(from: 24, through: 0, by: -8) { out.append(UInt8((v >> UInt32(shift)) & 0xFF)) } }
        func string(_ s: [UInt8]) { out.append(UInt8(s.count)); out.append(contentsOf: s) }
        func name(_ n: DomainName, compressible: Bool) {
            if compressible {
                if first < 0 { first = out.count - start } else { second = out.count - start }
            }
            out.append(contentsOf: n.wire)
        }
        switch self {
        case .a(let address):
            out.append(address.bytes.0); out.append(address.bytes.1); out.append(address.bytes.2); out.append(address.bytes.3)
        case .aaaa(let address): out.append(contentsOf: address.bytes)
        case .ns(let n), .cname(let n), .ptr(let n): name(n, compressible: true)
        case .dname(let n): name(n, compressible: false)
        case .soa(let soa):
            name(soa.mname, compressible: true)
            name(soa.rname, compressible: true)
            u32(soa.serial); u32(soa.refresh); u32(soa.retry); u32(soa.expire); u32(soa.minimum)
        case .mx(let preference, let exchange):
            u16(preference)
            name(exchange, compressible: true)
        case .txt(let strings): for s in strings { string(s) }
        case .hinfo(let cpu, let os): string(cpu); string(os)
        case .srv(let priority, let weight, let port, let target):
            u16(priority); u16(weight); u16(port)
            name(target, compressible: false)
        case .naptr(let order, let preference, let flags, let services, let regexp, let replacement):
            u16(order); u16(preference)
            string(flags); string(services); string(regexp)
            name(replacement, compressible: false)
        case .caa(let flags, let tag, let value):
            out.append(flags)
            string(tag)
            out.append(contentsOf: value)
        case .sshfp(let algorithm, let type, let fingerprint):
            out.append(algorithm); out.append(type); out.append(contentsOf: fingerprint)
        case .tlsa(let usage, let selector, let matching, let data):
            out.append(usage); out.append(selector); out.append(matching); out.append(contentsOf: data)
        case .unknown(_, let bytes): out.append(contentsOf: bytes)
        }
        return (first, second)
    }

    /// Writes the RDATA (without RDLENGTH), compressing the names RFC 3597 §4 allows.
    public func write(to writer: inout WireWriter, compress: Bool = true) throws(WireOverflow) {
        switch self {
        case .ns(let n), .cname(let n), .ptr(let n):
            try writer.name(n, compress: compress)
        case .mx(let preference, let exchange):
            try writer.u16(preference)
            try writer.name(exchange, compress: compress)
        case .soa(let soa):
            try writer.name(soa.mname, compress: compress)
            try writer.name(soa.rname, compress: compress)
            try writer.u32(soa.serial)
            try writer.u32(soa.refresh)
            try writer.u32(soa.retry)
            try writer.u32(soa.expire)
            try writer.u32(soa.minimum)
        default:
            try writer.bytes(encoded().bytes)
        }
    }

    /// Decodes RDATA of `type` from `reader`, whose `limit` is the end of the RDATA.
    /// Names are decompressed for every type (receivers must accept that, RFC 3597 §4).
    public static func parse(type: RRType, from reader: inout WireReader) throws(WireError) -> RData {
        let start = reader.offset
        func string() throws(WireError) -> [UInt8] {
            let length = Int(try reader.u8())
            return try reader.bytes(length)
        }
        func rest() throws(WireError) -> [UInt8] { try reader.bytes(reader.remaining) }
        let rdata: RData
        switch type {
        case .a:
            guard reader.remaining == 4 else { throw WireError(offset: start, reason: .badRData("A needs 4 bytes")) }
            let b = try reader.bytes(4)
            rdata = .a(IPv4Address(b[0], b[1], b[2], b[3]))
        case .aaaa:
            guard reader.remaining == 16 else { throw WireError(offset: start, reason: .badRData("AAAA needs 16 bytes")) }
            rdata = .aaaa(IPv6Address(bytes: try reader.bytes(16))!)
        case .ns: rdata = .ns(try reader.name())
        case .cname: rdata = .cname(try reader.name())
        case .ptr: rdata = .ptr(try reader.name())
        case .dname: rdata = .dname(try reader.name())
        case .soa:
            rdata = .soa(SOAData(mname: try reader.name(), rname: try reader.name(), serial: try reader.u32(),
                                 refresh: try reader.u32(), retry: try reader.u32(), expire: try reader.u32(),
                                 minimum: try reader.u32()))
        case .mx: rdata = .mx(preference: try reader.u16(), exchange: try reader.name())
        case .txt:
            var strings: [[UInt8]] = []
            repeat { strings.append(try string()) } while reader.remaining > 0
            rdata = .txt(strings)
        case .hinfo: rdata = .hinfo(cpu: try string(), os: try string())
        case .srv:
            rdata = .srv(priority: try reader.u16(), weight: try reader.u16(), port: try reader.u16(),
                         target: try reader.name())
        case .naptr:
            rdata = .naptr(order: try reader.u16(), preference: try reader.u16(), flags: try string(),
                           services: try string(), regexp: try string(), replacement: try reader.name())
        case .caa:
            let flags = try reader.u8()
            let tag = try string()
            guard !tag.isEmpty else { throw WireError(offset: start, reason: .badRData("CAA tag is empty")) }
            rdata = .caa(flags: flags, tag: tag, value: try rest())
        case .sshfp:
            rdata = .sshfp(algorithm: try reader.u8(), fingerprintType: try reader.u8(), fingerprint: try rest())
        case .tlsa:
            rdata = .tlsa(usage: try reader.u8(), selector: try reader.u8(), matchingType: try reader.u8(),
                          data: try rest())
        default:
            rdata = .unknown(type, try rest())
        }
        guard reader.remaining == 0 else { throw WireError(offset: reader.offset, reason: .trailingBytes) }
        return rdata
    }
}

extension RData: CustomStringConvertible {
    /// Presentation format (RFC 1035 §5.1 and each type's RFC), as dig prints it.
    public var description: String {
        switch self {
        case .a(let address): return address.description
        case .aaaa(let address): return address.description
        case .ns(let n), .cname(let n), .ptr(let n), .dname(let n): return n.description
        case .soa(let s):
            return "\(s.mname) \(s.rname) \(s.serial) \(s.refresh) \(s.retry) \(s.expire) \(s.minimum)"
        case .mx(let preference, let exchange): return "\(preference) \(exchange)"
        case .txt(let strings): return strings.map(quoted).joined(separator: " ")
        case .hinfo(let cpu, let os): return "\(quoted(cpu)) \(quoted(os))"
        case .srv(let priority, let weight, let port, let target): return "\(priority) \(weight) \(port) \(target)"
        case .naptr(let order, let preference, let flags, let services, let regexp, let replacement):
            return "\(order) \(preference) \(quoted(flags)) \(quoted(services)) \(quoted(regexp)) \(replacement)"
        case .caa(let flags, let tag, let value):
            return "\(flags) \(String(decoding: tag, as: UTF8.self)) \(quoted(value))"
        case .sshfp(let algorithm, let type, let fingerprint): return "\(algorithm) \(type) \(hex(fingerprint))"
        case .tlsa(let usage, let selector, let matching, let data):
            return "\(usage) \(selector) \(matching) \(hex(data))"
        case .unknown(_, let bytes):
            return bytes.isEmpty ? "\\# 0" : "\\# \(bytes.count) \(hex(bytes))"
        }
    }
}

private let stringSpecials: Set<UInt8> = Set("\"\\".utf8)

/// A character-string in quotes, with `"` and `\` escaped and non-printables as `\DDD`.
package func quoted(_ bytes: [UInt8]) -> String {
    var text = "\""
    for byte in bytes { appendEscaped(byte, to: &text, specials: stringSpecials) }
    return text + "\""
}

package func hex(_ bytes: [UInt8]) -> String {
    let digits = Array("0123456789ABCDEF".utf8)
    var out: [UInt8] = []
    out.reserveCapacity(bytes.count * 2)
    for byte in bytes {
        out.append(digits[Int(byte >> 4)])
        out.append(digits[Int(byte & 0x0F)])
    }
    return String(decoding: out, as: UTF8.self)
}
