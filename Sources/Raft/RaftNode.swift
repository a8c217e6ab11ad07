/// One Raft server as a value you drive (etcd-io/raft's `raft` struct behind `RawNode`).
///
/// Inputs: `tick()` for the passage of time, `step(_:)` for a message from a peer, and the
/// requests `propose`, `readIndex`, `proposeMembershipChange`, `transferLeadership`, `campaign`,
/// `compact`. Outputs: `ready()`, whose ordering contract is documented on `Ready`, acknowledged
/// with `advance(_:)`. No I/O, clock, threads or global randomness: the same inputs give the same
/// outputs, which is what lets `RaftTesting` replay any schedule from a seed.
///
/// Proposals are never lost silently: a refused one throws `ProposalError` and has no effect; an
/// accepted one returns its `(term, index)`, and its fate is decided when the application applies
/// that index: the proposal committed if and only if the applied entry there has the same term.
public struct RaftNode: Sendable {
    /// The role with what only that role knows. The leader's bookkeeping lives in `leaderState`
    /// rather than in the `.leader` payload so that the progress of every follower is mutated in
    /// place on the hot path (an enum payload would be copied, and its arrays with it, per event).
    private enum State: Sendable {
        case follower
        case preCandidate(votes: [NodeID: Bool])
        case candidate(votes: [NodeID: Bool])
        case leader
    }

    public let id: NodeID
    public private(set) var config: RaftConfig
    public private(set) var term: Term
    public private(set) var vote: NodeID?
    /// The leader of the current term, as far as this server knows.
    public private(set) var leader: NodeID?
    /// The configuration in force: that of the last membership entry in the log (effective on
    /// append, thesis §4.1), else that of the snapshot, else `config.initialMembership`.
    public private(set) var membership: Membership
    /// The latest snapshot this server has (made by `compact` or received); sent to followers
    /// that need compacted entries.
    public private(set) var snapshot: Snapshot?

    private(set) var log: RaftLog
    private var state: State = .follower
    private var leaderState = LeaderState()
    private var electionElapsed = 0
    private var heartbeatElapsed = 0
    private var randomizedElectionTimeout = 0
    private var random: SplitMix64
    private var outbox: [Message] = []
    private var readStates: [ReadState] = []
    private var lastHardState: HardState
    /// A snapshot received from the leader and not yet handed out in a Ready.
    private var pendingSnapshot: Snapshot?
    /// Membership entries in the log after the snapshot, oldest first.
    private var membershipEntries: [(index: LogIndex, membership: Membership)] = []
    /// The membership in force at the snapshot index.
    private var baseMembership: Membership

    /// Starts a server from what it persisted (nothing, for a brand-new server).
    /// Precondition: `config` is valid (see `RaftConfig.validate()`) and `persistent` is
    /// consistent (contiguous entries after the snapshot, commit within the log).
    public init(config: RaftConfig, persistent: PersistentState = PersistentState()) {
        do { try config.validate() } catch { preconditionFailure("invalid RaftConfig: \(error)") }
        self.id = config.id
        self.config = config
        self.random = SplitMix64(seed: config.randomSeed ^ (config.id.rawValue &* 0x9E37_79B9_7F4A_7C15))
        let hard = persistent.hardState
        self.term = hard.term
        self.vote = hard.vote
        self.lastHardState = hard
        self.snapshot = persistent.snapshot
        self.log = RaftLog(
            snapshotIndex: persistent.snapshot?.index ?? .zero, snapshotTerm: persistent.snapshot?.term ?? .zero,
            entries: persistent.entries, committed: hard.commit)
        precondition(log.lastTerm <= hard.term, "log term \(log.lastTerm) above hard state term \(hard.term)")
        self.baseMembership = persistent.snapshot?.membership ?? config.initialMembership
        self.membership = baseMembership
        for entry in persistent.entries where entry.kind == .membership {
            membershipEntries.append((entry.index, RaftNode.decodeMembership(entry)))
        }
        membership = membershipEntries.last?.membership ?? baseMembership
        resetRandomizedElectionTimeout()
    }

    // MARK: - Queries

    public var role: Role {
        switch state {
        case .follower: .follower
        case .preCandidate: .preCandidate
        case .candidate: .candidate
        case .leader: .leader
        }
    }

