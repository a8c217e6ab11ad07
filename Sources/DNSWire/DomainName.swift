/// A domain name, held in uncompressed wire form (RFC 1035 §3.1): length-prefixed labels
/// ending with the zero-length root label.
///
/// Comparison and hashing are ASCII case-insensitive (RFC 4343); the original case is kept
/// for output, so answers preserve the case of the zone file and of the query.
public struct DomainName: Sendable {
    /// RFC 1035 §2.3.4: a name is at most 255 bytes in wire form.
    public static let nameBytesMax = 255
    /// RFC 1035 §2.3.4: a label is at most 63 bytes.
    public static let labelBytesMax = 63

    /// Invariant: a valid uncompressed name, at most `nameBytesMax` bytes, ending in 0.
    public let wire: [UInt8]

    public static let root = DomainName(uncheckedWire: [0])

    package init(uncheckedWire: [UInt8]) {
        self.wire = uncheckedWire
    }

    /// Validates and adopts an uncompressed wire-form name.
    public init(wire: [UInt8]) throws(NameError) {
        guard !wire.isEmpty, wire.count <= Self.nameBytesMax else { throw .tooLong }
        var index = 0
        while true {
            guard index < wire.count else { throw .malformed }
            let length = Int(wire[index])
            if length == 0 {
                guard index == wire.count - 1 else { throw .malformed }
                break
            }
            guard length <= Self.labelBytesMax else { throw .labelTooLong }
            index += 1 + length
        }
        self.wire = wire
    }

    /// Builds a name from labels (each 1...63 bytes), root last implied.
    public init(labels: [[UInt8]]) throws(NameError) {
        var wire: [UInt8] = []
        for label in labels {
            guard !label.isEmpty else { throw .emptyLabel }
            guard label.count <= Self.labelBytesMax else { throw .labelTooLong }
            wire.append(UInt8(label.count))
            wire.append(contentsOf: label)
        }
        wire.append(0)
        guard wire.count <= Self.nameBytesMax else { throw .tooLong }
        self.wire = wire
    }

    /// Parses a name in presentation format (RFC 1035 §5.1): labels separated by unescaped dots,
    /// `\X` and `\DDD` escapes. A name without a trailing dot is relative to `origin`
    /// (an error if `origin` is nil). `"."` is the root.
    public init(parsing text: some Collection<UInt8>, origin: DomainName? = nil) throws(NameError) {
        if let fast = try Self.parsedWithoutEscapes(text, origin: origin) {
            self = fast
            return
        }
        var labels: [[UInt8]] = []
        var label: [UInt8] = []
        var absolute = false
        let bytes = Array(text)
        if bytes == [UInt8(ascii: ".")] {
            self = .root
            return
        }
        guard !bytes.isEmpty else { throw .emptyLabel }
        var index = 0
        let count = bytes.count
        while index < count {
            let byte = bytes[index]
            if byte == UInt8(ascii: "\\") {
                guard index + 1 < count else { throw .badEscape }
                let next = bytes[index + 1]
                if isDigit(next) {
                    guard index + 3 < count, isDigit(bytes[index + 2]), isDigit(bytes[index + 3]) else {
                        throw .badEscape
                    }
                    let value = Int(next - 48) * 100 + Int(bytes[index + 2] - 48) * 10 + Int(bytes[index + 3] - 48)
                    guard value <= 255 else { throw .badEscape }
                    label.append(UInt8(value))
                    index += 4
                } else {
                    label.append(next)
                    index += 2
                }
                continue
            }
            if byte == UInt8(ascii: ".") {
                guard !label.isEmpty else { throw .emptyLabel }
                labels.append(label)
                label.removeAll(keepingCapacity: true)
                if index == count - 1 { absolute = true }
                index += 1
                continue
            }
            label.append(byte)
            index += 1
        }
        if !label.isEmpty { labels.append(label) }
        if absolute {
            try self.init(labels: labels)
        } else {
            guard let origin else { throw .relativeWithoutOrigin }
            var wire: [UInt8] = []
            for label in labels {
                guard label.count <= Self.labelBytesMax else { throw .labelTooLong }
                wire.append(UInt8(label.count))
                wire.append(contentsOf: label)
            }
            wire.append(contentsOf: origin.wire)
            guard wire.count <= Self.nameBytesMax else { throw .tooLong }
            self.init(uncheckedWire: wire)
        }
    }

