import DNSServer
import DNSWire
import DNSZone
import Foundation
import Testing

/// Data-driven answer tests (CoreDNS/NSD tpkg style): each file under
/// Tests/Fixtures/answers holds zones and queries with the expected response in
/// presentation form. `DISCO_REWRITE=1 swift test` rewrites the expectations so a reviewer
/// reads the diff.
///
/// Format:
///     $zone ORIGIN          zone text follows until $end
///     $end
///     > QNAME TYPE [options]   options: noedns udp=N tcp do rd class=C opcode=N ednsversion=N id=N
///     expected lines (Message.description) until a blank line
struct AnswerFixture {
    struct Case {
        var line: Int
        var query: String
        var expected: String
    }

    var zones: [Zone]
    var cases: [Case]
    /// The file with every expectation replaced by `actual`.
    var lines: [String]

    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Fixtures/answers")

    static func files() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? [])
            .filter { $0.hasSuffix(".txt") }.sorted()
    }

    static func load(_ file: String) throws -> AnswerFixture {
        let text = try String(contentsOf: directory.appendingPathComponent(file), encoding: .utf8)
        let lines = text.components(separatedBy: "\n")
        var zones: [Zone] = []
        var cases: [Case] = []
        var index = 0
        while index < lines.count {
            let line = lines[index]
            if line.hasPrefix("$zone ") {
                let origin = try DomainName(String(line.dropFirst(6)).trimmingCharacters(in: .whitespaces))
                var body: [String] = []
                index += 1
                while index < lines.count && lines[index] != "$end" {
                    body.append(lines[index])
                    index += 1
                }
                zones.append(try Zone.parse(text: body.joined(separator: "\n"), origin: origin,
                                            file: "\(file):zone \(origin)"))
            } else if line.hasPrefix("> ") {
                let start = index
                var expected: [String] = []
                index += 1
                while index < lines.count && !lines[index].isEmpty {
                    expected.append(lines[index])
                    index += 1
                }
                cases.append(Case(line: start + 1, query: String(line.dropFirst(2)), expected: expected.joined(separator: "\n")))
                continue
            }
            index += 1
        }
        return AnswerFixture(zones: zones, cases: cases, lines: lines)
    }
}

/// Builds the query a fixture line describes.
func fixtureQuery(_ spec: String) throws -> (bytes: [UInt8], transport: Transport) {
    let words = spec.split(separator: " ").map(String.init)
    let name = try DomainName(words[0])
    let type = RRType(mnemonic: words[1])!
    var message = Message.query(name, type, id: 4242)
    var transport = Transport.udp
    for option in words.dropFirst(2) {
        let parts = option.split(separator: "=", maxSplits: 1).map(String.init)
        switch parts[0] {
        case "noedns": message.edns = nil
        case "udp": message.edns?.udpPayloadSize = UInt16(parts[1])!
        case "tcp": transport = .tcp
        case "do": message.edns?.dnssecOK = true
        case "rd": message.flags.rd = true
        case "class": message.questions[0].rrClass = RRClass(mnemonic: parts[1])!
        case "opcode": message.flags.opcode = Opcode(rawValue: UInt8(parts[1])!)
        case "ednsversion": message.edns?.version = UInt8(parts[1])!
        case "id": message.id = UInt16(parts[1])!
        default: Issue.record("unknown fixture option \(option)")
        }
    }
    return (try message.serialized(), transport)
}

/// Runs one query through an Answerer and renders the response, checking on the way that
/// it parses and respects the transport's size limit.
func render(_ query: [UInt8], transport: Transport, view: View, answerer: Answerer) -> String {
    var output = [UInt8](repeating: 0, count: 65535)
    let length = query.withUnsafeBytes { q in
        output.withUnsafeMutableBytes { o in answerer.answer(query: q, into: o, view: view, transport: transport) }
    }
    if length == 0 { return "(dropped)" }
    let bytes = Array(output[0..<length])
    do {
        let message = try Message(parsing: bytes)
        return message.description
    } catch {
        return "(unparseable response: \(error))"
    }
}

@Suite("answer fixtures")
struct AnswerFixtureTests {
    @Test("fixture", arguments: AnswerFixture.files())
    func fixture(_ file: String) throws {
        var fixture = try AnswerFixture.load(file)
        #expect(!fixture.cases.isEmpty, "\(file) has no queries")
        let view = View(zones: fixture.zones)
        let answerer = Answerer()
        var rewritten = fixture.lines
        var removed = 0
        for item in fixture.cases {
            let (query, transport) = try fixtureQuery(item.query)
            let actual = render(query, transport: transport, view: view, answerer: answerer)
            if ProcessInfo.processInfo.environment["DISCO_REWRITE"] == "1" {
                let start = item.line - removed
                let old = item.expected.isEmpty ? 0 : item.expected.components(separatedBy: "\n").count
                rewritten.replaceSubrange(start..<(start + old), with: actual.components(separatedBy: "\n"))
                removed += old - actual.components(separatedBy: "\n").count
            } else {
                #expect(actual == item.expected, "\(file):\(item.line): > \(item.query)")
            }
        }
        if ProcessInfo.processInfo.environment["DISCO_REWRITE"] == "1" {
            fixture.lines = rewritten
            try fixture.lines.joined(separator: "\n").write(to: AnswerFixture.directory.appendingPathComponent(file),
                                                           atomically: true, encoding: .utf8)
        }
    }
}
