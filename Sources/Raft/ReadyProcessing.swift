/// How a proposal ended, as a driver tells its proposer.
public enum ProposalOutcome: Sendable, Equatable {
    /// The entry committed at its index, in the term it was proposed in, and applied here.
    case committed
    /// Another leader's entry took its index: it never committed.
    case superseded
    /// A snapshot from the leader replaced the log past its index before it was seen to apply:
    /// whether it committed is not known here (the proposer may retry, or read to find out).
    case unknown
}

/// What a driver does at each step of the `Ready` contract. `ReadyProcessor` calls these in the
/// contract's order; persisting (step 1) is the driver's own, between `begin` and `finish`, so a
/// simulated disk may take its time.
public protocol ReadyEffects {
    /// Step 0, a leader only: its appends, which may leave before this Ready is durable.
    mutating func sendEarly(_ messages: [Message])
    /// Step 2: every other message, once the Ready is durable.
    mutating func send(_ messages: [Message])
    /// Step 3: install a leader's snapshot into the state machines. false: it failed, and the
    /// driver must stop (nothing after it happens).
    mutating func install(_ snapshot: Snapshot) -> Bool
    /// Step 3: apply one committed entry to the state machines. false: stop.
    mutating func apply(_ entry: Entry) -> Bool
    /// The term of the proposal this server is waiting on at `index`, if any.
    func proposalTerm(at index: LogIndex) -> Term?
    /// Tells the proposer at `index` how its proposal ended.
    mutating func resolveProposal(at index: LogIndex, _ outcome: ProposalOutcome)
    /// Every index with a proposal waiting, at or below `index` (those a snapshot covers).
    func proposals(through index: LogIndex) -> [LogIndex]
    /// Step 4: a read the leader confirmed, to serve once the applied index reaches it.
    mutating func confirmRead(_ state: ReadState)
}

/// The `Ready` contract in one place, for every driver: Cluster's `RaftDriver` and RaftTesting's
/// simulator run the same order (early send, persist, send, install, apply and resolve, the
/// leader's entry-less appends, reads, advance), so the simulator tests the order production runs.
///
///     let later = processor.begin(ready, &effects)     // step 0
///     persist(ready)                                  // step 1: the driver's own (fsync)
///     guard processor.finish(ready, later: later, &effects) else { stop }  // steps 2-4
///     node.advance(ready)                             // step 5
public struct ReadyProcessor: Sendable {
    /// The term and vote last made durable: what a message sent before this Ready's fsync may
    /// rely on.
    public private(set) var durableTerm: Term
    public private(set) var durableVote: NodeID?
    /// Test-only (`TestingMutation.sendBeforeDurable`): the simulator sets it with the core's.
    package var testingMutation: TestingMutation = .none

    public init(durable: HardState) {
        durableTerm = durable.term
        durableVote = durable.vote
    }

    /// The messages `begin` held back: those that wait for the Ready to be durable, and a
    /// leader's entry-less appends, which wait for the applies too.
    public struct Held: Sendable {
        /// Sent first in `finish`: a follower's acknowledgements and votes wait for nothing else.
        public var beforeApply: [Message]
        /// Sent last in `finish`: a leader's appends that carry no entries (a commit index that
        /// moved, a probe). Nothing waits on them as much as on the applies just before them,
        /// whose proposers are answered there (issue 16: two sends and their loopback delivery
        /// were a third of commit -> applied at one client).
        public var afterApply: [Message]

        public init(beforeApply: [Message] = [], afterApply: [Message] = []) {
            self.beforeApply = beforeApply
            self.afterApply = afterApply
        }
    }

    /// Step 0: a leader's appends with entries go out before its own fsync, so the followers'
    /// disk writes overlap the leader's (thesis §10.2.1, as etcd). Safe because the leader counts
    /// itself toward a commit only for entries on its own disk, and no acknowledgement is stepped
    /// before `finish`. Returns the messages that must wait: for the Ready to be durable, and
    /// (a leader's entry-less appends) for its applies.
    public func begin<Effects: ReadyEffects>(_ ready: Ready, _ effects: inout Effects) -> Held {
        if testingMutation == .sendBeforeDurable { effects.sendEarly(ready.messages); return Held() }
        guard ready.role == .leader else { return Held(beforeApply: ready.messages) }
        var early: [Message] = [], held = Held()
        for message in ready.messages {
            if case .append(let append) = message.kind {
                if append.entries.isEmpty { held.afterApply.append(message) } else { early.append(message) }
            } else {
                held.beforeApply.append(message)
            }
        }
        guard !early.isEmpty else { return held }
        // What goes out before the fsync must not depend on it: a term or vote that is not
        // durable yet would be forgotten by a crash after others acted on it.
        precondition(ready.hardState.map { $0.term == durableTerm && $0.vote == durableVote } ?? true,
                     "an early send would carry a term or vote change that is not durable yet")
        effects.sendEarly(early)
        return held
    }

    /// Steps 2-4, once `ready` is durable: send what waited for it, install the snapshot (its
    /// covered proposals resolve as unknown), apply the committed entries (each proposal at their
    /// index resolves: committed if its term matches, superseded if not), send what waited for
    /// the applies, pass on the confirmed reads. false: an install or apply failed and the driver
    /// must stop (nothing after it is sent). The caller then advances.
    public mutating func finish<Effects: ReadyEffects>(_ ready: Ready, later: Held, _ effects: inout Effects) -> Bool {
        if let hard = ready.hardState { (durableTerm, durableVote) = (hard.term, hard.vote) }
        effects.send(later.beforeApply)
        if let snapshot = ready.snapshot {
            guard effects.install(snapshot) else { return false }
            for index in effects.proposals(through: snapshot.index) { effects.resolveProposal(at: index, .unknown) }
        }
        for entry in ready.committedEntries {
            guard effects.apply(entry) else { return false }
            if let term = effects.proposalTerm(at: entry.index) {
                effects.resolveProposal(at: entry.index, term == entry.term ? .committed : .superseded)
            }
        }
        effects.send(later.afterApply)
        for state in ready.readStates { effects.confirmRead(state) }
        return true
    }
}
