import Auth
import API
import DNSServer
import DNSWire
import Foundation
import Health
import Registry
import Logging
import RateLimit

/// Where a setting came from, for error messages.
public enum ConfigSource: Sendable, Equatable, CustomStringConvertible {
    case file(String, line: Int)
    case environment(String)
    case flag(String)

    public var description: String {
        switch self {
        case .file(let path, let line): "\(path):\(line)"
        case .environment(let name): "environment \(name)"
        case .flag(let name): "flag \(name)"
        }
    }
}

/// A configuration error: where, which key, what was expected.
public struct ConfigError: Error, Sendable, Equatable, CustomStringConvertible {
    public var source: ConfigSource
    public var key: String
    public var message: String

    /// `file:line: key: message`, or `file:line: message` for a syntax error (no key yet).
    public var description: String { key.isEmpty ? "\(source): \(message)" : "\(source): \(key): \(message)" }
}

/// discod's settings. Precedence (DESIGN.md): flags > DISCO_* environment > TOML file > defaults.
/// Every key is documented, with its default, in Config/discod.toml.
public struct Configuration: Sendable, Equatable {
    /// Addresses to serve DNS on, UDP and TCP.
    public var dnsListen: [ListenAddress]
    /// UDP worker threads (one SO_REUSEPORT socket each, per address).
    public var dnsWorkers: Int
    /// The UDP payload size advertised in EDNS and the most a UDP response carries.
    public var dnsUDPPayloadBytes: Int
    /// Concurrent TCP connections accepted; more are closed on accept.
    public var dnsTCPConnectionsMax: Int
    /// Idle TCP connections are closed after this many seconds.
    public var dnsTCPIdleTimeoutSeconds: Int
    /// Concurrent TCP connections from one client network (`dns.limits` prefix lengths).
    public var dnsTCPConnectionsPerClientMax = ClientLimits.TCP.connectionsPerClientMaxDefault
    /// Seconds to receive one whole query over TCP, and for a client to read its answers.
    public var dnsTCPQueryTimeoutSeconds = ClientLimits.TCP.queryTimeoutSecondsDefault
    /// Queries answered on one TCP connection before it is closed (0: no cap).
    public var dnsTCPQueriesPerConnectionMax = ClientLimits.TCP.queriesPerConnectionMaxDefault
    /// Unread answer bytes per TCP connection before discod stops reading it.
    public var dnsTCPOutboundBytesMax = ClientLimits.TCP.outboundBytesMaxDefault
    /// Response rate limiting on UDP (`dns.rrl.*`).
    public var dnsRRL = ResponseRateLimiter.Configuration.default
    /// The per-client-network query rate limit (`dns.limits.*`).
    public var dnsQueryLimit = QueryRateLimiter.Configuration()
    /// Positive answers without the zone's NS RRset in AUTHORITY (NSD's default is to add it).
    public var dnsMinimalResponses: Bool
    /// `dns.metrics`: per-worker query counters and the sampled answer latency (issue 17); off
    /// only to measure what they cost.
    public var dnsMetrics = true
    /// `dns.query_log_every`: log one query in this many (client, question, rcode); 0: none.
    public var dnsQueryLogEvery = 0
    /// Bound of `dns.query_log_every`: one in a billion is as good as none.
    public static let queryLogEveryMax = 1_000_000_000
    /// The directory of `<origin>.zone` master files.
    public var zonesDirectory: String
    /// The domain the registry is answered under (`consul.` for a drop-in), with a final dot.
    public var dnsDomain: String
    /// TTL of service answers (a service's meta `dns-ttl` overrides it).
    public var dnsServiceTTLSeconds: Int
    /// TTL of node and address answers.
    public var dnsNodeTTLSeconds: Int
    /// SOA minimum of the registry zone: how long NXDOMAIN/NODATA are cached.
    public var dnsNegativeTTLSeconds: Int
    /// Answer only passing instances; by default warning instances are answered too (Consul).
    public var dnsOnlyPassing: Bool
    /// How far below the DNS workers the rest of discod runs (the HTTP API, health checks, DNS
    /// view rebuilds), as a nice increment: under a registration storm the CPU goes to answering
    /// first. The Raft thread stays at the workers' priority (ClusterRuntime). 0: every thread alike.
    /// nil (the default): 0 when the UDP workers answer in SCHED_FIFO (they preempt the write
    /// path whatever its nice value, and at +10 it cost 16% of the writes at 64 clients), else
    /// `dnsBackgroundNiceDefault`; `DiscoDaemon` decides when it starts.
    public var dnsBackgroundNice: Int?
    /// The write path's threads (those `dnsBackgroundNice` lowers) also run as SCHED_IDLE: only
    /// on CPU no normal thread wants, preempted at once when a DNS worker wakes. Off by default:
    /// under a DNS flood that fills every CPU, the HTTP API and health checks would get almost
    /// none (at nice +10 they keep about a tenth), while Raft's thread is never lowered.
    public var dnsBackgroundIdle = false
    /// The UDP workers answer in SCHED_FIFO at this priority, each within a CPU budget
    /// (`RealtimeSettings`); 0: normal scheduling.
    public var dnsRealtime = RealtimeSettings()
    /// When the UDP workers shed new queries at the door (`OverloadSettings`).
    public var dnsOverload = OverloadSettings()
    /// What `CH TXT id.server` / `hostname.bind` answer; nil: this host's name; "": refused.
    public var dnsIdentity: String?
    /// What `CH TXT version.bind` / `version.server` answer; "": refused.
    public var dnsVersion = Configuration.dnsVersionDefault
    public static let dnsVersionDefault = "Disco"

