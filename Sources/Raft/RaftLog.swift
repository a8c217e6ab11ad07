/// The in-memory log of one server: a snapshot's last index and term, then the entries after it.
/// Mirrors etcd-io/raft's raftLog, minus the storage split: the core keeps every entry after the
/// last snapshot in memory (the application compacts with snapshots to bound it), and tracks which
/// prefix is durable (`stable`) and which is applied.
///
/// Invariants: applied <= committed <= lastIndex; snapshotIndex <= applied (after a Ready with a
/// snapshot is acknowledged); entries[k].index == snapshotIndex + 1 + k; terms never decrease along
/// the log; stable <= lastIndex.
struct RaftLog: Sendable {
    private(set) var snapshotIndex: LogIndex
    private(set) var snapshotTerm: Term
    private(set) var entries: [Entry]
    private(set) var committed: LogIndex
    /// Entries up to here have been handed to the application and acknowledged.
    var applied: LogIndex
    /// Entries up to here are durable (handed out in a Ready that was acknowledged).
    private(set) var stable: LogIndex

    init(snapshotIndex: LogIndex = .zero, snapshotTerm: Term = .zero, entries: [Entry] = [],
         committed: LogIndex = .zero)
    {
        self.snapshotIndex = snapshotIndex
        self.snapshotTerm = snapshotTerm
        self.entries = entries
        self.committed = committed
        self.applied = snapshotIndex
        self.stable = snapshotIndex + entries.count
        RaftLog.checkContiguous(entries, after: snapshotIndex, term: snapshotTerm)
        precondition(committed >= snapshotIndex && committed <= lastIndex,
                     "commit \(committed) outside the log [\(snapshotIndex), \(lastIndex)]")
    }

    var firstIndex: LogIndex { snapshotIndex.next }
    var lastIndex: LogIndex { snapshotIndex + entries.count }
    var lastTerm: Term { entries.last?.term ?? snapshotTerm }

    /// The term of the entry at `index`, or nil if it was compacted away or is past the end.
    func term(at index: LogIndex) -> Term? {
        if index == snapshotIndex { return snapshotTerm }
        if index < snapshotIndex || index > lastIndex { return nil }
        return entries[offset(index)].term
    }

    func matchTerm(_ index: LogIndex, _ term: Term) -> Bool { self.term(at: index) == term }

    /// Paper §5.4.1: a candidate's log is at least as up-to-date as ours.
    func isUpToDate(lastIndex candidateIndex: LogIndex, lastTerm candidateTerm: Term) -> Bool {
        candidateTerm > lastTerm || (candidateTerm == lastTerm && candidateIndex >= lastIndex)
    }

    func entry(at index: LogIndex) -> Entry? {
        guard index > snapshotIndex, index <= lastIndex else { return nil }
        return entries[offset(index)]
    }

    /// Entries in [from, through], at most `bytesMax` bytes but always at least one entry.
    /// Precondition: from > snapshotIndex.
    func slice(from: LogIndex, through: LogIndex, bytesMax: Int = .max) -> ArraySlice<Entry> {
        precondition(from > snapshotIndex, "slice from compacted index \(from)")
        guard from <= through, from <= lastIndex else { return [] }
        let start = offset(from)
        var end = offset(Swift.min(through, lastIndex)) + 1
        if bytesMax != .max {
            var bytes = entries[start].sizeBytes
            var k = start + 1
            while k < end {
                bytes += entries[k].sizeBytes
                if bytes > bytesMax { break }
                k += 1
            }
            end = k
        }
        return entries[start..<end]
    }

    var unstableEntries: ArraySlice<Entry> { entries[offset(stable.next)...] }

    /// Leader path: append entries that extend the log. Precondition: contiguous, same or newer term.
    mutating func append(_ new: [Entry]) {
        guard let first = new.first else { return }
        precondition(first.index == lastIndex.next, "append at \(first.index) after last \(lastIndex)")
        RaftLog.checkContiguous(new, after: lastIndex, term: lastTerm)
        entries.append(contentsOf: new)
    }

    /// Follower path (paper Figure 2, AppendEntries receiver steps 2–5): if the log holds
    /// `prevIndex` with `prevTerm`, merge `new` (dropping any conflicting suffix), advance the
    /// commit index, and return the last index now known to match the leader. Returns nil when
    /// the log does not match at `prevIndex`. `truncatedFrom` reports where a suffix was dropped.
    mutating func maybeAppend(prevIndex: LogIndex, prevTerm: Term, commit leaderCommit: LogIndex, entries new: [Entry])
        -> (lastNew: LogIndex, truncatedFrom: LogIndex?)?
    {
        guard matchTerm(prevIndex, prevTerm) else { return nil }
        let lastNew = prevIndex + new.count
        var truncatedFrom: LogIndex? = nil
        if let conflict = firstConflict(in: new) {
            precondition(conflict > committed, "conflict at \(conflict) would overwrite committed \(committed)")
            if conflict <= lastIndex { truncatedFrom = conflict }
            truncateAndAppend(Array(new[(conflict.rawValue - new[0].index.rawValue).asInt...]))
        }
        commit(to: Swift.min(leaderCommit, lastNew))
        return (lastNew, truncatedFrom)
    }

