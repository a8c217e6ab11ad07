import DNSWire
import Dispatch

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A record read from a master file, with where it was written.
public struct ParsedRecord: Sendable, Hashable {
    public var record: ResourceRecord
    public var position: SourcePosition

    public init(record: ResourceRecord, position: SourcePosition) {
        self.record = record
        self.position = position
    }
}

/// All the errors of one zone load (at most `ZoneLoadError.errorsMax`), so an operator can fix
/// several at once.
public struct ZoneLoadError: Error, Sendable, CustomStringConvertible {
    /// Reporting stops after this many errors; later ones are usually consequences.
    public static let errorsMax = 20
    public var errors: [ZoneError]

    public init(_ errors: [ZoneError]) { self.errors = errors }

    public var description: String { errors.map(\.description).joined(separator: "\n") }
}

/// The RFC 1035 §5 master-file parser: `$ORIGIN`, `$TTL`, `$INCLUDE`, `@`, relative names,
/// omitted owners, parentheses, comments, quoted strings, escapes, TTL units, and RFC 3597
/// generic RDATA (`TYPEnnn`, `\#`).
public struct MasterFileParser {
    /// `$INCLUDE` nesting deeper than this is an error (it catches include loops).
    public static let includeDepthMax = 8
    /// RFC 2181 §8: TTLs are 31-bit unsigned.
    public static let ttlSecondsMax: UInt32 = 0x7FFF_FFFF
    /// A master file larger than this is refused before reading.
    public static let fileBytesMax = 256 << 20

    private var origin: DomainName
    private var defaultTTL: UInt32?
    private var lastTTL: UInt32?
    private var lastOwner: DomainName?
    /// How `lastOwner` was written (empty: not reusable by its text), under the current origin.
    private var lastOwnerText: ArraySlice<UInt8> = []
    private var errors: [ZoneError] = []
    private var records: [ParsedRecord] = []
    /// What a parse gives: `records`, or for a zone load (where no array of a million parsed
    /// records is ever held) the records packed in `log`, or that log compiled by owner.
    enum Output { case records, logs, compiled }
    private let output: Output
    /// With `.logs` and `.compiled`: the records, packed as they are parsed.
    private var log: RecordLog?
    /// With `.compiled`: the log compiled by owner once the file (or its part) is parsed.
    private var compiled: CompiledOwners?
    private let names = NameInterner()
    /// The files read, main file first.
    private var files: [FileStamp] = []

    private init(origin: DomainName, output: Output) {
        self.origin = origin
        self.output = output
        log = output == .records ? nil : RecordLog(origin: origin)
    }

    /// Parses master-file text. `file` names it in errors; `directory` resolves relative
    /// `$INCLUDE` paths (nil forbids `$INCLUDE`). `parts`: parse it in up to that many parts at
    /// once (`MasterFileSplit`), each at least `partBytesMin` long.
    public static func parse(text: [UInt8], file: String, origin: DomainName, directory: String? = nil) throws(ZoneLoadError) -> [ParsedRecord] {
        try parse(bytes: text, file: file, origin: origin, directory: directory, files: [], parts: 1,
                  partBytesMin: partBytesMin).parsers[0].records
    }

    /// `parse(text:...)` in up to `parts` parts of at least `partBytesMin` bytes. Errors are
    /// reported by a parse from the start unless `reparseOnError` is false (then each part's
    /// own errors, in order: for tests that must see what the parts did).
    package static func parse(text: [UInt8], file: String, origin: DomainName, parts: Int, partBytesMin: Int,
                              reparseOnError: Bool = true) throws(ZoneLoadError) -> [ParsedRecord] {
        Array(try parse(bytes: text, file: file, origin: origin, directory: nil, files: [], parts: parts, partBytesMin: partBytesMin,
                        reparseOnError: reparseOnError).parsers.map(\.records).joined())
    }

    public static func parse(path: String, origin: DomainName) throws(ZoneLoadError) -> [ParsedRecord] {
        try parseFiles(path: path, origin: origin).records
    }

