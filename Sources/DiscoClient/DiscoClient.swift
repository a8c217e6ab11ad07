import Foundation
import AsyncHTTPClient
import NIOCore
import NIOHTTP1
import NIOSSL

/// A failure talking to discod, as one line for a CLI.
public struct ClientError: Error, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// One KV entry as the HTTP API returns it.
public struct KVItem: Codable, Equatable, Sendable {
    public var key: String
    public var value: String?
    public var flags: UInt64
    public var createIndex: UInt64
    public var modifyIndex: UInt64

    enum CodingKeys: String, CodingKey {
        case key = "Key", value = "Value", flags = "Flags", createIndex = "CreateIndex", modifyIndex = "ModifyIndex"
    }

    /// The value decoded from base64 as text (nil when absent or not UTF-8).
    public var text: String? {
        value.flatMap { Data(base64Encoded: $0) }.flatMap { String(data: $0, encoding: .utf8) }
    }
}

/// How discoctl speaks HTTPS: the CA that signed the servers' certificates (else the system's
/// roots), and a client certificate for servers that require one (`tls.verify_incoming_https`).
public struct ClientTLS: Sendable, Equatable {
    public var caFile: String?
    public var certFile: String?
    public var keyFile: String?

    public init(caFile: String? = nil, certFile: String? = nil, keyFile: String? = nil) {
        self.caFile = caFile
        self.certFile = certFile
        self.keyFile = keyFile
    }

    func configuration() throws -> TLSConfiguration {
        var configuration = TLSConfiguration.makeClientConfiguration()
        if let caFile {
            do {
                configuration.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(caFile))
            } catch {
                throw ClientError("cannot read the CA file \(caFile): \(error)")
            }
            // The servers are reached by IP and their certificates come from the cluster's own CA.
            configuration.certificateVerification = .noHostnameVerification
        }
        if let certFile, let keyFile {
            do {
                configuration.certificateChain = try NIOSSLCertificate.fromPEMFile(certFile).map { .certificate($0) }
                configuration.privateKey = .privateKey(try NIOSSLPrivateKey(file: keyFile, format: .pem))
            } catch {
                throw ClientError("cannot read the client certificate \(certFile) or key \(keyFile): \(error)")
            }
        } else if certFile != nil || keyFile != nil {
            throw ClientError("a client certificate needs both --client-cert and --client-key")
        }
        return configuration
    }
}

/// A small synchronous client of discod's HTTP API, for discoctl and scripts.
///
/// Writes that reach a follower are retried once on the leader it names (`X-Disco-Leader`).
public struct DiscoClient: Sendable {
    /// How long one request may take before the CLI gives up.
    public static let requestTimeoutSeconds: Double = 10

    public var address: String
    public var token: String?
    /// HTTPS with these files; nil: HTTP, unless the address says https://.
    public var tls: ClientTLS?

    public init(address: String, token: String? = nil, tls: ClientTLS? = nil) {
        self.address = address
        self.token = token
        self.tls = tls
    }

    public struct Response {
        public var status: Int
        public var headers: [String: String]
        public var body: Data
    }

    /// - Parameter timeoutSeconds: longer for blocking queries, which wait server-side.
    public func request(_ method: String, _ path: String, body: Data? = nil,
                        timeoutSeconds: Double = DiscoClient.requestTimeoutSeconds) throws -> Response {
        let response = try send(method, address: address, path, body: body, timeoutSeconds: timeoutSeconds)
        if response.status == 503, let leader = response.headers["x-disco-leader"], leader != address {
            return try send(method, address: leader, path, body: body, timeoutSeconds: timeoutSeconds)
        }
        return response
    }

