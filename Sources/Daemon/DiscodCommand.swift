import ArgumentParser
import CShims
import DNSServer
import DNSZone
import Foundation
import Logging

/// The `discod` command line. Flags override DISCO_* variables, which override the TOML file.
public struct DiscodCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "discod",
        abstract: "Disco: authoritative DNS for zones and the service registry.",
        discussion: """
            Precedence: flags > DISCO_* environment > --config file > defaults.
            --dev serves ./Zones on 127.0.0.1:8600 (UDP and TCP).
            SIGHUP reloads the zone directory; SIGTERM or SIGINT stops.
            """)

    @Flag(help: "Development defaults: serve ./Zones on 127.0.0.1:8600.")
    var dev = false

    @Flag(name: .customLong("check-config"),
          help: "Check the configuration (FILE, or --config) and every zone file, then exit: 0 when all is well, else the errors as file:line:column.")
    var checkConfig = false

    @Argument(help: ArgumentHelp("With --check-config: the configuration file to check.", valueName: "FILE"))
    var checkedFile: String?

    @Option(help: "TOML configuration file (see Config/discod.toml).")
    var config: String?

    @Option(help: "Directory of <origin>.zone master files.")
    var zones: String?

    @Option(help: ArgumentHelp("Address to serve DNS on, UDP and TCP (repeatable).", valueName: "addr:port"))
    var dns: [String] = []

    @Option(help: "UDP worker threads (default: one per core).")
    var workers: Int?

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String?

    @Option(help: "Log format: text (journald-aware: <N> priorities instead of timestamps under systemd's journal) or json (a JSON object a line).")
    var logFormat: String?

    @Option(help: "This server's Raft id (with --server).")
    var nodeID: Int?

    @Option(help: ArgumentHelp("This server's Raft address.", valueName: "addr:port"))
    var raft: String?

    @Option(help: ArgumentHelp("A founding server of the cluster (repeatable, this one included).",
                               valueName: "id=raft-addr,http-addr"))
    var server: [String] = []

    @Option(help: ArgumentHelp("Join a running cluster through a member's HTTP API (empty data directory, no --server).",
                               valueName: "http-addr:port"))
    var join: String?

    @Option(help: ArgumentHelp("The HTTP API address.", valueName: "addr:port"))
    var http: String?

    @Option(help: "Directory of raft.db and kv.db.")
    var dataDir: String?

    public init() {}

    /// Resolves the configuration from defaults, file, environment and flags.
    public func resolve(environment: [String: String]) throws(ConfigError) -> Configuration {
        var configuration = dev ? Configuration.development : Configuration.service
        if let config { try configuration.apply(tomlFile: config) }
        try configuration.apply(environment: environment)
        if let zones { try configuration.apply(flag: "--zones", key: "zones.directory", value: .string(zones)) }
        if !dns.isEmpty {
            try configuration.apply(flag: "--dns", key: "dns.listen",
                                    value: .array(dns.map { TOMLValue(kind: .string($0), line: 0) }))
        }
        if let workers { try configuration.apply(flag: "--workers", key: "dns.workers", value: .integer(workers)) }
        if let logLevel { try configuration.apply(flag: "--log-level", key: "log.level", value: .string(logLevel)) }
        if let logFormat { try configuration.apply(flag: "--log-format", key: "log.format", value: .string(logFormat)) }
        if let nodeID { try configuration.apply(flag: "--node-id", key: "raft.id", value: .integer(nodeID)) }
        if let raft { try configuration.apply(flag: "--raft", key: "raft.listen", value: .string(raft)) }
        if !server.isEmpty {
            try configuration.apply(flag: "--server", key: "raft.servers",
                                    value: .array(server.map { TOMLValue(kind: .string($0), line: 0) }))
        }
        if let join { try configuration.apply(flag: "--join", key: "raft.join", value: .string(join)) }
        if let http { try configuration.apply(flag: "--http", key: "http.listen", value: .string(http)) }
        if let dataDir { try configuration.apply(flag: "--data-dir", key: "data.directory", value: .string(dataDir)) }
        try configuration.validate()
        return configuration
    }

    public mutating func validate() throws {
        if checkedFile != nil && !checkConfig {
            throw ValidationError("a file argument is only taken with --check-config (use --config FILE to run with it)")
        }
        if let checkedFile {
            guard config == nil || config == checkedFile else {
                throw ValidationError("--check-config FILE and --config name different files")
            }
            config = checkedFile
        }
    }

    /// Allocations from this size on get pages of their own, given back when freed
    /// (`disco_map_large_allocations`): a zone load's part buffers and record logs (issue 15;
    /// with glibc's moving threshold a 1M-record load peaked 20 MiB higher, and a reload more).
    static let mappedAllocationBytesMin = 512 << 10

    public func run() throws {
        disco_map_large_allocations(Self.mappedAllocationBytesMin)
        if checkConfig { throw ArgumentParser.ExitCode(check(environment: ProcessInfo.processInfo.environment).rawValue) }
        DiscoDaemon.blockHandledSignals()
        let configuration: Configuration
        do throws(ConfigError) {
            configuration = try resolve(environment: ProcessInfo.processInfo.environment)
        } catch {
            FileHandle.standardError.write(Data("discod: configuration error: \(error)\n".utf8))
            throw ArgumentParser.ExitCode(ExitCode.config.rawValue)
        }
        let level = configuration.logLevel, format = configuration.logFormat
        let journal = DiscoLogHandler.stderrIsJournal(environment: ProcessInfo.processInfo.environment)
        LoggingSystem.bootstrap { label in
            DiscoLogHandler(label: label, level: level, format: format, journal: journal)
        }
        let logger = Logger(label: "discod")
        let daemon = DiscoDaemon(config: configuration, logger: logger)
        do throws(StartError) {
            try daemon.start()
        } catch {
            logger.critical("cannot start: \(error.message)")
            throw ArgumentParser.ExitCode(error.code.rawValue)
        }
        daemon.runUntilSignalled()
    }

    /// `--check-config`: what nsd-checkconf and nsd-checkzone do, in one: the configuration
    /// (file, environment and flags, as a start would resolve them) and every zone file of its
    /// zone directory, parsed and validated without binding anything. Prints each error as
    /// `file:line[:column]: message` on standard error, a one-line summary on standard output.
    func check(environment: [String: String]) -> ExitCode {
        let configuration: Configuration
        do throws(ConfigError) {
            configuration = try resolve(environment: environment)
        } catch {
            FileHandle.standardError.write(Data("\(error)\n".utf8))
            return .config
        }
        let directory = configuration.zonesDirectory
        if directory == Configuration.zonesDirectoryDefault && !FileManager.default.fileExists(atPath: directory) {
            print("discod: configuration \(config ?? "(defaults)") is valid; no zone directory at \(directory) (registry only)")
            return .ok
        }
        let result: ZoneDirectory.LoadResult
        do throws(ZoneError) {
            result = try ZoneDirectory.load(path: directory)
        } catch {
            FileHandle.standardError.write(Data("\(error)\n".utf8))
            return .ioError
        }
        for failure in result.failures {
            for error in failure.error.errors { FileHandle.standardError.write(Data("\(error)\n".utf8)) }
        }
        let records = result.zones.reduce(0) { total, zone in total + zone.nodes.reduce(0) { $0 + $1.rrsets.reduce(0) { $0 + $1.count } } }
        let summary = "\(result.zones.count) zone(s) valid, \(records) records, in \(directory)"
        guard result.failures.isEmpty else {
            print("discod: \(result.failures.count) zone file(s) with errors; \(summary)")
            return .dataError
        }
        print("discod: configuration \(config ?? "(defaults)") is valid; \(summary)")
        return .ok
    }
}
