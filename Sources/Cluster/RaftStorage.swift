import Raft
import Store

/// Why the Raft log could not be read or written. Always names the file.
public struct RaftStorageError: Error, Sendable, CustomStringConvertible {
    public var path: String
    public var message: String
    /// The SQLite failure underneath, if any.
    public var underlying: StoreError?

    public var description: String {
        underlying.map { "\(path): \(message): \($0.message) (SQLite code \($0.extendedCode))" } ?? "\(path): \(message)"
    }
}

/// The durable Raft state of one server in `DATA/raft.db`: hard state, log entries after the
/// last snapshot, and the snapshot itself: its metadata, and its state-machine bytes either in
/// the row (a snapshot installed from the leader) or in a file beside raft.db that the row
/// names (one this server took, `SnapshotFile`).
///
/// SQLite in WAL mode with `synchronous=FULL`: a committed transaction is on disk. Everything
/// one `Ready` asks to persist is written in **one transaction** (`save`), so a burst of proposals
/// batched into one Ready shares one fsync (group commit), and a crash leaves either all of a
/// Ready's state or none of it.
///
/// Invariants checked on load (a violation is a corrupt file, reported with its path, never
/// repaired silently): entries are contiguous, start right after the snapshot, terms never
/// decrease and stay at or below the hard state's term, each entry matches its CRC-32,
/// membership entries decode, and the commit index is within the log.
///
/// Entries a snapshot covers are not deleted with it but a few with every later save
/// (`coveredEntriesDeletedPerSaveMin`): deleting the 7,168 a compaction covers held the Raft
/// thread for milliseconds in one transaction (issue 16). Until then they stay in the table,
/// below the snapshot's index, and `load` skips them.
public final class RaftStorage {
    /// The layout version in `meta`; a file with another version is refused. Version 2 added
    /// `entries.crc` (a version 1 file is migrated in place: its entries keep a NULL checksum);
    /// version 3 `snapshot.data_file` and `snapshot.data_crc` (NULL: the bytes are in `data`).
    public static let schemaVersion: Int64 = 3

    public let path: String
    private let database: Database
    private let insertEntry: Statement
    private let deleteEntriesFrom: Statement
    private let deleteEntriesThrough: Statement
    private let upsertHardState: Statement
    private let upsertSnapshot: Statement
    /// Entries from `coveredFrom` through `coveredThrough` (the snapshot's index) are covered by
    /// the snapshot and still stored, waiting to be deleted (none when `coveredFrom` is above).
    private var coveredFrom: UInt64 = 1
    private var coveredThrough: UInt64 = 0
    /// The snapshot file the stored row names (its name, beside raft.db), if any.
    private var dataFile: String?
    /// No stored entry has an index above this (0: none stored). A save whose first entry comes
    /// after it has no suffix to replace, and skips that DELETE: the common case, an append.
    private var storedLastIndex: UInt64 = 0

    /// Every save deletes at least this many covered entries while any are left, and at least
    /// twice as many as it appends, so they are gone well before the next compaction whatever
    /// the batch sizes. 128 entries of a KV write are a few pages more in that save's fsync.
    public static let coveredEntriesDeletedPerSaveMin = 128

