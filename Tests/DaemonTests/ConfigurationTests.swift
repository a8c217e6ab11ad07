import Daemon
import DNSServer
import Foundation
import RateLimit
import Health
import Testing

@Suite("configuration")
struct ConfigurationTests {
    @Test func theShippedFileLoadsAndDocumentsEveryKey() throws {
        let path = repositoryRoot.appendingPathComponent("Config/discod.toml").path
        var config = Configuration.development
        try config.apply(tomlFile: path)
        #expect(config.dnsListen == [ListenAddress(host: "0.0.0.0", port: 53)])
        #expect(config.zonesDirectory == "/etc/disco/zones")
        #expect(config.dnsUDPPayloadBytes == Answerer.udpPayloadBytesMax)
        // Every key the daemon understands is written (or shown commented) in the file.
        let text = try String(contentsOfFile: path, encoding: .utf8)
        for key in Configuration.keyNames {
            let leaf = String(key.split(separator: ".").last!)
            #expect(text.contains("\(leaf) = "), "Config/discod.toml does not document \(key)")
        }
        // The file's values are the service defaults.
        var defaults = Configuration.service
        defaults.dnsWorkers = config.dnsWorkers  // commented out in the file: per machine
        defaults.raftNodeID = config.raftNodeID  // commented out in the file: per server
        // The one difference on purpose (issue 14): the shipped file enforces ACLs, default deny;
        // the built-in default is off, as Consul's is (and --dev keeps it off).
        #expect(config.aclEnabled && !config.aclDefaultAllows)
        #expect(!defaults.aclEnabled && defaults.aclDefaultAllows)
        defaults.aclEnabled = true
        defaults.aclDefaultAllows = false
        #expect(config == defaults)
    }

    @Test func precedenceIsFlagsThenEnvironmentThenFile() throws {
        let directory = try TemporaryDirectory()
        try directory.write("c.toml", "[dns]\nworkers = 3\nlisten = \"127.0.0.1:1053\"\n[zones]\ndirectory = \"from-file\"\n")
        let file = directory.url.appendingPathComponent("c.toml").path
        var command = try DiscodCommand.parse(["--config", file, "--workers", "5"])
        var config = try command.resolve(environment: ["DISCO_DNS_WORKERS": "4", "DISCO_ZONES_DIRECTORY": "from-env"])
        #expect(config.dnsWorkers == 5)
        #expect(config.zonesDirectory == "from-env")
        #expect(config.dnsListen == [ListenAddress(host: "127.0.0.1", port: 1053)])
        command = try DiscodCommand.parse(["--dev"])
        config = try command.resolve(environment: ["DISCO_DNS_LISTEN": "127.0.0.1:1,[::1]:2", "DISCO_DNS_MINIMAL_RESPONSES": "true"])
        #expect(config.dnsListen == [ListenAddress(host: "127.0.0.1", port: 1), ListenAddress(host: "::1", port: 2)])
        #expect(config.dnsMinimalResponses)
        #expect(config.zonesDirectory == "Zones")
    }

    @Test("errors name where, which key and what was expected", arguments: [
        ("[dns]\nworkers = 0\n", "f.toml:2: dns.workers: expected an integer from 1 to 64"),
        ("[dns]\nlisten = [\"localhost:53\"]\n", "f.toml:2: dns.listen: 'localhost:53' is not an address (expected IPv4:PORT or [IPv6]:PORT)"),
        ("[dns]\nworkers = 2\nbogus = 1\n", "f.toml:3: dns.bogus: unknown key (expected one of \(Configuration.keyNames.joined(separator: ", ")))"),
        ("[log]\nlevel = \"loud\"\n", "f.toml:2: log.level: expected one of trace, debug, info, notice, warning, error, critical"),
        ("[dns]\nminimal_responses = 1\n", "f.toml:2: dns.minimal_responses: expected true or false"),
        ("[dns\n", "f.toml:1: expected ']' to close the table header"),
        ("[dns]\nworkers = \n", "f.toml:2: expected a value after '='"),
        ("[dns]\nworkers = 1\nworkers = 2\n", "f.toml:3: key dns.workers is defined twice"),
        ("[dns]\nlisten = [\"127.0.0.1:53\"\n", "f.toml:3: unterminated array (expected ']')"),
        ("a = { b = 1 }\n", "f.toml:1: inline tables are not supported; use a [table] header"),
        ("[dns.rrl]\nexempt = [\"10.0.0.1/8\"]\n",
         "f.toml:2: dns.rrl.exempt: expected an array of networks such as \"10.0.0.0/8\" or \"2001:db8::/32\" (no host bits set)"),
        ("[dns.rrl]\nslip = 11\n", "f.toml:2: dns.rrl.slip: expected an integer from 0 (drop every limited response) to 10"),
        ("[dns.rrl]\ntable_entries = 1000\n", "f.toml:2: dns.rrl.table_entries: expected a power of two from 64 to 67108864"),
        ("[dns.limits]\nipv4_prefix_length = 33\n", "f.toml:2: dns.limits.ipv4_prefix_length: expected an integer from 1 to 32"),
        ("[health]\nbatch_window_milliseconds = 0\n", "f.toml:2: health.batch_window_milliseconds: expected an integer from 1 to 5000"),
        ("[health]\noutput_bytes_max = 10\n", "f.toml:2: health.output_bytes_max: expected an integer from 64 to 65536"),
    ])
    func errors(_ text: String, _ expected: String) {
        var config = Configuration.development
        #expect(throws: ConfigError.self) { try config.apply(toml: text, file: "f.toml") }
        do {
            try config.apply(toml: text, file: "f.toml")
        } catch {
            #expect(error.description == expected)
        }
    }