    /// Parses a master file and what it includes; `files` are their stamps. A large file is
    /// parsed in parts on the machine's cores.
    public static func parseFiles(path: String, origin: DomainName) throws(ZoneLoadError) -> (records: [ParsedRecord], files: [FileStamp]) {
        let (parsers, files) = try parse(path: path, origin: origin, output: .records, parts: processorCount(), partBytesMin: partBytesMin)
        return (parsers.count == 1 ? parsers[0].records : Array(parsers.map(\.records).joined()), files)
    }

    /// `parseFiles` for a zone load: the records packed as they are parsed, one log per part of
    /// the file (in file order), as `Zone.init(origin:logs:...)` takes them.
    package static func parseFileLogs(path: String, origin: DomainName, parts: Int = processorCount(),
                                      partBytesMin: Int = partBytesMin) throws(ZoneLoadError) -> (logs: [RecordLog], files: [FileStamp]) {
        var (parsers, files) = try parse(path: path, origin: origin, output: .logs, parts: parts, partBytesMin: partBytesMin)
        var logs: [RecordLog] = []
        for k in parsers.indices { logs.append(parsers[k].log.take()!) }
        parsers = []
        return (logs, files)
    }

    /// `parseFileLogs`, with each part's log compiled by owner as soon as the part is parsed
    /// (the log then goes): what `Zone.init(origin:compiled:...)` takes. A zone load holds the
    /// records of only the parts being parsed, beside the RRsets compiled so far.
    package static func parseFileCompiled(path: String, origin: DomainName, parts: Int = processorCount(),
                                          partBytesMin: Int = partBytesMin) throws(ZoneLoadError) -> (parts: [CompiledOwners], files: [FileStamp]) {
        var (parsers, files) = try parse(path: path, origin: origin, output: .compiled, parts: parts, partBytesMin: partBytesMin)
        var compiled: [CompiledOwners] = []
        for k in parsers.indices { compiled.append(parsers[k].compiled.take()!) }
        parsers = []
        return (compiled, files)
    }

    /// Once the text is parsed: lets go of what refers to it (the interned names' keys are
    /// slices of it) and compiles the log of a part parsed without errors, if asked to.
    private mutating func finish() {
        names.removeAll()
        lastOwnerText = []
        guard output == .compiled, errors.isEmpty, let log = log.take() else { return }
        compiled = CompiledOwners(log: log)
    }

    private static func parse(path: String, origin: DomainName, output: Output, parts: Int,
                              partBytesMin: Int) throws(ZoneLoadError) -> (parsers: [MasterFileParser], files: [FileStamp]) {
        let position = SourcePosition(file: path, line: 0, column: 0)
        var files: [FileStamp] = []
        let buffer: FileBuffer
        do throws(ZoneError) {
            buffer = try FileBuffer(reading: path, position: position, stamps: &files)
        } catch {
            throw ZoneLoadError([error])
        }
        // The pages are unmapped when the buffer goes: it must outlive every part's copy.
        let parsed = try withExtendedLifetime(buffer) { () throws(ZoneLoadError) in
            try parse(buffer: buffer.bytes, release: buffer.release, file: path, origin: origin, directory: directoryOf(path),
                      files: files, parts: parts, partBytesMin: partBytesMin, output: output)
        }
        if let parsed { return parsed }
        // An error in a part: the file again, parsed from the start (its parts' pages are gone).
        var stamps: [FileStamp] = []
        let bytes: [UInt8]
        do throws(ZoneError) {
            bytes = try readFile(path, position: position, stamps: &stamps)
        } catch {
            throw ZoneLoadError([error])
        }
        return try parseWhole(bytes: bytes, file: path, origin: origin, directory: directoryOf(path), files: files, output: output)
    }

    private static func parse(bytes: [UInt8], file: String, origin: DomainName, directory: String?, files: [FileStamp],
                              parts wanted: Int, partBytesMin: Int,
                              reparseOnError: Bool = true) throws(ZoneLoadError) -> (parsers: [MasterFileParser], files: [FileStamp]) {
        let parsed = try bytes.withUnsafeBufferPointer { buffer throws(ZoneLoadError) in
            try parse(buffer: buffer, release: nil, file: file, origin: origin, directory: directory, files: files, parts: wanted,
                      partBytesMin: partBytesMin, output: .records, reparseOnError: reparseOnError)
        }
        if let parsed { return parsed }
        return try parseWhole(bytes: bytes, file: file, origin: origin, directory: directory, files: files, output: .records)
    }