    private func send(_ method: String, address: String, _ path: String, body: Data?, timeoutSeconds: Double) throws -> Response {
        var host = address
        var https = tls != nil
        for scheme in ["https://", "http://"] where host.hasPrefix(scheme) {
            host.removeFirst(scheme.count)
            https = scheme == "https://"
        }
        while host.hasSuffix("/") { host.removeLast() }
        var request = HTTPClientRequest(url: "\(https ? "https" : "http")://\(host)\(path)")
        request.method = HTTPMethod(rawValue: method)
        if let body { request.body = .bytes(ByteBuffer(bytes: body)) }
        if let token { request.headers.add(name: "X-Consul-Token", value: token) }
        var configuration = HTTPClient.Configuration()
        if https { configuration.tlsConfiguration = try (tls ?? ClientTLS()).configuration() }
        configuration.timeout = .init(connect: .seconds(Int64(Self.requestTimeoutSeconds)))
        final class Box: @unchecked Sendable { var result: Result<Response, Error>? }
        let box = Box()
        let done = DispatchSemaphore(value: 0)
        let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
        Task {
            do {
                let response = try await client.execute(request, timeout: .milliseconds(Int64(timeoutSeconds * 1000)))
                let bytes = try await response.body.collect(upTo: Self.responseBytesMax)
                var headers: [String: String] = [:]
                for (name, value) in response.headers { headers[name.lowercased()] = value }
                box.result = .success(Response(status: Int(response.status.code), headers: headers, body: Data(bytes.readableBytesView)))
            } catch {
                box.result = .failure(ClientError("cannot reach discod at \(address): \(error)"))
            }
            try? await client.shutdown()
            done.signal()
        }
        done.wait()
        return try box.result!.get()
    }

    /// The largest answer read (a snapshot is the largest thing discod sends).
    public static let responseBytesMax = 1 << 30

    /// GET /v1/kv/KEY; nil if the key does not exist.
    public func get(_ key: String, consistent: Bool = false) throws -> KVItem? {
        let response = try request("GET", "/v1/kv/\(escape(key))\(consistent ? "?consistent" : "")")
        if response.status == 404 { return nil }
        try expectOK(response)
        let items = try JSONDecoder().decode([KVItem].self, from: response.body)
        return items.first
    }

    /// GET /v1/kv/PREFIX?recurse.
    public func list(_ prefix: String) throws -> [KVItem] {
        let response = try request("GET", "/v1/kv/\(escape(prefix))?recurse")
        if response.status == 404 { return [] }
        try expectOK(response)
        return try JSONDecoder().decode([KVItem].self, from: response.body)
    }

    /// PUT /v1/kv/KEY; false when a CAS did not match.
    public func put(_ key: String, value: Data, cas: UInt64? = nil) throws -> Bool {
        let response = try request("PUT", "/v1/kv/\(escape(key))\(cas.map { "?cas=\($0)" } ?? "")", body: value)
        try expectOK(response)
        return String(decoding: response.body, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) == "true"
    }

    public func delete(_ key: String, recurse: Bool = false) throws {
        try expectOK(try request("DELETE", "/v1/kv/\(escape(key))\(recurse ? "?recurse" : "")"))
    }

    /// The leader's Raft address ("" when there is none).
    public func leader() throws -> String {
        let response = try request("GET", "/v1/status/leader")
        try expectOK(response)
        return (try JSONSerialization.jsonObject(with: response.body, options: .fragmentsAllowed) as? String) ?? ""
    }

    /// GET /v1/operator/raft/configuration: the servers, as the answering server knows them.
    public func members() throws -> [[String: Any]] {
        let response = try request("GET", "/v1/operator/raft/configuration")
        try expectOK(response)
        let object = try JSONSerialization.jsonObject(with: response.body) as? [String: Any]
        return object?["Servers"] as? [[String: Any]] ?? []
    }

    public func peers() throws -> [String] {
        let response = try request("GET", "/v1/status/peers")
        try expectOK(response)
        return (try JSONSerialization.jsonObject(with: response.body) as? [String]) ?? []
    }

    func expectOK(_ response: Response) throws {
        guard (200..<300).contains(response.status) else {
            let text = String(decoding: response.body, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            throw ClientError("discod answered \(response.status): \(text.isEmpty ? "no details" : text)")
        }
    }

    func escape(_ key: String) -> String {
        key.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed) ?? key
    }
}
