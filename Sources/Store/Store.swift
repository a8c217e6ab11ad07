import CSQLite

/// An SQLite failure: SQLite's (extended) result code and message, and what it was doing.
public struct StoreError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The primary result code (`SQLITE_CONSTRAINT`, `SQLITE_NOTADB`, ...).
    public var code: Int32
    public var extendedCode: Int32
    public var message: String
    /// The database file, so an operator knows which one.
    public var path: String
    /// The SQL being run, when there was one.
    public var sql: String?

    public init(code: Int32, extendedCode: Int32, message: String, path: String, sql: String? = nil) {
        self.code = code
        self.extendedCode = extendedCode
        self.message = message
        self.path = path
        self.sql = sql
    }

    public var description: String {
        var text = "\(path): \(message) (SQLite code \(extendedCode))"
        if let sql { text += " in: \(sql)" }
        return text
    }

    public static let constraint = SQLITE_CONSTRAINT
    public static let busy = SQLITE_BUSY
    public static let notADatabase = SQLITE_NOTADB
    public static let corrupt = SQLITE_CORRUPT
    public static let full = SQLITE_FULL
    public static let ioError = SQLITE_IOERR
}

/// A value bound to or read from a statement.
public enum SQLValue: Sendable, Equatable {
    case integer(Int64)
    case real(Double)
    case text(String)
    case blob([UInt8])
    case null
}

/// How the log of a database is kept and how hard it syncs (PRAGMA journal_mode, synchronous).
public struct Durability: Sendable, Equatable {
    public enum Journal: String, Sendable { case wal = "WAL", delete = "DELETE" }
    public enum Synchronous: String, Sendable {
        /// Every transaction is fsynced before commit returns (the Raft log).
        case full = "FULL"
        /// WAL checkpoints are synced, commits are not (state that can be rebuilt).
        case normal = "NORMAL"
    }

    public var journal: Journal
    public var synchronous: Synchronous

    public init(journal: Journal, synchronous: Synchronous) {
        self.journal = journal
        self.synchronous = synchronous
    }

    /// DESIGN.md: the Raft log is WAL + FULL.
    public static let durable = Durability(journal: .wal, synchronous: .full)
    /// DESIGN.md: registry.db may use NORMAL, since log + snapshot rebuild it.
    public static let rebuildable = Durability(journal: .wal, synchronous: .normal)
}

/// One SQLite connection. Not thread-safe: one owner uses it (the Raft driver, the registry
/// applier), as SQLite's own default threading mode expects.
public final class Database {
    /// How long a statement waits for a lock held by another connection before SQLITE_BUSY.
    public static let busyTimeoutMilliseconds: Int32 = 5000

    public let path: String
    let handle: OpaquePointer

    /// Opens (creating if needed) the database at `path`, applies `durability`, and checks that
    /// the file is a readable SQLite database: a torn or foreign file is an error naming it,
    /// never a silent reset. `label`, if given, names the database in errors instead of `path`
    /// (for in-memory databases).
    public init(path: String, durability: Durability = .durable, label: String? = nil) throws(StoreError) {
        self.path = label ?? path
        var handle: OpaquePointer?
        let flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX
        let result = sqlite3_open_v2(path, &handle, flags, nil)
        guard result == SQLITE_OK, let handle else {
            let message = handle.map { String(cString: sqlite3_errmsg($0)) } ?? String(cString: sqlite3_errstr(result))
            if let handle { sqlite3_close_v2(handle) }
            throw StoreError(code: result & 0xFF, extendedCode: result, message: message, path: label ?? path, sql: nil)
        }
        self.handle = handle
        sqlite3_extended_result_codes(handle, 1)
        sqlite3_busy_timeout(handle, Self.busyTimeoutMilliseconds)
        do throws(StoreError) {
            // Reading the schema is the first thing that fails on a file that is not a database.
            try execute("PRAGMA journal_mode = \(durability.journal.rawValue)")
            try execute("PRAGMA synchronous = \(durability.synchronous.rawValue)")
            try execute("PRAGMA foreign_keys = ON")
        } catch {
            sqlite3_close_v2(handle)
            throw error
        }
    }

    deinit {
        sqlite3_finalize(beginImmediate)
        sqlite3_finalize(commit)
        sqlite3_close_v2(handle)
    }

    /// `BEGIN IMMEDIATE` and `COMMIT`, prepared once: every write transaction runs both, and
    /// parsing them again each time was a visible part of a one-entry transaction's CPU (issue 16).
    private var beginImmediate: OpaquePointer?
    private var commit: OpaquePointer?

