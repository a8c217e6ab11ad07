import Raft
import RaftTesting
import Testing

/// A cluster of `count` voters (ids 1...count) with PreVote and CheckQuorum on.
func makeCluster(_ count: Int, learners: [NodeID] = [], _ configure: (inout RaftConfig) -> Void = { _ in })
    -> ScriptCluster
{
    var cluster = ScriptCluster()
    let voters = (1...UInt64(count)).map { NodeID(rawValue: $0) }
    for id in voters + learners {
        var config = RaftConfig(id: id, initialMembership: Membership(voters: voters, learners: learners))
        config.randomSeed = 42
        configure(&config)
        cluster.add(config: config)
    }
    return cluster
}

/// Elect node 1 and replicate its no-op everywhere.
func elect(_ cluster: inout ScriptCluster, _ id: NodeID = 1) {
    cluster.campaign(id)
    _ = cluster.stabilize()
}

func propose(_ cluster: inout ScriptCluster, _ id: NodeID, _ text: String) -> Result<(term: Term, index: LogIndex), ProposalError> {
    cluster.withNode(id) { (node: inout RaftNode) throws(ProposalError) in try node.propose(Array(text.utf8)) }
}

@Suite struct ConfigTests {
    @Test func defaultsAreValidAndRelated() throws {
        let config = RaftConfig(id: 1, initialMembership: Membership(voters: [1]))
        try config.validate()
        #expect(RaftConfig.heartbeatIntervalTicksDefault < RaftConfig.electionTimeoutTicksDefault)
        #expect(RaftConfig.appendsInflightMaxDefault >= 1 && RaftConfig.appendMessageBytesMaxDefault >= 1)
    }

    @Test(arguments: [(1, 1), (3, 5), (0, 0), (10, 0)])
    func heartbeatMustBeBelowElectionTimeout(election: Int, heartbeat: Int) {
        var config = RaftConfig(id: 1, initialMembership: Membership(voters: [1]))
        config.electionTimeoutTicks = election
        config.heartbeatIntervalTicks = heartbeat
        #expect(throws: RaftConfigError.self) { try config.validate() }
    }

    @Test func invalidConfigStopsInit() async {
        await #expect(processExitsWith: .failure) {
            var config = RaftConfig(id: 1, initialMembership: Membership(voters: [1]))
            config.electionTimeoutTicks = 1
            config.heartbeatIntervalTicks = 1
            _ = RaftNode(config: config)
        }
    }

    @Test func membershipEncodingRoundTripsAndRejectsGarbage() {
        let membership = Membership(voters: [3, 1, 2], learners: [9])
        #expect(membership.voters == [1, 2, 3])
        #expect(Membership(decoding: membership.encoded) == membership)
        #expect(Membership(decoding: [1, 0, 0]) == nil)
        #expect(Membership(decoding: membership.encoded + [0]) == nil)
        #expect(Membership(decoding: [1, 0, 0, 0] + [UInt8](repeating: 0, count: 8) + [0, 0, 0, 0]) == nil)
    }

    @Test func generatorIsDeterministicAndInRange() {
        var a = SplitMix64(seed: 7), b = SplitMix64(seed: 7), c = SplitMix64(seed: 8)
        let xs = (0..<100).map { _ in a.next(below: 10) }
        #expect(xs == (0..<100).map { _ in b.next(below: 10) })
        #expect(xs != (0..<100).map { _ in c.next(below: 10) })
        #expect(xs.allSatisfy { $0 < 10 } && Set(xs).count == 10)
    }
}

@Suite struct ElectionTests {
    @Test func campaignElectsOneLeaderAndCommitsNoop() {
        var cluster = makeCluster(3)
        elect(&cluster)
        #expect(cluster[1].role == .leader && cluster[1].term == 1)
        for id in cluster.ids {
            #expect(cluster[id].leader == 1)
            #expect(cluster[id].commitIndex == 1)
            #expect(cluster[id].entry(at: 1)?.kind == .noop)
        }
        #expect(cluster[2].role == .follower && cluster[3].role == .follower)
    }

