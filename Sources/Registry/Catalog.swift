import Atomics
import Foundation
import Store

/// The catalog state machine: applies committed registry entries to `registry.db` and to the
/// in-memory `CatalogState` that every read and the DNS view come from.
///
/// Each entry is written with the last applied index, in the SQLite transaction of its Ready's
/// batch (`commitApplied`), so a restart resumes exactly: entries at or below it, replayed by
/// the Raft core, are skipped. The database
/// may use `synchronous=NORMAL` (DESIGN.md): it can be rebuilt from the log and a snapshot.
public final class Catalog: @unchecked Sendable {
    // @unchecked: `current`, `applied`, the database and its statements are used only by the
    // applying thread (the Raft driver's loop) and `init`; `observers` is guarded by `lock`.

    private let database: Database
    /// Guards `observers`.
    private let lock = NSLock()
    /// The applier's own copy (the Raft thread's, and `init`'s): mutated in place, then
    /// published whole. Readers never take a lock the applier needs: a reader preempted while
    /// holding one (the API's threads run at nice +10) once held the Raft thread for 2 s.
    private var current = CatalogState()
    private var applied: UInt64 = 0
    /// What readers see: `current` and `applied` as of the last apply, swapped in atomically.
    private let published = ManagedAtomic(Published(state: CatalogState(), applied: 0))

    private final class Published: AtomicReference, Sendable {
        let state: CatalogState
        let applied: UInt64
        init(state: CatalogState, applied: UInt64) {
            self.state = state
            self.applied = applied
        }
    }
    private var observers: [@Sendable (CatalogChange, CatalogState) -> Void] = []
    private let putNode, removeNode, putService, removeService, putCheck, removeCheck, putServiceIndex, putMeta: Statement
    private let clearCheckRunners, putCheckRunner: Statement
    /// Copies the WAL back off the Raft thread (an apply never runs a checkpoint's fsyncs).
    private var checkpointer: BackgroundCheckpointer?

    /// Tables added after the first release: created in files (and snapshot images) without them.
    private static let laterTables = """
        CREATE TABLE IF NOT EXISTS check_runners (id INTEGER PRIMARY KEY);
        """

    public var path: String { database.path }

    public init(path: String) throws {
        database = try Database(path: path, durability: .rebuildable)
        try database.execute("""
            CREATE TABLE IF NOT EXISTS nodes (name TEXT PRIMARY KEY, record BLOB NOT NULL,
                                              create_index INTEGER NOT NULL, modify_index INTEGER NOT NULL);
            CREATE TABLE IF NOT EXISTS services (node TEXT NOT NULL, id TEXT NOT NULL, record BLOB NOT NULL,
                                                 create_index INTEGER NOT NULL, modify_index INTEGER NOT NULL,
                                                 PRIMARY KEY (node, id));
            CREATE TABLE IF NOT EXISTS checks (node TEXT NOT NULL, id TEXT NOT NULL, record BLOB NOT NULL,
                                               create_index INTEGER NOT NULL, modify_index INTEGER NOT NULL,
                                               PRIMARY KEY (node, id));
            CREATE TABLE IF NOT EXISTS service_index (name TEXT PRIMARY KEY, idx INTEGER NOT NULL);
            CREATE TABLE IF NOT EXISTS meta (id INTEGER PRIMARY KEY CHECK (id = 1), applied INTEGER NOT NULL,
                                             catalog_index INTEGER NOT NULL, nodes_index INTEGER NOT NULL);
            """)
        try database.execute(Self.laterTables)
        putNode = try database.prepare("INSERT OR REPLACE INTO nodes (name, record, create_index, modify_index) VALUES (?, ?, ?, ?)")
        removeNode = try database.prepare("DELETE FROM nodes WHERE name = ?")
        putService = try database.prepare(
            "INSERT OR REPLACE INTO services (node, id, record, create_index, modify_index) VALUES (?, ?, ?, ?, ?)")
        removeService = try database.prepare("DELETE FROM services WHERE node = ? AND id = ?")
        putCheck = try database.prepare(
            "INSERT OR REPLACE INTO checks (node, id, record, create_index, modify_index) VALUES (?, ?, ?, ?, ?)")
        removeCheck = try database.prepare("DELETE FROM checks WHERE node = ? AND id = ?")
        putServiceIndex = try database.prepare("INSERT OR REPLACE INTO service_index (name, idx) VALUES (?, ?)")
        putMeta = try database.prepare(
            "INSERT OR REPLACE INTO meta (id, applied, catalog_index, nodes_index) VALUES (1, ?, ?, ?)")
        clearCheckRunners = try database.prepare("DELETE FROM check_runners")
        putCheckRunner = try database.prepare("INSERT INTO check_runners (id) VALUES (?)")
        try load()
        checkpointer = try BackgroundCheckpointer(path: path, writer: database)
    }

