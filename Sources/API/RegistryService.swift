import Auth
import Cluster
import Foundation
import Health
import Logging
import NIOCore
import NIOHTTP1
import Raft
import Registry

/// What the registry endpoints need besides the driver: the catalog, the watchers, and this
/// server's own node (registered by `ServerUpkeep`; the agent endpoints act on the client's
/// host's node, `AgentNode`, and on this one only for a client whose address is unknown).
public struct RegistryContext: Sendable {
    public var catalog: Catalog
    public var hub: WatchHub
    public var nodeName: String
    public var nodeAddress: String
    public var datacenter: String
    /// The checks this server runs (nil: health checking is off here).
    public var health: HealthChecker?

    /// Consul's default datacenter name, which clients send in `?dc=` and expect back.
    public static let datacenterDefault = "dc1"

    public init(catalog: Catalog, hub: WatchHub, nodeName: String, nodeAddress: String,
                datacenter: String = RegistryContext.datacenterDefault, health: HealthChecker? = nil) {
        self.catalog = catalog
        self.hub = hub
        self.nodeName = nodeName
        self.nodeAddress = nodeAddress
        self.datacenter = datacenter
        self.health = health
    }
}

/// The Consul-compatible catalog, health and agent endpoints.
///
/// Reads come from the in-memory catalog; a read in the default mode runs on the leader (the
/// router forwards it), `?stale` on any server, `?consistent` after a ReadIndex round. Writes are
/// validated completely, become one `CatalogCommand` (so nothing is half-registered), and are
/// answered once applied on the leader.
final class RegistryService: @unchecked Sendable {
    // @unchecked: every stored property is immutable (the catalog and driver are thread-safe).

    /// Limits on what one registration may carry (Consul's meta limits).
    static let metaPairsMax = 64
    static let metaKeyBytesMax = 128
    static let metaValueBytesMax = 512
    static let tagsMax = 256
    static let nameBytesMax = 256
    static let checksPerRegistrationMax = 32
    /// SuccessBeforePassing and FailuresBefore* above this are refused (an hour of 1 s probes).
    static let checkThresholdMax = 3600

    /// The header a forwarding server adds with its client's IP address: the leader (or a TTL
    /// check's owner) derives the agent node from it. Honoured only on forwarded requests.
    static let clientAddressHeader = "X-Disco-Client-Address"
    /// The header a client sets to name its agent node itself (one DNS label) instead of the
    /// name derived from its address; forwarded as is.
    static let agentNodeHeader = "X-Disco-Agent-Node"

    let context: RegistryContext
    let driver: RaftDriver
    let gate: AdmissionGate
    let proposer: CatalogProposer
    /// Writes from clients go through it: those that arrive together share a log entry.
    let batcher: ProposalBatcher
    let logger: Logger

    /// Headers one check may send (Consul's `Header`), and values per header.
    static let checkHeadersMax = 64
    static let checkHeaderValuesMax = 16

    init(context: RegistryContext, driver: RaftDriver, proposer: CatalogProposer, gate: AdmissionGate, loop: EventLoop,
         logger: Logger) {
        self.context = context
        self.driver = driver
        self.proposer = proposer
        self.batcher = ProposalBatcher(loop: loop, propose: { driver.propose($0) })
        self.gate = gate
        self.logger = logger
    }

    static func owns(_ path: String) -> Bool {
        path.hasPrefix("/v1/agent/") || path.hasPrefix("/v1/catalog/") || path.hasPrefix("/v1/health/")
    }

    func handle(_ request: APIRequest, status: RaftStatus, on loop: EventLoop) -> EventLoopFuture<APIResponse> {
        let segments = request.path.split(separator: "/", omittingEmptySubsequences: true).dropFirst().map(String.init)
        do {
            return try route(request, segments, status, on: loop)
        } catch let error as BadRequest {
            return loop.makeSucceededFuture(.text(error.description, status: .badRequest))
        } catch {
            return loop.makeSucceededFuture(.text("\(error)", status: .internalServerError))
        }
    }

    // MARK: - Routing

