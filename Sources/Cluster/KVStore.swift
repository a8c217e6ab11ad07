#if canImport(Glibc)
import Glibc
#endif
import Raft
import Store

/// A command of the replicated key-value store, as it travels in a log entry.
public enum KVCommand: Sendable, Equatable {
    case put(key: String, value: [UInt8], flags: UInt64)
    /// Consul's `?cas=N`: write only if the key's ModifyIndex is N (0: only if absent).
    case compareAndSet(key: String, value: [UInt8], flags: UInt64, modifyIndex: UInt64)
    case delete(key: String)
    /// `?recurse` delete of every key with the prefix.
    case deleteTree(prefix: String)
    /// Consul's `DELETE ?cas=N`: delete only if the key's ModifyIndex is N; true if it is absent.
    case deleteIfModifyIndex(key: String, modifyIndex: UInt64)

    /// Keys longer than this are refused (Consul's limit is about the same).
    public static let keyBytesMax = 512
    /// Values larger than this are refused (Consul's default KV limit is 512 KiB).
    public static let valueBytesMax = 512 << 10

    public var encoded: [UInt8] {
        var out = ByteWriter()
        switch self {
        case .put(let key, let value, let flags):
            out.u8(1); out.bytes(Array(key.utf8)); out.bytes(value); out.u64(flags)
        case .compareAndSet(let key, let value, let flags, let index):
            out.u8(2); out.bytes(Array(key.utf8)); out.bytes(value); out.u64(flags); out.u64(index)
        case .delete(let key):
            out.u8(3); out.bytes(Array(key.utf8))
        case .deleteTree(let prefix):
            out.u8(4); out.bytes(Array(prefix.utf8))
        case .deleteIfModifyIndex(let key, let index):
            out.u8(5); out.bytes(Array(key.utf8)); out.u64(index)
        }
        return out.bytes
    }

    public init(decoding bytes: [UInt8]) throws(PeerFrameError) {
        var r = ByteReader(bytes)
        let op = try r.u8()
        func string() throws(PeerFrameError) -> String { String(decoding: try r.bytes(), as: UTF8.self) }
        switch op {
        case 1: self = .put(key: try string(), value: try r.bytes(), flags: try r.u64())
        case 2: self = .compareAndSet(key: try string(), value: try r.bytes(), flags: try r.u64(), modifyIndex: try r.u64())
        case 3: self = .delete(key: try string())
        case 4: self = .deleteTree(prefix: try string())
        case 5: self = .deleteIfModifyIndex(key: try string(), modifyIndex: try r.u64())
        default: throw PeerFrameError(offset: 0, message: "unknown KV command \(op)")
        }
        guard r.remaining == 0 else { throw PeerFrameError(offset: r.offset, message: "trailing bytes in a KV command") }
    }
}

/// One key as Consul's KV API reports it.
public struct KVEntry: Sendable, Equatable {
    public var key: String
    public var value: [UInt8]
    public var flags: UInt64
    public var createIndex: UInt64
    public var modifyIndex: UInt64
}

/// The replicated KV state machine, applied from the Raft log into `kv.db`.
///
/// Each entry is applied together with the last applied index, in the transaction of its Ready's
/// batch (`commitApplied`), so a restart skips exactly what is already in (entries at or below
/// it are replayed by the core and ignored).
/// Indices are Raft log indices: CreateIndex/ModifyIndex mean what Consul's do.
public final class KVStore: @unchecked Sendable {
    // @unchecked: written only by the Raft driver's loop (apply); reads take `lock`.

    /// Outcomes of recent commands by log index, for the proposer to read after its entry
    /// applied; older ones are forgotten.
    public static let outcomesMax = 4096

