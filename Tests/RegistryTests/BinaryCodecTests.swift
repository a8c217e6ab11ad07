import Foundation
import Registry
import Testing

/// Random commands that exercise every field: optionals set and unset, empty and non-ASCII
/// strings, negative and large numbers, nested batches.
func randomCommand(_ random: inout SplitMix, depth: Int = 0) -> CatalogCommand {
    func text() -> String { ["", "web", "ünïcødé-✓", "a b", String(repeating: "x", count: 200)][random.below(5)] }
    func number() -> Int { [0, 1, -1, 8080, Int.max, Int.min][random.below(6)] }
    func seconds() -> Double? { [nil, 0, 1.5, 86_400, -0.0][random.below(5)] }
    func map() -> [String: String] { random.below(2) == 0 ? [:] : [text(): text(), "k": text()] }
    let node = NodeRecord(name: text(), address: text(), meta: map())
    switch random.below(depth < 2 ? 6 : 5) {
    case 0:
        let service = random.below(3) == 0 ? nil : ServiceInstance(
            id: text(), node: node.name, name: text(), tags: (0..<random.below(3)).map { _ in text() }, address: text(),
            port: number(), meta: map(), weights: Weights(passing: number(), warning: number()), registeredBy: text(),
            enableTagOverride: random.below(2) == 0)
        let checks = (0..<random.below(3)).map { _ in
            CheckRegistration(CheckRecord(
                id: text(), node: node.name, name: text(), serviceID: text(), status: HealthStatus.allCases[random.below(3)],
                output: text(), notes: text(),
                definition: CheckDefinition(http: random.below(2) == 0 ? nil : text(), method: random.below(2) == 0 ? nil : "GET",
                                            tcp: random.below(2) == 0 ? nil : text(), ttlSeconds: seconds(),
                                            intervalSeconds: seconds(), timeoutSeconds: seconds(),
                                            deregisterCriticalAfterSeconds: seconds(),
                                            header: random.below(2) == 0 ? nil : [text(): [text(), text()], "X-A": []],
                                            tlsSkipVerify: random.below(3) == 0 ? nil : random.below(2) == 0,
                                            successBeforePassing: random.below(2) == 0 ? nil : number(),
                                            failuresBeforeWarning: random.below(2) == 0 ? nil : number(),
                                            failuresBeforeCritical: random.below(2) == 0 ? nil : number())),
                statusGiven: random.below(2) == 0)
        }
        return .register(node: node, service: service, checks: checks, replaceChecks: random.below(2) == 0)
    case 1:
        return .deregister(node: text(), serviceID: random.below(2) == 0 ? nil : text(), checkID: random.below(2) == 0 ? nil : text())
    case 2:
        return .updateCheck(node: text(), checkID: text(), status: HealthStatus.allCases[random.below(3)], output: text())
    case 3:
        return .checkStatuses((0..<random.below(4)).map { _ in
            CheckStatusUpdate(node: text(), checkID: text(), status: HealthStatus.allCases[random.below(3)], output: text())
        })
    case 4:
        return .checkRunners((0..<random.below(4)).map { _ in UInt64(random.below(5)) + [0, 1, UInt64.max - 4][random.below(3)] })
    default:
        return .batch((0..<random.below(4)).map { _ in randomCommand(&random, depth: depth + 1) })
    }
}

@Suite("catalog binary codec")
struct BinaryCodecTests {
    @Test(arguments: 1...20)
    func everyCommandRoundTripsAndTheJSONFormStillDecodes(seed: UInt64) throws {
        var random = SplitMix(seed: seed)
        for _ in 0..<50 {
            let command = randomCommand(&random)
            let bytes = command.encoded
            #expect(bytes.first == CatalogCommand.binaryEntryTag)
            #expect(try CatalogCommand(decoding: bytes) == command)
            // Entries written before the binary form are still applied the same.
            #expect(try CatalogCommand(decoding: command.legacyJSONEncoded) == command)
            #expect(command.encoded == bytes, "one value, one encoding")
        }
    }

    /// A damaged entry is refused with where and what, never a crash or a wrong command.
    @Test(arguments: 1...10)
    func truncatedOrExtendedEntriesAreRefused(seed: UInt64) throws {
        var random = SplitMix(seed: seed)
        let bytes = randomCommand(&random).encoded
        for length in 0..<bytes.count {
            #expect(throws: RegistryError.self) { try CatalogCommand(decoding: Array(bytes[0..<length])) }
        }
        #expect(throws: RegistryError.self) { try CatalogCommand(decoding: bytes + [0]) }
        for _ in 0..<200 {
            var damaged = bytes
            damaged[1 + random.below(bytes.count - 1)] = UInt8(truncatingIfNeeded: random.next())
            _ = try? CatalogCommand(decoding: damaged)  // any outcome but a crash
        }
    }

