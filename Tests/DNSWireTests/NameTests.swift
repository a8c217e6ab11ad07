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
