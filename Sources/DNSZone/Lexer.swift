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
/// It is a slice of the file's bytes: a token costs no allocation of its own.
struct Token {
    var text: ArraySlice<UInt8>
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
    /// Where this lexer stops: the end of the file, or of the part of it given to this lexer.
    private let end: Int
    private var index: Int
    private var line: Int
    private var lineStart: Int

    init(bytes: [UInt8], file: String) {
        self.init(bytes: bytes, range: 0..<bytes.count, firstLine: 1, file: file)
    }

    /// Lexes `range` of `bytes`, which starts a logical line numbered `firstLine` (a part of a
    /// file parsed on its own: `MasterFileSplit`).
    init(bytes: [UInt8], range: Range<Int>, firstLine: Int, file: String) {
        self.bytes = bytes
        self.file = file
        end = range.upperBound
        index = range.lowerBound
        lineStart = range.lowerBound
        line = firstLine
    }

    private var position: SourcePosition { SourcePosition(file: file, line: line, column: index - lineStart + 1) }

    /// The next logical line with at least one token, or nil at the end of the file.
    mutating func nextEntry() throws(ZoneError) -> Entry? {
        while index < end {
            let startPosition = position
            let startsWithBlank = bytes[index] == UInt8(ascii: " ") || bytes[index] == UInt8(ascii: "\t")
            var tokens: [Token] = []
            var depth = 0
            var openedAt = startPosition
            lineLoop: while index < end {
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
                    while index < end && bytes[index] != UInt8(ascii: "\n") { index += 1 }
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
        let first = index
        while index < end {
            let byte = bytes[index]
            if byte == UInt8(ascii: "\\") {
                guard index + 1 < end, bytes[index + 1] != UInt8(ascii: "\n") else {
                    throw ZoneError(position, "backslash at end of line (expected an escaped character)")
                }
                index += 2
                continue
            }
            if byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") || byte == UInt8(ascii: "\n")
                || byte == UInt8(ascii: "\r") || byte == UInt8(ascii: ";") || byte == UInt8(ascii: "(")
                || byte == UInt8(ascii: ")") || byte == UInt8(ascii: "\"") {
                break
            }
            index += 1
        }
        if index - first > Self.tokenBytesMax { throw ZoneError(start, "token too long") }
        return Token(text: bytes[first..<index], quoted: false, position: start)
    }

    private mutating func quotedToken() throws(ZoneError) -> Token {
        let start = position
        index += 1
        let first = index
        while true {
            guard index < end else { throw ZoneError(start, "unterminated quoted string (expected '\"')") }
            let byte = bytes[index]
            if byte == UInt8(ascii: "\"") { break }
            if byte == UInt8(ascii: "\\") {
                guard index + 1 < end else { throw ZoneError(position, "backslash at end of file") }
                if bytes[index + 1] == UInt8(ascii: "\n") { line += 1; lineStart = index + 2 }
                index += 2
                continue
            }
            if byte == UInt8(ascii: "\n") {
                line += 1
                lineStart = index + 1
            }
            index += 1
            if index - first > Self.tokenBytesMax { throw ZoneError(start, "token too long") }
        }
        let text = bytes[first..<index]
        index += 1
        return Token(text: text, quoted: true, position: start)
    }
}

extension Token {
    var string: String { String(decoding: text, as: UTF8.self) }

    /// Decodes `\X` and `\DDD` escapes into bytes (a character-string, RFC 1035 §5.1).
    func unescaped() throws(ZoneError) -> [UInt8] {
        guard text.contains(UInt8(ascii: "\\")) else { return Array(text) }
        var out: [UInt8] = []
        out.reserveCapacity(text.count)
        var i = text.startIndex
        let end = text.endIndex
        while i < end {
            let byte = text[i]
            guard byte == UInt8(ascii: "\\") else {
                out.append(byte)
                i += 1
                continue
            }
            guard i + 1 < end else { throw ZoneError(position, "backslash at end of token") }
            let next = text[i + 1]
            if next >= 48 && next <= 57 {
                guard i + 3 < end, (48...57).contains(text[i + 2]), (48...57).contains(text[i + 3]) else {
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

    /// True when the token is exactly `word` (ASCII, case-insensitive) and not quoted.
    func isWord(_ word: StaticString) -> Bool {
        guard !quoted, text.count == word.utf8CodeUnitCount else { return false }
        var i = text.startIndex
        for k in 0..<word.utf8CodeUnitCount {
            if asciiLowerByte(text[i]) != asciiLowerByte(word.utf8Start[k]) { return false }
            i += 1
        }
        return true
    }
}
