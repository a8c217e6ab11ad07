import Auth
import Cluster
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Health
import Raft
import RateLimit
import Registry
import Store

/// The HTTP API (SwiftNIO HTTP/1.1): Consul's KV, catalog, health and agent endpoints,
/// /v1/status, /ready, /health and /metrics. Writes are proposed through Raft and answered once
/// applied; a server that is not the leader forwards them (and default-consistency reads) to the
/// leader, or answers 503 when no leader is known.
public final class APIServer: @unchecked Sendable {
    // @unchecked: `channel` is written only by start()/stop() on the owner's thread.

    /// Request bodies above this get 413 (Consul's KV value limit is 512 KiB).
    public static let requestBodyBytesMax = KVCommand.valueBytesMax + 1024

    private let listen: PeerAddress
    private let group: EventLoopGroup
    private let router: APIRouter
    private let connections: ConnectionCounter
    private let httpMetrics = HTTPMetrics()
    private let uploads: UploadSlot
    private let logger: Logger
    private var channel: Channel?
    /// HTTPS (`tls.*`): the server context in force for each new connection; nil: HTTP.
    private let tls: ClusterTLS.Current?
    /// Writes a server's own catalog commands through the leader (Health, self-registration).
    public let proposer: CatalogProposer

    /// - Parameter extraMetrics: more Prometheus text lines for /metrics, from modules the API
    ///   does not import (the DNS servers' limits).
    /// - Parameter uploadDirectory: where snapshot uploads are written while they arrive (the
    ///   data directory; default the system's temporary directory).
    public init(listen: PeerAddress, group: EventLoopGroup, kv: KVStore, driver: RaftDriver, directory: ClusterDirectory,
                registry: RegistryContext? = nil, limits: HTTPLimits = HTTPLimits(),
                admission: WriteAdmission.Configuration = .init(), uploadDirectory: String? = nil,
                acl: ACLContext? = nil, tls: ClusterTLS.Current? = nil, extraMetrics: (@Sendable () -> [String])? = nil,
                logger: Logger) {
        self.tls = tls
        self.listen = listen
        self.logger = logger
        var uploadPath = uploadDirectory ?? FileManager.default.temporaryDirectory.path
        while uploadPath.count > 1 && uploadPath.hasSuffix("/") { uploadPath.removeLast() }
        self.uploads = UploadSlot(directory: uploadPath)
        self.group = group
        self.connections = ConnectionCounter(limits: limits)
        let gate = AdmissionGate(admission: WriteAdmission(admission), driver: driver, logger: logger)
        let forwarder = Forwarder(group: group, limits: limits, tls: tls)
        let httpMetrics = self.httpMetrics
        let admissionMetrics = { @Sendable in
            gate.metricLines + forwarder.metricLines + httpMetrics.lines + (extraMetrics?() ?? [])
        }
        let proposer = CatalogProposer(driver: driver, directory: directory, forwarder: forwarder, group: group,
                                       serverToken: acl?.serverToken)
        self.proposer = proposer
        self.router = APIRouter(kv: KVService(kv: kv, driver: driver, directory: directory, hub: registry?.hub ?? WatchHub(),
                                              gate: gate, logger: logger),
                                registry: registry.map {
                                    RegistryService(context: $0, driver: driver, proposer: proposer, gate: gate, loop: group.next(),
                                                    logger: logger)
                                },
                                                acl: acl.map { ACLService(context: $0, driver: driver) },
                                driver: driver, directory: directory, forwarder: forwarder, extraMetrics: admissionMetrics,
                                logger: logger)
    }

    /// - Parameter inheritedSocket: a listening socket systemd passed (socket activation),
    ///   served instead of binding `listen`.
    public func start(inheritedSocket: Int32? = nil) throws -> Int {
        let leftovers = SnapshotUploadFile.removeLeftovers(in: uploads.directory)
        if leftovers > 0 {
            logger.info("removed snapshot uploads left by an earlier run",
                        metadata: ["http.upload.files": "\(leftovers)", "http.upload.directory": "\(uploads.directory)"])
        }
        let router = self.router, connections = self.connections, uploads = self.uploads, tls = self.tls
        let httpMetrics = self.httpMetrics
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelOption(.backlog, value: Self.listenBacklog)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ConnectionGuard(counter: connections))
                    if let tls { try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls.tls.httpsServer)) }
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(HTTPHandler(router: router, uploads: uploads, metrics: httpMetrics))
                }
            }
        let channel = try (inheritedSocket.map { bootstrap.withBoundSocket($0) } ?? bootstrap.bind(host: listen.host, port: listen.port)).wait()
        self.channel = channel
        return channel.localAddress?.port ?? listen.port
    }

    /// Pending connections the kernel queues: a herd of agents reconnecting at once should wait
    /// in the queue, not be refused.
    public static let listenBacklog: Int32 = 1024

    public func stop() {
        try? channel?.close().wait()
        channel = nil
    }
}

/// Consul's X-Consul-KnownLeader and X-Consul-LastContact (milliseconds since this server last
/// heard from a leader; 0 on the leader), on every read.
func consulLeaderHeaders(_ status: RaftStatus) -> [(String, String)] {
    let contact = status.lastContact.map { "\($0.nanoseconds / 1_000_000)" } ?? "0"
    return [("X-Consul-KnownLeader", status.leader == nil ? "false" : "true"), ("X-Consul-LastContact", contact)]
}

