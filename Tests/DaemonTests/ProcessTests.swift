import DNSWire
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Real discod processes on loopback: UDP, TCP, reload, limits and start-up failures.
@Suite("discod process", .serialized)
struct ProcessTests {
    @Test func answersOverUDPAndTCP() throws {
        let zones = try TemporaryDirectory()
        try zones.write("example.test.zone", testZone)
        let daemon = try DiscodProcess.serving(zones: zones.url)
        defer { daemon.stop() }

        let query = Message.query(try DomainName("www.example.test."), .a, id: 7)
        let udp = try DNSClient.udp(query, port: daemon.port)
        #expect(udp.id == 7)
        #expect(udp.flags.aa)
        #expect(udp.answers.map(\.description) == ["www.example.test.\t300\tIN\tA\t192.0.2.10"])

        let tcp = try DNSClient.tcp([query], port: daemon.port)
        #expect(tcp.first?.answers == udp.answers)

        let missing = try DNSClient.udp(Message.query(try DomainName("nope.example.test."), .a), port: daemon.port)
        #expect(missing.rcode == .nxDomain)
        #expect(missing.authority.first?.ttl == 60)
        let outside = try DNSClient.udp(Message.query(try DomainName("example.org."), .a), port: daemon.port)
        #expect(outside.rcode == .refused)
    }

    @Test func tcpPipelinesQueriesInOrder() throws {
        let zones = try TemporaryDirectory()
        try zones.write("example.test.zone", testZone)
        let daemon = try DiscodProcess.serving(zones: zones.url)
        defer { daemon.stop() }
        let names = ["www", "ns1", "nope", "www", "ns1"]
        let queries = try names.enumerated().map { index, name in
            Message.query(try DomainName("\(name).example.test."), .a, id: UInt16(100 + index))
        }
        let answers = try DNSClient.tcp(queries, port: daemon.port)
        #expect(answers.map(\.id) == [100, 101, 102, 103, 104])
        #expect(answers.map(\.rcode) == [.noError, .noError, .nxDomain, .noError, .noError])
        #expect(answers[1].answers.first?.rdata == .a(IPv4Address(192, 0, 2, 53)))
    }

    @Test func largeAnswersTruncateOverUDPAndArriveOverTCP() throws {
        let zones = try TemporaryDirectory()
        // 1,500 addresses: a 24 KB answer, far past UDP, well within TCP's 64 KB.
        let addresses = (0..<1500).map { "many A 198.18.\($0 / 256).\($0 % 256)" }.joined(separator: "\n")
        try zones.write("example.test.zone", testZone + "\n" + addresses + "\n")
        let daemon = try DiscodProcess.serving(zones: zones.url)
        defer { daemon.stop() }
        let query = Message.query(try DomainName("many.example.test."), .a)
        let udp = try DNSClient.udp(query, port: daemon.port)
        #expect(udp.flags.tc)
        #expect(udp.answers.isEmpty)
        let tcp = try DNSClient.tcp([query], port: daemon.port)
        #expect(tcp.first?.answers.count == 1500)
        #expect(tcp.first?.flags.tc == false)
    }

    @Test func sighupReloadsAndABrokenZoneKeepsItsPreviousVersion() throws {
        let zones = try TemporaryDirectory()
        try zones.write("example.test.zone", testZone)
        let daemon = try DiscodProcess.serving(zones: zones.url)
        defer { daemon.stop() }
        let www = Message.query(try DomainName("www.example.test."), .a)
        func address() throws -> String? { try DNSClient.udp(www, port: daemon.port).answers.first?.rdata.description }
        #expect(try address() == "192.0.2.10")

        // A changed zone and a new zone are picked up.
        try zones.write("example.test.zone", testZone.replacingOccurrences(of: "192.0.2.10", with: "192.0.2.20"))
        try zones.write("second.test.zone", testZone)
        daemon.signal(SIGHUP)
        #expect(daemon.waitForLog("zones reloaded"))
        #expect(try address() == "192.0.2.20")
        let second = try DNSClient.udp(Message.query(try DomainName("www.second.test."), .a), port: daemon.port)
        #expect(second.rcode == .noError && second.answers.count == 1)

        // A broken edit is refused whole; the previous version keeps answering.
        try zones.write("example.test.zone", testZone.replacingOccurrences(of: "192.0.2.20", with: "192.0.2.30")
            + "\nbad A 999.1.1.1\n")
        daemon.signal(SIGHUP)
        #expect(daemon.waitForLog("expected an IPv4 address, found '999.1.1.1'"))
        #expect(daemon.stderr.contains("example.test.zone:6:7"))
        #expect(try address() == "192.0.2.20")
    }