    public var isLeader: Bool { if case .leader = state { true } else { false } }
    public var commitIndex: LogIndex { log.committed }
    public var appliedIndex: LogIndex { log.applied }
    public var lastIndex: LogIndex { log.lastIndex }
    public var lastTerm: Term { log.lastTerm }
    public var firstIndex: LogIndex { log.firstIndex }
    public var snapshotIndex: LogIndex { log.snapshotIndex }
    public var hardState: HardState { HardState(term: term, vote: vote, commit: log.committed) }
    /// The term of the entry at `index`, nil if compacted or past the end.
    public func term(at index: LogIndex) -> Term? { log.term(at: index) }
    /// The entry at `index`, nil if compacted or past the end.
    public func entry(at index: LogIndex) -> Entry? { log.entry(at: index) }
    /// The entries in memory, after the snapshot.
    public var entries: [Entry] { log.entries }
    /// The leader's target of an ongoing leadership transfer.
    public var transferee: NodeID? { isLeader ? leaderState.transferee : nil }

    /// A summary for status output and tests.
    public var status: Status {
        var progress: [Status.FollowerProgress] = []
        if isLeader {
            for (id, pr) in leaderState.progress {
                progress.append(Status.FollowerProgress(
                    id: id, match: pr.match, next: pr.next, state: pr.stateName.rawValue,
                    inflight: pr.inflightCount, recentActive: pr.recentActive,
                    learner: membership.isLearner(id)))
            }
        }
        return Status(id: id, role: role, term: term, vote: vote, leader: leader, commit: log.committed,
                      applied: log.applied, lastIndex: log.lastIndex, snapshotIndex: log.snapshotIndex,
                      membership: membership, progress: progress)
    }

    // MARK: - Time

    /// One tick of logical time (`RaftConfig` sizes timeouts in ticks).
    public mutating func tick() {
        switch state {
        case .leader: tickLeader()
        case .follower, .preCandidate, .candidate: tickElection()
        }
    }

    private mutating func tickElection() {
        electionElapsed += 1
        if isPromotable && electionElapsed >= randomizedElectionTimeout {
            electionElapsed = 0
            startElection(preVote: config.preVote, transfer: false)
        }
    }

    private mutating func tickLeader() {
        heartbeatElapsed += 1
        electionElapsed += 1
        if electionElapsed >= config.electionTimeoutTicks {
            electionElapsed = 0
            if config.checkQuorum {
                // Thesis §6.2: step down when a majority has not answered within a timeout.
                var active = 0
                for voter in membership.voters where voter == id || (leaderState.progress[voter]?.recentActive ?? false) {
                    active += 1
                }
                for peer in leaderState.progress.ids where peer != id { leaderState.progress[member: peer].recentActive = false }
                if active < membership.quorum {
                    becomeFollower(term: term, leader: nil)
                    return
                }
            }
            // A transfer that did not finish within an election timeout is abandoned (thesis §3.10).
            leaderState.transferee = nil
        }
        if heartbeatElapsed >= config.heartbeatIntervalTicks {
            heartbeatElapsed = 0
            // Carry the newest pending read (etcd's bcastHeartbeatWithCtx): a read whose own
            // confirming heartbeats were lost is confirmed by the next periodic round, instead of
            // waiting for another read or the caller's timeout.
            broadcastHeartbeat(readSequence: leaderState.pendingReads.last?.sequence ?? 0)
        }
    }

    // MARK: - Requests

    /// Start an election now, as if the election timeout had elapsed (with PreVote if configured).
    /// Ignored on a leader or a server that is not a voter.
    public mutating func campaign() {
        guard !isLeader, isPromotable else { return }
        electionElapsed = 0
        startElection(preVote: config.preVote, transfer: false)
    }

    /// Append `data` as a new entry. Only the leader accepts; returns the entry's term and index.
    @discardableResult
    public mutating func propose(_ data: [UInt8]) throws(ProposalError) -> (term: Term, index: LogIndex) {
        let range = try propose(batch: CollectionOfOne(data))
        return (term, range.lowerBound)
    }

    /// Append a batch of entries at once (one append message per follower for all of them).
    /// Returns the indexes assigned, all in the current term. Precondition: the batch is not empty.
    @discardableResult
    public mutating func propose<Batch: Collection>(batch: Batch) throws(ProposalError) -> ClosedRange<LogIndex>
    where Batch.Element == [UInt8] {
        precondition(!batch.isEmpty, "empty proposal batch")
        try checkAcceptsProposals()
        let first = log.lastIndex.next
        var entries: [Entry] = []
        entries.reserveCapacity(batch.count)
        var index = first
        for data in batch {
            entries.append(Entry(term: term, index: index, kind: .normal, data: data))
            index = index.next
        }
        appendAsLeader(entries)
        return first...index.previous
    }