    @Test func electionTimeoutStartsAnElectionWithinTwoTimeouts() {
        var cluster = makeCluster(3)
        let timeout = cluster[1].config.electionTimeoutTicks
        cluster.tick(1, times: 2 * timeout)
        #expect(cluster[1].role == .preCandidate)
        _ = cluster.stabilize()
        #expect(cluster[1].role == .leader)
    }

    @Test func followerRefusesProposalsNamingTheLeader() {
        var cluster = makeCluster(3)
        elect(&cluster)
        #expect(propose(&cluster, 2, "x").mapError { $0 }.failureValue == .notLeader(leader: 1))
        var lonely = makeCluster(3)
        #expect(propose(&lonely, 2, "x").failureValue == .notLeader(leader: nil))
    }

    @Test func preVoteKeepsAnIsolatedNodeFromRaisingItsTerm() {
        var cluster = makeCluster(3)
        elect(&cluster)
        cluster.partition([[1, 2], [3]])
        for _ in 0..<5 {
            cluster.campaign(3)
            _ = cluster.stabilize()
        }
        #expect(cluster[3].term == 1 && cluster[3].role == .preCandidate)
        cluster.heal()
        cluster.tick(1)
        _ = cluster.stabilize()
        #expect(cluster[1].role == .leader && cluster[1].term == 1 && cluster[3].leader == 1)
    }

    @Test func withoutPreVoteAnIsolatedNodeDisruptsOnReturn() {
        var cluster = makeCluster(3) { $0.preVote = false; $0.checkQuorum = false }
        elect(&cluster)
        cluster.partition([[1, 2], [3]])
        cluster.campaign(3)
        cluster.campaign(3)
        _ = cluster.stabilize()
        #expect(cluster[3].term == 3)
        cluster.heal()
        cluster.campaign(3)
        _ = cluster.stabilize()
        #expect(cluster[1].term == 4 && cluster[1].role != .leader)  // the term jump deposed it
    }

    @Test func checkQuorumMakesAnIsolatedLeaderStepDown() {
        var cluster = makeCluster(3)
        elect(&cluster)
        cluster.partition([[1], [2, 3]])
        // Responses seen before the partition count for the first round: down within two.
        let timeout = cluster[1].config.electionTimeoutTicks
        for _ in 0..<2 * timeout {
            cluster.tick(1)
            _ = cluster.stabilize()
        }
        #expect(cluster[1].role == .follower && cluster[1].leader == nil)
    }

    @Test func leaderStickinessIgnoresVotesWithinTheLease() {
        var cluster = makeCluster(3)
        elect(&cluster)
        // Node 3 misses heartbeats only in one direction and campaigns; 2 heard from 1 recently.
        cluster.cutLink(from: 1, to: 3)
        cluster.campaign(3)
        _ = cluster.stabilize()
        #expect(cluster[1].role == .leader && cluster[2].term == 1)
    }

    @Test func sameSeedSameRun() {
        func run() -> [String] {
            var cluster = makeCluster(5)
            var lines: [String] = []
            for step in 0..<60 {
                for id in cluster.ids { cluster.tick(id) }
                if step % 7 == 0 { cluster.partition([[1, 2], [3, 4, 5]]) }
                if step % 11 == 0 { cluster.heal() }
                lines += cluster.stabilize()
            }
            return lines
        }
        let first = run()
        #expect(first.contains { $0.contains("Vote") })
        #expect(first == run())
    }
}

@Suite struct ReplicationTests {
    @Test func proposalsCommitOnAMajorityAndApplyEverywhere() throws {
        var cluster = makeCluster(3)
        elect(&cluster)
        let accepted = try propose(&cluster, 1, "a").get()
        #expect(accepted.index == 2 && accepted.term == 1)
        _ = cluster.stabilize()
        cluster.partition([[1, 2], [3]])
        _ = try propose(&cluster, 1, "b").get()
        _ = cluster.stabilize()
        #expect(cluster[1].commitIndex == 3 && cluster[3].lastIndex == 2)
        cluster.heal()
        cluster.tick(1)
        _ = cluster.stabilize()
        for id in cluster.ids {
            #expect(cluster.node(id)!.applied.map { String(decoding: $0.data, as: UTF8.self) } == ["a", "b"])
        }
    }