    /// How the write path's threads are lowered below the DNS workers.
    var backgroundPriority: BackgroundPriority {
        BackgroundPriority(nice: dnsBackgroundNice ?? Self.dnsBackgroundNiceDefault, idle: dnsBackgroundIdle)
    }
    /// How a service answer's records are ordered per query (shuffle, round_robin, fixed).
    public var dnsSelection: SelectionPolicy = .shuffle
    /// A name with fewer healthy instances than this percentage answers with all of them.
    public var dnsPanicThresholdPercent: Int = ServiceViewConfig.panicThresholdPercentDefault
    /// An instance that turns healthy ramps up to its full weight over this many seconds.
    public var dnsSlowStartSeconds: Int = Int(ServiceViewConfig.slowStartSecondsDefault)
    /// At most this many records per service answer (Consul's `a_record_limit`); 0: as many as fit.
    public var dnsARecordLimit: Int = 0
    /// Service answers' TTLs are lowered by a random 0 to this many percent.
    public var dnsTTLJitterPercent: Int = 0
    /// This server's node name in the catalog (services registered through its agent API live
    /// on it); empty: `disco-<raft id>`.
    public var nodeName: String
    /// The address recorded for this server's node; empty: the HTTP, else Raft, listen host,
    /// else 127.0.0.1.
    public var nodeAddress: String
    public var logLevel: Logger.Level
    /// `log.format`: text (journald-aware) or json.
    public var logFormat: LogFormat = .text
    /// This server's Raft identity; 0 with no `raft.servers`: DNS only, no cluster.
    public var raftNodeID: UInt64
    /// Where peers reach this server's Raft transport.
    public var raftListen: ListenAddress
    /// The founding servers of the cluster, this one included (the same list on every server).
    public var raftServers: [ServerSpec]
    /// A member's HTTP API to ask for admission (`--join`): this server starts with an empty
    /// membership and is added as a learner, then promoted to voter once caught up. nil: found
    /// or restart a cluster from `raftServers`.
    public var raftJoin: ListenAddress? = nil
    /// Servers with different tokens refuse each other's Raft frames (etcd's
    /// initial-cluster-token): two clusters on one network cannot mix.
    public var raftClusterToken: String
    /// The HTTP API.
    public var httpListen: ListenAddress
    /// Bounds of the `http.*` limits: a connection cap above a million is no cap (file
    /// descriptors run out first), a timeout above a day none.
    public static let httpConnectionsMax = 1 << 20
    public static let httpTimeoutSecondsMax = 86_400
    /// Bound of the `http.write_limit.*` rates: a million writes a second is no limit.
    public static let writesPerSecondMax = 1_000_000
    /// raft.db (the Raft log) and kv.db (the state machine) live here.
    public var dataDirectory: String
    /// Connection and request limits of the HTTP API (`http.*`).
    public var httpLimits = HTTPLimits()
    /// Write admission control (`http.write_limit.*`).
    public var writeAdmission = WriteAdmission.Configuration()
    /// The `[health]` section: running the checks this server owns.
    public var health = HealthSettings()
    /// `acl.enabled`: every HTTP request is authorised by its token (issue 14). Off by default
    /// and in `--dev`; the shipped service configuration turns it on.
    public var aclEnabled = false
    /// `tls.ca_file`, `tls.cert_file`, `tls.key_file`: with all three, the Raft transport is
    /// mutual TLS and the HTTP API is HTTPS (issue 14). nil: plaintext.
    public var tlsFiles: TLSFiles? = nil
    /// `tls.verify_incoming_https`: HTTPS clients must present a certificate from the CA.
    public var tlsVerifyIncomingHTTPS = false
    /// `raft.allow_insecure`, `http.allow_insecure`: a listener off loopback without TLS is
    /// refused unless this says it is on purpose (a private network, a test).
    public var raftAllowInsecure = false
    public var httpAllowInsecure = false
    /// `acl.default_policy`: what a token may do where no rule of its policies says (Consul's
    /// `allow | deny`; the anonymous token has no policies until given some).
    public var aclDefaultAllows = true

    /// One founding server: `ID=RAFT_ADDR,HTTP_ADDR`, e.g. `2=10.0.0.2:8300,10.0.0.2:8500`.
    public struct ServerSpec: Sendable, Equatable, CustomStringConvertible {
        public var id: UInt64
        public var raft: ListenAddress
        public var http: ListenAddress

        public init(id: UInt64, raft: ListenAddress, http: ListenAddress) {
            self.id = id
            self.raft = raft
            self.http = http
        }

        public init?(_ text: String) {
            let parts = text.split(separator: "=", maxSplits: 1)
            guard parts.count == 2, let id = UInt64(parts[0]), id > 0 else { return nil }
            let addresses = parts[1].split(separator: ",")
            guard addresses.count == 2, let raft = ListenAddress(String(addresses[0])),
                  let http = ListenAddress(String(addresses[1])) else { return nil }
            self.init(id: id, raft: raft, http: http)
        }

        public var description: String { "\(id)=\(raft),\(http)" }
    }

    /// The catalog node name of this server.
    public var effectiveNodeName: String { nodeName.isEmpty ? "disco-\(raftNodeID)" : nodeName }

    /// The address of this server's catalog node.
    public var effectiveNodeAddress: String {
        if !nodeAddress.isEmpty { return nodeAddress }
        for host in [httpListen.host, raftListen.host] where host != "0.0.0.0" && host != "::" { return host }
        return "127.0.0.1"
    }

