import Foundation
import Store
import Testing

@Suite("SQLite store")
struct StoreTests {
    final class Directory {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("disco-store-\(UUID().uuidString)")
        init() throws { try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true) }
        func path(_ name: String) -> String { url.appendingPathComponent(name).path }
        deinit { try? FileManager.default.removeItem(at: url) }
    }

    @Test func durabilitySettingsAreApplied() throws {
        let directory = try Directory()
        let durable = try Database(path: directory.path("raft.db"))
        #expect(try durable.scalar("PRAGMA journal_mode") == .text("wal"))
        #expect(try durable.scalar("PRAGMA synchronous") == .integer(2))  // FULL
        let rebuildable = try Database(path: directory.path("registry.db"), durability: .rebuildable)
        #expect(try rebuildable.scalar("PRAGMA synchronous") == .integer(1))  // NORMAL
    }

    /// The writer never checkpoints (below its 64 MiB backstop): the background checkpointer
    /// does, copying the WAL back into the database file while the writer keeps committing.
    @Test func theBackgroundCheckpointerCopiesTheWALBack() throws {
        let directory = try Directory()
        let path = directory.path("registry.db")
        let writer = try Database(path: path, durability: .rebuildable)
        try writer.execute("CREATE TABLE t (i INTEGER PRIMARY KEY, b BLOB)")
        let checkpointer = try BackgroundCheckpointer(path: path, writer: writer)
        defer { checkpointer.stop() }
        #expect(try writer.scalar("PRAGMA wal_autocheckpoint") == .integer(Int64(BackgroundCheckpointer.writerCheckpointPages)))
        func fileBytes(_ path: String) -> Int { ((try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? Int) ?? 0 }
        let insert = try writer.prepare("INSERT INTO t (i, b) VALUES (?, ?)")
        let rows = 2000, rowBytes = 2048
        for row in 0..<rows {
            try insert.run(.integer(Int64(row)), .blob([UInt8](repeating: UInt8(row & 0xFF), count: rowBytes)))
        }
        // Everything committed so far reaches the database file without another commit: the
        // writer alone (backstop at 64 MiB) would have left the 4 MiB in the WAL. Waited for:
        // a checkpoint begun after the last commit (one running across it copies only part).
        let checkpointsAfterWrites = checkpointer.checkpoints + 2
        let deadline = Date().addingTimeInterval(10)
        while (fileBytes(path) < rows * rowBytes || checkpointer.checkpoints < checkpointsAfterWrites) && Date() < deadline {
            usleep(20_000)
        }
        #expect(fileBytes(path) >= rows * rowBytes, "database file \(fileBytes(path)) bytes; last checkpoint \(checkpointer.last)")
        #expect(checkpointer.last.result == 0 && checkpointer.last.copiedFrames == checkpointer.last.walFrames)
        #expect(try writer.scalar("SELECT count(*) FROM t") == .integer(Int64(rows)))
    }

    @Test func typedBindingRoundTrips() throws {
        let directory = try Directory()
        let db = try Database(path: directory.path("t.db"))
        try db.execute("CREATE TABLE t (i INTEGER, r REAL, s TEXT, b BLOB, n)")
        let insert = try db.prepare("INSERT INTO t VALUES (?, ?, ?, ?, ?)")
        try insert.run(.integer(Int64.max), .real(2.5), .text("héllo ✓"), .blob([0, 1, 255]), .null)
        try insert.run(.integer(-1), .real(0), .text(""), .blob([]), .null)
        let rows = try db.prepare("SELECT i, r, s, b, n FROM t ORDER BY rowid").query()
        #expect(rows == [
            [.integer(Int64.max), .real(2.5), .text("héllo ✓"), .blob([0, 1, 255]), .null],
            [.integer(-1), .real(0), .text(""), .blob([]), .null],
        ])
        #expect(db.lastInsertRowID == 2)
    }

    @Test func errorsCarrySQLitesCodeAndMessage() throws {
        let directory = try Directory()
        let db = try Database(path: directory.path("t.db"))
        try db.execute("CREATE TABLE k (key TEXT PRIMARY KEY)")
        let insert = try db.prepare("INSERT INTO k VALUES (?)")
        try insert.run(.text("a"))
        do {
            try insert.run(.text("a"))
            Issue.record("duplicate key accepted")
        } catch {
            #expect(error.code == StoreError.constraint)
            #expect(error.message.contains("UNIQUE constraint failed: k.key"))
            #expect(error.description.hasPrefix(directory.path("t.db")))
            #expect(error.sql == "INSERT INTO k VALUES (?)")
        }
        #expect(throws: StoreError.self) { _ = try db.prepare("SELEC nonsense") }
    }

    @Test func transactionsCommitOrRollBackWhole() throws {
        let directory = try Directory()
        let db = try Database(path: directory.path("t.db"))
        try db.execute("CREATE TABLE k (key TEXT PRIMARY KEY)")
        let insert = try db.prepare("INSERT INTO k VALUES (?)")
        try db.transaction { () throws(StoreError) in
            try insert.run(.text("a"))
            try insert.run(.text("b"))
        }
        #expect(throws: StoreError.self) {
            try db.transaction { () throws(StoreError) in
                try insert.run(.text("c"))
                try insert.run(.text("a"))  // fails: c must not survive
            }
        }
        #expect(try db.prepare("SELECT key FROM k ORDER BY key").query() == [[.text("a")], [.text("b")]])
    }

    @Test func aFileThatIsNotADatabaseIsAnErrorNamingIt() throws {
        let directory = try Directory()
        let path = directory.path("raft.db")
        try Data(repeating: 0x5A, count: 8192).write(to: URL(fileURLWithPath: path))
        do {
            _ = try Database(path: path)
            Issue.record("opened garbage as a database")
        } catch {
            #expect(error.code == StoreError.notADatabase)
            #expect(error.description.contains(path))
        }
        // The file is left as it was: never silently reset.
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == Data(repeating: 0x5A, count: 8192))
    }

    @Test func dataSurvivesReopeningAndBackupIsConsistent() throws {
        let directory = try Directory()
        do {
            let db = try Database(path: directory.path("a.db"))
            try db.execute("CREATE TABLE k (key TEXT PRIMARY KEY, value BLOB)")
            let insert = try db.prepare("INSERT INTO k VALUES (?, ?)")
            try db.transaction { () throws(StoreError) in
                for i in 0..<100 { try insert.run(.text("k\(i)"), .blob([UInt8(i)])) }
            }
            try db.backup(to: directory.path("copy.db"))
        }
        let reopened = try Database(path: directory.path("a.db"))
        #expect(try reopened.scalar("SELECT count(*) FROM k") == .integer(100))
        #expect(try reopened.quickCheck() == "ok")
        let copy = try Database(path: directory.path("copy.db"))
        #expect(try copy.scalar("SELECT value FROM k WHERE key = ?", .text("k42")) == .blob([42]))
    }

    /// A pinned image is the database as of the pin, though the writer goes on committing (and
    /// batching) before it is read, on another thread; an in-memory database is pinned too.
    @Test func aPinnedImageIsTheDatabaseAsOfThePin() throws {
        let directory = try Directory()
        let writer = try Database(path: directory.path("kv.db"), durability: .rebuildable)
        try writer.execute("CREATE TABLE k (i INTEGER PRIMARY KEY, b BLOB)")
        let insert = try writer.prepare("INSERT INTO k VALUES (?, ?)")
        for i in 0..<50 { try insert.run(.integer(Int64(i)), .blob(Array(repeating: UInt8(i), count: 3000))) }
        try writer.batchedTransaction { () throws(StoreError) in try insert.run(.integer(50), .blob([50])) }
        let pinned = try writer.pinImage()  // commits the batch first: row 50 is in
        try writer.transaction { () throws(StoreError) in
            for i in 51..<300 { try insert.run(.integer(Int64(i)), .blob(Array(repeating: 1, count: 3000))) }
            try writer.execute("DELETE FROM k WHERE i < 10")
        }
        let image = try DispatchQueue(label: "reader").sync { try pinned.serialize() }
        let copy = try Database(deserializing: image, name: "pinned")
        #expect(try copy.scalar("SELECT count(*) FROM k") == .integer(51))
        #expect(try copy.scalar("SELECT min(i) FROM k") == .integer(0))
        #expect(try writer.scalar("SELECT count(*) FROM k") == .integer(290))

        let memory = try Database(deserializing: image, name: "memory")
        let pinnedMemory = try memory.pinImage()
        try memory.execute("DELETE FROM k")
        #expect(try Database(deserializing: pinnedMemory.serialize(), name: "again").scalar("SELECT count(*) FROM k") == .integer(51))
    }
}