/// A parsed request and the response the service builds for it.
struct APIRequest {
    var method: HTTPMethod
    /// The request target as received (path and query, still percent-encoded): what a forward sends.
    var uri: String = ""
    var path: String
    var query: [String: String]
    /// Every query parameter in order, for repeatable ones such as `?tag=`.
    var queryItems: [(String, String)] = []
    var headers: HTTPHeaders = HTTPHeaders()
    /// The client's IP address ("" if unknown).
    var remoteAddress: String = ""
    var body: [UInt8]
    /// A snapshot upload's body, on disk instead of in `body` (PUT /v1/snapshot).
    var bodyFile: SnapshotUploadFile? = nil
    /// What the request's token may do (set by the router; everything with ACLs off).
    var authorizer: Authorizer = .disabled

    /// Every value of a repeatable query parameter.
    func values(_ name: String) -> [String] { queryItems.filter { $0.0 == name }.map(\.1) }

    /// Whether another server forwarded this request (it is not forwarded again).
    var forwarded: Bool { headers.first(name: Forwarder.forwardedHeader) != nil }

    /// The HTTP client's address: the original client's for a forwarded request (the default
    /// address of an instance it registers, the key of its write admission bucket).
    var clientAddress: String {
        if forwarded, let address = headers.first(name: RegistryService.clientAddressHeader) { return address }
        return remoteAddress
    }
}

/// Sends each request where it belongs: forwarded to the leader if only the leader can serve it,
/// else to the registry or KV service, or answered here (status, readiness, metrics).
final class APIRouter: Sendable {
    /// A server that has not heard from a leader for longer than this reports itself stale in
    /// /ready (it keeps answering DNS from its last state). About 3 election timeouts.
    static let readyLastContactSecondsMax: Double = 3
    /// How long a forwarded write's answer waits for this server to apply it (read-your-writes);
    /// past it the answer goes out anyway (the write is committed; this server lags).
    static let readYourWritesWaitMillisecondsMax: Int64 = 1000

    let kv: KVService
    let registry: RegistryService?
    /// nil: no ACL state at all (tests that build an API without one); ACLs are then off.
    let acl: ACLService?
    let driver: RaftDriver
    let directory: ClusterDirectory
    let forwarder: Forwarder
    let extraMetrics: (@Sendable () -> [String])?
    let logger: Logger

    init(kv: KVService, registry: RegistryService?, acl: ACLService? = nil, driver: RaftDriver, directory: ClusterDirectory,
         forwarder: Forwarder, extraMetrics: (@Sendable () -> [String])? = nil, logger: Logger) {
        self.extraMetrics = extraMetrics
        self.acl = acl
        self.kv = kv
        self.registry = registry
        self.driver = driver
        self.directory = directory
        self.forwarder = forwarder
        self.logger = logger
    }

    /// Writes to the replicated state, and reads of it in the default consistency mode, are the
    /// leader's; agent reads, `?stale` and `?consistent` reads are served by any server.
    static func needsLeader(_ request: APIRequest) -> Bool {
        let path = request.path
        let agent = path.hasPrefix("/v1/agent/")
        guard path.hasPrefix("/v1/kv/") || path.hasPrefix("/v1/catalog/") || path.hasPrefix("/v1/health/") || agent
                || path.hasPrefix("/v1/acl/") else {
            return false
        }
        if request.method == .GET { return !agent && request.query["stale"] == nil && request.query["consistent"] == nil }
        return true
    }

    func handle(_ request: APIRequest, on loop: EventLoop) -> EventLoopFuture<APIResponse> {
        let status = driver.currentStatus
        switch request.path {
        case "/health": return loop.makeSucceededFuture(.text("ok", status: .ok))
        case "/ready": return loop.makeSucceededFuture(self.ready(status))
        case "/metrics":
            // With each follower's match index (the leader's view), read on the driver's loop.
            return self.driver.detailedStatus.hop(to: loop).map { self.metrics(status, detail: $0) }
                .recover { _ in self.metrics(status, detail: nil) }
        default: break
        }
        var request = request
        if let acl = self.acl {
            if let refusal = acl.context.posingAsServer(request) { return loop.makeSucceededFuture(.forbidden(refusal)) }
            guard let authorizer = acl.context.authorizer(for: request) else {
                // A token this server does not know yet (made a moment ago on the leader)
                // may be known there: a request the leader serves is decided by the leader.
                if Self.needsLeader(request) && status.role != .leader && !request.forwarded {
                    return self.forwardToLeader(request, status, on: loop)
                }
                return loop.makeSucceededFuture(.aclNotFound)
            }
            request.authorizer = authorizer
        }
        if let denied = Self.clusterEndpointDenial(request) { return loop.makeSucceededFuture(denied) }
        if request.path == CatalogProposer.path { return self.proposeFromPeer(request, status, on: loop) }
        // A TTL renewal goes to the server that runs the check, not to the leader: a renewal
        // that changes nothing is no log entry (Health).
        if let registry = self.registry, registry.isTTLRenewal(request) {
            if !request.forwarded, let owner = registry.renewalOwner(request), owner != self.driver.id {
                return self.forward(request, to: owner, toLeader: false, status, on: loop)
            }
            return registry.handle(request, status: status, on: loop)
        }
        if Self.needsLeader(request) && status.role != .leader {
            return self.forwardToLeader(request, status, on: loop)
        }
        if let registry = self.registry, RegistryService.owns(request.path) {
            return registry.handle(request, status: status, on: loop)
        }
        if request.path.hasPrefix("/v1/acl/"), let acl = self.acl { return acl.handle(request, status: status, on: loop) }
        return self.kv.route(request, status: status, on: loop)
    }

