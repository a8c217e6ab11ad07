import Auth
import Cluster
import Foundation
import NIOCore
import NIOHTTP1
import Raft

/// The ACL settings and state the API authorises requests with.
public struct ACLContext: Sendable {
    /// The replicated ACL state (kept and applied whether or not ACLs are enforced, so turning
    /// them on later finds every token).
    public let store: ACLStore
    public let enabled: Bool
    /// `acl.default_policy = "allow"`.
    public let defaultAllows: Bool
    /// What this server's own requests to another server carry (`serverTokenHeader`): its
    /// internal proposals. Derived from the cluster token, which every server shares.
    public let serverToken: String
    /// Servers prove themselves to each other with `serverToken` (ACLs or TLS on): forwarding
    /// headers without it are refused. Off in a plaintext cluster without ACLs, where nothing
    /// is protected anyway.
    public let serversAuthenticate: Bool

    /// A request with this header and the servers' token acts as a server (management).
    static let serverTokenHeader = "X-Disco-Server-Token"
    /// Where a new server asks to join (`--join`): it has no ACL token, only the servers' one.
    static let joinPath = "/v1/operator/raft/join"

    /// The header a server sends with requests only servers may make (`--join`).
    public static func serverHeader(clusterToken: String) -> (String, String) {
        (serverTokenHeader, ACLSecret.hash("disco-server-token:" + clusterToken))
    }

    public init(store: ACLStore, enabled: Bool, defaultAllows: Bool, clusterToken: String, tls: Bool = false) {
        self.serversAuthenticate = enabled || tls
        self.store = store
        self.enabled = enabled
        self.defaultAllows = defaultAllows
        // A hash under its own label: the Raft handshake's hash of the same token says nothing about it.
        serverToken = Self.serverHeader(clusterToken: clusterToken).1
    }

    /// Whether `request` carries the servers' token: another server sent it (a forward, a
    /// proposal). Only then are its forwarding headers (the client's address) believed.
    func isFromServer(_ request: APIRequest) -> Bool {
        guard let given = request.headers.first(name: Self.serverTokenHeader) else { return false }
        return ACLSecret.constantTimeEquals(given, serverToken)
    }

    /// Why `request` is refused as a client posing as a server (ACLs or TLS on): a wrong
    /// servers' token, or forwarding headers without one. nil: it is not.
    func posingAsServer(_ request: APIRequest) -> String? {
        guard serversAuthenticate else { return nil }
        let fromServer = isFromServer(request)
        if request.headers.first(name: Self.serverTokenHeader) != nil && !fromServer {
            return "Permission denied: not a server of this cluster"
        }
        if !fromServer && request.forwarded { return "Permission denied: only servers forward requests" }
        return nil
    }

    /// The secret a request presents: `X-Consul-Token`, `Authorization: Bearer`, or `?token=`
    /// (Consul's order); nil without one.
    static func secret(of request: APIRequest) -> String? {
        if let token = request.headers.first(name: "X-Consul-Token"), !token.isEmpty { return token }
        if let authorization = request.headers.first(name: "Authorization") {
            let parts = authorization.split(separator: " ", maxSplits: 1)
            if parts.count == 2, parts[0].lowercased() == "bearer" {
                let token = parts[1].trimmingCharacters(in: .whitespaces)
                if !token.isEmpty { return token }
            }
        }
        if let token = request.query["token"], !token.isEmpty { return token }
        return nil
    }

    /// What `request` may do; nil when it presents a token that does not exist or has expired
    /// (Consul's 403 "ACL not found").
    func authorizer(for request: APIRequest, now: Double = Date().timeIntervalSince1970) -> Authorizer? {
        guard enabled else { return .disabled }
        // A server's own proposal acts as a server; a request a server forwards acts as its client.
        if (request.path == CatalogProposer.path || request.path == Self.joinPath) && isFromServer(request) {
            return .management(accessorID: "server")
        }
        let state = store.state
        guard let secret = Self.secret(of: request) else {
            return state.authorizer(for: state.anonymous, defaultAllows: defaultAllows)
        }
        guard let token = state.token(secret: secret, now: now) else { return nil }
        return state.authorizer(for: token, defaultAllows: defaultAllows)
    }
}

