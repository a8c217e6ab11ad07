import DNSWire

/// A position in a master file, for error messages.
public struct SourcePosition: Hashable, Sendable, CustomStringConvertible {
    public var file: String
    public var line: Int
    public var column: Int

    public init(file: String, line: Int, column: Int) {
        self.file = file
        self.line = line
        self.column = column
    }

    public var description: String { "\(file):\(line):\(column)" }
}

/// A master-file error: where, and what was expected.
public struct ZoneError: Error, Sendable, Equatable, CustomStringConvertible {
    public var position: SourcePosition
    public var message: String

    public init(_ position: SourcePosition, _ message: String) {
        self.position = position
        self.message = message
    }

    public var description: String { "\(position): \(message)" }
}

/// One token of a master file (RFC 1035 §5.1). `text` keeps backslash escapes as written;
/// the consumer decides how to decode them (a name keeps `\.` inside a label, a string does not).
struct Token {
    var text: [UInt8]
    var quoted: Bool
    var position: SourcePosition
}

/// A logical line: its tokens, and whether it started with blank space (an omitted owner).
struct Entry {
    var tokens: [Token]
    var startsWithBlank: Bool
    var position: SourcePosition
}

/// Splits a master file into logical lines, joining lines inside parentheses and dropping
/// comments.
struct Lexer {
    /// A token longer than this is an error (the longest legal one is a long TXT or hex blob).
    static let tokenBytesMax = 65535 * 2

    private let bytes: [UInt8]
    private let file: String
    private var index = 0
    private var line = 1
    private var lineStart = 0

    init(bytes: [UInt8], file: String) {
        self.bytes = bytes
        self.file = file
    }

    private var position: SourcePosition { SourcePosition(file: file, line: line, column: index - lineStart + 1) }

    /// The next logical line with at least one token, or nil at the end of the file.
    mutating func nextEntry() throws(ZoneError) -> Entry? {
        while index < bytes.count {
            let startPosition = position
            let startsWithBlank = bytes[index] == UInt8(ascii: " ") || bytes[index] == UInt8(ascii: "\t")
            var tokens: [Token] = []
            var depth = 0
            var openedAt = startPosition
            lineLoop: while index < bytes.count {
                let byte = bytes[index]
                switch byte {
                case UInt8(ascii: " "), UInt8(ascii: "\t"), UInt8(ascii: "\r"):
                    index += 1
                case UInt8(ascii: "\n"):
                    index += 1
                    line += 1
                    lineStart = index
                    if depth == 0 { break lineLoop }
                case UInt8(ascii: ";"):
                    while index < bytes.count && bytes[index] != UInt8(ascii: "\n") { index += 1 }
                case UInt8(ascii: "("):
                    if depth == 0 { openedAt = position }
                    depth += 1
                    index += 1
                case UInt8(ascii: ")"):
                    guard depth > 0 else { throw ZoneError(position, "unbalanced ')' (no '(' open)") }
                    depth -= 1
                    index += 1
                case UInt8(ascii: "\""):
                    tokens.append(try quotedToken())
                default:
                    tokens.append(try wordToken())
                }
            }
            if depth > 0 { throw ZoneError(openedAt, "'(' is never closed") }
            if !tokens.isEmpty {
                return Entry(tokens: tokens, startsWithBlank: startsWithBlank, position: startPosition)
            }
        }
        return nil
    }

    private mutating func wordToken() throws(ZoneError) -> Token {
        let start = position
        var text: [UInt8] = []
        while index < bytes.count {
            let byte = bytes[index]
            if byte == UInt8(ascii: "\\") {
                guard index + 1 < bytes.count, bytes[index + 1] != UInt8(ascii: "\n") else {
                    throw ZoneError(position, "backslash at end of line (expected an escaped character)")
                }
                text.append(byte)
                text.append(bytes[index + 1])
                index += 2
                continue
            }
            if byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") || byte == UInt8(ascii: "\n")
                || byte == UInt8(ascii: "\r") || byte == UInt8(ascii: ";") || byte == UInt8(ascii: "(")
                || byte == UInt8(ascii: ")") || byte == UInt8(ascii: "\"") {
                break
            }
            text.append(byte)
            index += 1
            if text.count > Self.tokenBytesMax { throw ZoneError(start, "token too long") }
        }
        return Token(text: text, quoted: false, position: start)
    }

    private mutating func quotedToken() throws(ZoneError) -> Token {
        let start = position
        index += 1
        var text: [UInt8] = []
        while true {
            guard index < bytes.count else { throw ZoneError(start, "unterminated quoted string (expected '\"')") }
            let byte = bytes[index]
            if byte == UInt8(ascii: "\"") {
                index += 1
                break
            }
            if byte == UInt8(ascii: "\\") {
                guard index + 1 < bytes.count else { throw ZoneError(position, "backslash at end of file") }
                text.append(byte)
                text.append(bytes[index + 1])
                if bytes[index + 1] == UInt8(ascii: "\n") { line += 1; lineStart = index + 2 }
                index += 2
                continue
            }
            if byte == UInt8(ascii: "\n") {
                line += 1
                lineStart = index + 1
            }
            text.append(byte)
            index += 1
            if text.count > Self.tokenBytesMax { throw ZoneError(start, "token too long") }
        }
        return Token(text: text, quoted: true, position: start)
    }
}

extension Token {
    var string: String { String(decoding: text, as: UTF8.self) }

    /// Decodes `\X` and `\DDD` escapes into bytes (a character-string, RFC 1035 §5.1).
    func unescaped() throws(ZoneError) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(text.count)
        var i = 0
        while i < text.count {
            let byte = text[i]
            guard byte == UInt8(ascii: "\\") else {
                out.append(byte)
                i += 1
                continue
            }
            guard i + 1 < text.count else { throw ZoneError(position, "backslash at end of token") }
            let next = text[i + 1]
            if next >= 48 && next <= 57 {
                guard i + 3 < text.count, (48...57).contains(text[i + 2]), (48...57).contains(text[i + 3]) else {
                    throw ZoneError(position, "bad escape (expected \\DDD with three digits)")
                }
                let value = Int(next - 48) * 100 + Int(text[i + 2] - 48) * 10 + Int(text[i + 3] - 48)
                guard value <= 255 else { throw ZoneError(position, "bad escape \\\(value) (expected at most \\255)") }
                out.append(UInt8(value))
                i += 4
            } else {
                out.append(next)
                i += 2
            }
        }
        return out
    }
}
