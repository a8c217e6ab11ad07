import API
import Auth
import CShims
import Cluster
import Foundation
import Health
import Logging
import NIOPosix
import Raft
import Registry
import Store

/// The replicated part of discod: the Raft log (raft.db), the state machines (kv.db, and the
/// catalog in registry.db), the peer transport, the driver and the HTTP API, started together
/// and stopped together.
final class ClusterRuntime {
    /// The HTTP API and the apply-side work (view rebuild hooks, watchers), below the DNS workers.
    private let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
    /// The Raft driver's own thread, with the peer transport: nothing else is scheduled on it,
    /// so a burst of API traffic cannot delay a heartbeat or an election timeout (issue 13.5).
    /// It runs at the DNS workers' priority, not below them with the rest of the write path: the
    /// registration storm, with Raft at nice +10 among busy API threads, had elections (a
    /// follower's heartbeats waited behind forwarded writes), and any CPU hog at nice 0 on the
    /// host would do the same. Its own work is small (log, fsync, messages, applies).
    private let raftGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    private let transport: PeerTransport
    let driver: RaftDriver
    private let api: APIServer
    let logger: Logger
    let raftPort: Int
    let httpPort: Int
    let catalog: Catalog
    /// The checks this server runs (nil: `health.enabled = false`).
    let health: HealthChecker?
    private let upkeep: ServerUpkeep
    /// The TLS material in force (`tls.*`); nil: plaintext. SIGHUP reloads it.
    let tls: ClusterTLS.Current?
    private let tlsFiles: TLSFiles?
    private let verifyIncomingHTTPS: Bool