    /// The first entry of `new` that is not already in the log with the same term (etcd's findConflict).
    private func firstConflict(in new: [Entry]) -> LogIndex? {
        for entry in new where !matchTerm(entry.index, entry.term) { return entry.index }
        return nil
    }

    private mutating func truncateAndAppend(_ new: [Entry]) {
        guard let first = new.first else { return }
        precondition(first.index > snapshotIndex && first.index <= lastIndex.next,
                     "entries at \(first.index) leave a gap after \(lastIndex)")
        entries.removeSubrange(offset(first.index)...)
        RaftLog.checkContiguous(new, after: lastIndex, term: lastTerm)
        entries.append(contentsOf: new)
        if stable >= first.index { stable = first.index.previous }
    }

    /// Paper Figure 2 receiver step 5 and the leader's rule: the commit index never decreases.
    mutating func commit(to index: LogIndex) {
        guard index > committed else { return }
        precondition(index <= lastIndex, "commit \(index) beyond last index \(lastIndex)")
        committed = index
    }

    /// The reply hint for a rejected AppendEntries at `prevIndex` (see `Message.RejectHint`).
    func rejectHint(at prevIndex: LogIndex) -> Message.RejectHint {
        guard prevIndex <= lastIndex, let term = term(at: prevIndex) else {
            return Message.RejectHint(conflictTerm: nil, conflictIndex: lastIndex.next)
        }
        // Entries up to the commit index match every leader's (Leader Completeness), so the scan
        // stops above it.
        let floor = Swift.max(committed, snapshotIndex)
        var first = prevIndex
        while first > floor.next, self.term(at: first.previous) == term { first = first.previous }
        return Message.RejectHint(conflictTerm: term, conflictIndex: Swift.max(first, floor.next))
    }

    /// Leader side of the hint: one past the last entry of the hinted term in this log, if this
    /// log has that term at or below `rejected`; else the follower's first index of that term.
    func nextIndex(afterRejectAt rejected: LogIndex, hint: Message.RejectHint) -> LogIndex {
        guard let conflictTerm = hint.conflictTerm else { return hint.conflictIndex }
        var index = Swift.min(rejected, lastIndex)
        while index > snapshotIndex, let t = term(at: index), t > conflictTerm { index = index.previous }
        if term(at: index) == conflictTerm { return index.next }
        return hint.conflictIndex
    }

    /// The Ready was persisted: entries through `index` (still of `term`) are durable.
    mutating func stableTo(_ index: LogIndex, term: Term) {
        guard index > stable, matchTerm(index, term) else { return }
        stable = index
    }

    /// Replace everything with a snapshot received from the leader (paper §7, receiver step 6–8),
    /// keeping the suffix after it if the log contains the snapshot's last entry.
    mutating func restore(_ snapshot: Snapshot) {
        if matchTerm(snapshot.index, snapshot.term), snapshot.index > snapshotIndex {
            entries.removeSubrange(..<(offset(snapshot.index) + 1))
        } else {
            entries.removeAll()
        }
        snapshotIndex = snapshot.index
        snapshotTerm = snapshot.term
        committed = Swift.max(committed, snapshot.index)
        stable = Swift.max(snapshot.index, Swift.min(stable, lastIndex))
        applied = Swift.min(applied, snapshot.index)
    }

    /// Drop entries up to `index`, which the application has covered with a snapshot.
    mutating func compact(through index: LogIndex) {
        precondition(index > snapshotIndex && index <= applied, "compact \(index) outside (\(snapshotIndex), \(applied)]")
        let term = self.term(at: index)!
        entries.removeSubrange(..<(offset(index) + 1))
        snapshotIndex = index
        snapshotTerm = term
    }

    private func offset(_ index: LogIndex) -> Int { Int(index.rawValue - snapshotIndex.rawValue) - 1 }

    private static func checkContiguous(_ entries: [Entry], after index: LogIndex, term: Term) {
        var expected = index
        var lastTerm = term
        for entry in entries {
            expected = expected.next
            precondition(entry.index == expected, "entry \(entry.index) where \(expected) was expected")
            precondition(entry.term >= lastTerm, "term \(entry.term) after \(lastTerm) at \(entry.index)")
            lastTerm = entry.term
        }
    }
}

extension LogIndex {
    static func + (index: LogIndex, count: Int) -> LogIndex { LogIndex(index.rawValue + UInt64(count)) }
}

extension UInt64 {
    var asInt: Int { Int(self) }
}