    /// The common case of `init(parsing:origin:)`, in one pass into one array: a name with no
    /// backslash. Nil when the text has one (the general parser decodes the escapes).
    private static func parsedWithoutEscapes(_ text: some Collection<UInt8>, origin: DomainName?) throws(NameError) -> DomainName? {
        let count = text.count
        guard count > 0 else { throw .emptyLabel }
        if count == 1 && text.first == UInt8(ascii: ".") { return .root }
        var wire: [UInt8] = []
        wire.reserveCapacity(count + 1 + (origin?.wire.count ?? 0))
        wire.append(0)
        var lengthAt = 0
        var absolute = false
        var position = 0
        for byte in text {
            position += 1
            if byte == UInt8(ascii: "\\") { return nil }
            if byte == UInt8(ascii: ".") {
                let length = wire.count - lengthAt - 1
                guard length > 0 else { throw .emptyLabel }
                guard length <= labelBytesMax else { throw .labelTooLong }
                wire[lengthAt] = UInt8(length)
                if position == count {
                    absolute = true
                } else {
                    lengthAt = wire.count
                    wire.append(0)
                }
                continue
            }
            wire.append(byte)
        }
        if !absolute {
            let length = wire.count - lengthAt - 1
            guard length <= labelBytesMax else { throw .labelTooLong }
            wire[lengthAt] = UInt8(length)
            guard let origin else { throw .relativeWithoutOrigin }
            wire.append(contentsOf: origin.wire)
        } else {
            wire.append(0)
        }
        guard wire.count <= nameBytesMax else { throw .tooLong }
        return DomainName(uncheckedWire: wire)
    }

    public init(_ text: String, origin: DomainName? = nil) throws(NameError) {
        try self.init(parsing: Array(text.utf8), origin: origin)
    }

    public var isRoot: Bool { wire.count == 1 }

    /// Number of labels, not counting the root.
    public var labelCount: Int {
        var count = 0
        var index = 0
        while wire[index] != 0 {
            count += 1
            index += 1 + Int(wire[index])
        }
        return count
    }

    /// The labels, most specific first, root excluded.
    public var labels: [ArraySlice<UInt8>] {
        var result: [ArraySlice<UInt8>] = []
        var index = 0
        while wire[index] != 0 {
            let length = Int(wire[index])
            result.append(wire[(index + 1)..<(index + 1 + length)])
            index += 1 + length
        }
        return result
    }

    /// The name with its first label removed; nil for the root.
    public var parent: DomainName? {
        guard !isRoot else { return nil }
        return DomainName(uncheckedWire: Array(wire[(1 + Int(wire[0]))...]))
    }

    /// True when the first label is `*` (RFC 4592 §2.1.1).
    public var isWildcard: Bool { wire.count >= 2 && wire[0] == 1 && wire[1] == UInt8(ascii: "*") }

    /// `*.` + self.
    public var wildcardChild: DomainName? { try? prepending(label: [UInt8(ascii: "*")]) }

    public func prepending(label: [UInt8]) throws(NameError) -> DomainName {
        guard !label.isEmpty else { throw .emptyLabel }
        guard label.count <= Self.labelBytesMax else { throw .labelTooLong }
        guard wire.count + 1 + label.count <= Self.nameBytesMax else { throw .tooLong }
        return DomainName(uncheckedWire: [UInt8(label.count)] + label + wire)
    }

    /// True if self equals `other` or lies below it.
    public func isSubdomain(of other: DomainName) -> Bool {
        guard wire.count >= other.wire.count else { return false }
        let offset = wire.count - other.wire.count
        // The suffix must start at a label boundary.
        var index = 0
        while index < offset {
            index += 1 + Int(wire[index])
        }
        guard index == offset else { return false }
        for i in 0..<other.wire.count where asciiLower(wire[offset + i]) != asciiLower(other.wire[i]) {
            return false
        }
        return true
    }

    /// RFC 6672 §2.2: replaces the suffix `owner` of self with `target`.
    public func replacingSuffix(_ owner: DomainName, with target: DomainName) throws(NameError) -> DomainName {
        precondition(isSubdomain(of: owner), "replacingSuffix: \(self) is not below \(owner)")
        let prefix = wire[0..<(wire.count - owner.wire.count)]
        let result = Array(prefix) + target.wire
        guard result.count <= Self.nameBytesMax else { throw .tooLong }
        return DomainName(uncheckedWire: result)
    }

    /// The same name with ASCII letters lowercased: the canonical key of lookups.
    public func lowercased() -> DomainName {
        DomainName(uncheckedWire: wire.map(asciiLower))
    }
}

/// Why a name is not valid.
public enum NameError: Error, Sendable, Equatable, CustomStringConvertible {
    case tooLong, labelTooLong, emptyLabel, badEscape, malformed, relativeWithoutOrigin