    /// Whether this server runs the replicated store (a cluster of one in --dev).
    public var clusterEnabled: Bool { raftNodeID != 0 && (!raftServers.isEmpty || raftJoin != nil) }

    /// The defaults of a service install (Config/discod.toml documents the same values).
    public static let service = Configuration(
        dnsListen: [ListenAddress(host: "0.0.0.0", port: 53)],
        dnsWorkers: Configuration.workersDefault,
        dnsUDPPayloadBytes: Answerer.udpPayloadBytesMax,
        dnsTCPConnectionsMax: ClientLimits.TCP.connectionsMaxDefault,
        dnsTCPIdleTimeoutSeconds: ClientLimits.TCP.idleTimeoutSecondsDefault,
        dnsMinimalResponses: false,
        zonesDirectory: Configuration.zonesDirectoryDefault,
        dnsDomain: "disco.",
        dnsServiceTTLSeconds: Int(ServiceViewConfig.serviceTTLSecondsDefault),
        dnsNodeTTLSeconds: Int(ServiceViewConfig.nodeTTLSecondsDefault),
        dnsNegativeTTLSeconds: Int(ServiceViewConfig.negativeTTLSecondsDefault),
        dnsOnlyPassing: false,
        nodeName: "",
        nodeAddress: "",
        logLevel: .info,
        raftNodeID: 0,
        raftListen: ListenAddress(host: "0.0.0.0", port: 8300),
        raftServers: [],
        raftClusterToken: "disco-cluster",
        httpListen: ListenAddress(host: "127.0.0.1", port: 8500),
        dataDirectory: "/var/lib/disco")

    /// `discod --dev`: loopback port 8600, the Zones directory of the working tree.
    public static let development: Configuration = {
        var config = Configuration.service
        config.dnsListen = [ListenAddress(host: "127.0.0.1", port: 8600)]
        config.zonesDirectory = "Zones"
        // A cluster of one on loopback (DESIGN.md defaults).
        config.raftNodeID = 1
        config.raftListen = ListenAddress(host: "127.0.0.1", port: 8300)
        config.raftServers = [ServerSpec(id: 1, raft: config.raftListen, http: config.httpListen)]
        config.dataDirectory = ".disco-data"
        return config
    }()

    /// One worker per core, at least one.
    public static var workersDefault: Int { max(1, ProcessInfo.processInfo.activeProcessorCount) }

    /// Nice +10 where the DNS workers cannot answer in SCHED_FIFO: CFS then gives a busy DNS
    /// worker about 90% of a core it shares with a busy write-path thread, while the write path
    /// still gets the rest (heartbeats need little).
    public static let dnsBackgroundNiceDefault = 10
    /// Where zone files are read from unless configured; a server without it serves the
    /// registry only.
    public static let zonesDirectoryDefault = "/etc/disco/zones"
    /// Linux's lowest priority is nice 19; a larger increment would mean the same.
    public static let dnsBackgroundNiceMax = 19

    /// A longer batch window delays every health transition by as much; 5 s is already slow.
    public static let healthBatchWindowMillisecondsMax = 5000

    /// Upper bound on workers: more threads than this per address only adds contention.
    public static let dnsWorkersMax = 64
    /// Bounds of the limits' keys (beyond them a value is almost surely a typo).
    public static let dnsTCPQueryTimeoutSecondsMax = 300
    public static let dnsTCPOutboundBytesMin = 16 << 10
    public static let dnsTCPOutboundBytesMax = 16 << 20
    public static let dnsRRLWindowSecondsMax = 3600

    /// The limits the DNS servers enforce, from these settings.
    public var clientLimits: ClientLimits {
        ClientLimits(rrl: dnsRRL, queries: dnsQueryLimit,
                     tcp: ClientLimits.TCP(connectionsMax: dnsTCPConnectionsMax,
                                           connectionsPerClientMax: dnsTCPConnectionsPerClientMax,
                                           idleTimeoutSeconds: dnsTCPIdleTimeoutSeconds,
                                           queryTimeoutSeconds: dnsTCPQueryTimeoutSeconds,
                                           queriesPerConnectionMax: dnsTCPQueriesPerConnectionMax,
                                           outboundBytesMax: dnsTCPOutboundBytesMax))
    }

    /// A list of networks: one "CIDR" string or an array of them.
    static func networks(_ value: TOMLValue.Kind) -> [ClientNetwork]? {
        let texts: [String]
        switch value {
        case .string(let one): texts = one.isEmpty ? [] : [one]
        case .array(let items):
            var strings: [String] = []
            for item in items {
                guard case .string(let text) = item.kind else { return nil }
                strings.append(text)
            }
            texts = strings
        default: return nil
        }
        var networks: [ClientNetwork] = []
        for text in texts {
            guard let network = ClientNetwork(text) else { return nil }
            networks.append(network)
        }
        return networks
    }

    /// `TABLE.ipv4_prefix_length`, `TABLE.ipv6_prefix_length` and `TABLE.exempt`: what one
    /// client network is, and the networks exempt, for RRL (`dns.rrl`) and the client limits
    /// (`dns.limits`) alike.
    static func clientNetworkKeys(_ table: String, ipv4: WritableKeyPath<Configuration, Int> & Sendable,
                                  ipv6: WritableKeyPath<Configuration, Int> & Sendable,
                                  exempt: WritableKeyPath<Configuration, [ClientNetwork]> & Sendable) -> [Key] {
        [(ipv4, 32, "ipv4"), (ipv6, 128, "ipv6")].map { path, bits, family in
            Key(name: "\(table).\(family)_prefix_length") { config, value in
                guard case .integer(let n) = value, (1...bits).contains(n) else { return "expected an integer from 1 to \(bits)" }
                config[keyPath: path] = n
                return nil
            }
        } + [
            Key(name: "\(table).exempt") { config, value in
                guard let networks = networks(value) else {
                    return "expected an array of networks such as \"10.0.0.0/8\" or \"2001:db8::/32\" (no host bits set)"
                }
                config[keyPath: exempt] = networks
                return nil
            },
        ]
    }

