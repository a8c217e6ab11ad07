import Foundation

/// A TOML value with the line it was written on, so config errors can name file:line.
public struct TOMLValue: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        case string(String)
        case integer(Int)
        case float(Double)
        case boolean(Bool)
        case array([TOMLValue])
    }
    public var kind: Kind
    public var line: Int

    public init(kind: Kind, line: Int) {
        self.kind = kind
        self.line = line
    }
}

/// A parse error: file, line, and what was expected.
public struct TOMLError: Error, Sendable, Equatable, CustomStringConvertible {
    public var file: String
    public var line: Int
    public var message: String
    public var description: String { "\(file):\(line): \(message)" }
}

/// A parser for the part of TOML 1.0 that a daemon configuration uses: comments, `[table]`
/// and `[dotted.table]` headers, bare and quoted keys (dotted keys too), basic and literal
/// strings, integers (with `_`), floats, booleans, and arrays (across lines). Dates, inline
/// tables, arrays of tables and multi-line strings are rejected with a clear error.
///
/// Why not TOMLKit: it cannot tell the line of a key whose value has the wrong type, and
/// DESIGN.md wants every config error to name file, line and key.
public struct TOMLDocument: Sendable {
    /// Full dotted key ("dns.listen") → value.
    public private(set) var values: [String: TOMLValue] = [:]

    public init(parsing text: String, file: String) throws(TOMLError) {
        var parser = Parser(bytes: Array(text.utf8), file: file)
        values = try parser.parse()
    }

    private struct Parser {
        let bytes: [UInt8]
        let file: String
        var index = 0
        var line = 1

        func fail(_ message: String) -> TOMLError { TOMLError(file: file, line: line, message: message) }

        var atEnd: Bool { index >= bytes.count }
        var current: UInt8 { bytes[index] }

        mutating func skipBlank() {
            while !atEnd && (current == 32 || current == 9) { index += 1 }
        }

        /// Skips blanks, comments and newlines (inside arrays).
        mutating func skipBlankAndNewlines() {
            while !atEnd {
                if current == 32 || current == 9 || current == 13 { index += 1 }
                else if current == 10 { index += 1; line += 1 }
                else if current == UInt8(ascii: "#") { while !atEnd && current != 10 { index += 1 } }
                else { break }
            }
        }

        mutating func endOfLine() throws(TOMLError) {
            skipBlank()
            if !atEnd && current == UInt8(ascii: "#") { while !atEnd && current != 10 { index += 1 } }
            if !atEnd && current == 13 { index += 1 }
            guard atEnd || current == 10 else { throw fail("expected the end of the line, found '\(Character(Unicode.Scalar(current)))'") }
            if !atEnd { index += 1; line += 1 }
        }

        mutating func parse() throws(TOMLError) -> [String: TOMLValue] {
            var values: [String: TOMLValue] = [:]
            var table: [String] = []
            var tables: Set<String> = []
            while true {
                skipBlankAndNewlines()
                if atEnd { return values }
                if current == UInt8(ascii: "[") {
                    index += 1
                    guard atEnd || current != UInt8(ascii: "[") else { throw fail("arrays of tables ([[...]]) are not supported") }
                    skipBlank()
                    table = try key()
                    skipBlank()
                    guard !atEnd, current == UInt8(ascii: "]") else { throw fail("expected ']' to close the table header") }
                    index += 1
                    let name = table.joined(separator: ".")
                    guard tables.insert(name).inserted else { throw fail("table [\(name)] is defined twice") }
                    try endOfLine()
                    continue
                }
                let keyLine = line
                let path = table + (try key())
                skipBlank()
                guard !atEnd, current == UInt8(ascii: "=") else { throw fail("expected '=' after the key \(path.joined(separator: "."))") }
                index += 1
                skipBlank()
                let value = try self.value()
                let name = path.joined(separator: ".")
                guard values[name] == nil else {
                    throw TOMLError(file: file, line: keyLine, message: "key \(name) is defined twice")
                }
                values[name] = value
                try endOfLine()
            }
        }