    private func route(_ request: APIRequest, _ s: [String], _ status: RaftStatus,
                       on loop: EventLoop) throws -> EventLoopFuture<APIResponse> {
        let method = request.method
        let rest = { (from: Int) in s.dropFirst(from).joined(separator: "/") }
        func notFound() -> EventLoopFuture<APIResponse> {
            loop.makeSucceededFuture(.text("no such endpoint: \(request.path)", status: .notFound))
        }
        func needs(_ expected: HTTPMethod...) -> EventLoopFuture<APIResponse>? {
            expected.contains(method) ? nil : loop.makeSucceededFuture(.text("method \(method) not allowed on \(request.path)",
                                                                             status: .methodNotAllowed))
        }
        guard s.count >= 2 else { return notFound() }
        let auth = request.authorizer
        switch (s[0], s[1]) {
        case ("agent", "self"):
            let node = try agentNode(request).name
            if !auth.allows(.node, node, .read) { return loop.makeSucceededFuture(.forbidden(auth.denial(.node, node, .read))) }
            return try needs(.GET) ?? loop.makeSucceededFuture(agentSelf(request))
        case ("agent", "services"):
            return try needs(.GET) ?? loop.makeSucceededFuture(agentServices(request))
        case ("agent", "checks"):
            return try needs(.GET) ?? loop.makeSucceededFuture(agentChecks(request))
        case ("agent", "maintenance") where s.count == 2:
            return try needs(.PUT) ?? nodeMaintenance(request, on: loop)
        case ("agent", "service") where s.count >= 3:
            switch s[2] {
            case "register": return try needs(.PUT) ?? registerAgentService(request, on: loop)
            case "deregister" where s.count >= 4: return try needs(.PUT) ?? deregisterAgentService(rest(3), request, on: loop)
            case "maintenance" where s.count >= 4: return try needs(.PUT) ?? maintenance(rest(3), request, on: loop)
            default: return try needs(.GET) ?? loop.makeSucceededFuture(agentService(rest(2), request))
            }
        case ("agent", "check") where s.count >= 3:
            switch s[2] {
            case "register": return try needs(.PUT) ?? registerAgentCheck(request, on: loop)
            case "deregister" where s.count >= 4:
                return try needs(.PUT) ?? deregisterAgentCheck(rest(3), request, on: loop)
            case "pass" where s.count >= 4, "warn" where s.count >= 4, "fail" where s.count >= 4:
                let statusValue: HealthStatus = s[2] == "pass" ? .passing : s[2] == "warn" ? .warning : .critical
                return try needs(.PUT, .POST) ?? updateAgentCheck(rest(3), statusValue, request.query["note"] ?? "", request, on: loop)
            case "update" where s.count >= 4:
                let body = try JSONFields(body: request.body)
                guard let text = try body.string("Status") else { throw BadRequest(field: "Status", message: "missing") }
                guard let statusValue = HealthStatus(rawValue: text) else {
                    throw BadRequest(field: "Status", message: "expected passing, warning or critical")
                }
                let output = try body.string("Output") ?? ""
                return try needs(.PUT) ?? updateAgentCheck(rest(3), statusValue, output, request, on: loop)
            default: return notFound()
            }
        case ("agent", "health") where s.count >= 5 && s[2] == "service" && s[3] == "name":
            return try needs(.GET) ?? loop.makeSucceededFuture(agentHealth(rest(4), request))
        case ("catalog", "register"):
            return try needs(.PUT) ?? registerCatalog(request, on: loop)
        case ("catalog", "deregister"):
            return try needs(.PUT) ?? deregisterCatalog(request, on: loop)
        case ("catalog", "datacenters"):
            return needs(.GET) ?? loop.makeSucceededFuture(.json([context.datacenter]))
        case ("catalog", "services"):
            return needs(.GET) ?? read(request, status, topic: .catalog, index: { $0.servicesIndex }, on: loop) { state in
                auth.isManagement ? state.serviceNames : state.serviceNames.filter { auth.allows(.service, $0.key, .read) }
            }
        case ("catalog", "service") where s.count >= 3:
            let name = rest(2)
            let tags = request.values("tag")
            return needs(.GET) ?? read(request, status, topic: .service(name), index: { $0.modifyIndex(ofService: name) },
                                       on: loop) { state in
                state.instances(of: name, tags: tags).filter { Self.readable($0.value, auth) }.map { self.catalogServiceJSON($0, state) }
            }
        case ("catalog", "nodes"):
            return needs(.GET) ?? read(request, status, topic: .catalog, index: { max($0.nodesIndex, 1) }, on: loop) { state in
                state.nodes.values.filter { auth.allows(.node, $0.value.name, .read) }
                    .sorted { $0.value.name < $1.value.name }.map { self.nodeJSON($0) }
            }
        case ("catalog", "node") where s.count >= 3:
            let name = rest(2)
            return needs(.GET) ?? read(request, status, topic: .catalog, index: { max($0.index, 1) }, on: loop) { state in
                guard let node = state.nodes[name], auth.allows(.node, name, .read) else { return NSNull() }
                var services: [String: Any] = [:]
                for instance in state.services(onNode: name) where auth.allows(.service, instance.value.name, .read) {
                    services[instance.value.id] = self.healthServiceJSON(instance)
                }
                return ["Node": self.nodeJSON(node), "Services": services] as [String: Any]
            }
        case ("health", "service") where s.count >= 3:
            let name = rest(2)
            let tags = request.values("tag")
            let passingOnly = request.query["passing"].map { $0 != "false" && $0 != "0" } ?? false
            return needs(.GET) ?? read(request, status, topic: .service(name), index: { $0.modifyIndex(ofService: name) },
                                       on: loop) { state in
                state.instances(of: name, tags: tags).compactMap { instance -> [String: Any]? in
                    guard Self.readable(instance.value, auth) else { return nil }
                    let checks = state.checks(of: instance.value)
                    if passingOnly && checks.contains(where: { $0.value.status != .passing }) { return nil }
                    return ["Node": state.nodes[instance.value.node].map { self.nodeJSON($0) } ?? [:],
                            "Service": self.healthServiceJSON(instance),
                            "Checks": checks.map { self.checkJSON($0, state) }]
                }
            }
        case ("health", "checks") where s.count >= 3:
            let name = rest(2)
            return needs(.GET) ?? read(request, status, topic: .service(name), index: { $0.modifyIndex(ofService: name) },
                                       on: loop) { state in
                state.instances(of: name).filter { Self.readable($0.value, auth) }.flatMap { instance in
                    state.checks(onNode: instance.value.node).filter { $0.value.serviceID == instance.value.id }
                }.map { self.checkJSON($0, state) }
            }
        case ("health", "node") where s.count >= 3:
            let name = rest(2)
            return needs(.GET) ?? read(request, status, topic: .catalog, index: { max($0.index, 1) }, on: loop) { state in
                state.checks(onNode: name).filter { Self.readable($0.value, state, auth) }.map { self.checkJSON($0, state) }
            }
        case ("health", "state") where s.count >= 3:
            let wanted = s[2]
            guard wanted == "any" || HealthStatus(rawValue: wanted) != nil else {
                throw BadRequest(field: "state", message: "expected any, passing, warning or critical")
            }
            return needs(.GET) ?? read(request, status, topic: .catalog, index: { max($0.index, 1) }, on: loop) { state in
                state.checks.values.filter { wanted == "any" || $0.value.status.rawValue == wanted }
                    .filter { Self.readable($0.value, state, auth) }
                    .sorted { ($0.value.node, $0.value.id) < ($1.value.node, $1.value.id) }
                    .map { self.checkJSON($0, state) }
            }
        default:
            return notFound()
        }
    }

    // MARK: - Reads