    /// The smallest part of a file parsed on a core of its own: below this, a part's set-up
    /// (a thread, its name interner, the merge) costs about what it saves.
    public static let partBytesMin = 1 << 20
    /// Parts of one file parsed at once, at most (whatever the core count).
    static let partsMax = 16
    /// A zone load cuts a large file into parts of about this many bytes, more than it has
    /// cores: a part's text and records are held only while it is parsed and compiled.
    static let compiledPartBytes = 2 << 20
    /// A zone load cuts a file into at most this many parts.
    static let compiledPartsMax = 64

    /// Parses `buffer` in parts when it is large (nil: a part had an error, and the caller
    /// parses it again from the start so that the errors are exactly those of one parse);
    /// `release` is told of each part's bytes once they are copied out.
    private static func parse(buffer: UnsafeBufferPointer<UInt8>, release: (@Sendable (Range<Int>) -> Void)?, file: String,
                              origin: DomainName, directory: String?, files: [FileStamp], parts wanted: Int, partBytesMin: Int,
                              output: Output,
                              reparseOnError: Bool = true) throws(ZoneLoadError) -> (parsers: [MasterFileParser], files: [FileStamp])? {
        let count = output == .compiled ? max(wanted, min(compiledPartsMax, buffer.count / compiledPartBytes)) : min(wanted, partsMax)
        let parts = MasterFileSplit.parts(of: buffer, parts: count, partBytesMin: partBytesMin)
        guard parts.count > 1 else {
            let bytes = Array(buffer)
            return try parseWhole(bytes: bytes, file: file, origin: origin, directory: directory, files: files, output: output)
        }
        let results = ParallelResults<MasterFileParser>(count: parts.count)
        let source = SharedBytes(buffer: buffer)
        DispatchQueue.concurrentPerform(iterations: parts.count) { k in
            // The file's name and the origin are shared too: the first part keeps the
            // originals, the others work on copies of their own.
            let ownOrigin = k == 0 ? origin : DomainName(uncheckedWire: origin.wire.withUnsafeBufferPointer { Array($0) })
            let file = k == 0 ? file : String(decoding: Array(file.utf8), as: UTF8.self)
            var parser = MasterFileParser(origin: ownOrigin, output: output)
            let part = parts[k]
            // Room for them at once, instead of growing (and faulting in) the array in steps.
            if parser.log != nil {
                parser.log!.reserve(records: part.recordsEstimate)
            } else {
                parser.records.reserveCapacity(part.recordsEstimate)
            }
            if !part.preamble.isEmpty {
                // Its errors are the earlier part's to report.
                parser.parseFile(bytes: part.preamble, range: 0..<part.preamble.count, firstLine: 1, file: file,
                                 directory: nil, depth: 0)
                parser.errors = []
            }
            // The part's bytes in an array of its own, for as long as it is parsed: every token
            // is a slice of them, and parts sharing one buffer would contend for its reference
            // count on every token.
            let own = Array(UnsafeBufferPointer(rebasing: source.buffer[part.range]))
            release?(part.range)
            parser.parseFile(bytes: own, range: 0..<own.count, firstLine: part.firstLine, file: file,
                             directory: directory, depth: 0)
            parser.finish()
            results.set(k, parser)
        }
        if results.allSatisfy({ $0.errors.isEmpty }) {
            var parsers = results.takeAll()
            for k in parsers.indices.dropFirst() { parsers[0].files += parsers[k].files }
            parsers[0].files = files + parsers[0].files
            let stamps = parsers[0].files
            return (parsers, stamps)
        }
        if !reparseOnError {
            let errors = parts.indices.flatMap { results.take($0).errors }
            throw ZoneLoadError(Array(errors.prefix(ZoneLoadError.errorsMax)))
        }
        return nil
    }