    @Test func errorsNameTheByteAndWhatWasExpected() throws {
        func message(_ bytes: [UInt8]) -> String {
            do {
                _ = try CatalogCommand(decoding: bytes)
                return "decoded"
            } catch {
                return "\(error)"
            }
        }
        let tag = CatalogCommand.binaryEntryTag
        #expect(message([tag, 9]) == "malformed registry log entry: byte 1: expected a command (1 to 6)")
        // The first binary form had four commands.
        #expect(message([CatalogCommand.binaryV1EntryTag, 5, 0]) == "malformed registry log entry: byte 1: expected a command (1 to 4)")
        #expect(message([tag, 5, 1, 0, 0, 3, 0]) == "malformed registry log entry: byte 5: expected a check status (0, 1 or 2)")
        #expect(message([tag, 3, 100]) == "malformed registry log entry: byte 2: expected a string length within the entry")
        #expect(message([tag, 3, 0, 0, 7, 0]) == "malformed registry log entry: byte 4: expected a check status (0, 1 or 2)")
        #expect(message([tag, 3, 1, 0xFF]) == "malformed registry log entry: byte 3: expected UTF-8 text")
        // A batch nested deeper than the decoder recurses.
        #expect(message([tag, 4, 1, 4, 1, 4, 1, 4, 1, 4, 0])
            == "malformed registry log entry: byte 9: expected batches nested at most 4 deep")
    }

    /// The batched check-status command, byte by byte: what a server that runs checks writes.
    @Test func checkStatusesDecodeFromTheirBytes() throws {
        let bytes: [UInt8] = [CatalogCommand.binaryEntryTag, 5, 2,
                              2, 0x6E, 0x31, 1, 0x63, 2, 0,  // node "n1", check "c", critical, no output
                              2, 0x6E, 0x32, 1, 0x64, 0, 2, 0x6F, 0x6B]  // node "n2", check "d", passing, "ok"
        #expect(try CatalogCommand(decoding: bytes) == .checkStatuses([
            CheckStatusUpdate(node: "n1", checkID: "c", status: .critical, output: ""),
            CheckStatusUpdate(node: "n2", checkID: "d", status: .passing, output: "ok")]))
        #expect(CatalogCommand.checkStatuses([CheckStatusUpdate(node: "n1", checkID: "c", status: .critical, output: ""),
                                              CheckStatusUpdate(node: "n2", checkID: "d", status: .passing, output: "ok")]).encoded == bytes)
        #expect(try CatalogCommand(decoding: [CatalogCommand.binaryEntryTag, 6, 3, 1, 2, 0x80, 0x01]) == .checkRunners([1, 2, 128]))
    }

    /// Entries in the first binary form (tag 0x41, before the check thresholds) still decode.
    @Test func firstBinaryFormEntriesStillDecode() throws {
        let check = CheckRecord(id: "c", node: "n", name: "c", serviceID: "s", status: .passing,
                                definition: CheckDefinition(http: "http://x/", intervalSeconds: 1))
        let command = CatalogCommand.register(node: NodeRecord(name: "n", address: "10.0.0.1"), service: nil,
                                              checks: [CheckRegistration(check, statusGiven: true)], replaceChecks: false)
        var v1 = command.encoded
        // The v2 form appends five absent optionals (header, TLS, three thresholds) to each definition.
        let definitionEnd = v1.count - 2  // statusGiven, replaceChecks follow the definition
        v1.removeSubrange(definitionEnd - 5..<definitionEnd)
        v1[0] = CatalogCommand.binaryV1EntryTag
        #expect(try CatalogCommand(decoding: v1) == command)
    }

    /// registry.db rows written as JSON text (before the binary form) still load.
    @Test func aCatalogWithJSONRowsStillLoads() throws {
        let directory = try TemporaryDirectory()
        let path = directory.path("registry.db")
        do {
            let catalog = try Catalog(path: path)
            try apply(catalog, web("web-1", tags: ["v2"]))
        }
        let sqlite = Process()
        sqlite.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        let json = #"{"address":"","id":"web-1","meta":{},"name":"web","node":"node1","port":80,"registeredBy":"","tags":["old"],"weights":{"passing":1,"warning":1}}"#
        sqlite.arguments = ["python3", "-c", """
            import sqlite3, sys
            db = sqlite3.connect(sys.argv[1]); db.execute("UPDATE services SET record = ?", (sys.argv[2],)); db.commit()
            """, path, json]
        try sqlite.run()
        sqlite.waitUntilExit()
        #expect(sqlite.terminationStatus == 0)
        let reopened = try Catalog(path: path)
        #expect(reopened.state.instances(of: "web").map(\.value.tags) == [["old"]])
    }

    /// Check and service rows written before the fields of entry tag 0x42 still load.
    @Test func checkRowsWithoutTheExtensionStillLoad() throws {
        let directory = try TemporaryDirectory()
        let path = directory.path("registry.db")
        do {
            let catalog = try Catalog(path: path)
            try apply(catalog, web("web-1"), .register(node: node1, service: nil, checks: [ttlCheck("t", service: "web-1", status: .passing)],
                                                       replaceChecks: false))
        }
        let sqlite = Process()
        sqlite.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        sqlite.arguments = ["python3", "-c", """
            import sqlite3, sys
            db = sqlite3.connect(sys.argv[1]); (blob,) = db.execute("SELECT record FROM checks").fetchone()
            db.execute("UPDATE checks SET record = ?", (blob[:-5],))
            (blob,) = db.execute("SELECT record FROM services").fetchone()
            db.execute("UPDATE services SET record = ?", (blob[:-1],)); db.commit()
            """, path]
        try sqlite.run()
        sqlite.waitUntilExit()
        #expect(sqlite.terminationStatus == 0)
        let reopened = try Catalog(path: path)
        #expect(reopened.state.checks.values.map(\.value.definition) == [CheckDefinition(ttlSeconds: 10)])
        #expect(reopened.state.checks.values.map(\.value.status) == [.passing])
        #expect(reopened.state.instances(of: "web").map(\.value.id) == ["web-1"])
    }
}