    /// A catalog read: consistency mode, then the blocking wait, then the body with
    /// X-Consul-Index and the leader headers.
    private func read(_ request: APIRequest, _ status: RaftStatus, topic: WatchHub.Topic,
                      index: @escaping @Sendable (CatalogState) -> UInt64, on loop: EventLoop,
                      body: @escaping @Sendable (CatalogState) -> Any) -> EventLoopFuture<APIResponse> {
        let catalog = context.catalog
        let barrier: EventLoopFuture<Void> = request.query["consistent"] != nil
            ? driver.linearizableRead().hop(to: loop) : loop.makeSucceededVoidFuture()
        let wanted = UInt64(request.query["index"] ?? "") ?? 0
        let waitSeconds = request.query["wait"].flatMap { JSONFields.parseDuration($0) } ?? WatchHub.waitSecondsDefault
        return barrier.flatMap {
            self.context.hub.wait(topic: topic, index: wanted, waitSeconds: waitSeconds, on: loop) { index(catalog.state) }
        }.map {
            let state = catalog.state
            return .json(body(state), headers: [("X-Consul-Index", "\(index(state))")] + consulLeaderHeaders(status))
        }.flatMapErrorThrowing { error in
            WatchHub.refusal(error)
                ?? .text("consistent read failed: \(error)", status: .serviceUnavailable, headers: consulLeaderHeaders(status))
        }
    }

    /// The node the agent endpoints act on: the client's host (Disco has no agent per host; see
    /// `AgentNode`), named by the client in `X-Disco-Agent-Node` or else after its IP address.
    /// Whichever server takes the request, and whether it forwards it, the same client gets the
    /// same node: re-registering the same instance is the same (node, ID). An existing node at
    /// the same address is kept as it is (its meta, from a catalog registration). Only a client
    /// whose address is unknown (not an IP) falls back on this server's own node.
    private func agentNode(_ request: APIRequest) throws(BadRequest) -> NodeRecord {
        let address = request.clientAddress
        var node: NodeRecord
        if let name = request.headers.first(name: Self.agentNodeHeader) {
            guard AgentNode.isValidName(name) else {
                throw BadRequest(field: Self.agentNodeHeader,
                                 message: "expected one DNS label of letters, digits, '-' and '_' (at most 63 bytes)")
            }
            node = NodeRecord(name: name, address: AgentNode.canonicalAddress(address) ?? address)
        } else if let derived = AgentNode.record(forClientAddress: address) {
            node = derived
        } else {
            node = NodeRecord(name: context.nodeName, address: context.nodeAddress)
        }
        if let existing = context.catalog.state.nodes[node.name]?.value, existing.address == node.address { node = existing }
        return node
    }

    /// The HTTP client's address (the default address of an instance it registers, and what
    /// its agent node is named after): the original client's for a forwarded request.

    /// Consul's agent self: the agent is the client's host node; `Server` says a server answered.
    private func agentSelf(_ request: APIRequest) throws(BadRequest) -> APIResponse {
        let node = try agentNode(request)
        return .json(["Config": ["Datacenter": context.datacenter, "NodeName": node.name, "NodeID": "",
                                 "Server": true, "Version": "disco", "Revision": ""],
                      "Member": ["Name": node.name, "Addr": node.address, "Status": 1, "Tags": ["role": "consul"]],
                      "Meta": [:] as [String: String]])
    }

    private func agentServices(_ request: APIRequest) throws(BadRequest) -> APIResponse {
        let node = try agentNode(request).name
        let state = context.catalog.state
        var out: [String: Any] = [:]
        for instance in state.services(onNode: node) where request.authorizer.allows(.service, instance.value.name, .read) {
            out[instance.value.id] = agentServiceJSON(instance.value)
        }
        return .json(out, headers: [("X-Consul-Index", "\(max(state.index, 1))")])
    }

    private func agentService(_ id: String, _ request: APIRequest) throws(BadRequest) -> APIResponse {
        let node = try agentNode(request).name
        let state = context.catalog.state
        guard let instance = state.services[NodeScopedID(node: node, id: id)] else {
            return .text("unknown service ID: \(id)", status: .notFound)
        }
        guard request.authorizer.allows(.service, instance.value.name, .read) else {
            return .forbidden(request.authorizer.denial(.service, instance.value.name, .read))
        }
        var json = agentServiceJSON(instance.value)
        json["ContentHash"] = "\(instance.modifyIndex)"
        return .json(json, headers: [("X-Consul-Index", "\(max(state.modifyIndex(ofService: instance.value.name), 1))")])
    }

    private func agentChecks(_ request: APIRequest) throws(BadRequest) -> APIResponse {
        let node = try agentNode(request).name
        let state = context.catalog.state
        var out: [String: Any] = [:]
        for check in state.checks(onNode: node) where Self.readable(check.value, state, request.authorizer) {
            out[check.value.id] = checkJSON(check, state)
        }
        return .json(out, headers: [("X-Consul-Index", "\(max(state.index, 1))")])
    }

    /// Consul's agent health endpoint: 200 all passing, 429 some warning, 503 some critical.
    private func agentHealth(_ name: String, _ request: APIRequest) throws(BadRequest) -> APIResponse {
        let node = try agentNode(request).name
        let state = context.catalog.state
        guard request.authorizer.allows(.service, name, .read) else { return .forbidden(request.authorizer.denial(.service, name, .read)) }
        let instances = state.services(onNode: node).filter { $0.value.name == name }
        guard !instances.isEmpty else { return .text("ServiceName \(name) Not Found", status: .notFound) }
        var worst = HealthStatus.passing
        let body: [[String: Any]] = instances.map { instance in
            let health = state.health(of: instance.value)
            worst = max(worst, health)
            return ["AggregatedStatus": health.rawValue, "Service": agentServiceJSON(instance.value),
                    "Checks": state.checks(of: instance.value).map { checkJSON($0, state) }]
        }
        let code: HTTPResponseStatus = switch worst {
        case .passing: .ok
        case .warning: .tooManyRequests
        case .critical: .serviceUnavailable
        }
        if request.query["format"] == "text" { return .text(worst.rawValue, status: code) }
        return .json(body, status: code)
    }

    // MARK: - Writes