    /// The ACL check of the endpoints that act on the whole cluster: snapshots need `acl`
    /// write (Consul: a management token), the Raft configuration `operator` read, membership
    /// changes `operator` write, and a server's internal proposals a server's token.
    static func clusterEndpointDenial(_ request: APIRequest) -> APIResponse? {
        let auth = request.authorizer
        let path = request.path
        let needed: (ACLResource, ACLAccess)
        if path == "/v1/snapshot" {
            needed = (.acl, .write)
        } else if path == "/v1/operator/raft/configuration" {
            needed = (.operator, .read)
        } else if path.hasPrefix("/v1/operator/") {
            needed = (.operator, .write)
        } else if path == CatalogProposer.path {
            return auth.isManagement ? nil : .forbidden("Permission denied: only servers propose here")
        } else {
            return nil
        }
        return auth.allows(needed.0, "", needed.1) ? nil : .forbidden(auth.denial(needed.0, "", needed.1))
    }

    private func forwardToLeader(_ request: APIRequest, _ status: RaftStatus, on loop: EventLoop,
                                 waitedMilliseconds: Int64 = 0) -> EventLoopFuture<APIResponse> {
        guard !request.forwarded else {
            return loop.makeSucceededFuture(.text("No cluster leader", status: .serviceUnavailable,
                                                  headers: consulLeaderHeaders(status)))
        }
        guard let leader = status.leader else {
            // A follower that lost sight of the leader for a moment (a missed heartbeat under
            // load, an election) holds the request a little, as Consul's RPC hold does, instead
            // of turning a herd away with 503s.
            guard waitedMilliseconds < Self.leaderWaitMillisecondsMax else {
                return loop.makeSucceededFuture(.text("No cluster leader", status: .serviceUnavailable,
                                                      headers: consulLeaderHeaders(status)))
            }
            return loop.scheduleTask(in: .milliseconds(Self.leaderPollMilliseconds)) {}.futureResult.flatMap {
                self.forwardToLeader(request, self.driver.currentStatus, on: loop,
                                     waitedMilliseconds: waitedMilliseconds + Self.leaderPollMilliseconds)
            }
        }
        return forward(request, to: leader, toLeader: true, status, on: loop)
    }

    /// How long a request that needs the leader waits for one to be known before its 503
    /// (Consul's rpc_hold_timeout is 7 s; two election timeouts here are 1-2 s).
    static let leaderWaitMillisecondsMax: Int64 = 3000
    static let leaderPollMilliseconds: Int64 = 50

    /// Sends `request` to server `target` with its client's address, from which the agent
    /// endpoints there derive the client's node (an `X-Disco-Agent-Node` goes along as sent).
    private func forward(_ request: APIRequest, to target: NodeID, toLeader: Bool, _ status: RaftStatus,
                         on loop: EventLoop) -> EventLoopFuture<APIResponse> {
        guard !request.forwarded, let address = directory.http[target] else {
            return loop.makeSucceededFuture(.text("server \(target) is not reachable from here", status: .serviceUnavailable,
                                                  headers: consulLeaderHeaders(status)))
        }
        var extra = [(RegistryService.clientAddressHeader, request.remoteAddress)]
        if let acl, acl.context.serversAuthenticate { extra.append((ACLContext.serverTokenHeader, acl.context.serverToken)) }
        let wait = request.query["wait"].flatMap { JSONFields.parseDuration($0) }
            ?? (request.query["index"] != nil ? WatchHub.waitSecondsDefault : 0)
        let timeout = min(wait, WatchHub.waitSecondsMax) * (1 + WatchHub.jitterFraction) + Forwarder.responseTimeoutSecondsMin
        return forwarder.forward(request, to: address, toLeader: toLeader, blocking: wait > 0, extraHeaders: extra,
                                 timeoutSeconds: timeout, on: loop)
            .flatMap { response in
                // A write answered by the leader: hold the answer until this server has applied
                // it, so that the client's next (agent or stale) read here sees its own write.
                guard request.method != .GET, (200..<300).contains(Int(response.status.code)),
                      let index = response.headers.first(where: { $0.0.lowercased() == "x-consul-index" }).flatMap({ UInt64($0.1) })
                else { return loop.makeSucceededFuture(response) }
                return self.driver.waitApplied(LogIndex(index), timeout: .milliseconds(Self.readYourWritesWaitMillisecondsMax))
                    .hop(to: loop).map { response }.recover { _ in response }
            }
            .flatMapErrorThrowing { error in
                self.logger.debug("forwarding failed", metadata: ["http.error": "\(error)", "raft.server": "\(target)"])
                return .text("server \(target) (\(address)) could not be reached: \(error)", status: .serviceUnavailable,
                             headers: consulLeaderHeaders(status))
            }
    }

    /// Readiness: 200 while this server has a leader it heard from recently; else 503 and
    /// `"stale": true`. Either way DNS keeps answering from the last applied state.
    private func ready(_ status: RaftStatus) -> APIResponse {
        let contact = status.lastContact.map { Double($0.nanoseconds) / 1e9 }
        let fresh = status.leader != nil && (contact.map { $0 <= Self.readyLastContactSecondsMax } ?? false)
        var body: [String: Any] = [
            "ready": fresh, "stale": !fresh, "known_leader": status.leader != nil,
            "last_contact_seconds": contact.map { $0 as Any } ?? NSNull(),
            "raft_applied_index": status.appliedIndex.rawValue, "raft_commit_index": status.commitIndex.rawValue,
            "role": status.role.rawValue,
        ]
        if let registry { body["catalog_index"] = registry.context.catalog.state.index }
        return .json(body, status: fresh ? .ok : .serviceUnavailable)
    }