    deinit {
        checkpointer?.stop()
    }

    /// Reads registry.db into memory (at start-up, and after a snapshot replaced the file).
    public func load() throws {
        var state = CatalogState()
        var appliedIndex: UInt64 = 0
        // Rows are binary blobs (BinaryCodec.swift); JSON text rows are from before it.
        func decode<T: Decodable>(_ type: T.Type, _ value: SQLValue,
                                  _ binary: (inout BinaryReader) throws(BinaryReader.Failure) -> T) throws(RegistryError) -> T {
            switch value {
            case .blob(let bytes):
                var reader = BinaryReader(bytes)
                do throws(BinaryReader.Failure) {
                    let decoded = try binary(&reader)
                    guard reader.atEnd else { throw reader.fail("the end of the row") }
                    return decoded
                } catch {
                    throw RegistryError.storage("\(database.path): a \(T.self) row is not readable (\(error); corrupt file?)")
                }
            case .text(let text):
                if let decoded = try? JSONDecoder().decode(T.self, from: Data(text.utf8)) { return decoded }
            default:
                break
            }
            throw RegistryError.storage("\(database.path): a \(T.self) row is not readable (corrupt file?)")
        }
        func int(_ value: SQLValue) -> UInt64 { if case .integer(let v) = value { UInt64(max(v, 0)) } else { 0 } }
        for row in try database.prepare("SELECT record, create_index, modify_index FROM nodes").query() {
            state.load(node: Indexed(value: try decode(NodeRecord.self, row[0]) { r throws(BinaryReader.Failure) in try NodeRecord(from: &r) }, createIndex: int(row[1]), modifyIndex: int(row[2])))
        }
        for row in try database.prepare("SELECT record, create_index, modify_index FROM services").query() {
            state.load(service: Indexed(value: try decode(ServiceInstance.self, row[0]) { r throws(BinaryReader.Failure) in try ServiceInstance(fromRow: &r) }, createIndex: int(row[1]),
                                        modifyIndex: int(row[2])))
        }
        for row in try database.prepare("SELECT record, create_index, modify_index FROM checks").query() {
            state.load(check: Indexed(value: try decode(CheckRecord.self, row[0]) { r throws(BinaryReader.Failure) in try CheckRecord(fromRow: &r) }, createIndex: int(row[1]), modifyIndex: int(row[2])))
        }
        for row in try database.prepare("SELECT name, idx FROM service_index").query() {
            if case .text(let name) = row[0] { state.load(serviceIndex: name, int(row[1])) }
        }
        state.load(checkRunners: try database.prepare("SELECT id FROM check_runners").query().compactMap { row in
            if case .integer(let id) = row[0] { UInt64(bitPattern: id) } else { nil }
        })
        if let row = try database.prepare("SELECT applied, catalog_index, nodes_index FROM meta WHERE id = 1").query().first {
            appliedIndex = int(row[0])
            state.load(index: int(row[1]), nodesIndex: int(row[2]))
        }
        current = state
        applied = appliedIndex
        published.store(Published(state: state, applied: appliedIndex), ordering: .releasing)
    }

    /// The catalog as of the last applied entry; a cheap copy (its tables share structure).
    public var state: CatalogState { published.load(ordering: .acquiring).state }

    public var appliedIndex: UInt64 { published.load(ordering: .acquiring).applied }

    /// Where the last `apply` spent its time (read on the applying thread, to explain a slow one).
    public struct ApplyTimes: Sendable {
        public var decodeAndMemoryNanoseconds: UInt64
        public var databaseNanoseconds: UInt64
        public var observersNanoseconds: UInt64
        public var totalNanoseconds: UInt64 { decodeAndMemoryNanoseconds + databaseNanoseconds + observersNanoseconds }
    }
    /// Set by `apply` on the applying thread only.
    public private(set) var lastApplyTimes = ApplyTimes(decodeAndMemoryNanoseconds: 0, databaseNanoseconds: 0, observersNanoseconds: 0)

    /// `observer` is called after every entry that changed something, on the applying thread,
    /// with the change and the new state. It must return quickly (hand work to another thread).
    public func observe(_ observer: @escaping @Sendable (CatalogChange, CatalogState) -> Void) {
        lock.withLock { observers.append(observer) }
    }