    private func registerAgentService(_ request: APIRequest, on loop: EventLoop) throws -> EventLoopFuture<APIResponse> {
        let body = try JSONFields(body: request.body)
        let node = try agentNode(request)
        var service = try parseService(body, node: node.name, nameKeys: ["Name"])
        if service.address.isEmpty { service.address = request.clientAddress }
        // The server that first wrote it, kept as it is so that re-registering through another
        // server, or under another leader, stays a no-op.
        service.registeredBy = context.catalog.state.services[NodeScopedID(node: node.name, id: service.id)]?.value.registeredBy
            ?? context.nodeName
        var definitions: [JSONFields] = []
        if let check = try body.object("Check") { definitions.append(check) }
        definitions += try body.objects("Checks") ?? []
        guard definitions.count <= Self.checksPerRegistrationMax else {
            throw BadRequest(field: "Checks", message: "at most \(Self.checksPerRegistrationMax) checks per registration")
        }
        var registrations: [CheckRegistration] = []
        for (i, definition) in definitions.enumerated() {
            let defaultID = definitions.count == 1 ? "service:\(service.id)" : "service:\(service.id):\(i + 1)"
            registrations.append(try parseCheck(definition, node: service.node, serviceID: service.id,
                                                defaultID: defaultID, defaultName: "Service '\(service.name)' check",
                                                requireType: true))
        }
        let replace = request.query["replace-existing-checks"].map { $0 != "false" && $0 != "0" } ?? false
        let command = CatalogCommand.register(node: node, service: service, checks: registrations,
                                              replaceChecks: replace)
        return commit(command, for: request, on: loop) { _ in APIResponse(status: .ok) }
    }

    private func deregisterAgentService(_ id: String, _ request: APIRequest,
                                        on loop: EventLoop) throws(BadRequest) -> EventLoopFuture<APIResponse> {
        let key = NodeScopedID(node: try agentNode(request).name, id: id)
        return unlessUnknown({ $0.services[key] != nil }, "Unknown service ID \"\(id)\"", on: loop) {
            self.commit(.deregister(node: key.node, serviceID: id, checkID: nil), for: request, on: loop) { _ in APIResponse(status: .ok) }
        }
    }

    /// `?enable=`, read as Go's strconv.ParseBool (what Consul does): 1 t T TRUE true True, 0 f F FALSE false False.
    private func enableParameter(_ request: APIRequest) throws(BadRequest) -> Bool {
        guard let enable = request.query["enable"].flatMap(JSONFields.parseBool) else {
            throw BadRequest(field: "enable", message: "expected ?enable=true or ?enable=false")
        }
        return enable
    }

    /// Consul's node maintenance: a critical `_node_maintenance` check on this agent's node (the
    /// client's host), which takes every instance on it out of DNS and passing health queries.
    private func nodeMaintenance(_ request: APIRequest, on loop: EventLoop) throws -> EventLoopFuture<APIResponse> {
        let enable = try enableParameter(request)
        let node = try agentNode(request)
        let command: CatalogCommand
        if enable {
            command = .register(node: node, service: nil, checks: [CheckRegistration(
                CheckRecord(id: nodeMaintenanceCheckID, node: node.name, name: "Node Maintenance Mode", status: .critical,
                            notes: request.query["reason"] ?? "Maintenance mode is enabled for this node"),
                statusGiven: true)], replaceChecks: false)
        } else {
            command = .deregister(node: node.name, serviceID: nil, checkID: nodeMaintenanceCheckID)
        }
        return commit(command, for: request, on: loop) { _ in APIResponse(status: .ok) }
    }

    private func maintenance(_ id: String, _ request: APIRequest, on loop: EventLoop) throws -> EventLoopFuture<APIResponse> {
        let enable = try enableParameter(request)
        let node = try agentNode(request)
        let checkID = maintenanceCheckPrefix + id
        let command: CatalogCommand = enable
            ? .register(node: node, service: nil, checks: [CheckRegistration(
                CheckRecord(id: checkID, node: node.name, name: "Service Maintenance Mode", serviceID: id, status: .critical,
                            notes: request.query["reason"] ?? "Maintenance mode is enabled for this service"),
                statusGiven: true)], replaceChecks: false)
            : .deregister(node: node.name, serviceID: nil, checkID: checkID)
        let key = NodeScopedID(node: node.name, id: id)
        return unlessUnknown({ $0.services[key] != nil }, "Unknown service ID \"\(id)\"", on: loop) {
            self.commit(command, for: request, on: loop) { _ in APIResponse(status: .ok) }
        }
    }

    private func registerAgentCheck(_ request: APIRequest, on loop: EventLoop) throws -> EventLoopFuture<APIResponse> {
        let body = try JSONFields(body: request.body)
        let node = try agentNode(request)
        let serviceID = try body.string("ServiceID") ?? ""
        if !serviceID.isEmpty && context.catalog.state.services[NodeScopedID(node: node.name, id: serviceID)] == nil {
            throw BadRequest(field: "ServiceID", message: "no service \"\(serviceID)\" is registered on node \(node.name)")
        }
        guard let name = try body.string("Name"), !name.isEmpty else { throw BadRequest(field: "Name", message: "missing") }
        let registration = try parseCheck(body, node: node.name, serviceID: serviceID, defaultID: name, defaultName: name,
                                          requireType: true)
        return commit(.register(node: node, service: nil, checks: [registration], replaceChecks: false), for: request, on: loop) { _ in
            APIResponse(status: .ok)
        }
    }

    private func deregisterAgentCheck(_ id: String, _ request: APIRequest,
                                      on loop: EventLoop) throws(BadRequest) -> EventLoopFuture<APIResponse> {
        let key = NodeScopedID(node: try agentNode(request).name, id: id)
        return unlessUnknown({ $0.checks[key] != nil }, "Unknown check ID \"\(id)\"", on: loop) {
            self.commit(.deregister(node: key.node, serviceID: nil, checkID: id), for: request, on: loop) { _ in APIResponse(status: .ok) }
        }
    }

