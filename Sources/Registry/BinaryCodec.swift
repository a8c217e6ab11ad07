/// The catalog's compact binary form: Raft log entries (tag `CatalogCommand.binaryEntryTag`)
/// and registry.db rows. Every server decodes every entry, so this is the apply path's cost:
/// a registration decodes in a few hundred nanoseconds where Foundation's JSONDecoder took tens
/// of microseconds.
///
/// Unsigned integers are LEB128 varints, signed ones zigzag varints, strings a varint length
/// and UTF-8, optionals a presence byte, dictionaries their pairs in key order (so one value
/// has one encoding). A decoder error names the byte offset and what was expected.
struct BinaryWriter {
    private(set) var bytes: [UInt8] = []

    init(tag: UInt8? = nil) {
        bytes.reserveCapacity(128)
        if let tag { bytes.append(tag) }
    }

    mutating func byte(_ value: UInt8) { bytes.append(value) }

    mutating func unsigned(_ value: UInt64) {
        var rest = value
        while rest >= 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: rest) | 0x80)
            rest >>= 7
        }
        bytes.append(UInt8(rest))
    }

    mutating func signed(_ value: Int) {
        let wide = Int64(value)
        unsigned(UInt64(bitPattern: (wide << 1) ^ (wide >> 63)))
    }

    mutating func bool(_ value: Bool) { bytes.append(value ? 1 : 0) }

    mutating func string(_ value: String) {
        var value = value
        value.withUTF8 { utf8 in
            unsigned(UInt64(utf8.count))
            bytes.append(contentsOf: utf8)
        }
    }

    mutating func double(_ value: Double) {
        var bits = value.bitPattern
        for _ in 0..<8 {
            bytes.append(UInt8(truncatingIfNeeded: bits))
            bits >>= 8
        }
    }

    mutating func optional<T>(_ value: T?, _ write: (inout BinaryWriter, T) -> Void) {
        if let value {
            bytes.append(1)
            write(&self, value)
        } else {
            bytes.append(0)
        }
    }

    mutating func strings(_ values: [String]) {
        unsigned(UInt64(values.count))
        for value in values { string(value) }
    }

    mutating func map(_ values: [String: String]) {
        unsigned(UInt64(values.count))
        for key in values.keys.sorted() {
            string(key)
            string(values[key]!)
        }
    }
}

struct BinaryReader {
    struct Failure: Error, CustomStringConvertible {
        let offset: Int
        let expected: String
        var description: String { "byte \(offset): expected \(expected)" }
    }

    private let bytes: [UInt8]
    private(set) var offset: Int
    /// Records carry the fields added with entry tag 0x42 (check thresholds, headers, TLS;
    /// EnableTagOverride).
    var extendedChecks: Bool

    init(_ bytes: [UInt8], from offset: Int = 0, extendedChecks: Bool = true) {
        self.bytes = bytes
        self.offset = offset
        self.extendedChecks = extendedChecks
    }

    var atEnd: Bool { offset == bytes.count }

    func fail(_ expected: String) -> Failure { Failure(offset: offset, expected: expected) }

    mutating func byte(_ what: String = "a byte") throws(Failure) -> UInt8 {
        guard offset < bytes.count else { throw fail(what + " (the entry ends)") }
        defer { offset += 1 }
        return bytes[offset]
    }