    public init(path: String) throws(RaftStorageError) {
        self.path = path
        do throws(StoreError) {
            database = try Database(path: path, durability: .durable)
            try database.execute("""
                CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
                CREATE TABLE IF NOT EXISTS hard_state (
                    id INTEGER PRIMARY KEY CHECK (id = 1),
                    term INTEGER NOT NULL, vote INTEGER, commit_index INTEGER NOT NULL);
                CREATE TABLE IF NOT EXISTS entries (
                    idx INTEGER PRIMARY KEY, term INTEGER NOT NULL, kind INTEGER NOT NULL, data BLOB NOT NULL,
                    crc INTEGER);
                CREATE TABLE IF NOT EXISTS snapshot (
                    id INTEGER PRIMARY KEY CHECK (id = 1),
                    idx INTEGER NOT NULL, term INTEGER NOT NULL, membership BLOB NOT NULL, data BLOB NOT NULL,
                    data_file TEXT, data_crc INTEGER);
                INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', \(Self.schemaVersion));
                """)
            if try database.scalar("SELECT value FROM meta WHERE key = 'schema_version'") == .integer(1) {
                try database.execute("""
                    BEGIN; ALTER TABLE entries ADD COLUMN crc INTEGER;
                    UPDATE meta SET value = 2 WHERE key = 'schema_version'; COMMIT;
                    """)
            }
            if try database.scalar("SELECT value FROM meta WHERE key = 'schema_version'") == .integer(2) {
                try database.execute("""
                    BEGIN; ALTER TABLE snapshot ADD COLUMN data_file TEXT; ALTER TABLE snapshot ADD COLUMN data_crc INTEGER;
                    UPDATE meta SET value = 3 WHERE key = 'schema_version'; COMMIT;
                    """)
            }
            insertEntry = try database.prepare("INSERT INTO entries (idx, term, kind, data, crc) VALUES (?, ?, ?, ?, ?)")
            deleteEntriesFrom = try database.prepare("DELETE FROM entries WHERE idx >= ?")
            deleteEntriesThrough = try database.prepare("DELETE FROM entries WHERE idx <= ?")
            upsertHardState = try database.prepare(
                "INSERT OR REPLACE INTO hard_state (id, term, vote, commit_index) VALUES (1, ?, ?, ?)")
            upsertSnapshot = try database.prepare(
                "INSERT OR REPLACE INTO snapshot (id, idx, term, membership, data, data_file, data_crc) VALUES (1, ?, ?, ?, ?, ?, ?)")
        } catch {
            throw RaftStorageError(path: path, message: "cannot open the Raft log", underlying: error)
        }
        let version: SQLValue?
        do throws(StoreError) {
            version = try database.scalar("SELECT value FROM meta WHERE key = 'schema_version'")
        } catch {
            throw RaftStorageError(path: path, message: "cannot read the schema version", underlying: error)
        }
        guard version == .integer(Self.schemaVersion) else {
            throw RaftStorageError(path: path, message: "schema version \(String(describing: version)) is not \(Self.schemaVersion)")
        }
        do throws(StoreError) {
            if let row = try database.prepare("SELECT idx, data_file FROM snapshot WHERE id = 1").query().first,
               case .integer(let index) = row[0] {
                let first = try database.scalar("SELECT min(idx) FROM entries")
                if case .integer(let first)? = first { coveredFrom = UInt64(first) } else { coveredFrom = UInt64(index) + 1 }
                coveredThrough = UInt64(index)
                if case .text(let name) = row[1] { dataFile = name }
            }
            if case .integer(let last)? = try database.scalar("SELECT max(idx) FROM entries") { storedLastIndex = UInt64(last) }
        } catch {
            throw RaftStorageError(path: path, message: "cannot read the snapshot's index", underlying: error)
        }
    }

    /// Removes what a crash left: a snapshot file half written, or written and not recorded, or
    /// replaced and not removed. Only for the server that owns raft.db, before it writes any
    /// (a test that opens a live raft.db to look must not remove the file being written).
    public func removeLeftoverSnapshotFiles() {
        for file in SnapshotFile.all(beside: path) where SnapshotFile.basename(file) != dataFile { SnapshotFile.remove(file) }
    }

    /// Where a snapshot this server takes at `index` is written (`writeSnapshotFile`).
    public func snapshotFilePath(for index: LogIndex) -> String { SnapshotFile.path(beside: path, index: index) }

    /// Entries still stored that the snapshot covers (tests and metrics).
    public var coveredEntriesStored: UInt64 { coveredThrough >= coveredFrom ? coveredThrough - coveredFrom + 1 : 0 }