    @Test func limitsFromFileAndEnvironment() throws {
        var config = Configuration.development
        try config.apply(toml: """
            [dns]
            tcp_query_timeout_seconds = 3
            [dns.rrl]
            responses_per_second = 50
            slip = 1
            exempt = ["10.0.0.0/8", "2001:db8::/32"]
            [dns.limits]
            queries_per_second = 1000
            ipv6_prefix_length = 64
            """, file: "f.toml")
        try config.apply(environment: ["DISCO_DNS_RRL_LOG_ONLY": "true", "DISCO_DNS_LIMITS_EXEMPT": "192.0.2.0/24,127.0.0.1",
                                       "DISCO_DNS_TCP_QUERIES_PER_CONNECTION_MAX": "0"])
        try config.validate()
        #expect(config.dnsRRL.responsesPerSecond == 50 && config.dnsRRL.slip == 1 && config.dnsRRL.logOnly)
        #expect(config.dnsRRL.exempt.map(\.description) == ["10.0.0.0/8", "2001:db8::/32"])
        #expect(config.dnsQueryLimit.queriesPerSecond == 1000 && config.dnsQueryLimit.ipv6PrefixLength == 64)
        #expect(config.dnsQueryLimit.exempt.map(\.description) == ["192.0.2.0/24", "127.0.0.1/32"])
        let limits = config.clientLimits
        #expect(limits.tcp.queryTimeoutSeconds == 3 && limits.tcp.queriesPerConnectionMax == 0)
        #expect(limits.rrl.configuration.enabled && limits.queries.configuration.enabled)
        // rate × window is bounded (the bucket's debt is kept in 32 bits).
        config.dnsRRL.responsesPerSecond = 1_000_000
        #expect(throws: ConfigError.self) { try config.validate() }
    }

    @Test func theHealthSectionSetsTheChecker() throws {
        var config = Configuration.development
        try config.apply(toml: """
            [health]
            enabled = false
            batch_window_milliseconds = 50
            flap_transitions_max = 3
            flap_window_seconds = 20
            flap_stable_seconds = 7
            http_connections_per_host_max = 4
            probes_inflight_max = 99
            output_bytes_max = 1024
            """, file: "h.toml")
        #expect(!config.health.enabled)
        #expect(config.health.batchWindowMilliseconds == 50)
        #expect(config.health.damping == Damping(transitionsMax: 3, windowSeconds: 20, stableSeconds: 7))
        #expect(config.health.httpConnectionsPerHostMax == 4)
        #expect(config.health.probesInflightMax == 99)
        #expect(config.health.outputBytesMax == 1024)
    }

    @Test func environmentErrorsNameTheVariable() {
        var config = Configuration.development
        do {
            try config.apply(environment: ["DISCO_DNS_TCP_CONNECTIONS_MAX": "lots"])
            Issue.record("expected an error")
        } catch {
            #expect(error.description == "environment DISCO_DNS_TCP_CONNECTIONS_MAX: dns.tcp_connections_max: expected an integer from 1 to 1000000")
        }
    }

    @Test func tomlValues() throws {
        let document = try TOMLDocument(parsing: """
            # comment
            top = "a \\"quoted\\" string" # trailing comment
            [t.sub]
            n = 1_000
            f = 2.5
            yes = true
            list = [
              "x", # first
              'y',
            ]
            "quoted key" = 'lit\\eral'
            """, file: "v.toml")
        #expect(document.values["top"]?.kind == .string("a \"quoted\" string"))
        #expect(document.values["t.sub.n"]?.kind == .integer(1000))
        #expect(document.values["t.sub.f"]?.kind == .float(2.5))
        #expect(document.values["t.sub.yes"]?.kind == .boolean(true))
        #expect(document.values["t.sub.list"]?.kind == .array([TOMLValue(kind: .string("x"), line: 8), TOMLValue(kind: .string("y"), line: 9)]))
        #expect(document.values["t.sub.quoted key"]?.kind == .string("lit\\eral"))
        #expect(document.values["t.sub.n"]?.line == 4)
    }
}