    /// Applies the committed registry entry at `index` (on the Raft driver's loop). Returns what
    /// changed, or nil if nothing did. A malformed entry is a no-op on every server alike.
    @discardableResult
    public func apply(index: UInt64, data: [UInt8]) throws(StoreError) -> CatalogChange? {
        guard index > applied else { return nil }
        let started = DispatchTime.now().uptimeNanoseconds
        let command = try? CatalogCommand(decoding: data)
        // Mutated in place: the tables copy only the paths a reader's copy still shares.
        // Memory goes first: if the transaction below fails the process stops (ClusterRuntime)
        // and memory is rebuilt from registry.db and the log at the next start.
        let result = command.map { current.apply($0, at: index) }
        applied = index
        let state = current
        published.store(Published(state: state, applied: index), ordering: .releasing)
        let observers = lock.withLock { self.observers }
        let mutations = result?.0 ?? []
        let inMemory = DispatchTime.now().uptimeNanoseconds
        do {
            try database.batchedTransaction { () throws(StoreError) in
                for mutation in mutations { try write(mutation) }
                try putMeta.run(.integer(Int64(index)), .integer(Int64(state.index)), .integer(Int64(state.nodesIndex)))
            }
        } catch let error as StoreError {
            throw error
        } catch {
            preconditionFailure("unexpected error \(error)")
        }
        let stored = DispatchTime.now().uptimeNanoseconds
        defer {
            let now = DispatchTime.now().uptimeNanoseconds
            lastApplyTimes = ApplyTimes(decodeAndMemoryNanoseconds: inMemory - started, databaseNanoseconds: stored - inMemory,
                                        observersNanoseconds: now - stored)
        }
        guard let change = result?.1, !mutations.isEmpty else { return nil }
        for observer in observers { observer(change, state) }
        return change
    }

    private func write(_ mutation: Mutation) throws(StoreError) {
        func row(_ write: (inout BinaryWriter) -> Void) -> SQLValue {
            var writer = BinaryWriter()
            write(&writer)
            return .blob(writer.bytes)
        }
        switch mutation {
        case .putNode(let node):
            try putNode.run(.text(node.value.name), row(node.value.write), .integer(Int64(node.createIndex)), .integer(Int64(node.modifyIndex)))
        case .removeNode(let name):
            try removeNode.run(.text(name))
        case .putService(let service):
            try putService.run(.text(service.value.node), .text(service.value.id), row(service.value.write),
                               .integer(Int64(service.createIndex)), .integer(Int64(service.modifyIndex)))
        case .removeService(let key):
            try removeService.run(.text(key.node), .text(key.id))
        case .putCheck(let check):
            try putCheck.run(.text(check.value.node), .text(check.value.id), row(check.value.write),
                             .integer(Int64(check.createIndex)), .integer(Int64(check.modifyIndex)))
        case .removeCheck(let key):
            try removeCheck.run(.text(key.node), .text(key.id))
        case .serviceIndex(let name, let index):
            try putServiceIndex.run(.text(name), .integer(Int64(index)))
        case .checkRunners(let servers):
            try clearCheckRunners.run()
            for server in servers { try putCheckRunner.run(.integer(Int64(bitPattern: server))) }
        }
    }

    /// Commits the entries applied since the last call as one transaction (the driver calls it
    /// once per Ready, on its loop).
    public func commitApplied() throws {
        try database.commitBatch()
    }

    // MARK: - Snapshots (called on the Raft driver's loop, between applies)

    /// The whole of registry.db as of `appliedIndex`.
    public func snapshotImage() throws -> [UInt8] {
        try database.serialize()
    }

    /// `snapshotImage` as of now, to serialise later on another thread (`Store.PinnedImage`).
    public func pinSnapshotImage() throws -> PinnedImage {
        try database.pinImage()
    }

    /// Throws unless `image` is a registry.db that `restore` would accept.
    public func validate(image: [UInt8]) throws {
        let candidate = try Database(deserializing: image, name: "snapshot section 'registry'")
        for table in ["nodes", "services", "checks", "service_index", "meta"] {
            guard try candidate.scalar("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?", .text(table))
                    == .integer(1) else {
                throw RegistryError.storage("snapshot section 'registry' has no table \(table)")
            }
        }
    }

    /// Replaces registry.db with `image` in one write transaction (SQLite's backup API), then
    /// memory, and tells the observers that everything may have changed.
    public func restore(image: [UInt8], appliedIndex: UInt64) throws {
        try validate(image: image)
        let candidate = try Database(deserializing: image, name: "snapshot section 'registry'")
        try candidate.execute("""
            INSERT INTO meta (id, applied, catalog_index, nodes_index) VALUES (1, \(Int64(bitPattern: appliedIndex)), 0, 0)
            ON CONFLICT(id) DO UPDATE SET applied = excluded.applied
            """)
        let before = Set(state.serviceIndex.keys)
        try database.replaceContents(with: candidate)
        try database.execute(Self.laterTables)
        try load()
        let state = self.state
        let change = CatalogChange(index: appliedIndex, services: before.union(state.serviceIndex.keys), nodesChanged: true,
                                   instances: nil, checks: nil)
        for observer in lock.withLock({ observers }) { observer(change, state) }
    }
}
