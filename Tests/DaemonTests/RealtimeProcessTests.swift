import DNSWire
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `dns.realtime_priority`: the UDP workers answer in SCHED_FIFO, each within a CPU budget per
/// window, so a registration storm's threads cannot delay an answer, and a flood cannot turn
/// the workers into a starvation of Raft and the API (issue 13).
@Suite("real-time DNS workers", .serialized)
struct RealtimeProcessTests {
    typealias Cluster = ClusterProcessTests.ClusterFixture
    static let fifo = 1, other = 0

    /// Whether this machine lets a process of ours run in SCHED_FIFO (a container may not):
    /// the tests of real-time answering need it; the fallback is tested without it either way.
    static let realtimePermitted: Bool = {
        let chrt = Process()
        chrt.executableURL = URL(fileURLWithPath: "/usr/bin/chrt")
        chrt.arguments = ["-f", "1", "/bin/true"]
        chrt.standardError = FileHandle.nullDevice
        guard (try? chrt.run()) != nil else { return false }
        chrt.waitUntilExit()
        return chrt.terminationStatus == 0
    }()

    @Test(.enabled(if: realtimePermitted, "SCHED_FIFO is not permitted here"))
    func theUDPWorkersAnswerInSchedFIFOAndTheRestDoesNot() throws {
        let cluster = try Cluster(size: 1)
        let node = try #require(cluster.leader())
        let pid = try #require(node.process?.process.processIdentifier)
        var threads: [ThreadStat] = []
        #expect(waitUntil(seconds: 5) {
            threads = (try? threadStats(pid)) ?? []
            return threads.contains { $0.name == "disco-udp" && $0.policy == Self.fifo }
        }, "\(threads)")
        #expect(threads.filter { $0.name == "disco-udp" }.allSatisfy { $0.policy == Self.fifo }, "\(threads)")
        #expect(threads.filter { $0.name != "disco-udp" }.allSatisfy { $0.policy == Self.other }, "\(threads)")
        #expect(metric("disco_dns_realtime_workers", port: node.httpPort) == 1)
        #expect(resolveA("www.example.test.", port: node.process!.port) == ["192.0.2.10"])
    }

    /// With real-time workers the write path is not niced by default: they preempt it anyway,
    /// and at +10 it cost writes. Where real time is off, it is 10 nice levels below again.
    @Test(.enabled(if: realtimePermitted, "SCHED_FIFO is not permitted here"))
    func theWritePathIsNicedOnlyWithoutRealTime() throws {
        for (environment, increment) in [([String: String](), 0), (["DISCO_DNS_REALTIME_PRIORITY": "0"], 10)] {
            let cluster = try Cluster(size: 1, environment: environment)
            _ = try #require(cluster.leader())
            let pid = try #require(cluster.nodes[0].process?.process.processIdentifier)
            var threads: [ThreadStat] = []
            let base = try #require(try threadStats(pid).first { $0.name == "discod" }).nice
            // The loops lower themselves as their first task; give them a moment.
            #expect(waitUntil(seconds: 5) {
                threads = (try? threadStats(pid)) ?? []
                return threads.filter { $0.name.hasPrefix("NIO-ELT") && $0.nice == min(base + increment, 19) }.count >= 3
            }, "\(environment): \(threads)")
        }
    }

    @Test func priorityZeroLeavesThemNormal() throws {
        let cluster = try Cluster(size: 1, environment: ["DISCO_DNS_REALTIME_PRIORITY": "0"])
        let node = try #require(cluster.leader())
        let pid = try #require(node.process?.process.processIdentifier)
        let threads = try threadStats(pid)
        #expect(threads.contains { $0.name == "disco-udp" }, "\(threads)")
        #expect(threads.allSatisfy { $0.policy == Self.other }, "\(threads)")
        #expect(metric("disco_dns_realtime_workers", port: node.httpPort) == 0)
    }

    /// Without CAP_SYS_NICE (and with RLIMIT_RTPRIO 0, the default) the promotion is refused:
    /// the workers answer at normal priority, and one warning says what to configure.
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv") && realtimePriorityLimit() == 0))
    func withoutThePrivilegeTheWorkersRunNormallyAndSaySo() throws {
        let zones = try TemporaryDirectory()
        try zones.write("example.test.zone", testZone)
        let daemon = try DiscodProcess.serving(zones: zones.url, launcher: ["/usr/bin/setpriv", "--inh-caps=-sys_nice",
                                                                            "--bounding-set=-sys_nice", "--"])
        defer { daemon.stop() }
        let threads = try threadStats(daemon.process.processIdentifier)
        #expect(threads.filter { $0.name == "disco-udp" }.count == 2, "\(threads)")
        #expect(threads.allSatisfy { $0.policy == Self.other }, "\(threads)")
        #expect(waitUntil(seconds: 2) { daemon.stderr.components(separatedBy: "SCHED_FIFO 1 was refused").count - 1 == 1 },
                "\(daemon.stderr)")
        #expect(daemon.stderr.contains("LimitRTPRIO=1"))
        #expect(resolveA("www.example.test.", port: daemon.port) == ["192.0.2.10"])
    }

    /// A flood spends the budget: the worker answers the rest of each window at normal priority
    /// (counted), keeps answering, and is back in SCHED_FIFO once the flood is over.
    @Test(.enabled(if: realtimePermitted, "SCHED_FIFO is not permitted here"))
    func aFloodSpendsTheBudgetAndTheWorkerComesBack() throws {
        let cluster = try Cluster(size: 1, environment: ["DISCO_DNS_REALTIME_BUDGET_PERCENT": "1"])
        let node = try #require(cluster.leader())
        let pid = try #require(node.process?.process.processIdentifier)
        let port = try #require(node.process?.port)
        #expect(metric("disco_dns_realtime_demotions_total", port: node.httpPort) == 0)
        try flood(port: port, seconds: 1.5)
        let demotions = try #require(metric("disco_dns_realtime_demotions_total", port: node.httpPort))
        #expect(demotions > 0)
        #expect(resolveA("www.example.test.", port: port) == ["192.0.2.10"])
        var threads: [ThreadStat] = []
        #expect(waitUntil(seconds: 3) {
            threads = (try? threadStats(pid)) ?? []
            return threads.filter { $0.name == "disco-udp" }.allSatisfy { $0.policy == Self.fifo }
        }, "\(threads)")
    }
}

