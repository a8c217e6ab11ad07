/// A question (RFC 1035 §4.1.2).
public struct Question: Hashable, Sendable, CustomStringConvertible {
    public var name: DomainName
    public var type: RRType
    public var rrClass: RRClass

    public init(name: DomainName, type: RRType, rrClass: RRClass = .in) {
        self.name = name
        self.type = type
        self.rrClass = rrClass
    }

    public var description: String { "\(name) \(rrClass) \(type)" }
}

/// A resource record (RFC 1035 §4.1.3).
public struct ResourceRecord: Hashable, Sendable, CustomStringConvertible {
    public var name: DomainName
    public var rrClass: RRClass
    public var ttl: UInt32
    public var rdata: RData

    public init(name: DomainName, rrClass: RRClass = .in, ttl: UInt32, rdata: RData) {
        self.name = name
        self.rrClass = rrClass
        self.ttl = ttl
        self.rdata = rdata
    }

    public var type: RRType { rdata.type }

    /// Presentation format: `owner TTL CLASS TYPE RDATA`, tab-separated as dig prints it.
    public var description: String { "\(name)\t\(ttl)\t\(rrClass)\t\(type)\t\(rdata)" }

    public func write(to writer: inout WireWriter, compress: Bool = true) throws(WireOverflow) {
        try writer.name(name, compress: compress)
        try writer.u16(type.rawValue)
        try writer.u16(rrClass.rawValue)
        try writer.u32(ttl)
        let lengthAt = writer.count
        try writer.u16(0)
        try rdata.write(to: &writer, compress: compress)
        writer.patchU16(UInt16(writer.count - lengthAt - 2), at: lengthAt)
    }
}

/// EDNS(0) information carried in an OPT pseudo-record (RFC 6891 §6).
public struct EDNS: Hashable, Sendable {
    /// RFC 6891 §6.2.5: a payload size below 512 is treated as 512.
    public static let udpPayloadBytesMin = 512

    public var udpPayloadSize: UInt16
    /// The upper 8 bits of the 12-bit rcode.
    public var extendedRCode: UInt8
    public var version: UInt8
    /// RFC 3225: DNSSEC OK.
    public var dnssecOK: Bool
    public var options: [Option]

    public struct Option: Hashable, Sendable {
        public var code: UInt16
        public var data: [UInt8]
        public init(code: UInt16, data: [UInt8]) {
            self.code = code
            self.data = data
        }
    }

    public init(udpPayloadSize: UInt16 = 1232, extendedRCode: UInt8 = 0, version: UInt8 = 0,
                dnssecOK: Bool = false, options: [Option] = []) {
        self.udpPayloadSize = udpPayloadSize
        self.extendedRCode = extendedRCode
        self.version = version
        self.dnssecOK = dnssecOK
        self.options = options
    }

    /// The OPT record's TTL field: extended rcode, version, DO and Z (RFC 6891 §6.1.3).
    public var ttlField: UInt32 {
        UInt32(extendedRCode) << 24 | UInt32(version) << 16 | (dnssecOK ? 0x8000 : 0)
    }

    /// Size of an OPT record without options: root name, type, class, TTL, RDLENGTH.
    public static let optRecordBytesMin = 11
}

/// A DNS message: header, question and the three record sections, with EDNS lifted out of
/// the additional section.
public struct Message: Hashable, Sendable {
    /// RFC 1035 §4.2.1: a UDP message without EDNS is at most 512 bytes.
    public static let udpMessageBytesClassic = 512
    /// RFC 1035 §4.2.2: TCP messages carry a 16-bit length.
    public static let messageBytesMax = 65535
    public static let headerBytes = 12

    public var id: UInt16
    public var flags: HeaderFlags
    public var questions: [Question]
    public var answers: [ResourceRecord]
    public var authority: [ResourceRecord]
    public var additional: [ResourceRecord]
    public var edns: EDNS?

    public init(id: UInt16 = 0, flags: HeaderFlags = HeaderFlags(rawValue: 0), questions: [Question] = [],
                answers: [ResourceRecord] = [], authority: [ResourceRecord] = [],
                additional: [ResourceRecord] = [], edns: EDNS? = nil) {
        self.id = id
        self.flags = flags
        self.questions = questions
        self.answers = answers
        self.authority = authority
        self.additional = additional
        self.edns = edns
    }

    /// A query as a stub resolver sends it.
    public static func query(_ name: DomainName, _ type: RRType, id: UInt16 = 0, recursionDesired: Bool = false,
                             edns: EDNS? = EDNS()) -> Message {
        var flags = HeaderFlags(rawValue: 0)
        flags.rd = recursionDesired
        return Message(id: id, flags: flags, questions: [Question(name: name, type: type)], edns: edns)
    }

    /// The full 12-bit rcode: header bits plus the OPT's extended bits.
    public var rcode: RCode {
        get { RCode(rawValue: UInt16(edns?.extendedRCode ?? 0) << 4 | UInt16(flags.rcodeBits)) }
        set {
            flags.rcodeBits = newValue.headerBits
            if edns != nil { edns!.extendedRCode = newValue.extendedBits }
        }
    }

    /// Parses a whole message. Every count is honoured and nothing may follow the last record.
    public init(parsing bytes: [UInt8]) throws(WireError) {
        let result: Result<Message, WireError> = bytes.withUnsafeBytes { buffer in
            do throws(WireError) {
                return .success(try Message.parse(buffer))
            } catch {
                return .failure(error)
            }
        }
        self = try result.get()
    }

