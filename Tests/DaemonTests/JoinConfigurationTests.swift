import Daemon
import DNSServer
import Foundation
import Testing

@Suite("join configuration")
struct JoinConfigurationTests {
    func resolve(_ arguments: [String], environment: [String: String] = [:]) throws -> Configuration {
        try DiscodCommand.parse(arguments).resolve(environment: environment)
    }

    @Test func aJoiningServerNeedsAnIdReachableAddressesAndNoFoundingList() throws {
        let config = try resolve(["--node-id", "4", "--raft", "127.0.0.1:8304", "--http", "127.0.0.1:8504", "--join", "127.0.0.1:8501"])
        #expect(config.raftJoin == ListenAddress("127.0.0.1:8501"))
        #expect(config.clusterEnabled)
        #expect(try resolve(["--node-id", "4", "--raft", "127.0.0.1:8304", "--http", "127.0.0.1:8504"],
                            environment: ["DISCO_RAFT_JOIN": "10.0.0.1:8500"]).raftJoin == ListenAddress("10.0.0.1:8500"))

        let cases: [([String], String)] = [
            (["--raft", "127.0.0.1:8304", "--join", "127.0.0.1:8501"], "flag --join: raft.join: needs this server's id (raft.id, --node-id)"),
            (["--node-id", "4", "--raft", "127.0.0.1:8304", "--join", "127.0.0.1:8501", "--server", "4=127.0.0.1:8304,127.0.0.1:8504"],
             "flag --join: raft.join: a joining server lists no founding servers (raft.servers); it learns them from the cluster"),
            (["--node-id", "4", "--raft", "0.0.0.0:8304", "--http", "127.0.0.1:8504", "--join", "127.0.0.1:8501"],
             "flag --join: raft.listen: 0.0.0.0:8304 cannot be told to other servers: give the address they reach this server at"),
            (["--node-id", "4", "--join", "nowhere"],
             "flag --join: raft.join: expected a member's HTTP address \"IPv4:PORT\" or \"[IPv6]:PORT\""),
        ]
        for (arguments, message) in cases {
            #expect(throws: (any Error).self, "\(arguments)") { _ = try resolve(arguments) }
            do {
                _ = try resolve(arguments)
            } catch let error as ConfigError {
                #expect(error.description == message)
            }
        }
    }
}
