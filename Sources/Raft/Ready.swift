/// The durable part of a server's state (paper Figure 2, "Persistent state on all servers"),
/// plus the commit index so that a restart does not have to relearn it.
public struct HardState: Hashable, Sendable, CustomStringConvertible {
    public var term: Term
    public var vote: NodeID?
    public var commit: LogIndex

    public init(term: Term = .zero, vote: NodeID? = nil, commit: LogIndex = .zero) {
        self.term = term
        self.vote = vote
        self.commit = commit
    }

    public var description: String {
        "term=\(term) vote=\(vote.map(\.description) ?? "-") commit=\(commit)"
    }
}

/// What a server loads at start: the last durable snapshot, hard state and log after it.
public struct PersistentState: Sendable {
    public var hardState: HardState
    public var snapshot: Snapshot?
    /// Entries after the snapshot (or from index 1), contiguous.
    public var entries: [Entry]

    public init(hardState: HardState = HardState(), snapshot: Snapshot? = nil, entries: [Entry] = []) {
        self.hardState = hardState
        self.snapshot = snapshot
        self.entries = entries
    }
}

/// A ReadIndex result (thesis §6.4): the read identified by `context` is linearizable once the
/// state machine has applied `index`.
public struct ReadState: Hashable, Sendable {
    public var index: LogIndex
    public var context: [UInt8]

    public init(index: LogIndex, context: [UInt8]) {
        self.index = index
        self.context = context
    }
}

/// The role a server plays in its current term.
public enum Role: String, Hashable, Sendable {
    case follower, preCandidate, candidate, leader
}

/// Everything the core wants done, in one batch. Obtain it with `RaftNode.ready()`, do it, then
/// acknowledge it with `advance(_:)`; call nothing else on the node in between.
///
/// ## Ordering contract (etcd-io/raft's `Ready`; thesis §10.2.1 for the reasons)
/// 1. **Persist first**: write `snapshot`, then `entries` (truncating the stored log at
///    `entries.first.index`, they replace anything from there on), then `hardState`, and make them
///    durable (fsync). Doing it in one transaction is the cheapest way. Of the hard state, term
///    and vote must be stored; the commit index is volatile (Raft Figure 2) and may be stored
///    later or not at all: a restart with a lower one learns it again from the leader, and the
///    state machines skip what they already applied (Cluster's driver stores it only now and then).
/// 2. **Then send** `messages`. Every message may depend on step 1: a vote response on the
///    durable vote, an append response on durable entries. A message sent before its data is
///    durable can make a crash forget a vote or a replicated entry that others already counted.
///    The one exception (thesis §10.2.1): a leader's appends may go out before its own write,
///    provided no acknowledgement is stepped until that write is durable. The leader counts
///    itself toward a commit only for entries on its own disk (`advance` records them as
///    durable), so an early send never lets an entry commit on fewer durable copies than a
///    quorum. An early send never carries a term or vote change: those are hard state, and
///    every message that depends on them waits for step 1. A leader's appends without entries
///    (a commit index that moved, a probe) may also wait until after step 3: `ReadyProcessor`
///    sends them after the applies, which answer the proposers.
/// 3. **Apply** `snapshot` (install it into the state machine) and then `committedEntries`, in order.
///    Committed entries are always in this Ready's `entries` or already durable, so applying may run
///    alongside step 2 but not before step 1.
/// 4. Serve the reads of `readStates` once the applied index reaches each one's `index`.
/// 5. Call `advance(_:)` with this value.
public struct Ready: Sendable {
    /// The role and leader after the events so far (informational, not to persist).
    public var role: Role
    public var leader: NodeID?
    /// Set when term, vote or commit changed since the last Ready.
    public var hardState: HardState?
    /// Entries to append to durable storage. The first entry's index may be at or below the
    /// stored last index: the stored log is then truncated there first (a conflict was resolved).
    public var entries: [Entry]
    /// A snapshot received from the leader, to persist and install. It replaces the stored log up
    /// to its index (and all of it if the log does not contain the snapshot's last entry).
    public var snapshot: Snapshot?
    /// Entries known committed and not yet handed out, in index order.
    public var committedEntries: [Entry]
    /// Messages to send after step 1 of the contract.
    public var messages: [Message]
    /// Reads confirmed by ReadIndex.
    public var readStates: [ReadState]

    /// Nothing to do: no need to persist, send, apply or advance.
    public var isEmpty: Bool {
        hardState == nil && entries.isEmpty && snapshot == nil && committedEntries.isEmpty
            && messages.isEmpty && readStates.isEmpty
    }
}