    @Test func conflictingSuffixIsReplacedAndHintsSkipTerms() throws {
        var cluster = makeCluster(3)
        elect(&cluster)
        // 1 appends entries in term 1 that only it holds.
        cluster.partition([[1], [2, 3]])
        for k in 0..<5 { _ = try propose(&cluster, 1, "stale\(k)").get() }
        _ = cluster.stabilize()
        // Once 3's lease on leader 1 expires, 2 becomes leader in term 2 and commits its own entries.
        expireLease(&cluster, [2, 3])
        if !cluster[2].isLeader { cluster.campaign(2) }
        _ = cluster.stabilize()
        #expect(cluster[2].role == .leader)
        _ = try propose(&cluster, 2, "fresh").get()
        _ = cluster.stabilize()
        // 3 takes over in term 3, so its first probe to 1 lands above the divergence point.
        _ = cluster.withNode(2) { (node: inout RaftNode) throws(ProposalError) in try node.transferLeadership(to: 3) }
        _ = cluster.stabilize()
        #expect(cluster[3].isLeader && cluster[3].term == 3)
        cluster.heal()
        cluster.tick(3)
        let lines = cluster.stabilize()
        #expect(lines.contains { $0.contains("AppResp") && $0.contains("rejected") && $0.contains("hint=1/2") })
        for index in 1...cluster[3].lastIndex.rawValue {
            #expect(cluster[1].entry(at: LogIndex(index)) == cluster[3].entry(at: LogIndex(index)))
        }
        #expect(!cluster.node(1)!.applied.contains { String(decoding: $0.data, as: UTF8.self).hasPrefix("stale") })
    }

    @Test func inflightAndMessageSizeLimitsHold() throws {
        var cluster = makeCluster(3) { $0.appendsInflightMax = 2; $0.appendMessageBytesMax = 64 }
        elect(&cluster)
        for k in 0..<20 { _ = try propose(&cluster, 1, "payload-\(k)-xxxxxxxxxxxxxxxxxxx").get() }
        // Without acknowledgements, at most 2 appends with at most 64 bytes of entries (or one entry).
        _ = cluster.processReady(1)
        let appends = cluster.queue.filter { $0.to == 2 && $0.entryBytes > 0 }
        #expect(appends.count <= 2 && !appends.isEmpty)
        for message in appends {
            guard case .append(let a) = message.kind else { continue }
            #expect(message.entryBytes <= 64 || a.entries.count == 1)
        }
        _ = cluster.stabilize()
        #expect(cluster[2].lastIndex == cluster[1].lastIndex && cluster[2].commitIndex == 21)
    }

    /// Paper §5.4.2: leader 1 of term 1 appends "old" at index 2 alone; re-elected in term 2 it
    /// brings index 2 to a majority one entry per message before its no-op at 3. Counting
    /// replicas of the term-1 entry would commit index 2 right then; the correct rule commits it
    /// only with the no-op, so the commit index jumps from 1 to 3.
    @Test(arguments: [false, true])
    func onlyCurrentTermEntriesAreCountedForCommit(mutated: Bool) throws {
        var cluster = makeCluster(3) {
            $0.appendMessageBytesMax = 1
            if mutated { $0.testingMutation = .commitPreviousTermEntries }
        }
        elect(&cluster)
        cluster.partition([[1], [2], [3]])
        _ = try propose(&cluster, 1, "old").get()
        _ = cluster.stabilize()
        for _ in 0..<2 * cluster[1].config.electionTimeoutTicks {  // CheckQuorum
            cluster.tick(1)
            _ = cluster.stabilize()
        }
        #expect(cluster[1].role == .follower)
        cluster.heal()
        expireLease(&cluster, [2, 3])
        cluster.campaign(1)
        var commits: [LogIndex] = []
        for _ in 0..<20 {
            for id in cluster.ids {
                _ = cluster.processReady(id)
                _ = cluster.deliver(to: [id])
                commits.append(cluster[1].commitIndex)
            }
        }
        #expect(cluster[1].role == .leader && cluster[1].term == 2 && cluster[1].commitIndex == 3)
        #expect(commits.contains(2) == mutated)
    }
}

