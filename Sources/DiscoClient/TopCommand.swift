import ArgumentParser
import Foundation

/// Prometheus text, parsed into samples (`name{labels} value`); comments skipped.
struct MetricSamples {
    struct Sample {
        var name: String
        var labels: [String: String]
        var value: Double
    }

    var samples: [Sample] = []

    init(text: String) {
        for line in text.split(separator: "\n") where !line.hasPrefix("#") && !line.isEmpty {
            guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) ?? Self.special(line[line.index(after: space)...]) else { continue }
            let series = line[..<space]
            var name = String(series)
            var labels: [String: String] = [:]
            if let open = series.firstIndex(of: "{"), series.hasSuffix("}") {
                name = String(series[..<open])
                let body = series[series.index(after: open)..<series.index(before: series.endIndex)]
                for pair in body.split(separator: ",") {
                    guard let equals = pair.firstIndex(of: "=") else { continue }
                    labels[String(pair[..<equals])] = String(pair[pair.index(after: equals)...]).trimmingCharacters(in: CharacterSet(charactersIn: "\""))
                }
            }
            samples.append(Sample(name: name, labels: labels, value: value))
        }
    }

    private static func special(_ text: Substring) -> Double? {
        switch text {
        case "+Inf": .infinity
        case "-Inf": -.infinity
        case "NaN": .nan
        default: nil
        }
    }

    /// The sum of every series of `name` whose labels include `matching`.
    func sum(_ name: String, _ matching: [String: String] = [:]) -> Double {
        samples.filter { sample in sample.name == name && matching.allSatisfy { sample.labels[$0.key] == $0.value } }
            .reduce(0) { $0 + $1.value }
    }

    /// A histogram's cumulative bucket counts by upper bound, summed over the series matching.
    func buckets(_ name: String, _ matching: [String: String] = [:]) -> [(Double, Double)] {
        var byBound: [Double: Double] = [:]
        for sample in samples where sample.name == name + "_bucket" && matching.allSatisfy({ sample.labels[$0.key] == $0.value }) {
            guard let le = sample.labels["le"], let bound = le == "+Inf" ? Double.infinity : Double(le) else { continue }
            byBound[bound, default: 0] += sample.value
        }
        return byBound.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
    }

    /// The q-quantile of the observations between two scrapes, from their bucket deltas (the
    /// upper bound of the bucket it falls in, as Prometheus' histogram_quantile without
    /// interpolation); nil without observations.
    static func quantile(_ q: Double, now: [(Double, Double)], before: [(Double, Double)]) -> Double? {
        let previous = Dictionary(before, uniquingKeysWith: { $1 })
        let deltas = now.map { ($0.0, $0.1 - (previous[$0.0] ?? 0)) }
        guard let total = deltas.last?.1, total > 0 else { return nil }
        for (bound, count) in deltas where count >= q * total { return bound }
        return deltas.last?.0
    }
}