    /// - Parameter onCatalogChange: called on the driver's loop after each entry that changed
    ///   the catalog (the DNS view rebuild hooks in here).
    /// - Parameter httpSocket: a listening socket systemd passed for the HTTP API (socket activation).
    init(config: Configuration, logger: Logger, httpSocket: Int32? = nil, extraMetrics: (@Sendable () -> [String])? = nil,
         onCatalogChange: @escaping @Sendable (CatalogChange, CatalogState) -> Void) throws(StartError) {
        let id = NodeID(rawValue: config.raftNodeID)
        self.logger = logger
        lowerPriority(of: group, to: config.backgroundPriority, logger: logger)
        raftGroup.next().execute { disco_thread_set_name("disco-raft") }
        do {
            try FileManager.default.createDirectory(atPath: config.dataDirectory, withIntermediateDirectories: true)
        } catch {
            throw StartError(code: .ioError, message: "cannot create the data directory \(config.dataDirectory): \(error)")
        }
        let storage: RaftStorage
        let kv: KVStore
        let catalog: Catalog
        let acl: ACLStore
        do {
            storage = try RaftStorage(path: config.dataDirectory + "/raft.db")
            kv = try KVStore(path: config.dataDirectory + "/kv.db")
            catalog = try Catalog(path: config.dataDirectory + "/registry.db")
            acl = try ACLStore(path: config.dataDirectory + "/acl.db")
        } catch {
            throw StartError(code: .ioError, message: "\(error)")
        }
        self.catalog = catalog
        tlsFiles = config.tlsFiles
        verifyIncomingHTTPS = config.tlsVerifyIncomingHTTPS
        if let files = config.tlsFiles {
            do {
                tls = ClusterTLS.Current(try ClusterTLS(files: files, verifyIncomingHTTPS: config.tlsVerifyIncomingHTTPS))
            } catch {
                throw StartError(code: .config, message: "TLS: \(error)")
            }
        } else {
            tls = nil
        }
        let tls = self.tls
        if (config.aclEnabled || config.tlsFiles != nil) && config.raftClusterToken == Configuration.development.raftClusterToken
            && (config.raftServers.count > 1 || config.raftJoin != nil) {
            logger.warning("ACLs or TLS are on but raft.cluster_token is the default: anyone who knows it can pose as a server to the HTTP API; set a secret one")
        }
        let hub = WatchHub()
        catalog.observe { change, _ in hub.notify(change) }
        catalog.observe(onCatalogChange)
        var raftConfig = RaftConfig(id: id, initialMembership: Membership(voters: config.raftServers.map { NodeID(rawValue: $0.id) }))
        raftConfig.randomSeed = UInt64(UInt32.random(in: 1...UInt32.max))
        let founding = Self.foundingServers(config)
        let peers = founding.filter { $0.key != id }.mapValues(\.raft)
        let options = try Self.driverOptions(ProcessInfo.processInfo.environment)
        final class DriverBox: @unchecked Sendable { var driver: RaftDriver? }
        let box = DriverBox()
        var peerTLS: (@Sendable () -> PeerTransport.PeerTLS)?
        if let tls {
            peerTLS = { PeerTransport.PeerTLS(server: tls.tls.peerServer, client: tls.tls.peerClient) }
        }
        transport = PeerTransport(id: id, listen: PeerAddress(host: config.raftListen.host, port: config.raftListen.port),
                                  peers: peers, group: raftGroup, logger: logger,
                                  cluster: PeerCodec.clusterID(token: config.raftClusterToken),
                                  tls: peerTLS) {
            box.driver?.receive($0)
        }
        do {
            driver = try RaftDriver(config: raftConfig, storage: storage, transport: transport, loop: raftGroup.next(),
                                    logger: logger, participants: [kv, catalog, acl],
                                    options: options) { entry in
                // Registry and ACL entries start with their tag byte; everything else is the KV store's.
                let registry = entry.data.first.map { $0 >= CatalogCommand.entryTag } ?? false
                do {
                    if entry.data.first == ACLCommand.entryTag {
                        try acl.apply(index: entry.index.rawValue, data: entry.data)
                    } else if registry {
                        try catalog.apply(index: entry.index.rawValue, data: entry.data)
                        let times = catalog.lastApplyTimes
                        if times.totalNanoseconds >= UInt64(RaftDriver.slowReadyMilliseconds) * 1_000_000 {
                            logger.warning("a registry entry took long to apply", metadata: [
                                "raft.index": "\(entry.index)", "raft.entry_bytes": "\(entry.data.count)",
                                "catalog.memory_ms": "\(times.decodeAndMemoryNanoseconds / 1_000_000)",
                                "catalog.database_ms": "\(times.databaseNanoseconds / 1_000_000)",
                                "catalog.observers_ms": "\(times.observersNanoseconds / 1_000_000)"])
                        }
                    } else {
                        try kv.apply(entry)
                        switch try? KVCommand(decoding: entry.data) {
                        case .put(let key, _, _)?, .compareAndSet(let key, _, _, _)?, .delete(let key)?,
                             .deleteIfModifyIndex(let key, _)?:
                            hub.notifyKV(.key(key))
                        case .deleteTree(let prefix)?:
                            hub.notifyKV(.prefix(prefix))
                        case nil:
                            break
                        }
                    }
                } catch {
                    // The state machine cannot keep up with the log: stop rather than serve divergent data.
                    let file = entry.data.first == ACLCommand.entryTag ? "acl.db" : registry ? "registry.db" : "kv.db"
                    logger.critical("cannot apply entry \(entry.index) to \(file): \(error)")
                    exit(ExitCode.ioError.rawValue)
                }
            }
        } catch {
            throw StartError(code: .ioError, message: "\(error)")
        }
        box.driver = driver
        driver.onFailure { reason in
            logger.critical("the Raft driver stopped: \(reason); exiting so that the service manager restarts discod",
                            metadata: ["exit.code": "\(ExitCode.raftStorageFailed.rawValue)"])
            exit(ExitCode.raftStorageFailed.rawValue)
        }
        // Health proposes through the API's proposer, which exists once the API does.
        final class ProposerBox: @unchecked Sendable { var proposer: CatalogProposer? }
        let proposerBox = ProposerBox()
        let proposeLoop = group.next()
        let health = config.health.enabled
            ? HealthChecker(selfID: id.rawValue, settings: config.health, catalog: catalog, logger: logger) { command in
                proposerBox.proposer?.propose(command) ?? proposeLoop.makeFailedFuture(HealthError.stopped)
            }
            : nil
        self.health = health
        // The checker's loop is write path too: with 41,000 checks its ownership passes on every
        // catalog change took the CPU from the DNS workers and from Raft (elections) at nice 0.
        if let health { lowerPriority(of: health.group, to: config.backgroundPriority, logger: logger) }
        let directory = ClusterDirectory(raft: founding.mapValues(\.raft), http: founding.mapValues(\.http))
        // Joined servers' addresses are replicated; the driver tells the transport and the API.
        driver.learnServers(founding)
        driver.onServersChanged { servers, membership in directory.update(servers, membership: membership) }
        api = APIServer(listen: PeerAddress(host: config.httpListen.host, port: config.httpListen.port), group: group,
                        kv: kv, driver: driver, directory: directory,
                        registry: RegistryContext(catalog: catalog, hub: hub, nodeName: config.effectiveNodeName,
                                                  nodeAddress: config.effectiveNodeAddress, health: health),
                        limits: config.httpLimits, admission: config.writeAdmission, uploadDirectory: config.dataDirectory,
                        acl: ACLContext(store: acl, enabled: config.aclEnabled, defaultAllows: config.aclDefaultAllows,
                                        clusterToken: config.raftClusterToken, tls: config.tlsFiles != nil),
                        tls: tls,
                        extraMetrics: extraMetrics,
                        logger: logger)
        proposerBox.proposer = api.proposer
        upkeep = ServerUpkeep(loop: group.next(), driver: driver, catalog: catalog, proposer: api.proposer,
                              node: NodeRecord(name: config.effectiveNodeName, address: config.effectiveNodeAddress),
                              logger: logger)
        do {
            raftPort = try transport.start()
        } catch {
            health?.stop()
            throw StartError(code: .unavailable, message: "cannot bind raft \(config.raftListen): \(error)")
        }
        do {
            httpPort = try api.start(inheritedSocket: httpSocket)
        } catch {
            transport.stop()
            health?.stop()
            throw StartError(code: .unavailable, message: "cannot bind http \(config.httpListen): \(error)")
        }
        driver.start()
        health?.start()
        upkeep.start()
        if let join = config.raftJoin {
            startJoining(through: join, config: config)
        }
    }

