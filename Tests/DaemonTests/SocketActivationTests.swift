import DNSWire
import Foundation
import Testing
import Daemon

/// Socket activation (issue 17): discod serves the sockets systemd passes, here through
/// systemd-socket-activate, the tool systemd ships for this.
@Suite("socket activation", .serialized)
struct SocketActivationTests {
    @Test func discodServesUDPTCPAndHTTPOnPassedSockets() throws {
        let directory = try TemporaryDirectory()
        let zones = directory.url.appendingPathComponent("zones")
        try FileManager.default.createDirectory(at: zones, withIntermediateDirectories: true)
        try testZone.write(to: zones.appendingPathComponent("example.test.zone"), atomically: true, encoding: .utf8)
        let ports = freePorts(3)
        let (dns, httpPort, raft) = (ports[0], ports[1], ports[2])
        let activate = "/usr/bin/systemd-socket-activate"
        let process = Process()
        process.executableURL = URL(fileURLWithPath: activate)
        // The outer tool passes a datagram socket; the inner one passes it on with two stream
        // sockets (DNS over TCP, and the HTTP API on http.listen's port), then execs discod.
        process.arguments = ["-d", "-l", "127.0.0.1:\(dns)", activate, "-l", "127.0.0.1:\(dns)", "-l", "127.0.0.1:\(httpPort)",
                             try discodBinary().path, "--zones", zones.path, "--node-id", "1", "--raft", "127.0.0.1:\(raft)",
                             "--http", "127.0.0.1:\(httpPort)", "--server", "1=127.0.0.1:\(raft),127.0.0.1:\(httpPort)",
                             "--data-dir", directory.url.appendingPathComponent("data").path, "--workers", "1"]
        process.environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("DISCO_") && !$0.key.hasPrefix("LISTEN_") }
        process.standardError = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        defer {
            process.terminate()
            process.waitUntilExit()
        }
        let name = try DomainName("www.example.test.")
        // The first query starts discod (as systemd does) and is answered once it serves.
        var answer: Message?
        #expect(waitUntil(seconds: 20) {
            answer = try? DNSClient.udp(Message.query(name, .a, id: 7), port: UInt16(dns))
            return answer != nil
        })
        #expect(answer?.answers.map { "\($0.rdata)" } == ["192.0.2.10"])
        let overTCP = try DNSClient.tcp([Message.query(name, .a, id: 8)], port: UInt16(dns))
        #expect(overTCP.first?.answers.map { "\($0.rdata)" } == ["192.0.2.10"])
        #expect(waitUntil { http("GET", port: httpPort, "/v1/status/leader")?.body == "\"127.0.0.1:\(raft)\"" })
        #expect(http("PUT", port: httpPort, "/v1/kv/activated", body: "yes")?.status == 200)
    }

    @Test func onlyThisProcessesDescriptorsAreTaken() throws {
        let none = try SocketActivation.inherited(environment: ["LISTEN_PID": "1", "LISTEN_FDS": "2"], httpPort: 8500, pid: 999)
        #expect(none.sockets.isEmpty, "LISTEN_PID names another process")
        #expect(throws: StartError.self) {
            _ = try SocketActivation.inherited(environment: ["LISTEN_PID": "999", "LISTEN_FDS": "many"], httpPort: 8500, pid: 999)
        }
        #expect(try SocketActivation.inherited(environment: [:], httpPort: 8500).sockets.isEmpty)
    }
}