    /// Reads everything back, checking the invariants above.
    public func load() throws(RaftStorageError) -> PersistentState {
        var state = PersistentState()
        do {
            if let row = try database.prepare("SELECT term, vote, commit_index FROM hard_state WHERE id = 1").query().first {
                guard case .integer(let term) = row[0], case .integer(let commit) = row[2] else {
                    throw corrupt("hard state row has the wrong types")
                }
                var vote: NodeID?
                if case .integer(let v) = row[1], v != 0 { vote = NodeID(rawValue: UInt64(v)) }
                state.hardState = HardState(term: Term(UInt64(term)), vote: vote, commit: LogIndex(UInt64(commit)))
            }
            if let row = try database.prepare("SELECT idx, term, membership, data, data_file, data_crc FROM snapshot WHERE id = 1")
                .query().first {
                guard case .integer(let index) = row[0], case .integer(let term) = row[1],
                      case .blob(var data) = row[3], case .blob(let membershipBytes) = row[2],
                      let membership = Membership(decoding: membershipBytes) else {
                    throw corrupt("snapshot row is not readable")
                }
                if case .text(let name) = row[4] {
                    guard case .integer(let crc) = row[5] else { throw corrupt("snapshot row names a file without its checksum") }
                    data = try SnapshotFile.read(SnapshotFile.path(beside: path, named: name), crc: UInt32(truncatingIfNeeded: crc),
                                                 bytesMax: SnapshotContainer.bytesMax)
                }
                state.snapshot = Snapshot(index: LogIndex(UInt64(index)), term: Term(UInt64(term)), membership: membership,
                                          data: data)
            }
            // Entries at or below the snapshot's index are covered by it and wait to be deleted.
            let entries = try database.prepare("SELECT idx, term, kind, data, crc FROM entries WHERE idx > ? ORDER BY idx")
            try entries.bind([.integer(Int64((state.snapshot?.index ?? .zero).rawValue))])
            defer { entries.reset() }
            var expected = (state.snapshot?.index ?? .zero).next
            var lastTerm = state.snapshot?.term ?? .zero
            while try entries.step() {
                let index = LogIndex(UInt64(entries.int64(0)))
                let term = Term(UInt64(entries.int64(1)))
                guard let kind = Entry.Kind(rawValue: UInt8(truncatingIfNeeded: entries.int64(2))) else {
                    throw corrupt("entry \(index) has an unknown kind \(entries.int64(2))")
                }
                guard index == expected else { throw corrupt("log has a gap: expected entry \(expected), found \(index)") }
                guard term >= lastTerm else { throw corrupt("entry \(index) has term \(term) below \(lastTerm)") }
                let entry = Entry(term: term, index: index, kind: kind, data: entries.blob(3))
                if case .integer(let stored) = entries.value(4), UInt32(truncatingIfNeeded: stored) != Self.checksum(entry) {
                    throw corrupt("entry \(index) fails its checksum (damaged on disk)")
                }
                guard kind != .membership || Membership(decoding: entry.data) != nil else {
                    throw corrupt("membership entry \(index) does not decode")
                }
                state.entries.append(entry)
                expected = index.next
                lastTerm = term
            }
        } catch let error as RaftStorageError {
            throw error
        } catch {
            throw RaftStorageError(path: path, message: "cannot read the Raft log", underlying: error as? StoreError)
        }
        // The commit index is stored only with writes that are synced anyway (RaftDriver: a
        // Ready that only moves it writes nothing), so it may lag what was committed; a
        // snapshot's index was committed by definition.
        if let snapshot = state.snapshot, state.hardState.commit < snapshot.index {
            state.hardState.commit = snapshot.index
        }
        let lastIndex = state.entries.last?.index ?? state.snapshot?.index ?? .zero
        guard state.hardState.commit <= lastIndex else {
            throw corrupt("commit index \(state.hardState.commit) is beyond the last entry \(lastIndex)")
        }
        let lastTerm = state.entries.last?.term ?? state.snapshot?.term ?? .zero
        guard lastTerm <= state.hardState.term else {
            throw corrupt("the log's last term \(lastTerm) is above the hard state's term \(state.hardState.term)")
        }
        return state
    }

    /// The checksum stored with an entry: CRC-32 of its index and term (big-endian), kind, data.
    static func checksum(_ entry: Entry) -> UInt32 {
        // The 17-byte header on the stack: this runs for every entry stored and loaded.
        let header = withUnsafeTemporaryAllocation(byteCount: 17, alignment: 8) { header in
            header.storeBytes(of: entry.index.rawValue.bigEndian, toByteOffset: 0, as: UInt64.self)
            header.storeBytes(of: entry.term.rawValue.bigEndian, toByteOffset: 8, as: UInt64.self)
            header.storeBytes(of: entry.kind.rawValue, toByteOffset: 16, as: UInt8.self)
            return CRC32.update(CRC32.start, UnsafeRawBufferPointer(header))
        }
        return CRC32.finish(CRC32.update(header, entry.data[...]))
    }

    private func corrupt(_ message: String) -> RaftStorageError {
        RaftStorageError(path: path, message: "corrupt Raft log: \(message)")
    }

    /// Persists what a Ready asks (contract step 1) in one durable transaction.
    public func save(_ ready: Ready) throws(RaftStorageError) {
        try save(snapshot: ready.snapshot, entries: ready.entries, hardState: ready.hardState)
    }

