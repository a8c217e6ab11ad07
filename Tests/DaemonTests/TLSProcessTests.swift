import Foundation
import Testing

/// A CA and certificates made with the openssl command line, in `directory`.
struct TestPKI {
    let directory: URL

    func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

    func run(_ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        process.arguments = arguments
        process.currentDirectoryURL = directory
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw TestFailure("openssl \(arguments.joined(separator: " ")) failed") }
    }

    /// `NAME.pem` and `NAME.key`: a self-signed CA.
    func makeCA(_ name: String) throws {
        try run(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "\(name).key",
                 "-out", "\(name).pem", "-days", "2", "-subj", "/CN=\(name)"])
    }

    /// `NAME.pem` and `NAME.key`: a certificate for 127.0.0.1 signed by the CA `ca`.
    func makeCertificate(_ name: String, signedBy ca: String) throws {
        try "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n"
            .write(toFile: path("\(name).ext"), atomically: true, encoding: .utf8)
        try run(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "\(name).key",
                 "-out", "\(name).csr", "-subj", "/CN=\(name)"])
        try run(["x509", "-req", "-in", "\(name).csr", "-CA", "\(ca).pem", "-CAkey", "\(ca).key", "-CAcreateserial",
                 "-out", "\(name).pem", "-days", "1", "-extfile", "\(name).ext"])
    }

    func environment(ca: String, certificate: String) -> [String: String] {
        ["DISCO_TLS_CA_FILE": path("\(ca).pem"), "DISCO_TLS_CERT_FILE": path("\(certificate).pem"),
         "DISCO_TLS_KEY_FILE": path("\(certificate).key")]
    }
}

/// curl over HTTPS with the cluster CA (and optionally a client certificate): status and body.
func curlHTTPS(_ method: String, port: Int, _ path: String, body: String? = nil, ca: String, cert: (String, String)? = nil) -> (Int, String)? {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
    var arguments = ["-s", "-m", "10", "-X", method, "--cacert", ca, "-w", "\n%{http_code}", "https://127.0.0.1:\(port)\(path)"]
    if let body { arguments += ["--data-binary", body] }
    if let cert { arguments += ["--cert", cert.0, "--key", cert.1] }
    process.arguments = arguments
    let out = Pipe()
    process.standardOutput = out
    process.standardError = FileHandle.nullDevice
    guard (try? process.run()) != nil else { return nil }
    let data = out.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    let text = String(decoding: data, as: UTF8.self)
    guard let newline = text.lastIndex(of: "\n"), let status = Int(text[text.index(after: newline)...]), status != 0 else { return nil }
    return (status, String(text[..<newline]))
}

/// Mutual TLS on the Raft transport and HTTPS for the API, on real discod processes (issue 14).
@Suite("TLS on a discod cluster", .serialized)
struct TLSProcessTests {
    typealias Cluster = ClusterProcessTests.ClusterFixture