    /// Prometheus text exposition (version 0.0.4).
    private func metrics(_ status: RaftStatus, detail: Raft.Status?) -> APIResponse {
        var lines: [String] = []
        func gauge(_ name: String, _ help: String, _ value: String) {
            lines += Metric(name: name, help: help, kind: .gauge, value: value).lines
        }
        func counter(_ name: String, _ help: String, _ value: UInt64) {
            lines += Metric(name: name, help: help, kind: .counter, value: "\(value)").lines
        }
        let raft = driver.counters
        counter("disco_raft_leader_changes_total", "Leader changes this server has seen.", raft.leaderChanges)
        counter("disco_raft_proposals_refused_total", "Proposals refused here (not the leader, a change in progress, too many).",
                raft.proposalsRefused)
        counter("disco_raft_snapshots_taken_total", "Snapshots taken here (the log compacted).", raft.snapshotsTaken)
        counter("disco_raft_snapshots_installed_total", "Snapshots installed here from a leader.", raft.snapshotsInstalled)
        gauge("disco_raft_snapshot_bytes", "Size of the last snapshot taken or installed here.", "\(raft.lastSnapshotBytes)")
        func histogram(_ name: String, _ help: String, _ latency: RaftCounters.Latency) {
            lines += Metric.histogram(name, help: help, [("", Metric.Histogram(bounds: RaftCounters.Latency.boundsSeconds,
                                                                               counts: latency.counts, sum: latency.sumSeconds))])
        }
        histogram("disco_raft_persist_duration_seconds", "Time to make a Ready durable (log append and fsync in raft.db).", raft.persist)
        histogram("disco_raft_proposal_queue_seconds", "Proposals made here: time waiting for the Raft loop to take them.",
                  raft.proposalQueue)
        histogram("disco_raft_proposal_commit_seconds",
                  "Proposals made here: from reaching the Raft loop until the Ready that commits them (persist, replication, quorum).",
                  raft.proposalCommit)
        histogram("disco_raft_proposal_apply_seconds",
                  "Proposals made here: from the Ready that commits them until they are applied here and answered.", raft.proposalApply)
        if let detail, detail.role == .leader, !detail.progress.isEmpty {
            lines += Metric.family("disco_raft_peer_lag_entries", help: "Entries a server is behind the leader's last index (on the leader).",
                                   kind: .gauge, detail.progress.filter { $0.id != detail.id }.map { p in
                ("peer=\"\(p.id.rawValue)\"", "\(detail.lastIndex.rawValue - min(p.match.rawValue, detail.lastIndex.rawValue))")
            })
        }
        gauge("disco_raft_term", "Current Raft term.", "\(status.term.rawValue)")
        gauge("disco_raft_commit_index", "Highest log index known committed.", "\(status.commitIndex.rawValue)")
        gauge("disco_raft_applied_index", "Highest log index applied here.", "\(status.appliedIndex.rawValue)")
        gauge("disco_raft_leader", "1 if this server is the leader.", status.role == .leader ? "1" : "0")
        gauge("disco_raft_known_leader", "1 if this server knows a leader.", status.leader == nil ? "0" : "1")
        gauge("disco_raft_last_contact_seconds", "Seconds since this server last heard from a leader (+Inf: never).",
              status.lastContact.map { "\(Double($0.nanoseconds) / 1e9)" } ?? "+Inf")
        if let registry {
            let state = registry.context.catalog.state
            gauge("disco_catalog_index", "Last log index that changed the catalog.", "\(state.index)")
            gauge("disco_catalog_nodes", "Nodes in the catalog.", "\(state.nodes.count)")
            gauge("disco_catalog_services", "Service names with at least one instance.", "\(state.registeredServiceNames.count)")
            gauge("disco_catalog_instances", "Registered service instances.", "\(state.services.count)")
            var checks: [HealthStatus: Int] = [:]
            for check in state.checks.values { checks[check.value.status, default: 0] += 1 }
            lines += Metric.family("disco_catalog_checks", help: "Health checks in the catalog, by status.", kind: .gauge,
                                   [HealthStatus.passing, .warning, .critical].map { ("status=\"\($0.rawValue)\"", "\(checks[$0] ?? 0)") })
            gauge("disco_blocking_queries", "Blocking queries parked on this server.", "\(registry.context.hub.parkedCount)")
            let batches = registry.batcher.batchCounters
            lines += Metric(name: "disco_registry_write_entries_total", help: "Log entries proposed for client registry writes (a batch is one).",
                            kind: .counter, value: "\(batches.entries)").lines
            lines += Metric(name: "disco_registry_writes_proposed_total", help: "Client registry writes proposed, in those entries.",
                            kind: .counter, value: "\(batches.commands)").lines
            if let health = registry.context.health {
                let counters = health.counters
                gauge("disco_health_checks_owned", "Checks this server runs (it owns them).", "\(counters.checksOwned)")
                gauge("disco_health_checks_damped", "Checks held at their worst status by flap damping.", "\(counters.dampedNow)")
                func counter(_ name: String, _ help: String, _ value: Int) {
                    lines += ["# HELP \(name) \(help)", "# TYPE \(name) counter", "\(name) \(value)"]
                }
                counter("disco_health_probes_total", "HTTP and TCP probes started.", counters.probes)
                counter("disco_health_probes_failed_total", "HTTP and TCP probes whose result was warning or critical.",
                        counters.probesFailed)
                counter("disco_health_probes_skipped_total", "Probe rounds skipped at health.probes_inflight_max.",
                        counters.probesSkipped)
                counter("disco_health_transitions_total", "Check status transitions decided here.", counters.transitions)
                counter("disco_health_entries_total", "Log entries proposed for check transitions.", counters.entries)
                counter("disco_health_damped_total", "Times a check entered flap damping.", counters.dampedTotal)
                counter("disco_health_deregistrations_total", "Instances removed by DeregisterCriticalServiceAfter.",
                        counters.deregistrations)
                counter("disco_health_proposal_failures_total", "Transition entries that could not be written (retried).",
                        counters.proposalFailures)
                counter("disco_health_ownership_passes_total", "Passes deciding which checks this server runs.",
                        counters.ownershipPasses)
                counter("disco_health_checks_reconciled_total", "Checks looked at by those passes.", counters.checksReconciled)
            }
        }
        if let extraMetrics { lines += extraMetrics() }
        return APIResponse(status: .ok, headers: [("Content-Type", "text/plain; version=0.0.4")],
                           body: Array((lines.joined(separator: "\n") + "\n").utf8))
    }
}

