import Auth
import Cluster
import Registry
import Testing

/// The first byte of a log entry says which state machine applies it (ClusterRuntime): the
/// ranges must never overlap (an ACL tag once equalled the driver's restore tag).
@Suite struct LogEntryTagTests {
    @Test func everyStateMachineHasItsOwnFirstBytes() {
        let kv: [UInt8] = [KVCommand.put(key: "k", value: [], flags: 0), .compareAndSet(key: "k", value: [], flags: 0, modifyIndex: 1),
                           .delete(key: "k"), .deleteTree(prefix: "k"), .deleteIfModifyIndex(key: "k", modifyIndex: 1)]
            .map { $0.encoded[0] }
        #expect(kv.allSatisfy { (0x01...0x1F).contains($0) })
        #expect(!(0x01...0x1F).contains(ACLCommand.entryTag))
        #expect(!ClusterCommandTag.driverRange.contains(ACLCommand.entryTag))
        #expect(ACLCommand.entryTag < CatalogCommand.entryTag)
        #expect(ClusterCommandTag.driverRange.upperBound < CatalogCommand.entryTag)
        #expect(ACLCommand.deleteToken(accessorID: "a").encoded[0] == ACLCommand.entryTag)
    }
}