    /// `PUT /v1/agent/check/pass|warn|fail|update/ID` of a TTL check, with health checking on:
    /// the server that runs the check takes it (the router sends it there, not to the leader).
    func isTTLRenewal(_ request: APIRequest) -> Bool {
        renewedCheck(request) != nil
    }

    /// The check a TTL renewal is for, if `request` is one.
    private func renewedCheck(_ request: APIRequest) -> NodeScopedID? {
        guard context.health != nil, request.path.hasPrefix("/v1/agent/check/") else { return nil }
        let s = request.path.split(separator: "/", omittingEmptySubsequences: true).dropFirst().map(String.init)
        guard s.count >= 4, ["pass", "warn", "fail", "update"].contains(s[2]) else { return nil }
        // The same node whichever server the renewal reached (the client's), so the owner is too.
        guard let node = try? agentNode(request) else { return nil }
        let key = NodeScopedID(node: node.name, id: s.dropFirst(3).joined(separator: "/"))
        guard let definition = context.catalog.state.checks[key]?.value.definition, definition.http == nil,
              definition.tcp == nil, definition.ttlSeconds != nil else { return nil }
        return key
    }

    /// The server that runs a renewed TTL check (nil: none yet; this server takes it).
    func renewalOwner(_ request: APIRequest) -> NodeID? {
        guard let key = renewedCheck(request), let owner = context.health?.owner(node: key.node, checkID: key.id) else { return nil }
        return NodeID(rawValue: owner)
    }

    private func updateAgentCheck(_ id: String, _ status: HealthStatus, _ output: String, _ request: APIRequest,
                                  on loop: EventLoop) throws(BadRequest) -> EventLoopFuture<APIResponse> {
        let node = try agentNode(request).name
        let key = NodeScopedID(node: node, id: id)
        return unlessUnknown({ $0.checks[key] != nil }, "Unknown check ID \"\(id)\"", on: loop) {
            self.updateKnownCheck(key, status, output, request, on: loop)
        }
    }

    /// A check update once the check is known to exist (after a barrier if it was not found here).
    private func updateKnownCheck(_ key: NodeScopedID, _ status: HealthStatus, _ output: String, _ request: APIRequest,
                                  on loop: EventLoop) -> EventLoopFuture<APIResponse> {
        let (node, id) = (key.node, key.id)
        guard let check = context.catalog.state.checks[key]?.value else {
            return loop.makeSucceededFuture(.text("Unknown check ID \"\(id)\"", status: .notFound))
        }
        let command = CatalogCommand.updateCheck(node: node, checkID: id, status: status, output: output)
        if let denied = Self.denial(command, context.catalog.state, request) { return loop.makeSucceededFuture(denied) }
        guard let health = context.health, check.definition.ttlSeconds != nil else {
            if context.health != nil, check.definition.http != nil || check.definition.tcp != nil {
                // Consul refuses too: the server that runs the check sets its status.
                return loop.makeSucceededFuture(.text("CheckID \"\(id)\" does not have associated TTL", status: .badRequest))
            }
            return commit(command, for: request, on: loop) { _ in APIResponse(status: .ok) }
        }
        // A TTL renewal: the owner decides, and only a transition is a log entry.
        return health.renew(node: node, checkID: id, status: status, output: output).hop(to: loop).flatMap { outcome in
            switch outcome {
            case .unchanged:
                return loop.makeSucceededFuture(APIResponse(status: .ok))
            case .committed(let index):
                return loop.makeSucceededFuture(APIResponse(status: .ok, headers: [("X-Consul-Index", "\(index)")]))
            case .notOwned:
                // No server runs it yet (or ownership is moving): the log decides, after a read
                // barrier, so the answer never rests on a stale local state.
                return self.driver.linearizableRead().hop(to: loop).flatMap { () -> EventLoopFuture<APIResponse> in
                    guard self.context.catalog.state.checks[NodeScopedID(node: node, id: id)]?.value.status != status else {
                        return loop.makeSucceededFuture(APIResponse(status: .ok))
                    }
                    return self.proposer.propose(command).hop(to: loop).map { index in
                        APIResponse(status: .ok, headers: [("X-Consul-Index", "\(index)")])
                    }
                }
            }
        }.flatMapErrorThrowing { error in
            .text("the check's status could not be written: \(error)", status: .serviceUnavailable)
        }
    }

    private func registerCatalog(_ request: APIRequest, on loop: EventLoop) throws -> EventLoopFuture<APIResponse> {
        let body = try JSONFields(body: request.body)
        guard let nodeName = try body.string("Node"), !nodeName.isEmpty else { throw BadRequest(field: "Node", message: "missing") }
        guard nodeName.utf8.count <= Self.nameBytesMax else {
            throw BadRequest(field: "Node", message: "longer than \(Self.nameBytesMax) bytes")
        }
        var node = NodeRecord(name: nodeName, address: try body.string("Address") ?? "",
                              meta: try parseMeta(body, "NodeMeta"))
        if try body.boolean("SkipNodeUpdate") == true, let existing = context.catalog.state.nodes[nodeName] {
            node = existing.value
        }
        guard !node.address.isEmpty else { throw BadRequest(field: "Address", message: "missing") }
        var service: ServiceInstance?
        if let definition = try body.object("Service") {
            service = try parseService(definition, node: nodeName, nameKeys: ["Service", "Name"])
        }
        var definitions: [JSONFields] = []
        if let check = try body.object("Check") { definitions.append(check) }
        definitions += try body.objects("Checks") ?? []
        var registrations: [CheckRegistration] = []
        for definition in definitions {
            let serviceID = try definition.string("ServiceID") ?? ""
            guard let name = try definition.string("Name"), !name.isEmpty else {
                throw BadRequest(field: definition.path + ".Name", message: "missing")
            }
            if !serviceID.isEmpty && serviceID != service?.id
                && context.catalog.state.services[NodeScopedID(node: nodeName, id: serviceID)] == nil {
                throw BadRequest(field: definition.path + ".ServiceID", message: "no service \"\(serviceID)\" on node \(nodeName)")
            }
            registrations.append(try parseCheck(definition, node: nodeName, serviceID: serviceID, defaultID: name,
                                                defaultName: name, requireType: false))
        }
        return commit(.register(node: node, service: service, checks: registrations, replaceChecks: false), for: request, on: loop) { _ in
            .json(true)
        }
    }

