import Foundation
import Raft
import RaftTesting
import Testing

/// Data-driven scenarios in the style of etcd-io/raft's testdata: each file under
/// Tests/Fixtures/raft is a list of commands, each followed by `----` and its expected output,
/// ending at a blank line. `# ...` lines are comments. `DISCO_REWRITE=1 swift test --filter
/// ScriptTests` rewrites the expected outputs from the actual ones, so a change of behaviour
/// shows up as a diff to review.
///
/// Commands (ids are node numbers):
///   add-nodes N [voters=1,2,3|none] [learners=4] [prevote=false] [checkquorum=false]
///             [election=10] [heartbeat=1] [max-msg-bytes=N] [max-inflight=N] [seed=N]
///             [mutation=commit-previous-term|vote-without-log-check]
///   campaign ID · propose ID TEXT · propose-membership ID add-voter|add-learner|remove N
///   transfer-leadership ID TARGET · read-index ID CONTEXT
///   tick ID [N] · tick-heartbeat ID · tick-election ID
///   process-ready ID... · deliver-msgs [drop] [ID...] · stabilize [ID...]
///   partition 1 2 / 3 · cut FROM TO (one direction) · heal · crash ID · restart ID
///   compact ID INDEX · status ID... · raft-state · raft-log ID · applied ID
@Suite struct ScriptTests {
    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Fixtures/raft")

    static var scripts: [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        return names.filter { $0.hasSuffix(".txt") }.sorted()
    }

    @Test func thereAreScripts() {
        for required in ["election.txt", "figure8.txt", "prevote.txt", "checkquorum.txt", "replication.txt",
                         "conflict.txt", "snapshot.txt", "membership.txt", "transfer.txt", "readindex.txt"]
        {
            #expect(ScriptTests.scripts.contains(required), "missing \(required)")
        }
    }

    @Test(arguments: ScriptTests.scripts)
    func script(_ name: String) throws {
        let url = ScriptTests.directory.appendingPathComponent(name)
        let text = try String(contentsOf: url, encoding: .utf8)
        var interpreter = ScriptInterpreter()
        var rewritten: [String] = []
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        if lines.last == "" { lines.removeLast() }
        var k = 0
        while k < lines.count {
            let line = lines[k]
            if line.isEmpty || line.hasPrefix("#") {
                rewritten.append(line)
                k += 1
                continue
            }
            let command = line
            let lineNumber = k + 1
            k += 1
            guard k < lines.count, lines[k] == "----" else {
                Issue.record("\(name):\(lineNumber): command without ---- line")
                return
            }
            k += 1
            var expected: [String] = []
            while k < lines.count, !lines[k].isEmpty {
                expected.append(lines[k])
                k += 1
            }
            let actual = interpreter.run(command)
            rewritten += [command, "----"] + actual
            if ProcessInfo.processInfo.environment["DISCO_REWRITE"] == nil {
                #expect(actual == expected, "\(name):\(lineNumber): \(command)")
            }
        }
        if ProcessInfo.processInfo.environment["DISCO_REWRITE"] != nil {
            try (rewritten.joined(separator: "\n") + "\n").write(to: url, atomically: true, encoding: .utf8)
        }
    }
}

/// Runs one script command against a ScriptCluster and returns its output lines (never empty:
/// a silent command prints "ok", so the blank line that ends a block stays unambiguous).
struct ScriptInterpreter {
    var cluster = ScriptCluster()

    mutating func run(_ command: String) -> [String] {
        let words = command.split(separator: " ").map(String.init)
        let output = execute(words[0], Array(words.dropFirst()))
        return output.isEmpty ? ["ok"] : output
    }

    private func ids(_ args: [String]) -> [NodeID] { args.compactMap { UInt64($0) }.map { NodeID(rawValue: $0) } }

