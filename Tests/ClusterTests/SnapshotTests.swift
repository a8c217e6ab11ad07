import Cluster
import Foundation
import Logging
import NIOCore
import NIOPosix
import Raft
import Store
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("snapshot container")
struct SnapshotContainerTests {
    let sample = SnapshotContainer(index: 4242, term: 7, sections: [("kv", Array("key-value image".utf8)), ("registry", [0, 1, 2, 255])])

    @Test func roundTrip() throws {
        let bytes = sample.encoded
        #expect(Array(bytes.prefix(8)) == Array("DISCOSNP".utf8))
        let decoded = try SnapshotContainer(decoding: bytes)
        #expect(decoded == sample)
        #expect(decoded.section("kv") == Array("key-value image".utf8))
        #expect(decoded.section("none") == nil)
        let empty = SnapshotContainer(index: 0, term: 0, sections: [])
        #expect(try SnapshotContainer(decoding: empty.encoded) == empty)
    }

    /// The checksum is zlib's CRC-32: the IEEE check value of "123456789" is 0xCBF43926.
    @Test func checksumIsCRC32() throws {
        let bytes = sample.encoded
        let stored = bytes.suffix(4).reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
        // Recompute independently with the bitwise algorithm.
        var crc: UInt32 = 0xFFFF_FFFF
        for byte in bytes.dropLast(4) {
            crc ^= UInt32(byte)
            for _ in 0..<8 { crc = crc & 1 != 0 ? (crc >> 1) ^ 0xEDB8_8320 : crc >> 1 }
        }
        #expect(stored == crc ^ 0xFFFF_FFFF)
    }

    /// The eight-bytes-a-step CRC against the bitwise one, at every length up to 40 and every
    /// start offset up to 8 (the aligned loads, the byte tail), and split across two updates.
    @Test func slicedCRCMatchesTheBitwiseOne() {
        func bitwise(_ bytes: ArraySlice<UInt8>) -> UInt32 {
            var crc: UInt32 = 0xFFFF_FFFF
            for byte in bytes {
                crc ^= UInt32(byte)
                for _ in 0..<8 { crc = crc & 1 != 0 ? (crc >> 1) ^ 0xEDB8_8320 : crc >> 1 }
            }
            return crc ^ 0xFFFF_FFFF
        }
        var generator = SystemRandomNumberGenerator()
        let bytes = (0..<64).map { _ in UInt8.random(in: 0...255, using: &generator) }
        for start in 0..<8 {
            for length in 0...40 {
                let slice = bytes[start..<(start + length)]
                #expect(CRC32.checksum(slice) == bitwise(slice), "start \(start), length \(length)")
                let middle = start + length / 3
                #expect(CRC32.finish(CRC32.update(CRC32.update(CRC32.start, bytes[start..<middle]), bytes[middle..<(start + length)]))
                        == bitwise(slice))
            }
        }
        #expect(CRC32.checksum(Array("123456789".utf8)[...]) == 0xCBF4_3926)
    }

    @Test func everyTruncationIsAnError() throws {
        let bytes = sample.encoded
        for length in 0..<bytes.count {
            do {
                _ = try SnapshotContainer(decoding: Array(bytes.prefix(length)))
                Issue.record("a snapshot cut to \(length) of \(bytes.count) bytes decoded")
            } catch {
                #expect(!error.message.isEmpty)
            }
        }
        // Cut inside a section, the error says what is missing.
        do {
            _ = try SnapshotContainer(decoding: Array(bytes.prefix(bytes.count - 10)))
        } catch {
            #expect(error.message.contains("truncated"), "\(error)")
        }
    }

    @Test func everyFlippedByteIsAnError() throws {
        let bytes = sample.encoded
        for offset in bytes.indices {
            var damaged = bytes
            damaged[offset] ^= 0x20
            #expect(throws: SnapshotError.self, "byte \(offset)") { _ = try SnapshotContainer(decoding: damaged) }
        }
        var damaged = bytes
        damaged[46] ^= 1  // inside the kv section's data (header 32, name 2 + 2, length 8)
        do {
            _ = try SnapshotContainer(decoding: damaged)
        } catch {
            #expect(error.message.hasPrefix("checksum mismatch"), "\(error)")
        }
    }

    @Test func foreignBytesAndOtherVersionsAreNamed() throws {
        #expect(throws: SnapshotError(offset: 0, message: "not a Disco snapshot (no DISCOSNP magic)")) {
            _ = try SnapshotContainer(decoding: Array("SQLite format 3\0 and more".utf8))
        }
        var future = sample.encoded
        future[9] = 2
        do {
            _ = try SnapshotContainer(decoding: future)
        } catch {
            #expect(error.message.hasPrefix("version 2 is not supported"), "\(error)")
        }
    }
}

