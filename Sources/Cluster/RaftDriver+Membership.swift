import Logging
import NIOCore
import Raft

/// Why a membership operation was refused (the request had no effect).
public struct MembershipError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Membership: servers joining (as learners, promoted once caught up), removed, and leadership
/// handed over; and where every server is reached.
///
/// **Addresses.** The founding servers' addresses come from the configuration (`--server`). A
/// server that joins is recorded in the log: the leader proposes a `ClusterCommandTag.servers`
/// entry with the whole list of addresses (founding servers included) before the membership
/// change that adds it, so every server — and a restarted one, from raft.db — knows how to reach
/// every member. The list is also a section of every Raft snapshot ("servers"), so compaction
/// keeps it; an operator's snapshot restore leaves it alone (it describes this cluster, not the data).
extension RaftDriver {
    /// A learner is promoted to voter once its match index is within this many entries of the
    /// leader's last index: close enough that it can take part in commits at once, without
    /// slowing them while it catches up (etcd's learner "in sync" rule is the same idea).
    public static let learnerPromotionLagEntriesMax: UInt64 = 64
    /// How long a leader transfer may take before the request is reported as failed (two
    /// election timeouts at the default tick).
    public static let leaderTransferTimeoutMilliseconds: Int64 = 2000

    /// Addresses known from configuration (founding servers) or from a join answer, before the
    /// replicated list arrives. Call before `start()` or any time on a joining server. From the
    /// first call on, the driver keeps the transport's peers up to date (else the owner does, as
    /// the in-process tests do).
    public func learnServers(_ servers: [NodeID: ServerAddresses]) {
        loop.execute {
            self.configuredServers.merge(servers) { $1 }
            self.managesPeers = true
            self.publishServersIfChanged()
        }
    }

    /// Called on the driver's loop whenever the known addresses or the membership change, with
    /// the addresses of every known server and the membership in force.
    public func onServersChanged(_ body: @escaping @Sendable ([NodeID: ServerAddresses], Membership) -> Void) {
        loop.execute {
            self.serversChanged = body
            body(self.knownServers, self.node.membership)
        }
    }

    /// Every address known, the replicated list over the configured one.
    var knownServers: [NodeID: ServerAddresses] { configuredServers.merging(replicatedServers) { $1 } }

    /// On the leader: records `id`'s addresses in the log, then adds it as a learner. The future
    /// succeeds with every known server once both applied. Repeating the request for a server
    /// that is already a member with the same addresses succeeds at once (a joiner that restarted).
    public func addServer(_ id: NodeID, _ addresses: ServerAddresses) -> EventLoopFuture<[NodeID: ServerAddresses]> {
        loop.flatSubmit {
            guard self.node.isLeader else {
                return self.loop.makeFailedFuture(ProposeError.refused(.notLeader(leader: self.node.leader)))
            }
            if self.node.membership.contains(id) {
                guard let known = self.knownServers[id], known == addresses else {
                    return self.loop.makeFailedFuture(MembershipError(
                        "server \(id) is already a member\(self.knownServers[id].map { " at \($0)" } ?? ""); remove it first"))
                }
                return self.loop.makeSucceededFuture(self.knownServers)
            }
            if let (other, _) = self.knownServers.first(where: { $0.key != id && ($0.value.raft == addresses.raft || $0.value.http == addresses.http) }),
               self.node.membership.contains(other) {
                return self.loop.makeFailedFuture(MembershipError("address \(addresses) is already used by server \(other)"))
            }
            var servers = self.knownServers
            servers[id] = addresses
            return self.propose([ClusterCommandTag.servers] + ServerList.encode(servers)).flatMap { _ in
                self.proposeChange(.addLearner(id))
            }.map { _ in
                self.logger.info("server joined as a learner", metadata: ["raft.server": "\(id)", "raft.server.addresses": "\(addresses)"])
                return self.knownServers
            }
        }
    }

    /// On the leader: removes `id` from the membership (it stops counting toward quorum at once).
    public func removeServer(_ id: NodeID) -> EventLoopFuture<LogIndex> {
        proposeChange(.remove(id)).map { index in
            self.logger.info("server removed", metadata: ["raft.server": "\(id)"])
            return index
        }
    }

