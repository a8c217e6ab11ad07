import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

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

/// A small synchronous client of discod's HTTP API, for discoctl and scripts.
///
/// Writes that reach a follower are retried once on the leader it names (`X-Disco-Leader`).
public struct DiscoClient: Sendable {
    /// How long one request may take before the CLI gives up.
    public static let requestTimeoutSeconds: Double = 10

    public var address: String
    public var token: String?

    public init(address: String, token: String? = nil) {
        self.address = address
        self.token = token
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
        guard let url = URL(string: "http://\(address)\(path)") else { throw ClientError("bad address \(address)") }
        var request = URLRequest(url: url, timeoutInterval: timeoutSeconds)
        request.httpMethod = method
        request.httpBody = body
        if let token { request.setValue(token, forHTTPHeaderField: "X-Consul-Token") }
        final class Box: @unchecked Sendable { var result: Result<Response, Error>? }
        let box = Box()
        let done = DispatchSemaphore(value: 0)
        URLSession.shared.dataTask(with: request) { data, response, error in
            if let http = response as? HTTPURLResponse {
                var headers: [String: String] = [:]
                for (name, value) in http.allHeaderFields {
                    if let name = name as? String, let value = value as? String { headers[name.lowercased()] = value }
                }
                box.result = .success(Response(status: http.statusCode, headers: headers, body: data ?? Data()))
            } else {
                box.result = .failure(ClientError("cannot reach discod at \(address): \(error?.localizedDescription ?? "no response")"))
            }
            done.signal()
        }.resume()
        done.wait()
        return try box.result!.get()
    }

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