@Suite("SQLite images")
struct SQLiteImageTests {
    final class Directory {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("disco-images-\(UUID().uuidString)")
        init() throws { try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true) }
        func path(_ name: String) -> String { url.appendingPathComponent(name).path }
        deinit { try? FileManager.default.removeItem(at: url) }
    }

    @Test func aWALDatabaseSerialisesAndReplacesAnother() throws {
        let directory = try Directory()
        let source = try Database(path: directory.path("a.db"), durability: .rebuildable)
        try source.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER); INSERT INTO t VALUES ('x', 1), ('y', 2)")
        let image = try source.serialize()
        let copy = try Database(deserializing: image, name: "image")
        #expect(try copy.scalar("SELECT sum(v) FROM t") == .integer(3))

        let target = try Database(path: directory.path("b.db"), durability: .rebuildable)
        try target.execute("CREATE TABLE other (z); INSERT INTO other VALUES (9)")
        let statement = try target.prepare("SELECT count(*) FROM sqlite_master WHERE type = 'table'")
        try target.replaceContents(with: copy)
        #expect(try target.scalar("SELECT v FROM t WHERE k = 'y'") == .integer(2))
        #expect(throws: StoreError.self) { _ = try target.scalar("SELECT * FROM other") }
        let rows = try statement.query()
        #expect(rows == [[.integer(1)]], "\(rows)")
        // The replaced file is a WAL database again once reopened.
        let reopened = try Database(path: directory.path("b.db"), durability: .rebuildable)
        #expect(try reopened.scalar("SELECT count(*) FROM t") == .integer(2))
    }

    @Test func damagedImagesAreRefusedByName() throws {
        let directory = try Directory()
        let source = try Database(path: directory.path("a.db"))
        try source.execute("CREATE TABLE t (v); INSERT INTO t VALUES (zeroblob(20000))")
        var image = try source.serialize()
        #expect(throws: StoreError.self) { _ = try Database(deserializing: Array("not a database at all, not at all".utf8), name: "junk") }
        for k in 4096..<8192 { image[k] = 0xA5 }
        do {
            _ = try Database(deserializing: image, name: "section 'kv'")
            Issue.record("a damaged image was accepted")
        } catch {
            #expect(error.path == "section 'kv'")
        }
    }

    /// A Ready's applies are one transaction, committed by `commitApplied` (issue 16): until
    /// then the applying connection reads them, and a crash loses them all, never a part (the
    /// log replays them from the applied index, which is in the same transaction).
    @Test func kvAppliesAreOneTransactionUntilCommitted() throws {
        let directory = try Directory()
        let path = directory.path("kv.db")
        let store = try KVStore(path: path)
        func put(_ i: UInt64) throws { try store.apply(Entry(term: 1, index: LogIndex(i), data: KVCommand.put(key: "k\(i)", value: [UInt8(i)], flags: 0).encoded)) }
        for i: UInt64 in 1...3 { try put(i) }
        try store.commitApplied()
        for i: UInt64 in 4...6 { try put(i) }
        // The applier's own reads see the open batch at once.
        #expect(try store.get("k", recurse: true).map(\.key) == ["k1", "k2", "k3", "k4", "k5", "k6"])
        #expect(store.appliedIndex == 6)
        // Another connection (a restart after a crash now) sees only the committed batch.
        let other = try KVStore(path: path)
        #expect(other.appliedIndex == 3)
        #expect(try other.get("k", recurse: true).map(\.key) == ["k1", "k2", "k3"])
        try store.commitApplied()
        let after = try KVStore(path: path)
        #expect(after.appliedIndex == 6)
        #expect(try after.get("k6", recurse: false).first?.modifyIndex == 6)
    }

    @Test func kvStoreRestoresAnImageWithItsAppliedIndex() throws {
        let directory = try Directory()
        let a = try KVStore(path: directory.path("a.db"))
        for i in 1...5 { try a.apply(Entry(term: 1, index: LogIndex(UInt64(i)), data: KVCommand.put(key: "k\(i)", value: [UInt8(i)], flags: 0).encoded)) }
        let image = try a.snapshotData()
        try a.validateSnapshot(image)
        let b = try KVStore(path: directory.path("b.db"))
        try b.apply(Entry(term: 1, index: 1, data: KVCommand.put(key: "old", value: [1], flags: 0).encoded))
        try b.restoreSnapshot(image, appliedIndex: 90)
        #expect(b.appliedIndex == 90)
        #expect(b.lastModifyIndex == 5)
        #expect(try b.get("k", recurse: true).map(\.key) == ["k1", "k2", "k3", "k4", "k5"])
        #expect(try b.get("old", recurse: false).isEmpty)
        // Entries at or below the restored index are skipped; later ones apply.
        try b.apply(Entry(term: 1, index: 90, data: KVCommand.put(key: "skipped", value: [], flags: 0).encoded))
        try b.apply(Entry(term: 1, index: 91, data: KVCommand.put(key: "k6", value: [6], flags: 0).encoded))
        #expect(try b.get("skipped", recurse: false).isEmpty)
        #expect(try b.get("k6", recurse: false).first?.modifyIndex == 91)
        try b.commitApplied()
        // A restart reads the restored state.
        let reopened = try KVStore(path: directory.path("b.db"))
        #expect(reopened.appliedIndex == 91)
        // An image of another database is not a KV image.
        let foreign = try Database(path: directory.path("c.db"))
        try foreign.execute("CREATE TABLE services (name)")
        #expect(throws: (any Error).self) { try b.validateSnapshot(try foreign.serialize()) }
        #expect(try b.get("k6", recurse: false).count == 1)
    }
}