    private mutating func execute(_ name: String, _ args: [String]) -> [String] {
        switch name {
        case "add-nodes": return addNodes(args)
        case "campaign":
            for id in ids(args) { cluster.campaign(id) }
            return []
        case "propose":
            let id = ids([args[0]])[0]
            let data = Array(args.dropFirst().joined(separator: " ").utf8)
            return report(cluster.withNode(id) { (node: inout RaftNode) throws(ProposalError) in
                let accepted = try node.propose(data)
                return "proposed at \(accepted.term)/\(accepted.index)"
            })
        case "propose-membership":
            let id = ids([args[0]])[0]
            let target = ids([args[2]])[0]
            let change: MembershipChange
            switch args[1] {
            case "add-voter": change = .addVoter(target)
            case "add-learner": change = .addLearner(target)
            case "remove": change = .remove(target)
            default: return ["unknown change \(args[1])"]
            }
            return report(cluster.withNode(id) { (node: inout RaftNode) throws(ProposalError) in
                let accepted = try node.proposeMembershipChange(change)
                return "proposed at \(accepted.term)/\(accepted.index)"
            })
        case "transfer-leadership":
            let (id, target) = (ids(args)[0], ids(args)[1])
            return report(cluster.withNode(id) { (node: inout RaftNode) throws(ProposalError) in
                try node.transferLeadership(to: target)
                return ""
            })
        case "read-index":
            let id = ids([args[0]])[0]
            let context = Array(args[1].utf8)
            return report(cluster.withNode(id) { (node: inout RaftNode) throws(ProposalError) in
                try node.readIndex(context: context)
                return ""
            })
        case "tick":
            cluster.tick(ids([args[0]])[0], times: args.count > 1 ? Int(args[1])! : 1)
            return []
        case "tick-heartbeat":
            let id = ids(args)[0]
            cluster.tick(id, times: cluster[id].config.heartbeatIntervalTicks)
            return []
        case "tick-election":
            let id = ids(args)[0]
            cluster.tick(id, times: cluster[id].config.electionTimeoutTicks)
            return []
        case "process-ready":
            return ids(args).flatMap { cluster.processReady($0) }
        case "deliver-msgs":
            return cluster.deliver(to: Set(ids(args)), drop: args.contains("drop"))
        case "stabilize":
            return cluster.stabilize(ids(args))
        case "partition":
            var groups: [[NodeID]] = [[]]
            for arg in args {
                if arg == "/" { groups.append([]) } else { groups[groups.count - 1].append(ids([arg])[0]) }
            }
            cluster.partition(groups)
            return []
        case "cut":
            cluster.cutLink(from: ids(args)[0], to: ids(args)[1])
            return []
        case "heal":
            cluster.heal()
            return []
        case "crash":
            for id in ids(args) { cluster.crash(id) }
            return []
        case "restart":
            for id in ids(args) { cluster.restart(id) }
            return ids(args).map { cluster[$0].status.description }
        case "compact":
            let id = ids([args[0]])[0]
            cluster.compact(id, through: LogIndex(UInt64(args[1])!))
            return ["\(id) first index \(cluster[id].firstIndex)"]
        case "status":
            return ids(args).flatMap { cluster[$0].status.description.split(separator: "\n").map(String.init) }
        case "raft-state":
            return cluster.ids.map { id in
                let node = cluster[id]
                let down = cluster.node(id)!.crashed ? " (crashed)" : ""
                return "\(id): \(node.role.rawValue) term=\(node.term) leader=\(node.leader.map(\.description) ?? "-")"
                    + " commit=\(node.commitIndex) last=\(node.lastIndex)\(down)"
            }
        case "raft-log":
            let node = cluster[ids(args)[0]]
            var lines: [String] = []
            if node.snapshotIndex > .zero { lines.append("snapshot \(node.term(at: node.snapshotIndex)!)/\(node.snapshotIndex)") }
            lines += node.entries.map(\.description)
            return lines.isEmpty ? ["(empty)"] : lines
        case "applied":
            let applied = cluster.node(ids(args)[0])!.applied
            return applied.isEmpty ? ["(none)"] : applied.map(\.description)
        default:
            return ["unknown command \(name)"]
        }
    }

    private func report(_ result: Result<String, ProposalError>) -> [String] {
        switch result {
        case .success(let text): return text.isEmpty ? [] : [text]
        case .failure(let error): return ["error: \(error)"]
        }
    }

    private mutating func addNodes(_ args: [String]) -> [String] {
        let count = UInt64(args[0])!
        let first = (cluster.ids.last?.rawValue ?? 0) + 1
        let added = (first..<first + count).map { NodeID(rawValue: $0) }
        var options: [String: String] = [:]
        for arg in args.dropFirst() {
            let parts = arg.split(separator: "=", maxSplits: 1).map(String.init)
            options[parts[0]] = parts.count > 1 ? parts[1] : "true"
        }
        func list(_ key: String) -> [NodeID]? {
            guard let value = options[key] else { return nil }
            if value == "none" { return [] }
            return value.split(separator: ",").map { NodeID(rawValue: UInt64($0)!) }
        }
        let learners = list("learners") ?? []
        let voters = list("voters") ?? added.filter { !learners.contains($0) }
        for id in added {
            var config = RaftConfig(id: id, initialMembership: Membership(voters: voters, learners: learners))
            config.randomSeed = UInt64(options["seed"] ?? "1")!
            if let v = options["prevote"] { config.preVote = v == "true" }
            if let v = options["checkquorum"] { config.checkQuorum = v == "true" }
            if let v = options["election"] { config.electionTimeoutTicks = Int(v)! }
            if let v = options["heartbeat"] { config.heartbeatIntervalTicks = Int(v)! }
            if let v = options["max-msg-bytes"] { config.appendMessageBytesMax = Int(v)! }
            if let v = options["max-inflight"] { config.appendsInflightMax = Int(v)! }
            switch options["mutation"] {
            case "commit-previous-term": config.testingMutation = .commitPreviousTermEntries
            case "vote-without-log-check": config.testingMutation = .grantVoteWithoutLogCheck
            default: break
            }
            cluster.add(config: config)
        }
        return added.map { cluster[$0].status.description }
    }
}
