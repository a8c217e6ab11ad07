import ArgumentParser
import Foundation

/// Options every discoctl command takes.
public struct GlobalOptions: ParsableArguments {
    @Option(help: "discod's HTTP API (default: $DISCO_HTTP_ADDR or 127.0.0.1:8500).")
    public var httpAddr: String?

    @Option(help: "ACL token sent as X-Consul-Token (default: $DISCO_HTTP_TOKEN, else $CONSUL_HTTP_TOKEN).")
    public var token: String?

    @Option(help: "A file whose first line is the ACL token (default: $DISCO_HTTP_TOKEN_FILE, else $CONSUL_HTTP_TOKEN_FILE).")
    public var tokenFile: String?

    @Option(help: "CA certificate (PEM) for HTTPS: switches to HTTPS (default: $DISCO_CACERT, else $CONSUL_CACERT).")
    public var caFile: String?

    @Option(help: "Client certificate (PEM) for servers that require one (default: $DISCO_CLIENT_CERT, else $CONSUL_CLIENT_CERT).")
    public var clientCert: String?

    @Option(help: "The client certificate's key (default: $DISCO_CLIENT_KEY, else $CONSUL_CLIENT_KEY).")
    public var clientKey: String?

    @Flag(help: "Print JSON instead of text.")
    public var json = false

    public init() {}

    var client: DiscoClient {
        get throws {
            let environment = ProcessInfo.processInfo.environment
            return DiscoClient(address: httpAddr ?? environment["DISCO_HTTP_ADDR"] ?? environment["CONSUL_HTTP_ADDR"] ?? "127.0.0.1:8500",
                               token: try resolvedToken(environment), tls: resolvedTLS(environment))
        }
    }

    /// HTTPS settings: flags, then `DISCO_*`, then `CONSUL_*` (`*_HTTP_SSL=true` alone: HTTPS
    /// with the system's roots). nil: HTTP (unless the address says https://).
    func resolvedTLS(_ environment: [String: String]) -> ClientTLS? {
        func pick(_ flag: String?, _ names: String...) -> String? {
            flag ?? names.lazy.compactMap { environment[$0] }.first { !$0.isEmpty }
        }
        let tls = ClientTLS(caFile: pick(caFile, "DISCO_CACERT", "CONSUL_CACERT"),
                            certFile: pick(clientCert, "DISCO_CLIENT_CERT", "CONSUL_CLIENT_CERT"),
                            keyFile: pick(clientKey, "DISCO_CLIENT_KEY", "CONSUL_CLIENT_KEY"))
        let ssl = ["DISCO_HTTP_SSL", "CONSUL_HTTP_SSL"].contains { ["1", "true"].contains(environment[$0]?.lowercased() ?? "") }
        return tls == ClientTLS() && !ssl ? nil : tls
    }

    /// The token, in Consul's order: the flag, the token file flag, then the environment
    /// (`DISCO_*` before `CONSUL_*`, a token before a token file).
    func resolvedToken(_ environment: [String: String]) throws -> String? {
        if let token, !token.isEmpty { return token }
        if let tokenFile { return try Self.readToken(tokenFile) }
        for name in ["DISCO_HTTP_TOKEN", "CONSUL_HTTP_TOKEN"] {
            if let token = environment[name], !token.isEmpty { return token }
        }
        for name in ["DISCO_HTTP_TOKEN_FILE", "CONSUL_HTTP_TOKEN_FILE"] {
            if let path = environment[name], !path.isEmpty { return try Self.readToken(path) }
        }
        return nil
    }

    static func readToken(_ path: String) throws -> String {
        guard let data = FileManager.default.contents(atPath: path) else { throw ClientError("cannot read the token file \(path)") }
        let token = String(decoding: data, as: UTF8.self).split(whereSeparator: \.isNewline).first
            .map { $0.trimmingCharacters(in: .whitespaces) } ?? ""
        guard !token.isEmpty else { throw ClientError("the token file \(path) is empty") }
        return token
    }