    // MARK: - Keys

    /// A configuration key: its TOML name, environment name and how to apply a value.
    struct Key: Sendable {
        let name: String
        let apply: @Sendable (inout Configuration, TOMLValue.Kind) -> String?  // nil, or what was expected
    }

    /// A key holding an integer in `range`; `zero` says what 0 means when the range allows it.
    static func integerKey(_ name: String, _ range: ClosedRange<Int>, _ path: WritableKeyPath<Configuration, Int> & Sendable,
                           zero: String? = nil) -> Key {
        Key(name: name) { config, value in
            guard case .integer(let n) = value, range.contains(n) else {
                return "expected an integer from \(range.lowerBound)\(zero.map { " (\($0))" } ?? "") to \(range.upperBound)"
            }
            config[keyPath: path] = n
            return nil
        }
    }

    static let keys: [Key] = [
        Key(name: "dns.listen") { config, value in
            let texts: [String]
            switch value {
            case .string(let one): texts = [one]
            case .array(let items):
                var strings: [String] = []
                for item in items {
                    guard case .string(let text) = item.kind else { return "expected an array of \"HOST:PORT\" strings" }
                    strings.append(text)
                }
                texts = strings
            default: return "expected \"HOST:PORT\" or an array of them"
            }
            guard !texts.isEmpty else { return "expected at least one address" }
            var addresses: [ListenAddress] = []
            for text in texts {
                guard let address = ListenAddress(text) else {
                    return "'\(text)' is not an address (expected IPv4:PORT or [IPv6]:PORT)"
                }
                addresses.append(address)
            }
            config.dnsListen = addresses
            return nil
        },
        Key(name: "dns.workers") { config, value in
            guard case .integer(let n) = value, (1...dnsWorkersMax).contains(n) else {
                return "expected an integer from 1 to \(dnsWorkersMax)"
            }
            config.dnsWorkers = n
            return nil
        },
        Key(name: "dns.udp_payload_bytes") { config, value in
            guard case .integer(let n) = value, (512...4096).contains(n) else { return "expected an integer from 512 to 4096" }
            config.dnsUDPPayloadBytes = n
            return nil
        },
        Key(name: "dns.tcp_connections_max") { config, value in
            guard case .integer(let n) = value, (1...1_000_000).contains(n) else { return "expected an integer from 1 to 1000000" }
            config.dnsTCPConnectionsMax = n
            return nil
        },
        Key(name: "dns.tcp_idle_timeout_seconds") { config, value in
            guard case .integer(let n) = value, (1...3600).contains(n) else { return "expected an integer from 1 to 3600" }
            config.dnsTCPIdleTimeoutSeconds = n
            return nil
        },
        Key(name: "dns.tcp_connections_per_client_max") { config, value in
            guard case .integer(let n) = value, (1...1_000_000).contains(n) else { return "expected an integer from 1 to 1000000" }
            config.dnsTCPConnectionsPerClientMax = n
            return nil
        },
        Key(name: "dns.tcp_query_timeout_seconds") { config, value in
            guard case .integer(let n) = value, (1...dnsTCPQueryTimeoutSecondsMax).contains(n) else {
                return "expected an integer from 1 to \(dnsTCPQueryTimeoutSecondsMax)"
            }
            config.dnsTCPQueryTimeoutSeconds = n
            return nil
        },
        Key(name: "dns.tcp_queries_per_connection_max") { config, value in
            guard case .integer(let n) = value, (0...100_000_000).contains(n) else { return "expected an integer from 0 (no cap) to 100000000" }
            config.dnsTCPQueriesPerConnectionMax = n
            return nil
        },
        Key(name: "dns.tcp_outbound_bytes_max") { config, value in
            guard case .integer(let n) = value, (dnsTCPOutboundBytesMin...dnsTCPOutboundBytesMax).contains(n) else {
                return "expected an integer from \(dnsTCPOutboundBytesMin) to \(dnsTCPOutboundBytesMax)"
            }
            config.dnsTCPOutboundBytesMax = n
            return nil
        },
        Key(name: "dns.rrl.enabled") { config, value in
            guard case .boolean(let on) = value else { return "expected true or false" }
            config.dnsRRL.enabled = on
            return nil
        },
        Key(name: "dns.rrl.responses_per_second") { config, value in
            guard case .integer(let n) = value, (1...BucketPolicy.ratePerSecondMax).contains(n) else {
                return "expected an integer from 1 to \(BucketPolicy.ratePerSecondMax) (dns.rrl.enabled = false turns RRL off)"
            }
            config.dnsRRL.responsesPerSecond = n
            return nil
        },
        Key(name: "dns.rrl.window_seconds") { config, value in
            guard case .integer(let n) = value, (1...dnsRRLWindowSecondsMax).contains(n) else {
                return "expected an integer from 1 to \(dnsRRLWindowSecondsMax)"
            }
            config.dnsRRL.windowSeconds = n
            return nil
        },
        Key(name: "dns.rrl.slip") { config, value in
            let max = ResponseRateLimiter.Configuration.slipMax
            guard case .integer(let n) = value, (0...max).contains(n) else {
                return "expected an integer from 0 (drop every limited response) to \(max)"
            }
            config.dnsRRL.slip = n
            return nil
        },
        Key(name: "dns.rrl.log_only") { config, value in
            guard case .boolean(let on) = value else { return "expected true or false" }
            config.dnsRRL.logOnly = on
            return nil
        },
        Key(name: "dns.rrl.table_entries") { config, value in
            guard case .integer(let n) = value, (RateTable.entriesMin...RateTable.entriesMax).contains(n), n & (n - 1) == 0 else {
                return "expected a power of two from \(RateTable.entriesMin) to \(RateTable.entriesMax)"
            }
            config.dnsRRL.tableEntries = n
            return nil
        },
        Key(name: "dns.limits.queries_per_second") { config, value in
            guard case .integer(let n) = value, (0...BucketPolicy.ratePerSecondMax).contains(n) else {
                return "expected an integer from 0 (no limit) to \(BucketPolicy.ratePerSecondMax)"
            }
            config.dnsQueryLimit.queriesPerSecond = n
            return nil
        },
    ] + clientNetworkKeys("dns.rrl", ipv4: \.dnsRRL.ipv4PrefixLength, ipv6: \.dnsRRL.ipv6PrefixLength, exempt: \.dnsRRL.exempt)
      + clientNetworkKeys("dns.limits", ipv4: \.dnsQueryLimit.ipv4PrefixLength, ipv6: \.dnsQueryLimit.ipv6PrefixLength,
                          exempt: \.dnsQueryLimit.exempt) + [
        integerKey("dns.query_log_every", 0...queryLogEveryMax, \.dnsQueryLogEvery, zero: "no query log"),
        Key(name: "dns.metrics") { config, value in
            guard case .boolean(let on) = value else { return "expected true or false" }
            config.dnsMetrics = on
            return nil
        },
        Key(name: "dns.minimal_responses") { config, value in
            guard case .boolean(let on) = value else { return "expected true or false" }
            config.dnsMinimalResponses = on
            return nil
        },
        Key(name: "dns.domain") { config, value in
            guard case .string(var text) = value, !text.isEmpty, text != "." else { return "expected a domain name such as \"disco.\"" }
            if !text.hasSuffix(".") { text += "." }
            guard (try? DomainName(text)) != nil else { return "'\(text)' is not a domain name" }
            config.dnsDomain = text
            return nil
        },
        Key(name: "dns.identity") { config, value in
            guard case .string(let text) = value, text.utf8.count <= 255 else { return "expected a string of at most 255 bytes" }
            config.dnsIdentity = text
            return nil
        },
        Key(name: "dns.version") { config, value in
            guard case .string(let text) = value, text.utf8.count <= 255 else { return "expected a string of at most 255 bytes" }
            config.dnsVersion = text
            return nil
        },
        Key(name: "dns.service_ttl_seconds") { config, value in
            guard case .integer(let n) = value, (0...Int(ServiceViewConfig.serviceTTLSecondsMax)).contains(n) else {
                return "expected an integer from 0 to \(ServiceViewConfig.serviceTTLSecondsMax)"
            }
            config.dnsServiceTTLSeconds = n
            return nil
        },
        Key(name: "dns.node_ttl_seconds") { config, value in
            guard case .integer(let n) = value, (0...Int(ServiceViewConfig.serviceTTLSecondsMax)).contains(n) else {
                return "expected an integer from 0 to \(ServiceViewConfig.serviceTTLSecondsMax)"
            }
            config.dnsNodeTTLSeconds = n
            return nil
        },
        Key(name: "dns.negative_ttl_seconds") { config, value in
            guard case .integer(let n) = value, (0...Int(ServiceViewConfig.serviceTTLSecondsMax)).contains(n) else {
                return "expected an integer from 0 to \(ServiceViewConfig.serviceTTLSecondsMax)"
            }
            config.dnsNegativeTTLSeconds = n
            return nil
        },
        Key(name: "dns.only_passing") { config, value in
            guard case .boolean(let on) = value else { return "expected true or false" }
            config.dnsOnlyPassing = on
            return nil
        },
        Key(name: "dns.background_nice") { config, value in
            guard case .integer(let n) = value, (0...dnsBackgroundNiceMax).contains(n) else {
                return "expected an integer from 0 to \(dnsBackgroundNiceMax)"
            }
            config.dnsBackgroundNice = n
            return nil
        },
        Key(name: "dns.background_idle") { config, value in
            guard case .boolean(let on) = value else { return "expected true or false" }
            config.dnsBackgroundIdle = on
            return nil
        },
        integerKey("dns.realtime_priority", 0...RealtimeSettings.priorityMax, \.dnsRealtime.priority, zero: "off"),
        integerKey("dns.realtime_budget_percent", 1...100, \.dnsRealtime.budgetPercent),
        integerKey("dns.overload_queue_milliseconds", 0...OverloadSettings.queueMillisecondsMax, \.dnsOverload.queueMilliseconds,
                   zero: "off"),
        Key(name: "tls.ca_file") { config, value in setTLSFile(&config, value) { $0.caFile = $1 } },
        Key(name: "tls.cert_file") { config, value in setTLSFile(&config, value) { $0.certFile = $1 } },
        Key(name: "tls.key_file") { config, value in setTLSFile(&config, value) { $0.keyFile = $1 } },
        Key(name: "tls.verify_incoming_https") { config, value in
            guard case .boolean(let on) = value else { return "expected true or false" }
            config.tlsVerifyIncomingHTTPS = on
            return nil
        },
        Key(name: "raft.allow_insecure") { config, value in
            guard case .boolean(let on) = value else { return "expected true or false" }
            config.raftAllowInsecure = on
            return nil
        },
        Key(name: "http.allow_insecure") { config, value in
            guard case .boolean(let on) = value else { return "expected true or false" }
            config.httpAllowInsecure = on
            return nil
        },
        Key(name: "acl.enabled") { config, value in
            guard case .boolean(let on) = value else { return "expected true or false" }
            config.aclEnabled = on
            return nil
        },
        Key(name: "acl.default_policy") { config, value in
            guard case .string(let text) = value, text == "allow" || text == "deny" else { return "expected allow or deny" }
            config.aclDefaultAllows = text == "allow"
            return nil
        },
        Key(name: "health.enabled") { config, value in
            guard case .boolean(let on) = value else { return "expected true or false" }
            config.health.enabled = on
            return nil
        },
        Key(name: "health.batch_window_milliseconds") { config, value in
            guard case .integer(let n) = value, (1...healthBatchWindowMillisecondsMax).contains(n) else {
                return "expected an integer from 1 to \(healthBatchWindowMillisecondsMax)"
            }
            config.health.batchWindowMilliseconds = Int64(n)
            return nil
        },
        Key(name: "health.flap_transitions_max") { config, value in
            guard case .integer(let n) = value, (1...1000).contains(n) else { return "expected an integer from 1 to 1000" }
            config.health.damping.transitionsMax = n
            return nil
        },
        Key(name: "health.flap_window_seconds") { config, value in
            guard case .integer(let n) = value, (1...86_400).contains(n) else { return "expected an integer from 1 to 86400" }
            config.health.damping.windowSeconds = Double(n)
            return nil
        },
        Key(name: "health.flap_stable_seconds") { config, value in
            guard case .integer(let n) = value, (0...86_400).contains(n) else { return "expected an integer from 0 to 86400" }
            config.health.damping.stableSeconds = Double(n)
            return nil
        },
        Key(name: "health.http_connections_per_host_max") { config, value in
            guard case .integer(let n) = value, (1...64).contains(n) else { return "expected an integer from 1 to 64" }
            config.health.httpConnectionsPerHostMax = n
            return nil
        },
        Key(name: "health.probes_inflight_max") { config, value in
            guard case .integer(let n) = value, (1...100_000).contains(n) else { return "expected an integer from 1 to 100000" }
            config.health.probesInflightMax = n
            return nil
        },
        Key(name: "health.output_bytes_max") { config, value in
            guard case .integer(let n) = value, (64...HealthSettings.outputBytesMaxLimit).contains(n) else {
                return "expected an integer from 64 to \(HealthSettings.outputBytesMaxLimit)"
            }
            config.health.outputBytesMax = n
            return nil
        },
        Key(name: "dns.selection") { config, value in
            let names = SelectionPolicy.allCases.map { "\"\($0.rawValue)\"" }.joined(separator: ", ")
            guard case .string(let text) = value, let policy = SelectionPolicy(rawValue: text) else { return "expected one of \(names)" }
            config.dnsSelection = policy
            return nil
        },
        Key(name: "dns.panic_threshold_percent") { config, value in
            guard case .integer(let n) = value, (0...100).contains(n) else { return "expected an integer from 0 to 100" }
            config.dnsPanicThresholdPercent = n
            return nil
        },
        Key(name: "dns.slow_start_seconds") { config, value in
            guard case .integer(let n) = value, (0...Int(ServiceViewConfig.slowStartSecondsMax)).contains(n) else {
                return "expected an integer from 0 to \(ServiceViewConfig.slowStartSecondsMax)"
            }
            config.dnsSlowStartSeconds = n
            return nil
        },
        Key(name: "dns.a_record_limit") { config, value in
            guard case .integer(let n) = value, (0...Answerer.pickedRecordsMax).contains(n) else {
                return "expected an integer from 0 to \(Answerer.pickedRecordsMax)"
            }
            config.dnsARecordLimit = n
            return nil
        },
        Key(name: "dns.ttl_jitter_percent") { config, value in
            guard case .integer(let n) = value, (0...SelectionOptions.ttlJitterPercentMax).contains(n) else {
                return "expected an integer from 0 to \(SelectionOptions.ttlJitterPercentMax)"
            }
            config.dnsTTLJitterPercent = n
            return nil
        },
        Key(name: "node.name") { config, value in
            guard case .string(let text) = value, !text.isEmpty, text.utf8.count <= 63 else {
                return "expected a node name of 1 to 63 characters"
            }
            config.nodeName = text
            return nil
        },
        Key(name: "node.address") { config, value in
            guard case .string(let text) = value, IPv4Address(text) != nil || IPv6Address(text) != nil else {
                return "expected an IPv4 or IPv6 address"
            }
            config.nodeAddress = text
            return nil
        },
        Key(name: "raft.id") { config, value in
            guard case .integer(let n) = value, n >= 1 else { return "expected a positive integer" }
            config.raftNodeID = UInt64(n)
            return nil
        },
        Key(name: "raft.listen") { config, value in
            guard case .string(let text) = value, let address = ListenAddress(text) else {
                return "expected \"IPv4:PORT\" or \"[IPv6]:PORT\""
            }
            config.raftListen = address
            return nil
        },
        Key(name: "raft.servers") { config, value in
            guard case .array(let items) = value else { return "expected an array of \"ID=RAFT_ADDR,HTTP_ADDR\"" }
            var servers: [ServerSpec] = []
            for item in items {
                guard case .string(let text) = item.kind, let spec = ServerSpec(text) else {
                    return "expected \"ID=RAFT_ADDR,HTTP_ADDR\" (e.g. \"1=127.0.0.1:8300,127.0.0.1:8500\")"
                }
                guard !servers.contains(where: { $0.id == spec.id }) else { return "server \(spec.id) is listed twice" }
                servers.append(spec)
            }
            config.raftServers = servers
            return nil
        },
        Key(name: "raft.join") { config, value in
            guard case .string(let text) = value, let address = ListenAddress(text) else {
                return "expected a member's HTTP address \"IPv4:PORT\" or \"[IPv6]:PORT\""
            }
            config.raftJoin = address
            return nil
        },
        Key(name: "raft.cluster_token") { config, value in
            guard case .string(let text) = value, !text.isEmpty else { return "expected a non-empty string" }
            config.raftClusterToken = text
            return nil
        },
        Key(name: "http.listen") { config, value in
            guard case .string(let text) = value, let address = ListenAddress(text) else {
                return "expected \"IPv4:PORT\" or \"[IPv6]:PORT\""
            }
            config.httpListen = address
            return nil
        },
        integerKey("http.connections_max", 1...httpConnectionsMax, \.httpLimits.connectionsMax),
        integerKey("http.connections_per_client_max", 1...httpConnectionsMax, \.httpLimits.connectionsPerClientMax),
        integerKey("http.idle_timeout_seconds", 1...httpTimeoutSecondsMax, \.httpLimits.idleTimeoutSeconds),
        integerKey("http.request_read_timeout_seconds", 1...httpTimeoutSecondsMax, \.httpLimits.requestReadTimeoutSeconds),
        integerKey("http.forward_connections_max", 1...httpConnectionsMax, \.httpLimits.forwardConnectionsMax),
        integerKey("http.forward_queued_requests_max", 0...httpConnectionsMax, \.httpLimits.forwardQueuedRequestsMax),
        Key(name: "http.write_limit.mode") { config, value in
            guard case .string(let text) = value, let mode = WriteAdmission.Mode(rawValue: text) else {
                return "expected one of \(WriteAdmission.Mode.allCases.map(\.rawValue).joined(separator: ", "))"
            }
            config.writeAdmission.mode = mode
            return nil
        },
        integerKey("http.write_limit.writes_per_second", 0...writesPerSecondMax, \.writeAdmission.writesPerSecond,
                   zero: "no limit"),
        integerKey("http.write_limit.burst", 1...writesPerSecondMax, \.writeAdmission.burst),
        integerKey("http.write_limit.per_client_writes_per_second", 0...writesPerSecondMax,
                   \.writeAdmission.perClientWritesPerSecond, zero: "no limit"),
        integerKey("http.write_limit.per_client_burst", 1...writesPerSecondMax, \.writeAdmission.perClientBurst),
        Key(name: "data.directory") { config, value in
            guard case .string(let path) = value, !path.isEmpty else { return "expected a directory path" }
            config.dataDirectory = path
            return nil
        },
        Key(name: "zones.directory") { config, value in
            guard case .string(let path) = value, !path.isEmpty else { return "expected a directory path" }
            config.zonesDirectory = path
            return nil
        },
        Key(name: "log.level") { config, value in
            guard case .string(let text) = value, let level = Logger.Level(rawValue: text.lowercased()) else {
                return "expected one of trace, debug, info, notice, warning, error, critical"
            }
            config.logLevel = level
            return nil
        },
        Key(name: "log.format") { config, value in
            guard case .string(let text) = value, let format = LogFormat(rawValue: text.lowercased()) else {
                return "expected one of \(LogFormat.allCases.map(\.rawValue).joined(separator: ", "))"
            }
            config.logFormat = format
            return nil
        },
    ]

