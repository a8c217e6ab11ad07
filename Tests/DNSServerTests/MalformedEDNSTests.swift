import DNSServer
import DNSWire
import DNSZone
import Testing

/// RFC 6891 §6.1.1–6.1.2: an OPT record outside the additional section, or one whose options
/// run past its RDLENGTH, makes the query malformed: FORMERR, as NSD answers (issue 15).
@Suite("malformed EDNS")
struct MalformedEDNSTests {
    let view: View

    init() throws {
        view = View(zones: [try Zone.parse(text: AnswerCacheTests.zoneText, origin: try DomainName("example.test."))])
    }

    /// `www.example.test. A IN` with the given counts and records after the question.
    func query(answers: Int = 0, authority: Int = 0, additional: Int = 0, records: [UInt8]) -> [UInt8] {
        var bytes: [UInt8] = [0x12, 0x34, 0x01, 0x00, 0, 1, 0, UInt8(answers), 0, UInt8(authority), 0, UInt8(additional)]
        for label in ["www", "example", "test"] { bytes += [UInt8(label.utf8.count)] + Array(label.utf8) }
        bytes += [0, 0, 1, 0, 1]
        return bytes + records
    }

    /// An OPT record (root owner, 1232-byte payload, version 0) holding `rdata`, its RDLENGTH
    /// `rdataLength` (the real length unless given).
    func opt(_ rdata: [UInt8], rdataLength: Int? = nil) -> [UInt8] {
        let length = rdataLength ?? rdata.count
        return [0, 0, 41, 0x04, 0xD0, 0, 0, 0, 0, UInt8(length >> 8), UInt8(length & 0xFF)] + rdata
    }

    func rcode(_ query: [UInt8]) throws -> RCode {
        var output = [UInt8](repeating: 0, count: 65535)
        let length = query.withUnsafeBytes { q in
            output.withUnsafeMutableBytes { Answerer().answer(query: q, into: $0, view: view, transport: .udp) }
        }
        return try Message(parsing: Array(output[0..<length])).rcode
    }

    static let cookie: [UInt8] = [0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]

    @Test func aWellFormedOPTWithAnOptionIsAnswered() throws {
        #expect(try rcode(query(additional: 1, records: opt(Self.cookie))) == .noError)
    }

    @Test func anOptionRunningPastTheRDLENGTHIsFormErr() throws {
        // The cookie option says 8 bytes of data; the OPT's RDLENGTH holds only its first 4.
        #expect(try rcode(query(additional: 1, records: opt(Array(Self.cookie.prefix(6)), rdataLength: 6))) == .formErr)
        // An option header cut short by the RDLENGTH.
        #expect(try rcode(query(additional: 1, records: opt([0, 10], rdataLength: 2))) == .formErr)
    }

    @Test func anOPTInTheAnswerOrAuthoritySectionIsFormErr() throws {
        #expect(try rcode(query(authority: 1, records: opt([]))) == .formErr)
        #expect(try rcode(query(answers: 1, records: opt([]))) == .formErr)
        #expect(try rcode(query(authority: 1, additional: 1, records: opt([]) + opt([]))) == .formErr)
    }
}