    /// Propose a single-server membership change (thesis §4.1). Refused while another change is
    /// uncommitted or before this leader has committed an entry of its own term.
    @discardableResult
    public mutating func proposeMembershipChange(_ change: MembershipChange) throws(ProposalError)
        -> (term: Term, index: LogIndex)
    {
        try checkAcceptsProposals()
        if case .remove(let removed) = change, removed == id {
            throw .invalidMembershipChange(.removingLeader(id))
        }
        let lastChange = membershipEntries.last?.index ?? .zero
        guard lastChange <= log.committed || config.testingMutation == .concurrentMembershipChanges,
              log.term(at: log.committed) == term
        else {
            throw .membershipChangeInProgress
        }
        let next: Membership
        switch membership.applying(change) {
        case .success(let m): next = m
        case .failure(let e): throw .invalidMembershipChange(e)
        }
        let index = log.lastIndex.next
        appendAsLeader([Entry(term: term, index: index, kind: .membership, data: next.encoded)])
        return (term, index)
    }

    /// Ask for a linearizable read (thesis §6.4). The answer comes as a `ReadState` with the same
    /// `context` in a later Ready, once the leader has confirmed it was still leader after the
    /// request arrived. A follower forwards the request to its leader; if the leader changes
    /// meanwhile the answer may never come, so callers retry after a timeout.
    public mutating func readIndex(context: [UInt8]) throws(ProposalError) {
        switch state {
        case .leader:
            handleReadIndex(context: context, from: id)
        case .follower, .preCandidate, .candidate:
            guard let leader else { throw .notLeader(leader: nil) }
            send(to: leader, .readIndex(context: context))
        }
    }

    /// Hand leadership to `target` (thesis §3.10): stop accepting proposals, bring the target's log
    /// up to date, then send it TimeoutNow. Abandoned after an election timeout.
    public mutating func transferLeadership(to target: NodeID) throws(ProposalError) {
        guard isLeader else { throw .notLeader(leader: leader) }
        if target == id { return }
        guard membership.isVoter(target) else { throw .transferTargetNotVoter(target) }
        if leaderState.transferee == target { return }
        leaderState.transferee = target
        electionElapsed = 0
        if leaderState.progress[member: target].match == log.lastIndex {
            send(to: target, .timeoutNow)
        } else {
            sendAppend(to: target, sendIfEmpty: true)
        }
    }

    /// The application made a snapshot of its state machine at `index` (≤ the applied index);
    /// the log before it is dropped. Persisting the snapshot and truncating the stored log is
    /// the application's business (it is not part of a Ready).
    public mutating func compact(through index: LogIndex, data: [UInt8]) {
        precondition(index <= log.applied, "snapshot at \(index) beyond applied \(log.applied)")
        guard index > log.snapshotIndex else { return }
        let snapshotMembership = membership(at: index)
        let term = log.term(at: index)!
        log.compact(through: index)
        snapshot = Snapshot(index: index, term: term, membership: snapshotMembership, data: data)
        baseMembership = snapshotMembership
        membershipEntries.removeAll { $0.index <= index }
    }

    /// The transport could not deliver a snapshot to `follower`: probe again (etcd's ReportSnapshot).
    public mutating func reportSnapshotFailed(to follower: NodeID) {
        guard isLeader, leaderState.progress[follower]?.pendingSnapshotIndex != nil else { return }
        leaderState.progress[member: follower].becomeProbe()
    }

    // MARK: - Ready

    /// True if `ready()` has anything to do.
    public var hasReady: Bool {
        hardState != lastHardState || !log.unstableEntries.isEmpty || pendingSnapshot != nil
            || log.committed > (pendingSnapshot?.index ?? log.applied) || !outbox.isEmpty || !readStates.isEmpty
    }

    /// What to persist, send and apply now; see `Ready` for the ordering contract.
    public func ready() -> Ready {
        let current = hardState
        let applyFrom = (pendingSnapshot?.index ?? log.applied).next
        let committedEntries: [Entry] =
            log.committed >= applyFrom ? Array(log.slice(from: applyFrom, through: log.committed)) : []
        return Ready(
            role: role, leader: leader, hardState: current == lastHardState ? nil : current,
            entries: Array(log.unstableEntries), snapshot: pendingSnapshot, committedEntries: committedEntries,
            messages: outbox, readStates: readStates)
    }

