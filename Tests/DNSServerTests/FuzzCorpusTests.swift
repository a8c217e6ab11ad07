import DNSTesting
import Foundation
import Testing

/// Replays the fuzzers' seed corpus and every crasher kept under Tests/Fixtures/fuzz through
/// the same properties the fuzzers check (a violation traps, failing the run).
@Suite("fuzz corpus replay")
struct FuzzCorpusTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/fuzz")

    static func files(_ kind: String) -> [URL] {
        let directory = root.appendingPathComponent(kind)
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        return names.sorted().map { directory.appendingPathComponent($0) }
    }

    @Test func wireInputs() throws {
        let files = Self.files("wire")
        #expect(files.count >= 10)
        let checks = FuzzChecks.Wire()
        for file in files {
            let bytes = try [UInt8](Data(contentsOf: file))
            bytes.withUnsafeBytes { checks.check($0) }
        }
    }

    @Test func zoneInputs() throws {
        let files = Self.files("zone")
        #expect(files.count >= 2)
        let checks = FuzzChecks.ZoneText()
        for file in files {
            checks.check(try [UInt8](Data(contentsOf: file)))
        }
    }
}
