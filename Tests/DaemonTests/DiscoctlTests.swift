import Foundation
import Testing

/// discoctl against a real single-server cluster: stdout, stderr and exit status.
@Suite("discoctl", .serialized)
struct DiscoctlTests {
    struct Run {
        var status: Int32
        var stdout: String
        var stderr: String
    }

    func discoctl(_ arguments: [String], http: Int) throws -> Run {
        let binary = try builtProduct("discoctl")
        let process = Process()
        process.executableURL = binary
        process.arguments = arguments
        process.environment = ["DISCO_HTTP_ADDR": "127.0.0.1:\(http)", "PATH": "/usr/bin:/bin"]
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let stdout = out.fileHandleForReading.readDataToEndOfFile()
        let stderr = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return Run(status: process.terminationStatus, stdout: String(decoding: stdout, as: UTF8.self),
                   stderr: String(decoding: stderr, as: UTF8.self))
    }

    @Test func kvCommandsAgainstARealServer() throws {
        let cluster = try ClusterProcessTests.ClusterFixture(size: 1)
        let node = cluster.nodes[0]
        _ = try #require(cluster.leader())
        let port = node.httpPort

        var run = try discoctl(["kv", "put", "app/color", "blue"], http: port)
        #expect(run.status == 0 && run.stdout == "ok\n", "\(run)")
        run = try discoctl(["kv", "get", "app/color"], http: port)
        #expect(run.status == 0 && run.stdout == "blue\n", "\(run)")
        run = try discoctl(["kv", "get", "app/color", "--json", "--consistent"], http: port)
        let object = try JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: Any]
        #expect(object?["Value"] as? String == "blue")
        #expect(object?["Key"] as? String == "app/color")
        run = try discoctl(["kv", "put", "app/color", "red", "--cas", "1"], http: port)
        #expect(run.status == 1 && run.stdout.contains("CAS index did not match"), "\(run)")
        run = try discoctl(["kv", "put", "app/size", "L"], http: port)
        run = try discoctl(["kv", "list", "app/"], http: port)
        #expect(run.stdout.contains("app/color") && run.stdout.contains("app/size") && run.stdout.hasPrefix("KEY"), "\(run)")
        run = try discoctl(["kv", "delete", "app/", "--recurse"], http: port)
        #expect(run.status == 0)
        run = try discoctl(["kv", "get", "app/color"], http: port)
        #expect(run.status == 1 && run.stdout.isEmpty && run.stderr == "discoctl: no key app/color\n", "\(run)")
        run = try discoctl(["leader"], http: port)
        #expect(run.status == 0 && run.stdout == "127.0.0.1:\(node.raftPort)\n", "\(run)")
        run = try discoctl(["members"], http: port)
        #expect(run.status == 0, "\(run)")
        let lines = run.stdout.split(separator: "\n")
        #expect(lines.first?.hasPrefix("ID") == true && lines.count == 2, "\(run)")
        #expect(lines.last?.contains("127.0.0.1:\(node.raftPort)") == true && lines.last?.contains("leader") == true, "\(run)")
        run = try discoctl(["members", "--json"], http: port)
        let members = try JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [[String: Any]]
        #expect(members?.first?["Voter"] as? Bool == true)
        #expect(members?.first?["Lag"] as? Int == 0)
        run = try discoctl(["peers", "--json"], http: port)
        #expect(run.stdout.contains("127.0.0.1:\(node.raftPort)"))
    }

    @Test func errorsAreOneLineAndHelpIsComplete() throws {
        // Nothing listens on port 1.
        let run = try discoctl(["kv", "get", "x"], http: 1)
        #expect(run.status == 1)
        #expect(run.stderr.hasPrefix("discoctl: cannot reach discod at 127.0.0.1:1"), "\(run)")
        #expect(run.stderr.filter { $0 == "\n" }.count == 1)
        let help = try discoctl(["kv", "--help"], http: 1)
        for command in ["get", "put", "delete", "list"] { #expect(help.stdout.contains(command), "kv --help: \(help.stdout)") }
        let top = try discoctl(["--help"], http: 1)
        #expect(top.stdout.contains("kv") && top.stdout.contains("leader") && top.stdout.contains("peers")
                && top.stdout.contains("members"))
    }
}