    /// Acknowledge a Ready whose contract steps were carried out.
    public mutating func advance(_ ready: Ready) {
        if let hard = ready.hardState { lastHardState = hard }
        if let snapshot = ready.snapshot {
            if pendingSnapshot?.index == snapshot.index { pendingSnapshot = nil }
            log.applied = Swift.max(log.applied, snapshot.index)
        }
        if let last = ready.entries.last { log.stableTo(last.index, term: last.term) }
        if let last = ready.committedEntries.last { log.applied = Swift.max(log.applied, last.index) }
        precondition(outbox.count >= ready.messages.count && readStates.count >= ready.readStates.count,
                     "advance without a matching ready")
        outbox.removeFirst(ready.messages.count)
        readStates.removeFirst(ready.readStates.count)
        if isLeader {
            // The leader counts itself toward a quorum only for entries on its own disk.
            leaderState.progress[member: id].selfDurable(through: log.stable)
            if maybeCommit() { broadcastAppend() }
        }
    }

    // MARK: - Messages

    /// Handle a message from a peer. Messages for another server, from a stale term, or that do
    /// not fit the current state are dropped (they are normal under reordering and duplication).
    /// A message no correct peer sends (see `validate`) is refused before it changes anything.
    public mutating func step(_ m: Message) throws(InvalidMessage) {
        guard m.to == id, m.from != id else { return }
        try validate(m)
        if m.term > term {
            if case .voteRequest(let request) = m.kind {
                // Leader stickiness (thesis §4.2.3): within an election timeout of hearing from
                // a leader, do not let a candidate depose it, unless the leader asked for it.
                let inLease = config.checkQuorum && leader != nil && electionElapsed < config.electionTimeoutTicks
                if inLease && !request.transfer { return }
            }
            switch m.kind {
            case .voteRequest(let request) where request.preVote:
                break  // a pre-vote does not change our term
            case .voteResponse(let response) where response.preVote && response.granted:
                break  // granted pre-votes come back in the term we would campaign in
            case .append, .heartbeat, .snapshot:
                becomeFollower(term: m.term, leader: m.from)
            default:
                becomeFollower(term: m.term, leader: nil)
            }
        } else if m.term < term {
            switch m.kind {
            case .append, .heartbeat:
                // A stale leader: tell it our term so it steps down. etcd does this only when
                // CheckQuorum or PreVote keep our term from reaching it through votes; we always
                // do, because a leader removed from the configuration while it was cut off hears
                // no votes either, and without it would go on leading its term for ever.
                send(to: m.from, .appendResponse(Message.AppendResponse(index: .zero, reject: nil)))
            case .voteRequest(let request) where request.preVote:
                send(to: m.from, .voteResponse(Message.VoteResponse(preVote: true, granted: false)))
            default:
                break
            }
            return
        }

        if case .voteRequest(let request) = m.kind {
            handleVoteRequest(m, request)
            return
        }
        switch state {
        case .leader: stepLeader(m)
        case .preCandidate, .candidate: stepCandidate(m)
        case .follower: stepFollower(m)
        }
    }

    private mutating func handleVoteRequest(_ m: Message, _ request: Message.VoteRequest) {
        let canVote = vote == m.from || (vote == nil && leader == nil) || (request.preVote && m.term > term)
        let upToDate =
            config.testingMutation == .grantVoteWithoutLogCheck
            || log.isUpToDate(lastIndex: request.lastLogIndex, lastTerm: request.lastLogTerm)
        if canVote && upToDate {
            // Answer in the request's term: for a pre-vote that is our term + 1.
            send(to: m.from, term: m.term, .voteResponse(Message.VoteResponse(preVote: request.preVote, granted: true)))
            if !request.preVote {
                electionElapsed = 0
                vote = m.from
            }
        } else {
            send(to: m.from, .voteResponse(Message.VoteResponse(preVote: request.preVote, granted: false)))
        }
    }

    private mutating func stepFollower(_ m: Message) {
        switch m.kind {
        case .append(let append):
            electionElapsed = 0
            leader = m.from
            handleAppend(from: m.from, append)
        case .heartbeat(let heartbeat):
            electionElapsed = 0
            leader = m.from
            log.commit(to: heartbeat.commit)
            send(to: m.from, .heartbeatResponse(Message.HeartbeatResponse(readSequence: heartbeat.readSequence)))
        case .snapshot(let snapshot):
            electionElapsed = 0
            leader = m.from
            handleSnapshot(from: m.from, snapshot)
        case .timeoutNow:
            // Thesis §3.10: campaign at once, skipping PreVote, with voters ignoring their lease.
            if isPromotable { startElection(preVote: false, transfer: true) }
        case .readIndexResponse(let context, let index):
            readStates.append(ReadState(index: index, context: context))
        case .voteRequest, .voteResponse, .appendResponse, .heartbeatResponse, .readIndex:
            break
        }
    }

