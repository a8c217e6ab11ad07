import ArgumentParser
import Foundation

extension DiscoClient {
    /// A JSON object from an ACL endpoint (Consul's shapes).
    func aclObject(_ method: String, _ path: String, body: [String: Any]? = nil) throws -> [String: Any] {
        let data = try body.map { try JSONSerialization.data(withJSONObject: $0) }
        let response = try request(method, path, body: data)
        try expectSuccess(response)
        return (try JSONSerialization.jsonObject(with: response.body) as? [String: Any]) ?? [:]
    }

    func aclList(_ path: String) throws -> [[String: Any]] {
        let response = try request("GET", path)
        try expectSuccess(response)
        return (try JSONSerialization.jsonObject(with: response.body) as? [[String: Any]]) ?? []
    }

    /// The ID of the policy named or identified by `nameOrID`.
    func policyID(_ nameOrID: String) throws -> String {
        let response = try request("GET", "/v1/acl/policy/name/\(escape(nameOrID))")
        if response.status == 404 { return nameOrID }
        try expectSuccess(response)
        let object = try JSONSerialization.jsonObject(with: response.body) as? [String: Any]
        return object?["ID"] as? String ?? nameOrID
    }
}

/// `discoctl acl ...`: Consul's `consul acl` for bootstrap, tokens and policies.
struct ACLCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "acl", abstract: "Bootstrap ACLs; create, list and delete tokens and policies.",
        subcommands: [Bootstrap.self, Token.self, Policy.self])

    static func printToken(_ token: [String: Any], _ options: GlobalOptions) {
        if options.json { options.printJSON(token); return }
        print("AccessorID:   \(token["AccessorID"] ?? "")")
        print("SecretID:     \(token["SecretID"] ?? "")")
        print("Description:  \(token["Description"] ?? "")")
        let policies = (token["Policies"] as? [[String: Any]] ?? []).map { "\($0["Name"] ?? "") (\($0["ID"] ?? ""))" }
        print("Policies:     \(policies.isEmpty ? "none" : policies.joined(separator: ", "))")
        if let expires = token["ExpirationTime"] { print("Expires:      \(expires)") }
    }

    static func printPolicy(_ policy: [String: Any], _ options: GlobalOptions) {
        if options.json { options.printJSON(policy); return }
        print("ID:           \(policy["ID"] ?? "")")
        print("Name:         \(policy["Name"] ?? "")")
        print("Description:  \(policy["Description"] ?? "")")
        if let rules = policy["Rules"] as? String { print("Rules:\n\(rules)") }
    }

    struct Bootstrap: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create the first management token (once per cluster); keep its SecretID.")
        @OptionGroup var options: GlobalOptions

        func run() throws {
            try reporting { ACLCommand.printToken(try options.client.aclObject("PUT", "/v1/acl/bootstrap"), options) }
        }
    }

    struct Token: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Manage tokens.", subcommands: [Create.self, List.self, Read.self, SelfToken.self, Delete.self])

        struct Create: ParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Create a token; its SecretID is shown once.")
            @OptionGroup var options: GlobalOptions
            @Option(help: "What the token is for.") var description = ""
            @Option(name: .customLong("policy"), help: "A policy name or ID (repeatable).") var policies: [String] = []
            @Option(help: "Expire after this long (e.g. 1h, 30m).") var ttl: String?
            @Option(help: "Use this SecretID instead of a random one.") var secret: String?

            func run() throws {
                try reporting {
                    let client = try options.client
                    var body: [String: Any] = ["Description": description,
                                               "Policies": try policies.map { ["ID": try client.policyID($0)] }]
                    if let ttl { body["ExpirationTTL"] = ttl }
                    if let secret { body["SecretID"] = secret }
                    ACLCommand.printToken(try client.aclObject("PUT", "/v1/acl/token", body: body), options)
                }
            }
        }

        struct List: ParsableCommand {
            static let configuration = CommandConfiguration(abstract: "List the tokens (without their secrets).")
            @OptionGroup var options: GlobalOptions

            func run() throws {
                try reporting {
                    let tokens = try options.client.aclList("/v1/acl/tokens")
                    if options.json { options.printJSON(tokens); return }
                    printTable(["ACCESSOR", "DESCRIPTION", "POLICIES", "EXPIRES"], tokens.map { token in
                        [token["AccessorID"] as? String ?? "", token["Description"] as? String ?? "",
                         (token["Policies"] as? [[String: Any]] ?? []).map { $0["Name"] as? String ?? "" }.joined(separator: ","),
                         token["ExpirationTime"] as? String ?? "-"]
                    })
                }
            }
        }

        struct Read: ParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Show a token by its AccessorID.")
            @OptionGroup var options: GlobalOptions
            @Argument(help: "The token's AccessorID.") var accessorID: String

            func run() throws {
                try reporting {
                    let client = try options.client
                    ACLCommand.printToken(try client.aclObject("GET", "/v1/acl/token/\(client.escape(accessorID))"), options)
                }
            }
        }

        struct SelfToken: ParsableCommand {
            static let configuration = CommandConfiguration(commandName: "self", abstract: "Show the token this command uses.")
            @OptionGroup var options: GlobalOptions

            func run() throws {
                try reporting { ACLCommand.printToken(try options.client.aclObject("GET", "/v1/acl/token/self"), options) }
            }
        }

        struct Delete: ParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Delete a token by its AccessorID.")
            @OptionGroup var options: GlobalOptions
            @Argument(help: "The token's AccessorID.") var accessorID: String

            func run() throws {
                try reporting {
                    let client = try options.client
                    try client.expectSuccess(try client.request("DELETE", "/v1/acl/token/\(client.escape(accessorID))"))
                    if options.json { options.printJSON(["Deleted": accessorID]) } else { print("deleted token \(accessorID)") }
                }
            }
        }
    }

    struct Policy: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Manage policies.", subcommands: [Create.self, List.self, Read.self, Delete.self])

        struct Create: ParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Create a policy from rules in Consul's HCL or JSON form.")
            @OptionGroup var options: GlobalOptions
            @Option(help: "The policy's name.") var name: String
            @Option(help: "What the policy is for.") var description = ""
            @Option(help: "The rules, e.g. 'key_prefix \"app/\" { policy = \"write\" }'; @FILE reads a file.") var rules: String

            func run() throws {
                try reporting {
                    var text = rules
                    if text.hasPrefix("@") {
                        guard let data = FileManager.default.contents(atPath: String(text.dropFirst())) else {
                            throw ClientError("cannot read the rules file \(text.dropFirst())")
                        }
                        text = String(decoding: data, as: UTF8.self)
                    }
                    let body: [String: Any] = ["Name": name, "Description": description, "Rules": text]
                    ACLCommand.printPolicy(try options.client.aclObject("PUT", "/v1/acl/policy", body: body), options)
                }
            }
        }

        struct List: ParsableCommand {
            static let configuration = CommandConfiguration(abstract: "List the policies.")
            @OptionGroup var options: GlobalOptions

            func run() throws {
                try reporting {
                    let policies = try options.client.aclList("/v1/acl/policies")
                    if options.json { options.printJSON(policies); return }
                    printTable(["ID", "NAME", "DESCRIPTION"], policies.map { policy in
                        [policy["ID"] as? String ?? "", policy["Name"] as? String ?? "", policy["Description"] as? String ?? ""]
                    })
                }
            }
        }

        struct Read: ParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Show a policy and its rules, by name or ID.")
            @OptionGroup var options: GlobalOptions
            @Argument(help: "The policy's name or ID.") var policy: String

            func run() throws {
                try reporting {
                    let client = try options.client
                    let id = try client.policyID(policy)
                    ACLCommand.printPolicy(try client.aclObject("GET", "/v1/acl/policy/\(client.escape(id))"), options)
                }
            }
        }

        struct Delete: ParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Delete a policy, by name or ID.")
            @OptionGroup var options: GlobalOptions
            @Argument(help: "The policy's name or ID.") var policy: String

            func run() throws {
                try reporting {
                    let client = try options.client
                    let id = try client.policyID(policy)
                    try client.expectSuccess(try client.request("DELETE", "/v1/acl/policy/\(client.escape(id))"))
                    if options.json { options.printJSON(["Deleted": id]) } else { print("deleted policy \(policy)") }
                }
            }
        }
    }
}