/// A gauge or counter from `port`'s /metrics.
func metric(_ name: String, port: Int) -> Double? {
    guard let text = http("GET", port: port, "/metrics")?.body else { return nil }
    return text.split(separator: "\n").first { $0.hasPrefix(name + " ") }.flatMap { Double($0.dropFirst(name.count + 1)) }
}

/// Sends `www.example.test. A` to `port` as fast as one socket can for `seconds`, reading nothing.
func flood(port: UInt16, seconds: Double) throws {
    let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
    defer { close(fd) }
    var address = DNSClient.loopback(port)
    let query = try Message.query(DomainName("www.example.test."), .a, id: 7).serialized()
    let end = Date().addingTimeInterval(seconds)
    while Date() < end {
        for _ in 0..<64 {
            _ = query.withUnsafeBytes { bytes in
                withUnsafePointer(to: &address) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        sendto(fd, bytes.baseAddress, bytes.count, Int32(MSG_DONTWAIT), $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                    }
                }
            }
        }
    }
}

/// `dns.overload_queue_milliseconds`: queries that waited too long in the queue put the server
/// in overload mode, whose small receive buffer sheds new queries at the door; it ends when
/// queries wait little and nothing is dropped (issue 13).
@Suite("DNS overload mode")
struct OverloadProcessTests {
    @Test func aFloodBeyondWhatTheWorkerAnswersIsShedAtTheDoorUntilItEnds() throws {
        let cluster = try ClusterProcessTests.ClusterFixture(size: 1, environment: ["DISCO_DNS_OVERLOAD_QUEUE_MILLISECONDS": "20"])
        let node = try #require(cluster.leader())
        let port = try #require(node.process?.port)
        #expect(metric("disco_dns_overload_episodes_total", port: node.httpPort) == 0)
        try flood(port: port, seconds: 2)
        #expect(try #require(metric("disco_dns_overload_episodes_total", port: node.httpPort)) >= 1)
        #expect(try #require(metric("disco_dns_udp_receive_queue_drops_total", port: node.httpPort)) > 0)
        #expect(waitUntil(seconds: 5) { metric("disco_dns_overload_shedding_workers", port: node.httpPort) == 0 })
        let log = try #require(node.process?.stderr)
        let episodes = try #require(metric("disco_dns_overload_episodes_total", port: node.httpPort))
        #expect(log.components(separatedBy: "DNS overload: a query waited").count - 1 == Int(episodes), "one line per episode")
        #expect(log.components(separatedBy: "DNS overload over").count - 1 == Int(episodes), "\(log)")
        #expect(resolveA("www.example.test.", port: port) == ["192.0.2.10"])
    }

    @Test func zeroTurnsItOff() throws {
        let cluster = try ClusterProcessTests.ClusterFixture(size: 1, environment: ["DISCO_DNS_OVERLOAD_QUEUE_MILLISECONDS": "0"])
        let node = try #require(cluster.leader())
        try flood(port: try #require(node.process?.port), seconds: 1)
        #expect(metric("disco_dns_overload_episodes_total", port: node.httpPort) == 0)
        #expect(metric("disco_dns_overload_shedding_workers", port: node.httpPort) == 0)
    }
}

/// This process's RLIMIT_RTPRIO soft limit.
func realtimePriorityLimit() -> UInt {
    var limit = rlimit()
    getrlimit(__rlimit_resource_t(__RLIMIT_RTPRIO.rawValue), &limit)
    return UInt(limit.rlim_cur)
}
