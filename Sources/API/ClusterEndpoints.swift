import Cluster
import NIOCore
import NIOHTTP1
import Raft

extension APIServer {
    /// The body limit of a request: snapshots (PUT /v1/snapshot) may be as large as a snapshot
    /// can be; everything else is held to `requestBodyBytesMax`.
    static func requestBodyBytesMax(uri: String) -> Int {
        uri == "/v1/snapshot" || uri.hasPrefix("/v1/snapshot?") ? SnapshotContainer.bytesMax : requestBodyBytesMax
    }
}

/// Cluster operations: snapshots (Consul's /v1/snapshot).
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
        default:
            return nil
        }
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

    /// PUT /v1/snapshot: the body is validated completely (container, checksum, every section a
    /// sound database of the right state machine) before anything changes; then one log entry
    /// replaces the state machines on every server.
    private func restoreSnapshot(_ request: APIRequest, _ status: RaftStatus, on loop: EventLoop) -> EventLoopFuture<APIResponse> {
        guard status.role == .leader else { return loop.makeSucceededFuture(notLeader(status)) }
        do {
            _ = try driver.validateRestore(request.body)
        } catch {
            return loop.makeSucceededFuture(.text("snapshot refused, nothing was changed: \(error)", status: .badRequest))
        }
        return driver.proposeRestore(request.body).hop(to: loop).map { index in
            self.logger.info("operator snapshot restored", metadata: ["raft.index": "\(index)", "snapshot.bytes": "\(request.body.count)"])
            return APIResponse(status: .ok, headers: [("X-Consul-Index", "\(index.rawValue)")])
        }.flatMapErrorThrowing { error in
            if case ProposeError.refused(.notLeader) = error { return self.notLeader(status) }
            if error is SnapshotError { return .text("snapshot refused, nothing was changed: \(error)", status: .badRequest) }
            return .text("restore failed: \(error)", status: .serviceUnavailable)
        }
    }
}
