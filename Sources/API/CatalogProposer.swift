import Cluster
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import Raft
import Registry

/// Writes the catalog commands a server makes on its own (health check transitions, its own
/// node's registration) through the log from any server: proposed here on the leader, else sent
/// to the leader's internal endpoint, which proposes it. The future gives the index the entry
/// applied at on the leader.
public final class CatalogProposer: Sendable {
    /// The leader's endpoint for commands a server proposes on its own (binary CatalogCommand).
    static let path = "/v1/internal/catalog/propose"
    /// A forwarded proposal is given up after this long (a commit normally takes milliseconds;
    /// an election takes up to a second).
    static let timeoutSeconds: Double = 5

    public enum Failure: Error, CustomStringConvertible {
        case noLeader
        case refused(String)

        public var description: String {
            switch self {
            case .noLeader: "no cluster leader"
            case .refused(let why): "the leader refused the proposal: \(why)"
            }
        }
    }

    private let driver: RaftDriver
    private let directory: ClusterDirectory
    private let forwarder: Forwarder
    private let group: EventLoopGroup
    /// Sent with every forwarded proposal: the leader takes it from servers only (ACLs on).
    private let serverToken: String?

    init(driver: RaftDriver, directory: ClusterDirectory, forwarder: Forwarder, group: EventLoopGroup, serverToken: String? = nil) {
        self.serverToken = serverToken
        self.driver = driver
        self.directory = directory
        self.forwarder = forwarder
        self.group = group
    }

    public func propose(_ command: CatalogCommand) -> EventLoopFuture<UInt64> {
        let loop = group.next()
        let directory = directory
        let forwarder = forwarder
        let driver = driver
        let extraHeaders = serverToken.map { [(ACLContext.serverTokenHeader, $0)] } ?? []
        return driver.status.hop(to: loop).flatMap { status in
            if status.role == .leader { return driver.propose(command.encoded).map(\.rawValue) }
            guard let leader = status.leader, let address = directory.http[leader] else {
                return loop.makeFailedFuture(Failure.noLeader)
            }
            let request = APIRequest(method: .PUT, uri: Self.path, path: Self.path, query: [:], body: command.encoded)
            return forwarder.forward(request, to: address, toLeader: true, extraHeaders: extraHeaders,
                                     timeoutSeconds: Self.timeoutSeconds, on: loop)
                .flatMapThrowing { response in
                    let text = String(decoding: response.body, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
                    guard response.status == .ok, let index = UInt64(text) else { throw Failure.refused(text) }
                    return index
                }
        }
    }

    /// The commands a server may send to the leader's internal endpoint: what Health and the
    /// node's self-registration write. `checkRunners` is the leader's alone.
    static func isAcceptedFromPeer(_ command: CatalogCommand) -> Bool {
        switch command {
        case .checkStatuses: true
        case .register(_, let service, let checks, _): service == nil && checks.isEmpty
        case .deregister(_, let serviceID, let checkID): serviceID != nil && checkID == nil
        case .batch(let commands): commands.allSatisfy(isAcceptedFromPeer)
        case .updateCheck: true
        case .checkRunners: false
        }
    }
}

extension APIRouter {
    /// The leader's side of `CatalogProposer`: decodes, checks and proposes a peer's command.
    func proposeFromPeer(_ request: APIRequest, _ status: RaftStatus, on loop: EventLoop) -> EventLoopFuture<APIResponse> {
        guard request.method == .PUT else {
            return loop.makeSucceededFuture(.text("method \(request.method) not allowed", status: .methodNotAllowed))
        }
        guard status.role == .leader else {
            return loop.makeSucceededFuture(.text("not the leader", status: .serviceUnavailable, headers: consulLeaderHeaders(status)))
        }
        let command: CatalogCommand
        do {
            command = try CatalogCommand(decoding: request.body)
        } catch {
            return loop.makeSucceededFuture(.text("\(error)", status: .badRequest))
        }
        guard CatalogProposer.isAcceptedFromPeer(command) else {
            return loop.makeSucceededFuture(.text("this command is not accepted from a peer", status: .badRequest))
        }
        return driver.propose(command.encoded).hop(to: loop).map { index in
            .text("\(index.rawValue)", status: .ok)
        }.flatMapErrorThrowing { error in
            .text("\(error)", status: .serviceUnavailable)
        }
    }
}