    mutating func unsigned() throws(Failure) -> UInt64 {
        var value: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            let start = offset
            let next = try byte("a varint")
            guard shift < 64, shift < 63 || next <= 1 else {
                offset = start
                throw fail("a varint of at most 64 bits")
            }
            value |= UInt64(next & 0x7F) << shift
            if next < 0x80 { return value }
            shift += 7
        }
    }

    mutating func signed() throws(Failure) -> Int {
        let raw = try unsigned()
        let wide = Int64(bitPattern: (raw >> 1) ^ (0 &- (raw & 1)))
        guard let value = Int(exactly: wide) else { throw fail("an integer that fits") }
        return value
    }

    mutating func bool() throws(Failure) -> Bool {
        switch try byte("a boolean") {
        case 0: return false
        case 1: return true
        default:
            offset -= 1
            throw fail("a boolean (0 or 1)")
        }
    }

    mutating func string() throws(Failure) -> String {
        let count = try count("a string length")
        let start = offset
        guard let text = String(validating: bytes[offset..<offset + count], as: UTF8.self) else {
            throw fail("UTF-8 text")
        }
        offset = start + count
        return text
    }

    mutating func double() throws(Failure) -> Double {
        guard bytes.count - offset >= 8 else { throw fail("8 bytes of a number (the entry ends)") }
        var bits: UInt64 = 0
        for i in (0..<8).reversed() { bits = bits << 8 | UInt64(bytes[offset + i]) }
        offset += 8
        return Double(bitPattern: bits)
    }

    mutating func optional<T>(_ read: (inout BinaryReader) throws(Failure) -> T) throws(Failure) -> T? {
        try bool() ? try read(&self) : nil
    }

    /// A length or element count: each byte or element takes at least one byte, so a value
    /// above what is left of the entry is corrupt (and is refused before allocating for it).
    mutating func count(_ what: String = "a count") throws(Failure) -> Int {
        let start = offset
        let value = try unsigned()
        guard value <= UInt64(bytes.count - offset) else {
            offset = start
            throw fail("\(what) within the entry")
        }
        return Int(value)
    }

    mutating func strings() throws(Failure) -> [String] {
        let count = try count()
        var values: [String] = []
        values.reserveCapacity(count)
        for _ in 0..<count { values.append(try string()) }
        return values
    }

    mutating func map() throws(Failure) -> [String: String] {
        let count = try count()
        var values: [String: String] = [:]
        values.reserveCapacity(count)
        for _ in 0..<count {
            let key = try string()
            values[key] = try string()
        }
        return values
    }
}

// MARK: - The catalog's types

extension HealthStatus {
    var code: UInt8 {
        switch self {
        case .passing: 0
        case .warning: 1
        case .critical: 2
        }
    }

    init(from reader: inout BinaryReader) throws(BinaryReader.Failure) {
        let start = reader.offset
        switch try reader.byte("a check status") {
        case 0: self = .passing
        case 1: self = .warning
        case 2: self = .critical
        default: throw BinaryReader.Failure(offset: start, expected: "a check status (0, 1 or 2)")
        }
    }
}

extension NodeRecord {
    func write(to writer: inout BinaryWriter) {
        writer.string(name)
        writer.string(address)
        writer.map(meta)
    }

    init(from reader: inout BinaryReader) throws(BinaryReader.Failure) {
        self.init(name: try reader.string(), address: try reader.string(), meta: try reader.map())
    }
}

extension ServiceInstance {
    func write(to writer: inout BinaryWriter) {
        writer.string(id)
        writer.string(node)
        writer.string(name)
        writer.strings(tags)
        writer.string(address)
        writer.signed(port)
        writer.map(meta)
        writer.signed(weights.passing)
        writer.signed(weights.warning)
        writer.string(registeredBy)
        // Since entry tag 0x42.
        writer.bool(enableTagOverride)
    }

    init(from reader: inout BinaryReader) throws(BinaryReader.Failure) {
        self.init(id: try reader.string(), node: try reader.string(), name: try reader.string(), tags: try reader.strings(),
                  address: try reader.string(), port: try reader.signed(), meta: try reader.map(),
                  weights: Weights(passing: try reader.signed(), warning: try reader.signed()), registeredBy: try reader.string())
        if reader.extendedChecks { enableTagOverride = try reader.bool() }
    }

    /// A registry.db row: with the fields of entry tag 0x42 if it goes on (written since).
    init(fromRow reader: inout BinaryReader) throws(BinaryReader.Failure) {
        reader.extendedChecks = false
        defer { reader.extendedChecks = true }
        try self.init(from: &reader)
        if !reader.atEnd { enableTagOverride = try reader.bool() }
    }
}

