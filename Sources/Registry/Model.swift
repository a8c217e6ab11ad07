import Foundation

/// A check's status, with Consul's names and order (critical is worst).
public enum HealthStatus: String, Codable, Sendable, Comparable, CaseIterable {
    case passing, warning, critical

    /// Consul's maintenance checks and unknown statuses count as critical.
    public init(consul text: String) {
        self = HealthStatus(rawValue: text.lowercased()) ?? .critical
    }

    private var rank: Int {
        switch self {
        case .passing: 0
        case .warning: 1
        case .critical: 2
        }
    }

    public static func < (lhs: HealthStatus, rhs: HealthStatus) -> Bool { lhs.rank < rhs.rank }
}

/// A machine that runs service instances (Consul's catalog node).
public struct NodeRecord: Codable, Sendable, Equatable {
    public var name: String
    public var address: String
    public var meta: [String: String]

    public init(name: String, address: String, meta: [String: String] = [:]) {
        self.name = name
        self.address = address
        self.meta = meta
    }
}

/// Consul's weights: the SRV weight of an instance while passing and while warning.
public struct Weights: Codable, Sendable, Equatable {
    public var passing: Int
    public var warning: Int

    public static let `default` = Weights(passing: 1, warning: 1)

    public init(passing: Int, warning: Int) {
        self.passing = passing
        self.warning = warning
    }
}

/// One registered instance of a service, on one node.
public struct ServiceInstance: Codable, Sendable, Equatable {
    /// Unique per node; Consul defaults it to the service name.
    public var id: String
    public var node: String
    public var name: String
    public var tags: [String]
    /// Empty: the node's address.
    public var address: String
    public var port: Int
    public var meta: [String: String]
    public var weights: Weights
    /// The server that first wrote the registration (the leader then), kept as it is when the
    /// instance is registered again, through whichever server, so that stays a no-op.
    /// Informational: the instance's node is its client's host (`AgentNode`), not this server.
    public var registeredBy: String
    /// Consul's EnableTagOverride: kept and reported (anti-entropy, which it governs in Consul,
    /// does not exist in Disco).
    public var enableTagOverride: Bool

    public init(id: String, node: String, name: String, tags: [String] = [], address: String = "", port: Int = 0,
                meta: [String: String] = [:], weights: Weights = .default, registeredBy: String = "",
                enableTagOverride: Bool = false) {
        self.id = id
        self.node = node
        self.name = name
        self.tags = tags
        self.address = address
        self.port = port
        self.meta = meta
        self.weights = weights
        self.registeredBy = registeredBy
        self.enableTagOverride = enableTagOverride
    }

    private enum CodingKeys: String, CodingKey {
        case id, node, name, tags, address, port, meta, weights, registeredBy, enableTagOverride
    }

    /// The JSON form of entries written before the binary one has no `enableTagOverride`.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init(id: try c.decode(String.self, forKey: .id), node: try c.decode(String.self, forKey: .node),
                  name: try c.decode(String.self, forKey: .name), tags: try c.decode([String].self, forKey: .tags),
                  address: try c.decode(String.self, forKey: .address), port: try c.decode(Int.self, forKey: .port),
                  meta: try c.decode([String: String].self, forKey: .meta), weights: try c.decode(Weights.self, forKey: .weights),
                  registeredBy: try c.decode(String.self, forKey: .registeredBy),
                  enableTagOverride: try c.decodeIfPresent(Bool.self, forKey: .enableTagOverride) ?? false)
    }
}

/// How a check is run, kept so the health checker that owns it can run it (Consul's check
/// definition fields; Health.swift runs them).
public struct CheckDefinition: Codable, Sendable, Equatable {
    public var http: String?
    public var method: String?
    public var tcp: String?
    /// Seconds. A TTL check turns critical if not renewed within it.
    public var ttlSeconds: Double?
    public var intervalSeconds: Double?
    public var timeoutSeconds: Double?
    public var deregisterCriticalAfterSeconds: Double?
    /// HTTP request headers, each name with its values (Consul's `Header`).
    public var header: [String: [String]]?
    /// HTTPS without verifying the server's certificate (Consul's `TLSSkipVerify`).
    public var tlsSkipVerify: Bool?
    /// Consecutive successes before the check turns passing (Consul: 0 = at once).
    public var successBeforePassing: Int?
    /// Consecutive failures before it turns warning (Consul: defaults to `failuresBeforeCritical`).
    public var failuresBeforeWarning: Int?
    /// Consecutive failures before it turns critical (Consul: 0 = at once).
    public var failuresBeforeCritical: Int?

    public init(http: String? = nil, method: String? = nil, tcp: String? = nil, ttlSeconds: Double? = nil,
                intervalSeconds: Double? = nil, timeoutSeconds: Double? = nil,
                deregisterCriticalAfterSeconds: Double? = nil, header: [String: [String]]? = nil,
                tlsSkipVerify: Bool? = nil, successBeforePassing: Int? = nil, failuresBeforeWarning: Int? = nil,
                failuresBeforeCritical: Int? = nil) {
        self.http = http
        self.method = method
        self.tcp = tcp
        self.ttlSeconds = ttlSeconds
        self.intervalSeconds = intervalSeconds
        self.timeoutSeconds = timeoutSeconds
        self.deregisterCriticalAfterSeconds = deregisterCriticalAfterSeconds
        self.header = header
        self.tlsSkipVerify = tlsSkipVerify
        self.successBeforePassing = successBeforePassing
        self.failuresBeforeWarning = failuresBeforeWarning
        self.failuresBeforeCritical = failuresBeforeCritical
    }