    private mutating func stepCandidate(_ m: Message) {
        switch m.kind {
        case .append(let append):
            becomeFollower(term: m.term, leader: m.from)
            handleAppend(from: m.from, append)
        case .heartbeat:
            becomeFollower(term: m.term, leader: m.from)
            stepFollower(m)
        case .snapshot(let snapshot):
            becomeFollower(term: m.term, leader: m.from)
            handleSnapshot(from: m.from, snapshot)
        case .voteResponse(let response):
            recordVote(from: m.from, response)
        case .voteRequest, .appendResponse, .heartbeatResponse, .timeoutNow, .readIndex, .readIndexResponse:
            break
        }
    }

    private mutating func recordVote(from voter: NodeID, _ response: Message.VoteResponse) {
        var votes: [NodeID: Bool]
        switch state {
        case .preCandidate(let v) where response.preVote: votes = v
        case .candidate(let v) where !response.preVote: votes = v
        default: return
        }
        if votes[voter] == nil { votes[voter] = response.granted }
        let granted = membership.voters.filter { votes[$0] == true }.count
        let rejected = membership.voters.filter { votes[$0] == false }.count
        if granted >= membership.quorum {
            if response.preVote {
                startElection(preVote: false, transfer: false)
            } else {
                becomeLeader()
            }
        } else if rejected >= membership.quorum {
            becomeFollower(term: term, leader: nil)
        } else if response.preVote {
            state = .preCandidate(votes: votes)
        } else {
            state = .candidate(votes: votes)
        }
    }

    private mutating func stepLeader(_ m: Message) {
        guard leaderState.progress[m.from] != nil else { return }  // not (or no longer) a member
        switch m.kind {
        case .appendResponse(let response):
            handleAppendResponse(from: m.from, response)
        case .heartbeatResponse(let response):
            leaderState.progress[member: m.from].heartbeatAnswered()
            // An empty append at `next` makes a follower whose appends were lost reject, which
            // turns replicate back into probe (etcd sends here too).
            if leaderState.progress[member: m.from].match < log.lastIndex { sendAppend(to: m.from, sendIfEmpty: true) }
            if response.readSequence != 0 { acknowledgeRead(sequence: response.readSequence, from: m.from) }
        case .readIndex(let context):
            handleReadIndex(context: context, from: m.from)
        case .voteResponse, .voteRequest, .append, .heartbeat, .snapshot, .timeoutNow, .readIndexResponse:
            // Two leaders in one term cannot happen (Election Safety); the rest is stale.
            break
        }
    }

    // MARK: - Elections

    private var isPromotable: Bool { membership.isVoter(id) }

    private mutating func startElection(preVote: Bool, transfer: Bool) {
        if preVote {
            state = .preCandidate(votes: [:])
            leader = nil
        } else {
            reset(term: term.next)
            vote = id
            state = .candidate(votes: [:])
        }
        let electionTerm = preVote ? term.next : term
        recordVote(from: id, Message.VoteResponse(preVote: preVote, granted: true))
        guard !isLeader else { return }  // a single voter wins at once
        if case .follower = state { return }
        let request = Message.VoteRequest(
            lastLogIndex: log.lastIndex, lastLogTerm: log.lastTerm, preVote: preVote, transfer: transfer)
        for voter in membership.voters where voter != id {
            send(to: voter, term: electionTerm, .voteRequest(request))
        }
    }

    private mutating func becomeFollower(term: Term, leader: NodeID?) {
        reset(term: term)
        self.leader = leader
        state = .follower
    }

    private mutating func becomeLeader() {
        precondition(!isLeader, "already leader")
        reset(term: term)
        leader = id
        state = .leader
        leaderState = LeaderState()
        for member in membership.members { leaderState.addProgress(member, next: log.lastIndex.next, config: config) }
        leaderState.progress[member: id].selfDurable(through: log.stable)
        leaderState.progress[member: id].becomeReplicate()
        leaderState.progress[member: id].recentActive = true
        // Paper §8: a no-op in the new term lets the leader commit, and so learn, everything before it.
        appendAsLeader([Entry(term: term, index: log.lastIndex.next, kind: .noop)])
    }

    private mutating func reset(term newTerm: Term) {
        if newTerm != term {
            term = newTerm
            vote = nil
        }
        leader = nil
        electionElapsed = 0
        heartbeatElapsed = 0
        resetRandomizedElectionTimeout()
        leaderState = LeaderState()
    }