    /// Parses `bytes` in one piece.
    private static func parseWhole(bytes: [UInt8], file: String, origin: DomainName, directory: String?, files: [FileStamp],
                                   output: Output) throws(ZoneLoadError) -> (parsers: [MasterFileParser], files: [FileStamp]) {
        var parser = MasterFileParser(origin: origin, output: output)
        parser.files = files
        parser.parseFile(bytes: bytes, range: 0..<bytes.count, firstLine: 1, file: file, directory: directory, depth: 0)
        guard parser.errors.isEmpty else { throw ZoneLoadError(parser.errors) }
        parser.finish()
        return ([parser], parser.files)
    }

    /// Parts a large file is parsed in: one per core, or `DISCO_ZONE_PARSE_PARTS` (1 parses
    /// every file in one piece; for benchmarks).
    package static func processorCount() -> Int {
        if let text = getenv("DISCO_ZONE_PARSE_PARTS"), let parts = Int(String(cString: text)), parts >= 1 { return parts }
        #if canImport(Glibc)
        return max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        #else
        return 1
        #endif
    }

    private var full: Bool { errors.count >= ZoneLoadError.errorsMax }

    private mutating func record(_ error: ZoneError) {
        if !full { errors.append(error) }
    }

    private mutating func parseFile(bytes: [UInt8], range: Range<Int>, firstLine: Int, file: String, directory: String?, depth: Int) {
        var lexer = Lexer(bytes: bytes, range: range, firstLine: firstLine, file: file)
        while !full {
            let entry: Entry
            do throws(ZoneError) {
                guard let next = try lexer.nextEntry() else { return }
                entry = next
            } catch {
                // A lexical error leaves the rest of the file unreliable: stop this file.
                record(error)
                return
            }
            do throws(ZoneError) {
                try parseEntry(entry, directory: directory, depth: depth)
            } catch {
                record(error)
            }
        }
    }

    private mutating func parseEntry(_ entry: Entry, directory: String?, depth: Int) throws(ZoneError) {
        let first = entry.tokens[0]
        if !entry.startsWithBlank && !first.quoted && first.text.first == UInt8(ascii: "$") {
            try parseDirective(entry, directory: directory, depth: depth)
            return
        }
        var cursor = 0
        let owner: DomainName
        var ownerText = lastOwnerText
        if entry.startsWithBlank {
            guard let lastOwner else { throw ZoneError(entry.position, "no owner name (the first record must name its owner)") }
            owner = lastOwner
        } else if let lastOwner, !first.quoted, first.text.count == lastOwnerText.count,
                  first.text.withUnsafeBytes({ a in lastOwnerText.withUnsafeBytes { b in memcmp(a.baseAddress!, b.baseAddress!, a.count) == 0 } }) {
            // The same owner as the record before, written again (the usual layout).
            owner = lastOwner
            cursor = 1
        } else {
            owner = try name(first)
            ownerText = first.quoted ? [] : first.text
            cursor = 1
        }
        var ttl: UInt32?
        var sawClass = false
        var type: RRType?
        // [TTL] [class] type, or [class] [TTL] type (RFC 1035 §5.1).
        while cursor < entry.tokens.count, type == nil {
            let token = entry.tokens[cursor]
            if ttl == nil, let value = Self.ttlValue(token) {
                ttl = value
            } else if !sawClass, token.isWord("IN") {
                sawClass = true
            } else if !sawClass, let rrClass = RRClass(mnemonic: token.string) {
                guard rrClass == .in else { throw ZoneError(token.position, "class \(token.string) is not served (expected IN)") }
                sawClass = true
            } else if !token.quoted, let parsed = token.text.withUnsafeBytes({ RRType(mnemonic: $0) }) {
                guard !parsed.isMetaType else { throw ZoneError(token.position, "\(token.string) is a meta-type, not a record type") }
                type = parsed
            } else {
                throw ZoneError(token.position, "expected a TTL, class or record type, found '\(token.string)'")
            }
            cursor += 1
        }
        guard let type else {
            throw ZoneError(entry.tokens.last!.position, "expected a record type after the owner, TTL and class")
        }
        let effectiveTTL: UInt32
        if let ttl {
            effectiveTTL = ttl
            lastTTL = ttl
        } else if let defaultTTL {
            effectiveTTL = defaultTTL
        } else if let lastTTL {
            effectiveTTL = lastTTL
        } else {
            throw ZoneError(entry.position, "no TTL (expected a TTL on the record or a $TTL directive before it)")
        }
        let rdataTokens = Array(entry.tokens[cursor...])
        var rdataParser = RDataParser(origin: origin, tokens: rdataTokens, end: entry.tokens.last!.position, names: names)
        let rdata = try rdataParser.parse(type: type)
        lastOwner = owner
        lastOwnerText = ownerText
        let parsed = ParsedRecord(record: ResourceRecord(name: owner, ttl: effectiveTTL, rdata: rdata),
                                  position: entry.tokens[0].position)
        if log != nil {
            log!.append(parsed)
        } else {
            records.append(parsed)
        }
    }