    /// SIGHUP: the certificates and key are read again; new connections use them, established
    /// ones keep theirs. A file that cannot be used leaves the old material in force.
    func reloadTLS() {
        guard let tls, let files = tlsFiles else { return }
        do {
            let fresh = try ClusterTLS(files: files, verifyIncomingHTTPS: verifyIncomingHTTPS)
            tls.replace(with: fresh)
            logger.info("TLS certificates reloaded", metadata: [
                "tls.cert_file": "\(files.certFile)", "tls.not_after": "\(Date(timeIntervalSince1970: fresh.certificateNotAfter))",
            ])
        } catch {
            logger.error("TLS certificates not reloaded; the previous ones stay in force: \(error)")
        }
    }

    /// SIGTERM: a leader hands over first, so a rolling restart causes no election timeout.
    func stop() {
        upkeep.stop()
        health?.stop()
        if let handedOver = try? driver.stepDownForShutdown().wait(), handedOver {
            logger.info("leadership handed over before shutdown")
        }
        api.stop()
        driver.stop()
        transport.stop()
        try? group.syncShutdownGracefully()
        try? raftGroup.syncShutdownGracefully()
    }
}

/// The catalog's state goes into Raft snapshots as the section "registry" (Registry does not
/// know about Cluster: DESIGN.md's module map).
extension Catalog: SnapshotParticipant {
    public var snapshotName: String { "registry" }
    public func snapshotData() throws -> [UInt8] { try snapshotImage() }
    public func pinSnapshotData() throws -> PinnedImage { try pinSnapshotImage() }
    public func validateSnapshot(_ data: [UInt8]) throws { try validate(image: data) }
    public func restoreSnapshot(_ data: [UInt8], appliedIndex: UInt64) throws { try restore(image: data, appliedIndex: appliedIndex) }
}

/// The ACL state goes into Raft snapshots as the section "acl". An operator's snapshot taken
/// before ACLs existed has none: restoring it leaves the ACLs as they are (an operator does not
/// lock themselves out by restoring an old backup).
extension ACLStore: SnapshotParticipant {
    public var snapshotName: String { "acl" }
    public var isOptionalInRestore: Bool { true }
    public func snapshotData() throws -> [UInt8] { try snapshotImage() }
    public func pinSnapshotData() throws -> PinnedImage { try pinSnapshotImage() }
    public func validateSnapshot(_ data: [UInt8]) throws { try validate(image: data) }
    public func restoreSnapshot(_ data: [UInt8], appliedIndex: UInt64) throws { try restore(image: data, appliedIndex: appliedIndex) }
}

/// How far below the DNS workers the write path's threads run (`dns.background_nice`,
/// `dns.background_idle`).
struct BackgroundPriority: Sendable {
    var nice: Int
    var idle: Bool
}

/// Runs every thread of `group` below the process (the DNS workers): see
/// `Configuration.dnsBackgroundNice`.
func lowerPriority(of group: MultiThreadedEventLoopGroup, to priority: BackgroundPriority, logger: Logger) {
    for loop in group.makeIterator() {
        loop.execute { lowerCurrentThreadPriority(to: priority, logger: logger) }
    }
}

func lowerCurrentThreadPriority(to priority: BackgroundPriority, logger: Logger) {
    if priority.idle, disco_thread_set_idle_policy() < 0 {
        logger.warning("cannot run a write-path thread as SCHED_IDLE; it is only niced")
    }
    guard priority.nice > 0 else { return }
    let result = disco_thread_lower_priority(Int32(priority.nice))
    if result < 0 {
        logger.warning("cannot lower a write-path thread's priority; it competes with DNS answering as an equal",
                       metadata: ["errno": "\(-result)"])
    }
}