    private mutating func resetRandomizedElectionTimeout() {
        let base = config.electionTimeoutTicks
        randomizedElectionTimeout = base + Int(random.next(below: UInt64(base)))
    }

    // MARK: - Replication (follower side)

    private mutating func handleAppend(from leader: NodeID, _ append: Message.Append) {
        if append.prevLogIndex < log.committed {
            send(to: leader, .appendResponse(Message.AppendResponse(index: log.committed)))
            return
        }
        if let result = log.maybeAppend(
            prevIndex: append.prevLogIndex, prevTerm: append.prevLogTerm, commit: append.commit,
            entries: append.entries)
        {
            if let truncated = result.truncatedFrom { membershipEntries.removeAll { $0.index >= truncated } }
            for entry in append.entries where entry.kind == .membership && entry.index > (membershipEntries.last?.index ?? log.snapshotIndex) {
                membershipEntries.append((entry.index, RaftNode.decodeMembership(entry)))
            }
            refreshMembership()
            send(to: leader, .appendResponse(Message.AppendResponse(index: result.lastNew)))
        } else {
            let hint = log.rejectHint(at: append.prevLogIndex)
            send(to: leader, .appendResponse(Message.AppendResponse(index: append.prevLogIndex, reject: hint)))
        }
    }

    private mutating func handleSnapshot(from leader: NodeID, _ snapshot: Snapshot) {
        if snapshot.index <= log.committed {
            send(to: leader, .appendResponse(Message.AppendResponse(index: log.committed)))
            return
        }
        if log.matchTerm(snapshot.index, snapshot.term) {
            // The log already holds the snapshot's last entry: just learn that it is committed.
            log.commit(to: snapshot.index)
            send(to: leader, .appendResponse(Message.AppendResponse(index: log.committed)))
            return
        }
        log.restore(snapshot)
        self.snapshot = snapshot
        pendingSnapshot = snapshot
        baseMembership = snapshot.membership
        membershipEntries.removeAll()
        refreshMembership()
        send(to: leader, .appendResponse(Message.AppendResponse(index: log.lastIndex)))
    }

    // MARK: - Replication (leader side)

    private mutating func checkAcceptsProposals() throws(ProposalError) {
        guard isLeader else { throw .notLeader(leader: leader) }
        if let target = leaderState.transferee { throw .leaderTransferInProgress(to: target) }
    }

    private mutating func appendAsLeader(_ entries: [Entry]) {
        log.append(entries)
        var changed = false
        for entry in entries where entry.kind == .membership {
            membershipEntries.append((entry.index, RaftNode.decodeMembership(entry)))
            changed = true
        }
        if changed { refreshMembership() }
        broadcastAppend()
    }

    private mutating func handleAppendResponse(from follower: NodeID, _ response: Message.AppendResponse) {
        leaderState.progress[member: follower].recentActive = true
        if let hint = response.reject {
            let hintNext = log.nextIndex(afterRejectAt: response.index, hint: hint)
            if leaderState.progress[member: follower].rejected(response.index, hintNext: hintNext) {
                sendAppend(to: follower, sendIfEmpty: true)
            }
            return
        }
        guard leaderState.progress[member: follower].acknowledged(response.index) else { return }
        if maybeCommit() {
            broadcastAppend()
        } else {
            while sendAppend(to: follower, sendIfEmpty: false) {}
        }
        if leaderState.transferee == follower, leaderState.progress[member: follower].match == log.lastIndex {
            send(to: follower, .timeoutNow)
        }
    }

    /// Paper §5.3–5.4: commit the highest index held by a majority of voters, but only by counting
    /// an entry of the current term (§5.4.2; Figure 8 shows what goes wrong otherwise).
    private mutating func maybeCommit() -> Bool {
        var matches: [LogIndex] = []
        matches.reserveCapacity(membership.voters.count)
        for voter in membership.voters { matches.append(leaderState.progress[voter]?.match ?? .zero) }
        guard !matches.isEmpty else { return false }
        matches.sort(by: >)
        let quorumIndex = matches[membership.quorum - 1]
        guard quorumIndex > log.committed else { return false }
        guard config.testingMutation == .commitPreviousTermEntries || log.term(at: quorumIndex) == term else {
            return false
        }
        log.commit(to: quorumIndex)
        releaseReadsAwaitingCommit()
        return true
    }

    private mutating func broadcastAppend() {
        for peer in leaderState.progress.ids where peer != id { sendAppend(to: peer, sendIfEmpty: true) }
    }