    private mutating func parseDirective(_ entry: Entry, directory: String?, depth: Int) throws(ZoneError) {
        let directive = entry.tokens[0]
        let arguments = entry.tokens.dropFirst()
        switch directive.string.uppercased() {
        case "$ORIGIN":
            guard arguments.count == 1, let token = arguments.first else {
                throw ZoneError(directive.position, "$ORIGIN expects one domain name")
            }
            origin = try name(token)
            names.removeAll()
            lastOwnerText = []
        case "$TTL":
            guard arguments.count == 1, let token = arguments.first else {
                throw ZoneError(directive.position, "$TTL expects one TTL")
            }
            defaultTTL = try Self.parseTTL(token)
        case "$INCLUDE":
            guard (1...2).contains(arguments.count), let pathToken = arguments.first else {
                throw ZoneError(directive.position, "$INCLUDE expects a file name and an optional origin")
            }
            guard let directory else { throw ZoneError(directive.position, "$INCLUDE is not allowed here") }
            guard depth < Self.includeDepthMax else {
                throw ZoneError(directive.position, "$INCLUDE nested deeper than \(Self.includeDepthMax) (an include loop?)")
            }
            let path = String(decoding: try pathToken.unescaped(), as: UTF8.self)
            let resolved = path.hasPrefix("/") ? path : directory + "/" + path
            let bytes = try readFile(resolved, position: pathToken.position, stamps: &files)
            // RFC 1035 §5.1: the origin (and our owner) return to their values after the include.
            let savedOrigin = origin
            let savedOwner = lastOwner
            if arguments.count == 2 { origin = try name(arguments[arguments.startIndex + 1]) }
            names.removeAll()
            lastOwnerText = []
            parseFile(bytes: bytes, range: 0..<bytes.count, firstLine: 1, file: resolved, directory: directoryOf(resolved), depth: depth + 1)
            names.removeAll()
            lastOwnerText = []
            origin = savedOrigin
            lastOwner = savedOwner
        default:
            throw ZoneError(directive.position, "unknown directive \(directive.string) (expected $ORIGIN, $TTL or $INCLUDE)")
        }
    }

    private func name(_ token: Token) throws(ZoneError) -> DomainName {
        try names.name(token, origin: origin)
    }

    /// `parseTTL` without the error: nil for anything that is not a TTL (the field after an
    /// owner is tried as a TTL first, and is usually a class or type).
    static func ttlValue(_ token: Token) -> UInt32? {
        guard let first = token.text.first, first >= 48 && first <= 57 else { return nil }
        return try? parseTTL(token)
    }

