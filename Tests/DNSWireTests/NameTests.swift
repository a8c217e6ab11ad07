import DNSWire
import Testing

@Suite("domain names")
struct NameTests {
    @Test("presentation round trip", arguments: [
        "example.com.", ".", "a.b.c.d.e.", "with\\.dot.example.", "sp\\032ace.example.", "\\000nul.example.",
        "*.wild.example.", "xn--bcher-kva.example.",
    ])
    func roundTrip(_ text: String) throws {
        let name = try DomainName(text)
        #expect(try DomainName(name.description) == name)
        #expect(try DomainName(wire: name.wire) == name)
    }

    @Test func caseInsensitiveButPreserved() throws {
        let upper = try DomainName("WWW.Example.COM.")
        let lower = try DomainName("www.example.com.")
        #expect(upper == lower)
        #expect(upper.hashValue == lower.hashValue)
        #expect(upper.description == "WWW.Example.COM.")
    }

    @Test func relativeNames() throws {
        let origin = try DomainName("example.com.")
        #expect(try DomainName("www", origin: origin).description == "www.example.com.")
        #expect(throws: NameError.relativeWithoutOrigin) { try DomainName("www") }
    }

    @Test("invalid names", arguments: [
        ("a..b.", NameError.emptyLabel),
        (String(repeating: "x", count: 64) + ".", NameError.labelTooLong),
        (Array(repeating: String(repeating: "x", count: 63), count: 4).joined(separator: ".") + ".", NameError.tooLong),
        ("bad\\9.", NameError.badEscape),
        ("bad\\256.", NameError.badEscape),
    ])
    func invalid(_ text: String, _ error: NameError) {
        #expect(throws: error) { try DomainName(text) }
    }

    @Test func maximumLengthIsAccepted() throws {
        // 3 × 63 + 61 + 4 length bytes + root = 255.
        let labels = Array(repeating: String(repeating: "x", count: 63), count: 3) + [String(repeating: "y", count: 61)]
        let name = try DomainName(labels.joined(separator: ".") + ".")
        #expect(name.wire.count == 255)
    }

    @Test func hierarchy() throws {
        let name = try DomainName("a.b.example.com.")
        let zone = try DomainName("EXAMPLE.com.")
        #expect(name.isSubdomain(of: zone))
        #expect(!zone.isSubdomain(of: name))
        #expect(!(try DomainName("xexample.com.")).isSubdomain(of: zone))
        #expect(name.parent == (try DomainName("b.example.com.")))
        #expect(name.labelCount == 4)
        #expect(try name.replacingSuffix(zone, with: DomainName("example.net.")).description == "a.b.example.net.")
    }

    @Test func canonicalOrder() throws {
        // RFC 4034 §6.1's example order.
        let ordered = ["example.", "a.example.", "yljkjljk.a.example.", "Z.a.example.", "zABC.a.EXAMPLE.",
                       "z.example.", "\\001.z.example.", "*.z.example.", "\\200.z.example."]
        let names = try ordered.map { try DomainName($0) }
        #expect(names.shuffled().sorted() == names)
    }

    /// The flat key a zone build sorts by orders names exactly as the label-by-label comparison
    /// does, including labels holding 0 bytes and labels that are prefixes of others.
    @Test func canonicalSortKeyOrdersAsTheLabelComparison() throws {
        var generator = SystemRandomNumberGenerator()
        let alphabet: [UInt8] = [0, 1, 0x2A, 0x41, 0x61, 0x62, 0xFF]
        func randomName() throws -> DomainName {
            let labels = (0..<Int.random(in: 0...3, using: &generator)).map { _ in
                (0..<Int.random(in: 1...3, using: &generator)).map { _ in alphabet.randomElement(using: &generator)! }
            }
            return try DomainName(labels: labels)
        }
        for _ in 0..<2_000 {
            let a = try randomName(), b = try randomName()
            let byLabels = DomainName.canonicallyPrecedes(a.canonicalKey, b.canonicalKey)
            let byFlatKey = a.canonicalSortKey.lexicographicallyPrecedes(b.canonicalSortKey)
            #expect(byLabels == byFlatKey, "\(a) vs \(b)")
        }
    }

    /// The escape-free fast path and the general parser agree, errors included.
    @Test("names without escapes", arguments: ["a.b.", "a.b", "A.example", ".", "a..b", ".a", "a.b..",
                                               String(repeating: "x", count: 64) + ".", "x"])
    func namesWithoutEscapesParseAsBefore(_ text: String) throws {
        let origin = try DomainName("example.com.")
        let fast = Result { () throws(NameError) in try DomainName(text, origin: origin) }
        // The same name with its last letter escaped takes the general path.
        var escaped = text
        if let last = text.lastIndex(where: { $0 != "." }) { escaped.insert("\\", at: last) }
        let general = Result { () throws(NameError) in try DomainName(escaped, origin: origin) }
        switch (fast, general) {
        case (.success(let a), .success(let b)): #expect(a.wire == b.wire)
        case (.failure(let a), .failure(let b)): #expect(a == b)
        default: Issue.record("\(text): \(fast) vs \(general)")
        }
    }
}

@Suite("addresses")
struct AddressTests {
    @Test("IPv6 text (RFC 5952)", arguments: [
        ("2001:db8::1", "2001:db8::1"), ("2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1"),
        ("::", "::"), ("::1", "::1"), ("2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"),
        ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"), ("::ffff:192.0.2.1", "::ffff:c000:201"),
        // A trailing "::" (network addresses such as 2001:db8::/32).
        ("2001:db8::", "2001:db8::"), ("fe80:1:2:3:4:5:6::", "fe80:1:2:3:4:5:6:0"),
    ])
    func ipv6(_ input: String, _ output: String) {
        #expect(IPv6Address(input)?.description == output)
    }

    @Test("bad addresses", arguments: ["1.2.3", "1.2.3.256", "1.2.3.4.5", "01234.1.1.1", "a.b.c.d"])
    func badIPv4(_ text: String) {
        #expect(IPv4Address(text) == nil)
    }

    @Test("bad IPv6", arguments: ["1::2::3", "12345::", ":1", "1:2:3:4:5:6:7:8:9", "g::1", "",
                                       "1::2::", "1:::", "1:2:3:4:5:6:7:8::", "1.2.3.4::"])
    func badIPv6(_ text: String) {
        #expect(IPv6Address(text) == nil)
    }
}