    /// Runs a statement without parameters or rows, prepared on first use and kept in `slot`.
    private func runKept(_ slot: inout OpaquePointer?, _ sql: String) throws(StoreError) {
        if slot == nil {
            var statement: OpaquePointer?
            let result = sqlite3_prepare_v3(handle, sql, -1, UInt32(SQLITE_PREPARE_PERSISTENT), &statement, nil)
            guard result == SQLITE_OK, let statement else { throw error(result, sql: sql) }
            slot = statement
        }
        let result = sqlite3_step(slot)
        sqlite3_reset(slot)
        guard result == SQLITE_DONE else { throw error(result, sql: sql) }
    }

    private func begin() throws(StoreError) { try runKept(&beginImmediate, "BEGIN IMMEDIATE") }
    private func commitOpenTransaction() throws(StoreError) { try runKept(&commit, "COMMIT") }

    func error(_ result: Int32, sql: String?) -> StoreError {
        StoreError(code: result & 0xFF, extendedCode: sqlite3_extended_errcode(handle),
                   message: String(cString: sqlite3_errmsg(handle)), path: path, sql: sql)
    }

    /// Runs one or more statements without results (schema, pragmas).
    public func execute(_ sql: String) throws(StoreError) {
        var message: UnsafeMutablePointer<CChar>?
        let result = sqlite3_exec(handle, sql, nil, nil, &message)
        guard result == SQLITE_OK else {
            let text = message.map { String(cString: $0) } ?? String(cString: sqlite3_errmsg(handle))
            sqlite3_free(message)
            throw StoreError(code: result & 0xFF, extendedCode: sqlite3_extended_errcode(handle), message: text,
                             path: path, sql: sql)
        }
    }

    public func prepare(_ sql: String) throws(StoreError) -> Statement {
        var statement: OpaquePointer?
        let result = sqlite3_prepare_v3(handle, sql, -1, UInt32(SQLITE_PREPARE_PERSISTENT), &statement, nil)
        guard result == SQLITE_OK, let statement else { throw error(result, sql: sql) }
        return Statement(database: self, handle: statement, sql: sql)
    }

    /// A scalar query's first column of its first row, or nil when there is no row.
    public func scalar(_ sql: String, _ values: SQLValue...) throws(StoreError) -> SQLValue? {
        let statement = try prepare(sql)
        try statement.bind(values)
        return try statement.step() ? statement.value(0) : nil
    }

    /// Runs `body` in one transaction: committed if it returns, rolled back if it throws.
    /// `BEGIN IMMEDIATE` takes the write lock up front, so the commit cannot fail with BUSY.
    /// A batch left open by `batchedTransaction` is committed first.
    public func transaction<T, E: Error>(_ body: () throws(E) -> T) throws -> T {
        try commitBatch()
        try begin()
        do {
            let value = try body()
            try commitOpenTransaction()
            return value
        } catch {
            rollbackIfOpen()
            throw error
        }
    }

    /// After a failed statement: SQLite may have rolled the transaction back already.
    private func rollbackIfOpen() {
        if sqlite3_get_autocommit(handle) == 0 { try? execute("ROLLBACK") }
    }

    /// Whether `batchedTransaction` left a transaction open for `commitBatch`. Kept, not read
    /// from SQLite: `commitBatch` (also called first by `transaction`, `serialize`, ...) must
    /// commit only a batch, never a transaction some caller of those has open.
    private var batchOpen = false

    /// Runs `body` inside the open batch transaction, opening one if none is: a state machine
    /// applies a Ready's committed entries as one SQLite transaction (one set of WAL frames and
    /// locks per Ready instead of per entry; issue 16), and the driver commits it with
    /// `commitBatch` once the Ready's entries are applied. The connection sees its own writes
    /// at once, so reads through it are unaffected. For `synchronous=NORMAL` state machines
    /// only: a batch not yet committed is lost by a crash exactly as a NORMAL commit can be,
    /// and the log replays it. If `body` throws, the whole batch is rolled back (the earlier
    /// entries in it too): the caller must stop and let the next start replay them.
    public func batchedTransaction<T, E: Error>(_ body: () throws(E) -> T) throws -> T {
        if !batchOpen {
            try begin()
            batchOpen = true
        }
        do {
            return try body()
        } catch {
            batchOpen = false
            rollbackIfOpen()
            throw error
        }
    }

    /// Commits the transaction `batchedTransaction` left open, if any.
    public func commitBatch() throws(StoreError) {
        guard batchOpen else { return }
        batchOpen = false
        do {
            try commitOpenTransaction()
        } catch {
            rollbackIfOpen()
            throw error
        }
    }

    public var lastInsertRowID: Int64 { sqlite3_last_insert_rowid(handle) }
    /// Rows changed by the last INSERT, UPDATE or DELETE.
    public var changes: Int { Int(sqlite3_changes(handle)) }