/// One sample another module adds to /metrics.
public struct Metric: Sendable {
    public enum Kind: String, Sendable {
        case gauge, counter
    }

    public var name: String
    public var help: String
    public var kind: Kind
    public var value: String

    public init(name: String, help: String, kind: Kind, value: String) {
        self.name = name
        self.help = help
        self.kind = kind
        self.value = value
    }

    /// The sample in Prometheus text exposition (HELP, TYPE, value).
    public var lines: [String] { ["# HELP \(name) \(help)", "# TYPE \(name) \(kind.rawValue)", "\(name) \(value)"] }

    /// A family of labelled samples: HELP and TYPE once, then one line per sample. `labels`
    /// is the inside of the braces (`proto="udp",qtype="A"`).
    public static func family(_ name: String, help: String, kind: Kind, _ samples: [(labels: String, value: String)]) -> [String] {
        ["# HELP \(name) \(help)", "# TYPE \(name) \(kind.rawValue)"]
            + samples.map { $0.labels.isEmpty ? "\(name) \($0.value)" : "\(name){\($0.labels)} \($0.value)" }
    }

    /// A histogram family: per series its buckets (cumulative, +Inf last), sum and count.
    public static func histogram(_ name: String, help: String, _ series: [(labels: String, histogram: Histogram)]) -> [String] {
        var out = ["# HELP \(name) \(help)", "# TYPE \(name) histogram"]
        for (labels, histogram) in series {
            let prefix = labels.isEmpty ? "" : labels + ","
            var cumulative: UInt64 = 0
            for (i, count) in histogram.counts.enumerated() {
                cumulative &+= count
                let bound = i < histogram.bounds.count ? "\(histogram.bounds[i])" : "+Inf"
                out.append("\(name)_bucket{\(prefix)le=\"\(bound)\"} \(cumulative)")
            }
            let braces = labels.isEmpty ? "" : "{\(labels)}"
            out.append("\(name)_sum\(braces) \(histogram.sum)")
            out.append("\(name)_count\(braces) \(cumulative)")
        }
        return out
    }

    /// Observations by bucket (not cumulative): `counts[i]` for values up to `bounds[i]`, the
    /// last for values above every bound; and their sum.
    public struct Histogram: Sendable {
        public var bounds: [Double]
        public var counts: [UInt64]
        public var sum: Double

        public init(bounds: [Double], counts: [UInt64]? = nil, sum: Double = 0) {
            self.bounds = bounds
            self.counts = counts ?? Array(repeating: 0, count: bounds.count + 1)
            self.sum = sum
        }

        public mutating func record(_ value: Double) {
            counts[bounds.firstIndex { value <= $0 } ?? bounds.count] += 1
            sum += value
        }
    }
}

struct APIResponse {
    var status: HTTPResponseStatus
    var headers: [(String, String)] = []
    var body: [UInt8] = []

    /// `true` or `false`: every KV write's answer, spelled without JSONSerialization's casts.
    static func json(_ value: Bool, status: HTTPResponseStatus = .ok, headers: [(String, String)] = []) -> APIResponse {
        APIResponse(status: status, headers: [("Content-Type", "application/json")] + headers, body: Array((value ? "true" : "false").utf8))
    }

    static func json(_ value: Any, status: HTTPResponseStatus = .ok, headers: [(String, String)] = []) -> APIResponse {
        let data = (try? JSONSerialization.data(withJSONObject: value, options: [.fragmentsAllowed, .sortedKeys])) ?? Data()
        return APIResponse(status: status, headers: [("Content-Type", "application/json")] + headers, body: Array(data))
    }

    static func text(_ text: String, status: HTTPResponseStatus, headers: [(String, String)] = []) -> APIResponse {
        APIResponse(status: status, headers: [("Content-Type", "text/plain; charset=utf-8")] + headers,
                    body: Array((text + "\n").utf8))
    }
}

final class KVService: Sendable {
    let kv: KVStore
    let driver: RaftDriver
    let directory: ClusterDirectory
    let hub: WatchHub
    let gate: AdmissionGate
    let logger: Logger

    init(kv: KVStore, driver: RaftDriver, directory: ClusterDirectory, hub: WatchHub, gate: AdmissionGate, logger: Logger) {
        self.kv = kv
        self.driver = driver
        self.directory = directory
        self.hub = hub
        self.gate = gate
        self.logger = logger
    }

