import DNSWire
import Testing

@Suite("messages")
struct MessageTests {
    static func sample() throws -> Message {
        let origin = try DomainName("example.com.")
        let www = try DomainName("www.example.com.")
        return Message(
            id: 0xBEEF, flags: HeaderFlags(rawValue: 0x8500),
            questions: [Question(name: www, type: .a)],
            answers: [
                ResourceRecord(name: www, ttl: 60, rdata: .a(IPv4Address(192, 0, 2, 1))),
                ResourceRecord(name: www, ttl: 60, rdata: .aaaa(IPv6Address("2001:db8::1")!)),
                ResourceRecord(name: origin, ttl: 3600, rdata: .mx(preference: 10, exchange: try DomainName("mail.example.com."))),
                ResourceRecord(name: origin, ttl: 3600, rdata: .txt([Array("hello world".utf8), [0, 34, 92]])),
                ResourceRecord(name: origin, ttl: 1, rdata: .soa(SOAData(mname: try DomainName("ns1.example.com."),
                    rname: try DomainName("hostmaster.example.com."), serial: 1, refresh: 2, retry: 3, expire: 4, minimum: 5))),
                ResourceRecord(name: try DomainName("_sip._tcp.example.com."), ttl: 5,
                               rdata: .srv(priority: 1, weight: 2, port: 5060, target: www)),
                ResourceRecord(name: origin, ttl: 5, rdata: .caa(flags: 0, tag: Array("issue".utf8), value: Array("ca.example".utf8))),
                ResourceRecord(name: origin, ttl: 5, rdata: .naptr(order: 100, preference: 10, flags: Array("S".utf8),
                    services: Array("SIP+D2U".utf8), regexp: [], replacement: try DomainName("_sip._udp.example.com."))),
                ResourceRecord(name: origin, ttl: 5, rdata: .sshfp(algorithm: 4, fingerprintType: 2, fingerprint: [1, 2, 3])),
                ResourceRecord(name: origin, ttl: 5, rdata: .tlsa(usage: 3, selector: 1, matchingType: 1, data: [0xAB, 0xCD])),
                ResourceRecord(name: origin, ttl: 5, rdata: .hinfo(cpu: Array("x86".utf8), os: Array("Linux".utf8))),
                ResourceRecord(name: try DomainName("old.example.com."), ttl: 5, rdata: .dname(try DomainName("new.example.net."))),
                ResourceRecord(name: origin, ttl: 5, rdata: .unknown(RRType(65280), [0x0A, 0, 0, 1])),
            ],
            authority: [ResourceRecord(name: origin, ttl: 3600, rdata: .ns(try DomainName("ns1.example.com.")))],
            additional: [ResourceRecord(name: try DomainName("ns1.example.com."), ttl: 3600, rdata: .a(IPv4Address(192, 0, 2, 53)))],
            edns: EDNS(udpPayloadSize: 1232, dnssecOK: true, options: [EDNS.Option(code: 10, data: [1, 2, 3, 4, 5, 6, 7, 8])]))
    }

    @Test func roundTripWithAndWithoutCompression() throws {
        let message = try Self.sample()
        let compressed = try message.serialized()
        let plain = try message.serialized(compress: false)
        #expect(compressed.count < plain.count)
        #expect(try Message(parsing: compressed) == message)
        #expect(try Message(parsing: plain) == message)
    }

    @Test func compressionPointsToEarlierNames() throws {
        let www = try DomainName("www.example.com.")
        let message = Message(questions: [Question(name: www, type: .a)],
                              answers: [ResourceRecord(name: www, ttl: 1, rdata: .cname(try DomainName("web.example.com.")))])
        let bytes = try message.serialized()
        // Header 12, question 17+4, answer owner = pointer to 12 (0xC00C).
        #expect(bytes[33] == 0xC0 && bytes[34] == 12)
        // The CNAME target "web" + pointer to "example.com." at offset 16.
        #expect(Array(bytes[45..<51]) == [3, 119, 101, 98, 0xC0, 16])
    }

    @Test func srvTargetsAreNotCompressed() throws {
        let www = try DomainName("www.example.com.")
        let message = Message(questions: [Question(name: www, type: .srv)],
                              answers: [ResourceRecord(name: www, ttl: 1, rdata: .srv(priority: 0, weight: 0, port: 1, target: www))])
        let bytes = try message.serialized()
        #expect(bytes.suffix(17) == ArraySlice(www.wire))
    }

    @Test func overflowThrows() throws {
        let message = try Self.sample()
        #expect(throws: WireOverflow.self) { try message.serialized(capacity: 100) }
    }

    @Test func rcodeUsesExtendedBits() throws {
        var message = Message(edns: EDNS())
        message.rcode = .badVers
        #expect(message.flags.rcodeBits == 0)
        #expect(message.edns?.extendedRCode == 1)
        let parsed = try Message(parsing: try message.serialized())
        #expect(parsed.rcode == .badVers)
        #expect(parsed.rcode.description == "BADVERS")
    }

    @Test func presentation() throws {
        let message = try Self.sample()
        let text = message.answers.map(\.description)
        #expect(text.contains("example.com.\t3600\tIN\tTXT\t\"hello world\" \"\\000\\\"\\\\\""))
        #expect(text.contains("example.com.\t5\tIN\tTYPE65280\t\\# 4 0A000001"))
        #expect(text.contains("example.com.\t5\tIN\tCAA\t0 issue \"ca.example\""))
        #expect(text.contains("www.example.com.\t60\tIN\tAAAA\t2001:db8::1"))
    }
}

@Suite("hostile input")
struct HostileInputTests {
    static let header: [UInt8] = [0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]

    @Test("malformed messages are rejected with an offset", arguments: [
        // pointer to itself
        ([0xC0, 12, 0, 1, 0, 1], WireError.Reason.pointerLoop),
        // forward pointer
        ([0xC0, 20, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0], .pointerLoop),
        // reserved label type 0x40
        ([0x41, 0x61, 0, 0, 1, 0, 1], .badLabelType),
        // label runs past the end
        ([5, 0x61, 0x62], .truncated),
        // name without terminator
        ([1, 0x61], .truncated),
        // question missing type/class
        ([0], .truncated),
    ])
    func malformed(_ body: [UInt8], _ reason: WireError.Reason) {
        #expect {
            _ = try Message(parsing: Self.header + body)
        } throws: { error in
            (error as? WireError)?.reason == reason
        }
    }

    @Test func pointerChainLongerThan255IsRejected() {
        // Many 1-byte labels chained backwards by pointers until the name exceeds 255 bytes.
        var bytes = Self.header
        bytes += [1, 0x61, 0]  // "a." at 12
        var previous = 12
        for _ in 0..<200 {
            let at = bytes.count
            bytes += [1, 0x61, 0xC0, UInt8(previous)]
            previous = at
            if previous > 255 { break }
        }
        var message: [UInt8] = Array(bytes[0..<12])
        message[5] = 1
        message += Array(bytes[12...])
        #expect(throws: WireError.self) { _ = try Message(parsing: message) }
    }

    @Test func trailingGarbageIsRejected() throws {
        var bytes = try Message.query(try DomainName("a."), .a).serialized()
        bytes.append(0)
        #expect(throws: WireError.self) { _ = try Message(parsing: bytes) }
    }

    @Test func truncatedPrefixesNeverCrash() throws {
        let bytes = try MessageTests.sample().serialized()
        for length in 0..<bytes.count {
            #expect(throws: WireError.self) { _ = try Message(parsing: Array(bytes[0..<length])) }
        }
    }
}