    private func deregisterCatalog(_ request: APIRequest, on loop: EventLoop) throws -> EventLoopFuture<APIResponse> {
        let body = try JSONFields(body: request.body)
        guard let node = try body.string("Node"), !node.isEmpty else { throw BadRequest(field: "Node", message: "missing") }
        let command = CatalogCommand.deregister(node: node, serviceID: try body.string("ServiceID"),
                                                checkID: try body.string("CheckID"))
        return commit(command, for: request, on: loop) { _ in .json(true) }
    }

    /// Proposes `command` and answers once it has applied here (the leader).
    ///
    /// A command that would change nothing (an agent re-registering what is already there) is
    /// answered without a log entry, so a re-registration storm costs no writes, but only after a
    /// ReadIndex barrier: the leader has committed an entry of its own term, confirmed with a
    /// quorum that it still leads, and applied everything committed before the request came in.
    /// Only then is "nothing to change" a promise that survives a leader change. Without the
    /// barrier (issue 11, scenario 1):
    ///   1. leader L1 acknowledges `deregister X` and dies;
    ///   2. L2 is elected holding that entry but not yet knowing it committed (its own no-op is
    ///      not committed), so its catalog still has X;
    ///   3. `register X` reaches L2, looks like a no-op, and is acknowledged at once;
    ///   4. L2 commits its no-op, applies the deregister, and the acknowledged registration is gone.
    /// A deposed leader that has not yet heard of its successor has the same window.
    /// (`RegistryProcessTests.aNoOpWriteOnANewLeaderWaitsForItsTerm` replays it.)
    private func commit(_ command: CatalogCommand, for request: APIRequest, on loop: EventLoop,
                        _ respond: @escaping @Sendable (UInt64) -> APIResponse) -> EventLoopFuture<APIResponse> {
        if let denied = Self.denial(command, context.catalog.state, request) { return loop.makeSucceededFuture(denied) }
        guard !context.catalog.state.wouldChange(command) else { return propose(command, for: request, on: loop, respond) }
        return driver.linearizableRead().hop(to: loop).flatMap { () -> EventLoopFuture<APIResponse> in
            // The barrier applied everything committed before it: decide again on that state.
            let state = self.context.catalog.state
            guard !state.wouldChange(command) else { return self.propose(command, for: request, on: loop, respond) }
            var response = respond(state.index)
            response.headers.append(("X-Consul-Index", "\(state.index)"))
            return loop.makeSucceededFuture(response)
        }.flatMapErrorThrowing { error in self.writeFailure(error) }
    }

    // MARK: - ACLs

    /// A service instance is shown to a token that may read both the service and its node
    /// (Consul filters catalog and health reads by both).
    static func readable(_ instance: ServiceInstance, _ auth: Authorizer) -> Bool {
        auth.isManagement || (auth.allows(.service, instance.name, .read) && auth.allows(.node, instance.node, .read))
    }

    /// A check is shown with its service's read permission, a node check with its node's.
    static func readable(_ check: CheckRecord, _ state: CatalogState, _ auth: Authorizer) -> Bool {
        if auth.isManagement { return true }
        if !check.serviceID.isEmpty, let service = state.services[NodeScopedID(node: check.node, id: check.serviceID)] {
            return readable(service.value, auth)
        }
        return auth.allows(.node, check.node, .read)
    }

    /// The 403 for a write the request's token may not make, as Consul decides it: `service`
    /// write for a service and its checks, `node` write for a node's own record (a new or changed
    /// node through the catalog; the agent endpoints' node is the client's own host, as Consul's
    /// agent is) and for node checks. Server-only commands need a server (management).
    static func denial(_ command: CatalogCommand, _ state: CatalogState, _ request: APIRequest) -> APIResponse? {
        let auth = request.authorizer
        if auth.isManagement { return nil }
        func need(_ resource: ACLResource, _ name: String) -> APIResponse? {
            auth.allows(resource, name, .write) ? nil : .forbidden(auth.denial(resource, name, .write))
        }
        func serviceName(_ node: String, _ id: String) -> String? { state.services[NodeScopedID(node: node, id: id)]?.value.name }
        func check(_ node: String, _ serviceID: String, registering service: ServiceInstance? = nil) -> APIResponse? {
            if serviceID.isEmpty { return need(.node, node) }
            if let service, service.id == serviceID { return need(.service, service.name) }
            return serviceName(node, serviceID).map { need(.service, $0) } ?? need(.node, node)
        }
        switch command {
        case .register(let node, let service, let checks, _):
            let agent = request.path.hasPrefix("/v1/agent/")
            if !agent, state.nodes[node.name]?.value != node, let denied = need(.node, node.name) { return denied }
            if let service, let denied = need(.service, service.name) { return denied }
            for registration in checks {
                if let denied = check(node.name, registration.check.serviceID, registering: service) { return denied }
            }
            return nil
        case .deregister(let node, let serviceID?, _):
            return serviceName(node, serviceID).map { need(.service, $0) } ?? need(.node, node)
        case .deregister(let node, nil, let checkID?):
            return check(node, state.checks[NodeScopedID(node: node, id: checkID)]?.value.serviceID ?? "")
        case .deregister(let node, nil, nil):
            return need(.node, node)
        case .updateCheck(let node, let checkID, _, _):
            return check(node, state.checks[NodeScopedID(node: node, id: checkID)]?.value.serviceID ?? "")
        case .checkStatuses, .checkRunners, .batch:
            return .forbidden("Permission denied: only servers write this")
        }
    }