extension CheckDefinition {
    func write(to writer: inout BinaryWriter) {
        writer.optional(http) { $0.string($1) }
        writer.optional(method) { $0.string($1) }
        writer.optional(tcp) { $0.string($1) }
        for seconds in [ttlSeconds, intervalSeconds, timeoutSeconds, deregisterCriticalAfterSeconds] {
            writer.optional(seconds) { $0.double($1) }
        }
        writeExtension(to: &writer)
    }

    /// The fields added with entry tag 0x42. Registry.db rows written before them end without.
    func writeExtension(to writer: inout BinaryWriter) {
        writer.optional(header) { writer, header in
            writer.unsigned(UInt64(header.count))
            for name in header.keys.sorted() {
                writer.string(name)
                writer.strings(header[name]!)
            }
        }
        writer.optional(tlsSkipVerify) { $0.bool($1) }
        for count in [successBeforePassing, failuresBeforeWarning, failuresBeforeCritical] {
            writer.optional(count) { $0.signed($1) }
        }
    }

    mutating func readExtension(from reader: inout BinaryReader) throws(BinaryReader.Failure) {
        header = try reader.optional { r throws(BinaryReader.Failure) in
            let count = try r.count("a header count")
            var header: [String: [String]] = [:]
            for _ in 0..<count {
                let name = try r.string()
                header[name] = try r.strings()
            }
            return header
        }
        tlsSkipVerify = try reader.optional { r throws(BinaryReader.Failure) in try r.bool() }
        successBeforePassing = try reader.optional { r throws(BinaryReader.Failure) in try r.signed() }
        failuresBeforeWarning = try reader.optional { r throws(BinaryReader.Failure) in try r.signed() }
        failuresBeforeCritical = try reader.optional { r throws(BinaryReader.Failure) in try r.signed() }
    }

    init(from reader: inout BinaryReader) throws(BinaryReader.Failure) {
        self.init(http: try reader.optional { r throws(BinaryReader.Failure) in try r.string() },
                  method: try reader.optional { r throws(BinaryReader.Failure) in try r.string() },
                  tcp: try reader.optional { r throws(BinaryReader.Failure) in try r.string() },
                  ttlSeconds: try reader.optional { r throws(BinaryReader.Failure) in try r.double() },
                  intervalSeconds: try reader.optional { r throws(BinaryReader.Failure) in try r.double() },
                  timeoutSeconds: try reader.optional { r throws(BinaryReader.Failure) in try r.double() },
                  deregisterCriticalAfterSeconds: try reader.optional { r throws(BinaryReader.Failure) in try r.double() })
        if reader.extendedChecks { try readExtension(from: &reader) }
    }
}

extension CheckRecord {
    func write(to writer: inout BinaryWriter) {
        writer.string(id)
        writer.string(node)
        writer.string(name)
        writer.string(serviceID)
        writer.byte(status.code)
        writer.string(output)
        writer.string(notes)
        definition.write(to: &writer)
    }

    init(from reader: inout BinaryReader) throws(BinaryReader.Failure) {
        self.init(id: try reader.string(), node: try reader.string(), name: try reader.string(), serviceID: try reader.string(),
                  status: try HealthStatus(from: &reader), output: try reader.string(), notes: try reader.string(),
                  definition: try CheckDefinition(from: &reader))
    }
}

extension CheckRecord {
    /// A registry.db row: written with the definition's extension since entry tag 0x42, and
    /// without it before, so the extension is read if the row goes on.
    init(fromRow reader: inout BinaryReader) throws(BinaryReader.Failure) {
        reader.extendedChecks = false
        defer { reader.extendedChecks = true }
        try self.init(from: &reader)
        if !reader.atEnd { try definition.readExtension(from: &reader) }
    }
}

extension CatalogCommand {
    /// Batches inside batches deeper than this are refused: the decoder recurses per level.
    static let batchDepthMax = 4

    private enum Case: UInt8 {
        case register = 1, deregister, updateCheck, batch, checkStatuses, checkRunners
    }

