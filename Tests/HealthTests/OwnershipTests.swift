import Health
import Testing

@Suite("check ownership")
struct OwnershipTests {
    static let keys = (0..<10_000).map { Rendezvous.key(node: "node-\($0 % 37)", checkID: "service:web-\($0)") }

    @Test func everyServerGetsItsShare() throws {
        let servers: [UInt64] = [1, 2, 3, 4, 5]
        var counts: [UInt64: Int] = [:]
        for key in Self.keys { counts[try #require(Rendezvous.owner(of: key, among: servers)), default: 0] += 1 }
        let share = Self.keys.count / servers.count
        for server in servers {
            // Within 10% of a fair share (the binomial spread is about 1%).
            #expect(abs(counts[server, default: 0] - share) < share / 10, "\(counts)")
        }
    }

    @Test func theOwnerDoesNotDependOnTheOrderServersAreListedIn() {
        for key in Self.keys.prefix(500) {
            #expect(Rendezvous.owner(of: key, among: [1, 2, 3]) == Rendezvous.owner(of: key, among: [3, 1, 2]))
        }
        #expect(Rendezvous.owner(of: "x", among: []) == nil)
    }

    /// A server leaving moves only its own checks; one joining takes checks only for itself.
    @Test func membershipChangesMoveTheMinimum() throws {
        let before: [UInt64] = [1, 2, 3]
        let owners = Self.keys.map { Rendezvous.owner(of: $0, among: before)! }
        // Server 2 dies.
        let afterLeave = Self.keys.map { Rendezvous.owner(of: $0, among: [1, 3])! }
        for (old, new) in zip(owners, afterLeave) {
            if old != 2 { #expect(new == old) } else { #expect(new != 2) }
        }
        // Server 4 joins: about a quarter of the checks move, all to it.
        let afterJoin = Self.keys.map { Rendezvous.owner(of: $0, among: [1, 2, 3, 4])! }
        var moved = 0
        for (old, new) in zip(owners, afterJoin) where old != new {
            #expect(new == 4)
            moved += 1
        }
        #expect(abs(moved - Self.keys.count / 4) < Self.keys.count / 40, "\(moved) moved")
        // And the checks of the dead server spread over the survivors, not onto one.
        let orphans = zip(owners, afterLeave).filter { $0.0 == 2 }.map(\.1)
        let toOne = orphans.filter { $0 == 1 }.count
        #expect(abs(toOne - orphans.count / 2) < orphans.count / 10)
    }

    @Test func theLeaderProposesTheServersInContactAfterItsGrace() {
        var tracker = CheckRunnerTracker()
        let members: [UInt64] = [1, 2, 3]
        var now: Int64 = 10_000
        // A follower never proposes.
        #expect(tracker.poll(isLeader: false, selfID: 1, members: members, contactAges: [:], replicated: [], nowMilliseconds: now) == nil)
        // A new leader waits for its grace before it trusts its contact ages.
        #expect(tracker.poll(isLeader: true, selfID: 1, members: members, contactAges: [2: 10, 3: 10], replicated: [],
                             nowMilliseconds: now) == nil)
        now += CheckRunnerTracker.leaderGraceMilliseconds / 2
        #expect(tracker.poll(isLeader: true, selfID: 1, members: members, contactAges: [2: 10, 3: 10], replicated: [],
                             nowMilliseconds: now) == nil)
        now += CheckRunnerTracker.leaderGraceMilliseconds
        #expect(tracker.poll(isLeader: true, selfID: 1, members: members, contactAges: [2: 10, 3: 10], replicated: [],
                             nowMilliseconds: now) == [1, 2, 3])
        // Replicated and unchanged: nothing.
        now += 5000
        #expect(tracker.poll(isLeader: true, selfID: 1, members: members, contactAges: [2: 10, 3: 10], replicated: [1, 2, 3],
                             nowMilliseconds: now) == nil)
        // Server 3 silent past the limit: it leaves the set.
        let silent = CheckRunnerTracker.contactMillisecondsMax + 1
        #expect(tracker.poll(isLeader: true, selfID: 1, members: members, contactAges: [2: 10, 3: silent],
                             replicated: [1, 2, 3], nowMilliseconds: now) == [1, 2])
        // Back within a moment: not proposed again before the minimum interval.
        now += CheckRunnerTracker.proposalIntervalMillisecondsMin / 2
        #expect(tracker.poll(isLeader: true, selfID: 1, members: members, contactAges: [2: 10, 3: 10], replicated: [1, 2],
                             nowMilliseconds: now) == nil)
        now += CheckRunnerTracker.proposalIntervalMillisecondsMin
        #expect(tracker.poll(isLeader: true, selfID: 1, members: members, contactAges: [2: 10, 3: 10], replicated: [1, 2],
                             nowMilliseconds: now) == [1, 2, 3])
        // Losing leadership and winning it again starts a new grace.
        #expect(tracker.poll(isLeader: false, selfID: 1, members: members, contactAges: [:], replicated: [1, 2, 3],
                             nowMilliseconds: now) == nil)
        #expect(tracker.poll(isLeader: true, selfID: 1, members: members, contactAges: [:], replicated: [1, 2, 3],
                             nowMilliseconds: now + 1) == nil)
    }
}
