import DNSWire
import Foundation
import Testing

/// `discoctl top` in a real terminal (tmux) against a running server: the screen shows the
/// figures and refreshes (issue 17).
@Suite("discoctl top", .serialized)
struct TopProcessTests {
    /// Runs tmux on a server of this test's own (`-L`), so that neither a user's tmux nor another
    /// run shares it; the first command starts that server, which the child leaves behind.
    func tmux(_ socket: String, _ arguments: [String]) throws -> String {
        let run = try runLeavingNoDescriptors("/usr/bin/tmux", ["-L", socket, "-f", "/dev/null"] + arguments)
        try #require(run.status == 0, "tmux \(arguments.first ?? "") exited with \(run.status)")
        return run.stdout
    }

    @Test func theScreenShowsTheFiguresAndRefreshes() throws {
        let cluster = try ClusterProcessTests.ClusterFixture(size: 1)
        let node = cluster.nodes[0]
        _ = try #require(cluster.leader())
        let dns = try #require(node.process?.port)
        let session = "disco-top-\(getpid())"
        let binary = try builtProduct("discoctl").path
        _ = try tmux(session, ["new-session", "-d", "-s", session, "-x", "140", "-y", "30",
                               "\(binary) top --interval 0.5 --http-addr 127.0.0.1:\(node.httpPort)"])
        defer { _ = try? tmux(session, ["kill-server"]) }
        // Traffic while it watches: DNS queries and an API write.
        let name = try DomainName("www.example.test.")
        var screens: [String] = []
        let deadline = Date().addingTimeInterval(15)
        while Date() < deadline {
            for id in 0..<20 { _ = try? DNSClient.udp(Message.query(name, .a, id: UInt16(id)), port: dns) }
            _ = http("PUT", port: node.httpPort, "/v1/kv/top", body: "x")
            usleep(300_000)
            let screen = try tmux(session, ["capture-pane", "-p", "-t", session])
            if screen.contains("discoctl top") { screens.append(screen) }
            if screens.count >= 6, screens.contains(where: { Self.qps($0) ?? 0 > 0 }) { break }
        }
        let last = try #require(screens.last, "top never drew a screen")
        #expect(last.contains("RAFT  leader, term"), "\(last)")
        #expect(last.contains("API ") && last.contains("req/s"), "\(last)")
        #expect(last.contains("SERVER  ADDRESS"), "\(last)")
        #expect(last.contains("127.0.0.1:\(node.raftPort)"), "\(last)")
        #expect(screens.contains { Self.qps($0) ?? 0 > 0 }, "DNS q/s never moved: \(screens)")
        // It refreshes: the header's time changes between screens.
        #expect(Set(screens.compactMap { $0.split(separator: "\n").first }).count >= 2, "\(screens)")
    }

    /// The DNS q/s figure on a screen.
    static func qps(_ screen: String) -> Double? {
        guard let line = screen.split(separator: "\n").first(where: { $0.hasPrefix("DNS ") }) else { return nil }
        return line.split(separator: " ").dropFirst().first.flatMap { Double($0) }
    }
}

/// The sampled query log (issue 17): one query in N, with its client, question and answer.
@Suite("query log") struct QueryLogProcessTests {
    @Test func oneQueryInNIsLoggedWithItsQuestionAndAnswer() throws {
        let directory = try TemporaryDirectory()
        try directory.write("example.test.zone", testZone)
        let daemon = try DiscodProcess.serving(zones: directory.url, extra: ["--workers", "1"],
                                               environment: ["DISCO_DNS_QUERY_LOG_EVERY": "3"])
        defer { daemon.stop() }
        let name = try DomainName("www.example.test.")
        for id in 0..<6 { _ = try DNSClient.udp(Message.query(name, .a, id: UInt16(id)), port: daemon.port) }
        #expect(waitUntil(seconds: 5) { daemon.stderr.components(separatedBy: "[DNSServer] query").count - 1 == 2 })
        #expect(daemon.stderr.contains("dns.client=127.0.0.1 dns.proto=udp dns.qname=www.example.test. dns.qtype=A dns.rcode=NOERROR"))
        usleep(300_000)
        #expect(daemon.stderr.components(separatedBy: "[DNSServer] query").count - 1 == 2, "one in three, not more")
    }
}
