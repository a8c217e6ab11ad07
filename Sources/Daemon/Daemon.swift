import API
import CShims
import DNSServer
import DNSWire
import DNSZone
import Dispatch
import Foundation
import Logging
import NIOPosix
import Registry

/// Distinct exit codes per start-up failure (sysexits.h), so systemd and scripts can tell
/// them apart.
public enum ExitCode: Int32, Sendable {
    case ok = 0
    case usage = 64
    /// `--check-config`: a zone file does not parse or validate.
    case dataError = 65
    case unavailable = 69
    case ioError = 74
    /// At run time the Raft log or a snapshot could not be written or installed: the server
    /// stopped taking part and exits so that systemd restarts it from what is durable.
    case raftStorageFailed = 75
    case config = 78
}

/// discod: loads the zones, serves them over UDP and TCP, reloads on SIGHUP, stops on
/// SIGTERM/SIGINT. Lifecycle events are told to systemd (Type=notify) when under it.
public final class DiscoDaemon: @unchecked Sendable {
    // @unchecked: `zones` is touched only on `signalQueue` after start(); start() runs before
    // any signal source is resumed.

    private let config: Configuration
    private let logger: Logger
    private let store = ViewStore(View.empty)
    private lazy var composer = ViewComposer(store: store, identity: ServerIdentity(
        identity: config.dnsIdentity ?? Self.hostName(), version: config.dnsVersion))