    public var description: String {
        switch self {
        case .tooLong: "name longer than 255 bytes"
        case .labelTooLong: "label longer than 63 bytes"
        case .emptyLabel: "empty label"
        case .badEscape: "bad escape (expected \\X or \\DDD with DDD <= 255)"
        case .malformed: "malformed name"
        case .relativeWithoutOrigin: "relative name without an origin"
        }
    }
}

@inline(__always)
package func asciiLower(_ byte: UInt8) -> UInt8 {
    (byte >= 65 && byte <= 90) ? byte | 0x20 : byte
}

@inline(__always)
private func isDigit(_ byte: UInt8) -> Bool { byte >= 48 && byte <= 57 }

extension DomainName: Hashable {
    public static func == (lhs: DomainName, rhs: DomainName) -> Bool {
        guard lhs.wire.count == rhs.wire.count else { return false }
        return lhs.wire.withUnsafeBufferPointer { l in
            rhs.wire.withUnsafeBufferPointer { r in
                if l.baseAddress == r.baseAddress { return true }
                for i in 0..<l.count where l[i] != r[i] && asciiLower(l[i]) != asciiLower(r[i]) {
                    return false
                }
                return true
            }
        }
    }

    /// Hashes the lowercased wire bytes in one call: a zone build hashes every name several
    /// times, and `Hasher.combine` per byte made that a third of a registry rebuild.
    public func hash(into hasher: inout Hasher) {
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: wire.count) { lowered in
            for i in 0..<wire.count { lowered[i] = asciiLower(wire[i]) }
            hasher.combine(bytes: UnsafeRawBufferPointer(lowered))
        }
    }
}

extension DomainName: CustomStringConvertible {
    /// Presentation format with a trailing dot; bytes outside printable ASCII and the
    /// special characters `. \ " ( ) ; @ $` and space are escaped (RFC 4343 §2.1).
    public var description: String {
        if isRoot { return "." }
        var text = ""
        for label in labels {
            for byte in label {
                appendEscaped(byte, to: &text, specials: nameSpecials)
            }
            text.append(".")
        }
        return text
    }
}

private let nameSpecials: Set<UInt8> = Set(".\\\"();@$ ".utf8)

package func appendEscaped(_ byte: UInt8, to text: inout String, specials: Set<UInt8>) {
    if byte < 0x21 || byte > 0x7E {
        if byte == 0x20 && !specials.contains(byte) {
            text.append(" ")
            return
        }
        text.append("\\")
        let digits = String(byte)
        text.append(String(repeating: "0", count: 3 - digits.count) + digits)
    } else if specials.contains(byte) {
        text.append("\\")
        text.unicodeScalars.append(Unicode.Scalar(byte))
    } else {
        text.unicodeScalars.append(Unicode.Scalar(byte))
    }
}

extension DomainName: Comparable {
    /// RFC 4034 §6.1 canonical order: compare labels right to left, case-insensitively.
    public static func < (lhs: DomainName, rhs: DomainName) -> Bool {
        canonicallyPrecedes(lhs.canonicalKey, rhs.canonicalKey)
    }

    /// The labels right to left, lowercased: sort by this (with `canonicallyPrecedes`) to sort
    /// many names without recomputing it in every comparison.
    public var canonicalKey: [[UInt8]] { labels.reversed().map { $0.map(asciiLower) } }

    /// The canonical order (RFC 4034 §6.1) as one flat byte string, compared with
    /// `lexicographicallyPrecedes`: the labels right to left, lowercased, each followed by
    /// 0 0, with a 0 byte inside a label written as 0 1 so that order is kept.
    public var canonicalSortKey: [UInt8] {
        var key: [UInt8] = []
        key.reserveCapacity(wire.count * 2)
        appendCanonicalSortKey(to: &key)
        return key
    }

    /// Appends `canonicalSortKey` to `key` (many names' keys end to end in one buffer).
    public func appendCanonicalSortKey(to key: inout [UInt8]) {
        wire.withUnsafeBufferPointer { wire in
            withUnsafeTemporaryAllocation(of: Int.self, capacity: Self.nameBytesMax) { starts in
                var count = 0
                var index = 0
                while wire[index] != 0 {
                    starts[count] = index
                    count += 1
                    index += 1 + Int(wire[index])
                }
                while count > 0 {
                    count -= 1
                    let start = starts[count]
                    for i in (start + 1)..<(start + 1 + Int(wire[start])) {
                        let byte = asciiLower(wire[i])
                        key.append(byte)
                        if byte == 0 { key.append(1) }
                    }
                    key.append(0)
                    key.append(0)
                }
            }
        }
    }

    public static func canonicallyPrecedes(_ left: [[UInt8]], _ right: [[UInt8]]) -> Bool {
        for (a, b) in zip(left, right) where a != b {
            return a.lexicographicallyPrecedes(b)
        }
        return left.count < right.count
    }
}
