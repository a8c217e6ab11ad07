import DNSWire
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// DNS client limits on a real discod: RRL on UDP, and the TCP caps, deadlines and
/// back-pressure (issue 13).
@Suite("DNS limits (process)")
struct LimitsProcessTests {
    /// A zone with a large TXT RRset: ~7.5 KB answers over TCP, ~200× the query.
    static let zone = testZone + "\n" + (0..<30).map { i in
        "big TXT \"\(i) \(String(repeating: "x", count: 240))\""
    }.joined(separator: "\n") + "\n"

    static func serve(_ environment: [String: String]) throws -> (TemporaryDirectory, DiscodProcess) {
        let zones = try TemporaryDirectory()
        try zones.write("example.test.zone", zone)
        return (zones, try DiscodProcess.serving(zones: zones.url, environment: environment))
    }

    /// Resident memory of `pid` in KiB (VmRSS in /proc/PID/status).
    static func residentKiB(_ pid: Int32) -> Int {
        let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            return Int(line.split(separator: " ", omittingEmptySubsequences: true)[1]) ?? 0
        }
        return 0
    }

    /// A socket of `type` bound to `source` (any 127.0.0.0/8 address is local).
    static func socket(_ type: Int32, from source: String) throws -> Int32 {
        let fd = Glibc.socket(AF_INET, type, 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr(source)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0 else {
            close(fd)
            throw TestFailure("cannot bind \(source): errno \(errno)")
        }
        DNSClient.setTimeout(fd)
        return fd
    }

    static func connectTCP(from source: String, port: UInt16) throws -> Int32 {
        let fd = try socket(Int32(SOCK_STREAM.rawValue), from: source)
        var address = DNSClient.loopback(port)
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard result == 0 else {
            close(fd)
            throw TestFailure("connect failed: \(errno)")
        }
        return fd
    }

    /// Sends a query on `fd` and reads its answer; nil if the connection was closed.
    static func ask(_ fd: Int32, _ name: String) throws -> Message? {
        let bytes = try DNSClient.frame(Message.query(try DomainName(name), .a))
        guard send(fd, bytes, bytes.count, Int32(MSG_NOSIGNAL)) == bytes.count else { return nil }
        return try DNSClient.readMessage(fd)
    }

    @Test func aClientThatPipelinesAndNeverReadsIsCutOffWithBoundedMemory() throws {
        let (zones, daemon) = try Self.serve(["DISCO_DNS_TCP_QUERY_TIMEOUT_SECONDS": "2",
                                              "DISCO_DNS_TCP_QUERIES_PER_CONNECTION_MAX": "0"])
        defer { daemon.stop(); _ = zones }
        let pid = daemon.process.processIdentifier
        // Warm up both paths, so that what is measured is the connection alone.
        _ = try DNSClient.tcp([Message.query(try DomainName("big.example.test."), .txt)], port: daemon.port)
        let before = Self.residentKiB(pid)

        let fd = try DNSClient.connectTCP(port: daemon.port)
        defer { close(fd) }
        var small: Int32 = 4096
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, socklen_t(MemoryLayout<Int32>.size))
        // 2,000 queries per write, each answered with ~7.5 KB: 15 MB of answers per write.
        let frame = try DNSClient.frame(Message.query(try DomainName("big.example.test."), .txt))
        let chunk = Array((0..<2000).map { _ in frame }.joined())
        var sentBytes = 0
        var closed = false
        var peak = before
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            // The stream continues where the last (possibly partial) write stopped.
            let offset = sentBytes % chunk.count
            let n = chunk.withUnsafeBytes {
                send(fd, $0.baseAddress! + offset, $0.count - offset, Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
            }
            if n > 0 {
                sentBytes += n
            } else if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                usleep(50_000)
            } else {
                closed = true
                break
            }
            peak = max(peak, Self.residentKiB(pid))
        }
        let queriesSent = sentBytes / frame.count
        #expect(closed, "discod kept a connection that never reads for 20 s (\(queriesSent) queries sent)")
        // Without back-pressure the answers to what was sent would be buffered: queriesSent × 7.5 KB.
        let growthKiB = peak - before
        #expect(growthKiB < 64 * 1024, "VmRSS grew \(growthKiB) KiB for \(queriesSent) unread queries")
        #expect(queriesSent < 200_000, "discod kept reading a connection whose answers were not read")
        // The server is fine afterwards.
        #expect(try DNSClient.udp(Message.query(try DomainName("www.example.test."), .a), port: daemon.port).rcode == .noError)
    }

    @Test func aSlowlorisClientIsClosedAfterTheQueryTimeout() throws {
        // The idle timeout is long: only the per-query deadline can close this connection.
        let (zones, daemon) = try Self.serve(["DISCO_DNS_TCP_QUERY_TIMEOUT_SECONDS": "2",
                                              "DISCO_DNS_TCP_IDLE_TIMEOUT_SECONDS": "60"])
        defer { daemon.stop(); _ = zones }
        let fd = try DNSClient.connectTCP(port: daemon.port)
        defer { close(fd) }
        let frame = try DNSClient.frame(Message.query(try DomainName("www.example.test."), .a))
        var closed = false
        // One byte a second; the query would be complete after frame.count seconds.
        for byte in frame.prefix(20) {
            var one = byte
            if send(fd, &one, 1, Int32(MSG_NOSIGNAL)) != 1 { closed = true; break }
            var pollfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            if poll(&pollfd, 1, 1000) > 0 {
                var scratch: UInt8 = 0
                if recv(fd, &scratch, 1, 0) <= 0 { closed = true; break }
            }
        }
        #expect(closed, "a query trickled one byte a second for 20 s was still being waited for")
    }

    @Test func theQueryTimeoutDoesNotCloseAPatientClient() throws {
        // Between queries only the idle timeout applies: a client that asks every 3 s stays.
        let (zones, daemon) = try Self.serve(["DISCO_DNS_TCP_QUERY_TIMEOUT_SECONDS": "1",
                                              "DISCO_DNS_TCP_IDLE_TIMEOUT_SECONDS": "10"])
        defer { daemon.stop(); _ = zones }
        let fd = try DNSClient.connectTCP(port: daemon.port)
        defer { close(fd) }
        for _ in 0..<3 {
            #expect(try Self.ask(fd, "www.example.test.")?.answers.count == 1)
            usleep(1_500_000)
        }
    }

    @Test func thePerNetworkConnectionCapHolds() throws {
        let (zones, daemon) = try Self.serve(["DISCO_DNS_TCP_CONNECTIONS_PER_CLIENT_MAX": "3"])
        defer { daemon.stop(); _ = zones }
        var open: [Int32] = []
        defer { open.forEach { close($0) } }
        // Three from 127.0.0.0/24, each answered (so each is accepted before the next).
        for source in ["127.0.0.1", "127.0.0.2", "127.0.0.3"] {
            let fd = try Self.connectTCP(from: source, port: daemon.port)
            open.append(fd)
            #expect(try Self.ask(fd, "www.example.test.")?.answers.count == 1)
        }
        // A fourth from the same /24 is closed; one from another /24 is served.
        let fourth = try Self.connectTCP(from: "127.0.0.4", port: daemon.port)
        open.append(fourth)
        #expect(DNSClient.isClosedByPeer(fourth))
        let other = try Self.connectTCP(from: "127.0.1.1", port: daemon.port)
        open.append(other)
        #expect(try Self.ask(other, "www.example.test.")?.answers.count == 1)
        // Closing one makes room again.
        close(open.removeFirst())
        var served = false
        for _ in 0..<50 where !served {
            let again = try Self.connectTCP(from: "127.0.0.5", port: daemon.port)
            served = (try? Self.ask(again, "www.example.test.")) != nil
            close(again)
            if !served { usleep(20_000) }
        }
        #expect(served)
    }

    @Test func rrlLimitsABurstFromOneNetworkAndSlipsTruncatedResponses() throws {
        let (zones, daemon) = try Self.serve(["DISCO_DNS_RRL_RESPONSES_PER_SECOND": "20", "DISCO_DNS_RRL_SLIP": "2", "DISCO_DNS_RRL_EXEMPT": ""])
        defer { daemon.stop(); _ = zones }
        let fd = try Self.socket(Int32(SOCK_DGRAM.rawValue), from: "127.66.6.1")
        defer { close(fd) }
        var server = DNSClient.loopback(daemon.port)
        let burst = 200
        var full = 0, truncated = 0
        for i in 0..<burst {
            let bytes = try Message.query(try DomainName("www.example.test."), .a, id: UInt16(i)).serialized()
            _ = withUnsafePointer(to: &server) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(fd, bytes, bytes.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            // Read what came back so far, without waiting.
            var buffer = [UInt8](repeating: 0, count: 65535)
            while case let n = recv(fd, &buffer, buffer.count, Int32(MSG_DONTWAIT)), n > 0 {
                let message = try Message(parsing: Array(buffer[0..<n]))
                if message.flags.tc && message.answers.isEmpty && message.authority.isEmpty { truncated += 1 } else { full += 1 }
            }
        }
        // Drain the rest.
        var buffer = [UInt8](repeating: 0, count: 65535)
        var timeout = timeval(tv_sec: 0, tv_usec: 300_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        while case let n = recv(fd, &buffer, buffer.count, 0), n > 0 {
            let message = try Message(parsing: Array(buffer[0..<n]))
            if message.flags.tc && message.answers.isEmpty && message.authority.isEmpty { truncated += 1 } else { full += 1 }
        }
        // One second of credit passes (a burst takes far less than a second to send).
        #expect(full >= 20 && full < 60, "\(full) full answers to a burst of \(burst) at 20/s")
        // Half of the rest slip (TC, so a real client would retry over TCP); the others are dropped.
        #expect(truncated > (burst - full) / 2 - 20 && truncated <= (burst - full) / 2 + 1, "\(truncated) truncated")
        // Another network is not affected, and TCP (not spoofable) is not rate limited.
        #expect(try DNSClient.udp(Message.query(try DomainName("www.example.test."), .a), port: daemon.port).answers.count == 1)
        let viaTCP = try Self.connectTCP(from: "127.66.6.1", port: daemon.port)
        defer { close(viaTCP) }
        let bytes = try DNSClient.frame(Message.query(try DomainName("big.example.test."), .txt))
        _ = send(viaTCP, bytes, bytes.count, Int32(MSG_NOSIGNAL))
        #expect(try DNSClient.readMessage(viaTCP)?.answers.count == 30)
        #expect(daemon.waitForLog("RRL limiting responses to 127.66.6.0/24"))
    }

    @Test func theLimitsCountersAreInMetrics() throws {
        let cluster = try ClusterProcessTests.ClusterFixture(size: 1, environment: ["DISCO_DNS_RRL_RESPONSES_PER_SECOND": "5", "DISCO_DNS_RRL_EXEMPT": ""])
        _ = try #require(cluster.leader())
        let node = cluster.nodes[0]
        let port = try #require(node.process?.port)
        // A burst of 20, not waiting for answers.
        let fd = try Self.socket(Int32(SOCK_DGRAM.rawValue), from: "127.0.0.1")
        defer { close(fd) }
        var server = DNSClient.loopback(port)
        let bytes = try Message.query(try DomainName("www.example.test."), .a).serialized()
        for _ in 0..<20 {
            _ = withUnsafePointer(to: &server) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(fd, bytes, bytes.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
        }
        usleep(200_000)
        func value(_ name: String) -> Int? {
            http("GET", port: node.httpPort, "/metrics")?.body.split(separator: "\n").first { $0.hasPrefix(name + " ") }
                .flatMap { Int($0.split(separator: " ")[1]) }
        }
        // 20 at once at 5/s: 15 limited, each either slipped or dropped.
        let limited = try #require(value("disco_dns_rrl_limited_total"))
        #expect(limited >= 14)
        #expect(value("disco_dns_rrl_slipped_total")! + value("disco_dns_rrl_dropped_total")! == limited)
        #expect(value("disco_dns_tcp_refused_total") == 0)
    }

    @Test func rrlCanBeTurnedOff() throws {
        let (zones, daemon) = try Self.serve(["DISCO_DNS_RRL_RESPONSES_PER_SECOND": "5", "DISCO_DNS_RRL_ENABLED": "false"])
        defer { daemon.stop(); _ = zones }
        for _ in 0..<30 {
            #expect(try DNSClient.udp(Message.query(try DomainName("www.example.test."), .a), port: daemon.port).answers.count == 1)
        }
    }
}
