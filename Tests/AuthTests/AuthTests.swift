import Auth
import Foundation
import Store
import Testing

@Suite struct ACLRulesTests {
    @Test func hclErrorsFoundAfterParsingNameTheirLine() {
        #expect(throws: ACLRuleError(rule: "service \"web\"", message: "policy: expected read, write or deny, got \"rw\"", line: 3)) {
            try ACLRules(parsing: "operator = \"read\"\n\nservice \"web\" {\n policy = \"rw\"\n}")
        }
    }

    @Test func jsonAndHCLFormsParseToTheSameRules() throws {
        let json = """
            {"key_prefix": {"app/": {"policy": "write"}, "": {"policy": "read"}},
             "service": {"web": {"policy": "write", "intentions": "read"}},
             "node_prefix": {"": {"policy": "read"}}, "operator": "read"}
            """
        let hcl = """
            # the same rules, as Consul's CLI users write them
            key_prefix "app/" { policy = "write" }
            key_prefix "" {
              policy = "read"
            }
            service "web" { policy = "write"  intentions = "read" }  // trailing comment
            /* a block
               comment */
            node_prefix "" { policy = "read" }
            operator = "read"
            """
        let a = try ACLRules(parsing: json), b = try ACLRules(parsing: hcl)
        #expect(a == b)
        #expect(a.segments["key"]?.prefix == ["app/": .write, "": .read])
        #expect(a.segments["service"]?.exact == ["web": .write])
        #expect(a.levels == ["operator": .read])
    }

    @Test(arguments: [
        ("{\"service\": {\"web\": {\"policy\": \"rw\"}}}", "service \"web\": policy: expected read, write or deny, got \"rw\""),
        ("{\"services\": {\"web\": {\"policy\": \"read\"}}}", "services: unknown resource; expected one of service, service_prefix, node, node_prefix, key, key_prefix, operator, acl"),
        ("{\"service\": {\"web\": {\"polcy\": \"read\"}}}", "service \"web\": unknown field \"polcy\"; expected policy"),
        ("{\"service\": {\"web\": {}}}", "service \"web\": policy: missing (expected read, write or deny)"),
        ("{\"service\": {\"web\": {\"policy\": \"list\"}}}", "service \"web\": policy: list is only valid for key and key_prefix rules"),
        ("{\"operator\": {\"x\": {\"policy\": \"read\"}}}", "operator \"x\": operator takes no name: operator = \"read\""),
        ("{\"service\": ", "the rules are not valid JSON"),
        ("service \"web\" {\n  policy = \"read\"\n", "line 2: service \"web\": expected policy = \"read\" or }"),
        ("service {\n policy = \"read\" }", "line 1: service: expected = or a quoted name"),
        ("key_prefix \"a\" { policy = \"write }", "line 1: a quoted string does not end"),
    ])
    func badRulesNameTheRuleAndField(text: String, message: String) {
        #expect(throws: ACLRuleError.self) { try ACLRules(parsing: text) }
        do {
            _ = try ACLRules(parsing: text)
        } catch {
            #expect(error.description == message)
        }
    }
}

@Suite struct AuthorizerTests {
    func authorizer(_ rules: String..., defaultAllows: Bool = false) throws -> Authorizer {
        Authorizer(accessorID: "a", defaultAllows: defaultAllows, rules: try rules.map { try ACLRules(parsing: $0) })
    }

    @Test func exactBeatsPrefixAndTheLongestPrefixWins() throws {
        let auth = try authorizer("""
            key_prefix "" { policy = "read" }
            key_prefix "app/" { policy = "write" }
            key_prefix "app/secret/" { policy = "deny" }
            key "app/secret/public" { policy = "read" }
            """)
        #expect(auth.allows(.key, "other", .read))
        #expect(!auth.allows(.key, "other", .write))
        #expect(auth.allows(.key, "app/x", .write))
        #expect(!auth.allows(.key, "app/secret/x", .read))
        #expect(auth.allows(.key, "app/secret/public", .read))
        #expect(!auth.allows(.key, "app/secret/public", .write))
        #expect(!auth.allows(.service, "web", .read), "no rule and default deny")
    }