extension APIResponse {
    static func forbidden(_ text: String) -> APIResponse { .text(text, status: .forbidden) }
    static let aclNotFound = APIResponse.text("ACL not found", status: .forbidden)
}

/// Consul's ACL endpoints: bootstrap, tokens and policies (`/v1/acl/...`).
final class ACLService: Sendable {
    let context: ACLContext
    let driver: RaftDriver

    init(context: ACLContext, driver: RaftDriver) {
        self.context = context
        self.driver = driver
    }

    /// Tokens created with an expiry further away than this are refused (Consul's
    /// `acl.token_max_expiration_ttl` default is 24 h; Disco allows a year).
    static let expirationSecondsMax: Double = 366 * 86_400
    /// Policies a token may name.
    static let tokenPoliciesMax = 64
    /// Tokens and policies in the whole ACL state: a bound on what each server keeps in memory.
    static let tokensMax = 100_000
    static let policiesMax = 10_000

    func handle(_ request: APIRequest, status: RaftStatus, on loop: EventLoop) -> EventLoopFuture<APIResponse> {
        guard context.enabled else { return loop.makeSucceededFuture(.text("ACL support disabled", status: .unauthorized)) }
        let s = request.path.split(separator: "/", omittingEmptySubsequences: true).dropFirst(2).map(String.init)
        let auth = request.authorizer
        func need(_ access: ACLAccess) -> APIResponse? {
            auth.allows(.acl, "", access) ? nil : .forbidden(auth.denial(.acl, "", access))
        }
        func done(_ response: APIResponse) -> EventLoopFuture<APIResponse> { loop.makeSucceededFuture(response) }
        let method = request.method
        do {
            switch (s.first ?? "", s.count, method) {
            case ("bootstrap", 1, .PUT), ("bootstrap", 1, .POST):
                return try bootstrap(request, on: loop)
            case ("policies", 1, .GET):
                if let denied = need(.read) { return done(denied) }
                let state = context.store.state
                return done(.json(state.policies.values.sorted { $0.name < $1.name }.map { policyJSON($0, rules: false) },
                                  headers: indexHeader(state)))
            case ("tokens", 1, .GET):
                if let denied = need(.read) { return done(denied) }
                let state = context.store.state
                let tokens = ([state.anonymous] + state.tokens.values.filter { $0.accessorID != ACLToken.anonymousID })
                    .sorted { $0.createIndex < $1.createIndex }
                return done(.json(tokens.map { tokenJSON($0, state, secret: nil) }, headers: indexHeader(state)))
            case ("policy", 1, .PUT):
                if let denied = need(.write) { return done(denied) }
                return try setPolicy(request, id: nil, on: loop)
            case ("policy", 3, .GET) where s[1] == "name":
                if let denied = need(.read) { return done(denied) }
                let state = context.store.state
                guard let policy = state.policy(named: s[2]) else { return done(.text("ACL not found", status: .notFound)) }
                return done(.json(policyJSON(policy, rules: true), headers: indexHeader(state)))
            case ("policy", 2, .GET):
                if let denied = need(.read) { return done(denied) }
                let state = context.store.state
                guard let policy = state.policies[s[1]] else { return done(.text("ACL not found", status: .notFound)) }
                return done(.json(policyJSON(policy, rules: true), headers: indexHeader(state)))
            case ("policy", 2, .PUT):
                if let denied = need(.write) { return done(denied) }
                return try setPolicy(request, id: s[1], on: loop)
            case ("policy", 2, .DELETE):
                if let denied = need(.write) { return done(denied) }
                return propose(.deletePolicy(id: s[1]), on: loop) { _ in .json(true) }
            case ("token", 1, .PUT):
                if let denied = need(.write) { return done(denied) }
                return try setToken(request, accessorID: nil, on: loop)
            case ("token", 2, .GET) where s[1] == "self":
                guard let secret = ACLContext.secret(of: request) else {
                    return done(.text("no token given (X-Consul-Token, Authorization: Bearer or ?token=)", status: .forbidden))
                }
                let state = context.store.state
                guard let token = state.token(secret: secret, now: Date().timeIntervalSince1970) else { return done(.aclNotFound) }
                return done(.json(tokenJSON(token, state, secret: secret), headers: indexHeader(state)))
            case ("token", 2, .GET):
                if let denied = need(.read) { return done(denied) }
                let state = context.store.state
                let token = s[1] == ACLToken.anonymousID ? state.anonymous : state.tokens[s[1]]
                guard let token else { return done(.text("ACL not found", status: .notFound)) }
                return done(.json(tokenJSON(token, state, secret: nil), headers: indexHeader(state)))
            case ("token", 2, .PUT):
                if let denied = need(.write) { return done(denied) }
                return try setToken(request, accessorID: s[1], on: loop)
            case ("token", 2, .DELETE):
                if let denied = need(.write) { return done(denied) }
                return propose(.deleteToken(accessorID: s[1]), on: loop) { _ in .json(true) }
            default:
                return done(.text("no such endpoint: \(method) \(request.path)", status: .notFound))
            }
        } catch let error as BadRequest {
            return done(.text(error.description, status: .badRequest))
        } catch {
            return done(.text("\(error)", status: .internalServerError))
        }
    }