    public static func parse(_ buffer: UnsafeRawBufferPointer) throws(WireError) -> Message {
        var reader = WireReader(buffer)
        let id = try reader.u16()
        let flags = HeaderFlags(rawValue: try reader.u16())
        let qdcount = Int(try reader.u16())
        let ancount = Int(try reader.u16())
        let nscount = Int(try reader.u16())
        let arcount = Int(try reader.u16())
        var message = Message(id: id, flags: flags)
        for _ in 0..<qdcount {
            let name = try reader.name()
            message.questions.append(Question(name: name, type: RRType(try reader.u16()),
                                              rrClass: RRClass(rawValue: try reader.u16())))
        }
        func record() throws(WireError) -> (ResourceRecord?, EDNS?) {
            let ownerAt = reader.offset
            let name = try reader.name()
            let type = RRType(try reader.u16())
            let rrClass = try reader.u16()
            let ttl = try reader.u32()
            let length = Int(try reader.u16())
            guard reader.offset + length <= reader.limit else { throw WireError(offset: reader.offset, reason: .truncated) }
            var rdataReader = reader
            rdataReader.limit = reader.offset + length
            reader.offset += length
            if type == .opt {
                guard name.isRoot else { throw WireError(offset: ownerAt, reason: .badOPT("owner is not the root")) }
                var options: [EDNS.Option] = []
                while rdataReader.remaining > 0 {
                    let code = try rdataReader.u16()
                    let optionLength = Int(try rdataReader.u16())
                    options.append(EDNS.Option(code: code, data: try rdataReader.bytes(optionLength)))
                }
                return (nil, EDNS(udpPayloadSize: rrClass, extendedRCode: UInt8(ttl >> 24),
                                  version: UInt8((ttl >> 16) & 0xFF), dnssecOK: ttl & 0x8000 != 0, options: options))
            }
            let rdata = try RData.parse(type: type, from: &rdataReader)
            return (ResourceRecord(name: name, rrClass: RRClass(rawValue: rrClass), ttl: ttl, rdata: rdata), nil)
        }
        for (count, section) in [(ancount, 0), (nscount, 1), (arcount, 2)] {
            for _ in 0..<count {
                let at = reader.offset
                let (rr, edns) = try record()
                if let edns {
                    guard section == 2 else { throw WireError(offset: at, reason: .badOPT("OPT outside the additional section")) }
                    guard message.edns == nil else { throw WireError(offset: at, reason: .duplicateOPT) }
                    message.edns = edns
                } else if let rr {
                    switch section {
                    case 0: message.answers.append(rr)
                    case 1: message.authority.append(rr)
                    default: message.additional.append(rr)
                    }
                }
            }
        }
        guard reader.remaining == 0 else { throw WireError(offset: reader.offset, reason: .trailingBytes) }
        return message
    }

    /// Serialises with name compression. Throws `WireOverflow` past `capacity` bytes.
    public func serialized(capacity: Int = Message.messageBytesMax, compress: Bool = true) throws(WireOverflow) -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: capacity)
        let table = UnsafeMutablePointer<UInt16>.allocate(capacity: WireWriter.compressionEntriesMax)
        defer { table.deallocate() }
        let result: Result<Int, WireOverflow> = buffer.withUnsafeMutableBytes { raw in
            var writer = WireWriter(buffer: raw, compressionTable: table)
            do throws(WireOverflow) {
                try write(to: &writer, compress: compress)
                return .success(writer.count)
            } catch {
                return .failure(error)
            }
        }
        let count = try result.get()
        buffer.removeSubrange(count...)
        return buffer
    }

    public func write(to writer: inout WireWriter, compress: Bool = true) throws(WireOverflow) {
        try writer.u16(id)
        try writer.u16(flags.rawValue)
        try writer.u16(UInt16(questions.count))
        try writer.u16(UInt16(answers.count))
        try writer.u16(UInt16(authority.count))
        try writer.u16(UInt16(additional.count + (edns == nil ? 0 : 1)))
        for question in questions {
            try writer.name(question.name, compress: compress)
            try writer.u16(question.type.rawValue)
            try writer.u16(question.rrClass.rawValue)
        }
        for rr in answers { try rr.write(to: &writer, compress: compress) }
        for rr in authority { try rr.write(to: &writer, compress: compress) }
        for rr in additional { try rr.write(to: &writer, compress: compress) }
        if let edns {
            try writer.u8(0)
            try writer.u16(RRType.opt.rawValue)
            try writer.u16(edns.udpPayloadSize)
            try writer.u32(edns.ttlField)
            let lengthAt = writer.count
            try writer.u16(0)
            for option in edns.options {
                try writer.u16(option.code)
                try writer.u16(UInt16(option.data.count))
                try writer.bytes(option.data)
            }
            writer.patchU16(UInt16(writer.count - lengthAt - 2), at: lengthAt)
        }
    }
}

extension Message: CustomStringConvertible {
    /// A dig-like rendering: header line, flags, then each non-empty section. Stable, so
    /// data-driven tests compare it as text.
    public var description: String {
        var lines: [String] = []
        lines.append("opcode: \(flags.opcode), rcode: \(rcode), flags: \(flags.flagNames)")
        if let edns {
            var line = "edns: version \(edns.version), udp \(edns.udpPayloadSize)\(edns.dnssecOK ? ", do" : "")"
            for option in edns.options {
                if option.code == 15, option.data.count >= 2 {
                    line += ", ede \(UInt16(option.data[0]) << 8 | UInt16(option.data[1]))"
                } else {
                    line += ", option \(option.code) \(option.data.count) bytes"
                }
            }
            lines.append(line)
        }
        for q in questions { lines.append(";\(q.name)\t\(q.rrClass)\t\(q.type)") }
        for (title, section) in [("ANSWER", answers), ("AUTHORITY", authority), ("ADDITIONAL", additional)]
        where !section.isEmpty {
            lines.append(";; \(title)")
            lines.append(contentsOf: section.map(\.description))
        }
        return lines.joined(separator: "\n")
    }
}