    /// Answers `respond(...)` when `exists` holds on the local catalog, and otherwise only once a
    /// ReadIndex barrier has confirmed it still does not: a 404 from a new leader that has not
    /// applied its predecessor's last writes would deny a registration a client was told of.
    private func unlessUnknown(_ exists: @escaping @Sendable (CatalogState) -> Bool, _ notFound: String, on loop: EventLoop,
                               _ then: @escaping @Sendable () -> EventLoopFuture<APIResponse>) -> EventLoopFuture<APIResponse> {
        if exists(context.catalog.state) { return then() }
        return driver.linearizableRead().hop(to: loop).flatMap { () -> EventLoopFuture<APIResponse> in
            exists(self.context.catalog.state) ? then() : loop.makeSucceededFuture(.text(notFound, status: .notFound))
        }.flatMapErrorThrowing { error in self.writeFailure(error) }
    }

    /// Proposes `command`, if write admission lets `request` through (else its 429).
    private func propose(_ command: CatalogCommand, for request: APIRequest, on loop: EventLoop,
                         _ respond: @escaping @Sendable (UInt64) -> APIResponse) -> EventLoopFuture<APIResponse> {
        if let refusal = gate.refusal(for: request) { return loop.makeSucceededFuture(refusal) }
        return batcher.submit(command).hop(to: loop).map { index in
            var response = respond(index.rawValue)
            response.headers.append(("X-Consul-Index", "\(index.rawValue)"))
            return response
        }.flatMapErrorThrowing { error in self.writeFailure(error) }
    }

    /// A write that did not complete, as the client's 503 (it may retry).
    private func writeFailure(_ error: Error) -> APIResponse {
        if case ProposeError.refused(.notLeader) = error {
            return .text("No cluster leader (this server lost leadership)", status: .serviceUnavailable)
        }
        return .text("write failed: \(error)", status: .serviceUnavailable)
    }

    // MARK: - Parsing

    private func parseService(_ body: JSONFields, node: String, nameKeys: [String]) throws(BadRequest) -> ServiceInstance {
        var name: String?
        for key in nameKeys where name == nil { name = try body.string(key) }
        guard let name, !name.isEmpty else {
            throw BadRequest(field: body.path.isEmpty ? nameKeys[0] : "\(body.path).\(nameKeys[0])", message: "missing (the service name)")
        }
        guard name.utf8.count <= Self.nameBytesMax else { throw BadRequest(field: nameKeys[0], message: "longer than \(Self.nameBytesMax) bytes") }
        let id = try body.string("ID") ?? name
        guard !id.isEmpty, !id.contains("/") else { throw BadRequest(field: "ID", message: "expected a non-empty ID without '/'") }
        let tags = try body.strings("Tags") ?? []
        guard tags.count <= Self.tagsMax else { throw BadRequest(field: "Tags", message: "at most \(Self.tagsMax) tags") }
        var weights = Weights.default
        if let object = try body.object("Weights") {
            weights.passing = try object.integer("Passing", in: 0...65535) ?? 1
            weights.warning = try object.integer("Warning", in: 0...65535) ?? 1
        }
        return ServiceInstance(id: id, node: node, name: name, tags: tags, address: try body.string("Address") ?? "",
                               port: try body.integer("Port", in: 0...65535) ?? 0, meta: try parseMeta(body, "Meta"),
                               weights: weights, enableTagOverride: try body.boolean("EnableTagOverride") ?? false)
    }

    private func parseMeta(_ body: JSONFields, _ key: String) throws(BadRequest) -> [String: String] {
        let meta = try body.stringMap(key) ?? [:]
        guard meta.count <= Self.metaPairsMax else { throw BadRequest(field: key, message: "at most \(Self.metaPairsMax) pairs") }
        for (k, v) in meta {
            guard !k.isEmpty, k.utf8.count <= Self.metaKeyBytesMax else {
                throw BadRequest(field: "\(key).\(k)", message: "keys are 1 to \(Self.metaKeyBytesMax) bytes")
            }
            guard v.utf8.count <= Self.metaValueBytesMax else {
                throw BadRequest(field: "\(key).\(k)", message: "values are at most \(Self.metaValueBytesMax) bytes")
            }
        }
        return meta
    }

    private func parseCheck(_ body: JSONFields, node: String, serviceID: String, defaultID: String, defaultName: String,
                            requireType: Bool) throws(BadRequest) -> CheckRegistration {
        func field(_ key: String) -> String { body.path.isEmpty ? key : "\(body.path).\(key)" }
        var id = defaultID
        if let given = try body.string("CheckID") { id = given } else if let given = try body.string("ID") { id = given }
        guard !id.isEmpty, !id.contains("/") else { throw BadRequest(field: field("CheckID"), message: "expected an ID without '/'") }
        var status = HealthStatus.critical
        let statusText = try body.string("Status")
        if let statusText, !statusText.isEmpty {
            guard let parsed = HealthStatus(rawValue: statusText) else {
                throw BadRequest(field: field("Status"), message: "expected passing, warning or critical")
            }
            status = parsed
        }
        // Keys match in CamelCase and snake_case alike (JSONFields), as Consul's agent reads them.
        func count(_ key: String) throws(BadRequest) -> Int? { try body.integer(key, in: 0...Self.checkThresholdMax) }
        let header = try body.stringLists("Header")
        if let header {
            guard header.count <= Self.checkHeadersMax, header.values.allSatisfy({ $0.count <= Self.checkHeaderValuesMax }) else {
                throw BadRequest(field: field("Header"),
                                 message: "at most \(Self.checkHeadersMax) headers of \(Self.checkHeaderValuesMax) values")
            }
        }
        let definition = CheckDefinition(
            http: try body.string("HTTP"), method: try body.string("Method"), tcp: try body.string("TCP"),
            ttlSeconds: try body.duration("TTL"), intervalSeconds: try body.duration("Interval"),
            timeoutSeconds: try body.duration("Timeout"),
            deregisterCriticalAfterSeconds: try body.duration("DeregisterCriticalServiceAfter"), header: header,
            tlsSkipVerify: try body.boolean("TLSSkipVerify"), successBeforePassing: try count("SuccessBeforePassing"),
            failuresBeforeWarning: try count("FailuresBeforeWarning"), failuresBeforeCritical: try count("FailuresBeforeCritical"))
        if let url = definition.http {
            guard let parsed = URL(string: url), ["http", "https"].contains(parsed.scheme?.lowercased() ?? ""), parsed.host != nil else {
                throw BadRequest(field: field("HTTP"), message: "expected an http:// or https:// URL")
            }
        }
        if let method = definition.method {
            guard !method.isEmpty, method.utf8.count <= 32, method.allSatisfy({ $0.isLetter }) else {
                throw BadRequest(field: field("Method"), message: "expected an HTTP method such as GET or HEAD")
            }
        }
        if let tcp = definition.tcp {
            guard let colon = tcp.lastIndex(of: ":"), let port = Int(tcp[tcp.index(after: colon)...]), (1...65535).contains(port),
                  colon != tcp.startIndex else {
                throw BadRequest(field: field("TCP"), message: "expected host:port")
            }
        }
        if requireType {
            guard definition.http != nil || definition.tcp != nil || definition.ttlSeconds != nil else {
                throw BadRequest(field: body.path.isEmpty ? "TTL" : body.path,
                                 message: "a check needs one of HTTP, TCP or TTL")
            }
            if definition.http != nil || definition.tcp != nil, (definition.intervalSeconds ?? 0) <= 0 {
                throw BadRequest(field: field("Interval"), message: "HTTP and TCP checks need an interval above 0")
            }
        }
        let record = CheckRecord(id: id, node: node, name: try body.string("Name") ?? defaultName, serviceID: serviceID,
                                 status: status, output: try body.string("Output") ?? "", notes: try body.string("Notes") ?? "",
                                 definition: definition)
        return CheckRegistration(record, statusGiven: statusText?.isEmpty == false)
    }