/// Tick `ids` through an election timeout so that they no longer count as hearing from a leader.
func expireLease(_ cluster: inout ScriptCluster, _ ids: [NodeID]) {
    for id in ids { cluster.tick(id, times: cluster[id].config.electionTimeoutTicks) }
}

@Suite struct ReadIndexTests {
    @Test func leaderConfirmsWithAHeartbeatRound() throws {
        var cluster = makeCluster(3)
        elect(&cluster)
        _ = cluster.withNode(1) { (node: inout RaftNode) throws(ProposalError) in try node.readIndex(context: Array("r1".utf8)) }
        _ = cluster.processReady(1)
        #expect(cluster.node(1)!.readStates.isEmpty)  // not before a quorum answered
        _ = cluster.stabilize()
        #expect(cluster.node(1)!.readStates == [ReadState(index: 1, context: Array("r1".utf8))])
    }

    @Test func isolatedLeaderCannotServeReads() {
        var cluster = makeCluster(3)
        elect(&cluster)
        cluster.partition([[1], [2, 3]])
        _ = cluster.withNode(1) { (node: inout RaftNode) throws(ProposalError) in try node.readIndex(context: [1]) }
        _ = cluster.stabilize()
        #expect(cluster.node(1)!.readStates.isEmpty)
    }

    @Test func followerForwardsToLeader() {
        var cluster = makeCluster(3)
        elect(&cluster)
        _ = cluster.withNode(3) { (node: inout RaftNode) throws(ProposalError) in try node.readIndex(context: [7]) }
        _ = cluster.stabilize()
        #expect(cluster.node(3)!.readStates == [ReadState(index: 1, context: [7])])
        var leaderless = makeCluster(3)
        let result = leaderless.withNode(3) { (node: inout RaftNode) throws(ProposalError) in try node.readIndex(context: [7]) }
        #expect(result.failureValue == .notLeader(leader: nil))
    }
}

@Suite struct MembershipTests {
    @Test func learnerReplicatesButNeitherVotesNorCounts() throws {
        var cluster = makeCluster(3, learners: [4])
        elect(&cluster)
        #expect(cluster[4].commitIndex == 1)
        cluster.partition([[1, 4], [2, 3]])
        _ = try propose(&cluster, 1, "x").get()
        _ = cluster.stabilize()
        #expect(cluster[4].lastIndex == 2 && cluster[1].commitIndex == 1)  // the learner does not make a quorum
        cluster.heal()
        cluster.tick(4, times: 100)
        #expect(cluster[4].role == .follower)
    }

    @Test func oneChangeAtATimeEffectiveOnAppend() throws {
        var cluster = makeCluster(3)
        var config = RaftConfig(id: 4, initialMembership: .empty)
        config.randomSeed = 1
        cluster.add(config: config)
        elect(&cluster)
        let add = cluster.withNode(1) { (node: inout RaftNode) throws(ProposalError) in try node.proposeMembershipChange(.addVoter(4)) }
        #expect(add.successValue != nil)
        #expect(cluster[1].membership.voters == [1, 2, 3, 4])  // in force on the leader once appended
        let second = cluster.withNode(1) { (node: inout RaftNode) throws(ProposalError) in try node.proposeMembershipChange(.remove(2)) }
        #expect(second.failureValue == .membershipChangeInProgress)
        _ = cluster.stabilize()
        #expect(cluster[4].membership.voters == [1, 2, 3, 4] && cluster[4].commitIndex == 2)
        let removeSelf = cluster.withNode(1) { (node: inout RaftNode) throws(ProposalError) in try node.proposeMembershipChange(.remove(1)) }
        #expect(removeSelf.failureValue == .invalidMembershipChange(.removingLeader(1)))
        let remove = cluster.withNode(1) { (node: inout RaftNode) throws(ProposalError) in try node.proposeMembershipChange(.remove(2)) }
        #expect(remove.successValue != nil)
        _ = cluster.stabilize()
        #expect(cluster[3].membership.voters == [1, 3, 4])
    }

