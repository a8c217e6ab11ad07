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
    switch random.below(depth < 2 ? 4 : 3) {
    case 0:
        let service = random.below(3) == 0 ? nil : ServiceInstance(
            id: text(), node: node.name, name: text(), tags: (0..<random.below(3)).map { _ in text() }, address: text(),
            port: number(), meta: map(), weights: Weights(passing: number(), warning: number()), registeredBy: text())
        let checks = (0..<random.below(3)).map { _ in
            CheckRegistration(CheckRecord(
                id: text(), node: node.name, name: text(), serviceID: text(), status: HealthStatus.allCases[random.below(3)],
                output: text(), notes: text(),
                definition: CheckDefinition(http: random.below(2) == 0 ? nil : text(), method: random.below(2) == 0 ? nil : "GET",
                                            tcp: random.below(2) == 0 ? nil : text(), ttlSeconds: seconds(),
                                            intervalSeconds: seconds(), timeoutSeconds: seconds(),
                                            deregisterCriticalAfterSeconds: seconds())),
                statusGiven: random.below(2) == 0)
        }
        return .register(node: node, service: service, checks: checks, replaceChecks: random.below(2) == 0)
    case 1:
        return .deregister(node: text(), serviceID: random.below(2) == 0 ? nil : text(), checkID: random.below(2) == 0 ? nil : text())
    case 2:
        return .updateCheck(node: text(), checkID: text(), status: HealthStatus.allCases[random.below(3)], output: text())
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
        #expect(message([tag, 9]) == "malformed registry log entry: byte 1: expected a command (1 to 4)")
        #expect(message([tag, 3, 100]) == "malformed registry log entry: byte 2: expected a string length within the entry")
        #expect(message([tag, 3, 0, 0, 7, 0]) == "malformed registry log entry: byte 4: expected a check status (0, 1 or 2)")
        #expect(message([tag, 3, 1, 0xFF]) == "malformed registry log entry: byte 3: expected UTF-8 text")
        // A batch nested deeper than the decoder recurses.
        #expect(message([tag, 4, 1, 4, 1, 4, 1, 4, 1, 4, 0])
            == "malformed registry log entry: byte 9: expected batches nested at most 4 deep")
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
}