    @Test func defaultPolicyAppliesWhereNoRuleMatchesButNeverGrantsACL() throws {
        let allow = try authorizer("service \"db\" { policy = \"deny\" }", defaultAllows: true)
        #expect(allow.allows(.service, "web", .write))
        #expect(!allow.allows(.service, "db", .read))
        #expect(allow.allows(.operator, "", .write))
        #expect(!allow.allows(.acl, "", .read))
        let deny = try authorizer("", defaultAllows: false)
        #expect(!deny.allows(.node, "n1", .read))
        #expect(Authorizer.management(accessorID: "m").allows(.acl, "", .write))
    }

    @Test func mergedPoliciesLetDenyWinThenWrite() throws {
        let auth = try authorizer("service \"web\" { policy = \"read\" }\nservice \"db\" { policy = \"write\" }",
                                  "service \"web\" { policy = \"write\" }\nservice \"db\" { policy = \"deny\" }")
        #expect(auth.allows(.service, "web", .write))
        #expect(!auth.allows(.service, "db", .read))
    }

    @Test func listImpliesReadOnKeys() throws {
        let auth = try authorizer("key_prefix \"k/\" { policy = \"list\" }")
        #expect(auth.allows(.key, "k/a", .read))
        #expect(auth.allows(.key, "k/a", .list))
        #expect(!auth.allows(.key, "k/a", .write))
    }

    @Test func recursiveDeleteNeedsWriteOnEverythingUnderThePrefix() throws {
        let auth = try authorizer("key_prefix \"app/\" { policy = \"write\" }\nkey \"app/locked\" { policy = \"read\" }")
        #expect(!auth.allowsKeyWrite(underPrefix: "app/"))
        #expect(auth.allowsKeyWrite(underPrefix: "app/free/"))
        #expect(!auth.allowsKeyWrite(underPrefix: ""))
        #expect(auth.denial(.key, "x", .write) == "Permission denied: token with AccessorID 'a' lacks permission 'key:write' on \"x\"")
    }
}

@Suite struct ACLStoreTests {
    func temporaryDirectory() throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("acl-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    func token(_ secret: String, policies: [String] = [], expires: Double? = nil) -> ACLToken {
        ACLToken(accessorID: ACLSecret.newID(), secretHash: ACLSecret.hash(secret), policies: policies, expirationTime: expires,
                 createTime: 1)
    }