    private func indexHeader(_ state: ACLState) -> [(String, String)] { [("X-Consul-Index", "\(max(state.index, 1))")] }

    /// Proposes `command` and answers from its outcome on this server (the leader).
    private func propose(_ command: ACLCommand, on loop: EventLoop,
                         refusedStatus: HTTPResponseStatus = .badRequest,
                         _ respond: @escaping @Sendable (ACLState) -> APIResponse) -> EventLoopFuture<APIResponse> {
        let store = context.store
        return driver.propose(command.encoded).hop(to: loop).map { index in
            switch store.outcome(at: index.rawValue) {
            case .applied?:
                var response = respond(store.state)
                response.headers.append(("X-Consul-Index", "\(index.rawValue)"))
                return response
            case .refused(let why)?:
                return .text(why, status: why.hasPrefix("no policy with ID") || why.hasPrefix("no token with") ? .notFound : refusedStatus)
            case nil:
                return .text("the outcome of the ACL change at index \(index.rawValue) is unknown", status: .internalServerError)
            }
        }.flatMapErrorThrowing { error in
            if case ProposeError.refused(.notLeader) = error {
                return .text("No cluster leader (this server lost leadership)", status: .serviceUnavailable)
            }
            return .text("ACL write failed: \(error)", status: .serviceUnavailable)
        }
    }

    // MARK: - Bootstrap, policies, tokens

    /// Consul's bootstrap: once per cluster, returns the first management token with its secret.
    private func bootstrap(_ request: APIRequest, on loop: EventLoop) throws -> EventLoopFuture<APIResponse> {
        let state = context.store.state
        guard state.bootstrapIndex == 0 else {
            return loop.makeSucceededFuture(.forbidden("ACL bootstrap no longer allowed (reset index: \(state.bootstrapIndex))"))
        }
        // Consul's BootstrapSecret: a SecretID the operator generated beforehand (automation).
        var secret = ACLSecret.newID()
        if !request.body.isEmpty, let given = try JSONFields(body: request.body).string("BootstrapSecret"), !given.isEmpty {
            guard given.utf8.count <= ACLSecret.bytesMax, given != ACLToken.anonymousSecret else {
                throw BadRequest(field: "BootstrapSecret", message: "expected at most \(ACLSecret.bytesMax) bytes")
            }
            secret = given
        }
        let token = ACLToken(accessorID: ACLSecret.newID(), secretHash: ACLSecret.hash(secret),
                             description: "Bootstrap Token (Global Management)", policies: [ACLPolicy.globalManagementID],
                             createTime: Date().timeIntervalSince1970)
        let shown = secret
        return propose(.bootstrap(token), on: loop, refusedStatus: .forbidden) { state in
            .json(self.tokenJSON(state.tokens[token.accessorID] ?? token, state, secret: shown))
        }
    }