    /// Consul's X-Consul-Index of a KV read: the highest ModifyIndex of what it reads, else the
    /// store's; never 0.
    func index(of key: String, recurse: Bool) -> UInt64 {
        let entries = (try? kv.get(key, recurse: recurse)) ?? []
        return entries.map(\.modifyIndex).max() ?? max(kv.lastModifyIndex, 1)
    }

    /// `?index=N&wait=T`: parks the read until what it reads changes past N.
    func block(_ key: String, _ request: APIRequest, on loop: EventLoop) -> EventLoopFuture<Void> {
        let wanted = UInt64(request.query["index"] ?? "") ?? 0
        let waitSeconds = request.query["wait"].flatMap { JSONFields.parseDuration($0) } ?? WatchHub.waitSecondsDefault
        let recurse = request.query["recurse"] != nil || request.query["keys"] != nil
        return hub.wait(topic: recurse ? .kvPrefix(key) : .kvKey(key), index: wanted, waitSeconds: waitSeconds, on: loop) {
            self.index(of: key, recurse: recurse)
        }
    }

    func leaderHeaders(_ status: RaftStatus) -> [(String, String)] {
        var headers = consulLeaderHeaders(status)
        if let leader = status.leader, let http = directory.http[leader] { headers.append(("X-Disco-Leader", http.description)) }
        return headers
    }

    func notLeader(_ status: RaftStatus) -> APIResponse {
        let where_ = status.leader.flatMap { directory.http[$0] }.map { "leader is \($0)" } ?? "no leader is known"
        return .text("this server is not the leader; \(where_)", status: .serviceUnavailable, headers: leaderHeaders(status))
    }

    func route(_ request: APIRequest, status: RaftStatus, on loop: EventLoop) -> EventLoopFuture<APIResponse> {
        let parts = request.path.split(separator: "/", maxSplits: 2, omittingEmptySubsequences: true)
        if let response = clusterRoute(request, status: status, on: loop) { return response }
        if request.path == "/v1/status/leader" {
            let leader = status.leader.flatMap { directory.raft[$0] }.map(\.description) ?? ""
            return loop.makeSucceededFuture(.json(leader))
        }
        if request.path == "/v1/status/peers" {
            return loop.makeSucceededFuture(.json(directory.raft.sorted { $0.key < $1.key }.map(\.value.description)))
        }
        guard parts.count >= 2, parts[0] == "v1", parts[1].hasPrefix("kv") else {
            return loop.makeSucceededFuture(.text("no such endpoint: \(request.path)", status: .notFound))
        }
        let key = String(request.path.dropFirst("/v1/kv/".count))
        if let denied = Self.denial(request, key: key) { return loop.makeSucceededFuture(denied) }
        switch request.method {
        case .GET where request.query["consistent"] != nil:
            // ReadIndex: linearizable on any server (a follower asks the leader).
            return driver.linearizableRead().hop(to: loop).flatMap { self.block(key, request, on: loop) }.map { _ in
                self.read(key, request, status, confirmed: true)
            }.flatMapErrorThrowing { error in
                WatchHub.refusal(error) ?? .text("consistent read failed: \(error)", status: .serviceUnavailable,
                                                 headers: self.leaderHeaders(status))
            }
        case .GET:
            return block(key, request, on: loop).map { self.read(key, request, status) }.flatMapErrorThrowing { error in
                guard let refusal = WatchHub.refusal(error) else { throw error }
                return refusal
            }
        case .PUT: return write(key, request, status, on: loop)
        case .DELETE: return write(key, request, status, on: loop)
        default: return loop.makeSucceededFuture(.text("method not allowed", status: .methodNotAllowed))
        }
    }

    /// ACLs on a KV request: a single-key read needs `key` read on it, a write `key` write, a
    /// recursive delete write on everything under its prefix; recursive reads and key listings
    /// are filtered instead (`readable`).
    static func denial(_ request: APIRequest, key: String) -> APIResponse? {
        let auth = request.authorizer
        if auth.isManagement { return nil }
        let recurse = request.query["recurse"] != nil
        switch request.method {
        case .GET:
            if recurse || request.query["keys"] != nil { return nil }
            return auth.allows(.key, key, .read) ? nil : .forbidden(auth.denial(.key, key, .read))
        case .DELETE where recurse:
            return auth.allowsKeyWrite(underPrefix: key) ? nil : .forbidden(auth.denial(.key, key, .write))
        default:
            return auth.allows(.key, key, .write) ? nil : .forbidden(auth.denial(.key, key, .write))
        }
    }

