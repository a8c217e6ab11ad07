import Raft

/// The state machine the simulated clients use: a map from keys to values with at-most-once
/// application per client request (Ongaro's thesis §6.3: a session table of the last sequence
/// number and result per client), so a client may retry a write after a timeout.
struct KVStore: Sendable {
    private(set) var values: [String: String] = [:]
    /// client → (last applied sequence number, its result)
    private(set) var sessions: [Int: (sequence: UInt64, result: KVResult)] = [:]

    struct Command: Sendable {
        var client: Int
        var sequence: UInt64
        var operation: KVOperation
    }

    /// Applies a command unless this client's sequence number was applied already; returns the
    /// result either way.
    mutating func apply(_ command: Command) -> KVResult {
        if let session = sessions[command.client], command.sequence <= session.sequence {
            return command.sequence == session.sequence ? session.result : .unknown
        }
        let result: KVResult
        switch command.operation {
        case .put(let key, let value):
            values[key] = value
            result = .ok
        case .get(let key):
            result = .value(values[key])
        case .cas(let key, let expected, let new):
            if values[key] == expected {
                values[key] = new
                result = .swapped(true)
            } else {
                result = .swapped(false)
            }
        }
        sessions[command.client] = (command.sequence, result)
        return result
    }

    func session(of client: Int) -> (sequence: UInt64, result: KVResult)? { sessions[client] }

    // MARK: - Encoding (text with '\u{1F}' separators; keys and values never contain it)

    static let separator: Character = "\u{1F}"

    static func encode(_ command: Command) -> [UInt8] {
        var fields = [String(command.client), String(command.sequence)]
        switch command.operation {
        case .put(let k, let v): fields += ["put", k, v]
        case .get(let k): fields += ["get", k]
        case .cas(let k, let e, let n): fields += ["cas", k, e.map { "=" + $0 } ?? "-", n]
        }
        return Array(fields.joined(separator: String(separator)).utf8)
    }

    static func decode(_ data: [UInt8]) -> Command {
        let fields = String(decoding: data, as: UTF8.self).split(separator: separator, omittingEmptySubsequences: false)
            .map(String.init)
        let client = Int(fields[0])!, sequence = UInt64(fields[1])!
        let operation: KVOperation
        switch fields[2] {
        case "put": operation = .put(key: fields[3], value: fields[4])
        case "get": operation = .get(key: fields[3])
        case "cas":
            operation = .cas(key: fields[3], expected: fields[4] == "-" ? nil : String(fields[4].dropFirst()), new: fields[5])
        default: preconditionFailure("bad command \(fields)")
        }
        return Command(client: client, sequence: sequence, operation: operation)
    }

    /// Deterministic snapshot: sorted keys and clients.
    func snapshot() -> [UInt8] {
        var lines: [String] = []
        for key in values.keys.sorted() { lines.append("v\(Self.separator)\(key)\(Self.separator)\(values[key]!)") }
        for client in sessions.keys.sorted() {
            let s = sessions[client]!
            let result: String
            switch s.result {
            case .ok: result = "ok"
            case .value(let v): result = v.map { "=" + $0 } ?? "-"
            case .swapped(let b): result = b ? "t" : "f"
            case .unknown: result = "?"
            }
            lines.append("s\(Self.separator)\(client)\(Self.separator)\(s.sequence)\(Self.separator)\(result)")
        }
        return Array(lines.joined(separator: "\n").utf8)
    }

    init() {}

    init(snapshot data: [UInt8]) {
        for line in String(decoding: data, as: UTF8.self).split(separator: "\n") {
            let f = line.split(separator: Self.separator, omittingEmptySubsequences: false).map(String.init)
            if f[0] == "v" {
                values[f[1]] = f[2]
            } else {
                let result: KVResult
                switch f[3] {
                case "ok": result = .ok
                case "-": result = .value(nil)
                case "t": result = .swapped(true)
                case "f": result = .swapped(false)
                case "?": result = .unknown
                default: result = .value(String(f[3].dropFirst()))
                }
                sessions[Int(f[1])!] = (UInt64(f[2])!, result)
            }
        }
    }
}
