import Cluster
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import Raft

/// Cluster operations: snapshots (Consul's /v1/snapshot), the Raft configuration and
/// membership changes (Consul's /v1/operator/raft/...).
extension KVService {
    /// The response for a cluster endpoint, or nil when the path is not one.
    func clusterRoute(_ request: APIRequest, status: RaftStatus, on loop: EventLoop) -> EventLoopFuture<APIResponse>? {
        switch request.path {
        case "/v1/snapshot":
            switch request.method {
            case .GET: return saveSnapshot(request, status, on: loop)
            case .PUT: return restoreSnapshot(request, status, on: loop)
            default: return loop.makeSucceededFuture(.text("method not allowed: GET or PUT", status: .methodNotAllowed))
            }
        case "/v1/operator/raft/configuration":
            return driver.detailedStatus.and(driver.lastContactMilliseconds).hop(to: loop).map { detail, contacts in
                self.configuration(detail, contacts)
            }
        case "/v1/operator/raft/join":
            guard request.method == .PUT || request.method == .POST else { return methodNotAllowed("PUT", on: loop) }
            return join(request, status, on: loop)
        case "/v1/operator/raft/peer":
            guard request.method == .DELETE || request.method == .PUT else { return methodNotAllowed("DELETE", on: loop) }
            return removePeer(request, status, on: loop)
        case "/v1/operator/raft/transfer-leader":
            guard request.method == .POST || request.method == .PUT else { return methodNotAllowed("POST", on: loop) }
            return transferLeader(request, status, on: loop)
        default:
            return nil
        }
    }

    private func methodNotAllowed(_ allowed: String, on loop: EventLoop) -> EventLoopFuture<APIResponse> {
        loop.makeSucceededFuture(.text("method not allowed: \(allowed)", status: .methodNotAllowed))
    }

    /// `?id=N`: a positive server id, or nil.
    private func serverID(_ request: APIRequest) -> NodeID?? {
        guard let text = request.query["id"], !text.isEmpty else { return .some(nil) }
        guard let raw = UInt64(text), raw > 0 else { return nil }
        return .some(NodeID(rawValue: raw))
    }

    /// A refused or failed membership operation as a response.
    private func failure(_ error: Error, _ status: RaftStatus, what: String) -> APIResponse {
        switch error {
        case ProposeError.refused(.notLeader):
            return notLeader(status)
        case ProposeError.refused(.membershipChangeInProgress):
            return .text("\(what) refused: another membership change is in progress; retry", status: .serviceUnavailable)
        case ProposeError.refused(let reason):
            return .text("\(what) refused: \(reason)", status: .badRequest)
        case let error as MembershipError:
            return .text("\(what) refused: \(error)", status: .badRequest)
        default:
            return .text("\(what) failed: \(error)", status: .serviceUnavailable)
        }
    }

    /// Consul's raft configuration (Servers with ID, Node, Address, Leader, Voter), plus what this
    /// server knows of each: MatchIndex and Lag (entries behind its last index; on the leader) and
    /// LastContact (time since its last message: on the leader for each follower, on a follower
    /// for the leader).
    private func configuration(_ detail: Raft.Status, _ contacts: [NodeID: Int64]) -> APIResponse {
        let progress = Dictionary(uniqueKeysWithValues: detail.progress.map { ($0.id, $0) })
        let raft = directory.raft
        let servers: [[String: Any]] = detail.membership.members.map { id in
            var server: [String: Any] = [
                "ID": "\(id.rawValue)", "Node": "\(id.rawValue)",
                "Address": raft[id]?.description ?? "", "Leader": detail.leader == id,
                "Voter": detail.membership.isVoter(id), "RaftProtocol": "3",
            ]
            if let p = progress[id] {
                server["MatchIndex"] = p.match.rawValue
                server["Lag"] = detail.lastIndex.rawValue - min(p.match.rawValue, detail.lastIndex.rawValue)
            } else if id == detail.id {
                server["MatchIndex"] = detail.lastIndex.rawValue
                server["Lag"] = 0
            }
            if id == detail.id {
                server["LastContact"] = "0ms"
                server["LastContactMilliseconds"] = 0
            } else if let milliseconds = contacts[id] {
                server["LastContact"] = "\(milliseconds)ms"
                server["LastContactMilliseconds"] = milliseconds
            }
            return server
        }
        return .json(["Servers": servers, "Index": detail.commit.rawValue])
    }

    /// PUT /v1/operator/raft/join?id=N&raft=HOST:PORT&http=HOST:PORT (Disco's own; `discod --join`
    /// sends it): on the leader, records the addresses and adds the server as a learner; the
    /// leader promotes it once it caught up. Answers every known server's addresses.
    private func join(_ request: APIRequest, _ status: RaftStatus, on loop: EventLoop) -> EventLoopFuture<APIResponse> {
        guard let idOrNil = serverID(request), let id = idOrNil,
              let raft = request.query["raft"].flatMap({ PeerAddress(parsing: $0) }),
              let http = request.query["http"].flatMap({ PeerAddress(parsing: $0) }) else {
            return loop.makeSucceededFuture(.text("join: expected ?id=N&raft=HOST:PORT&http=HOST:PORT", status: .badRequest))
        }
        guard status.role == .leader else { return loop.makeSucceededFuture(notLeader(status)) }
        return driver.addServer(id, ServerAddresses(raft: raft, http: http)).hop(to: loop).map { servers in
            let list: [[String: Any]] = servers.sorted { $0.key < $1.key }.map {
                ["ID": "\($0.key.rawValue)", "Address": $0.value.raft.description, "HTTPAddress": $0.value.http.description]
            }
            return .json(["Servers": list])
        }.flatMapErrorThrowing { error in self.failure(error, status, what: "join") }
    }