    func write(to writer: inout BinaryWriter) {
        switch self {
        case .register(let node, let service, let checks, let replaceChecks):
            writer.byte(Case.register.rawValue)
            node.write(to: &writer)
            writer.optional(service) { writer, service in service.write(to: &writer) }
            writer.unsigned(UInt64(checks.count))
            for registration in checks {
                registration.check.write(to: &writer)
                writer.bool(registration.statusGiven)
            }
            writer.bool(replaceChecks)
        case .deregister(let node, let serviceID, let checkID):
            writer.byte(Case.deregister.rawValue)
            writer.string(node)
            writer.optional(serviceID) { $0.string($1) }
            writer.optional(checkID) { $0.string($1) }
        case .updateCheck(let node, let checkID, let status, let output):
            writer.byte(Case.updateCheck.rawValue)
            writer.string(node)
            writer.string(checkID)
            writer.byte(status.code)
            writer.string(output)
        case .batch(let commands):
            writer.byte(Case.batch.rawValue)
            writer.unsigned(UInt64(commands.count))
            for command in commands { command.write(to: &writer) }
        case .checkStatuses(let updates):
            writer.byte(Case.checkStatuses.rawValue)
            writer.unsigned(UInt64(updates.count))
            for update in updates {
                writer.string(update.node)
                writer.string(update.checkID)
                writer.byte(update.status.code)
                writer.string(update.output)
            }
        case .checkRunners(let servers):
            writer.byte(Case.checkRunners.rawValue)
            writer.unsigned(UInt64(servers.count))
            for server in servers { writer.unsigned(server) }
        }
    }

    init(from reader: inout BinaryReader, depth: Int = 0) throws(BinaryReader.Failure) {
        let start = reader.offset
        let byte = try reader.byte("a command")
        // Entries in the first binary form (0x41) had only the first four commands.
        let last = reader.extendedChecks ? Case.checkRunners : Case.batch
        guard let kind = Case(rawValue: byte), kind.rawValue <= last.rawValue else {
            throw BinaryReader.Failure(offset: start, expected: "a command (1 to \(last.rawValue))")
        }
        switch kind {
        case .register:
            let node = try NodeRecord(from: &reader)
            let service = try reader.optional { r throws(BinaryReader.Failure) in try ServiceInstance(from: &r) }
            let count = try reader.count()
            var checks: [CheckRegistration] = []
            for _ in 0..<count {
                checks.append(CheckRegistration(try CheckRecord(from: &reader), statusGiven: try reader.bool()))
            }
            self = .register(node: node, service: service, checks: checks, replaceChecks: try reader.bool())
        case .deregister:
            self = .deregister(node: try reader.string(),
                               serviceID: try reader.optional { r throws(BinaryReader.Failure) in try r.string() },
                               checkID: try reader.optional { r throws(BinaryReader.Failure) in try r.string() })
        case .updateCheck:
            self = .updateCheck(node: try reader.string(), checkID: try reader.string(), status: try HealthStatus(from: &reader),
                                output: try reader.string())
        case .batch:
            guard depth < Self.batchDepthMax else {
                throw BinaryReader.Failure(offset: start, expected: "batches nested at most \(Self.batchDepthMax) deep")
            }
            let count = try reader.count()
            var commands: [CatalogCommand] = []
            commands.reserveCapacity(count)
            for _ in 0..<count { commands.append(try CatalogCommand(from: &reader, depth: depth + 1)) }
            self = .batch(commands)
        case .checkStatuses:
            let count = try reader.count()
            var updates: [CheckStatusUpdate] = []
            updates.reserveCapacity(count)
            for _ in 0..<count {
                updates.append(CheckStatusUpdate(node: try reader.string(), checkID: try reader.string(),
                                                 status: try HealthStatus(from: &reader), output: try reader.string()))
            }
            self = .checkStatuses(updates)
        case .checkRunners:
            let count = try reader.count()
            var servers: [UInt64] = []
            servers.reserveCapacity(count)
            for _ in 0..<count { servers.append(try reader.unsigned()) }
            self = .checkRunners(servers)
        }
    }
}