    private func setPolicy(_ request: APIRequest, id: String?, on loop: EventLoop) throws -> EventLoopFuture<APIResponse> {
        let body = try JSONFields(body: request.body)
        let state = context.store.state
        if let given = try body.string("ID"), let id, !given.isEmpty, given != id {
            throw BadRequest(field: "ID", message: "does not match the policy ID in the URL")
        }
        let existing = id.flatMap { state.policies[$0] }
        if let id, existing == nil { return loop.makeSucceededFuture(.text("ACL not found: no policy with ID \(id)", status: .notFound)) }
        if existing == nil && state.policies.count >= Self.policiesMax {
            throw BadRequest(field: "", message: "the cluster holds \(Self.policiesMax) policies, the most it keeps")
        }
        guard let name = try body.string("Name") ?? existing?.name, ACLPolicy.isValidName(name) else {
            throw BadRequest(field: "Name", message: "expected 1 to \(ACLPolicy.nameBytesMax) letters, digits, '-' or '_'")
        }
        let description = try body.string("Description") ?? existing?.description ?? ""
        guard description.utf8.count <= ACLPolicy.descriptionBytesMax else {
            throw BadRequest(field: "Description", message: "longer than \(ACLPolicy.descriptionBytesMax) bytes")
        }
        let rules = try body.string("Rules") ?? existing?.rules ?? ""
        do {
            _ = try ACLRules(parsing: rules)
        } catch {
            throw BadRequest(field: "Rules", message: error.description)
        }
        let policy = ACLPolicy(id: id ?? ACLSecret.newID(), name: name, description: description, rules: rules)
        return propose(.setPolicy(policy, create: id == nil), on: loop) { state in
            .json(self.policyJSON(state.policies[policy.id] ?? policy, rules: true))
        }
    }

    private func setToken(_ request: APIRequest, accessorID: String?, on loop: EventLoop) throws -> EventLoopFuture<APIResponse> {
        let body = try JSONFields(body: request.body)
        let state = context.store.state
        let now = Date().timeIntervalSince1970
        // Consul's other ways of granting: refused, not ignored (a token that silently lacks
        // what it was made with fails later, far from the cause).
        for field in ["Roles", "ServiceIdentities", "NodeIdentities", "TemplatedPolicies"] where body.has(field) {
            if let items = try? body.objects(field), items.isEmpty { continue }
            throw BadRequest(field: field, message: "not supported by Disco; grant through Policies")
        }
        if let given = try body.string("AccessorID"), let accessorID, !given.isEmpty, given != accessorID {
            throw BadRequest(field: "AccessorID", message: "does not match the AccessorID in the URL")
        }
        let existing = accessorID.flatMap { $0 == ACLToken.anonymousID ? state.anonymous : state.tokens[$0] }
        if let accessorID, existing == nil {
            return loop.makeSucceededFuture(.text("ACL not found: no token with AccessorID \(accessorID)", status: .notFound))
        }
        if existing == nil && state.tokens.count >= Self.tokensMax {
            throw BadRequest(field: "", message: "the cluster holds \(Self.tokensMax) tokens, the most it keeps")
        }
        let accessor = try accessorID ?? body.string("AccessorID").flatMap { $0.isEmpty ? nil : $0 } ?? ACLSecret.newID()
        guard Self.isValidID(accessor) else { throw BadRequest(field: "AccessorID", message: "expected a UUID") }
        var secret: String?
        if let given = try body.string("SecretID"), !given.isEmpty {
            guard given.utf8.count <= ACLSecret.bytesMax, given != ACLToken.anonymousSecret else {
                throw BadRequest(field: "SecretID", message: "expected at most \(ACLSecret.bytesMax) bytes")
            }
            if let existing, !ACLSecret.constantTimeEquals(existing.secretHash, ACLSecret.hash(given)) {
                throw BadRequest(field: "SecretID", message: "a token's SecretID cannot be changed")
            }
            secret = given
        }
        if existing == nil && secret == nil { secret = ACLSecret.newID() }
        var policyIDs: [String] = existing?.policies ?? []
        if let links = try body.objects("Policies") {
            guard links.count <= Self.tokenPoliciesMax else {
                throw BadRequest(field: "Policies", message: "at most \(Self.tokenPoliciesMax) policies")
            }
            policyIDs = []
            for (i, link) in links.enumerated() {
                if let id = try link.string("ID"), !id.isEmpty {
                    guard state.policies[id] != nil else { throw BadRequest(field: "Policies[\(i)].ID", message: "no policy with ID \(id)") }
                    policyIDs.append(id)
                } else if let name = try link.string("Name"), !name.isEmpty {
                    guard let policy = state.policy(named: name) else {
                        throw BadRequest(field: "Policies[\(i)].Name", message: "no policy named \(name)")
                    }
                    policyIDs.append(policy.id)
                } else {
                    throw BadRequest(field: "Policies[\(i)]", message: "expected an ID or a Name")
                }
            }
        }
        var expiration = existing?.expirationTime
        if let ttlText = try body.string("ExpirationTTL"), !ttlText.isEmpty {
            guard existing == nil else { throw BadRequest(field: "ExpirationTTL", message: "an expiry is set when a token is created") }
            guard let ttl = JSONFields.parseDuration(ttlText), ttl > 0, ttl <= Self.expirationSecondsMax else {
                throw BadRequest(field: "ExpirationTTL", message: "expected a duration such as \"1h\", up to \(Int(Self.expirationSecondsMax / 86_400)) days")
            }
            expiration = now + ttl
        } else if let timeText = try body.string("ExpirationTime"), !timeText.isEmpty {
            guard existing == nil else { throw BadRequest(field: "ExpirationTime", message: "an expiry is set when a token is created") }
            guard let time = Self.parseTime(timeText), time > now, time <= now + Self.expirationSecondsMax else {
                throw BadRequest(field: "ExpirationTime", message: "expected a future RFC 3339 time such as 2030-01-02T15:04:05Z")
            }
            expiration = time
        }
        let description = try body.string("Description") ?? existing?.description ?? ""
        guard description.utf8.count <= ACLPolicy.descriptionBytesMax else {
            throw BadRequest(field: "Description", message: "longer than \(ACLPolicy.descriptionBytesMax) bytes")
        }
        let token = ACLToken(accessorID: accessor, secretHash: secret.map(ACLSecret.hash) ?? existing?.secretHash ?? "",
                             description: description, policies: policyIDs,
                             local: try body.boolean("Local") ?? existing?.local ?? false, expirationTime: expiration,
                             createTime: existing?.createTime ?? now)
        let shown = existing == nil ? secret : nil
        return propose(.setToken(token, create: existing == nil), on: loop) { state in
            .json(self.tokenJSON(state.tokens[accessor] ?? token, state, secret: shown))
        }
    }

