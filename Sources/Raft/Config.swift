/// How one Raft server behaves. Times are in ticks: the caller decides what a tick is
/// (`Cluster` ticks every 50 ms, `RaftDriver.tickMillisecondsDefault`; etcd's default is
/// 100 ms), the core never reads a clock.
public struct RaftConfig: Sendable {
    /// etcd's default: ten heartbeats without news from a leader start an election.
    public static let electionTimeoutTicksDefault = 10
    /// One heartbeat per tick keeps followers well inside their election timeout.
    public static let heartbeatIntervalTicksDefault = 1
    /// 1 MiB of entries per AppendEntries: big enough that a catching-up follower moves at
    /// network speed, small enough that one message does not block heartbeats behind it for long.
    public static let appendMessageBytesMaxDefault = 1 << 20
    /// In-flight AppendEntries per follower in the replicate state: 256 × 1 MiB bounds what one
    /// slow follower can make the leader buffer, and covers a 100 ms RTT at >2 GB/s.
    public static let appendsInflightMaxDefault = 256

    /// This server.
    public var id: NodeID
    /// The membership a brand-new cluster starts with (every founding server must be given the
    /// same one). Ignored once a snapshot or a membership entry says otherwise. A server that
    /// joins an existing cluster starts with `Membership.empty` and learns the membership from
    /// the leader.
    public var initialMembership: Membership
    /// An election starts after a random timeout in [electionTimeoutTicks, 2 × electionTimeoutTicks)
    /// without hearing from a leader (paper §5.2). Also the leader's CheckQuorum period and the
    /// length of the leader lease behind leader stickiness.
    public var electionTimeoutTicks: Int = RaftConfig.electionTimeoutTicksDefault
    /// The leader sends heartbeats this often. Must be below `electionTimeoutTicks`.
    public var heartbeatIntervalTicks: Int = RaftConfig.heartbeatIntervalTicksDefault
    /// Thesis §9.6: ask for pre-votes first, so a server that was partitioned away does not
    /// raise the term (and depose a healthy leader) when it comes back.
    public var preVote: Bool = true
    /// Thesis §6.2: a leader that has not heard from a majority within an election timeout steps
    /// down; followers that heard from a leader within that time ignore vote requests (leader
    /// stickiness, thesis §4.2.3).
    public var checkQuorum: Bool = true
    /// Upper bound on the entry bytes of one AppendEntries (always at least one entry).
    public var appendMessageBytesMax: Int = RaftConfig.appendMessageBytesMaxDefault
    /// Upper bound on AppendEntries sent but not acknowledged, per follower.
    public var appendsInflightMax: Int = RaftConfig.appendsInflightMaxDefault
    /// Seeds the election-timeout generator. Give each server its own seed (the core mixes in
    /// the server's id as well, so equal seeds still give different timeouts).
    public var randomSeed: UInt64 = 0
    /// Test-only: deliberately break the protocol so tests can show that the simulator notices.
    package var testingMutation: TestingMutation = .none

    public init(id: NodeID, initialMembership: Membership) {
        self.id = id
        self.initialMembership = initialMembership
    }

    /// Checks the relations between the settings. Configuration is input from an operator
    /// (TOML, flags), so a bad one is a typed error for the caller to report; `RaftNode.init`
    /// then treats an invalid configuration as a bug and stops on a precondition.
    public func validate() throws(RaftConfigError) {
        guard heartbeatIntervalTicks >= 1 else { throw .heartbeatIntervalTooShort(heartbeatIntervalTicks) }
        guard electionTimeoutTicks > heartbeatIntervalTicks else {
            throw .electionTimeoutNotAboveHeartbeat(
                electionTimeoutTicks: electionTimeoutTicks, heartbeatIntervalTicks: heartbeatIntervalTicks)
        }
        guard appendMessageBytesMax >= 1 else { throw .appendMessageBytesMaxTooSmall(appendMessageBytesMax) }
        guard appendsInflightMax >= 1 else { throw .appendsInflightMaxTooSmall(appendsInflightMax) }
    }
}

