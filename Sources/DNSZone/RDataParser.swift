import DNSWire

/// Parses the presentation form of RDATA (the tokens after the type) for one record.
struct RDataParser {
    let origin: DomainName
    let tokens: [Token]
    /// Where the record ends, for "expected more" errors.
    let end: SourcePosition
    /// Shared with the file's other records (nil: every name is parsed afresh).
    let names: NameInterner?
    private var cursor = 0

    init(origin: DomainName, tokens: [Token], end: SourcePosition, names: NameInterner? = nil) {
        self.origin = origin
        self.tokens = tokens
        self.end = end
        self.names = names
    }

    mutating func parse(type: RRType) throws(ZoneError) -> RData {
        if let first = tokens.first, first.text.elementsEqual("\\#".utf8), !first.quoted {
            return try parseGeneric(type: type)
        }
        let rdata: RData
        switch type {
        case .a:
            let token = try next("an IPv4 address")
            guard let address = token.text.withUnsafeBytes({ IPv4Address(ascii: $0) }) else {
                throw ZoneError(token.position, "expected an IPv4 address, found '\(token.string)'")
            }
            rdata = .a(address)
        case .aaaa:
            let token = try next("an IPv6 address")
            guard let address = IPv6Address(token.string) else {
                throw ZoneError(token.position, "expected an IPv6 address, found '\(token.string)'")
            }
            rdata = .aaaa(address)
        case .ns: rdata = .ns(try name("a name server name"))
        case .cname: rdata = .cname(try name("a canonical name"))
        case .ptr: rdata = .ptr(try name("a domain name"))
        case .dname: rdata = .dname(try name("a target name"))
        case .soa:
            let mname = try name("the primary name server (MNAME)")
            let rname = try name("the responsible mailbox (RNAME)")
            let serial = try number("the serial", max: UInt32.max)
            rdata = .soa(SOAData(mname: mname, rname: rname, serial: UInt32(serial), refresh: try period("refresh"),
                                 retry: try period("retry"), expire: try period("expire"), minimum: try period("minimum")))
        case .mx:
            rdata = .mx(preference: UInt16(try number("a preference", max: 65535)), exchange: try name("a mail exchange"))
        case .txt:
            var strings: [[UInt8]] = [try characterString("a character-string")]
            while cursor < tokens.count { strings.append(try characterString("a character-string")) }
            rdata = .txt(strings)
        case .hinfo:
            rdata = .hinfo(cpu: try characterString("the CPU string"), os: try characterString("the OS string"))
        case .srv:
            rdata = .srv(priority: UInt16(try number("a priority", max: 65535)),
                         weight: UInt16(try number("a weight", max: 65535)),
                         port: UInt16(try number("a port", max: 65535)), target: try name("a target name"))
        case .naptr:
            rdata = .naptr(order: UInt16(try number("an order", max: 65535)),
                           preference: UInt16(try number("a preference", max: 65535)),
                           flags: try characterString("the flags"), services: try characterString("the services"),
                           regexp: try characterString("the regexp"), replacement: try name("a replacement name"))
        case .caa:
            let flags = UInt8(try number("the flags", max: 255))
            let tagToken = try next("a property tag")
            let tag = try tagToken.unescaped()
            guard !tag.isEmpty, tag.allSatisfy({ ($0 >= 48 && $0 <= 57) || ($0 | 0x20 >= 97 && $0 | 0x20 <= 122) }) else {
                throw ZoneError(tagToken.position, "expected a CAA tag of letters and digits, found '\(tagToken.string)'")
            }
            rdata = .caa(flags: flags, tag: tag, value: try characterString("the property value", limited: false))
        case .sshfp:
            rdata = .sshfp(algorithm: UInt8(try number("an algorithm", max: 255)),
                           fingerprintType: UInt8(try number("a fingerprint type", max: 255)),
                           fingerprint: try hexRest("the fingerprint"))
        case .tlsa:
            rdata = .tlsa(usage: UInt8(try number("a certificate usage", max: 255)),
                          selector: UInt8(try number("a selector", max: 255)),
                          matchingType: UInt8(try number("a matching type", max: 255)),
                          data: try hexRest("the certificate association data"))
        default:
            let at = tokens.first?.position ?? end
            throw ZoneError(at, "type \(type) needs RFC 3597 generic RDATA (expected '\\# LENGTH HEX')")
        }
        if cursor < tokens.count {
            throw ZoneError(tokens[cursor].position, "unexpected '\(tokens[cursor].string)' after the \(type) RDATA")
        }
        return rdata
    }