    /// AccessorIDs and policy IDs: Consul's UUIDs, or at least something safe in a URL path.
    static func isValidID(_ id: String) -> Bool {
        !id.isEmpty && id.utf8.count <= 128 && id.utf8.allSatisfy { b in
            (b >= UInt8(ascii: "a") && b <= UInt8(ascii: "z")) || (b >= UInt8(ascii: "A") && b <= UInt8(ascii: "Z"))
                || (b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9")) || b == UInt8(ascii: "-")
        }
    }

    static func parseTime(_ text: String) -> Double? {
        let formatter = ISO8601DateFormatter()
        if let date = formatter.date(from: text) { return date.timeIntervalSince1970 }
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter.date(from: text)?.timeIntervalSince1970
    }

    static func formatTime(_ seconds: Double) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter.string(from: Date(timeIntervalSince1970: seconds))
    }

    // MARK: - JSON shapes (Consul's)

    private func policyJSON(_ policy: ACLPolicy, rules: Bool) -> [String: Any] {
        var json: [String: Any] = ["ID": policy.id, "Name": policy.name, "Description": policy.description,
                                   "Datacenters": NSNull(), "Hash": ACLSecret.hash(policy.rules),
                                   "CreateIndex": policy.createIndex, "ModifyIndex": policy.modifyIndex]
        if rules { json["Rules"] = policy.rules }
        return json
    }

    /// A token as Consul shows it. The SecretID only where the caller knows it already or it was
    /// just made (created, bootstrapped, `token/self`): Disco keeps only its hash.
    private func tokenJSON(_ token: ACLToken, _ state: ACLState, secret: String?) -> [String: Any] {
        var json: [String: Any] = [
            "AccessorID": token.accessorID, "SecretID": secret ?? (token.accessorID == ACLToken.anonymousID ? "anonymous" : "<hidden>"),
            "Description": token.description, "Local": token.local,
            "Policies": token.policies.map { id in ["ID": id, "Name": state.policies[id]?.name ?? ""] },
            "CreateTime": Self.formatTime(token.createTime),
            "CreateIndex": token.createIndex, "ModifyIndex": token.modifyIndex,
        ]
        if let expiration = token.expirationTime { json["ExpirationTime"] = Self.formatTime(expiration) }
        return json
    }
}