    /// Every key a file may set, as `table.key`.
    public static var keyNames: [String] { keys.map(\.name) }

    /// `dns.tcp_idle_timeout_seconds` → `DISCO_DNS_TCP_IDLE_TIMEOUT_SECONDS`.
    static func environmentName(_ key: String) -> String {
        "DISCO_" + key.uppercased().replacingOccurrences(of: ".", with: "_")
    }

    /// Applies a TOML file over self; unknown keys and bad values are errors naming file:line and key.
    public mutating func apply(tomlFile path: String) throws(ConfigError) {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ConfigError(source: .file(path, line: 0), key: "", message: "cannot read the configuration file")
        }
        try apply(toml: text, file: path)
    }

    public mutating func apply(toml text: String, file: String) throws(ConfigError) {
        let document: TOMLDocument
        do throws(TOMLError) {
            document = try TOMLDocument(parsing: text, file: file)
        } catch {
            throw ConfigError(source: .file(file, line: error.line), key: "", message: error.message)
        }
        for (name, value) in document.values.sorted(by: { $0.value.line < $1.value.line }) {
            guard let key = Self.keys.first(where: { $0.name == name }) else {
                let message = Self.nearestKey(to: name).map { "unknown key (did you mean `\($0)`?)" }
                    ?? "unknown key (expected one of \(Self.keys.map(\.name).joined(separator: ", ")))"
                throw ConfigError(source: .file(file, line: value.line), key: name, message: message)
            }
            if let expected = key.apply(&self, value.kind) {
                throw ConfigError(source: .file(file, line: value.line), key: name, message: expected)
            }
        }
    }

    /// A key within a few edits of an unknown one (a typo, or a section moved: `rrl.enabled`
    /// for `dns.rrl.enabled`), the closest; nil if none is close.
    static func nearestKey(to name: String) -> String? {
        let candidates = keys.map(\.name).map { ($0, editDistance(name, $0)) }
        guard let best = candidates.min(by: { $0.1 < $1.1 }) else { return nil }
        // Within a third of the name's length (at least 2 edits), or the name is the key's tail.
        if best.1 <= max(2, name.count / 3) { return best.0 }
        return keys.map(\.name).first { $0.hasSuffix("." + name) }
    }

    /// Levenshtein distance (insertions, deletions, substitutions), over bytes.
    static func editDistance(_ a: String, _ b: String) -> Int {
        let a = Array(a.utf8), b = Array(b.utf8)
        var previous = Array(0...b.count)
        var current = [Int](repeating: 0, count: b.count + 1)
        for i in 1...max(1, a.count) where !a.isEmpty {
            current[0] = i
            for j in 1...max(1, b.count) where !b.isEmpty {
                current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            }
            swap(&previous, &current)
        }
        return a.isEmpty ? b.count : previous[b.count]
    }

    /// Applies `DISCO_*` variables. Lists are comma-separated; numbers are decimal.
    public mutating func apply(environment: [String: String]) throws(ConfigError) {
        for key in Self.keys {
            let variable = Self.environmentName(key.name)
            guard let raw = environment[variable] else { continue }
            let value: TOMLValue.Kind
            if let integer = Int(raw) {
                value = .integer(integer)
            } else if raw == "true" || raw == "false" {
                value = .boolean(raw == "true")
            } else if ["dns.listen", "raft.servers", "dns.rrl.exempt", "dns.limits.exempt"].contains(key.name) {
                value = .array(raw.split(separator: ",").map {
                    TOMLValue(kind: .string($0.trimmingCharacters(in: .whitespaces)), line: 0)
                })
            } else {
                value = .string(raw)
            }
            if let expected = key.apply(&self, value) {
                throw ConfigError(source: .environment(variable), key: key.name, message: expected)
            }
        }
    }

    /// One of the three `tls.*_file` keys: a non-empty path.
    private static func setTLSFile(_ config: inout Configuration, _ value: TOMLValue.Kind,
                                   _ set: (inout TLSFiles, String) -> Void) -> String? {
        guard case .string(let path) = value, !path.isEmpty else { return "expected a file path" }
        var files = config.tlsFiles ?? TLSFiles(caFile: "", certFile: "", keyFile: "")
        set(&files, path)
        config.tlsFiles = files
        return nil
    }

    /// Whether `host` is a loopback address (only this machine can reach a listener there).
    static func isLoopback(_ host: String) -> Bool {
        host == "::1" || host == "localhost" || host.hasPrefix("127.")
    }

    /// Checks relations between keys, after every source is applied.
    public func validate() throws(ConfigError) {
        if let files = tlsFiles {
            for (key, path) in [("tls.ca_file", files.caFile), ("tls.cert_file", files.certFile), ("tls.key_file", files.keyFile)]
            where path.isEmpty {
                throw ConfigError(source: .flag("tls"), key: key, message: "missing: TLS needs tls.ca_file, tls.cert_file and tls.key_file")
            }
        }
        if dnsRRL.responsesPerSecond * dnsRRL.windowSeconds > BucketPolicy.debtResponsesMax {
            throw ConfigError(source: .flag("dns.rrl"), key: "dns.rrl.window_seconds",
                              message: "responses_per_second × window_seconds is \(dnsRRL.responsesPerSecond * dnsRRL.windowSeconds); at most \(BucketPolicy.debtResponsesMax)")
        }
        if raftJoin != nil {
            guard raftNodeID != 0 else {
                throw ConfigError(source: .flag("--join"), key: "raft.join", message: "needs this server's id (raft.id, --node-id)")
            }
            guard raftServers.isEmpty else {
                throw ConfigError(source: .flag("--join"), key: "raft.join",
                                  message: "a joining server lists no founding servers (raft.servers); it learns them from the cluster")
            }
            // The listen addresses are what the other servers are told to dial.
            for (key, address) in [("raft.listen", raftListen), ("http.listen", httpListen)]
            where ["0.0.0.0", "::", ""].contains(address.host) || address.port == 0 {
                throw ConfigError(source: .flag("--join"), key: key,
                                  message: "\(address) cannot be told to other servers: give the address they reach this server at")
            }
        }
        if !raftServers.isEmpty && !raftServers.contains(where: { $0.id == raftNodeID }) {
            throw ConfigError(source: .flag("--node-id"), key: "raft.id",
                              message: "\(raftNodeID) is not one of raft.servers (\(raftServers.map(\.id)))")
        }
        // Issue 14: a cluster reachable from the network authenticates its servers, or says
        // that it does not on purpose.
        if clusterEnabled && tlsFiles == nil {
            for (key, address, allowed) in [("raft.listen", raftListen, raftAllowInsecure), ("http.listen", httpListen, httpAllowInsecure)]
            where !allowed && !Self.isLoopback(address.host) {
                let what = key == "raft.listen" ? "raft" : "http"
                throw ConfigError(source: .flag("--\(what)"), key: key, message: "\(address) is reachable from the network without TLS: set tls.ca_file, tls.cert_file and tls.key_file (mutual TLS between servers, HTTPS for the API; `discoctl tls` makes them), or \(what).allow_insecure = true")
            }
        }
    }

    /// Applies one flag value through the same key table as the file and environment.
    mutating func apply(flag: String, key name: String, value: TOMLValue.Kind) throws(ConfigError) {
        guard let key = Self.keys.first(where: { $0.name == name }) else { preconditionFailure("no key \(name)") }
        if let expected = key.apply(&self, value) {
            throw ConfigError(source: .flag(flag), key: name, message: expected)
        }
    }
}
