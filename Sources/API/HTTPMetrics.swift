import Foundation
import NIOConcurrencyHelpers
import NIOHTTP1

/// HTTP API requests by route, method and status, and their latency: counted when the answer is
/// written. Routes are a fixed set (a client's path never becomes a label of its own: the
/// series stay bounded whatever it sends).
final class HTTPMetrics: Sendable {
    static let routes: [String] = [
        "/v1/kv", "/v1/snapshot", "/v1/agent/service", "/v1/agent/check", "/v1/agent/services", "/v1/agent/checks",
        "/v1/agent/self", "/v1/agent/maintenance", "/v1/agent/health", "/v1/catalog/register", "/v1/catalog/deregister",
        "/v1/catalog/services", "/v1/catalog/service", "/v1/catalog/nodes", "/v1/catalog/node", "/v1/catalog/datacenters",
        "/v1/health/service", "/v1/health/checks", "/v1/health/node", "/v1/health/state", "/v1/acl/bootstrap",
        "/v1/acl/token", "/v1/acl/tokens", "/v1/acl/policy", "/v1/acl/policies", "/v1/operator/raft", "/v1/status/leader",
        "/v1/status/peers", "/v1/internal/catalog", "/metrics", "/health", "/ready",
    ]
    private static let routeSet = Set(routes)
    static let methods: [HTTPMethod] = [.GET, .PUT, .POST, .DELETE]
    /// Upper bounds (seconds) of the latency buckets; blocking queries wait up to minutes (+Inf).
    static let latencyBucketsSeconds: [Double] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]

    private struct Key: Hashable {
        var route: String
        var method: String
        var code: UInt
    }

    private struct State {
        var requests: [Key: UInt64] = [:]
        var latency: [String: Metric.Histogram] = [:]
    }

    private let state = NIOLockedValueBox(State())

    /// The route label of a request target: one of `routes`, or "other".
    static func route(_ uri: String) -> String {
        let path = uri.prefix { $0 != "?" }
        let parts = path.split(separator: "/", maxSplits: 3, omittingEmptySubsequences: true)
        for depth in stride(from: min(3, parts.count), through: 1, by: -1) {
            let candidate = "/" + parts.prefix(depth).joined(separator: "/")
            if routeSet.contains(candidate) { return candidate }
        }
        return "other"
    }

    func record(uri: String, method: HTTPMethod, status: HTTPResponseStatus, seconds: Double) {
        let route = Self.route(uri)
        // rawValue, not "\(method)": describing an enum with payloads goes through reflection.
        let methodLabel = Self.methods.contains(method) ? method.rawValue : "other"
        state.withLockedValue { state in
            state.requests[Key(route: route, method: methodLabel, code: status.code), default: 0] += 1
            state.latency[route, default: Metric.Histogram(bounds: Self.latencyBucketsSeconds)].record(seconds)
        }
    }

    var lines: [String] {
        let state = state.withLockedValue { $0 }
        let requests = state.requests.sorted { ($0.key.route, $0.key.method, $0.key.code) < ($1.key.route, $1.key.method, $1.key.code) }
        return Metric.family("disco_http_requests_total", help: "HTTP API requests answered, by route, method and status code.",
                             kind: .counter, requests.map { ("route=\"\($0.key.route)\",method=\"\($0.key.method)\",code=\"\($0.key.code)\"", "\($0.value)") })
            + Metric.histogram("disco_http_request_duration_seconds",
                               help: "Time from a request's head to its answer, by route (blocking queries included).",
                               state.latency.sorted { $0.key < $1.key }.map { ("route=\"\($0.key)\"", $0.value) })
    }
}