    /// PRAGMA quick_check: "ok", or the first problems found (a corrupt file).
    public func quickCheck() throws(StoreError) -> String {
        guard case .text(let result)? = try scalar("PRAGMA quick_check") else { return "no result" }
        return result
    }

    /// Copies the whole database to `path` with SQLite's online backup API (a consistent
    /// snapshot while this connection keeps working).
    public func backup(to destinationPath: String) throws(StoreError) {
        try commitBatch()
        let destination = try Database(path: destinationPath, durability: Durability(journal: .delete, synchronous: .full))
        guard let backup = sqlite3_backup_init(destination.handle, "main", handle, "main") else {
            throw destination.error(sqlite3_errcode(destination.handle), sql: nil)
        }
        let stepResult = sqlite3_backup_step(backup, -1)
        let finishResult = sqlite3_backup_finish(backup)
        guard stepResult == SQLITE_DONE, finishResult == SQLITE_OK else {
            throw destination.error(stepResult == SQLITE_DONE ? finishResult : stepResult, sql: nil)
        }
    }
}

/// A prepared statement with typed binding. Reused: `reset()` (done by `run`) readies it again.
public final class Statement {
    let database: Database
    let handle: OpaquePointer
    public let sql: String

    init(database: Database, handle: OpaquePointer, sql: String) {
        self.database = database
        self.handle = handle
        self.sql = sql
    }

    deinit {
        sqlite3_finalize(handle)
    }

    /// SQLite copies text and blobs bound with this destructor.
    private static let transient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)

    /// Binds parameters 1...n in order.
    public func bind(_ values: [SQLValue]) throws(StoreError) {
        sqlite3_clear_bindings(handle)
        for (offset, value) in values.enumerated() {
            let index = Int32(offset + 1)
            let result: Int32
            switch value {
            case .integer(let v): result = sqlite3_bind_int64(handle, index, v)
            case .real(let v): result = sqlite3_bind_double(handle, index, v)
            case .text(let v): result = sqlite3_bind_text(handle, index, v, -1, Self.transient)
            case .blob(let v):
                result = v.withUnsafeBytes { bytes in
                    // A zero-length blob still binds as a blob, not NULL.
                    sqlite3_bind_blob(handle, index, bytes.baseAddress ?? UnsafeRawPointer(bitPattern: 1), Int32(v.count),
                                      Self.transient)
                }
            case .null: result = sqlite3_bind_null(handle, index)
            }
            guard result == SQLITE_OK else { throw database.error(result, sql: sql) }
        }
    }

    /// Advances to the next row: true if there is one, false when done.
    public func step() throws(StoreError) -> Bool {
        let result = sqlite3_step(handle)
        switch result {
        case SQLITE_ROW: return true
        case SQLITE_DONE: return false
        default:
            sqlite3_reset(handle)
            throw database.error(result, sql: sql)
        }
    }

    public func reset() {
        sqlite3_reset(handle)
    }

    /// Binds, steps to completion, resets: for INSERT/UPDATE/DELETE.
    public func run(_ values: SQLValue...) throws(StoreError) {
        try run(values)
    }

    public func run(_ values: [SQLValue]) throws(StoreError) {
        try bind(values)
        defer { reset() }
        while try step() {}
    }

    /// Binds and collects every row.
    public func query(_ values: SQLValue...) throws(StoreError) -> [[SQLValue]] {
        try bind(values)
        defer { reset() }
        var rows: [[SQLValue]] = []
        while try step() {
            rows.append((0..<columnCount).map { value($0) })
        }
        return rows
    }

    public var columnCount: Int { Int(sqlite3_column_count(handle)) }

    public func value(_ column: Int) -> SQLValue {
        let index = Int32(column)
        switch sqlite3_column_type(handle, index) {
        case SQLITE_INTEGER: return .integer(sqlite3_column_int64(handle, index))
        case SQLITE_FLOAT: return .real(sqlite3_column_double(handle, index))
        case SQLITE_TEXT: return .text(text(column))
        case SQLITE_BLOB: return .blob(blob(column))
        default: return .null
        }
    }

    public func int64(_ column: Int) -> Int64 { sqlite3_column_int64(handle, Int32(column)) }

    public func text(_ column: Int) -> String {
        guard let pointer = sqlite3_column_text(handle, Int32(column)) else { return "" }
        return String(cString: pointer)
    }

    public func blob(_ column: Int) -> [UInt8] {
        let count = Int(sqlite3_column_bytes(handle, Int32(column)))
        guard count > 0, let pointer = sqlite3_column_blob(handle, Int32(column)) else { return [] }
        return Array(UnsafeRawBufferPointer(start: pointer, count: count))
    }
}