    /// `?stale`: any server, from what it has applied. Default: the leader, from what it has
    /// applied (Consul's default mode: a deposed leader may briefly serve a stale value).
    /// `?consistent`: after a ReadIndex round (`confirmed`), any server, linearizable.
    private func read(_ key: String, _ request: APIRequest, _ status: RaftStatus, confirmed: Bool = false) -> APIResponse {
        if !confirmed && request.query["stale"] == nil && status.role != .leader { return notLeader(status) }
        let recurse = request.query["recurse"] != nil || request.query["keys"] != nil
        var entries: [KVEntry]
        do throws(StoreError) {
            entries = try kv.get(key, recurse: recurse)
        } catch {
            logger.error("KV read failed: \(error)")
            return .text("storage error", status: .internalServerError)
        }
        let index = entries.map(\.modifyIndex).max() ?? max(kv.lastModifyIndex, 1)  // as `index(of:recurse:)`
        var headers = [("X-Consul-Index", "\(index)")] + leaderHeaders(status)
        let auth = request.authorizer
        if recurse && !auth.isManagement {
            let readable = entries.filter { auth.allows(.key, $0.key, .read) }
            if readable.count < entries.count { headers.append(("X-Consul-Results-Filtered-By-ACLs", "true")) }
            entries = readable
        }
        guard !entries.isEmpty else { return APIResponse(status: .notFound, headers: headers) }
        if request.query["keys"] != nil {
            return .json(Self.keys(entries.map(\.key), prefix: key, separator: request.query["separator"] ?? ""), headers: headers)
        }
        if request.query["raw"] != nil {
            return APIResponse(status: .ok, headers: [("Content-Type", "application/octet-stream")] + headers, body: entries[0].value)
        }
        let json: [[String: Any]] = entries.map { entry in
            ["Key": entry.key, "Flags": entry.flags, "LockIndex": 0, "CreateIndex": entry.createIndex,
             "ModifyIndex": entry.modifyIndex,
             "Value": entry.value.isEmpty ? NSNull() : Data(entry.value).base64EncodedString() as Any]
        }
        return .json(json, headers: headers)
    }

    /// Consul's `?keys&separator=S`: each key under `prefix` up to and including the first S
    /// after the prefix, once (`tree/b/c`, `tree/b/d` → `tree/b/`).
    static func keys(_ keys: [String], prefix: String, separator: String) -> [String] {
        guard !separator.isEmpty else { return keys }
        var out: [String] = []
        for key in keys {
            let rest = key.dropFirst(prefix.count)
            let rolled = rest.range(of: separator).map { prefix + rest[..<$0.upperBound] } ?? key
            if out.last != rolled { out.append(rolled) }
        }
        return out
    }

    private func write(_ key: String, _ request: APIRequest, _ status: RaftStatus,
                       on loop: EventLoop) -> EventLoopFuture<APIResponse> {
        guard !key.isEmpty || request.method == .DELETE, key.utf8.count <= KVCommand.keyBytesMax else {
            return loop.makeSucceededFuture(.text("key: expected 1 to \(KVCommand.keyBytesMax) bytes", status: .badRequest))
        }
        func number(_ name: String) -> UInt64?? {
            guard let text = request.query[name] else { return .some(nil) }
            return UInt64(text).map { .some($0) } ?? nil
        }
        guard let cas = number("cas"), let flags = number("flags") else {
            return loop.makeSucceededFuture(.text("cas and flags: expected unsigned integers", status: .badRequest))
        }
        let command: KVCommand
        if request.method == .PUT {
            guard request.body.count <= KVCommand.valueBytesMax else {
                return loop.makeSucceededFuture(.text("value larger than \(KVCommand.valueBytesMax) bytes", status: .payloadTooLarge))
            }
            command = cas.map { .compareAndSet(key: key, value: request.body, flags: flags ?? 0, modifyIndex: $0) }
                ?? .put(key: key, value: request.body, flags: flags ?? 0)
        } else if request.query["recurse"] != nil {
            command = .deleteTree(prefix: key)
        } else {
            command = cas.map { .deleteIfModifyIndex(key: key, modifyIndex: $0) } ?? .delete(key: key)
        }
        guard status.role == .leader else { return loop.makeSucceededFuture(notLeader(status)) }
        if let refusal = gate.refusal(for: request) { return loop.makeSucceededFuture(refusal) }
        let answer = loop.makePromise(of: APIResponse.self)
        driver.propose(command.encoded, on: loop).whenComplete { result in
            switch result {
            case .success(let index):
                let applied = self.kv.outcome(at: index.rawValue) ?? false
                answer.succeed(.json(applied, headers: [("X-Consul-Index", "\(index.rawValue)")]))
            case .failure(ProposeError.refused(.notLeader)):
                answer.succeed(self.notLeader(status))
            case .failure(let error):
                answer.succeed(.text("write failed: \(error)", status: .serviceUnavailable))
            }
        }
        return answer.futureResult
    }
}