    func printJSON(_ value: Any) {
        let data = (try? JSONSerialization.data(withJSONObject: value, options: [.prettyPrinted, .sortedKeys, .fragmentsAllowed])) ?? Data()
        print(String(decoding: data, as: UTF8.self))
    }
}

/// Runs a command body; a failure is one line on stderr and exit status 1.
func reporting(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch let error as ClientError {
        FileHandle.standardError.write(Data("discoctl: \(error.message)\n".utf8))
        throw ExitCode(1)
    } catch let error as ExitCode {
        throw error
    } catch {
        FileHandle.standardError.write(Data("discoctl: \(error)\n".utf8))
        throw ExitCode(1)
    }
}

public struct DiscoctlCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "discoctl",
        abstract: "Control a Disco cluster: services, health checks, key-value store, members, snapshots.",
        subcommands: [Register.self, Deregister.self, Services.self, Instances.self, Health.self, Check.self, Watch.self,
                      KV.self, Members.self, Leader.self, Peers.self, SnapshotCommand.self, ACLCommand.self, TLSCommand.self, Top.self])

    public init() {}
}

struct KV: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kv", abstract: "Read and write the replicated key-value store.",
        subcommands: [Get.self, Put.self, Delete.self, List.self])

    struct Get: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print a key's value (exit 1 if it does not exist).")
        @OptionGroup var options: GlobalOptions
        @Argument var key: String
        @Flag(help: "Linearizable read (ReadIndex).") var consistent = false

        func run() throws {
            try reporting {
                guard let item = try options.client.get(key, consistent: consistent) else {
                    throw ClientError("no key \(key)")
                }
                if options.json {
                    options.printJSON(["Key": item.key, "Value": item.text.map { $0 as Any } ?? NSNull(), "Flags": item.flags,
                                       "CreateIndex": item.createIndex, "ModifyIndex": item.modifyIndex])
                } else {
                    print(item.text ?? "")
                }
            }
        }
    }

    struct Put: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Set a key (exit 1 if --cas did not match).")
        @OptionGroup var options: GlobalOptions
        @Argument var key: String
        @Argument var value: String
        @Option(help: "Only if the key's ModifyIndex is this (0: only if absent).") var cas: UInt64?

        func run() throws {
            try reporting {
                let written = try options.client.put(key, value: Data(value.utf8), cas: cas)
                if options.json { options.printJSON(written) } else { print(written ? "ok" : "not written: the CAS index did not match") }
                if !written { throw ExitCode(1) }
            }
        }
    }

    struct Delete: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete a key (or a prefix with --recurse).")
        @OptionGroup var options: GlobalOptions
        @Argument var key: String
        @Flag var recurse = false

        func run() throws {
            try reporting {
                try options.client.delete(key, recurse: recurse)
                if options.json { options.printJSON(true) } else { print("deleted") }
            }
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the keys under a prefix.")
        @OptionGroup var options: GlobalOptions
        @Argument var prefix: String = ""

        func run() throws {
            try reporting {
                let items = try options.client.list(prefix)
                if options.json {
                    options.printJSON(items.map { ["Key": $0.key, "Value": $0.text.map { $0 as Any } ?? NSNull(), "ModifyIndex": $0.modifyIndex] as [String: Any] })
                } else {
                    let width = max(3, items.map(\.key.count).max() ?? 0)
                    print("KEY".padding(toLength: width, withPad: " ", startingAt: 0) + "  INDEX  VALUE")
                    for item in items {
                        print(item.key.padding(toLength: width, withPad: " ", startingAt: 0) + "  "
                              + String(item.modifyIndex).padding(toLength: 5, withPad: " ", startingAt: 0) + "  " + (item.text ?? ""))
                    }
                }
            }
        }
    }
}

struct Peers: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the Raft addresses of the servers.")
    @OptionGroup var options: GlobalOptions

    func run() throws {
        try reporting {
            let peers = try options.client.peers()
            if options.json { options.printJSON(peers) } else { peers.forEach { print($0) } }
        }
    }
}