    /// RFC 3597 §5: `\# LENGTH HEX...`. For a known type the bytes are decoded into that type.
    private mutating func parseGeneric(type: RRType) throws(ZoneError) -> RData {
        cursor = 1
        let lengthToken = try next("the RDATA length")
        let length = try number(lengthToken, "the RDATA length", max: 65535)
        let data = length == 0 ? [] : try hexRest("the RDATA in hex")
        guard data.count == length else {
            throw ZoneError(lengthToken.position, "generic RDATA length \(length) does not match the \(data.count) bytes given")
        }
        let known: Set<RRType> = [.a, .aaaa, .ns, .cname, .ptr, .dname, .soa, .mx, .txt, .hinfo, .srv, .naptr, .caa, .sshfp, .tlsa]
        guard known.contains(type) else { return .unknown(type, data) }
        let decoded: Result<RData, WireError> = data.withUnsafeBytes { buffer in
            var reader = WireReader(buffer)
            do throws(WireError) {
                return .success(try RData.parse(type: type, from: &reader))
            } catch {
                return .failure(error)
            }
        }
        switch decoded {
        case .success(let rdata): return rdata
        case .failure(let error): throw ZoneError(lengthToken.position, "generic RDATA is not a valid \(type): \(error)")
        }
    }

    private mutating func next(_ expected: String) throws(ZoneError) -> Token {
        guard cursor < tokens.count else { throw ZoneError(end, "expected \(expected)") }
        defer { cursor += 1 }
        return tokens[cursor]
    }

    private mutating func name(_ expected: String) throws(ZoneError) -> DomainName {
        let token = try next(expected)
        if let names { return try names.name(token, origin: origin) }
        return try parseName(token, origin: origin)
    }

    private mutating func number(_ expected: String, max: UInt32) throws(ZoneError) -> UInt32 {
        try number(try next(expected), expected, max: max)
    }

    private func number(_ token: Token, _ expected: String, max: UInt32) throws(ZoneError) -> UInt32 {
        var value: UInt64 = 0
        var valid = !token.quoted && !token.text.isEmpty
        for byte in token.text where valid {
            valid = byte >= 48 && byte <= 57
            value = value &* 10 &+ UInt64(byte &- 48)
            valid = valid && value <= UInt64(max)
        }
        guard valid else {
            throw ZoneError(token.position, "expected \(expected) (a number up to \(max)), found '\(token.string)'")
        }
        return UInt32(value)
    }

    /// SOA timers accept TTL units, as BIND and NSD do.
    private mutating func period(_ field: String) throws(ZoneError) -> UInt32 {
        let token = try next("the SOA \(field)")
        if token.text.allSatisfy({ $0 >= 48 && $0 <= 57 }) {
            return try number(token, "the SOA \(field)", max: UInt32.max)
        }
        return try MasterFileParser.parseTTL(token)
    }

    private mutating func characterString(_ expected: String, limited: Bool = true) throws(ZoneError) -> [UInt8] {
        let token = try next(expected)
        let bytes = try token.unescaped()
        if limited && bytes.count > RData.characterStringBytesMax {
            throw ZoneError(token.position, "character-string of \(bytes.count) bytes (expected at most 255; split it into several strings)")
        }
        return bytes
    }

    /// Hex digits, possibly split across several tokens, up to the end of the record.
    private mutating func hexRest(_ expected: String) throws(ZoneError) -> [UInt8] {
        guard cursor < tokens.count else { throw ZoneError(end, "expected \(expected)") }
        var nibbles: [UInt8] = []
        let first = tokens[cursor]
        while cursor < tokens.count {
            let token = tokens[cursor]
            for byte in token.text {
                let value: UInt8
                switch byte {
                case 48...57: value = byte - 48
                case 65...70: value = byte - 55
                case 97...102: value = byte - 87
                default: throw ZoneError(token.position, "expected \(expected) in hex, found '\(token.string)'")
                }
                nibbles.append(value)
            }
            cursor += 1
        }
        guard nibbles.count % 2 == 0 else { throw ZoneError(first.position, "odd number of hex digits in \(expected)") }
        return stride(from: 0, to: nibbles.count, by: 2).map { nibbles[$0] << 4 | nibbles[$0 + 1] }
    }
}
