/// The leader's view of one follower (etcd-io/raft's tracker.Progress, and its design doc
/// "Progress"): how much of the log it is known to hold, what to send next, and a state that
/// governs how aggressively to send.
///
/// - probe: the leader does not know where the follower's log matches; it sends one append at a
///   time and waits for the answer (or the next heartbeat response) before sending another.
/// - replicate: the follower is known to match up to `match`; appends are streamed, up to
///   `appendsInflightMax` unacknowledged ones, and `next` advances optimistically.
/// - snapshot: the follower needs entries that were compacted away; a snapshot was sent and
///   nothing else is until it is acknowledged (or presumed lost at the next heartbeat response).
///
/// Invariant: match < next.
struct Progress: Sendable {
    private enum State: Sendable {
        case probe(awaitingResponse: Bool)
        case replicate
        case snapshot(index: LogIndex)
    }

    /// A read-only name for the state, for status output.
    enum StateName: String, Sendable { case probe, replicate, snapshot }

    private(set) var match: LogIndex
    private(set) var next: LogIndex
    private var state: State = .probe(awaitingResponse: false)
    private var inflights: Inflights
    /// Heard from since the last CheckQuorum round (thesis §6.2).
    var recentActive: Bool = false
    /// The highest commit index sent to this follower (etcd's sentCommit): lets the leader send an
    /// empty append when the follower holds committed entries it has not been told are committed.
    var commitSent: LogIndex = .zero

    init(next: LogIndex, inflightMax: Int) {
        self.match = .zero
        self.next = next
        self.inflights = Inflights(capacity: inflightMax)
    }

    var stateName: StateName {
        switch state {
        case .probe: .probe
        case .replicate: .replicate
        case .snapshot: .snapshot
        }
    }

    var pendingSnapshotIndex: LogIndex? {
        if case .snapshot(let index) = state { return index }
        return nil
    }

    /// No append may be sent now.
    var isPaused: Bool {
        switch state {
        case .probe(let awaiting): awaiting
        case .replicate: inflights.isFull
        case .snapshot: true
        }
    }

    var inflightCount: Int { inflights.count }

    mutating func becomeProbe() {
        if case .snapshot(let index) = state {
            // etcd: resume after the snapshot if it was installed, else after match.
            next = Swift.max(match.next, index.next)
        } else {
            next = match.next
        }
        state = .probe(awaitingResponse: false)
        inflights.reset()
    }

    mutating func becomeReplicate() {
        next = match.next
        state = .replicate
        inflights.reset()
    }

    mutating func becomeSnapshot(index: LogIndex) {
        state = .snapshot(index: index)
        inflights.reset()
    }

    /// An append carrying entries up to `lastIndex` (or none) was sent.
    mutating func sentAppend(lastIndex: LogIndex?) {
        switch state {
        case .probe:
            state = .probe(awaitingResponse: true)
        case .replicate:
            if let last = lastIndex {
                next = last.next
                inflights.add(last)
            }
        case .snapshot:
            preconditionFailure("append sent to a follower waiting for a snapshot")
        }
    }

    /// A successful append response for `index`. Returns true if `match` advanced.
    mutating func acknowledged(_ index: LogIndex) -> Bool {
        var updated = false
        if match < index {
            match = index
            updated = true
            if case .probe = state { state = .probe(awaitingResponse: false) }
        }
        next = Swift.max(next, index.next)
        switch state {
        case .probe:
            if updated { becomeReplicate() }
        case .replicate:
            inflights.free(through: index)
        case .snapshot(let pending):
            if match >= pending {
                becomeProbe()
                becomeReplicate()
            }
        }
        return updated
    }

    /// A rejected append at `rejected`; `hintNext` is where the leader's log suggests to resume.
    /// Returns false for a stale rejection (etcd's MaybeDecrTo).
    mutating func rejected(_ rejected: LogIndex, hintNext: LogIndex) -> Bool {
        switch state {
        case .replicate:
            // A rejection below match is a stale, reordered response.
            guard rejected > match else { return false }
            becomeProbe()
            return true
        case .probe, .snapshot:
            // Only the answer to the probe in flight counts.
            guard next.previous == rejected else { return false }
            next = Swift.max(Swift.min(rejected, hintNext), match.next)
            if case .probe = state { state = .probe(awaitingResponse: false) }
            return true
        }
    }

    /// A heartbeat response: the follower is alive, so probing may resume; a lost snapshot
    /// (no acknowledgement by now) is given up for another probe, which resends it if needed.
    mutating func heartbeatAnswered() {
        recentActive = true
        switch state {
        case .probe: state = .probe(awaitingResponse: false)
        case .replicate: if inflights.isFull { inflights.freeFirst() }
        case .snapshot: becomeProbe()
        }
    }

    /// The leader's own entry: durable through `index`.
    mutating func selfDurable(through index: LogIndex) {
        if index > match { match = index }
        next = Swift.max(next, index.next)
    }
}

/// A bounded queue of the last indexes of in-flight appends (etcd's tracker.Inflights).
struct Inflights: Sendable {
    private var buffer: [LogIndex] = []
    private var head = 0
    let capacity: Int

    init(capacity: Int) {
        precondition(capacity > 0, "inflight capacity must be positive")
        self.capacity = capacity
    }

    var count: Int { buffer.count - head }
    var isFull: Bool { count >= capacity }

    mutating func add(_ index: LogIndex) {
        precondition(!isFull, "inflights full")
        buffer.append(index)
    }

    mutating func free(through index: LogIndex) {
        while head < buffer.count, buffer[head] <= index { head += 1 }
        compactIfNeeded()
    }

    mutating func freeFirst() {
        if head < buffer.count { head += 1 }
        compactIfNeeded()
    }

    mutating func reset() {
        buffer.removeAll(keepingCapacity: true)
        head = 0
    }

    private mutating func compactIfNeeded() {
        if head == buffer.count {
            reset()
        } else if head > capacity {
            buffer.removeFirst(head)
            head = 0
        }
    }
}