    /// This host's name (gethostname: no resolver lookup, unlike ProcessInfo.hostName).
    static func hostName() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return "" }
        return String(cString: buffer)
    }
    private var servicePublisher: ServiceViewPublisher?
    private var zones: [Zone] = []
    private var udp: UDPServer?
    private var tcp: TCPServer?
    private var group: MultiThreadedEventLoopGroup?
    private var cluster: ClusterRuntime?
    /// Sockets systemd passed (socket activation); empty otherwise.
    private var activation = SocketActivation()
    private var watchdog: SystemdWatchdog?
    private let signalQueue = DispatchQueue(label: "disco.signals")
    private var signalSources: [DispatchSourceSignal] = []
    private let stopped = DispatchSemaphore(value: 0)

    /// Port-0 start-ups retried when TCP cannot have the port UDP was given.
    static let portZeroAttemptsMax = 8

    /// RRL, the query rate limit and the TCP caps, shared by the UDP and TCP servers.
    public let clientLimits: ClientLimits

    public init(config: Configuration, logger: Logger) {
        var config = config
        if config.dnsBackgroundNice == nil {
            // Real-time workers preempt the write path whatever its nice value: lowering it
            // then only slows writes. Without real time, nice is what keeps DNS first.
            let realtime = config.dnsRealtime.priority > 0 && RealtimeSettings.permitted(priority: config.dnsRealtime.priority)
            config.dnsBackgroundNice = realtime ? 0 : Configuration.dnsBackgroundNiceDefault
        }
        self.config = config
        self.logger = logger
        clientLimits = config.clientLimits
    }

    /// The addresses actually bound (port 0 resolved), once started.
    public var udpAddresses: [ListenAddress] { udp?.boundAddresses ?? [] }
    public var tcpAddresses: [ListenAddress] { tcp?.boundAddresses ?? [] }

    /// How long start-up waits for the registry's first DNS view before opening DNS anyway (a
    /// catalog of 41,000 instances builds in well under a second).
    static let firstViewTimeoutSeconds: Double = 30
    /// How long start-up keeps DNS closed for a registry behind the server's own log, waiting
    /// for a leader (a second or two after a restart, with the peers' reconnect backoff).
    static let registryCatchUpSecondsMax: Double = 5

    /// Loads zones and binds every socket. Throws with an exit code and nothing left bound.
    public func start() throws(StartError) {
        activation = try SocketActivation.inherited(environment: ProcessInfo.processInfo.environment,
                                                    httpPort: config.httpListen.port)
        if !activation.sockets.isEmpty {
            logger.info("socket activation: serving the sockets systemd passed", metadata: [
                "dns.udp": "\(activation.udp.map(\.address.description))", "dns.tcp": "\(activation.tcp.map(\.address.description))",
                "http": "\(activation.http.map(\.address.description) ?? "-")",
            ])
        }
        // The zone files load on other threads while the cluster starts (a zone of a million
        // records takes seconds, as long as the registry's first view or longer).
        let zoneLoad: PendingZoneLoad?
        if servesNoZoneFiles {
            logger.notice("no zone directory at \(config.zonesDirectory): serving the registry only (--zones or dns.zones names one)")
            zoneLoad = nil
        } else {
            zoneLoad = PendingZoneLoad(path: config.zonesDirectory)
        }
        do throws(StartError) {
            try startCluster()
        } catch {
            _ = zoneLoad?.wait()
            throw error
        }
        if let zoneLoad {
            switch zoneLoad.wait() {
            case .success(let result):
                report(result)
                zones = result.zones
                logger.info("zones loaded", metadata: ["dns.zones": "\(zones.count)", "dns.failed": "\(result.failures.count)",
                                                       "dns.zones.load_seconds": "\(Self.rounded(zoneLoad.seconds))"])
            case .failure(let error):
                stop()
                throw StartError(code: .ioError, message: error.description)
            }
        }
        composer.publish(fileZones: zones)
        disco_release_free_memory()
        if cluster != nil, let domain = try? DomainName(config.dnsDomain), zones.contains(where: { $0.origin == domain }) {
            logger.warning("the zone file for \(domain) is hidden by the registry, which answers that domain")
        }
        try startDNS()
    }

    /// Loads a zone directory on another thread; `wait` returns its result.
    private final class PendingZoneLoad: @unchecked Sendable {
        // @unchecked: `result` is written once before `done` is signalled and read after.
        private var result: Result<ZoneDirectory.LoadResult, ZoneError>?
        private let done = DispatchSemaphore(value: 0)

        /// How long the load took.
        private(set) var seconds = 0.0

        init(path: String) {
            DispatchQueue.global().async {
                let start = DispatchTime.now().uptimeNanoseconds
                self.result = Result { () throws(ZoneError) in try ZoneDirectory.load(path: path) }
                self.seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
                self.done.signal()
            }
        }

        func wait() -> Result<ZoneDirectory.LoadResult, ZoneError> {
            done.wait()
            done.signal()
            return result!
        }
    }

    /// Starts the Raft cluster and the registry, and waits for the registry's first DNS view.
    private func startCluster() throws(StartError) {
        // The cluster first: its registry view is published before any DNS socket opens.
        if config.clusterEnabled {
            do throws(StartError) {
                final class PublisherBox: @unchecked Sendable { var publisher: ServiceViewPublisher? }
                let box = PublisherBox()
                let limits = clientLimits
                let cluster = try ClusterRuntime(config: config, logger: logger, httpSocket: activation.http?.fd, extraMetrics: { [weak self] in
                    Self.metricLines(limits.counters) + (self?.dnsMetrics().flatMap(\.lines) ?? []) + Self.metricLines(DNSMetrics.shared)
                }) { change, _ in
                    box.publisher?.changed(change)
                }
                self.cluster = cluster
                let domain: DomainName
                do { domain = try DomainName(config.dnsDomain) } catch { preconditionFailure("dns.domain was validated: \(error)") }
                let viewConfig = ServiceViewConfig(
                    domain: domain, serviceTTLSeconds: UInt32(config.dnsServiceTTLSeconds),
                    nodeTTLSeconds: UInt32(config.dnsNodeTTLSeconds), negativeTTLSeconds: UInt32(config.dnsNegativeTTLSeconds),
                    onlyPassing: config.dnsOnlyPassing,
                    nameServerAddresses: [config.effectiveNodeAddress], panicThresholdPercent: config.dnsPanicThresholdPercent,
                    slowStartSeconds: UInt32(config.dnsSlowStartSeconds), recordsMax: config.dnsARecordLimit)
                let publisher = ServiceViewPublisher(catalog: cluster.catalog, config: viewConfig, composer: composer,
                                                     nice: config.backgroundPriority, logger: logger)
                box.publisher = publisher
                servicePublisher = publisher
                // The registry's names are answered from the first view, never REFUSED: the
                // DNS sockets open only once it is published (issue 15: a restarted server
                // answered REFUSED for service names for a few milliseconds).
                // Nor from a registry behind this server's own log: killed right after it
                // answered a registration, a server restarted with registry.db one transaction
                // short and answered NXDOMAIN for that name until a leader reached it, up to
                // seconds (resolvers cache NXDOMAIN). It stays silent until its log is applied
                // or a leader's commit index is, or `registryCatchUpSecondsMax` passed (no
                // leader in reach: the local view is the best answer there is).
                if !pollUntil(seconds: Self.registryCatchUpSecondsMax, { cluster.driver.caughtUpSinceStart }) {
                    logger.warning("no leader reached and the log not applied yet; serving DNS from the local registry meanwhile",
                                   metadata: ["raft.applied": "\(cluster.driver.currentStatus.appliedIndex)",
                                              "raft.last_index_at_start": "\(cluster.driver.lastIndexAtStart)"])
                }
                publisher.changed()
                if !publisher.waitForView(coveringApplied: cluster.catalog.appliedIndex, timeoutSeconds: Self.firstViewTimeoutSeconds) {
                    logger.warning("the registry's first DNS view is not ready; serving DNS without it meanwhile")
                }
                logger.info("raft server \(config.raftNodeID) \(config.raftJoin.map { "joining through \($0)" } ?? "of \(config.raftServers.count)") on \(config.raftListen.host):\(cluster.raftPort); HTTP API on \(config.httpListen.host):\(cluster.httpPort); data in \(config.dataDirectory)")
            } catch {
                stop()
                throw error
            }
        }
    }

    /// A TCP socket bound (not listening) to `address` with port 0: the kernel's pick of a port
    /// no TCP socket holds, which nothing else can take while it stays open. nil: it cannot be
    /// had (UDP then picks the port, and TCP may find it taken).
    private static func reserveTCPPort(_ address: ListenAddress) -> (fd: Int32, port: Int)? {
        var storage = sockaddr_storage()
        let length = disco_parse_address(address.host, 0, &storage)
        guard length > 0 else { return nil }
        let fd = socket(Int32(storage.ss_family), Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return nil }
        let bound = withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
        }
        let port = disco_socket_port(fd)
        guard bound == 0, port > 0 else {
            close(fd)
            return nil
        }
        return (fd, Int(port))
    }

    /// Binds the DNS sockets and starts answering.
    private func startDNS() throws(StartError) {
        let limits = clientLimits
        let selection = SelectionOptions(policy: config.dnsSelection, ttlJitterPercent: config.dnsTTLJitterPercent)
        DNSMetrics.shared.enabled = config.dnsMetrics
        let inherited = !activation.udp.isEmpty || !activation.tcp.isEmpty
        if inherited {
            if activation.tcp.isEmpty { logger.warning("socket activation passed no TCP socket: DNS over TCP is not served") }
            if activation.udp.isEmpty { logger.warning("socket activation passed no UDP socket: DNS over UDP is not served") }
        }
        let queryLog = config.dnsQueryLogEvery > 0 ? QueryLog(every: UInt64(config.dnsQueryLogEvery), logger: logger) : nil
        // TCP is not the hot path: one event loop is plenty, and leaves the cores to UDP.
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        // With port 0 one number must serve UDP and TCP. TCP picks it: every outgoing TCP
        // connection holds a port of the same range (thousands under load), UDP sockets are few.
        // The port is held by a bound TCP socket until UDP has it, then TCP listens on it; if UDP
        // cannot have it, or another socket takes it in between, pick again.
        let attempts = config.dnsListen.contains { $0.port == 0 } && !inherited ? Self.portZeroAttemptsMax : 1
        var started: (udp: UDPServer, tcp: TCPServer)?
        for attempt in 1...attempts {
            var reserved: [Int32] = []
            defer { reserved.forEach { close($0) } }
            var addresses = config.dnsListen
            for k in addresses.indices where addresses[k].port == 0 && !inherited {
                guard let (fd, port) = Self.reserveTCPPort(addresses[k]) else { continue }
                reserved.append(fd)
                addresses[k].port = port
            }
            let udp = UDPServer(addresses: addresses, workers: config.dnsWorkers, store: store,
                                udpPayloadBytes: config.dnsUDPPayloadBytes, minimalResponses: config.dnsMinimalResponses,
                                limits: limits, selection: selection, logger: logger)
            udp.queryLog = queryLog
            udp.realtime = config.dnsRealtime
            udp.overload = config.dnsOverload
            udp.inheritedSockets = activation.udp
            do throws(ServerError) {
                try udp.start()
                reserved.forEach { close($0) }
                reserved = []
                // TCP binds the ports UDP got, so with port 0 one number serves both.
                let tcp = TCPServer(addresses: inherited ? [] : udp.boundAddresses, store: store, group: group, limits: limits,
                                    minimalResponses: config.dnsMinimalResponses, selection: selection, logger: logger)
                tcp.inheritedSockets = activation.tcp
                tcp.queryLog = queryLog
                try tcp.start()
                started = (udp, tcp)
                break
            } catch {
                udp.stop()
                if attempt < attempts, case .bind(let address, let transport, EADDRINUSE) = error {
                    logger.info("the DNS port picked for port 0 is taken; picking another",
                                metadata: ["dns.address": "\(address)", "dns.transport": "\(transport)", "dns.attempt": "\(attempt)"])
                    continue
                }
                try? group.syncShutdownGracefully()
                throw StartError(code: .unavailable, message: error.description)
            }
        }
        guard let started else { preconditionFailure("the DNS start loop ends started or throwing") }
        let udp = started.udp
        self.tcp = started.tcp
        self.udp = udp
        self.group = group

        let origins = zones.map(\.origin.description).joined(separator: ", ")
        logLimits()
        logger.info("discod serving \(zones.count) zone(s) [\(origins)] from \(config.zonesDirectory) on udp+tcp \(udp.boundAddresses.map(\.description).joined(separator: ", ")) with \(config.dnsWorkers) UDP worker(s)\(cluster == nil ? "" : config.aclEnabled ? "; ACLs on, default policy \(config.aclDefaultAllows ? "allow" : "deny")" : "; ACLs off: anyone who reaches the HTTP API may change anything")")
        _ = disco_sd_notify("READY=1\nSTATUS=\(statusLine())")
        watchdog = SystemdWatchdog(environment: ProcessInfo.processInfo.environment, queue: signalQueue, logger: logger,
                                   progress: { [weak self] in self?.progress() ?? [] },
                                   status: { [weak self] in self?.statusLine() ?? "" })
        watchdog?.start()
    }

    /// What systemd shows in `systemctl status`: zones, and the server's part in the cluster.
    func statusLine() -> String {
        var line = "serving \(zones.count) zone(s)"
        if let cluster {
            let status = cluster.driver.currentStatus
            let role = status.role == .leader ? "leader" : status.leader.map { "\(status.role) (leader \($0))" } ?? "\(status.role), no leader"
            line += "; raft \(role), term \(status.term.rawValue); \(cluster.catalog.state.services.count) registry instance(s)"
        }
        return line
    }

    /// Counters that move while discod is alive: each DNS worker's loop, the Raft loop's ticks.
    private func progress() -> [UInt64] {
        (udp?.workerProgress ?? []) + (cluster.map { [$0.driver.tickCount] } ?? [])
    }

    /// The DNS limits' counters as Prometheus text (counters, since start-up).
    static func metricLines(_ counters: ClientLimits.Counters) -> [String] {
        var lines: [String] = []
        func counter(_ name: String, _ help: String, _ value: Int) {
            lines += Metric(name: name, help: help, kind: .counter, value: "\(value)").lines
        }
        counter("disco_dns_rrl_limited_total", "UDP responses over the RRL rate (log-only mode included).", counters.rrl.limited)
        counter("disco_dns_rrl_slipped_total", "Limited UDP responses sent truncated (TC=1).", counters.rrl.slipped)
        counter("disco_dns_rrl_dropped_total", "Limited UDP responses not sent.", counters.rrl.dropped)
        counter("disco_dns_rrl_evictions_total", "Active RRL buckets evicted from the full table.", counters.rrl.evictions)
        counter("disco_dns_queries_rate_limited_total", "UDP queries dropped by the per-network query rate limit.",
                counters.queriesDropped)
        counter("disco_dns_tcp_refused_total", "TCP connections closed on accept (total or per-network cap).", counters.tcpRefused)
        counter("disco_dns_tcp_timed_out_total", "TCP connections closed for a slow query or unread answers.", counters.tcpTimedOut)
        counter("disco_dns_tcp_query_cap_total", "TCP connections closed after their query cap.", counters.tcpQueryCapReached)
        return lines
    }

    /// The DNS workers' counters (`DNSMetrics`) as Prometheus families, by transport.
    static func metricLines(_ metrics: DNSMetrics) -> [String] {
        let transports = [("udp", metrics.totals(.udp)), ("tcp", metrics.totals(.tcp))]
        func perTransport(_ value: (DNSMetrics.Totals) -> UInt64) -> [(labels: String, value: String)] {
            transports.map { ("proto=\"\($0.0)\"", "\(value($0.1))") }
        }
        func byName(_ names: [String], _ label: String, _ values: (DNSMetrics.Totals) -> [UInt64]) -> [(labels: String, value: String)] {
            transports.flatMap { proto, totals in
                zip(names, values(totals)).map { ("proto=\"\(proto)\",\(label)=\"\($0)\"", "\($1)") }
            }
        }
        let udp = transports[0].1
        return Metric.family("disco_dns_queries_total", help: "DNS queries received, by transport and query type.", kind: .counter,
                             byName(DNSMetrics.qtypeNames, "qtype", \.queries))
            + Metric.family("disco_dns_responses_total", help: "DNS responses sent, by transport and response code.", kind: .counter,
                            byName(DNSMetrics.rcodeNames, "rcode", \.responses))
            + Metric.family("disco_dns_truncated_total", help: "Responses sent with TC set (the client retries over TCP).",
                            kind: .counter, perTransport(\.truncated))
            + Metric.family("disco_dns_unanswered_total",
                            help: "Queries given no answer: malformed, a response, or refused by a client limit before answering.",
                            kind: .counter, perTransport(\.unanswered))
            + Metric(name: "disco_dns_cache_hits_total", help: "UDP queries answered from the answer cache.", kind: .counter,
                     value: "\(udp.cacheHits)").lines
            + Metric(name: "disco_dns_cache_misses_total", help: "UDP queries the answer cache did not hold.", kind: .counter,
                     value: "\(udp.cacheMisses)").lines
            + Metric(name: "disco_dns_realtime_workers", help: "UDP workers that answer at real-time priority (dns.realtime_priority).",
                     kind: .gauge, value: "\(udp.realtimeWorkers)").lines
            + Metric(name: "disco_dns_realtime_demotions_total",
                     help: "Budget windows in which a UDP worker used its real-time CPU budget and answered the rest at normal priority.",
                     kind: .counter, value: "\(udp.realtimeDemotions)").lines
            + Metric.histogram("disco_dns_udp_queue_wait_seconds",
                               help: "How long the oldest query of each UDP batch waited in the socket's receive queue before a worker read it.",
                               [("", Metric.Histogram(bounds: DNSMetrics.queueWaitBucketsSeconds, counts: udp.queueWaitBuckets,
                                                      sum: udp.queueWaitSumSeconds))])
            + Metric.histogram("disco_dns_answer_duration_seconds",
                               help: "Time to answer one query (parse, lookup, encode), one query in \(DNSMetrics.latencySampleEvery) sampled.",
                               transports.map { ("proto=\"\($0.0)\"", Metric.Histogram(bounds: DNSMetrics.latencyBucketsSeconds,
                                                                                       counts: $0.1.latencyBuckets, sum: $0.1.latencySumSeconds)) })
    }

    private func logLimits() {
        let rrl = config.dnsRRL
        if rrl.enabled {
            logger.info("RRL\(rrl.logOnly ? " (log only)" : ""): \(rrl.responsesPerSecond) responses/s per /\(rrl.ipv4PrefixLength) and /\(rrl.ipv6PrefixLength), window \(rrl.windowSeconds) s, slip \(rrl.slip), \(rrl.exempt.count) exempt network(s)")
        } else {
            logger.info("RRL is off (dns.rrl.enabled = false)")
        }
        if config.dnsQueryLimit.enabled {
            logger.info("query rate limit: \(config.dnsQueryLimit.queriesPerSecond) queries/s per client network")
        }
    }

    /// The default zone directory does not exist: a registry-only server needs none (issue 15:
    /// it exited with 74 until an empty directory was made for it). A directory named by the
    /// configuration must exist.
    private var servesNoZoneFiles: Bool {
        config.zonesDirectory == Configuration.zonesDirectoryDefault && !FileManager.default.fileExists(atPath: config.zonesDirectory)
    }

    /// Reloads the zone directory: changed zones are swapped in whole; a zone that fails keeps
    /// its previous version and the error is logged.
    public func reload() {
        cluster?.reloadTLS()
        guard !servesNoZoneFiles else {
            logger.notice("no zone directory at \(config.zonesDirectory); nothing to reload")
            return
        }
        // MONOTONIC_USEC: systemd (Type=notify-reload, 253+) matches the reload to this message.
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        _ = disco_sd_notify("RELOADING=1\nMONOTONIC_USEC=\(UInt64(now.tv_sec) * 1_000_000 + UInt64(now.tv_nsec) / 1000)")
        do throws(ZoneError) {
            let start = DispatchTime.now().uptimeNanoseconds
            let result = try ZoneDirectory.load(path: config.zonesDirectory, previous: zones)
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
            report(result)
            zones = result.zones
            composer.publish(fileZones: zones)
            logger.info("zones reloaded", metadata: ["dns.zones": "\(zones.count)", "dns.zones.unchanged": "\(result.unchanged)",
                                                     "dns.failed": "\(result.failures.count)",
                                                     "dns.zones.load_seconds": "\(Self.rounded(seconds))"])
            releaseReplacedZones()
        } catch {
            logger.error("zone reload failed; keeping every zone as it was", metadata: ["dns.error": "\(error)"])
        }
        _ = disco_sd_notify("READY=1\nSTATUS=\(statusLine())")
    }

    /// How long after a reload the replaced zones are freed: no worker holds a View longer
    /// than one batch, far below this.
    static let replacedZonesFreeDelayMilliseconds = 1000

    /// Frees the zones a reload replaced (held by retired Views) and gives the memory back to
    /// the kernel, so that a reload of a large zone costs its memory twice only while it runs.
    private func releaseReplacedZones() {
        let store = self.store
        DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(Self.replacedZonesFreeDelayMilliseconds)) {
            store.freeRetired()
            disco_release_free_memory()
        }
    }

    /// Seconds to the millisecond, for logs.
    static func rounded(_ seconds: Double) -> Double { (seconds * 1000).rounded() / 1000 }

    private func report(_ result: ZoneDirectory.LoadResult) {
        for failure in result.failures {
            for error in failure.error.errors {
                logger.error("zone not loaded: \(error)", metadata: ["dns.zone.file": "\(failure.file)",
                                                                     "dns.zone.kept_previous": "\(failure.keptPrevious)"])
            }
        }
    }

    /// Blocks until SIGTERM or SIGINT, reloading on SIGHUP; then stops the servers.
    static let handledSignals = [SIGHUP, SIGTERM, SIGINT]

    /// Blocks SIGHUP, SIGTERM and SIGINT in the calling thread and so in every thread started
    /// after it: call first thing, before any thread exists. A signal that arrives while discod
    /// starts is then held until `runUntilSignalled` takes it (a SIGTERM during a long zone load
    /// stops the server cleanly once it has started).
    public static func blockHandledSignals() {
        var set = sigset_t()
        sigemptyset(&set)
        for signalNumber in handledSignals { sigaddset(&set, signalNumber) }
        pthread_sigmask(SIG_BLOCK, &set, nil)
    }

    public func runUntilSignalled() {
        for signalNumber in Self.handledSignals {
            // Blocked in every thread since start-up (`blockHandledSignals`), so one sent
            // before this point waits pending and the source (a signalfd on Linux) reads it.
            // No SIG_IGN: setting it discards a pending signal (POSIX), which left a SIGTERM
            // sent just after the serving line unheeded.
            let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: signalQueue)
            source.setEventHandler { [self] in
                if signalNumber == SIGHUP {
                    reload()
                } else {
                    logger.info("stopping on signal \(signalNumber)")
                    stopped.signal()
                }
            }
            source.resume()
            signalSources.append(source)
        }
        stopped.wait()
        stop()
    }

    /// The DNS server's samples for /metrics: panic answers (each worker counts its own; summed
    /// here) and the services in panic in the last View.
    private func dnsMetrics() -> [Metric] {
        let answers = (udp?.panicAnswers ?? 0) + (tcp?.panicAnswers ?? 0)
        return [
            Metric(name: "disco_dns_panic_answers_total", help: "Service answers given from every instance because too few were healthy (panic threshold).",
                   kind: .counter, value: "\(answers)"),
            Metric(name: "disco_dns_services_in_panic", help: "Services whose healthy fraction is below their panic threshold in the current DNS view.",
                   kind: .gauge, value: "\(servicePublisher?.servicesInPanic ?? 0)"),
            Metric(name: "disco_dns_overload_shedding_workers",
                   help: "UDP workers in overload mode: queries waited too long in their queue, new ones are dropped at the door.",
                   kind: .gauge, value: "\(udp?.overloadSheddingWorkers ?? 0)"),
            Metric(name: "disco_dns_overload_episodes_total", help: "Times the server entered DNS overload mode.",
                   kind: .counter, value: "\(udp?.overloadEpisodes ?? 0)"),
            Metric(name: "disco_dns_udp_receive_queue_drops_total",
                   help: "Queries the kernel dropped because a UDP socket's receive queue was full (in overload mode, by design).",
                   kind: .counter, value: "\(udp?.receiveQueueDrops ?? 0)"),
            Metric(name: "disco_dns_view_age_seconds", help: "Seconds since the DNS view (zones and registry) was last replaced.",
                   kind: .gauge, value: "\(composer.viewStatus.ageSeconds)"),
            Metric(name: "disco_dns_view_publications_total", help: "DNS views published (zone reloads and registry rebuilds).",
                   kind: .counter, value: "\(composer.viewStatus.publications)"),
            Metric(name: "disco_dns_view_zones", help: "Zones in the DNS view, the registry's included.",
                   kind: .gauge, value: "\(composer.viewStatus.zones)"),
        ]
    }

    public func stop() {
        _ = disco_sd_notify("STOPPING=1")
        watchdog?.stop()
        watchdog = nil
        cluster?.stop()
        cluster = nil
        udp?.stop()
        tcp?.stop()
        try? group?.syncShutdownGracefully()
        udp = nil
        tcp = nil
        group = nil
    }
}

public struct StartError: Error, CustomStringConvertible {
    public var code: ExitCode
    public var message: String
    public var description: String { message }
}