    @Test func aClusterFormsOverMutualTLSAndRefusesAServerFromAnotherCA() throws {
        let directory = try TemporaryDirectory()
        let pki = TestPKI(directory: directory.url)
        try pki.makeCA("cluster-ca")
        try pki.makeCertificate("server", signedBy: "cluster-ca")
        try pki.makeCA("other-ca")
        try pki.makeCertificate("intruder", signedBy: "other-ca")
        let ca = pki.path("cluster-ca.pem")

        let cluster = try Cluster(size: 3, environment: pki.environment(ca: "cluster-ca", certificate: "server"))
        let leader = try #require(cluster.leader(), "the servers elect a leader over mutual TLS")
        let follower = try #require(cluster.nodes.first { $0.id != leader.id })

        // A write through a follower (forwarded to the leader over HTTPS) is read on every server.
        #expect(curlHTTPS("PUT", port: follower.httpPort, "/v1/kv/greeting", body: "hello", ca: ca)?.0 == 200)
        for node in cluster.nodes {
            #expect(waitUntil { curlHTTPS("GET", port: node.httpPort, "/v1/kv/greeting?stale&raw", ca: ca)?.1 == "hello" })
        }
        // discoctl over HTTPS: the CA from a flag or DISCO_CACERT / CONSUL_CACERT.
        #expect(try discoctl(["kv", "get", "greeting", "--ca-file", ca], http: follower.httpPort).stdout == "hello\n")
        #expect(try discoctl(["kv", "put", "via", "env"], http: follower.httpPort, environment: ["CONSUL_CACERT": ca]).status == 0)
        let untrusted = try discoctl(["kv", "get", "greeting"], http: follower.httpPort, environment: ["DISCO_HTTP_SSL": "true"])
        #expect(untrusted.status == 1, "the system's roots do not trust the cluster CA")
        // With TLS (and no ACLs) a client still cannot pose as a server forwarding a request.
        #expect(try discoctl(["kv", "get", "greeting", "--ca-file", ca], http: leader.httpPort).status == 0)
        let posing = Process()
        posing.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
        posing.arguments = ["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", ca, "-X", "PUT", "--data-binary", "x",
                            "-H", "X-Disco-Forwarded: 1", "https://127.0.0.1:\(leader.httpPort)/v1/kv/posed"]
        let out = Pipe()
        posing.standardOutput = out
        try posing.run()
        let code = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        posing.waitUntilExit()
        #expect(code == "403")
        // A plaintext client to the HTTPS port gets no HTTP answer.
        #expect(http("GET", port: leader.httpPort, "/v1/kv/greeting?raw", timeoutSeconds: 2)?.body == nil)

        // Failover over TLS.
        cluster.kill9(leader)
        let next = try #require(cluster.leader(), "a new leader over mutual TLS")
        #expect(next.id != leader.id)
        #expect(curlHTTPS("PUT", port: next.httpPort, "/v1/kv/after", body: "failover", ca: ca)?.0 == 200)
        try cluster.start(leader)
        #expect(waitUntil { curlHTTPS("GET", port: leader.httpPort, "/v1/kv/after?stale&raw", ca: ca)?.1 == "failover" })

        // A server with a certificate from another CA: its Raft frames are refused (named in the
        // log), and it cannot join through the API.
        let ports = freePorts(2)
        let intruder = try DiscodProcess(arguments: [
            "--zones", cluster.zones.path, "--dns", "127.0.0.1:0", "--workers", "1", "--node-id", "9",
            "--raft", "127.0.0.1:\(ports[0])", "--http", "127.0.0.1:\(ports[1])",
            "--data-dir", directory.url.appendingPathComponent("intruder").path,
            "--join", "127.0.0.1:\(next.httpPort)", "--log-level", "info",
        ], environment: pki.environment(ca: "other-ca", certificate: "intruder"))
        defer { intruder.stop() }
        try intruder.waitForStart()
        // It is told nothing: the join never succeeds and the membership stays three.
        usleep(2_000_000)
        let configuration = curlHTTPS("GET", port: next.httpPort, "/v1/operator/raft/configuration", ca: ca)
        let servers = (try? JSONSerialization.jsonObject(with: Data((configuration?.1 ?? "").utf8)) as? [String: Any])?["Servers"] as? [Any]
        #expect(servers?.count == 3)
        #expect(!intruder.stderr.contains("joined the cluster"))
        // Frames sent straight to a server's Raft port with the intruder's certificate.
        let peer = try DiscodProcess(arguments: [
            "--zones", cluster.zones.path, "--dns", "127.0.0.1:0", "--workers", "1", "--node-id", "1",
            "--raft", "127.0.0.1:\(freePorts(1)[0])", "--http", "127.0.0.1:\(freePorts(1)[0])",
            "--data-dir", directory.url.appendingPathComponent("peer").path, "--log-level", "info",
            "--server", "1=127.0.0.1:1,127.0.0.1:2", "--server", "2=127.0.0.1:\(next.raftPort),127.0.0.1:\(next.httpPort)",
        ], environment: pki.environment(ca: "other-ca", certificate: "intruder"))
        defer { peer.stop() }
        try peer.waitForStart()
        #expect(waitUntil(seconds: 10) { next.process?.stderr.contains("refused a peer connection: its TLS handshake failed") == true })
        // ... and a server with no certificate at all, speaking plaintext Raft.
        peer.stop()
        let refusals = { next.process?.stderr.components(separatedBy: "refused a peer connection").count ?? 0 }
        let before = refusals()
        let plaintext = try DiscodProcess(arguments: [
            "--zones", cluster.zones.path, "--dns", "127.0.0.1:0", "--workers", "1", "--node-id", "1",
            "--raft", "127.0.0.1:\(freePorts(1)[0])", "--http", "127.0.0.1:\(freePorts(1)[0])",
            "--data-dir", directory.url.appendingPathComponent("plaintext").path, "--log-level", "info",
            "--server", "1=127.0.0.1:1,127.0.0.1:2", "--server", "2=127.0.0.1:\(next.raftPort),127.0.0.1:\(next.httpPort)",
        ])
        defer { plaintext.stop() }
        try plaintext.waitForStart()
        #expect(waitUntil(seconds: 10) { refusals() > before })
        #expect(try discoctl(["members", "--ca-file", ca, "--json"], http: next.httpPort).stdout.components(separatedBy: "\"ID\"").count == 4,
                "still three members")
    }

    /// From zero to a cluster with discoctl's own CA and certificates, HTTPS clients required
    /// to present one, and a certificate rotation by SIGHUP.
    @Test func discoctlMakesTheCertificatesAndSIGHUPRotatesThem() throws {
        let directory = try TemporaryDirectory()
        let dir = directory.url.path
        func tls(_ arguments: [String]) throws {
            let run = try discoctl(["tls"] + arguments + ["--dir", dir], http: 1)
            try #require(run.status == 0, "discoctl tls \(arguments): \(run.stderr)")
        }
        try tls(["ca", "create"])
        let ca = "--ca=\(dir)/disco-agent-ca.pem", caKey = "--key=\(dir)/disco-agent-ca-key.pem"
        try tls(["cert", "create", "--server", ca, caKey])
        try tls(["cert", "create", "--client", ca, caKey])
        try tls(["cert", "create", "--server", ca, caKey])  // disco-server-1, for the rotation
        let caFile = "\(dir)/disco-agent-ca.pem"
        let environment = ["DISCO_TLS_CA_FILE": caFile, "DISCO_TLS_CERT_FILE": "\(dir)/live.pem",
                           "DISCO_TLS_KEY_FILE": "\(dir)/live-key.pem", "DISCO_TLS_VERIFY_INCOMING_HTTPS": "true"]
        try FileManager.default.copyItem(atPath: "\(dir)/disco-server-0.pem", toPath: "\(dir)/live.pem")
        try FileManager.default.copyItem(atPath: "\(dir)/disco-server-0-key.pem", toPath: "\(dir)/live-key.pem")
        let client = ("\(dir)/disco-client-0.pem", "\(dir)/disco-client-0-key.pem")

        let cluster = try Cluster(size: 3, environment: environment)
        let leader = try #require(cluster.leader())
        let follower = try #require(cluster.nodes.first { $0.id != leader.id })
        // Client certificates are required: none gets no answer, discoctl's client one does.
        #expect(curlHTTPS("GET", port: follower.httpPort, "/v1/status/leader", ca: caFile) == nil)
        #expect(curlHTTPS("PUT", port: follower.httpPort, "/v1/kv/k", body: "v", ca: caFile, cert: client)?.0 == 200)
        let get = try discoctl(["kv", "get", "k", "--ca-file", caFile, "--client-cert", client.0, "--client-key", client.1],
                               http: leader.httpPort)
        #expect(get.stdout == "v\n", "\(get.stderr)")
        #expect(try discoctl(["kv", "get", "k", "--ca-file", caFile], http: leader.httpPort).status == 1)

        // Rotation: new files, SIGHUP; the server presents the new certificate to new connections.
        func serial(port: Int) -> String? {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/bin/sh")
            process.arguments = ["-c", "openssl s_client -connect 127.0.0.1:\(port) -CAfile \(caFile) -cert \(client.0) -key \(client.1) </dev/null 2>/dev/null | openssl x509 -noout -serial"]
            let out = Pipe()
            process.standardOutput = out
            process.standardError = FileHandle.nullDevice
            guard (try? process.run()) != nil else { return nil }
            let data = out.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            let text = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            return text.hasPrefix("serial=") ? text : nil
        }
        let before = try #require(serial(port: follower.httpPort))
        // A bad pair first (the new certificate with the old key): refused, the old one stays.
        try FileManager.default.removeItem(atPath: "\(dir)/live.pem")
        try FileManager.default.copyItem(atPath: "\(dir)/disco-server-1.pem", toPath: "\(dir)/live.pem")
        follower.process?.signal(SIGHUP)
        #expect(follower.process?.waitForLog("TLS certificates not reloaded") == true)
        #expect(serial(port: follower.httpPort) == before)
        try FileManager.default.removeItem(atPath: "\(dir)/live-key.pem")
        try FileManager.default.copyItem(atPath: "\(dir)/disco-server-1-key.pem", toPath: "\(dir)/live-key.pem")
        follower.process?.signal(SIGHUP)
        #expect(follower.process?.waitForLog("TLS certificates reloaded") == true)
        let after = serial(port: follower.httpPort)
        #expect(after != nil && after != before)
        // Raft and forwarding still work with the rotated certificate.
        #expect(curlHTTPS("PUT", port: follower.httpPort, "/v1/kv/k2", body: "rotated", ca: caFile, cert: client)?.0 == 200)
        #expect(waitUntil { curlHTTPS("GET", port: follower.httpPort, "/v1/kv/k2?stale&raw", ca: caFile, cert: client)?.1 == "rotated" })
    }

    @Test func unusableTLSMaterialOrAnInsecureListenerStopsTheStart() throws {
        let directory = try TemporaryDirectory()
        let pki = TestPKI(directory: directory.url)
        try pki.makeCA("ca")
        try pki.makeCertificate("a", signedBy: "ca")
        try pki.makeCertificate("b", signedBy: "ca")
        let zones = directory.url.appendingPathComponent("zones")
        try FileManager.default.createDirectory(at: zones, withIntermediateDirectories: true)
        let ports = freePorts(2)
        func start(_ raft: String, _ environment: [String: String]) throws -> (Int32?, String) {
            let process = try DiscodProcess(arguments: [
                "--zones", zones.path, "--dns", "127.0.0.1:0", "--node-id", "1", "--raft", raft,
                "--http", "127.0.0.1:\(ports[1])", "--data-dir", directory.url.appendingPathComponent("data").path,
                "--server", "1=\(raft),127.0.0.1:\(ports[1])",
            ], environment: environment)
            let status = process.waitForExit(timeoutSeconds: 10)
            if status == nil { process.stop() }
            return (status, process.stderr)
        }
        let (insecure, insecureLog) = try start("0.0.0.0:\(ports[0])", [:])
        #expect(insecure == 78)
        #expect(insecureLog.contains("raft.listen"))
        #expect(insecureLog.contains("set tls.ca_file, tls.cert_file and tls.key_file"))
        #expect(insecureLog.contains("raft.allow_insecure = true"))
        var mismatched = pki.environment(ca: "ca", certificate: "a")
        mismatched["DISCO_TLS_KEY_FILE"] = pki.path("b.key")
        let (status, log) = try start("127.0.0.1:\(ports[0])", mismatched)
        #expect(status == 78)
        #expect(log.contains("b.key: the private key does not match the certificate"), "\(log)")
        var missing = pki.environment(ca: "ca", certificate: "a")
        missing["DISCO_TLS_CA_FILE"] = pki.path("nope.pem")
        let (missingStatus, missingLog) = try start("127.0.0.1:\(ports[0])", missing)
        #expect(missingStatus == 78)
        #expect(missingLog.contains("nope.pem: cannot read the CA certificate"))
    }
}