    @Test func sigtermStopsCleanly() throws {
        let zones = try TemporaryDirectory()
        try zones.write("example.test.zone", testZone)
        let daemon = try DiscodProcess.serving(zones: zones.url)
        daemon.signal(SIGTERM)
        #expect(daemon.waitForExit() == 0)
    }

    @Test func idleTCPConnectionsAreClosed() throws {
        let zones = try TemporaryDirectory()
        try zones.write("example.test.zone", testZone)
        try zones.write("discod.toml", "[dns]\ntcp_idle_timeout_seconds = 1\n")
        let daemon = try DiscodProcess.serving(zones: zones.url, extra: ["--config", zones.url.appendingPathComponent("discod.toml").path])
        defer { daemon.stop() }
        let fd = try DNSClient.connectTCP(port: daemon.port)
        defer { close(fd) }
        #expect(DNSClient.isClosedByPeer(fd))
    }

    @Test func tcpConnectionsBeyondTheCapAreClosed() throws {
        let zones = try TemporaryDirectory()
        try zones.write("example.test.zone", testZone)
        let daemon = try DiscodProcess.serving(zones: zones.url, environment: ["DISCO_DNS_TCP_CONNECTIONS_MAX": "2"])
        defer { daemon.stop() }
        let first = try DNSClient.connectTCP(port: daemon.port)
        let second = try DNSClient.connectTCP(port: daemon.port)
        defer { close(first); close(second) }
        // Make sure both are accepted before the third arrives.
        let query = Message.query(try DomainName("www.example.test."), .a)
        for fd in [first, second] {
            let bytes = try DNSClient.frame(query)
            _ = send(fd, bytes, bytes.count, 0)
            #expect(try DNSClient.readMessage(fd) != nil)
        }
        let third = try DNSClient.connectTCP(port: daemon.port)
        defer { close(third) }
        #expect(DNSClient.isClosedByPeer(third))
    }

