import Raft

/// A server's "disk" in memory. Writes first land in a volatile queue (the page cache) and become
/// durable only on `sync()` (fsync); `crash()` throws away what was not synced, as a power loss
/// would. Each Ready is one write unit (a transaction in `Cluster`'s SQLite log), so a crash keeps
/// a prefix of whole Readies, never half of one.
public struct MemoryDisk: Sendable {
    /// What survives a crash.
    public private(set) var durable = PersistentState()
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
        for unit in unsynced { MemoryDisk.apply(unit, to: &durable) }
        unsynced.removeAll()
    }

    /// Power loss: the first `keeping` unsynced units happened to reach the platter, the rest is gone.
    public mutating func crash(keeping: Int = 0) {
        for unit in unsynced.prefix(keeping) { MemoryDisk.apply(unit, to: &durable) }
        unsynced.removeAll()
    }

    public var unsyncedUnitCount: Int { unsynced.count }

    /// The application saved a snapshot (written and synced on its own, before the log is
    /// truncated, so it is durable at once) and drops the log up to its index.
    public mutating func saveSnapshot(_ snapshot: Snapshot) {
        precondition(unsynced.isEmpty, "snapshot saved with unsynced log writes")
        guard snapshot.index > (durable.snapshot?.index ?? .zero) else { return }
        durable.snapshot = snapshot
        durable.entries.removeAll { $0.index <= snapshot.index }
    }

    private static func apply(_ unit: Unit, to state: inout PersistentState) {
        if let snapshot = unit.snapshot {
            let keep = state.entries.contains { $0.index == snapshot.index && $0.term == snapshot.term }
            state.entries = keep ? state.entries.filter { $0.index > snapshot.index } : []
            state.snapshot = snapshot
        }
        if let first = unit.entries.first {
            if let head = state.entries.first, first.index <= state.entries.last!.index {
                state.entries.removeSubrange(max(0, head.index.distance(to: first.index))...)
            }
            let expected = (state.entries.last?.index ?? state.snapshot?.index ?? .zero).next
            precondition(first.index == expected, "disk write at \(first.index) leaves a gap before \(expected)")
            state.entries.append(contentsOf: unit.entries)
        }
        if let hard = unit.hardState { state.hardState = hard }
    }
}