    @Test func leaderTransferHandsOverAndRefusesProposalsMeanwhile() throws {
        var cluster = makeCluster(3)
        elect(&cluster)
        cluster.partition([[1], [2, 3]])
        _ = try propose(&cluster, 1, "x").get()
        _ = cluster.stabilize()
        cluster.heal()
        _ = cluster.withNode(1) { (node: inout RaftNode) throws(ProposalError) in try node.transferLeadership(to: 3) }
        #expect(propose(&cluster, 1, "y").failureValue == .leaderTransferInProgress(to: 3))
        _ = cluster.stabilize()
        #expect(cluster[3].role == .leader && cluster[3].term == 2 && cluster[1].leader == 3)
        #expect(cluster[3].entry(at: 2).map { String(decoding: $0.data, as: UTF8.self) } == "x")
    }

    @Test func transferIsAbandonedAfterAnElectionTimeout() {
        var cluster = makeCluster(3)
        elect(&cluster)
        cluster.partition([[1, 2], [3]])
        _ = cluster.withNode(1) { (node: inout RaftNode) throws(ProposalError) in try node.transferLeadership(to: 3) }
        #expect(cluster[1].transferee == 3)
        cluster.tick(1, times: cluster[1].config.electionTimeoutTicks)
        #expect(cluster[1].transferee == nil && cluster[1].role == .leader)
    }
}

@Suite struct SnapshotTests {
    @Test func laggingFollowerCatchesUpFromASnapshot() throws {
        var cluster = makeCluster(3)
        elect(&cluster)
        cluster.partition([[1, 2], [3]])
        for k in 0..<10 { _ = try propose(&cluster, 1, "e\(k)").get() }
        _ = cluster.stabilize()
        cluster.compact(1, through: 8)
        #expect(cluster[1].firstIndex == 9)
        cluster.heal()
        cluster.tick(1)
        let lines = cluster.stabilize()
        #expect(lines.contains { $0.contains("Snapshot") })
        #expect(cluster[3].snapshotIndex == 8 && cluster[3].commitIndex == 11)
        #expect(cluster.node(3)!.applied.map(\.index) == Array(2...11).map { LogIndex(UInt64($0)) })
    }

    @Test func restartRestoresTermVoteAndLog() throws {
        var cluster = makeCluster(3)
        elect(&cluster)
        _ = try propose(&cluster, 1, "a").get()
        _ = cluster.stabilize()
        cluster.compact(2, through: 1)
        cluster.crash(2)
        cluster.restart(2)
        #expect(cluster[2].term == 1 && cluster[2].vote == 1 && cluster[2].lastIndex == 2)
        #expect(cluster[2].commitIndex == 2 && cluster[2].snapshotIndex == 1)
        _ = cluster.stabilize()
        #expect(cluster.node(2)!.applied.map { String(decoding: $0.data, as: UTF8.self) } == ["a"])
    }

    @Test func diskLosesOnlyUnsyncedReadies() {
        var cluster = makeCluster(1)
        cluster.campaign(1)
        var disk = MemoryDisk()
        var node = cluster[1]
        let first = node.ready()
        disk.write(first)
        disk.sync()
        node.advance(first)
        _ = try? node.propose([1])
        let second = node.ready()
        disk.write(second)
        disk.crash()
        #expect(disk.durable.entries.map(\.index) == [1])
        #expect(disk.durable.hardState.term == 1)
    }
}

extension Result {
    var failureValue: Failure? { if case .failure(let e) = self { e } else { nil } }
    var successValue: Success? { if case .success(let v) = self { v } else { nil } }
}
