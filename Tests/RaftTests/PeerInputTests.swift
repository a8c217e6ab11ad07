import Raft
import RaftTesting
import Testing

/// Messages no correct peer sends are refused with a typed error before they change anything
/// (issue 11.4: each of these used to stop the process on a precondition).
@Suite struct PeerInputTests {
    /// Node 1 leads a 3-node cluster with `count` entries after its no-op, all committed.
    static func settledCluster(entries count: Int = 3) -> ScriptCluster {
        var cluster = makeCluster(3)
        elect(&cluster)
        for k in 0..<count { _ = propose(&cluster, 1, "put k\(k) v") }
        _ = cluster.stabilize()
        return cluster
    }

    struct Case: Sendable, CustomTestStringConvertible {
        var name: String
        /// The message, given the receiver's status before it.
        var message: @Sendable (Status) -> Message
        var receiver: NodeID
        var testDescription: String { name }
    }

    static let cases: [Case] = [
        Case(name: "append with a gap", message: { s in
            Message(from: 1, to: 2, term: s.term, kind: .append(.init(prevLogIndex: s.lastIndex, prevLogTerm: s.term,
                entries: [Entry(term: s.term, index: s.lastIndex.next.next, data: [1])], commit: s.commit)))
        }, receiver: 2),
        Case(name: "append whose entries go back in term", message: { s in
            Message(from: 1, to: 2, term: s.term, kind: .append(.init(prevLogIndex: s.lastIndex, prevLogTerm: s.term,
                entries: [Entry(term: Term(s.term.rawValue - 1), index: s.lastIndex.next, data: [1])], commit: s.commit)))
        }, receiver: 2),
        Case(name: "membership entry that does not decode", message: { s in
            Message(from: 1, to: 2, term: s.term, kind: .append(.init(prevLogIndex: s.lastIndex, prevLogTerm: s.term,
                entries: [Entry(term: s.term, index: s.lastIndex.next, kind: .membership, data: [1, 2, 3])], commit: s.commit)))
        }, receiver: 2),
        Case(name: "heartbeat committing beyond the log (a wiped disk)", message: { s in
            Message(from: 1, to: 2, term: s.term, kind: .heartbeat(.init(commit: LogIndex(s.lastIndex.rawValue + 5), readSequence: 0)))
        }, receiver: 2),
        Case(name: "acknowledgement beyond the leader's log", message: { s in
            Message(from: 2, to: 1, term: s.term, kind: .appendResponse(.init(index: LogIndex(s.lastIndex.rawValue + 100))))
        }, receiver: 1),
        Case(name: "snapshot of a later term than its message", message: { s in
            Message(from: 1, to: 2, term: s.term, kind: .snapshot(Snapshot(index: LogIndex(s.lastIndex.rawValue + 10),
                term: Term(s.term.rawValue + 1), membership: Membership(voters: [1, 2, 3]), data: [])))
        }, receiver: 2),
    ]

    @Test(arguments: PeerInputTests.cases)
    func refusedWithoutChangingState(_ c: Case) throws {
        let cluster = Self.settledCluster()
        var node = try #require(cluster.node(c.receiver)).raft
        let before = node.status
        let message = c.message(before)
        #expect(throws: InvalidMessage.self) { try node.step(message) }
        let after = node.status
        #expect(after.term == before.term && after.commit == before.commit && after.lastIndex == before.lastIndex
                && after.leader == before.leader && after.role == before.role, "\(after)")
        #expect(!node.hasReady || node.ready().messages.isEmpty)
    }

    /// The same messages, made valid, are taken: the checks refuse only what is broken.
    @Test func aValidAppendAndHeartbeatAreTaken() throws {
        let cluster = Self.settledCluster()
        var node = try #require(cluster.node(2)).raft
        let s = node.status
        try node.step(Message(from: 1, to: 2, term: s.term, kind: .append(.init(prevLogIndex: s.lastIndex, prevLogTerm: s.term,
            entries: [Entry(term: s.term, index: s.lastIndex.next, data: [1])], commit: s.commit))))
        #expect(node.status.lastIndex == s.lastIndex.next)
        try node.step(Message(from: 1, to: 2, term: s.term, kind: .heartbeat(.init(commit: s.lastIndex.next, readSequence: 0))))
        #expect(node.status.commit == s.lastIndex.next)
    }

    /// A read whose confirming heartbeat round was lost is confirmed by the next periodic
    /// heartbeats (issue 11.5), not left waiting for another read.
    @Test func aReadWhoseHeartbeatsWereLostIsConfirmedByTheNextRound() throws {
        var cluster = Self.settledCluster()
        _ = cluster.withNode(1) { (node: inout RaftNode) throws(ProposalError) in try node.readIndex(context: [7]) }
        _ = cluster.processReady(1)
        _ = cluster.deliver(drop: true)  // the read's own heartbeats are lost
        #expect(cluster.node(1)?.readStates.isEmpty == true)
        let heartbeat = cluster.node(1)!.config.heartbeatIntervalTicks
        cluster.tick(1, times: heartbeat)
        _ = cluster.stabilize()
        #expect(cluster.node(1)?.readStates.map(\.context) == [[7]])
    }
}

/// Issue 11.7 (seed 2078912619, PreVote and CheckQuorum off): a leader removed from the
/// configuration while it led a minority must learn of the newer term once healed, instead of
/// leading its old term for ever.
@Suite struct RemovedLeaderTests {
    @Test func aLeaderRemovedWhileCutOffStepsDownOnceHealed() throws {
        var cluster = makeCluster(5) { config in
            config.preVote = false
            config.checkQuorum = false
        }
        elect(&cluster)
        cluster.partition([[1, 2], [3, 4, 5]])
        elect(&cluster, 3)
        #expect(cluster.node(3)?.raft.isLeader == true)
        _ = cluster.withNode(3) { (node: inout RaftNode) throws(ProposalError) in try node.proposeMembershipChange(.remove(1)) }
        _ = cluster.stabilize()
        #expect(cluster.node(3)?.raft.membership.contains(1) == false)
        #expect(cluster.node(1)?.raft.isLeader == true, "still cut off, 1 thinks it leads its old term")

        cluster.heal()
        for _ in 0..<3 {
            cluster.tick(1, times: cluster.node(1)!.config.heartbeatIntervalTicks)
            _ = cluster.stabilize()
        }
        #expect(cluster.node(1)?.raft.isLeader == false)
        #expect(cluster.node(1)?.raft.term == cluster.node(3)?.raft.term)
    }
}
