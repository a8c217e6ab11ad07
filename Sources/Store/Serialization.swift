import CSQLite

/// Whole-database images, for Raft snapshots: a state machine's file is serialised into a
/// snapshot on one server and restored into another server's file.
extension Database {
    /// Byte offsets 18 and 19 of the SQLite header: the file format's write and read versions,
    /// 2 for WAL and 1 for a rollback journal. An in-memory database cannot use WAL, so images
    /// are stored with 1 (the restoring side keeps its own journal mode).
    static let headerWriteVersionOffset = 18
    static let headerReadVersionOffset = 19

    /// A consistent image of the main database (`sqlite3_serialize`), WAL content included.
    public func serialize() throws(StoreError) -> [UInt8] {
        try commitBatch()
        var size: sqlite3_int64 = 0
        guard let pointer = sqlite3_serialize(handle, "main", &size, 0) else {
            // An empty database (no page written yet) serialises to nothing.
            if sqlite3_errcode(handle) == SQLITE_OK { return [] }
            throw error(sqlite3_errcode(handle), sql: nil)
        }
        defer { sqlite3_free(pointer) }
        var bytes = Array(UnsafeRawBufferPointer(start: pointer, count: Int(size)))
        if bytes.count > Self.headerReadVersionOffset {
            bytes[Self.headerWriteVersionOffset] = 1
            bytes[Self.headerReadVersionOffset] = 1
        }
        return bytes
    }

    /// An in-memory database holding a copy of `image` (`sqlite3_deserialize`). The image is
    /// checked with `PRAGMA quick_check`: bytes that are not a sound SQLite database are an
    /// error naming `name`, so a damaged snapshot is refused before anything is replaced.
    public convenience init(deserializing image: [UInt8], name: String) throws(StoreError) {
        try self.init(path: ":memory:", durability: Durability(journal: .delete, synchronous: .full), label: name)
        guard !image.isEmpty else { return }
        guard let buffer = sqlite3_malloc64(sqlite3_uint64(image.count)) else {
            throw StoreError(code: SQLITE_NOMEM, extendedCode: SQLITE_NOMEM, message: "out of memory", path: name, sql: nil)
        }
        image.withUnsafeBytes { buffer.copyMemory(from: $0.baseAddress!, byteCount: image.count) }
        let flags = UInt32(SQLITE_DESERIALIZE_FREEONCLOSE | SQLITE_DESERIALIZE_RESIZEABLE)
        let result = sqlite3_deserialize(handle, "main", buffer.assumingMemoryBound(to: UInt8.self),
                                         sqlite3_int64(image.count), sqlite3_int64(image.count), flags)
        guard result == SQLITE_OK else { throw error(result, sql: nil) }
        let check: String
        do throws(StoreError) {
            check = try quickCheck()
        } catch {
            throw StoreError(code: error.code, extendedCode: error.extendedCode,
                             message: "not a sound SQLite database: \(error.message)", path: name, sql: nil)
        }
        guard check == "ok" else {
            throw StoreError(code: SQLITE_CORRUPT, extendedCode: SQLITE_CORRUPT,
                             message: "not a sound SQLite database: \(check)", path: name, sql: nil)
        }
    }

    /// Replaces this database's whole content with `source`'s, with SQLite's backup API, in one
    /// write transaction on this database: a crash leaves either the old content or the new,
    /// never a mix. Prepared statements of this connection stay usable (SQLite re-prepares them
    /// when the schema changed).
    public func replaceContents(with source: Database) throws(StoreError) {
        try commitBatch()
        guard let backup = sqlite3_backup_init(handle, "main", source.handle, "main") else {
            throw error(sqlite3_errcode(handle), sql: nil)
        }
        let stepResult = sqlite3_backup_step(backup, -1)
        let finishResult = sqlite3_backup_finish(backup)
        guard stepResult == SQLITE_DONE, finishResult == SQLITE_OK else {
            throw error(stepResult == SQLITE_DONE ? finishResult : stepResult, sql: nil)
        }
    }
}

/// An image of a database as of the moment it was pinned, read later on any thread while its
/// owner goes on writing: a Raft snapshot is pinned on the Raft thread between applies and
/// serialised off it (issue 16: serialising a 20 MB state held the Raft thread 110-500 ms).
///
/// For a file in WAL mode, pinning opens a second connection and begins a read transaction on
/// it: WAL readers see the database as of their first read, and neither wait for nor block the
/// writer. Anything else (an in-memory database) is serialised when pinned.
public final class PinnedImage: @unchecked Sendable {
    // @unchecked: `reader` is used by one thread at a time, first the pinning one, then the
    // serialising one (SQLite's multi-thread mode allows a connection to move between threads).
    private let reader: Database?
    private let taken: [UInt8]

    init(reader: Database) {
        self.reader = reader
        self.taken = []
    }

    /// An image already taken (a state that is not a database in WAL mode).
    public init(taken: [UInt8]) {
        self.reader = nil
        self.taken = taken
    }

    /// The image, as of the pin (`Database.serialize`). Once only: the read transaction ends.
    public func serialize() throws(StoreError) -> [UInt8] {
        guard let reader else { return taken }
        defer { try? reader.execute("ROLLBACK") }
        return try reader.serialize()
    }
}

extension Database {
    /// Pins this database's content as of now (committing a batch first), for `serialize` later
    /// on another thread.
    public func pinImage() throws(StoreError) -> PinnedImage {
        try commitBatch()
        let file = sqlite3_db_filename(handle, "main").map { String(cString: $0) } ?? ""
        guard !file.isEmpty, try scalar("PRAGMA journal_mode") == .text("wal") else { return PinnedImage(taken: try serialize()) }
        let reader = try Database(path: file, durability: Durability(journal: .wal, synchronous: .normal), label: path)
        try reader.execute("BEGIN")
        // A read transaction starts at its first read: the image is fixed from here.
        _ = try reader.scalar("SELECT count(*) FROM sqlite_master")
        return PinnedImage(reader: reader)
    }
}