    @Test func bootstrapHappensOnceAndSurvivesARestart() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = try ACLStore(path: dir + "/acl.db")
        let first = token("s1")
        try store.apply(index: 5, data: ACLCommand.bootstrap(first).encoded)
        #expect(store.outcome(at: 5) == .applied)
        try store.apply(index: 6, data: ACLCommand.bootstrap(token("s2")).encoded)
        #expect(store.outcome(at: 6) == .refused("ACL bootstrap no longer allowed (reset index: 5)"))
        #expect(store.state.token(secret: "s2", now: 0) == nil)
        let reopened = try ACLStore(path: dir + "/acl.db")
        #expect(reopened.appliedIndex == 6)
        let found = try #require(reopened.state.token(secret: "s1", now: 0))
        #expect(found.accessorID == first.accessorID)
        #expect(reopened.state.authorizer(for: found, defaultAllows: false).isManagement)
        // Replaying an applied entry changes nothing.
        try reopened.apply(index: 6, data: ACLCommand.deleteToken(accessorID: first.accessorID).encoded)
        #expect(reopened.state.token(secret: "s1", now: 0) != nil)
    }

    @Test func tokensResolveThroughTheirPoliciesAndExpire() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = try ACLStore(path: dir + "/acl.db")
        let policy = ACLPolicy(id: "p1", name: "web-read", rules: "service \"web\" { policy = \"read\" }")
        try store.apply(index: 1, data: ACLCommand.setPolicy(policy, create: true).encoded)
        try store.apply(index: 2, data: ACLCommand.setPolicy(ACLPolicy(id: "p2", name: "web-read"), create: true).encoded)
        #expect(store.outcome(at: 2) == .refused("a policy named web-read exists (ID p1)"))
        try store.apply(index: 3, data: ACLCommand.setToken(token("t", policies: ["p1"], expires: 100), create: true).encoded)
        try store.apply(index: 4, data: ACLCommand.setToken(token("u", policies: ["nope"]), create: true).encoded)
        #expect(store.outcome(at: 4) == .refused("no policy with ID nope"))
        let t = try #require(store.state.token(secret: "t", now: 99))
        let auth = store.state.authorizer(for: t, defaultAllows: false)
        #expect(auth.allows(.service, "web", .read) && !auth.allows(.service, "web", .write) && !auth.allows(.service, "db", .read))
        #expect(store.state.token(secret: "t", now: 100) == nil, "expired")
        #expect(store.state.token(secret: "T", now: 0) == nil)
        try store.apply(index: 5, data: ACLCommand.deletePolicy(id: ACLPolicy.globalManagementID).encoded)
        #expect(store.outcome(at: 5) == .refused("the builtin global-management policy cannot be deleted"))
        try store.apply(index: 6, data: [ACLCommand.entryTag, 0x7B])
        guard case .refused? = store.outcome(at: 6) else { Issue.record("a malformed entry applied"); return }
        #expect(store.appliedIndex == 6)
    }

    @Test func aSnapshotImageRestoresTheWholeState() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let a = try ACLStore(path: dir + "/a.db"), b = try ACLStore(path: dir + "/b.db")
        try a.apply(index: 1, data: ACLCommand.bootstrap(token("root")).encoded)
        try b.apply(index: 1, data: ACLCommand.setToken(token("other"), create: true).encoded)
        let image = try a.snapshotImage()
        try b.validate(image: image)
        try b.restore(image: image, appliedIndex: 9)
        #expect(b.appliedIndex == 9)
        #expect(b.state.token(secret: "root", now: 0) != nil)
        #expect(b.state.token(secret: "other", now: 0) == nil)
        #expect(b.state.bootstrapIndex == 1)
        #expect(throws: (any Error).self) { try b.validate(image: [1, 2, 3]) }
    }
}

@Suite struct ClusterTLSTests {
    /// A CA and a certificate for 127.0.0.1 valid for one day, made with the openssl command line.
    func material() throws -> (TLSFiles, String) {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tls-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let script = """
            cd \(dir) && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=ca \
            && openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout s.key -out s.csr -subj /CN=s \
            && openssl x509 -req -in s.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out s.pem -days 1
            """
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", script]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        try #require(process.terminationStatus == 0, "openssl")
        return (TLSFiles(caFile: dir + "/ca.pem", certFile: dir + "/s.pem", keyFile: dir + "/s.key"), dir)
    }

    @Test func certificatesOutsideTheirValidityAreRefusedNamingTheFile() throws {
        let (files, dir) = try material()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let tls = try ClusterTLS(files: files, verifyIncomingHTTPS: false)
        #expect(tls.certificateNotAfter > Date().timeIntervalSince1970)
        #expect(throws: TLSLoadError.self) { try ClusterTLS(files: files, verifyIncomingHTTPS: false, now: Date().addingTimeInterval(3 * 86_400)) }
        do {
            _ = try ClusterTLS(files: files, verifyIncomingHTTPS: false, now: Date().addingTimeInterval(3 * 86_400))
        } catch {
            #expect(error.description.hasPrefix(files.certFile + ": the certificate expired at "))
        }
        do {
            _ = try ClusterTLS(files: files, verifyIncomingHTTPS: false, now: Date().addingTimeInterval(-3 * 86_400))
            Issue.record("a certificate not valid yet was taken")
        } catch {
            #expect(error.description.hasPrefix(files.certFile + ": the certificate is not valid before "))
        }
        do {
            _ = try ClusterTLS(files: TLSFiles(caFile: files.caFile, certFile: files.certFile, keyFile: files.caFile.replacingOccurrences(of: ".pem", with: ".key")),
                               verifyIncomingHTTPS: false)
            Issue.record("a key of another certificate was taken")
        } catch {
            #expect(error.description.contains("the private key does not match the certificate"))
        }
    }
}