    /// DELETE /v1/operator/raft/peer?id=N (Consul): removes server N from the membership.
    private func removePeer(_ request: APIRequest, _ status: RaftStatus, on loop: EventLoop) -> EventLoopFuture<APIResponse> {
        guard let idOrNil = serverID(request), let id = idOrNil else {
            return loop.makeSucceededFuture(.text("expected ?id=N (a server id)", status: .badRequest))
        }
        guard status.role == .leader else { return loop.makeSucceededFuture(notLeader(status)) }
        return driver.removeServer(id).hop(to: loop).map { index in
            APIResponse(status: .ok, headers: [("X-Consul-Index", "\(index.rawValue)")])
        }.flatMapErrorThrowing { error in
            if case ProposeError.refused(.invalidMembershipChange(.removingLeader)) = error {
                return .text("cannot remove the leader (server \(id)); transfer leadership first (discoctl leader transfer)",
                             status: .badRequest)
            }
            if case ProposeError.refused(.invalidMembershipChange(.notMember)) = error {
                return .text("server \(id) is not a member", status: .badRequest)
            }
            return self.failure(error, status, what: "remove")
        }
    }

    /// POST /v1/operator/raft/transfer-leader[?id=N] (Consul): hands leadership to N, or to the
    /// most caught-up voter, and answers once another server leads.
    private func transferLeader(_ request: APIRequest, _ status: RaftStatus, on loop: EventLoop) -> EventLoopFuture<APIResponse> {
        guard let target = serverID(request) else {
            return loop.makeSucceededFuture(.text("expected ?id=N (a server id) or no id", status: .badRequest))
        }
        guard status.role == .leader else { return loop.makeSucceededFuture(notLeader(status)) }
        return driver.handOverLeadership(to: target).hop(to: loop).map { leader in
            .json(["Success": true, "Leader": "\(leader.rawValue)",
                   "Address": self.directory.raft[leader]?.description ?? ""] as [String: Any])
        }.flatMapErrorThrowing { error in self.failure(error, status, what: "leader transfer") }
    }

    /// GET /v1/snapshot: every state machine as of this server's applied index, in one
    /// `SnapshotContainer`. On the leader unless `?stale` (Consul's rule).
    private func saveSnapshot(_ request: APIRequest, _ status: RaftStatus, on loop: EventLoop) -> EventLoopFuture<APIResponse> {
        guard request.query["stale"] != nil || status.role == .leader else { return loop.makeSucceededFuture(notLeader(status)) }
        return driver.takeSnapshot().hop(to: loop).map { bytes in
            let index = (try? SnapshotContainer(decoding: bytes))?.index ?? 0
            return APIResponse(status: .ok, headers: [("Content-Type", "application/octet-stream"), ("X-Consul-Index", "\(index)")]
                                   + self.leaderHeaders(status), body: bytes)
        }.flatMapErrorThrowing { error in
            .text("cannot take a snapshot: \(error)", status: .internalServerError)
        }
    }

    /// PUT /v1/snapshot: the body, streamed to a file as it arrived (`SnapshotUploadFile`), is
    /// read back and validated completely (container, checksum, every section a sound database
    /// of the right state machine) before anything changes, off the event loop; then one log
    /// entry replaces the state machines on every server. (The entry carries the whole
    /// snapshot, so the restore itself holds it in memory once: one upload at a time bounds it.)
    private func restoreSnapshot(_ request: APIRequest, _ status: RaftStatus, on loop: EventLoop) -> EventLoopFuture<APIResponse> {
        guard status.role == .leader else { return loop.makeSucceededFuture(notLeader(status)) }
        let driver = self.driver
        let inMemory = request.body
        let file = request.bodyFile
        return NIOThreadPool.singleton.runIfActive(eventLoop: loop) { () throws -> Result<[UInt8], SnapshotError> in
            let bytes = try file?.syncAndRead() ?? inMemory
            do {
                _ = try driver.validateRestore(bytes)
            } catch {
                return .failure(error as? SnapshotError ?? SnapshotError(offset: 0, message: "\(error)"))
            }
            return .success(bytes)
        }.flatMap { validated -> EventLoopFuture<APIResponse> in
            switch validated {
            case .failure(let error):
                return loop.makeSucceededFuture(.text("snapshot refused, nothing was changed: \(error)", status: .badRequest))
            case .success(let bytes):
                return driver.proposeRestore(bytes).hop(to: loop).map { index in
                    self.logger.info("operator snapshot restored", metadata: ["raft.index": "\(index)", "snapshot.bytes": "\(bytes.count)"])
                    return APIResponse(status: .ok, headers: [("X-Consul-Index", "\(index.rawValue)")])
                }.flatMapErrorThrowing { error in
                    if case ProposeError.refused(.notLeader) = error { return self.notLeader(status) }
                    if error is SnapshotError { return .text("snapshot refused, nothing was changed: \(error)", status: .badRequest) }
                    return .text("restore failed: \(error)", status: .serviceUnavailable)
                }
            }
        }.flatMapErrorThrowing { error in
            if let error = error as? SnapshotUploadError { return HTTPHandler.storageFailure(error) }
            return .text("restore failed: \(error)", status: .serviceUnavailable)
        }
    }
}