    /// A TTL: seconds, or units `1w2d3h4m5s` (case-insensitive), at most 2^31-1.
    static func parseTTL(_ token: Token) throws(ZoneError) -> UInt32 {
        let text = token.text
        guard !text.isEmpty, !token.quoted else { throw ZoneError(token.position, "expected a TTL") }
        var total: UInt64 = 0
        var current: UInt64 = 0
        var sawDigit = false
        var sawUnit = false
        for byte in text {
            if byte >= 48 && byte <= 57 {
                current = current * 10 + UInt64(byte - 48)
                sawDigit = true
                guard current <= UInt64(ttlSecondsMax) else { throw ZoneError(token.position, "TTL too large (max 2147483647)") }
                continue
            }
            let multiplier: UInt64
            switch asciiLowerByte(byte) {
            case UInt8(ascii: "s"): multiplier = 1
            case UInt8(ascii: "m"): multiplier = 60
            case UInt8(ascii: "h"): multiplier = 3600
            case UInt8(ascii: "d"): multiplier = 86400
            case UInt8(ascii: "w"): multiplier = 604800
            default: throw ZoneError(token.position, "expected a TTL (seconds or units like 1h30m), found '\(token.string)'")
            }
            guard sawDigit else { throw ZoneError(token.position, "expected a number before the TTL unit in '\(token.string)'") }
            total += current * multiplier
            current = 0
            sawDigit = false
            sawUnit = true
        }
        if sawDigit { total += current } else if !sawUnit { throw ZoneError(token.position, "expected a TTL") }
        guard total <= UInt64(ttlSecondsMax) else { throw ZoneError(token.position, "TTL too large (max 2147483647)") }
        return UInt32(total)
    }
}

/// Names already parsed in this file under the current origin, by their text: a name written
/// many times (an owner with several records, an SRV target that is also a host) is parsed once
/// and its copies share one buffer, which a large zone's memory feels. The parser empties it
/// whenever the origin changes.
final class NameInterner {
    /// Past this many distinct names, new ones are parsed without being remembered.
    static let namesMax = 1 << 22

    /// A token's text as a dictionary key, hashed in one call.
    private struct Key: Hashable {
        let text: ArraySlice<UInt8>
        static func == (a: Key, b: Key) -> Bool {
            a.text.count == b.text.count && a.text.withUnsafeBytes { a in
                b.text.withUnsafeBytes { b in memcmp(a.baseAddress!, b.baseAddress!, a.count) == 0 }
            }
        }
        func hash(into hasher: inout Hasher) { text.withUnsafeBytes { hasher.combine(bytes: $0) } }
    }

    private var names: [Key: DomainName] = [:]

    func name(_ token: Token, origin: DomainName) throws(ZoneError) -> DomainName {
        guard !token.quoted else { return try parseName(token, origin: origin) }
        let key = Key(text: token.text)
        if let known = names[key] { return known }
        let parsed = try parseName(token, origin: origin)
        if names.count < Self.namesMax { names[key] = parsed }
        return parsed
    }

    func removeAll() { names.removeAll() }
}

func parseName(_ token: Token, origin: DomainName) throws(ZoneError) -> DomainName {
    if token.text.count == 1 && token.text.first == UInt8(ascii: "@") && !token.quoted { return origin }
    do throws(NameError) {
        return try DomainName(parsing: token.text, origin: origin)
    } catch {
        throw ZoneError(token.position, "bad domain name '\(token.string)': \(error)")
    }
}

@inline(__always)
func asciiLowerByte(_ byte: UInt8) -> UInt8 { (byte >= 65 && byte <= 90) ? byte | 0x20 : byte }

func directoryOf(_ path: String) -> String {
    guard let slash = path.lastIndex(of: "/") else { return "." }
    return slash == path.startIndex ? "/" : String(path[..<slash])
}

/// What identifies one version of a file: a reload skips a zone whose files all still have
/// the stamps they had when it was read (as NSD compares modification times).
public struct FileStamp: Hashable, Sendable {
    public var path: String
    var device: UInt64
    var inode: UInt64
    var size: Int64
    var modifiedSeconds: Int
    var modifiedNanoseconds: Int

    /// The stamp of the file at `path` now, or nil if it cannot be read.
    public static func current(_ path: String) -> FileStamp? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return FileStamp(path: path, info)
    }

    init(path: String, _ info: stat) {
        self.path = path
        device = UInt64(info.st_dev)
        inode = UInt64(info.st_ino)
        size = Int64(info.st_size)
        modifiedSeconds = info.st_mtim.tv_sec
        modifiedNanoseconds = info.st_mtim.tv_nsec
    }
}

