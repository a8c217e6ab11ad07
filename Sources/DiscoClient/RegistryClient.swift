import Foundation

/// The service registry through discod's Consul-compatible API.
extension DiscoClient {
    /// PUT /v1/agent/service/register with a Consul service definition (the server validates it
    /// and names the offending field on a 400).
    public func register(_ definition: [String: Any], replaceExistingChecks: Bool = false) throws {
        let body = try JSONSerialization.data(withJSONObject: definition)
        try expectOK(try request("PUT", "/v1/agent/service/register\(replaceExistingChecks ? "?replace-existing-checks" : "")",
                                 body: body))
    }

    public func deregister(_ id: String) throws {
        try expectOK(try request("PUT", "/v1/agent/service/deregister/\(escape(id))"))
    }

    /// GET /v1/catalog/services: every service name with its tags.
    public func services() throws -> [String: [String]] {
        let response = try request("GET", "/v1/catalog/services")
        try expectOK(response)
        return (try JSONSerialization.jsonObject(with: response.body) as? [String: [String]]) ?? [:]
    }

    /// GET /v1/health/service/NAME: instances with their node and checks, and the index to
    /// block on for the next change.
    public func health(of service: String, tags: [String] = [], passing: Bool = false, index: UInt64? = nil,
                       waitSeconds: Double? = nil) throws -> (entries: [[String: Any]], index: UInt64) {
        var query = tags.map { "tag=\($0.addingPercentEncoding(withAllowedCharacters: .urlQueryAllowed) ?? $0)" }
        if passing { query.append("passing") }
        if let index { query.append("index=\(index)") }
        if let waitSeconds { query.append("wait=\(Int(waitSeconds))s") }
        let path = "/v1/health/service/\(escape(service))" + (query.isEmpty ? "" : "?" + query.joined(separator: "&"))
        let response = try request("GET", path, timeoutSeconds: (waitSeconds ?? 0) * 1.1 + Self.requestTimeoutSeconds)
        try expectOK(response)
        let entries = (try JSONSerialization.jsonObject(with: response.body) as? [[String: Any]]) ?? []
        return (entries, UInt64(response.headers["x-consul-index"] ?? "") ?? 0)
    }

    /// GET /v1/health/checks/NAME.
    public func checks(of service: String) throws -> [[String: Any]] {
        let response = try request("GET", "/v1/health/checks/\(escape(service))")
        try expectOK(response)
        return (try JSONSerialization.jsonObject(with: response.body) as? [[String: Any]]) ?? []
    }

    /// PUT /v1/agent/check/pass|warn|fail/ID.
    public func updateCheck(_ id: String, verb: String, note: String?) throws {
        let query = note.map { "?note=\($0.addingPercentEncoding(withAllowedCharacters: .urlQueryAllowed) ?? $0)" } ?? ""
        try expectOK(try request("PUT", "/v1/agent/check/\(verb)/\(escape(id))\(query)"))
    }
}