/// A configuration whose settings contradict each other.
public enum RaftConfigError: Error, Hashable, Sendable, CustomStringConvertible {
    case heartbeatIntervalTooShort(Int)
    case electionTimeoutNotAboveHeartbeat(electionTimeoutTicks: Int, heartbeatIntervalTicks: Int)
    case appendMessageBytesMaxTooSmall(Int)
    case appendsInflightMaxTooSmall(Int)

    public var description: String {
        switch self {
        case .heartbeatIntervalTooShort(let t): "heartbeat interval must be at least 1 tick, is \(t)"
        case .electionTimeoutNotAboveHeartbeat(let e, let h):
            "election timeout (\(e) ticks) must be longer than the heartbeat interval (\(h) ticks)"
        case .appendMessageBytesMaxTooSmall(let b): "append message byte limit must be at least 1, is \(b)"
        case .appendsInflightMaxTooSmall(let n): "in-flight append limit must be at least 1, is \(n)"
        }
    }
}

/// Known bugs that tests inject into the core to prove the simulator and checkers catch them.
/// Each is one guarded line in `RaftNode` or `ReadyProcessor`; `name` is what `raft-sim
/// --mutation` takes.
package enum TestingMutation: String, Sendable, Hashable, CaseIterable {
    case none
    /// Commit by counting replicas of an entry from an earlier term: the bug that Figure 8 of
    /// the Raft paper shows and §5.4.2 forbids.
    case commitPreviousTermEntries = "commit-previous-term"
    /// Grant votes without the "candidate's log is at least as up-to-date" check of §5.4.1.
    case grantVoteWithoutLogCheck = "vote-without-log-check"
    /// Answer a ReadIndex at once with the local commit index, without the heartbeat round that
    /// confirms a quorum still follows this leader (thesis §6.4 step 3): a deposed leader that
    /// has not heard of its successor serves stale reads.
    case readIndexWithoutQuorum = "read-without-quorum"
    /// Send every message of a Ready before it is durable, not only a leader's appends (the
    /// `Ready` contract's step 2): a follower acknowledges entries, and a voter grants a vote,
    /// that a crash can still take back.
    case sendBeforeDurable = "send-before-fsync"
    /// Accept a membership change while another is uncommitted (thesis §4.1 allows one at a
    /// time): two single-server changes in flight can make quorums that do not overlap.
    case concurrentMembershipChanges = "two-membership-changes"

    /// The mutation `raft-sim --mutation` names (nil for none).
    package var name: String? { self == .none ? nil : rawValue }
}

/// Why a proposal, read or request was not accepted. A refused request has no effect at all;
/// the caller may retry it elsewhere.
public enum ProposalError: Error, Hashable, Sendable, CustomStringConvertible {
    /// Only the leader accepts proposals; `leader` is the one this server knows of, if any.
    case notLeader(leader: NodeID?)
    /// The leader is handing over to `to` and accepts nothing until that finishes or times out
    /// (thesis §3.10).
    case leaderTransferInProgress(to: NodeID)
    /// A membership change is uncommitted, or this leader has not yet committed an entry of its
    /// term (thesis §4.1 and the 2015 raft-dev fix): one change at a time.
    case membershipChangeInProgress
    case invalidMembershipChange(MembershipChangeError)
    /// A leader transfer to a server that is not a voter.
    case transferTargetNotVoter(NodeID)

    public var description: String {
        switch self {
        case .notLeader(let leader): "not leader, leader is \(leader.map(\.description) ?? "unknown")"
        case .leaderTransferInProgress(let to): "leader transfer to \(to) in progress"
        case .membershipChangeInProgress: "membership change in progress"
        case .invalidMembershipChange(let e): "invalid membership change: \(e)"
        case .transferTargetNotVoter(let id): "transfer target \(id) is not a voter"
        }
    }
}
