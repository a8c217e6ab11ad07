import Raft
import Testing

@Test func raftModuleLinks() {
    #expect(String(describing: RaftCore.self) == "RaftCore")
}
