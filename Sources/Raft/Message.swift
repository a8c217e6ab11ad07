/// A message between two Raft servers. The transport may drop, duplicate, delay and reorder
/// messages; the core is correct under all of these (paper §5.1 assumes exactly that network).
public struct Message: Hashable, Sendable, CustomStringConvertible {
    public var from: NodeID
    public var to: NodeID
    /// The sender's term, except for PreVote: a pre-candidate asks in the term it *would* campaign
    /// in (current + 1), and a granted pre-vote answers in that same term, without either side
    /// changing its own term (thesis §9.6).
    public var term: Term
    public var kind: Kind

    public init(from: NodeID, to: NodeID, term: Term, kind: Kind) {
        self.from = from
        self.to = to
        self.term = term
        self.kind = kind
    }

    public enum Kind: Hashable, Sendable {
        /// RequestVote (paper §5.2, §5.4.1) or PreVote (thesis §9.6).
        case voteRequest(VoteRequest)
        case voteResponse(VoteResponse)
        /// AppendEntries (paper §5.3).
        case append(Append)
        case appendResponse(AppendResponse)
        /// An empty AppendEntries that carries only the commit index and, for ReadIndex
        /// (thesis §6.4), the sequence number of the newest read request it confirms.
        case heartbeat(Heartbeat)
        case heartbeatResponse(HeartbeatResponse)
        /// InstallSnapshot (paper §7), whole (no chunking: snapshots are the catalog, megabytes).
        case snapshot(Snapshot)
        /// Leader transfer (thesis §3.10): the leader tells an up-to-date follower to start an
        /// election now, without waiting for its timeout and without PreVote.
        case timeoutNow
        /// A follower forwards a ReadIndex request to the leader (thesis §6.4).
        case readIndex(context: [UInt8])
        /// The leader's answer: serve the read once the applied index reaches `index`.
        case readIndexResponse(context: [UInt8], index: LogIndex)
    }

    public struct VoteRequest: Hashable, Sendable {
        public var lastLogIndex: LogIndex
        public var lastLogTerm: Term
        public var preVote: Bool
        /// Sent on a leader's behalf (TimeoutNow): voters answer even inside their leader lease.
        public var transfer: Bool

        public init(lastLogIndex: LogIndex, lastLogTerm: Term, preVote: Bool, transfer: Bool) {
            self.lastLogIndex = lastLogIndex
            self.lastLogTerm = lastLogTerm
            self.preVote = preVote
            self.transfer = transfer
        }
    }

    public struct VoteResponse: Hashable, Sendable {
        public var preVote: Bool
        public var granted: Bool

        public init(preVote: Bool, granted: Bool) {
            self.preVote = preVote
            self.granted = granted
        }
    }

    public struct Append: Hashable, Sendable {
        public var prevLogIndex: LogIndex
        public var prevLogTerm: Term
        public var entries: [Entry]
        public var commit: LogIndex

        public init(prevLogIndex: LogIndex, prevLogTerm: Term, entries: [Entry], commit: LogIndex) {
            self.prevLogIndex = prevLogIndex
            self.prevLogTerm = prevLogTerm
            self.entries = entries
            self.commit = commit
        }
    }

    /// The follower's answer to `append` (and to `snapshot`). On success, `index` is the last index
    /// known to match the leader's log. On rejection, `index` is the rejected `prevLogIndex` and
    /// `reject` carries the fast-backtracking hint (paper §5.3, the paragraph "If desired...").
    public struct AppendResponse: Hashable, Sendable {
        public var index: LogIndex
        public var reject: RejectHint?

        public init(index: LogIndex, reject: RejectHint? = nil) {
            self.index = index
            self.reject = reject
        }
    }

    /// Where the follower's log stops matching: the term of its entry at the rejected index and the
    /// first index it holds of that term, or (`conflictTerm == nil`) one past its last index when
    /// its log is too short. The leader skips a whole term per round trip instead of one entry.
    public struct RejectHint: Hashable, Sendable {
        public var conflictTerm: Term?
        public var conflictIndex: LogIndex

        public init(conflictTerm: Term?, conflictIndex: LogIndex) {
            self.conflictTerm = conflictTerm
            self.conflictIndex = conflictIndex
        }
    }

    public struct Heartbeat: Hashable, Sendable {
        /// min(leader's commit, follower's match): a follower never learns a commit index beyond
        /// what it is known to hold (etcd-io/raft's sendHeartbeat).
        public var commit: LogIndex
        /// 0, or the newest ReadIndex request this round confirms.
        public var readSequence: UInt64

        public init(commit: LogIndex, readSequence: UInt64) {
            self.commit = commit
            self.readSequence = readSequence
        }
    }

    public struct HeartbeatResponse: Hashable, Sendable {
        public var readSequence: UInt64

        public init(readSequence: UInt64) { self.readSequence = readSequence }
    }

    /// Bytes of the entries this message carries (what `appendMessageBytesMax` bounds).
    public var entryBytes: Int {
        if case .append(let append) = kind { return append.entries.reduce(0) { $0 + $1.sizeBytes } }
        return 0
    }

    /// etcd-io/raft-like one-line form, used by the scripts under Tests/Fixtures/raft and traces.
    public var description: String {
        let head = "\(from)->\(to)"
        switch kind {
        case .voteRequest(let r):
            let name = r.preVote ? "PreVote" : "Vote"
            return "\(head) \(name) term=\(term) last=\(r.lastLogTerm)/\(r.lastLogIndex)"
                + (r.transfer ? " transfer" : "")
        case .voteResponse(let r):
            let name = r.preVote ? "PreVoteResp" : "VoteResp"
            return "\(head) \(name) term=\(term) \(r.granted ? "granted" : "rejected")"
        case .append(let a):
            var text = "\(head) App term=\(term) prev=\(a.prevLogTerm)/\(a.prevLogIndex) commit=\(a.commit)"
            if !a.entries.isEmpty {
                text += " entries=[" + a.entries.map(\.description).joined(separator: ", ") + "]"
            }
            return text
        case .appendResponse(let r):
            if let hint = r.reject {
                let t = hint.conflictTerm.map(\.description) ?? "-"
                return "\(head) AppResp term=\(term) rejected=\(r.index) hint=\(t)/\(hint.conflictIndex)"
            }
            return "\(head) AppResp term=\(term) index=\(r.index)"
        case .heartbeat(let h):
            return "\(head) Heartbeat term=\(term) commit=\(h.commit)"
                + (h.readSequence == 0 ? "" : " read=\(h.readSequence)")
        case .heartbeatResponse(let h):
            return "\(head) HeartbeatResp term=\(term)"
                + (h.readSequence == 0 ? "" : " read=\(h.readSequence)")
        case .snapshot(let s):
            return "\(head) Snapshot term=\(term) \(s)"
        case .timeoutNow:
            return "\(head) TimeoutNow term=\(term)"
        case .readIndex(let context):
            return "\(head) ReadIndex term=\(term) context=\(Entry.printable(context))"
        case .readIndexResponse(let context, let index):
            return "\(head) ReadIndexResp term=\(term) context=\(Entry.printable(context)) index=\(index)"
        }
    }
}