    /// Consul's check type names.
    public var type: String {
        if http != nil { return "http" }
        if tcp != nil { return "tcp" }
        if ttlSeconds != nil { return "ttl" }
        return ""
    }

    /// Whether a server runs this check (HTTP, TCP or TTL); other checks are set only by clients.
    public var isRunnable: Bool { http != nil || tcp != nil || ttlSeconds != nil }
}

/// A health check on a node, or on one service instance of it (`serviceID` non-empty).
public struct CheckRecord: Codable, Sendable, Equatable {
    public var id: String
    public var node: String
    public var name: String
    public var serviceID: String
    public var status: HealthStatus
    public var output: String
    public var notes: String
    public var definition: CheckDefinition

    public init(id: String, node: String, name: String, serviceID: String = "", status: HealthStatus = .critical,
                output: String = "", notes: String = "", definition: CheckDefinition = CheckDefinition()) {
        self.id = id
        self.node = node
        self.name = name
        self.serviceID = serviceID
        self.status = status
        self.output = output
        self.notes = notes
        self.definition = definition
    }
}

/// Consul's maintenance mode is a critical check with this ID prefix on the service.
public let maintenanceCheckPrefix = "_service_maintenance:"
/// Consul's node maintenance mode is a critical node check with this ID.
public let nodeMaintenanceCheckID = "_node_maintenance"

/// One check's new status, as the server that runs the check decided it (`checkStatuses`).
public struct CheckStatusUpdate: Codable, Sendable, Equatable {
    public var node: String
    public var checkID: String
    public var status: HealthStatus
    public var output: String

    public init(node: String, checkID: String, status: HealthStatus, output: String) {
        self.node = node
        self.checkID = checkID
        self.status = status
        self.output = output
    }
}

/// A change to the catalog, as it travels in a Raft log entry. Everything replicated is one of
/// these (DESIGN.md); the catalog never changes any other way.
public indirect enum CatalogCommand: Codable, Sendable, Equatable {
    /// Creates or updates the node, and the service and checks if given. Registering exactly
    /// what is there already changes nothing (no new index). `replaceChecks`: the service's
    /// checks not listed are removed (Consul's `replace-existing-checks`).
    case register(node: NodeRecord, service: ServiceInstance?, checks: [CheckRegistration], replaceChecks: Bool)
    /// With neither `serviceID` nor `checkID`, the node and everything on it.
    case deregister(node: String, serviceID: String?, checkID: String?)
    /// A check's status transition (only transitions are replicated).
    case updateCheck(node: String, checkID: String, status: HealthStatus, output: String)
    /// Status transitions of checks run by the servers, batched per short window (Health).
    /// An update of a check that is gone is skipped.
    case checkStatuses([CheckStatusUpdate])
    /// The servers that run health checks: the voters and learners the leader was in contact
    /// with when it proposed this. Each check runs on the one chosen from them by rendezvous
    /// hashing, so every server derives the same owner from the same log position.
    case checkRunners([UInt64])
    /// Many commands in one entry, applied in order in one transaction.
    case batch([CatalogCommand])

    /// Registry log entries start with a byte at or above this; KV commands use bytes below
    /// 0x40, so the apply path can tell whose an entry is without decoding it. 0x40 itself
    /// marks the JSON entries written before the binary form (still read).
    public static let entryTag: UInt8 = 0x40
    /// The first byte of an entry in the first binary form (BinaryCodec.swift): still read.
    public static let binaryV1EntryTag: UInt8 = 0x41
    /// The first byte of an entry in the binary form written now: as 0x41, plus the check
    /// definition's thresholds, headers and TLS flag, and the health commands.
    public static let binaryEntryTag: UInt8 = 0x42
    /// Commands in a batch above this are refused before they are proposed.
    public static let batchCommandsMax = 1024

    public var encoded: [UInt8] {
        var writer = BinaryWriter(tag: Self.binaryEntryTag)
        write(to: &writer)
        return writer.bytes
    }

    public init(decoding bytes: [UInt8]) throws {
        switch bytes.first {
        case Self.binaryEntryTag, Self.binaryV1EntryTag:
            var reader = BinaryReader(bytes, from: 1, extendedChecks: bytes.first == Self.binaryEntryTag)
            do throws(BinaryReader.Failure) {
                self = try CatalogCommand(from: &reader)
                guard reader.atEnd else { throw reader.fail("the end of the entry") }
            } catch {
                throw RegistryError.malformedEntry("\(error)")
            }
        case Self.entryTag:
            do {
                self = try JSONDecoder().decode(CatalogCommand.self, from: Data(bytes.dropFirst()))
            } catch {
                throw RegistryError.malformedEntry("\(error)")
            }
        default:
            throw RegistryError.malformedEntry("not a registry entry")
        }
    }

    /// The JSON form of the first registry entries: decoded still, written only by tests.
    public var legacyJSONEncoded: [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        // Encoding a value type of strings and numbers cannot fail.
        let json = (try? encoder.encode(self)) ?? Data()
        precondition(!json.isEmpty, "a catalog command failed to encode")
        return [Self.entryTag] + Array(json)
    }
}

public enum RegistryError: Error, Sendable, CustomStringConvertible {
    case malformedEntry(String)
    case storage(String)

    public var description: String {
        switch self {
        case .malformedEntry(let why): "malformed registry log entry: \(why)"
        case .storage(let why): "registry storage: \(why)"
        }
    }
}
