import Raft
import RaftTesting
import Testing

/// The simulated disk's storage faults: a torn tail keeps a prefix of records in the order a
/// restart can load, and a damaged entry is found by its checksum.
@Suite struct MemoryDiskTests {
    /// A single voter after its election (term 1, its no-op synced) and the Ready of three
    /// proposals: head (commit 1), entries 2-4, commit: five records.
    static func leaderWithThreeProposals() -> (disk: MemoryDisk, ready: Ready) {
        var node = RaftNode(config: RaftConfig(id: 1, initialMembership: Membership(voters: [1])))
        node.campaign()
        var disk = MemoryDisk()
        let election = node.ready()
        disk.write(election)
        disk.sync()
        node.advance(election)
        _ = try? node.propose(batch: [[1], [2], [3]])
        return (disk, node.ready())
    }

    @Test(arguments: 0...5)
    func aTornTailLoadsAndKeepsAPrefix(records: Int) throws {
        var (disk, ready) = Self.leaderWithThreeProposals()
        #expect(ready.entries.map(\.index) == [2, 3, 4] && ready.hardState?.commit == 1)
        disk.write(ready)
        #expect(disk.unsyncedRecordCount == 5)
        disk.crash(keeping: records)
        let stored = try disk.load()
        // Head, then entries in order, and the commit index only with the last record.
        #expect(stored.entries.map(\.index.rawValue) == Array(1...UInt64(1 + max(0, min(3, records - 1)))))
        #expect(stored.hardState.term == 1)
        #expect(stored.hardState.commit == (records == 5 ? 1 : 0))
        // What a torn tail leaves is a state the core accepts (its init checks the log).
        let restarted = RaftNode(config: RaftConfig(id: 1, initialMembership: Membership(voters: [1])), persistent: stored)
        #expect(restarted.lastIndex == stored.entries.last!.index)
    }

    @Test func aDamagedEntryFailsItsChecksumOnLoad() throws {
        var (disk, ready) = Self.leaderWithThreeProposals()
        disk.write(ready)
        disk.sync()
        #expect(try disk.load().entries.count == 4)
        let damaged = disk.corruptEntry(at: 2)
        #expect(damaged == 3)
        #expect(throws: StorageCorruption(index: 3)) { try disk.load() }
        // The entry is still there for the quorum check: its server never starts again.
        #expect(disk.holds(index: 3, term: 1) && !disk.holds(index: 5, term: 1) && !disk.holds(index: 3, term: 2))
    }

    @Test func anEmptyEntryCanBeDamagedToo() {
        var (disk, _) = Self.leaderWithThreeProposals()
        disk.corruptEntry(at: 0)  // the no-op: no data to flip, a byte appears
        #expect(throws: StorageCorruption(index: 1)) { try disk.load() }
    }
}