    private let database: Database
    /// Guards everything below and the database: apply runs on the Raft loop, reads on HTTP loops.
    private let lock = NSLockLike()
    /// Statements prepared once: applying an entry must not re-parse SQL (it runs per write, per server).
    private let setApplied: Statement
    private let selectModifyIndex: Statement
    private let deleteKey: Statement
    private let deletePrefix: Statement
    private let upsertKey: Statement
    private let selectKey: Statement
    private let selectPrefix: Statement
    /// Copies the WAL back off the Raft thread (an apply never runs a checkpoint's fsyncs).
    private var checkpointer: BackgroundCheckpointer?
    private var applied: UInt64 = 0
    private var lastModify: UInt64 = 0
    private var outcomes: [UInt64: Bool] = [:]
    private var outcomeOrder: [UInt64] = []

    public var appliedIndex: UInt64 { lock.withLock { applied } }
    /// The highest ModifyIndex of any write (Consul's X-Consul-Index for KV).
    public var lastModifyIndex: UInt64 { lock.withLock { lastModify } }

    public init(path: String) throws(StoreError) {
        database = try Database(path: path, durability: .rebuildable)
        try database.execute("""
            CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, flags INTEGER NOT NULL,
                                           create_index INTEGER NOT NULL, modify_index INTEGER NOT NULL);
            CREATE TABLE IF NOT EXISTS applied (id INTEGER PRIMARY KEY CHECK (id = 1), idx INTEGER NOT NULL);
            """)
        setApplied = try database.prepare("INSERT OR REPLACE INTO applied (id, idx) VALUES (1, ?)")
        selectModifyIndex = try database.prepare("SELECT modify_index FROM kv WHERE key = ?")
        deleteKey = try database.prepare("DELETE FROM kv WHERE key = ?")
        deletePrefix = try database.prepare("DELETE FROM kv WHERE substr(key, 1, ?) = ?")
        upsertKey = try database.prepare("""
            INSERT INTO kv (key, value, flags, create_index, modify_index) VALUES (?, ?, ?, ?, ?)
            ON CONFLICT(key) DO UPDATE SET value = excluded.value, flags = excluded.flags, modify_index = excluded.modify_index
            """)
        selectKey = try database.prepare("SELECT key, value, flags, create_index, modify_index FROM kv WHERE key = ?")
        selectPrefix = try database.prepare(
            "SELECT key, value, flags, create_index, modify_index FROM kv WHERE substr(key, 1, ?) = ? ORDER BY key")
        if case .integer(let index)? = try database.scalar("SELECT idx FROM applied WHERE id = 1") { applied = UInt64(index) }
        if case .integer(let index)? = try database.scalar("SELECT max(modify_index) FROM kv") { lastModify = UInt64(index) }
        checkpointer = try BackgroundCheckpointer(path: path, writer: database)
    }

    deinit {
        checkpointer?.stop()
    }

    /// Applies a committed entry (on the driver's loop). Entries already applied are skipped.
    public func apply(_ entry: Entry) throws(StoreError) {
        let index = entry.index.rawValue
        let command = try? KVCommand(decoding: entry.data)
        try lock.withLock { () throws(StoreError) in
            guard index > applied else { return }
            var outcome = false
            do {
                try database.batchedTransaction { () throws(StoreError) in
                    if let command { outcome = try execute(command, at: index) }
                    try setApplied.run(.integer(Int64(index)))
                }
            } catch let error as StoreError {
                throw error
            } catch {
                preconditionFailure("unexpected error \(error)")
            }
            applied = index
            if outcome { lastModify = index }
            outcomes[index] = outcome
            outcomeOrder.append(index)
            if outcomeOrder.count > Self.outcomesMax { outcomes[outcomeOrder.removeFirst()] = nil }
        }
    }

    /// Commits the entries applied since the last call as one transaction (once per Ready).
    public func commitApplied() throws {
        try lock.withLock { () throws(StoreError) in try database.commitBatch() }
    }

    /// Whether the command at `index` took effect (a CAS may not); nil if unknown or forgotten.
    public func outcome(at index: UInt64) -> Bool? { lock.withLock { outcomes[index] } }

