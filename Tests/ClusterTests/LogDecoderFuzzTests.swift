import Cluster
import Foundation
import Raft
import Registry
import Testing

/// Damaged log entries, as a peer or a damaged disk could hand them over: the registry's and
/// the KV store's command decoders and the membership decoder answer with a typed error or a
/// command, never a trap, and a registry command that still decodes applies (issue 11.4: the
/// log decoders' half of the fuzzing). CI runs a short sweep; `DISCO_FUZZ_ITERATIONS=1000000`
/// runs the full one.
@Suite("log decoder fuzzing")
struct LogDecoderFuzzTests {
    static var iterations: Int {
        ProcessInfo.processInfo.environment["DISCO_FUZZ_ITERATIONS"].flatMap { Int($0) } ?? 20_000
    }

    static func seeds() -> [[UInt8]] {
        let node = NodeRecord(name: "node1", address: "10.0.0.1")
        var service = ServiceInstance(id: "web-1", node: "node1", name: "web", tags: ["v2"], port: 80)
        service.meta = ["version": "2"]
        let check = CheckRecord(id: "service:web-1", node: "node1", name: "web", serviceID: "web-1", status: .passing,
                                definition: CheckDefinition(http: "http://10.0.0.1/health", ttlSeconds: nil))
        let register = CatalogCommand.register(node: node, service: service,
                                               checks: [CheckRegistration(check, statusGiven: true)], replaceChecks: true)
        let registry: [CatalogCommand] = [
            register,
            .deregister(node: "node1", serviceID: "web-1", checkID: nil),
            .updateCheck(node: "node1", checkID: "service:web-1", status: .critical, output: "down"),
            .checkStatuses([CheckStatusUpdate(node: "node1", checkID: "service:web-1", status: .warning, output: "slow")]),
            .checkRunners([1, 2, 3]),
            .batch([register, .batch([.checkRunners([4])])]),
        ]
        let kv: [KVCommand] = [
            .put(key: "a/b", value: Array("value".utf8), flags: 7),
            .compareAndSet(key: "a/b", value: [1, 2], flags: 0, modifyIndex: 9),
            .delete(key: "a/b"), .deleteTree(prefix: "a/"), .deleteIfModifyIndex(key: "a/b", modifyIndex: 3),
        ]
        return registry.map(\.encoded) + kv.map(\.encoded) + [Membership(voters: [1, 2, 3], learners: [4]).encoded]
    }

    static func mutate(_ bytes: [UInt8], _ random: inout SplitMix64) -> [UInt8] {
        var out = bytes
        for _ in 0...Int(random.next() % 4) {
            switch random.next() % 5 {
            case 0 where !out.isEmpty: out[Int(random.next() % UInt64(out.count))] ^= UInt8(truncatingIfNeeded: random.next() | 1)
            case 1 where !out.isEmpty: out.removeLast(Int(random.next() % UInt64(out.count)))
            case 2: out.insert(UInt8(truncatingIfNeeded: random.next()), at: Int(random.next() % UInt64(out.count + 1)))
            case 3 where out.count > 1:
                // A length or count field set huge.
                let at = Int(random.next() % UInt64(out.count - 1))
                out[at] = 0xFF
                out[at + 1] = 0xFF
            default:
                out += out.prefix(Int(random.next() % 16))
            }
        }
        return out
    }

    @Test func damagedEntriesDecodeToTypedErrorsOrCommandsThatApply() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("disco-logfuzz-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let catalog = try Catalog(path: directory.appendingPathComponent("registry.db").path)
        var random = SplitMix64(seed: 0xD15C0)
        let seeds = Self.seeds()
        var decoded = 0, applied: UInt64 = 0
        for i in 0..<Self.iterations {
            let bytes = Self.mutate(seeds[i % seeds.count], &random)
            if let command = try? CatalogCommand(decoding: bytes) {
                decoded += 1
                // Applying is total: whatever decodes applies, or is a no-op (every 16th, for time).
                if i % 16 == 0 {
                    applied += 1
                    _ = try catalog.apply(index: applied, data: command.encoded)
                }
            }
            if (try? KVCommand(decoding: bytes)) != nil { decoded += 1 }
            if Membership(decoding: bytes) != nil { decoded += 1 }
        }
        // The sweep exercised both outcomes: some damaged entries still decode, most do not.
        #expect(decoded > 0 && decoded < Self.iterations)
    }
}