final class HTTPHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let router: APIRouter
    private let uploads: UploadSlot
    private var head: HTTPRequestHead?
    private var body: [UInt8] = []
    private var bodyBytes = 0
    /// The request was answered from its head (413, 429): the rest of it is discarded.
    private var answeredEarly = false
    private var bodyBytesMax = APIServer.requestBodyBytesMax
    /// This connection holds the upload slot, and its body goes to `upload`, not `body`.
    private var holdsUpload = false
    private var upload: SnapshotUploadFile?
    /// A whole request is with the router: what it uses is released after the answer, not
    /// when the client goes away (the restore may still be reading the upload).
    private var serving = false

    private let metrics: HTTPMetrics
    /// When the current request's head arrived (for the latency histogram).
    private var startedNanoseconds: UInt64 = 0

    init(router: APIRouter, uploads: UploadSlot, metrics: HTTPMetrics) {
        self.router = router
        self.uploads = uploads
        self.metrics = metrics
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
            startedNanoseconds = DispatchTime.now().uptimeNanoseconds
            body = []
            bodyBytes = 0
            answeredEarly = false
            bodyBytesMax = HTTPLimits.requestBodyBytesMax(method: head.method, uri: head.uri)
            // Decided from the head alone, before any of the body is buffered.
            if let length = head.headers.first(name: "Content-Length").flatMap({ Int($0) }), length > bodyBytesMax {
                answerEarly(context, head, .text("request body of \(length) bytes is over the \(bodyBytesMax)-byte limit of "
                                                 + "\(head.method) \(head.uri.prefix { $0 != "?" })", status: .payloadTooLarge))
            } else if head.method == .PUT && HTTPLimits.isSnapshot(head.uri) {
                startUpload(context, head)
            }
        case .body(let buffer):
            guard !answeredEarly else { return }
            bodyBytes += buffer.readableBytes
            if bodyBytes > bodyBytesMax {
                // A body without a Content-Length (chunked) that grows past the limit.
                if let head { answerEarly(context, head, .text("request body too large", status: .payloadTooLarge)) }
            } else if let upload {
                do throws(SnapshotUploadError) {
                    try upload.append(buffer)
                } catch {
                    if let head { answerEarly(context, head, Self.storageFailure(error)) }
                }
            } else {
                body += buffer.readableBytesView
            }
        case .end:
            guard let head, !answeredEarly else {
                self.head = nil
                return
            }
            self.head = nil
            let keepAlive = head.isKeepAlive
            context.triggerUserOutboundEvent(RequestProgress.received, promise: nil)
            let (path, items) = Self.split(head.uri)
            var query: [String: String] = [:]
            for (name, value) in items { query[name] = value }
            var request = APIRequest(method: head.method, uri: head.uri, path: path, query: query, queryItems: items,
                                     headers: head.headers, remoteAddress: clientAddress(context),
                                     body: body)
            request.bodyFile = upload
            body = []
            serving = true
            let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            router.handle(request, on: context.eventLoop).whenComplete { result in
                let (handler, context) = loopBound.value
                let response = (try? result.get()) ?? .text("internal error", status: .internalServerError)
                handler.serving = false
                handler.respond(context, response, head: head, keepAlive: keepAlive)
            }
        }
    }

    /// The client's IP address, formatted once per connection (`inet_ntop` is a `sprintf`).
    private var clientAddressText: String?

    private func clientAddress(_ context: ChannelHandlerContext) -> String {
        if let clientAddressText { return clientAddressText }
        let text = context.channel.remoteAddress?.ipAddress ?? ""
        clientAddressText = text
        return text
    }

    func channelInactive(context: ChannelHandlerContext) {
        // A client gone mid-body: its upload file and slot are given back now. One gone while
        // its request is served: after the answer (`respond` still runs).
        if !serving { endUpload() }
        context.fireChannelInactive()
    }

    /// PUT /v1/snapshot: takes the one upload slot and opens the body's file, or answers now.
    private func startUpload(_ context: ChannelHandlerContext, _ head: HTTPRequestHead) {
        guard uploads.acquire() else {
            let seconds = UploadSlot.busyRetryAfterSeconds
            answerEarly(context, head, .text("another snapshot upload is in progress; retry after \(seconds) s",
                                             status: .tooManyRequests, headers: [("Retry-After", "\(seconds)")]))
            return
        }
        holdsUpload = true
        do throws(SnapshotUploadError) {
            upload = try SnapshotUploadFile(directory: uploads.directory)
        } catch {
            answerEarly(context, head, Self.storageFailure(error))
        }
    }

    /// Removes the upload's file and gives the slot back (idempotent).
    private func endUpload() {
        upload?.remove()
        upload = nil
        if holdsUpload {
            holdsUpload = false
            uploads.release()
        }
    }

    static func storageFailure(_ error: SnapshotUploadError) -> APIResponse {
        .text("cannot store the snapshot upload: \(error)", status: error.isOutOfSpace ? .insufficientStorage : .internalServerError)
    }

    /// Answers from the head and closes: the rest of the request is never read into memory.
    private func answerEarly(_ context: ChannelHandlerContext, _ head: HTTPRequestHead, _ response: APIResponse) {
        answeredEarly = true
        body = []
        respond(context, response, head: head, keepAlive: false)
    }

    private func respond(_ context: ChannelHandlerContext, _ response: APIResponse, head: HTTPRequestHead, keepAlive: Bool) {
        endUpload()
        metrics.record(uri: head.uri, method: head.method, status: response.status,
                       seconds: Double(DispatchTime.now().uptimeNanoseconds - startedNanoseconds) / 1e9)
        var headers = HTTPHeaders(response.headers)
        headers.add(name: "Content-Length", value: "\(response.body.count)")
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: response.status, headers: headers))),
                      promise: nil)
        var buffer = context.channel.allocator.buffer(capacity: response.body.count)
        buffer.writeBytes(response.body)
        context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        context.triggerUserOutboundEvent(RequestProgress.answered, promise: nil)
        if !keepAlive {
            let channel = context.channel
            done.whenComplete { _ in channel.close(promise: nil) }
        }
    }

    /// `/v1/kv/a%20b?recurse&cas=3` → ("/v1/kv/a b", ["recurse": "", "cas": "3"]).
    static func split(_ uri: String) -> (String, [(String, String)]) {
        let pieces = uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
        let path = percentDecoded(pieces[0])
        var query: [(String, String)] = []
        if pieces.count > 1 {
            for pair in pieces[1].split(separator: "&") {
                let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                query.append((percentDecoded(kv[0]), kv.count > 1 ? percentDecoded(kv[1]) : ""))
            }
        }
        return (path, query)
    }

    /// Foundation's percent-decoding, asked only of text that has a `%` (most has none).
    private static func percentDecoded(_ text: Substring) -> String {
        let plain = String(text)
        guard text.utf8.contains(UInt8(ascii: "%")) else { return plain }
        return plain.removingPercentEncoding ?? plain
    }
}
