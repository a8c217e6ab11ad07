import ArgumentParser
import Foundation

/// Prints rows under a header, columns padded to their widest cell.
func printTable(_ header: [String], _ rows: [[String]]) {
    let widths = header.indices.map { i in ([header[i]] + rows.map { $0[i] }).map(\.count).max() ?? 0 }
    for row in [header] + rows {
        print(row.indices.map { row[$0].padding(toLength: widths[$0], withPad: " ", startingAt: 0) }
            .joined(separator: "  ").trimmingCharacters(in: .whitespaces))
    }
}

/// "web:8080" style cells from health entries.
private func instanceRow(_ entry: [String: Any]) -> [String] {
    let service = entry["Service"] as? [String: Any] ?? [:]
    let node = entry["Node"] as? [String: Any] ?? [:]
    let checks = entry["Checks"] as? [[String: Any]] ?? []
    let order = ["passing": 0, "warning": 1, "critical": 2]
    let worst = checks.compactMap { $0["Status"] as? String }.max { (order[$0] ?? 2) < (order[$1] ?? 2) } ?? "passing"
    let address = (service["Address"] as? String).flatMap { $0.isEmpty ? nil : $0 } ?? (node["Address"] as? String ?? "")
    return [service["ID"] as? String ?? "", node["Node"] as? String ?? "", address, "\(service["Port"] as? Int ?? 0)",
            (service["Tags"] as? [String] ?? []).joined(separator: ","), worst]
}

struct Register: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Register service instances, from flags or from JSON service files (Consul's format).",
        discussion: """
            With flags, one instance: discoctl register --name web --port 8080 --tag v2 --ttl 30s
            With --file, every service in each file: a Consul service definition ({"Name": ...}),
            {"service": {...}}, {"services": [...]} or a JSON array of definitions. The instance's
            address defaults to this machine's address as discod sees it.
            """)
    @OptionGroup var options: GlobalOptions
    @Option(help: "The service name.") var name: String?
    @Option(help: "The instance ID (default: the name; must be unique on the node).") var id: String?
    @Option(help: "The address clients connect to (default: this host's address as discod sees it).") var address: String?
    @Option(help: "The port clients connect to.") var port: Int?
    @Option(name: .customLong("tag"), help: "A tag (repeatable).") var tags: [String] = []
    @Option(name: .customLong("meta"), help: "KEY=VALUE metadata (repeatable).") var meta: [String] = []
    @Option(help: "Add a TTL check with this TTL (e.g. 30s): renew with `discoctl check pass service:ID`.") var ttl: String?
    @Option(help: "Add an HTTP check of this URL (with --interval).") var http: String?
    @Option(help: "Add a TCP check of HOST:PORT (with --interval).") var tcp: String?
    @Option(help: "Interval of the HTTP or TCP check.") var interval: String = "10s"
    @Option(name: .customLong("file"), help: "A JSON service file (repeatable).") var files: [String] = []
    @Flag(help: "Drop the instance's checks that the new definition does not list.") var replaceExistingChecks = false

    func definitions() throws -> [[String: Any]] {
        var out: [[String: Any]] = []
        for path in files {
            guard let data = FileManager.default.contents(atPath: path) else { throw ClientError("cannot read \(path)") }
            let parsed: Any
            do { parsed = try JSONSerialization.jsonObject(with: data) } catch { throw ClientError("\(path): not valid JSON") }
            func lowered(_ object: [String: Any]) -> [String: Any] {
                Dictionary(object.map { ($0.key.lowercased(), $0.value) }, uniquingKeysWith: { a, _ in a })
            }
            if let array = parsed as? [[String: Any]] {
                out += array
            } else if let object = parsed as? [String: Any] {
                if let one = lowered(object)["service"] as? [String: Any] {
                    out.append(one)
                } else if let many = lowered(object)["services"] as? [[String: Any]] {
                    out += many
                } else {
                    out.append(object)
                }
            } else {
                throw ClientError("\(path): expected a service definition, {\"services\": [...]} or an array")
            }
        }
        if let name {
            var definition: [String: Any] = ["Name": name]
            if let id { definition["ID"] = id }
            if let address { definition["Address"] = address }
            if let port { definition["Port"] = port }
            if !tags.isEmpty { definition["Tags"] = tags }
            if !meta.isEmpty {
                var pairs: [String: String] = [:]
                for item in meta {
                    let parts = item.split(separator: "=", maxSplits: 1)
                    guard parts.count == 2 else { throw ClientError("--meta \(item): expected KEY=VALUE") }
                    pairs[String(parts[0])] = String(parts[1])
                }
                definition["Meta"] = pairs
            }
            var checks: [[String: Any]] = []
            if let ttl { checks.append(["TTL": ttl]) }
            if let http { checks.append(["HTTP": http, "Interval": interval]) }
            if let tcp { checks.append(["TCP": tcp, "Interval": interval]) }
            if !checks.isEmpty { definition["Checks"] = checks }
            out.append(definition)
        } else if id != nil || address != nil || port != nil || !tags.isEmpty || ttl != nil || http != nil || tcp != nil {
            throw ClientError("--name is required with the other service flags")
        }
        if out.isEmpty { throw ClientError("nothing to register: give --name or --file") }
        return out
    }

    func run() throws {
        try reporting {
            let definitions = try definitions()
            var registered: [String] = []
            for definition in definitions {
                let label = (definition["ID"] ?? definition["id"] ?? definition["Name"] ?? definition["name"]).map { "\($0)" } ?? "?"
                do {
                    try options.client.register(definition, replaceExistingChecks: replaceExistingChecks)
                } catch let error as ClientError {
                    throw ClientError("\(label): \(error.message)\(registered.isEmpty ? "" : " (registered before it: \(registered.joined(separator: ", ")))")")
                }
                registered.append(label)
            }
            if options.json { options.printJSON(registered) } else { registered.forEach { print("registered \($0)") } }
        }
    }
}