    private func execute(_ command: KVCommand, at index: UInt64) throws(StoreError) -> Bool {
        switch command {
        case .put(let key, let value, let flags):
            try upsert(key, value, flags, index)
            return true
        case .compareAndSet(let key, let value, let flags, let expected):
            let rows = try selectModifyIndex.query(.text(key))
            let current = rows.first?.first
            let matches: Bool
            switch current {
            case .integer(let modify)?: matches = UInt64(modify) == expected
            default: matches = expected == 0
            }
            guard matches else { return false }
            try upsert(key, value, flags, index)
            return true
        case .delete(let key):
            try deleteKey.run(.text(key))
            return true
        case .deleteTree(let prefix):
            try deletePrefix.run(.integer(Int64(prefix.utf8.count)), .text(prefix))
            return true
        case .deleteIfModifyIndex(let key, let expected):
            // Consul's kvsDeleteCAS: an absent key is a success, a different index a failure.
            guard case .integer(let modify)? = try selectModifyIndex.query(.text(key)).first?.first else { return true }
            guard UInt64(modify) == expected else { return false }
            try deleteKey.run(.text(key))
            return true
        }
    }

    private func upsert(_ key: String, _ value: [UInt8], _ flags: UInt64, _ index: UInt64) throws(StoreError) {
        try upsertKey.run(.text(key), .blob(value), .integer(Int64(bitPattern: flags)), .integer(Int64(index)), .integer(Int64(index)))
    }

    /// One key, or every key with the prefix when `recurse`.
    public func get(_ key: String, recurse: Bool) throws(StoreError) -> [KVEntry] {
        try lock.withLock { () throws(StoreError) in
            let rows = recurse ? try selectPrefix.query(.integer(Int64(key.utf8.count)), .text(key)) : try selectKey.query(.text(key))
            return rows.map { row in
                func int(_ value: SQLValue) -> UInt64 { if case .integer(let v) = value { return UInt64(bitPattern: v) } else { return 0 } }
                var entry = KVEntry(key: "", value: [], flags: int(row[2]), createIndex: int(row[3]), modifyIndex: int(row[4]))
                if case .text(let k) = row[0] { entry.key = k }
                if case .blob(let v) = row[1] { entry.value = v }
                return entry
            }
        }
    }
}

extension KVStore: SnapshotParticipant {
    public var snapshotName: String { "kv" }

    public func snapshotData() throws -> [UInt8] {
        try lock.withLock { () throws(StoreError) in try database.serialize() }
    }

    public func pinSnapshotData() throws -> PinnedImage {
        try lock.withLock { () throws(StoreError) in try database.pinImage() }
    }

    public func validateSnapshot(_ data: [UInt8]) throws {
        try Self.checkImage(try Database(deserializing: data, name: "snapshot section 'kv'"))
    }

    /// The image replaces kv.db through SQLite's backup API: one write transaction, so a crash
    /// leaves the old store or the new one. The applied index is set in the image first, so it
    /// changes in that same transaction.
    public func restoreSnapshot(_ data: [UInt8], appliedIndex: UInt64) throws {
        let image = try Database(deserializing: data, name: "snapshot section 'kv'")
        try Self.checkImage(image)
        try image.execute("INSERT OR REPLACE INTO applied (id, idx) VALUES (1, \(Int64(bitPattern: appliedIndex)))")
        try lock.withLock { () throws(StoreError) in
            try database.replaceContents(with: image)
            applied = appliedIndex
            if case .integer(let index)? = try database.scalar("SELECT max(modify_index) FROM kv") {
                lastModify = UInt64(index)
            } else {
                lastModify = 0
            }
            outcomes = [:]
            outcomeOrder = []
        }
    }

    /// The image has kv.db's tables (an image of another state machine is refused).
    private static func checkImage(_ image: Database) throws(StoreError) {
        _ = try image.scalar("SELECT count(*) FROM kv WHERE key = '' AND create_index = 0 AND modify_index = 0 AND flags = 0")
        _ = try image.scalar("SELECT idx FROM applied WHERE id = 1")
    }
}

/// A mutex without Foundation (Cluster keeps Foundation out of its core types). The
/// pthread_mutex_t lives on the heap: its address must not move while locked.
final class NSLockLike: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>

    init() {
        mutex = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    func withLock<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }
}