    /// On the leader: hands leadership to `target` (nil: the most caught-up voter that answered
    /// lately) and waits until another server leads. Succeeds with the new leader.
    public func handOverLeadership(to target: NodeID?, timeout: TimeAmount = .milliseconds(RaftDriver.leaderTransferTimeoutMilliseconds))
        -> EventLoopFuture<NodeID>
    {
        loop.flatSubmit {
            guard self.stoppedReason == nil, self.node.isLeader else {
                return self.loop.makeFailedFuture(ProposeError.refused(.notLeader(leader: self.node.leader)))
            }
            let chosen: NodeID
            if let target {
                chosen = target
            } else {
                let candidates = self.node.status.progress.filter { !$0.learner && $0.id != self.id && $0.recentActive }
                guard let best = candidates.max(by: { $0.match < $1.match })?.id else {
                    return self.loop.makeFailedFuture(MembershipError("no other voter is reachable to take over"))
                }
                chosen = best
            }
            if chosen == self.id { return self.loop.makeSucceededFuture(self.id) }
            guard self.node.membership.isVoter(chosen) else {
                return self.loop.makeFailedFuture(MembershipError("server \(chosen) is not a voter"))
            }
            do throws(ProposalError) {
                try self.node.transferLeadership(to: chosen)
            } catch {
                return self.loop.makeFailedFuture(ProposeError.refused(error))
            }
            self.handleReady()
            let done = self.loop.makePromise(of: NodeID.self)
            let deadline = NIODeadline.now() + timeout
            @Sendable func check() {
                if let leader = self.node.leader, leader != self.id {
                    done.succeed(leader)
                } else if NIODeadline.now() >= deadline {
                    done.fail(MembershipError("leadership did not move to \(chosen) within \(timeout.nanoseconds / 1_000_000) ms"))
                } else {
                    self.loop.scheduleTask(in: .milliseconds(10)) { check() }
                }
            }
            check()
            return done.futureResult
        }
    }

    /// Milliseconds since a message last arrived from each server (on the leader: from each
    /// follower; on a follower: from the leader), for `discoctl members`.
    public var lastContactMilliseconds: EventLoopFuture<[NodeID: Int64]> {
        loop.submit {
            let now = NIODeadline.now()
            return self.lastContact.mapValues { (now - $0).nanoseconds / 1_000_000 }
        }
    }

    // MARK: - On `loop`

    func proposeChange(_ change: MembershipChange) -> EventLoopFuture<LogIndex> {
        loop.flatSubmit {
            guard self.stoppedReason == nil else { return self.loop.makeFailedFuture(ProposeError.stopped) }
            do throws(ProposalError) {
                let (term, index) = try self.node.proposeMembershipChange(change)
                let promise = self.loop.makePromise(of: LogIndex.self)
                self.pending[index] = (term, promise, .now())
                self.handleReady()
                return promise.futureResult
            } catch {
                return self.loop.makeFailedFuture(ProposeError.refused(error))
            }
        }
    }

    /// Every tick on the leader: promote a learner that has caught up.
    func maybePromoteLearners() {
        guard stoppedReason == nil, node.isLeader, !node.membership.learners.isEmpty else { return }
        let last = node.lastIndex.rawValue
        for progress in node.status.progress where progress.learner && progress.recentActive
            && progress.match.rawValue + Self.learnerPromotionLagEntriesMax >= last {
            do throws(ProposalError) {
                _ = try node.proposeMembershipChange(.addVoter(progress.id))
                logger.info("promoting a caught-up learner to voter",
                            metadata: ["raft.server": "\(progress.id)", "raft.match": "\(progress.match)", "raft.last_index": "\(last)"])
                handleReady()
            } catch {
                // Another change is in flight; try again next tick.
            }
            return
        }
    }

    /// A committed `servers` entry: the whole list of addresses replaces the replicated one.
    func applyServers(_ entry: Entry) {
        do throws(PeerFrameError) {
            replicatedServers = try ServerList.decode(Array(entry.data.dropFirst()))
        } catch {
            logger.error("ignoring an unreadable server list", metadata: ["raft.index": "\(entry.index)", "raft.error": "\(error)"])
        }
    }

    /// At start: the replicated list from the snapshot, then from committed entries after it.
    func loadServers(_ persistent: PersistentState) {
        if let data = persistent.snapshot.flatMap({ try? SnapshotContainer(decoding: $0.data) })?.section(Self.serversSection) {
            replicatedServers = (try? ServerList.decode(data)) ?? [:]
        }
        for entry in persistent.entries where entry.kind == .normal && entry.index <= persistent.hardState.commit
            && entry.data.first == ClusterCommandTag.servers {
            applyServers(entry)
        }
    }

    /// Tells the transport and the owner when addresses or membership changed.
    func publishServersIfChanged() {
        let servers = knownServers
        let membership = node.membership
        guard servers != publishedServers || membership != publishedMembership else { return }
        publishedServers = servers
        publishedMembership = membership
        if managesPeers { transport.setPeers(servers.filter { $0.key != id }.mapValues(\.raft)) }
        serversChanged?(servers, membership)
    }
}
