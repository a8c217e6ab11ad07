import API
import Auth
import NIOSSL
import Cluster
import DNSServer
import AsyncHTTPClient
import Foundation
import NIOCore
import Logging
import Raft

/// `discod --join`: a new server asks a member to add it, and follows the member's pointer to
/// the leader (this is admission, not write forwarding: the joiner does the redirect itself).
extension ClusterRuntime {
    /// Attempts before a joining server gives up (one per `joinRetryMilliseconds`): about a
    /// minute, enough for a cluster to elect a leader or finish another membership change.
    static let joinAttemptsMax = 60
    static let joinRetryMilliseconds: UInt32 = 1000
    /// One join request may take this long (the leader answers once two entries committed).
    static let joinRequestTimeoutSeconds: Double = 10

    /// The founding servers of the configuration.
    static func foundingServers(_ config: Configuration) -> [NodeID: ServerAddresses] {
        Dictionary(uniqueKeysWithValues: config.raftServers.map {
            (NodeID(rawValue: $0.id), ServerAddresses(raft: PeerAddress(host: $0.raft.host, port: $0.raft.port),
                                                      http: PeerAddress(host: $0.http.host, port: $0.http.port)))
        })
    }

    /// Asks to be added unless raft.db already has this server in the membership (a restart
    /// after joining); in the background, so DNS and HTTP serve meanwhile. A refusal (say, the id
    /// is taken by another server) is a configuration error: logged, and discod exits with 78.
    func startJoining(through member: ListenAddress, config: Configuration) {
        let id = NodeID(rawValue: config.raftNodeID)
        if let status = try? driver.detailedStatus.wait(), status.membership.contains(id) {
            logger.info("already a member of the cluster; not joining again", metadata: ["raft.join": "\(member)"])
            return
        }
        let me = ServerAddresses(raft: PeerAddress(host: config.raftListen.host, port: config.raftListen.port),
                                 http: PeerAddress(host: config.httpListen.host, port: config.httpListen.port))
        let driver = self.driver
        let logger = self.logger
        let tls = self.tls
        Thread.detachNewThread {
            var target = member.description
            var attempt = 0
            while attempt < Self.joinAttemptsMax {
                attempt += 1
                switch Self.requestJoin(target, id: id, me, tls: tls?.tls.clientConfiguration,
                                        serverHeader: ACLContext.serverHeader(clusterToken: config.raftClusterToken)) {
                case .joined(let servers):
                    driver.learnServers(servers)
                    logger.info("joined the cluster as a learner", metadata: ["raft.join": "\(target)", "raft.servers": "\(servers.count)"])
                    return
                case .redirect(let leader):
                    target = leader
                    continue
                case .retry(let reason):
                    logger.warning("cannot join yet; retrying", metadata: ["raft.join": "\(target)", "error": "\(reason)"])
                    target = member.description
                case .refused(let reason):
                    logger.critical("the cluster refused to add this server: \(reason)", metadata: ["raft.join": "\(target)"])
                    exit(ExitCode.config.rawValue)
                }
                usleep(Self.joinRetryMilliseconds * 1000)
            }
            logger.error("gave up joining the cluster after \(Self.joinAttemptsMax) attempts", metadata: ["raft.join": "\(member)"])
        }
    }

    enum JoinOutcome {
        case joined([NodeID: ServerAddresses])
        case redirect(String)
        case retry(String)
        case refused(String)
    }

    /// - Parameters:
    ///   - tls: HTTPS with this server's certificate (the cluster speaks TLS); nil: HTTP.
    ///   - serverHeader: the servers' token, which lets a server without an ACL token join.
    static func requestJoin(_ target: String, id: NodeID, _ me: ServerAddresses, tls: TLSConfiguration? = nil,
                            serverHeader: (String, String)? = nil) -> JoinOutcome {
        func escape(_ text: String) -> String { text.addingPercentEncoding(withAllowedCharacters: .urlQueryAllowed) ?? text }
        guard let url = URL(string: "\(tls == nil ? "http" : "https")://\(target)/v1/operator/raft/join?id=\(id.rawValue)&raft=\(escape(me.raft.description))&http=\(escape(me.http.description))") else {
            return .refused("bad member address \(target)")
        }
        // AsyncHTTPClient (already the health checks'), not URLSession: FoundationNetworking
        // would load libcurl and some twenty libraries into every discod for this one request.
        let response: HTTPClient.Response
        do {
            var request = try HTTPClient.Request(url: url.absoluteString, method: .PUT)
            if let serverHeader { request.headers.add(name: serverHeader.0, value: serverHeader.1) }
            let deadline = NIODeadline.now() + .milliseconds(Int64(joinRequestTimeoutSeconds * 1000))
            if let tls {
                let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: HTTPClient.Configuration(tlsConfiguration: tls))
                defer { try? client.syncShutdown() }
                response = try client.execute(request: request, deadline: deadline).wait()
            } else {
                response = try HTTPClient.shared.execute(request: request, deadline: deadline).wait()
            }
        } catch {
            return .retry("cannot reach \(target): \(error)")
        }
        let data = response.body.map { Data($0.readableBytesView) } ?? Data()
        let text = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        switch response.status.code {
        case 200:
            guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
                  let list = object["Servers"] as? [[String: Any]] else {
                return .retry("unreadable answer from \(target)")
            }
            var servers: [NodeID: ServerAddresses] = [:]
            for server in list {
                guard let idText = server["ID"] as? String, let raw = UInt64(idText),
                      let raft = (server["Address"] as? String).flatMap({ PeerAddress(parsing: $0) }),
                      let http = (server["HTTPAddress"] as? String).flatMap({ PeerAddress(parsing: $0) }) else { continue }
                servers[NodeID(rawValue: raw)] = ServerAddresses(raft: raft, http: http)
            }
            return .joined(servers)
        case 503:
            if let leader = response.headers.first(name: "X-Disco-Leader"), leader != target {
                return .redirect(leader)
            }
            return .retry("\(target) answered 503: \(text)")
        case 400..<500:
            return .refused(text)
        default:
            return .retry("\(target) answered \(response.status.code): \(text)")
        }
    }
}
