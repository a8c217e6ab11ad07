import DNSWire
import DNSZone
import Foundation
import Testing

private let origin = try! DomainName("example.com.")

private func records(_ text: String, origin: DomainName = origin) throws -> [String] {
    try MasterFileParser.parse(text: Array(text.utf8), file: "t.zone", origin: origin).map(\.record.description)
}

/// The first error of a text that must not parse, as "line:column: message".
private func firstError(_ text: String) -> String {
    do throws(ZoneLoadError) {
        let parsed = try MasterFileParser.parse(text: Array(text.utf8), file: "t.zone", origin: origin)
        _ = try Zone(origin: origin, records: parsed, source: "t.zone")
        return "no error"
    } catch {
        let first = error.errors[0]
        return "\(first.position.line):\(first.position.column): \(first.message)"
    }
}

@Suite("master files")
struct MasterFileTests {
    @Test func directivesOwnersAndDefaults() throws {
        let text = """
            $TTL 1h30m
            @ IN SOA ns1 hostmaster ( 1 ; serial
                    2h 15M 2w 5m )   ; timers with units
              NS ns1          ; blank owner: the apex
            ns1 300 IN A 192.0.2.1
                IN 600 AAAA 2001:db8::1
            $ORIGIN sub.example.com.
            host A 192.0.2.2
            abs.example.com. A 192.0.2.3
            """
        #expect(try records(text) == [
            "example.com.\t5400\tIN\tSOA\tns1.example.com. hostmaster.example.com. 1 7200 900 1209600 300",
            "example.com.\t5400\tIN\tNS\tns1.example.com.",
            "ns1.example.com.\t300\tIN\tA\t192.0.2.1",
            "ns1.example.com.\t600\tIN\tAAAA\t2001:db8::1",
            "host.sub.example.com.\t5400\tIN\tA\t192.0.2.2",
            "abs.example.com.\t5400\tIN\tA\t192.0.2.3",
        ])
    }

    @Test func stringsAndEscapes() throws {
        let text = """
            $TTL 60
            t TXT "quoted; not a comment" unquoted "with \\"quote\\"" "\\065\\066C"
            t TXT ( "split"
                    "across lines" )
            e\\.dot A 192.0.2.9
            h HINFO "Intel x86" Linux
            """
        #expect(try records(text) == [
            "t.example.com.\t60\tIN\tTXT\t\"quoted; not a comment\" \"unquoted\" \"with \\\"quote\\\"\" \"ABC\"",
            "t.example.com.\t60\tIN\tTXT\t\"split\" \"across lines\"",
            "e\\.dot.example.com.\t60\tIN\tA\t192.0.2.9",
            "h.example.com.\t60\tIN\tHINFO\t\"Intel x86\" \"Linux\"",
        ])
    }

    @Test func everyType() throws {
        let text = """
            $TTL 60
            a      A      192.0.2.1
            a      AAAA   2001:db8::1
            c      CNAME  a
            p      PTR    a.example.net.
            d      DNAME  example.net.
            m      MX     10 mail
            s      SRV    0 5 5060 sip
            n      NAPTR  100 10 "S" "SIP+D2U" "" _sip._udp
            x      CAA    0 issue "ca.example.net"
            f      SSHFP  4 2 123456789abcdef0 1234
            t      TLSA   3 1 1 ABCDEF
            h      HINFO  "cpu" "os"
            u      TYPE65280 \\# 4 0A000001
            g      A      \\# 4 C0000202
            e      TYPE65281 \\# 0
            """
        #expect(try records(text) == [
            "a.example.com.\t60\tIN\tA\t192.0.2.1",
            "a.example.com.\t60\tIN\tAAAA\t2001:db8::1",
            "c.example.com.\t60\tIN\tCNAME\ta.example.com.",
            "p.example.com.\t60\tIN\tPTR\ta.example.net.",
            "d.example.com.\t60\tIN\tDNAME\texample.net.",
            "m.example.com.\t60\tIN\tMX\t10 mail.example.com.",
            "s.example.com.\t60\tIN\tSRV\t0 5 5060 sip.example.com.",
            "n.example.com.\t60\tIN\tNAPTR\t100 10 \"S\" \"SIP+D2U\" \"\" _sip._udp.example.com.",
            "x.example.com.\t60\tIN\tCAA\t0 issue \"ca.example.net\"",
            "f.example.com.\t60\tIN\tSSHFP\t4 2 123456789ABCDEF01234",
            "t.example.com.\t60\tIN\tTLSA\t3 1 1 ABCDEF",
            "h.example.com.\t60\tIN\tHINFO\t\"cpu\" \"os\"",
            "u.example.com.\t60\tIN\tTYPE65280\t\\# 4 0A000001",
            "g.example.com.\t60\tIN\tA\t192.0.2.2",
            "e.example.com.\t60\tIN\tTYPE65281\t\\# 0",
        ])
    }

    @Test func includeResolvesAgainstTheIncludingFile() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("disco-include-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory.appendingPathComponent("inc"), withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        try "$TTL 60\n@ SOA ns h 1 2 3 4 5\n NS ns\n$INCLUDE inc/hosts.inc\nafter A 192.0.2.9\n"
            .write(to: directory.appendingPathComponent("example.com.zone"), atomically: true, encoding: .utf8)
        try "$ORIGIN hosts.example.com.\nns A 192.0.2.1\n"
            .write(to: directory.appendingPathComponent("inc/hosts.inc"), atomically: true, encoding: .utf8)
        let zone = try Zone.load(path: directory.appendingPathComponent("example.com.zone").path, origin: origin)
        let names = Set(zone.nodes.map(\.name.description))
        // $ORIGIN inside the include does not leak out of it (RFC 1035 §5.1).
        #expect(names.contains("ns.hosts.example.com."))
        #expect(names.contains("after.example.com."))
    }

    @Test("errors name line, column and what was expected", arguments: [
        ("$TTL 60\n@ SOA ns h 1 2 3 4 5\n NS ns\nwww A 192.0.2.300\n", "4:7: expected an IPv4 address, found '192.0.2.300'"),
        ("$TTL 60\n@ SOA ns h 1 2 3 4 5\n NS ns\nwww BOGUS 1\n", "4:5: expected a TTL, class or record type, found 'BOGUS'"),
        ("$TTL 60\n@ SOA ns h 1 2 3 4 5\n NS ns\nwww MX 10\n", "4:8: expected a mail exchange"),
        ("$TTL 60\n@ SOA ns h 1 2 3 4 5\n NS ns\nt TXT \"open\n", "4:7: unterminated quoted string (expected '\"')"),
        ("$TTL 60\n@ SOA ns h ( 1 2 3 4 5\n NS ns\n", "2:12: '(' is never closed"),
        ("$TTL 60\n@ SOA ns h 1 2 3 4 5\n NS ns\nx ) A 1.2.3.4\n", "4:3: unbalanced ')' (no '(' open)"),
        ("@ SOA ns h 1 2 3 4 5\n", "1:1: no TTL (expected a TTL on the record or a $TTL directive before it)"),
        ("$TTL 60\n@ SOA ns h 1 2 3 4 5\n NS ns\nwww.example.org. A 192.0.2.1\n", "4:1: www.example.org. is outside the zone example.com."),
        ("$TTL 60\n@ NS ns\n", "2:1: no SOA record at the apex example.com. (expected exactly one)"),
        ("$TTL 60\n@ SOA ns h 1 2 3 4 5\n", "2:1: no NS records at the apex example.com."),
        ("$TTL 60\n@ SOA ns h 1 2 3 4 5\n NS ns\nc CNAME a\nc A 192.0.2.1\n", "4:1: CNAME at c.example.com. alongside other data (A); a CNAME must be alone"),
        ("$TTL 60\n@ SOA ns h 1 2 3 4 5\n NS ns\nsub NS ns.sub\nx.sub MX 1 a\n", "5:1: x.sub.example.com. is below the delegation sub.example.com.: only A/AAAA glue may be there"),
        ("$TTL 60\n@ SOA ns h 1 2 3 4 5\n NS ns\nsub NS ns.sub\nsub TXT hi\n", "5:1: TXT at the delegation point sub.example.com. (only NS, DS and glue belong there)"),
        ("$TTL 60\n@ SOA ns h 1 2 3 4 5\n NS ns\nt TXT \"\(String(repeating: "x", count: 256))\"\n", "4:7: character-string of 256 bytes (expected at most 255; split it into several strings)"),
        ("$TTL 99999999999\n", "1:6: TTL too large (max 2147483647)"),
        ("$TTL 60\n@ SOA ns h 1 2 3 4 5\n NS ns\nu TYPE65280 \\# 3 0A00\n", "4:16: generic RDATA length 3 does not match the 2 bytes given"),
        ("$TTL 60\n@ SOA ns h 1 2 3 4 5\n NS ns\n$INCLUDE nowhere.inc\n", "4:1: $INCLUDE is not allowed here"),
        ("$TTL 60\n$GENERATE 1-2 a$ A 1.2.3.$\n", "2:1: unknown directive $GENERATE (expected $ORIGIN, $TTL or $INCLUDE)"),
        ("$TTL 60\n@ SOA ns h 1 2 3 4 5\n NS ns\nx CH A 192.0.2.1\n", "4:3: class CH is not served (expected IN)"),
        ("$TTL 60\n@ SOA ns h 1 2 3 4 5\n NS ns\nbad..name A 192.0.2.1\n", "4:1: bad domain name 'bad..name': empty label"),
    ])
    func errors(_ text: String, _ expected: String) throws {
        #expect(firstError(text) == expected)
        // Loaded from a file, the records are compiled as they are parsed, without positions:
        // the same error, at the same place, comes from the load again that keeps them.
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("disco-errors-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("example.com.zone").path
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        do throws(ZoneLoadError) {
            _ = try Zone.load(path: path, origin: origin)
            Issue.record("expected an error")
        } catch {
            let first = error.errors[0]
            // (From a file, $INCLUDE is allowed: the file it names is missing.)
            let message = expected.contains("$INCLUDE is not allowed") ? "4:10: cannot open" : expected
            #expect(first.position.file == path)
            #expect("\(first.position.line):\(first.position.column): \(first.message)".contains(message), "\(first)")
        }
    }

    @Test func severalErrorsAreReportedAtOnce() {
        let text = "$TTL 60\n@ SOA ns h 1 2 3 4 5\n NS ns\na A 1\nb A 2\nc AAAA x\n"
        do {
            _ = try MasterFileParser.parse(text: Array(text.utf8), file: "t.zone", origin: origin)
            Issue.record("expected errors")
        } catch {
            #expect(error.errors.map(\.position.line) == [4, 5, 6])
            #expect(error.description.hasPrefix("t.zone:4:5: expected an IPv4 address"))
        }
    }

    /// Names are parsed once per text and origin: the same text under another origin (after
    /// $ORIGIN or inside an $INCLUDE with its own) is another name.
    @Test func theSameTextUnderAnotherOriginIsAnotherName() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("disco-intern-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        try "www A 192.0.2.9\n_s._tcp SRV 0 0 1 www\n".write(to: directory.appendingPathComponent("inc.zone"), atomically: true, encoding: .utf8)
        let text = """
            $TTL 60
            www A 192.0.2.1
            _s._tcp SRV 0 0 1 www
            $ORIGIN sub.example.com.
            www A 192.0.2.2
            _s._tcp SRV 0 0 1 www
            $INCLUDE inc.zone other.example.com.
            www A 192.0.2.3
            """
        let file = directory.appendingPathComponent("example.com.zone").path
        try text.write(toFile: file, atomically: true, encoding: .utf8)
        let parsed = try MasterFileParser.parse(path: file, origin: origin).map(\.record.description)
        #expect(parsed == [
            "www.example.com.\t60\tIN\tA\t192.0.2.1",
            "_s._tcp.example.com.\t60\tIN\tSRV\t0 0 1 www.example.com.",
            "www.sub.example.com.\t60\tIN\tA\t192.0.2.2",
            "_s._tcp.sub.example.com.\t60\tIN\tSRV\t0 0 1 www.sub.example.com.",
            "www.other.example.com.\t60\tIN\tA\t192.0.2.9",
            "_s._tcp.other.example.com.\t60\tIN\tSRV\t0 0 1 www.other.example.com.",
            "www.sub.example.com.\t60\tIN\tA\t192.0.2.3",
        ])
    }

    /// A text with everything that could make a part start in the wrong state: records spread
    /// over lines in parentheses, comments and quoted strings holding `(`, `;`, `"` and line
    /// breaks, owners left blank, `$ORIGIN` (relative too) and `$TTL` changing on the way.
    private static func trickyText(blocks: Int) -> String {
        var text = "$TTL 300\n@ SOA ns1 hostmaster ( 1 ; serial (\n 2 3 4 5 )\n NS ns1\nns1 A 192.0.2.1\n"
        for block in 0..<blocks {
            if block % 7 == 3 { text += "$ORIGIN sub\(block).example.com.\n" }
            if block % 7 == 5 { text += "$ORIGIN deeper\n" }
            if block % 11 == 4 { text += "$TTL \(60 + block)\n" }
            if block % 13 == 6 { text += "$ORIGIN example.com.\n" }
            text += "h\(block) A 192.0.2.\(block % 250)\n"
            text += "\tAAAA 2001:db8::\(block % 1000)\n"
            text += "t\(block) 120 TXT \"a ; (\" \"line\\\nbreak\" ( \"more\"\n  \"x\" ) ; comment \" (\n"
            text += "s\(block) IN SRV ( 0 0\n  80 ; a comment in the middle\n  h\(block) )\n"
            text += "   ; only a comment (\n\n"
            text += "m\(block) MX 10 mail\\.x\n"
        }
        return text
    }

    /// A large file parsed in parts gives exactly the records of one parse: same data, same
    /// order, same positions.
    @Test func aFileParsedInPartsGivesTheRecordsOfOneParse() throws {
        let text = Array(Self.trickyText(blocks: 400).utf8)
        let parts = MasterFileSplit.parts(of: text, parts: 6, partBytesMin: 1024)
        #expect(parts.count == 6)
        #expect(parts.first?.range.lowerBound == 0 && parts.last?.range.upperBound == text.count)
        for (a, b) in zip(parts, parts.dropFirst()) { #expect(a.range.upperBound == b.range.lowerBound) }
        #expect(parts.dropFirst().allSatisfy { String(decoding: $0.preamble, as: UTF8.self).contains("$TTL") })
        let whole = try MasterFileParser.parse(text: text, file: "t.zone", origin: origin)
        let inParts = try MasterFileParser.parse(text: text, file: "t.zone", origin: origin, parts: 6, partBytesMin: 1024,
                                                 reparseOnError: false)
        #expect(whole.count == 400 * 5 + 3)
        #expect(inParts == whole)
    }

    /// A file with errors reports, parsed in parts, exactly what one parse reports.
    @Test func errorsInALaterPartAreReportedAsByOneParse() throws {
        var text = Self.trickyText(blocks: 300)
        text += "bad A 192.0.2.300\n$TTL oops\n"
        text += Self.trickyText(blocks: 10).split(separator: "\n", omittingEmptySubsequences: false).dropFirst(4)
            .joined(separator: "\n")
        var expected: [String] = []
        do throws(ZoneLoadError) {
            _ = try MasterFileParser.parse(text: Array(text.utf8), file: "t.zone", origin: origin)
        } catch {
            expected = error.errors.map(\.description)
        }
        #expect(expected.count == 2)
        do throws(ZoneLoadError) {
            _ = try MasterFileParser.parse(text: Array(text.utf8), file: "t.zone", origin: origin, parts: 4, partBytesMin: 1024)
            Issue.record("a file with errors parsed")
        } catch {
            #expect(error.errors.map(\.description) == expected)
        }
    }

    /// A zone loaded from a file in parts, its records grouped as they are parsed, is the zone
    /// built from one parse's records: same names, RRsets, records and errors.
    @Test func aZoneLoadedInPartsIsTheZoneOfOneParse() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("disco-parts-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let text = Self.trickyText(blocks: 300) + "outside.example.net. A 192.0.2.1\n$ORIGIN example.com.\n" + Self.trickyText(blocks: 300)
        let path = directory.appendingPathComponent("example.com.zone").path
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        func summary(_ zone: Zone) -> [String] {
            // With each record's additional-section node: a compacted part's sets resolve
            // theirs from their wire bytes, a whole parse's from the records.
            zone.nodes.map { node in
                "\(node.name) \(node.kind) " + node.rrsets.map { rrset in
                    let additional = rrset.compiled.indices.map { index in
                        let node = rrset.compiled.additionalNode(at: index)
                        return node < 0 ? "-" : "\(zone.nodes[Int(node)].name)"
                    }
                    return "\(rrset.type) \(rrset.ttl) \(rrset.records) \(additional)"
                }.joined(separator: "; ")
            }
        }
        func errors(_ body: () throws(ZoneLoadError) -> Zone) -> [String] {
            do throws(ZoneLoadError) {
                _ = try body()
                return []
            } catch {
                return error.errors.map(\.description)
            }
        }
        let expected = errors { () throws(ZoneLoadError) in
            try Zone(origin: origin, records: try MasterFileParser.parse(text: Array(text.utf8), file: path, origin: origin), source: path)
        }
        #expect(expected.count == 1 && expected[0].contains("outside the zone"), "\(expected)")
        let inParts = errors { () throws(ZoneLoadError) in
            let (groups, files) = try MasterFileParser.parseFileLogs(path: path, origin: origin, parts: 4, partBytesMin: 1024)
            #expect(groups.count == 4)
            return try Zone(origin: origin, logs: groups, source: path, files: files)
        }
        #expect(inParts == expected)

        // Owners of the first part written again in the last: their RRsets merge in file order.
        let good = "$ORIGIN example.com.\n" + Self.trickyText(blocks: 600)
            + "$ORIGIN example.com.\nns1 A 192.0.2.99\n@ NS ns2\nh0 TXT \"late\"\nh0 MX 5 late\nup SRV 0 0 80 NS1.Example.COM.\nup SRV 0 0 81 .\n"
        try good.write(toFile: path, atomically: true, encoding: .utf8)
        let whole = try Zone(origin: origin, records: try MasterFileParser.parse(text: Array(good.utf8), file: path, origin: origin),
                             source: path)
        let (groups, files) = try MasterFileParser.parseFileLogs(path: path, origin: origin, parts: 4, partBytesMin: 1024)
        #expect(groups.count == 4)
        let parted = try Zone(origin: origin, logs: groups, source: path, files: files)
        #expect(summary(parted) == summary(whole))
        // Each part compiled as soon as it is parsed, the parts then merged: the same zone.
        let (compiledParts, _) = try MasterFileParser.parseFileCompiled(path: path, origin: origin, parts: 4, partBytesMin: 1024)
        #expect(compiledParts.count == 4)
        let compiled = try Zone(origin: origin, compiled: compiledParts, source: path, files: files)
        #expect(summary(compiled) == summary(whole))
        #expect(summary(try Zone.load(path: path, origin: origin)) == summary(whole))
        #expect(summary(whole).count > 1000)
        #expect(summary(parted).contains { $0.hasPrefix("up.example.com. authoritative SRV") && $0.hasSuffix("[\"ns1.example.com.\", \"-\"]") },
                "\(summary(parted).filter { $0.hasPrefix("up.") })")
    }

    /// No part starts after an `$INCLUDE` (the included file may set `$TTL`), nor before the first `$TTL`.
    @Test func aFileIsNotCutAfterAnIncludeNorBeforeItsFirstTTL() {
        var text = Self.trickyText(blocks: 100)
        let include = text.utf8.count
        text += "$INCLUDE other.zone\n" + Self.trickyText(blocks: 100)
        let parts = MasterFileSplit.parts(of: Array(text.utf8), parts: 8, partBytesMin: 512)
        #expect(parts.count > 1)
        #expect(parts.allSatisfy { $0.range.lowerBound <= include })

        let noTTL = Self.trickyText(blocks: 100).replacingOccurrences(of: "$TTL", with: "; TTL")
        #expect(MasterFileSplit.parts(of: Array(noTTL.utf8), parts: 8, partBytesMin: 512).count == 1)
    }

    /// A large RRset collapses its duplicates too (past the size where they are found by hashing).
    @Test func duplicatesCollapseInALargeRRset() throws {
        var text = "$TTL 60\n@ SOA ns h 1 2 3 4 5\n NS ns\n"
        for round in 0..<3 {
            for i in 0..<40 { text += "big \(round == 0 ? "" : "\(round) ")A 192.0.2.\(i)\n" }
        }
        let zone = try Zone.parse(text: text, origin: origin)
        let node = try #require(zone.nodes.first { $0.name.description == "big.example.com." })
        #expect(node.rrsets.count == 1)
        #expect(node.rrsets[0].records.count == 40)
        #expect(node.rrsets[0].ttl == 60)
        #expect(Set(node.rrsets[0].compiled.map { Array($0.bytes) }).count == 40)
    }

    @Test func duplicatesCollapseAndTheFirstTTLHolds() throws {
        let zone = try Zone.parse(text: "$TTL 60\n@ SOA ns h 1 2 3 4 5\n NS ns\na 10 A 192.0.2.1\na 20 A 192.0.2.1\na 30 A 192.0.2.2\n",
                                  origin: origin)
        let node = try #require(zone.nodes.first { $0.name.description == "a.example.com." })
        #expect(node.rrsets.count == 1)
        #expect(node.rrsets[0].records.count == 2)
        #expect(node.rrsets[0].ttl == 10)
    }
}

