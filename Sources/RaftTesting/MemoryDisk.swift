import Raft

/// A server's "disk" in memory. Writes first land in a volatile queue (the page cache) and become
/// durable only on `sync()` (fsync); `crash(keeping:)` throws away what was not synced, as a power
/// loss would, except for a prefix that happened to reach the platter: a torn tail.
///
/// The tail tears between records, as a write-ahead log's does: each Ready is written as its
/// snapshot and term/vote, then one record per entry, then its commit index. That is weaker than
/// `Cluster`'s SQLite log, where a Ready is one transaction that survives whole or not at all,
/// so the core is proven against every state the real store can leave and more. The order keeps
/// what a restart checks: the log's last term never exceeds the stored term (the term record comes
/// first), and the commit index never exceeds the last entry (it comes last).
///
/// Like `Cluster`'s `RaftStorage` (a CRC-32 per entry), every durable entry is stored with a
/// checksum of its index, term, kind and data. `corruptEntry(at:)` damages one stored entry the
/// way a bad sector would; `load()`, what a restarting server reads, finds it and refuses to
/// return anything.
public struct MemoryDisk: Sendable {
    /// What survives a crash, as stored (a damaged entry included). A server restarts from
    /// `load()`, which checks it; this is for invariant checkers and scripts that never corrupt.
    public private(set) var durable = PersistentState()
    /// The checksum written with each durable entry, by index: an entry that replaces another at
    /// the same index replaces its checksum. Entries compacted away keep stale ones, never read.
    private var checksums: [LogIndex: UInt32] = [:]
    private var unsynced: [Unit] = []

    private struct Unit: Sendable {
        var snapshot: Snapshot?
        var entries: [Entry]
        var hardState: HardState?
    }

    public init() {}

    /// Queue the writes of step 1 of the `Ready` contract.
    public mutating func write(_ ready: Ready) {
        guard ready.snapshot != nil || !ready.entries.isEmpty || ready.hardState != nil else { return }
        unsynced.append(Unit(snapshot: ready.snapshot, entries: ready.entries, hardState: ready.hardState))
    }

    public var hasUnsyncedWrites: Bool { !unsynced.isEmpty }

    /// fsync: everything written so far is durable.
    public mutating func sync() {
        for unit in unsynced { apply(unit) }
        unsynced.removeAll()
    }

    /// Power loss: the first `keeping` unsynced records happened to reach the platter, the rest
    /// is gone (see the type's comment for the records of a Ready).
    public mutating func crash(keeping: Int = 0) {
        var budget = keeping
        for unit in unsynced where budget > 0 {
            let records = MemoryDisk.recordCount(unit)
            if budget >= records {
                apply(unit)
            } else {
                // Torn inside this Ready: its head (snapshot, term and vote), then entries, and
                // never its commit record (the last one).
                var head = unit
                head.entries = Array(unit.entries.prefix(budget - MemoryDisk.headRecordCount(unit)))
                if var hard = head.hardState {
                    // A snapshot holds only committed entries: its index is committed.
                    hard.commit = max(durable.hardState.commit, unit.snapshot?.index ?? .zero)
                    head.hardState = hard
                }
                apply(head)
            }
            budget -= records
        }
        unsynced.removeAll()
    }

    /// Records written and not synced: what `crash(keeping:)` counts.
    public var unsyncedRecordCount: Int { unsynced.reduce(0) { $0 + MemoryDisk.recordCount($1) } }

    private static func headRecordCount(_ unit: Unit) -> Int { unit.snapshot != nil || unit.hardState != nil ? 1 : 0 }

    private static func recordCount(_ unit: Unit) -> Int {
        headRecordCount(unit) + unit.entries.count + (unit.hardState != nil ? 1 : 0)
    }

    /// The application saved a snapshot (written and synced on its own, before the log is
    /// truncated, so it is durable at once) and drops the log up to its index.
    public mutating func saveSnapshot(_ snapshot: Snapshot) {
        precondition(unsynced.isEmpty, "snapshot saved with unsynced log writes")
        guard snapshot.index > (durable.snapshot?.index ?? .zero) else { return }
        durable.snapshot = snapshot
        durable.entries.removeAll { $0.index <= snapshot.index }
    }

    /// True if the synced storage holds the entry `index`/`term`, or a snapshot that covers
    /// `index` (a snapshot holds only committed entries). A damaged entry still counts: the
    /// server that holds it never starts again (see `load()`), so it can vote for nobody.
    public func holds(index: LogIndex, term: Term) -> Bool {
        if let snapshot = durable.snapshot, index <= snapshot.index { return true }
        guard let first = durable.entries.first, index >= first.index, index <= durable.entries.last!.index else {
            return false
        }
        return durable.entries[first.index.distance(to: index)].term == term
    }

    /// A bad sector: the stored data of the `position`-th durable entry changes under its
    /// checksum. Returns the entry's index. Precondition: `position` is below the entry count.
    @discardableResult
    public mutating func corruptEntry(at position: Int) -> LogIndex {
        precondition(position < durable.entries.count, "no durable entry \(position)")
        if durable.entries[position].data.isEmpty {
            durable.entries[position].data = [0x5A]
        } else {
            durable.entries[position].data[0] ^= 0x5A
        }
        return durable.entries[position].index
    }

    /// What a restarting server reads: the durable state, each entry checked against its
    /// checksum. A mismatch throws, and the server must not start (the daemon exits for an
    /// operator, as `RaftStorage.load` does with a damaged entry).
    public func load() throws(StorageCorruption) -> PersistentState {
        for entry in durable.entries where checksums[entry.index] != MemoryDisk.checksum(entry) {
            throw StorageCorruption(index: entry.index)
        }
        return durable
    }

    /// FNV-1a over index, term (little-endian), kind and data: a stand-in for `RaftStorage`'s
    /// CRC-32, enough to see any change `corruptEntry` makes.
    static func checksum(_ entry: Entry) -> UInt32 {
        var hash: UInt32 = 2_166_136_261
        func mix(_ byte: UInt8) { hash = (hash ^ UInt32(byte)) &* 16_777_619 }
        for value in [entry.index.rawValue, entry.term.rawValue] {
            for b in 0..<8 { mix(UInt8(truncatingIfNeeded: value >> (8 * UInt64(b)))) }
        }
        mix(entry.kind.rawValue)
        for byte in entry.data { mix(byte) }
        return hash
    }

    private mutating func apply(_ unit: Unit) {
        if let snapshot = unit.snapshot {
            let keep = durable.entries.contains { $0.index == snapshot.index && $0.term == snapshot.term }
            durable.entries = keep ? durable.entries.filter { $0.index > snapshot.index } : []
            durable.snapshot = snapshot
        }
        if let first = unit.entries.first {
            if let head = durable.entries.first, first.index <= durable.entries.last!.index {
                durable.entries.removeSubrange(max(0, head.index.distance(to: first.index))...)
            }
            let expected = (durable.entries.last?.index ?? durable.snapshot?.index ?? .zero).next
            precondition(first.index == expected, "disk write at \(first.index) leaves a gap before \(expected)")
            durable.entries.append(contentsOf: unit.entries)
            for entry in unit.entries { checksums[entry.index] = MemoryDisk.checksum(entry) }
        }
        if let hard = unit.hardState { durable.hardState = hard }
    }
}

/// A stored entry that fails its checksum: the storage is damaged and the server must not use it.
public struct StorageCorruption: Error, Hashable, Sendable, CustomStringConvertible {
    public var index: LogIndex
    public init(index: LogIndex) { self.index = index }
    public var description: String { "entry \(index) fails its checksum (damaged on disk)" }
}