    /// Issue 15.5: a single voter leads as soon as it starts: `discod --dev` takes the first
    /// registration sent the moment its HTTP port answers (it waited out an election timeout
    /// before and answered 503 No cluster leader). The HTTP port is polled as a script would.
    @Test func devTakesAWriteAsSoonAsItsHTTPPortAnswers() throws {
        let directory = try TemporaryDirectory()
        try directory.write("example.test.zone", testZone)
        let ports = freePorts(2)
        let httpPort = ports[0]
        let daemon = try DiscodProcess(arguments: ["--dev", "--dns", "127.0.0.1:0", "--workers", "1", "--zones", directory.url.path,
                                                   "--http", "127.0.0.1:\(httpPort)", "--raft", "127.0.0.1:\(ports[1])",
                                                   "--data-dir", directory.url.appendingPathComponent("data").path])
        defer { daemon.stop() }
        #expect(waitUntil(seconds: 20) { http("GET", port: httpPort, "/v1/status/peers") != nil })
        let reply = http("PUT", port: httpPort, "/v1/agent/service/register",
                         body: #"{"Name": "web", "ID": "web-1", "Address": "10.0.0.1", "Port": 80}"#)
        #expect(reply?.status == 200, "\(String(describing: reply?.status)) \(reply?.body ?? "")")
    }

    /// Without `--zones` and without the default /etc/disco/zones, discod starts and serves no
    /// zone files (a registry-only server); a zone directory that is named but missing is an
    /// error (74), as before.
    @Test func aMissingDefaultZoneDirectoryIsNotAnError() throws {
        try #require(!FileManager.default.fileExists(atPath: "/etc/disco/zones"), "this machine has /etc/disco/zones")
        let daemon = try DiscodProcess(arguments: ["--dns", "127.0.0.1:0", "--workers", "1"])
        defer { daemon.stop() }
        try daemon.waitForStart()
        #expect(daemon.stderr.contains("serving the registry only"), "\(daemon.stderr)")
        let answer = try DNSClient.udp(Message.query(try DomainName("www.example.test."), .a), port: daemon.port)
        #expect(answer.rcode == .refused)

        let named = try DiscodProcess(arguments: ["--zones", "/nonexistent/disco-zones", "--dns", "127.0.0.1:0"])
        #expect(named.waitForExit() == 74)
    }

    /// Issue 17.3: the sd_notify protocol as systemd sees it, on a real notification socket:
    /// READY=1 with a STATUS naming the zones and the Raft role, WATCHDOG=1 pings at half
    /// WATCHDOG_USEC while the workers and the Raft loop run, RELOADING=1 (with MONOTONIC_USEC)
    /// then READY=1 around a SIGHUP, STOPPING=1 on SIGTERM.
    @Test func systemdHearsReadyStatusWatchdogReloadingAndStopping() throws {
        let directory = try TemporaryDirectory()
        try directory.write("example.test.zone", testZone)
        let socketPath = directory.url.appendingPathComponent("notify").path
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, byte) in socketPath.utf8.enumerated() { raw[i] = byte }
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        try #require(bound == 0)
        var timeout = timeval(tv_sec: 0, tv_usec: 100_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var received: [String] = []
        func receive(until condition: ([String]) -> Bool, seconds: Double = 15) -> Bool {
            let deadline = Date().addingTimeInterval(seconds)
            var buffer = [UInt8](repeating: 0, count: 4096)
            while Date() < deadline && !condition(received) {
                let count = recv(fd, &buffer, buffer.count, 0)
                if count > 0 { received.append(String(decoding: buffer[0..<count], as: UTF8.self)) }
            }
            return condition(received)
        }

        let ports = freePorts(2)
        let daemon = try DiscodProcess(arguments: ["--dev", "--zones", directory.url.path, "--dns", "127.0.0.1:0", "--workers", "2",
                                                   "--http", "127.0.0.1:\(ports[0])", "--raft", "127.0.0.1:\(ports[1])",
                                                   "--data-dir", directory.url.appendingPathComponent("data").path],
                                       environment: ["NOTIFY_SOCKET": socketPath, "WATCHDOG_USEC": "200000"])
        defer { daemon.stop() }
        #expect(receive { $0.contains { $0.hasPrefix("READY=1\nSTATUS=serving 1 zone(s); raft ") } }, "\(received)")
        #expect(receive { $0.filter { $0.hasPrefix("WATCHDOG=1") }.count >= 3 }, "\(received)")
        // The leader's STATUS: once it leads (at once, as the only voter), and registry instances.
        #expect(received.contains { $0.contains("STATUS=serving 1 zone(s); raft leader, term ") && $0.contains("registry instance(s)") },
                "\(received)")

        received = []
        kill(daemon.process.processIdentifier, SIGHUP)
        #expect(receive { $0.contains { $0.hasPrefix("READY=1") } }, "\(received)")
        let reloading = received.firstIndex { $0.hasPrefix("RELOADING=1\nMONOTONIC_USEC=") }
        let ready = received.firstIndex { $0.hasPrefix("READY=1") }
        #expect(reloading != nil && ready != nil && reloading! < ready!, "\(received)")

        received = []
        kill(daemon.process.processIdentifier, SIGTERM)
        #expect(receive { $0.contains("STOPPING=1") }, "\(received)")
        #expect(daemon.waitForExit() == 0)
    }