@Suite("snapshot frames")
struct SnapshotFrameTests {
    /// A snapshot of several MB is one frame, well inside `PeerCodec.frameBytesMax`.
    @Test func aFourMegabyteSnapshotCrossesTheTransport() throws {
        #expect(SnapshotContainer.bytesMax < PeerCodec.frameBytesMax)
        let pair = try TransportPair()
        let (sender, inbox) = (pair.sender, pair.inbox)
        defer { withExtendedLifetime(pair) {} }  // the transports live until the test ends
        var data = [UInt8](repeating: 0, count: 4 << 20)
        for k in data.indices { data[k] = UInt8(truncatingIfNeeded: k &* 2654435761 >> 13) }
        let container = SnapshotContainer(index: 100, term: 3, sections: [("kv", data)]).encoded
        let snapshot = Snapshot(index: 100, term: 3, membership: Membership(voters: [1, 2, 3]), data: container)
        sender.send([Message(from: 1, to: 2, term: 3, kind: .snapshot(snapshot))])
        let deadline = Date().addingTimeInterval(10)
        while inbox.all.isEmpty && Date() < deadline { usleep(20_000) }
        guard case .snapshot(let received)? = inbox.all.first?.kind else {
            Issue.record("no snapshot arrived")
            return
        }
        #expect(received == snapshot)
        #expect(try SnapshotContainer(decoding: received.data).section("kv") == data)
    }
}