    private mutating func broadcastHeartbeat(readSequence: UInt64) {
        for peer in leaderState.progress.ids where peer != id {
            let commit = Swift.min(leaderState.progress[member: peer].match, log.committed)
            send(to: peer, .heartbeat(Message.Heartbeat(commit: commit, readSequence: readSequence)))
            if commit > leaderState.progress[member: peer].commitSent { leaderState.progress[member: peer].commitSent = commit }
        }
    }

    /// Send the follower what it needs next: entries from `next`, or the snapshot when they were
    /// compacted away. Returns false if nothing was sent (paused, or nothing new and not forced).
    @discardableResult
    private mutating func sendAppend(to follower: NodeID, sendIfEmpty: Bool) -> Bool {
        guard let progress = leaderState.progress[follower], !progress.isPaused else { return false }
        let prevIndex = progress.next.previous
        guard prevIndex >= log.snapshotIndex, let prevTerm = log.term(at: prevIndex) else {
            return sendSnapshot(to: follower)
        }
        let entries = log.slice(from: progress.next, through: log.lastIndex, bytesMax: config.appendMessageBytesMax)
        let commitBehind = progress.commitSent < Swift.min(log.committed, prevIndex)
        if entries.isEmpty && !sendIfEmpty && !commitBehind { return false }
        send(to: follower, .append(Message.Append(
            prevLogIndex: prevIndex, prevLogTerm: prevTerm, entries: Array(entries), commit: log.committed)))
        leaderState.progress[member: follower].sentAppend(lastIndex: entries.last?.index)
        leaderState.progress[member: follower].commitSent = Swift.max(progress.commitSent, log.committed)
        return true
    }

    private mutating func sendSnapshot(to follower: NodeID) -> Bool {
        // etcd: do not ship a snapshot to a follower that has not answered lately.
        guard leaderState.progress[member: follower].recentActive else { return false }
        guard let snapshot else { preconditionFailure("log compacted at \(log.snapshotIndex) without a snapshot") }
        leaderState.progress[member: follower].becomeSnapshot(index: snapshot.index)
        send(to: follower, .snapshot(snapshot))
        return true
    }

    // MARK: - ReadIndex (thesis §6.4)

    private mutating func handleReadIndex(context: [UInt8], from requester: NodeID) {
        if membership.voters == [id] || config.testingMutation == .readIndexWithoutQuorum {
            respondToRead(ReadIndexRequest(sequence: 0, index: log.committed, context: context, requester: requester))
            return
        }
        // Until the leader commits an entry of its term it does not know the commit index.
        guard log.term(at: log.committed) == term else {
            leaderState.readsAwaitingCommit.append((context, requester))
            return
        }
        leaderState.readSequence += 1
        var request = ReadIndexRequest(
            sequence: leaderState.readSequence, index: log.committed, context: context, requester: requester)
        request.acks.insert(id)
        leaderState.pendingReads.append(request)
        broadcastHeartbeat(readSequence: leaderState.readSequence)
    }

    private mutating func releaseReadsAwaitingCommit() {
        guard !leaderState.readsAwaitingCommit.isEmpty, log.term(at: log.committed) == term else { return }
        let waiting = leaderState.readsAwaitingCommit
        leaderState.readsAwaitingCommit = []
        for (context, requester) in waiting { handleReadIndex(context: context, from: requester) }
    }

    /// A heartbeat response for read `sequence`: the sender acknowledged this leader after every
    /// request up to that sequence arrived, so it counts for all of them.
    private mutating func acknowledgeRead(sequence: UInt64, from voter: NodeID) {
        guard membership.isVoter(voter) else { return }
        var released = -1
        for k in leaderState.pendingReads.indices where leaderState.pendingReads[k].sequence <= sequence {
            leaderState.pendingReads[k].acks.insert(voter)
            let acks = membership.voters.filter { leaderState.pendingReads[k].acks.contains($0) }.count
            if acks >= membership.quorum { released = k }
        }
        guard released >= 0 else { return }
        let done = leaderState.pendingReads[...released]
        leaderState.pendingReads.removeFirst(released + 1)
        for request in done { respondToRead(request) }
    }

    private mutating func respondToRead(_ request: ReadIndexRequest) {
        if request.requester == id {
            readStates.append(ReadState(index: request.index, context: request.context))
        } else {
            send(to: request.requester, .readIndexResponse(context: request.context, index: request.index))
        }
    }

    // MARK: - Membership

    private func membership(at index: LogIndex) -> Membership {
        membershipEntries.last(where: { $0.index <= index })?.membership ?? baseMembership
    }

