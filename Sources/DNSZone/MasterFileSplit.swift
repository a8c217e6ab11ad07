/// Where a large master file can be cut into parts that parse on their own, in parallel, to
/// exactly the records (and errors) of one parse from the start (issue 15.1: a zone of a
/// million records is one file, and its parse was half of the load).
///
/// A part may start only where nothing before it matters but what a short preamble restores:
/// - at the start of a logical line (outside parentheses, quotes and comments, as the `Lexer`
///   sees them) that names its owner (not blank, `;`, `$`, `(`, `)`, `"` or `\`), so no
///   owner carries over;
/// - after a `$TTL` directive, so no record's TTL depends on the records before it (without
///   one the last explicit TTL carries on, RFC 1035 §5.1);
/// - before any `$INCLUDE` (an included file may set `$TTL` for what follows it).
/// The preamble is the `$ORIGIN` and `$TTL` directives before the cut, in order: parsed first,
/// they set the origin and default TTL the part starts with.
///
/// The scan is one pass over the bytes, without allocation but for the result. Where the scan
/// and the lexer could disagree (a lexical error before a cut: an unbalanced parenthesis, a
/// backslash at the end of a line), the parse of the part with the error stops there and the
/// parts after it are dropped, as one parse from the start stops at it.
package struct MasterFileSplit {
    package struct Part: Equatable {
        /// The bytes of the file this part lexes.
        package var range: Range<Int>
        /// The number of its first line.
        package var firstLine: Int
        /// `$ORIGIN` / `$TTL` directives to parse before it (empty for the first part).
        package var preamble: [UInt8]
        /// About how many records it holds (from the lines per byte of the file before the
        /// last cut), never more than one per `recordBytesMin` bytes.
        package var recordsEstimate = 0
    }

    /// A record's line is hardly shorter than this (`a A 1.2.3.4` and its line break are 12
    /// bytes): the cap on `recordsEstimate`, so that a file of empty lines reserves nothing much.
    static let recordBytesMin = 8

    /// Up to `parts` parts of `bytes` (cut near equal sizes), each at least `partBytesMin`
    /// long; one part (the whole file) when it cannot be cut.
    package static func parts(of bytes: [UInt8], parts wanted: Int, partBytesMin: Int) -> [Part] {
        bytes.withUnsafeBufferPointer { parts(of: $0, parts: wanted, partBytesMin: partBytesMin) }
    }

    package static func parts(of bytes: UnsafeBufferPointer<UInt8>, parts wanted: Int, partBytesMin: Int) -> [Part] {
        let count = min(wanted, bytes.count / max(1, partBytesMin))
        let whole = [Part(range: 0..<bytes.count, firstLine: 1, preamble: [])]
        guard count > 1 else { return whole }
        var cuts: [(offset: Int, line: Int, preamble: [UInt8])] = []
        var preamble: [UInt8] = []
        var sawTTL = false
        var nextTarget = bytes.count / count
        // Logical lines (an upper bound of records) in the bytes scanned.
        var entries = 0
        scan: do {
            let buffer = bytes
            let n = buffer.count
            var i = 0
            var line = 1
            var depth = 0
            var directiveStart: Int? = nil
            // `i` is at the start of a logical line here (and at every `continue lineStart`).
            lineStart: while i < n {
                let first = buffer[i]
                if first == UInt8(ascii: "$") {
                    directiveStart = i
                } else if i >= nextTarget && sawTTL && isOwnerStart(first) {
                    cuts.append((i, line, preamble))
                    if cuts.count == count - 1 { break scan }
                    nextTarget = (bytes.count / count) * (cuts.count + 1)
                }
                // To the end of this logical line.
                while i < n {
                    let byte = buffer[i]
                    switch byte {
                    case UInt8(ascii: "\n"):
                        i += 1
                        line += 1
                        if depth == 0 {
                            entries += 1
                            if let start = directiveStart {
                                directiveStart = nil
                                switch directiveKind(buffer, start) {
                                case .include:
                                    break scan
                                case .ttl:
                                    sawTTL = true
                                    preamble += buffer[start..<i]
                                case .origin:
                                    preamble += buffer[start..<i]
                                case .other:
                                    break
                                }
                            }
                            continue lineStart
                        }
                    case UInt8(ascii: ";"):
                        while i < n && buffer[i] != UInt8(ascii: "\n") { i += 1 }
                    case UInt8(ascii: "("):
                        depth += 1
                        i += 1
                    case UInt8(ascii: ")"):
                        depth = max(0, depth - 1)
                        i += 1
                    case UInt8(ascii: "\\"):
                        if i + 1 < n && buffer[i + 1] == UInt8(ascii: "\n") { line += 1 }
                        i += 2
                    case UInt8(ascii: "\""):
                        i += 1
                        while i < n && buffer[i] != UInt8(ascii: "\"") {
                            if buffer[i] == UInt8(ascii: "\\") {
                                if i + 1 < n && buffer[i + 1] == UInt8(ascii: "\n") { line += 1 }
                                i += 2
                                continue
                            }
                            if buffer[i] == UInt8(ascii: "\n") { line += 1 }
                            i += 1
                        }
                        i += 1
                    default:
                        i += 1
                    }
                }
            }
        }
        guard !cuts.isEmpty else { return whole }
        var result: [Part] = []
        var start = 0, startLine = 1, startPreamble: [UInt8] = []
        for cut in cuts {
            result.append(Part(range: start..<cut.offset, firstLine: startLine, preamble: startPreamble))
            (start, startLine, startPreamble) = (cut.offset, cut.line, cut.preamble)
        }
        result.append(Part(range: start..<bytes.count, firstLine: startLine, preamble: startPreamble))
        let scanned = max(1, cuts.last!.offset)
        for k in result.indices {
            let size = result[k].range.count
            result[k].recordsEstimate = min(size / recordBytesMin, Int(Double(entries) / Double(scanned) * Double(size) * 1.05) + 16)
        }
        return result
    }

    /// A byte that starts an owner name written out (the lexer's word-token start, less the
    /// characters that make the line something else).
    private static func isOwnerStart(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: " "), UInt8(ascii: "\t"), UInt8(ascii: "\r"), UInt8(ascii: "\n"), UInt8(ascii: ";"),
             UInt8(ascii: "$"), UInt8(ascii: "("), UInt8(ascii: ")"), UInt8(ascii: "\""), UInt8(ascii: "\\"):
            false
        default:
            true
        }
    }

    private enum DirectiveKind { case origin, ttl, include, other }

    private static func directiveKind(_ buffer: UnsafeBufferPointer<UInt8>, _ start: Int) -> DirectiveKind {
        func isWord(_ word: StaticString) -> Bool {
            let count = word.utf8CodeUnitCount
            guard start + count < buffer.count else { return false }
            for k in 0..<count where asciiLowerByte(buffer[start + k]) != asciiLowerByte(word.utf8Start[k]) { return false }
            // The directive's word ends there.
            switch buffer[start + count] {
            case UInt8(ascii: " "), UInt8(ascii: "\t"), UInt8(ascii: "\r"), UInt8(ascii: "\n"), UInt8(ascii: ";"), UInt8(ascii: "("):
                return true
            default:
                return false
            }
        }
        if isWord("$ORIGIN") { return .origin }
        if isWord("$TTL") { return .ttl }
        if isWord("$INCLUDE") { return .include }
        // An unknown directive is an error of the part it is in; a word that merely starts
        // like one of these (`$TTLX`) is unknown too. Neither changes the state after it.
        return .other
    }
}