@Suite("zone directories")
struct ZoneDirectoryTests {
    private func makeDirectory() throws -> URL {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("disco-zones-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        return directory
    }

    private func zoneText(_ address: String) -> String {
        "$TTL 60\n@ SOA ns h 1 2 3 4 5\n NS ns\nns A \(address)\n"
    }

    /// A reload keeps a zone whose files did not change (the same object, unread) and reads
    /// again the one that changed, and what it includes.
    @Test func aReloadReadsOnlyTheZonesWhoseFilesChanged() throws {
        let directory = try makeDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        try zoneText("192.0.2.1").write(to: directory.appendingPathComponent("a.test.zone"), atomically: true, encoding: .utf8)
        try (zoneText("192.0.2.2") + "$INCLUDE extra.inc\n").write(to: directory.appendingPathComponent("b.test.zone"),
                                                                 atomically: true, encoding: .utf8)
        try "x A 192.0.2.3\n".write(to: directory.appendingPathComponent("extra.inc"), atomically: true, encoding: .utf8)
        let first = try ZoneDirectory.load(path: directory.path)
        #expect(first.zones.count == 2 && first.failures.isEmpty && first.unchanged == 0)

        let again = try ZoneDirectory.load(path: directory.path, previous: first.zones)
        #expect(again.unchanged == 2)
        #expect(zip(first.zones, again.zones).allSatisfy { $0 === $1 })

        // Changing only the included file reads b again; a stays as it was.
        try "x A 192.0.2.33\n".write(to: directory.appendingPathComponent("extra.inc"), atomically: true, encoding: .utf8)
        let changed = try ZoneDirectory.load(path: directory.path, previous: again.zones)
        #expect(changed.unchanged == 1)
        #expect(changed.zones[0] === again.zones[0])
        #expect(changed.zones[1] !== again.zones[1])
        let x = try #require(changed.zones[1].nodes.first { $0.name.description == "x.b.test." })
        #expect(x.rrsets[0].records == [.a(try #require(IPv4Address("192.0.2.33")))])
    }

    /// Zones load in parallel but come back in file-name order, failures included.
    @Test func manyZonesLoadInFileNameOrder() throws {
        let directory = try makeDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        for i in 0..<12 {
            let text = i == 5 ? "broken\n" : zoneText("192.0.2.\(i)")
            try text.write(to: directory.appendingPathComponent("z\(String(format: "%02d", i)).test.zone"), atomically: true, encoding: .utf8)
        }
        let result = try ZoneDirectory.load(path: directory.path)
        #expect(result.zones.map(\.origin.description) == (0..<12).filter { $0 != 5 }.map { "z\(String(format: "%02d", $0)).test." })
        #expect(result.failures.map { URL(fileURLWithPath: $0.file).lastPathComponent } == ["z05.test.zone"])
    }
}