    private mutating func refreshMembership() {
        let current = membershipEntries.last?.membership ?? baseMembership
        guard current != membership else { return }
        membership = current
        guard isLeader else { return }
        for member in current.members where !leaderState.progress.contains(member) {
            leaderState.addProgress(member, next: log.lastIndex.next, config: config)
        }
        for tracked in leaderState.progress.ids where !current.contains(tracked) {
            leaderState.progress.remove(tracked)
        }
        if let target = leaderState.transferee, !current.isVoter(target) { leaderState.transferee = nil }
        // A smaller quorum may commit at once.
        if maybeCommit() { broadcastAppend() }
    }

    /// Entries from peers were validated (`validate`), and stored ones when the log loaded: a
    /// membership entry that does not decode here is a bug.
    private static func decodeMembership(_ entry: Entry) -> Membership {
        guard let membership = Membership(decoding: entry.data) else {
            preconditionFailure("membership entry \(entry.term)/\(entry.index) does not decode")
        }
        return membership
    }

    // MARK: - Output

    private mutating func send(to peer: NodeID, term explicitTerm: Term? = nil, _ kind: Message.Kind) {
        outbox.append(Message(from: id, to: peer, term: explicitTerm ?? term, kind: kind))
    }
}

/// What only a leader tracks.
private struct LeaderState: Sendable {
    var progress = ProgressTracker()
    var transferee: NodeID?
    var readSequence: UInt64 = 0
    var pendingReads: [ReadIndexRequest] = []
    var readsAwaitingCommit: [(context: [UInt8], requester: NodeID)] = []

    mutating func addProgress(_ member: NodeID, next: LogIndex, config: RaftConfig) {
        progress.insert(member, Progress(next: next, inflightMax: config.appendsInflightMax))
    }
}

private struct ReadIndexRequest: Sendable {
    var sequence: UInt64
    var index: LogIndex
    var context: [UInt8]
    var requester: NodeID
    var acks: Set<NodeID> = []
}

/// Progress per member, in a small array sorted by id: clusters have 3–7 members, and the order
/// of iteration (hence of messages) must not depend on hashing, which is seeded per process.
struct ProgressTracker: Sendable, Sequence {
    private var items: [(id: NodeID, progress: Progress)] = []

    var ids: [NodeID] { items.map(\.id) }

    subscript(id: NodeID) -> Progress? {
        for item in items where item.id == id { return item.progress }
        return nil
    }

    /// In-place access to a tracked member's progress. Precondition: `id` is tracked.
    subscript(member id: NodeID) -> Progress {
        get { self[id]! }
        _modify {
            guard let k = items.firstIndex(where: { $0.id == id }) else { preconditionFailure("no progress for \(id)") }
            yield &items[k].progress
        }
    }

    func contains(_ id: NodeID) -> Bool { items.contains { $0.id == id } }

    mutating func insert(_ id: NodeID, _ progress: Progress) {
        let k = items.firstIndex(where: { $0.id > id }) ?? items.count
        items.insert((id, progress), at: k)
    }

    mutating func remove(_ id: NodeID) { items.removeAll { $0.id == id } }

    func makeIterator() -> IndexingIterator<[(id: NodeID, progress: Progress)]> { items.makeIterator() }
}

/// A snapshot of a server's state for status output and tests.
public struct Status: Sendable, CustomStringConvertible {
    public struct FollowerProgress: Sendable {
        public var id: NodeID
        public var match: LogIndex
        public var next: LogIndex
        public var state: String
        public var inflight: Int
        public var recentActive: Bool
        public var learner: Bool
    }

    public var id: NodeID
    public var role: Role
    public var term: Term
    public var vote: NodeID?
    public var leader: NodeID?
    public var commit: LogIndex
    public var applied: LogIndex
    public var lastIndex: LogIndex
    public var snapshotIndex: LogIndex
    public var membership: Membership
    public var progress: [FollowerProgress]

    public var description: String {
        var text = "\(id) \(role.rawValue) term=\(term) vote=\(vote.map(\.description) ?? "-")"
            + " leader=\(leader.map(\.description) ?? "-") commit=\(commit) applied=\(applied)"
            + " last=\(lastIndex) snapshot=\(snapshotIndex) \(membership)"
        for p in progress {
            text += "\n  \(p.id): \(p.state) match=\(p.match) next=\(p.next)"
            if p.inflight > 0 { text += " inflight=\(p.inflight)" }
            if p.learner { text += " learner" }
        }
        return text
    }
}