        mutating func key() throws(TOMLError) -> [String] {
            var parts: [String] = []
            while true {
                skipBlank()
                guard !atEnd else { throw fail("expected a key") }
                if current == UInt8(ascii: "\"") || current == UInt8(ascii: "'") {
                    parts.append(try string())
                } else {
                    let start = index
                    while !atEnd, isBareKeyByte(current) { index += 1 }
                    guard index > start else { throw fail("expected a key (letters, digits, '_' or '-')") }
                    parts.append(String(decoding: bytes[start..<index], as: UTF8.self))
                }
                skipBlank()
                if !atEnd && current == UInt8(ascii: ".") { index += 1; continue }
                return parts
            }
        }

        func isBareKeyByte(_ b: UInt8) -> Bool {
            (b >= 48 && b <= 57) || (b >= 65 && b <= 90) || (b >= 97 && b <= 122) || b == 95 || b == 45
        }

        mutating func value() throws(TOMLError) -> TOMLValue {
            guard !atEnd else { throw fail("expected a value") }
            let valueLine = line
            switch current {
            case UInt8(ascii: "\""), UInt8(ascii: "'"):
                return TOMLValue(kind: .string(try string()), line: valueLine)
            case UInt8(ascii: "["):
                index += 1
                var items: [TOMLValue] = []
                while true {
                    skipBlankAndNewlines()
                    guard !atEnd else { throw fail("unterminated array (expected ']')") }
                    if current == UInt8(ascii: "]") { index += 1; break }
                    items.append(try value())
                    skipBlankAndNewlines()
                    guard !atEnd else { throw fail("unterminated array (expected ']')") }
                    if current == UInt8(ascii: ",") { index += 1; continue }
                    guard current == UInt8(ascii: "]") else { throw fail("expected ',' or ']' in the array") }
                }
                return TOMLValue(kind: .array(items), line: valueLine)
            case UInt8(ascii: "{"):
                throw fail("inline tables are not supported; use a [table] header")
            default:
                let start = index
                while !atEnd, ![32, 9, 10, 13, UInt8(ascii: ","), UInt8(ascii: "]"), UInt8(ascii: "#")].contains(current) {
                    index += 1
                }
                let word = String(decoding: bytes[start..<index], as: UTF8.self)
                guard !word.isEmpty else { throw fail("expected a value after '='") }
                if word == "true" { return TOMLValue(kind: .boolean(true), line: valueLine) }
                if word == "false" { return TOMLValue(kind: .boolean(false), line: valueLine) }
                let digits = word.replacingOccurrences(of: "_", with: "")
                if let integer = Int(digits) { return TOMLValue(kind: .integer(integer), line: valueLine) }
                if let number = Double(digits), digits.contains(where: { $0 == "." || $0 == "e" || $0 == "E" }) {
                    return TOMLValue(kind: .float(number), line: valueLine)
                }
                throw fail("expected a value (string in quotes, integer, float, true/false or array), found '\(word)'")
            }
        }

        mutating func string() throws(TOMLError) -> String {
            let quote = current
            index += 1
            if index + 1 < bytes.count && current == quote && bytes[index + 1] == quote {
                throw fail("multi-line strings are not supported")
            }
            var out: [UInt8] = []
            while true {
                guard !atEnd, current != 10 else { throw fail("unterminated string") }
                let byte = current
                index += 1
                if byte == quote { break }
                if byte == UInt8(ascii: "\\") && quote == UInt8(ascii: "\"") {
                    guard !atEnd else { throw fail("unterminated string") }
                    let escape = current
                    index += 1
                    switch escape {
                    case UInt8(ascii: "n"): out.append(10)
                    case UInt8(ascii: "t"): out.append(9)
                    case UInt8(ascii: "r"): out.append(13)
                    case UInt8(ascii: "\\"): out.append(92)
                    case UInt8(ascii: "\""): out.append(34)
                    default: throw fail("unsupported escape \\\(Character(Unicode.Scalar(escape))) in a string")
                    }
                    continue
                }
                out.append(byte)
            }
            return String(decoding: out, as: UTF8.self)
        }
    }
}
