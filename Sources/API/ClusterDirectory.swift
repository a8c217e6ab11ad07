import Cluster
import Foundation
import Raft

/// Where the cluster's servers are, for redirects and /v1/status. Founding servers come from the
/// configuration; servers that join are added as the replicated address list changes
/// (`RaftDriver.onServersChanged`), so it is shared and updated in place.
public final class ClusterDirectory: @unchecked Sendable {
    // @unchecked: every field is read and written under `lock`.
    private let lock = NSLock()
    private var raftAddresses: [NodeID: PeerAddress]
    private var httpAddresses: [NodeID: PeerAddress]

    public init(raft: [NodeID: PeerAddress], http: [NodeID: PeerAddress]) {
        raftAddresses = raft
        httpAddresses = http
    }

    /// Raft address of each server.
    public var raft: [NodeID: PeerAddress] { lock.withLock { raftAddresses } }
    /// HTTP address of each server, for telling clients where the leader is.
    public var http: [NodeID: PeerAddress] { lock.withLock { httpAddresses } }

    /// Replaces the directory: the servers of `membership` (every known server while this one
    /// has no membership yet, as a joining server before it caught up).
    public func update(_ servers: [NodeID: ServerAddresses], membership: Membership) {
        let listed = membership.members.isEmpty ? servers : servers.filter { membership.contains($0.key) }
        lock.withLock {
            raftAddresses = listed.mapValues(\.raft)
            httpAddresses = listed.mapValues(\.http)
        }
    }
}
