import DNSServer
import DNSWire
import DNSZone
import Testing

/// `CH TXT id.server`, `hostname.bind`, `version.bind`, `version.server`: answered as NSD and
/// Knot answer them (operators of several servers ask which one answered; issue 15).
@Suite("CHAOS identity")
struct ChaosIdentityTests {
    func ask(_ name: String, _ type: RRType = .txt, identity: ServerIdentity) throws -> Message {
        let view = View(zones: [try Zone.parse(text: AnswerCacheTests.zoneText, origin: try DomainName("example.test."))],
                        identity: identity)
        var query = Message.query(try DomainName(name), type)
        query.questions[0].rrClass = .chaos
        let bytes = try query.serialized()
        var output = [UInt8](repeating: 0, count: 65535)
        let length = bytes.withUnsafeBytes { q in
            output.withUnsafeMutableBytes { Answerer().answer(query: q, into: $0, view: view, transport: .udp) }
        }
        return try Message(parsing: Array(output[0..<length]))
    }

    func text(_ reply: Message) -> [String] { reply.answers.map { "\($0.rdata)" } }

    @Test func identityAndVersionAreAnsweredInClassCH() throws {
        let identity = ServerIdentity(identity: "ns-test-1", version: "Disco")
        for name in ["id.server.", "HOSTNAME.bind."] {
            let reply = try ask(name, identity: identity)
            #expect(reply.rcode == .noError && !reply.flags.aa, "\(name)")
            #expect(reply.answers.count == 1 && reply.answers.first?.rrClass == .chaos && reply.answers.first?.type == .txt)
            #expect(text(reply) == ["\"ns-test-1\""], "\(name)")
        }
        for name in ["version.bind.", "version.server."] {
            #expect(text(try ask(name, identity: identity)) == ["\"Disco\""], "\(name)")
        }
        #expect(text(try ask("version.bind.", .any, identity: identity)) == ["\"Disco\""])
    }

    @Test func hiddenOrUnknownNamesAreRefused() throws {
        let hidden = ServerIdentity(identity: "", version: nil)
        #expect(try ask("id.server.", identity: hidden).rcode == .refused)
        #expect(try ask("version.bind.", identity: hidden).rcode == .refused)
        let shown = ServerIdentity(identity: "ns", version: "Disco")
        #expect(try ask("authors.bind.", identity: shown).rcode == .refused)
        #expect(try ask("id.server.", .a, identity: shown).rcode == .refused)
    }
}
