import ArgumentParser
import Foundation

extension DiscoClient {
    /// DELETE /v1/operator/raft/peer?id=N (Consul's remove-peer).
    public func removeMember(_ id: UInt64) throws {
        try expectSuccess(try request("DELETE", "/v1/operator/raft/peer?id=\(id)"))
    }

    /// POST /v1/operator/raft/transfer-leader[?id=N]: the new leader's id and Raft address.
    public func transferLeadership(to id: UInt64?) throws -> (id: String, address: String) {
        let response = try request("POST", "/v1/operator/raft/transfer-leader\(id.map { "?id=\($0)" } ?? "")")
        try expectSuccess(response)
        let object = try JSONSerialization.jsonObject(with: response.body) as? [String: Any]
        return (object?["Leader"] as? String ?? "", object?["Address"] as? String ?? "")
    }
}

struct Members: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List or remove the cluster's servers.",
        subcommands: [List.self, Remove.self], defaultSubcommand: List.self)

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List the servers: id, address, role, voter, match index and lag (known on the leader), last contact.")
        @OptionGroup var options: GlobalOptions

        func run() throws {
            try reporting {
                let members = try options.client.members()
                if options.json {
                    options.printJSON(members)
                    return
                }
                func cell(_ value: Any?) -> String { value.map { "\($0)" } ?? "-" }
                let rows = members.map { m -> [String] in
                    [cell(m["ID"]), cell(m["Address"]), (m["Leader"] as? Bool) == true ? "leader" : "follower",
                     (m["Voter"] as? Bool) == true ? "yes" : "no", cell(m["MatchIndex"]), cell(m["Lag"]), cell(m["LastContact"])]
                }
                printTable(["ID", "ADDRESS", "ROLE", "VOTER", "MATCH", "LAG", "CONTACT"], rows)
            }
        }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Remove server ID from the cluster (it stops counting toward quorum; not the leader: transfer first).")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "The server's Raft id.") var id: UInt64

        func run() throws {
            try reporting {
                try options.client.removeMember(id)
                if options.json { options.printJSON(["Removed": "\(id)"]) } else { print("removed \(id)") }
            }
        }
    }
}

struct Leader: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print the leader's Raft address, or hand leadership over.",
        subcommands: [Show.self, Transfer.self], defaultSubcommand: Show.self)

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print the leader's Raft address.")
        @OptionGroup var options: GlobalOptions

        func run() throws {
            try reporting {
                let leader = try options.client.leader()
                if options.json { options.printJSON(leader) } else { print(leader.isEmpty ? "no leader" : leader) }
                if leader.isEmpty { throw ExitCode(1) }
            }
        }
    }

    struct Transfer: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Hand leadership to server ID (default: the most caught-up voter); returns once it leads.")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "The server to lead next.") var id: UInt64?

        func run() throws {
            try reporting {
                let leader = try options.client.transferLeadership(to: id)
                if options.json {
                    options.printJSON(["Leader": leader.id, "Address": leader.address])
                } else {
                    print("leader is now \(leader.id) (\(leader.address))")
                }
            }
        }
    }
}