struct Deregister: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Deregister a service instance (registered through the same server).")
    @OptionGroup var options: GlobalOptions
    @Argument(help: "The instance ID.") var id: String

    func run() throws {
        try reporting {
            try options.client.deregister(id)
            if options.json { options.printJSON(true) } else { print("deregistered \(id)") }
        }
    }
}

struct Services: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List the registered services and their tags.")
    @OptionGroup var options: GlobalOptions

    func run() throws {
        try reporting {
            let services = try options.client.services()
            if options.json { options.printJSON(services); return }
            printTable(["SERVICE", "TAGS"], services.sorted { $0.key < $1.key }.map { [$0.key, $0.value.joined(separator: ",")] })
        }
    }
}

struct Instances: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List a service's instances with their health.")
    @OptionGroup var options: GlobalOptions
    @Argument var name: String
    @Option(name: .customLong("tag"), help: "Only instances with this tag (repeatable).") var tags: [String] = []
    @Flag(help: "Only instances whose checks all pass.") var passing = false

    func run() throws {
        try reporting {
            let entries = try options.client.health(of: name, tags: tags, passing: passing).entries
            if options.json { options.printJSON(entries); return }
            printTable(["ID", "NODE", "ADDRESS", "PORT", "TAGS", "HEALTH"], entries.map(instanceRow))
        }
    }
}

struct Health: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show the checks of a service's instances.")
    @OptionGroup var options: GlobalOptions
    @Argument var name: String

    func run() throws {
        try reporting {
            let checks = try options.client.checks(of: name)
            if options.json { options.printJSON(checks); return }
            printTable(["CHECK", "INSTANCE", "NODE", "STATUS", "OUTPUT"], checks.map { check in
                ["CheckID", "ServiceID", "Node", "Status", "Output"].map { (check[$0] as? String) ?? "" }
            })
        }
    }
}

struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Set a check's status (TTL checks: renew with pass).",
        subcommands: [Pass.self, Warn.self, Fail.self])

    struct Pass: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Mark a check passing.")
        @OptionGroup var update: Update
        func run() throws { try update.run("pass") }
    }

    struct Warn: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Mark a check warning.")
        @OptionGroup var update: Update
        func run() throws { try update.run("warn") }
    }

    struct Fail: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Mark a check critical.")
        @OptionGroup var update: Update
        func run() throws { try update.run("fail") }
    }

    struct Update: ParsableArguments {
        @OptionGroup var options: GlobalOptions
        @Argument(help: "The check ID (a service's TTL check is service:ID).") var id: String
        @Option(help: "Output recorded with the status.") var note: String?

        func run(_ verb: String) throws {
            try reporting {
                try options.client.updateCheck(id, verb: verb, note: note)
                if options.json { options.printJSON(true) } else { print("\(id): \(verb)") }
            }
        }
    }
}

struct Watch: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print a service's instances, then again each time they change (a blocking query).")
    @OptionGroup var options: GlobalOptions
    @Argument var name: String
    @Option(name: .customLong("tag"), help: "Only instances with this tag (repeatable).") var tags: [String] = []
    @Flag(help: "Only instances whose checks all pass.") var passing = false
    @Option(help: "Stop after this many updates (default: never).") var count: Int?
    @Option(help: "Seconds each blocking query waits server-side.") var wait: Double = 300

    func run() throws {
        try reporting {
            var index: UInt64 = 0
            var printed = 0
            var last: String?
            while count.map({ printed < $0 }) ?? true {
                let (entries, next) = try options.client.health(of: name, tags: tags, passing: passing,
                                                                index: index == 0 ? nil : index, waitSeconds: wait)
                // Consul's rule: an index that goes backwards (a restored snapshot) starts over.
                index = next < index ? 0 : next
                let rows = entries.map(instanceRow)
                let rendered = rows.map { $0.joined(separator: " ") }.joined(separator: "\n")
                guard rendered != last else { continue }  // a wait that ran out: nothing new
                last = rendered
                printed += 1
                if options.json {
                    let data = (try? JSONSerialization.data(withJSONObject: ["Index": next, "Instances": entries], options: [.sortedKeys])) ?? Data()
                    print(String(decoding: data, as: UTF8.self))
                } else {
                    print("# index \(next): \(rows.count) instance(s)")
                    printTable(["ID", "NODE", "ADDRESS", "PORT", "TAGS", "HEALTH"], rows)
                }
                fflush(nil)  // every stream: `stdout` itself is a C global Swift 6 will not touch
            }
        }
    }
}