/// `discoctl top`: the server's figures, refreshed in the terminal (like `top`), from /metrics
/// and the Raft configuration: DNS and API rates, success, latency, the servers' roles and lag,
/// services and checks.
struct Top: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Watch a server live: DNS and API rates, success, latency, Raft roles and lag, services and checks.")
    @OptionGroup var options: GlobalOptions
    @Option(help: "Seconds between refreshes.") var interval: Double = 2
    @Option(help: "Stop after this many refreshes (0: until interrupted).") var count = 0

    func run() throws {
        try reporting {
            let client = try options.client
            guard interval >= 0.1 else { throw ClientError("--interval: at least 0.1 s") }
            var previous = try scrape(client)
            var previousTime = Date()
            var frames = 0
            while count == 0 || frames < count {
                Thread.sleep(forTimeInterval: interval)
                let current = try scrape(client)
                let now = Date()
                let members = (try? client.members()) ?? []
                let frame = render(current, previous, seconds: now.timeIntervalSince(previousTime), members: members,
                                   address: client.address, at: now)
                if options.json {
                    options.printJSON(frame.json)
                } else {
                    // Clear the screen and home the cursor, then the frame (ANSI).
                    FileHandle.standardOutput.write(Data(("\u{1B}[2J\u{1B}[H" + frame.text).utf8))
                }
                previous = current
                previousTime = now
                frames += 1
            }
        }
    }

    private func scrape(_ client: DiscoClient) throws -> MetricSamples {
        let response = try client.request("GET", "/metrics")
        try client.expectSuccess(response)
        return MetricSamples(text: String(decoding: response.body, as: UTF8.self))
    }

    struct Frame {
        var text: String
        var json: [String: Any]
    }

    func render(_ now: MetricSamples, _ before: MetricSamples, seconds: Double, members: [[String: Any]], address: String,
                at time: Date) -> Frame {
        func rate(_ name: String, _ labels: [String: String] = [:]) -> Double {
            max(0, now.sum(name, labels) - before.sum(name, labels)) / max(seconds, 0.001)
        }
        func milliseconds(_ value: Double?) -> String {
            guard let value else { return "-" }
            return value.isInfinite ? "> top bucket" : "≤ " + String(format: "%g", value * 1000) + " ms"
        }
        let dnsQPS = rate("disco_dns_queries_total")
        let responses = rate("disco_dns_responses_total")
        let answered = rate("disco_dns_responses_total", ["rcode": "NOERROR"]) + rate("disco_dns_responses_total", ["rcode": "NXDOMAIN"])
        let dnsSuccess = responses > 0 ? answered / responses * 100 : 100
        let dnsNow = now.buckets("disco_dns_answer_duration_seconds"), dnsBefore = before.buckets("disco_dns_answer_duration_seconds")
        let dnsP50 = MetricSamples.quantile(0.5, now: dnsNow, before: dnsBefore)
        let dnsP99 = MetricSamples.quantile(0.99, now: dnsNow, before: dnsBefore)
        let apiRPS = rate("disco_http_requests_total")
        let api429 = rate("disco_http_requests_total", ["code": "429"])
        let api5xx = ["500", "502", "503", "504"].reduce(0) { $0 + rate("disco_http_requests_total", ["code": $1]) }
        let apiNow = now.buckets("disco_http_request_duration_seconds"), apiBefore = before.buckets("disco_http_request_duration_seconds")
        let apiP50 = MetricSamples.quantile(0.5, now: apiNow, before: apiBefore)
        let apiP99 = MetricSamples.quantile(0.99, now: apiNow, before: apiBefore)
        let role = now.sum("disco_raft_leader") == 1 ? "leader" : now.sum("disco_raft_known_leader") == 1 ? "follower" : "no leader"
        let term = Int(now.sum("disco_raft_term"))
        let stamp = ISO8601DateFormatter().string(from: time)
        func f(_ value: Double) -> String { String(format: "%.1f", value) }
        let persistP99 = MetricSamples.quantile(0.99, now: now.buckets("disco_raft_persist_duration_seconds"),
                                                before: before.buckets("disco_raft_persist_duration_seconds"))
        var lines: [String] = [
            "discoctl top — \(address) — \(stamp) — every \(interval) s",
            "",
            "DNS   \(f(dnsQPS)) q/s   success \(f(dnsSuccess))%   truncated \(f(rate("disco_dns_truncated_total")))/s   "
                + "answer p50 \(milliseconds(dnsP50))  p99 \(milliseconds(dnsP99))",
            "      RRL limited \(f(rate("disco_dns_rrl_limited_total")))/s   cache hits \(f(rate("disco_dns_cache_hits_total")))/s   "
                + "services in panic \(Int(now.sum("disco_dns_services_in_panic")))",
            "API   \(f(apiRPS)) req/s   429 \(f(api429))/s   5xx \(f(api5xx))/s   p50 \(milliseconds(apiP50))  p99 \(milliseconds(apiP99))",
            "RAFT  \(role), term \(term), commit \(Int(now.sum("disco_raft_commit_index"))), applied \(Int(now.sum("disco_raft_applied_index"))), "
                + "leader changes \(Int(now.sum("disco_raft_leader_changes_total"))), fsync p99 \(milliseconds(persistP99))",
            "REG   \(Int(now.sum("disco_catalog_services"))) services, \(Int(now.sum("disco_catalog_instances"))) instances, checks "
                + "\(Int(now.sum("disco_catalog_checks", ["status": "passing"]))) passing / "
                + "\(Int(now.sum("disco_catalog_checks", ["status": "warning"]))) warning / "
                + "\(Int(now.sum("disco_catalog_checks", ["status": "critical"]))) critical",
            "",
            "SERVER  ADDRESS                 ROLE      VOTER  LAG     CONTACT",
        ]
        for member in members {
            func cell(_ key: String) -> String { member[key].map { "\($0)" } ?? "-" }
            let memberRole = (member["Leader"] as? Bool) == true ? "leader" : "follower"
            lines.append(cell("ID").padding(toLength: 8, withPad: " ", startingAt: 0)
                         + cell("Address").padding(toLength: 24, withPad: " ", startingAt: 0)
                         + memberRole.padding(toLength: 10, withPad: " ", startingAt: 0)
                         + ((member["Voter"] as? Bool) == true ? "yes" : "no").padding(toLength: 7, withPad: " ", startingAt: 0)
                         + cell("Lag").padding(toLength: 8, withPad: " ", startingAt: 0) + cell("LastContact"))
        }
        let json: [String: Any] = [
            "Time": stamp, "DNSQueriesPerSecond": dnsQPS, "DNSSuccessPercent": dnsSuccess,
            "DNSAnswerP50Seconds": dnsP50 ?? NSNull(), "DNSAnswerP99Seconds": dnsP99 ?? NSNull(),
            "APIRequestsPerSecond": apiRPS, "API429PerSecond": api429, "APIP50Seconds": apiP50 ?? NSNull(),
            "APIP99Seconds": apiP99 ?? NSNull(), "RaftRole": role, "RaftTerm": term,
            "Services": Int(now.sum("disco_catalog_services")), "Instances": Int(now.sum("disco_catalog_instances")),
            "Servers": members,
        ]
        return Frame(text: lines.joined(separator: "\n") + "\n", json: json)
    }
}
