import API
import Cluster
import Foundation
import Health
import Logging
import NIOCore
import Raft
import Registry

/// What a server writes to the catalog on its own, polled a few times a second:
/// - on the leader, the check runners (`CheckRunnerTracker`): the servers it is in contact
///   with, so each check runs on one live server and moves within seconds when one dies or joins;
/// - on any server with a leader, its own node, as a Consul agent registers its node: through
///   the log, only when missing or changed (idempotent).
final class ServerUpkeep: @unchecked Sendable {
    // @unchecked: `tracker`, `nodeProposedAt` and `task` are touched only on `loop`.

    /// How often the leader looks at who answers (well under `contactMillisecondsMax`).
    static let pollMilliseconds: Int64 = 250
    /// A node registration still missing this long after it was proposed is proposed again.
    static let nodeRetryMilliseconds: Int64 = 5000

    private let loop: EventLoop
    private let driver: RaftDriver
    private let catalog: Catalog
    private let proposer: CatalogProposer
    private let node: NodeRecord
    private let logger: Logger
    private var tracker = CheckRunnerTracker()
    private var nodeProposedAt: Int64?
    private var runnersInflight = false
    private var task: RepeatedTask?

    init(loop: EventLoop, driver: RaftDriver, catalog: Catalog, proposer: CatalogProposer, node: NodeRecord, logger: Logger) {
        self.loop = loop
        self.driver = driver
        self.catalog = catalog
        self.proposer = proposer
        self.node = node
        self.logger = logger
    }

    func start() {
        loop.execute {
            self.task = self.loop.scheduleRepeatedAsyncTask(initialDelay: .milliseconds(Self.pollMilliseconds),
                                                            delay: .milliseconds(Self.pollMilliseconds)) { _ in self.poll() }
        }
    }

    func stop() {
        let done = loop.makePromise(of: Void.self)
        loop.execute {
            if let task = self.task { task.cancel(promise: done) } else { done.succeed(()) }
        }
        try? done.futureResult.wait()
    }

    private static func nowMilliseconds() -> Int64 { Int64(NIODeadline.now().uptimeNanoseconds / 1_000_000) }

    private func poll() -> EventLoopFuture<Void> {
        driver.detailedStatus.and(driver.lastContactMilliseconds).hop(to: loop).map { status, contact in
            let now = Self.nowMilliseconds()
            let state = self.catalog.state
            // Kept by the leader whether or not it runs checks itself (it cannot know the others').
            if !self.runnersInflight,
               let runners = self.tracker.poll(isLeader: status.role == .leader, selfID: status.id.rawValue,
                                               members: status.membership.members.map(\.rawValue),
                                               contactAges: Dictionary(uniqueKeysWithValues: contact.map { ($0.key.rawValue, $0.value) }),
                                               replicated: state.checkRunners, nowMilliseconds: now) {
                self.runnersInflight = true
                self.logger.info("check runners change", metadata: ["health.runners": "\(runners)"])
                self.proposer.propose(.checkRunners(runners)).hop(to: self.loop).whenComplete { _ in self.runnersInflight = false }
            }
            self.registerNode(status: status, state: state, now: now)
        }
    }

    private func registerNode(status: Raft.Status, state: CatalogState, now: Int64) {
        guard status.leader != nil else { return }
        let existing = state.nodes[node.name]?.value
        guard existing?.address != node.address else {
            nodeProposedAt = nil
            return
        }
        if let at = nodeProposedAt, now - at < Self.nodeRetryMilliseconds { return }
        nodeProposedAt = now
        // Meta set by others (catalog registrations of this node) is kept.
        let record = NodeRecord(name: node.name, address: node.address, meta: existing?.meta ?? [:])
        proposer.propose(.register(node: record, service: nil, checks: [], replaceChecks: false)).whenFailure { error in
            self.logger.debug("registering this server's node failed; retrying", metadata: ["catalog.error": "\(error)"])
        }
    }
}