    /// One durable transaction: the snapshot, then the entries (replacing the stored log from the
    /// first one's index on), then the hard state, and some of the entries a snapshot covers
    /// deleted. Nothing to write writes nothing.
    public func save(snapshot: Snapshot?, entries: [Entry], hardState: HardState?) throws(RaftStorageError) {
        guard snapshot != nil || !entries.isEmpty || hardState != nil else { return }
        var covered = (from: coveredFrom, through: coveredThrough)
        var storedLast = storedLastIndex
        do {
            try database.transaction { () throws(StoreError) in
                if let snapshot {
                    covered = try writeSnapshot(snapshot, file: nil, covered)
                    // The whole log was replaced: nothing is stored above the snapshot.
                    if covered.from > snapshot.index.rawValue { storedLast = snapshot.index.rawValue }
                }
                if covered.through >= covered.from {
                    let count = UInt64(max(Self.coveredEntriesDeletedPerSaveMin, 2 * entries.count))
                    let last = min(covered.through, covered.from + count - 1)
                    try deleteEntriesThrough.run(.integer(Int64(last)))
                    covered.from = last + 1
                }
                if let first = entries.first, let last = entries.last {
                    // Raft §5.3: a conflicting suffix is replaced by the leader's entries.
                    if first.index.rawValue <= storedLast { try deleteEntriesFrom.run(.integer(Int64(first.index.rawValue))) }
                    storedLast = last.index.rawValue
                    for entry in entries {
                        try insertEntry.run(.integer(Int64(entry.index.rawValue)), .integer(Int64(entry.term.rawValue)),
                                            .integer(Int64(entry.kind.rawValue)), .blob(entry.data),
                                            .integer(Int64(Self.checksum(entry))))
                    }
                }
                if let hard = hardState {
                    try upsertHardState.run(.integer(Int64(hard.term.rawValue)),
                                            hard.vote.map { .integer(Int64($0.rawValue)) } ?? .null,
                                            .integer(Int64(hard.commit.rawValue)))
                }
            }
        } catch {
            throw RaftStorageError(path: path, message: "cannot persist Raft state", underlying: error as? StoreError)
        }
        (coveredFrom, coveredThrough) = covered
        storedLastIndex = storedLast
        if snapshot != nil { replaceDataFile(with: nil) }
    }

    /// Writes a snapshot's bytes durably to `path` (`snapshotFilePath`); returns their CRC-32 for
    /// `recordSnapshot`. Touches no database: any thread (the driver's snapshot writer).
    public static func writeSnapshotFile(_ data: [UInt8], to path: String) throws(RaftStorageError) -> UInt32 {
        try SnapshotFile.write(data, to: path)
    }

    /// Records a snapshot the application took (after `RaftNode.compact`), whose bytes
    /// `writeSnapshotFile` made durable at `file`; the log it covers is deleted by later saves,
    /// and the previous snapshot's file now. false, and the file removed: raft.db already holds
    /// a snapshot at or past it (one from the leader was installed meanwhile).
    public func recordSnapshot(_ snapshot: Snapshot, file: String, crc: UInt32) throws(RaftStorageError) -> Bool {
        guard snapshot.index.rawValue > coveredThrough else {
            SnapshotFile.remove(file)
            return false
        }
        let name = SnapshotFile.basename(file)
        var covered = (from: coveredFrom, through: coveredThrough)
        do {
            try database.transaction { () throws(StoreError) in covered = try writeSnapshot(snapshot, file: (name, crc), covered) }
        } catch {
            throw RaftStorageError(path: path, message: "cannot persist a snapshot", underlying: error as? StoreError)
        }
        (coveredFrom, coveredThrough) = covered
        replaceDataFile(with: name)
        return true
    }

    /// `writeSnapshotFile` and `recordSnapshot` in one, on the caller's thread.
    public func saveSnapshot(_ snapshot: Snapshot) throws(RaftStorageError) {
        let file = snapshotFilePath(for: snapshot.index)
        _ = try recordSnapshot(snapshot, file: file, crc: try Self.writeSnapshotFile(snapshot.data, to: file))
    }

    /// The row now names `name` (or no file): the file it named before goes.
    private func replaceDataFile(with name: String?) {
        if let old = dataFile, old != name { SnapshotFile.remove(SnapshotFile.path(beside: path, named: old)) }
        dataFile = name
    }

    /// Writes the snapshot row, with its bytes in the row or in `file`; returns the covered
    /// entries left to delete.
    private func writeSnapshot(_ snapshot: Snapshot, file: (name: String, crc: UInt32)?,
                               _ covered: (from: UInt64, through: UInt64)) throws(StoreError) -> (from: UInt64, through: UInt64) {
        try upsertSnapshot.run(.integer(Int64(snapshot.index.rawValue)), .integer(Int64(snapshot.term.rawValue)),
                               .blob(snapshot.membership.encoded), .blob(file == nil ? snapshot.data : []),
                               file.map { .text($0.name) } ?? .null, file.map { .integer(Int64($0.crc)) } ?? .null)
        // Raft §7: entries after the snapshot stay only if the log holds the snapshot's last entry
        // (same index and term); otherwise the whole log is replaced by the snapshot.
        let lastTerm = try database.scalar("SELECT term FROM entries WHERE idx = ?", .integer(Int64(snapshot.index.rawValue)))
        if lastTerm == .integer(Int64(snapshot.term.rawValue)) {
            // Those it covers go a few per save from now on (`covered.from` is the oldest stored).
            return (covered.from, snapshot.index.rawValue)
        }
        try database.execute("DELETE FROM entries")
        return (snapshot.index.rawValue + 1, snapshot.index.rawValue)
    }
}
