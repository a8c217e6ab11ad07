import Cluster
import Foundation
import Raft
import Store
import Testing

@Suite("durable Raft log")
struct RaftStorageTests {
    final class Directory {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("disco-raftdb-\(UUID().uuidString)")
        init() throws { try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true) }
        var path: String { url.appendingPathComponent("raft.db").path }
        deinit { try? FileManager.default.removeItem(at: url) }
    }

    func entries(_ range: ClosedRange<UInt64>, term: UInt64) -> [Entry] {
        range.map { Entry(term: Term(term), index: LogIndex($0), data: Array("e\($0)".utf8)) }
    }

    @Test func aRestartedNodeRecoversExactlyWhatItPersisted() throws {
        let directory = try Directory()
        let config = RaftConfig(id: 1, initialMembership: Membership(voters: [1]))
        var node = RaftNode(config: config)
        let storage = try RaftStorage(path: directory.path)
        node.campaign()
        for i in 0..<5 {
            if i > 0 { _ = try node.propose(Array("value \(i)".utf8)) }
            while node.hasReady {
                let ready = node.ready()
                try storage.save(ready)
                node.advance(ready)
            }
        }
        #expect(node.isLeader)
        let hardState = node.hardState
        let lastIndex = node.lastIndex
        let log = (1...lastIndex.rawValue).map { node.entry(at: LogIndex($0)) }

        // A new process: open the file again and rebuild the node from it.
        let state = try RaftStorage(path: directory.path).load()
        let restarted = RaftNode(config: config, persistent: state)
        #expect(state.hardState == hardState)
        #expect(restarted.lastIndex == lastIndex)
        #expect((1...restarted.lastIndex.rawValue).map { restarted.entry(at: LogIndex($0)) } == log)
        #expect(state.entries.last.map { String(decoding: $0.data, as: UTF8.self) } == "value 4")
    }

    @Test func aConflictingSuffixIsReplaced() throws {
        let directory = try Directory()
        let storage = try RaftStorage(path: directory.path)
        try storage.save(snapshot: nil, entries: entries(1...5, term: 1), hardState: HardState(term: 1, vote: 2, commit: 2))
        try storage.save(snapshot: nil, entries: entries(3...4, term: 2), hardState: HardState(term: 2, vote: 3, commit: 3))
        let state = try RaftStorage(path: directory.path).load()
        #expect(state.entries.map { "\($0.term.rawValue)/\($0.index.rawValue)" } == ["1/1", "1/2", "2/3", "2/4"])
        #expect(state.hardState == HardState(term: 2, vote: 3, commit: 3))
    }

    /// A save skips the suffix DELETE when its entries come after every stored one: a reopened
    /// file, or one whose log a snapshot replaced, must still know where its log ends.
    @Test func aConflictingSuffixIsReplacedAfterARestartAndAfterASnapshot() throws {
        let directory = try Directory()
        try RaftStorage(path: directory.path).save(snapshot: nil, entries: entries(1...5, term: 1),
                                                   hardState: HardState(term: 1, vote: 2, commit: 2))
        let reopened = try RaftStorage(path: directory.path)
        try reopened.save(snapshot: nil, entries: entries(4...4, term: 2), hardState: HardState(term: 2, vote: 3, commit: 3))
        var state = try RaftStorage(path: directory.path).load()
        #expect(state.entries.map { "\($0.term.rawValue)/\($0.index.rawValue)" } == ["1/1", "1/2", "1/3", "2/4"])
        // A leader's snapshot past the log replaces all of it; appends follow it, then a conflict.
        let membership = Membership(voters: [1, 2, 3])
        try reopened.save(snapshot: Snapshot(index: 9, term: 3, membership: membership, data: [7]), entries: [],
                          hardState: HardState(term: 3, commit: 9))
        try reopened.save(snapshot: nil, entries: entries(10...12, term: 3), hardState: nil)
        try reopened.save(snapshot: nil, entries: entries(11...11, term: 4), hardState: HardState(term: 4, commit: 9))
        state = try RaftStorage(path: directory.path).load()
        #expect(state.entries.map { "\($0.term.rawValue)/\($0.index.rawValue)" } == ["3/10", "4/11"])
    }

    @Test func snapshotsDropTheLogTheyCover() throws {
        let directory = try Directory()
        let storage = try RaftStorage(path: directory.path)
        let membership = Membership(voters: [1, 2, 3])
        try storage.save(snapshot: nil, entries: entries(1...6, term: 1), hardState: HardState(term: 1, commit: 6))
        // The log holds the snapshot's last entry: the entries after it stay.
        try storage.saveSnapshot(Snapshot(index: 4, term: 1, membership: membership, data: [1, 2, 3]))
        var state = try storage.load()
        #expect(state.snapshot == Snapshot(index: 4, term: 1, membership: membership, data: [1, 2, 3]))
        #expect(state.entries.map(\.index.rawValue) == [5, 6])
        // A snapshot from a leader whose history differs replaces the whole log.
        try storage.save(snapshot: Snapshot(index: 8, term: 3, membership: membership, data: [9]), entries: [],
                         hardState: HardState(term: 3, commit: 8))
        state = try storage.load()
        #expect(state.entries.isEmpty)
        #expect(state.snapshot?.index == 8)
        #expect(state.hardState.commit == 8)
    }

    /// A compaction's covered entries are deleted a bounded number per later save, not in the
    /// snapshot's transaction; until then a load (a restart) skips them, and a restart in the
    /// middle carries on deleting where the last one stopped.
    @Test func coveredEntriesAreDeletedAFewPerSave() throws {
        let directory = try Directory()
        let membership = Membership(voters: [1])
        let perSave = UInt64(RaftStorage.coveredEntriesDeletedPerSaveMin)
        let total = 3 * perSave + 10
        func stored() throws -> SQLValue? { try Database(path: directory.path).scalar("SELECT count(*) FROM entries") }
        var storage = try RaftStorage(path: directory.path)
        try storage.save(snapshot: nil, entries: entries(1...total, term: 1), hardState: HardState(term: 1, commit: LogIndex(total)))
        try storage.saveSnapshot(Snapshot(index: LogIndex(total - 5), term: 1, membership: membership, data: [7]))
        #expect(try stored() == .integer(Int64(total)))
        #expect(storage.coveredEntriesStored == total - 5)
        #expect(try storage.load().entries.map(\.index.rawValue) == Array(total - 4...total))

        // A save of one entry deletes the minimum; a save of many, twice as many as it appends.
        try storage.save(snapshot: nil, entries: entries(total + 1...total + 1, term: 1), hardState: nil)
        #expect(try stored() == .integer(Int64(total + 1 - perSave)))
        let batch = perSave + 1
        try storage.save(snapshot: nil, entries: entries(total + 2...total + 1 + batch, term: 1), hardState: nil)
        #expect(try stored() == .integer(Int64(total + 1 + batch - perSave - 2 * batch)))

        // A restart reads only what the snapshot does not cover, and finishes the deletion.
        storage = try RaftStorage(path: directory.path)
        #expect(storage.coveredEntriesStored == total - 5 - perSave - 2 * batch)
        let state = try storage.load()
        #expect(state.snapshot?.index == LogIndex(total - 5))
        #expect(state.entries.map(\.index.rawValue) == Array(total - 4...total + 1 + batch))
        try storage.save(snapshot: nil, entries: [], hardState: HardState(term: 2, commit: LogIndex(total)))
        #expect(storage.coveredEntriesStored == 0)
        #expect(try stored() == .integer(Int64(batch + 6)))
        #expect(try storage.load().entries.map(\.index.rawValue) == Array(total - 4...total + 1 + batch))
    }

    /// A snapshot this server takes is kept in a file beside raft.db that the row names; the
    /// next one replaces it, and one installed from the leader (in the row) removes it.
    @Test func aSnapshotTakenHereIsKeptInAFileOfItsOwn() throws {
        let directory = try Directory()
        let membership = Membership(voters: [1, 2, 3])
        let storage = try RaftStorage(path: directory.path)
        func snapshotFiles() throws -> [String] {
            try FileManager.default.contentsOfDirectory(atPath: directory.url.path).filter { $0.contains("-snapshot-") }.sorted()
        }
        try storage.save(snapshot: nil, entries: entries(1...10, term: 1), hardState: HardState(term: 1, commit: 10))
        let first = Snapshot(index: 6, term: 1, membership: membership, data: Array(repeating: 7, count: 70_000))
        let file = storage.snapshotFilePath(for: 6)
        // Written on any thread first; raft.db knows nothing of it until it is recorded.
        let crc = try RaftStorage.writeSnapshotFile(first.data, to: file)
        #expect(try storage.load().snapshot == nil)
        #expect(try storage.recordSnapshot(first, file: file, crc: crc))
        #expect(try snapshotFiles() == ["raft.db-snapshot-6"])
        #expect(try Database(path: directory.path).scalar("SELECT length(data) FROM snapshot") == .integer(0))
        #expect(try RaftStorage(path: directory.path).load().snapshot == first)

        // An older one than raft.db holds is refused, and its file removed.
        let older = Snapshot(index: 5, term: 1, membership: membership, data: [5])
        let olderFile = storage.snapshotFilePath(for: 5)
        #expect(try !storage.recordSnapshot(older, file: olderFile, crc: RaftStorage.writeSnapshotFile(older.data, to: olderFile)))
        #expect(try snapshotFiles() == ["raft.db-snapshot-6"])

        let second = Snapshot(index: 9, term: 1, membership: membership, data: [9, 9])
        try storage.saveSnapshot(second)
        #expect(try snapshotFiles() == ["raft.db-snapshot-9"])
        #expect(try RaftStorage(path: directory.path).load().snapshot == second)

        let installed = Snapshot(index: 20, term: 2, membership: membership, data: [2, 0])
        try storage.save(snapshot: installed, entries: [], hardState: HardState(term: 2, commit: 20))
        #expect(try snapshotFiles().isEmpty)
        #expect(try RaftStorage(path: directory.path).load().snapshot == installed)
    }

    /// A snapshot file that is damaged or gone is an error naming it, never an empty state; files
    /// raft.db does not name (a crash while writing or replacing one) are removed on request
    /// (the driver's, at start).
    @Test func aDamagedOrMissingSnapshotFileIsReportedByName() throws {
        let directory = try Directory()
        let storage = try RaftStorage(path: directory.path)
        try storage.save(snapshot: nil, entries: entries(1...4, term: 1), hardState: HardState(term: 1, commit: 4))
        try storage.saveSnapshot(Snapshot(index: 3, term: 1, membership: Membership(voters: [1]), data: Array("state".utf8)))
        let file = storage.snapshotFilePath(for: 3)
        for leftover in ["raft.db-snapshot-7.tmp", "raft.db-snapshot-2"] {
            #expect(FileManager.default.createFile(atPath: directory.url.appendingPathComponent(leftover).path, contents: Data([1])))
        }
        #expect(FileManager.default.createFile(atPath: directory.url.appendingPathComponent("raft.db2-snapshot-1").path, contents: Data([1])))
        try RaftStorage(path: directory.path).removeLeftoverSnapshotFiles()
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory.url.path).filter { $0.contains("-snapshot-") }.sorted()
                == ["raft.db-snapshot-3", "raft.db2-snapshot-1"])

        try Data("stale".utf8).write(to: URL(fileURLWithPath: file))
        #expect {
            _ = try RaftStorage(path: directory.path).load()
        } throws: { error in
            "\(error)" == "\(file): corrupt Raft snapshot: it fails its checksum (damaged on disk)"
        }
        try FileManager.default.removeItem(atPath: file)
        #expect {
            _ = try RaftStorage(path: directory.path).load()
        } throws: { error in
            "\(error)" == "\(file): corrupt Raft snapshot: cannot open it: No such file or directory"
        }
    }

    @Test func aCorruptLogIsReportedWithItsFileNeverRepaired() throws {
        let directory = try Directory()
        do {
            let storage = try RaftStorage(path: directory.path)
            try storage.save(snapshot: nil, entries: entries(1...4, term: 1), hardState: HardState(term: 1, commit: 4))
        }
        // Simulate damage: a hole in the log.
        try Database(path: directory.path).execute("DELETE FROM entries WHERE idx = 2")
        do {
            _ = try RaftStorage(path: directory.path).load()
            Issue.record("a log with a gap loaded")
        } catch {
            #expect(error.description == "\(directory.path): corrupt Raft log: log has a gap: expected entry 2, found 3")
        }
        #expect(try Database(path: directory.path).scalar("SELECT count(*) FROM entries") == .integer(3))
    }

    @Test func aCommitBeyondTheLogIsCorrupt() throws {
        let directory = try Directory()
        let storage = try RaftStorage(path: directory.path)
        try storage.save(snapshot: nil, entries: entries(1...2, term: 1), hardState: HardState(term: 1, commit: 9))
        #expect(throws: RaftStorageError.self) { _ = try storage.load() }
    }

    @Test func aForeignFileIsRefusedByName() throws {
        let directory = try Directory()
        try Data("not a database, just text that is long enough to be a header".utf8)
            .write(to: URL(fileURLWithPath: directory.path))
        do {
            _ = try RaftStorage(path: directory.path)
            Issue.record("opened a foreign file")
        } catch {
            #expect(error.description.hasPrefix("\(directory.path): cannot open the Raft log: file is not a database"))
        }
    }

    /// A byte flipped on disk in an entry's data is caught when the log loads (issue 11.4).
    @Test func aDamagedEntryFailsItsChecksum() throws {
        let directory = try Directory()
        try RaftStorage(path: directory.path).save(snapshot: nil, entries: entries(1...3, term: 1),
                                                    hardState: HardState(term: 1, vote: nil, commit: 3))
        #expect(try RaftStorage(path: directory.path).load().entries.count == 3)
        try Database(path: directory.path).execute("UPDATE entries SET data = X'6532' WHERE idx = 2")  // "e2" -> "e2" intact
        #expect(try RaftStorage(path: directory.path).load().entries.count == 3)
        try Database(path: directory.path).execute("UPDATE entries SET data = X'6533' WHERE idx = 2")  // "e2" -> "e3"
        #expect(throws: RaftStorageError.self) { _ = try RaftStorage(path: directory.path).load() }
        do {
            _ = try RaftStorage(path: directory.path).load()
        } catch {
            #expect(error.description == "\(directory.path): corrupt Raft log: entry 2 fails its checksum (damaged on disk)")
        }
    }

    /// A raft.db written before checksums (schema 1) is migrated in place and loads; its old
    /// entries have no checksum, new ones do; its snapshot, in the row, is read from there.
    @Test func aVersionOneLogIsMigrated() throws {
        let directory = try Directory()
        try Database(path: directory.path).execute("""
            CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
            CREATE TABLE hard_state (id INTEGER PRIMARY KEY CHECK (id = 1), term INTEGER NOT NULL, vote INTEGER,
                                     commit_index INTEGER NOT NULL);
            CREATE TABLE entries (idx INTEGER PRIMARY KEY, term INTEGER NOT NULL, kind INTEGER NOT NULL, data BLOB NOT NULL);
            CREATE TABLE snapshot (id INTEGER PRIMARY KEY CHECK (id = 1), idx INTEGER NOT NULL, term INTEGER NOT NULL,
                                   membership BLOB NOT NULL, data BLOB NOT NULL);
            INSERT INTO meta VALUES ('schema_version', 1);
            INSERT INTO hard_state VALUES (1, 1, NULL, 1);
            INSERT INTO entries VALUES (1, 1, 0, X'6531');
            """)
        let storage = try RaftStorage(path: directory.path)
        try storage.save(snapshot: nil, entries: entries(2...2, term: 1), hardState: nil)
        let state = try RaftStorage(path: directory.path).load()
        #expect(state.entries.map(\.index) == [1, 2])
        #expect(try Database(path: directory.path).scalar("SELECT value FROM meta WHERE key = 'schema_version'") == .integer(3))
        #expect(try Database(path: directory.path).scalar("SELECT count(*) FROM entries WHERE crc IS NULL") == .integer(1))
    }
}