    /// Issue 17.4: under systemd's journal (JOURNAL_STREAM naming discod's standard error) each
    /// line starts with its syslog priority and no time (journald adds its own); a stderr that
    /// is not the one JOURNAL_STREAM names keeps the timestamps; `--log-format json` writes a
    /// JSON object a line.
    @Test func logsSpeakJournaldAndJSON() throws {
        let zones = try TemporaryDirectory()
        try zones.write("example.test.zone", testZone)
        /// Runs discod until its serving line, with JOURNAL_STREAM set from its stderr pipe
        /// (`matching`) or to another stream; returns what it wrote to stderr.
        func run(_ extra: [String], journal matching: Bool?) throws -> String {
            let process = Process()
            process.executableURL = try discodBinary()
            process.arguments = ["--zones", zones.url.path, "--dns", "127.0.0.1:0", "--workers", "1"] + extra
            let pipe = Pipe()
            var environment = ["PATH": "/usr/bin:/bin"]
            if let matching {
                var info = stat()
                #expect(fstat(pipe.fileHandleForWriting.fileDescriptor, &info) == 0)
                environment["JOURNAL_STREAM"] = "\(info.st_dev):\(UInt64(info.st_ino) + (matching ? 0 : 1))"
            }
            process.environment = environment
            process.standardError = pipe
            process.standardOutput = FileHandle.nullDevice
            try process.run()
            defer {
                process.terminate()
                process.waitUntilExit()
            }
            var text = ""
            let deadline = Date().addingTimeInterval(20)
            while Date() < deadline && !text.contains("discod serving") {
                let data = pipe.fileHandleForReading.availableData
                if data.isEmpty { break }
                text += String(decoding: data, as: UTF8.self)
            }
            return text
        }
        let journal = try run([], journal: true)
        let journalLines = journal.split(separator: "\n")
        #expect(journalLines.contains { $0.hasPrefix("<6>discod: ") && $0.contains("discod serving") }, "\(journal)")
        #expect(journalLines.allSatisfy { $0.hasPrefix("<") && !$0.contains("+0000 info") }, "\(journal)")
        let warning = try run(["--zones", "/nonexistent-disco-zones"], journal: true)
        #expect(warning.contains("<2>discod: [Daemon] cannot start"), "\(warning)")

        let plain = try run([], journal: false)
        #expect(plain.split(separator: "\n").contains { $0.contains(" info discod: ") && $0.contains("discod serving") }, "\(plain)")
        #expect(!plain.contains("<6>"))

        let json = try run(["--log-format", "json"], journal: nil)
        let objects = json.split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
        #expect(objects.count == json.split(separator: "\n").count && !objects.isEmpty, "\(json)")
        #expect(objects.contains { ($0["message"] as? String)?.hasPrefix("discod serving") == true && $0["level"] as? String == "info"
            && $0["source"] as? String == "Daemon" && $0["time"] is String })
        #expect(objects.contains { ($0["metadata"] as? [String: Any])?["dns.zones"] as? String == "1" })
    }

    /// `discod --check-config [FILE]` (issue 17.5): the configuration and every zone file
    /// checked without serving, as nsd-checkconf and nsd-checkzone do.
    @Test func checkConfigReportsEveryErrorWithItsPlace() throws {
        func run(_ arguments: [String]) throws -> DiscoctlRun {
            let process = Process()
            process.executableURL = try discodBinary()
            process.arguments = arguments
            process.environment = ["PATH": "/usr/bin:/bin"]
            let out = Pipe(), err = Pipe()
            process.standardOutput = out
            process.standardError = err
            try process.run()
            let stdout = out.fileHandleForReading.readDataToEndOfFile()
            let stderr = err.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            return DiscoctlRun(status: process.terminationStatus, stdout: String(decoding: stdout, as: UTF8.self),
                               stderr: String(decoding: stderr, as: UTF8.self))
        }
        let directory = try TemporaryDirectory()
        try FileManager.default.createDirectory(at: directory.url.appendingPathComponent("zones"), withIntermediateDirectories: true)
        try directory.write("zones/example.test.zone", testZone)
        let zones = directory.url.appendingPathComponent("zones").path
        try directory.write("good.toml", "[zones]\ndirectory = \"\(zones)\"\n[dns]\nworkers = 2\n")
        let good = try run(["--check-config", directory.url.appendingPathComponent("good.toml").path])
        #expect(good.status == 0, "\(good.stderr)")
        #expect(good.stdout.contains("is valid; 1 zone(s) valid, 4 records"), "\(good.stdout)")

        // A typo gets the key it was probably meant to be.
        try directory.write("typo.toml", "[dns]\nworkers = 2\nwrokers = 3\n")
        let typo = try run(["--check-config", directory.url.appendingPathComponent("typo.toml").path])
        #expect(typo.status == 78)
        #expect(typo.stderr.contains("typo.toml:3: dns.wrokers: unknown key (did you mean `dns.workers`?)"), "\(typo.stderr)")

        // Every zone error, each with its file, line and column; the good zone is counted too.
        try directory.write("zones/broken.test.zone", "$TTL 60\n@ SOA ns h 1 2 3 4 5\n NS ns\nns A 192.0.2.300\nx AAAA nope\n")
        let broken = try run(["--check-config", "--zones", zones])
        #expect(broken.status == 65)
        let path = directory.url.appendingPathComponent("zones/broken.test.zone").path
        #expect(broken.stderr.contains("\(path):4:6:"), "\(broken.stderr)")
        #expect(broken.stderr.contains("\(path):5:8:"), "\(broken.stderr)")
        #expect(broken.stdout.contains("1 zone file(s) with errors; 1 zone(s) valid"), "\(broken.stdout)")

        // A file without --check-config is a usage error, not a silent start.
        let stray = try run([directory.url.appendingPathComponent("good.toml").path])
        #expect(stray.status == 64)
    }

    @Test func configurationErrorsNameFileLineAndKey() throws {
        let directory = try TemporaryDirectory()
        try directory.write("bad.toml", "[dns]\nworkers = 2\nlisten = [\"127.0.0.1:99999\"]\n")
        let daemon = try DiscodProcess(arguments: ["--config", directory.url.appendingPathComponent("bad.toml").path])
        #expect(daemon.waitForExit() == 78)
        #expect(daemon.stderr.contains("bad.toml:3: dns.listen: '127.0.0.1:99999' is not an address"))
    }

    @Test func aPortInUseExitsWithUnavailable() throws {
        let zones = try TemporaryDirectory()
        try zones.write("example.test.zone", testZone)
        // A UDP socket without SO_REUSEPORT holds the port.
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        defer { close(fd) }
        var address = DNSClient.loopback(0)
        _ = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        let port = UInt16(bigEndian: address.sin_port)
        let daemon = try DiscodProcess(arguments: ["--zones", zones.url.path, "--dns", "127.0.0.1:\(port)"])
        #expect(daemon.waitForExit() == 69)
        #expect(daemon.stderr.contains("cannot bind udp 127.0.0.1:\(port)"))
    }

    @Test func digAndKdigAgainstTheExampleZones() throws {
        let daemon = try DiscodProcess.serving(zones: repositoryRoot.appendingPathComponent("Zones"))
        defer { daemon.stop() }
        for tool in ["dig", "kdig"] {
            let output = try run(tool, ["@127.0.0.1", "-p", "\(daemon.port)", "+short", "example.com", "SOA"])
            #expect(output.hasPrefix("ns1.example.com. hostmaster.example.com. "), "\(tool): \(output)")
            let tcp = try run(tool, ["@127.0.0.1", "-p", "\(daemon.port)", "+tcp", "+short", "example.com", "NS"])
            #expect(tcp.contains("ns1.example.com."), "\(tool) over TCP: \(tcp)")
        }
        let full = try run("dig", ["@127.0.0.1", "-p", "\(daemon.port)", "+norec", "nothing-here.example.com", "A"])
        #expect(full.contains("status: NXDOMAIN"))
        #expect(full.contains("flags: qr aa;"))
    }

    @Test func servesIPv6AndIPv4Together() throws {
        let zones = try TemporaryDirectory()
        try zones.write("example.test.zone", testZone)
        let daemon = try DiscodProcess(arguments: ["--zones", zones.url.path, "--dns", "[::1]:0", "--dns", "127.0.0.1:0"])
        defer { daemon.stop() }
        #expect(daemon.waitForLog("UDP worker(s)"))
        let log = daemon.stderr
        let v6 = try #require(log.range(of: "[::1]:")).upperBound
        let port = String(log[v6...].prefix { $0.isNumber })
        for transport in ["+notcp", "+tcp"] {
            let output = try run("dig", ["@::1", "-p", port, transport, "+short", "www.example.test", "A"])
            #expect(output == "192.0.2.10", "over \(transport): \(output)")
        }
    }

    private func run(_ tool: String, _ arguments: [String]) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [tool] + arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        do {
            try process.run()
        } catch {
            throw TestFailure("\(tool) is not installed (Debian dnsutils / knot-dnsutils): \(error)")
        }
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw TestFailure("\(tool) exited \(process.terminationStatus): \(String(decoding: data, as: UTF8.self))")
        }
        return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }
}