/// Reads a whole file; `stamps` gets its stamp, taken before the read (a change during the
/// read shows at the next reload).
func readFile(_ path: String, position: SourcePosition, stamps: inout [FileStamp]) throws(ZoneError) -> [UInt8] {
    let buffer = try FileBuffer(reading: path, position: position, stamps: &stamps)
    // The pages are unmapped when the buffer goes, which may be right after its last use.
    return withExtendedLifetime(buffer) { Array(buffer.bytes) }
}

/// A whole file read into memory of its own (mapped anonymous pages, not the heap), for a
/// zone load: once a part of it has been copied out to be parsed, its pages go back to the
/// kernel (`release`), so the file is not held whole beside the records parsed from it.
final class FileBuffer: @unchecked Sendable {
    // @unchecked: the pages are written only while reading, before `bytes` is handed out;
    // `release` only drops pages (madvise), which is safe from any thread.
    let bytes: UnsafeBufferPointer<UInt8>
    private let mappedBytes: Int

    init(reading path: String, position: SourcePosition, stamps: inout [FileStamp]) throws(ZoneError) {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { throw ZoneError(position, "cannot open \(path): \(String(cString: strerror(errno)))") }
        defer { close(descriptor) }
        var info = stat()
        guard fstat(descriptor, &info) == 0 else { throw ZoneError(position, "cannot read \(path): \(String(cString: strerror(errno)))") }
        stamps.append(FileStamp(path: path, info))
        guard (info.st_mode & S_IFMT) == S_IFREG else {
            let reason = (info.st_mode & S_IFMT) == S_IFDIR ? String(cString: strerror(EISDIR)) : "not a regular file"
            throw ZoneError(position, "cannot read \(path): \(reason)")
        }
        guard info.st_size <= MasterFileParser.fileBytesMax else {
            throw ZoneError(position, "\(path) is larger than \(MasterFileParser.fileBytesMax) bytes")
        }
        // Room for a file that grew since fstat, up to the limit's check below.
        let capacity = Int(info.st_size) + 1
        guard let memory = mmap(nil, capacity, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), memory != MAP_FAILED else {
            throw ZoneError(position, "cannot read \(path): \(String(cString: strerror(errno)))")
        }
        var count = 0
        while count < capacity {
            let n = read(descriptor, memory + count, capacity - count)
            if n < 0 && errno == EINTR { continue }
            if n < 0 {
                let reason = String(cString: strerror(errno))
                munmap(memory, capacity)
                throw ZoneError(position, "cannot read \(path): \(reason)")
            }
            if n == 0 { break }
            count += n
        }
        guard count < capacity else {
            // It grew while being read: a change that the next reload sees; read it whole then.
            munmap(memory, capacity)
            throw ZoneError(position, "cannot read \(path): it changed while being read")
        }
        bytes = UnsafeBufferPointer(start: memory.assumingMemoryBound(to: UInt8.self), count: count)
        mappedBytes = capacity
    }

    deinit {
        munmap(UnsafeMutableRawPointer(mutating: bytes.baseAddress), mappedBytes)
    }

    /// Gives back the pages that lie wholly inside `range` (their bytes read as zeros after).
    var release: @Sendable (Range<Int>) -> Void {
        let base = UInt(bitPattern: bytes.baseAddress)
        let total = bytes.count
        return { range in
            let page = Int(sysconf(Int32(_SC_PAGESIZE)))
            let start = (range.lowerBound + page - 1) / page * page
            let end = range.upperBound >= total ? (total + page - 1) / page * page : range.upperBound / page * page
            guard end > start, let pointer = UnsafeMutableRawPointer(bitPattern: base + UInt(start)) else { return }
            madvise(pointer, end - start, Int32(MADV_DONTNEED))
        }
    }
}

/// A buffer read by several threads at once (the parts of one file).
struct SharedBytes: @unchecked Sendable {
    // @unchecked: read-only while shared.
    let buffer: UnsafeBufferPointer<UInt8>
}
