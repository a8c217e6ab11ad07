/// An IPv4 address as 4 bytes in network order.
public struct IPv4Address: Hashable, Sendable, CustomStringConvertible {
    public var bytes: (UInt8, UInt8, UInt8, UInt8)

    public init(_ a: UInt8, _ b: UInt8, _ c: UInt8, _ d: UInt8) { bytes = (a, b, c, d) }

    public init?(_ text: String) {
        var text = text
        guard let parsed = text.withUTF8({ Self(ascii: UnsafeRawBufferPointer($0)) }) else { return nil }
        self = parsed
    }

    /// Parses a dotted quad from ASCII bytes (four decimal fields of 1 to 3 digits, each at
    /// most 255) without building a `String`: a zone of a million A records parses this often.
    public init?(ascii text: UnsafeRawBufferPointer) {
        var fields: (UInt8, UInt8, UInt8, UInt8) = (0, 0, 0, 0)
        var field = 0
        var value = 0
        var digits = 0
        for byte in text {
            if byte == UInt8(ascii: ".") {
                guard digits > 0, field < 3 else { return nil }
                withUnsafeMutableBytes(of: &fields) { $0[field] = UInt8(value) }
                field += 1
                value = 0
                digits = 0
                continue
            }
            guard byte >= 48 && byte <= 57, digits < 3 else { return nil }
            value = value * 10 + Int(byte - 48)
            guard value <= 255 else { return nil }
            digits += 1
        }
        guard digits > 0, field == 3 else { return nil }
        fields.3 = UInt8(value)
        bytes = fields
    }

    public var array: [UInt8] { [bytes.0, bytes.1, bytes.2, bytes.3] }

    public var description: String { "\(bytes.0).\(bytes.1).\(bytes.2).\(bytes.3)" }

    public static func == (l: Self, r: Self) -> Bool {
        l.bytes.0 == r.bytes.0 && l.bytes.1 == r.bytes.1 && l.bytes.2 == r.bytes.2 && l.bytes.3 == r.bytes.3
    }
    public func hash(into hasher: inout Hasher) {
        hasher.combine(UInt32(bytes.0) << 24 | UInt32(bytes.1) << 16 | UInt32(bytes.2) << 8 | UInt32(bytes.3))
    }
}

/// An IPv6 address as 16 bytes in network order.
public struct IPv6Address: Hashable, Sendable, CustomStringConvertible {
    public var bytes: [UInt8]

    public init?(bytes: [UInt8]) {
        guard bytes.count == 16 else { return nil }
        self.bytes = bytes
    }

    /// Parses RFC 4291 §2.2 text forms, including `::` and a trailing dotted IPv4 part.
    public init?(_ text: String) {
        var groups: [UInt16] = []
        var tailGroups: [UInt16] = []
        var sawDoubleColon = false
        var trailingDoubleColon = false
        var body = Substring(text)
        guard !body.isEmpty else { return nil }
        if body.hasPrefix("::") {
            sawDoubleColon = true
            body = body.dropFirst(2)
        } else if body.hasPrefix(":") {
            return nil
        } else if body.hasSuffix("::") {
            // A trailing "::" ("2001:db8::") stands for the zero groups at the end.
            trailingDoubleColon = true
            body = body.dropLast(2)
            guard !body.hasSuffix(":"), !body.contains(".") else { return nil }
        }
        var fields = body.isEmpty ? [] : body.split(separator: ":", omittingEmptySubsequences: false)
        // A trailing dotted quad stands for two groups.
        if let last = fields.last, last.contains(".") {
            guard let v4 = IPv4Address(String(last)) else { return nil }
            fields.removeLast()
            let a = v4.array
            fields.append(Substring(String(UInt16(a[0]) << 8 | UInt16(a[1]), radix: 16)))
            fields.append(Substring(String(UInt16(a[2]) << 8 | UInt16(a[3]), radix: 16)))
        }
        for field in fields {
            if field.isEmpty {
                guard !sawDoubleColon && !trailingDoubleColon else { return nil }
                sawDoubleColon = true
                continue
            }
            guard field.count <= 4, let value = UInt16(field, radix: 16) else { return nil }
            if sawDoubleColon { tailGroups.append(value) } else { groups.append(value) }
        }
        if trailingDoubleColon { sawDoubleColon = true }
        if body.hasSuffix(":") && !body.hasSuffix("::") && !body.isEmpty { return nil }
        if text.hasSuffix("::") && !sawDoubleColon { return nil }
        let total = groups.count + tailGroups.count
        if sawDoubleColon {
            guard total < 8 else { return nil }
            groups += Array(repeating: 0, count: 8 - total) + tailGroups
        } else {
            guard total == 8 else { return nil }
        }
        bytes = groups.flatMap { [UInt8($0 >> 8), UInt8($0 & 0xFF)] }
    }

    /// RFC 5952 text: lowercase, no leading zeros, the longest run (≥2) of zero groups as `::`.
    public var description: String {
        let groups = (0..<8).map { UInt16(bytes[2 * $0]) << 8 | UInt16(bytes[2 * $0 + 1]) }
        var bestStart = -1, bestLength = 0, runStart = -1
        for i in 0...8 {
            if i < 8 && groups[i] == 0 {
                if runStart < 0 { runStart = i }
            } else if runStart >= 0 {
                if i - runStart > bestLength { bestStart = runStart; bestLength = i - runStart }
                runStart = -1
            }
        }
        if bestLength < 2 { bestStart = -1 }
        var text = ""
        var i = 0
        while i < 8 {
            if i == bestStart {
                text += "::"
                i += bestLength
                continue
            }
            if !text.isEmpty && !text.hasSuffix(":") { text += ":" }
            text += String(groups[i], radix: 16)
            i += 1
        }
        return text
    }
}