    // MARK: - JSON shapes (Consul's)

    private func nodeJSON(_ node: Indexed<NodeRecord>) -> [String: Any] {
        ["ID": "", "Node": node.value.name, "Address": node.value.address, "Datacenter": context.datacenter,
         "TaggedAddresses": ["lan": node.value.address, "wan": node.value.address], "Meta": node.value.meta,
         "CreateIndex": node.createIndex, "ModifyIndex": node.modifyIndex]
    }

    private func weightsJSON(_ weights: Weights) -> [String: Any] { ["Passing": weights.passing, "Warning": weights.warning] }

    private func agentServiceJSON(_ instance: ServiceInstance) -> [String: Any] {
        ["Kind": "", "ID": instance.id, "Service": instance.name, "Tags": instance.tags, "Meta": instance.meta,
         "Port": instance.port, "Address": instance.address, "Weights": weightsJSON(instance.weights),
         "EnableTagOverride": instance.enableTagOverride, "Datacenter": context.datacenter]
    }

    private func healthServiceJSON(_ instance: Indexed<ServiceInstance>) -> [String: Any] {
        ["ID": instance.value.id, "Service": instance.value.name, "Tags": instance.value.tags, "Address": instance.value.address,
         "Meta": instance.value.meta, "Port": instance.value.port, "Weights": weightsJSON(instance.value.weights),
         "EnableTagOverride": instance.value.enableTagOverride, "CreateIndex": instance.createIndex, "ModifyIndex": instance.modifyIndex]
    }

    private func catalogServiceJSON(_ instance: Indexed<ServiceInstance>, _ state: CatalogState) -> [String: Any] {
        let node = state.nodes[instance.value.node]
        return ["ID": "", "Node": instance.value.node, "Address": node?.value.address ?? "", "Datacenter": context.datacenter,
                "TaggedAddresses": ["lan": node?.value.address ?? "", "wan": node?.value.address ?? ""],
                "NodeMeta": node?.value.meta ?? [:], "ServiceKind": "", "ServiceID": instance.value.id,
                "ServiceName": instance.value.name, "ServiceTags": instance.value.tags, "ServiceAddress": instance.value.address,
                "ServicePort": instance.value.port, "ServiceMeta": instance.value.meta,
                "ServiceWeights": weightsJSON(instance.value.weights), "ServiceEnableTagOverride": instance.value.enableTagOverride,
                "CreateIndex": instance.createIndex, "ModifyIndex": instance.modifyIndex]
    }

    private func checkJSON(_ check: Indexed<CheckRecord>, _ state: CatalogState) -> [String: Any] {
        let service = check.value.serviceID.isEmpty ? nil : state.services[NodeScopedID(node: check.value.node, id: check.value.serviceID)]
        var definition: [String: Any] = [:]
        if let http = check.value.definition.http { definition["HTTP"] = http }
        if let tcp = check.value.definition.tcp { definition["TCP"] = tcp }
        if let ttl = check.value.definition.ttlSeconds { definition["TTL"] = "\(ttl)s" }
        if let interval = check.value.definition.intervalSeconds { definition["Interval"] = "\(interval)s" }
        if let timeout = check.value.definition.timeoutSeconds { definition["Timeout"] = "\(timeout)s" }
        let d = check.value.definition
        if let method = d.method { definition["Method"] = method }
        if let header = d.header { definition["Header"] = header }
        if let skip = d.tlsSkipVerify { definition["TLSSkipVerify"] = skip }
        if let after = d.deregisterCriticalAfterSeconds { definition["DeregisterCriticalServiceAfter"] = "\(after)s" }
        if let n = d.successBeforePassing { definition["SuccessBeforePassing"] = n }
        if let n = d.failuresBeforeWarning { definition["FailuresBeforeWarning"] = n }
        if let n = d.failuresBeforeCritical { definition["FailuresBeforeCritical"] = n }
        return ["Node": check.value.node, "CheckID": check.value.id, "Name": check.value.name, "Status": check.value.status.rawValue,
                "Notes": check.value.notes, "Output": check.value.output, "ServiceID": check.value.serviceID,
                "ServiceName": service?.value.name ?? "", "ServiceTags": service?.value.tags ?? [],
                "Type": check.value.definition.type, "Definition": definition,
                "CreateIndex": check.createIndex, "ModifyIndex": check.modifyIndex]
    }
}
