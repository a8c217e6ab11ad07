import Foundation

/// Reads a client history recorded from real processes, for `LinearizabilityChecker`.
///
/// ## Format: JSON lines, one operation per line
/// ```
/// {"client":1,"op":"put","key":"k","value":"v","call":123,"return":456,"ok":true}
/// {"client":2,"op":"get","key":"k","value":"v","call":130,"return":170,"ok":true}
/// {"client":2,"op":"get","key":"x","value":null,"call":180,"return":190,"ok":true}
/// {"client":3,"op":"cas","key":"k","expected":"v","value":"w","call":200,"return":260,"ok":true}
/// {"client":1,"op":"put","key":"k","value":"z","call":300,"return":null}
/// {"client":1,"op":"put","key":"k","value":"q","call":400,"return":410,"error":"not leader"}
/// ```
/// - `client`: integer id of a sequential client (one outstanding operation at a time).
/// - `op`: `put`, `get` or `cas`. `key`: string.
/// - `value`: for put, the value written; for get, the value read (`null`: absent); for cas, the
///   new value. `expected` (cas only): the value compared against (`null`: absent).
/// - `call`, `return`: integer timestamps from one monotonic clock (any unit) taken just before
///   the request was sent and just after its answer arrived. `return` null or missing: the client
///   never learned the outcome (timeout, crash) — the operation may have taken effect at any
///   time after `call`, or never.
/// - `ok`: for cas, whether it swapped; for put and get, true (may be omitted).
/// - `error`: present when the operation definitely did not take effect (refused before reaching
///   the log, e.g. "not leader"); such a line is ignored. Ambiguous failures are `return: null`.
/// Blank lines and lines starting with `#` are skipped.
public enum HistoryFile {
    public struct ParseError: Error, CustomStringConvertible {
        public var line: Int
        public var message: String
        public var description: String { "history line \(line): \(message)" }
    }

    public static func parse(_ text: String) throws(ParseError) -> [HistoryOperation] {
        var operations: [HistoryOperation] = []
        for (k, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") { continue }
            let number = k + 1
            guard let object = (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any] else {
                throw ParseError(line: number, message: "not a JSON object")
            }
            if object["error"] != nil { continue }
            guard let client = object["client"] as? Int else { throw ParseError(line: number, message: "missing integer \"client\"") }
            guard let key = object["key"] as? String else { throw ParseError(line: number, message: "missing string \"key\"") }
            guard let call = (object["call"] as? NSNumber)?.int64Value else { throw ParseError(line: number, message: "missing integer \"call\"") }
            let returned = (object["return"] as? NSNumber)?.int64Value
            if let returned, returned < call { throw ParseError(line: number, message: "\"return\" before \"call\"") }
            func optionalString(_ name: String) throws(ParseError) -> String? {
                switch object[name] {
                case nil, is NSNull: return nil
                case let s as String: return s
                default: throw ParseError(line: number, message: "\"\(name)\" must be a string or null")
                }
            }
            let operation: KVOperation
            let result: KVResult
            switch object["op"] as? String {
            case "put":
                guard let value = try optionalString("value") else { throw ParseError(line: number, message: "put needs \"value\"") }
                operation = .put(key: key, value: value)
                result = .ok
            case "get":
                operation = .get(key: key)
                result = .value(try optionalString("value"))
            case "cas":
                guard let value = try optionalString("value") else { throw ParseError(line: number, message: "cas needs \"value\"") }
                operation = .cas(key: key, expected: try optionalString("expected"), new: value)
                guard returned == nil || object["ok"] is Bool else { throw ParseError(line: number, message: "cas needs boolean \"ok\"") }
                result = .swapped(object["ok"] as? Bool ?? false)
            default:
                throw ParseError(line: number, message: "\"op\" must be put, get or cas")
            }
            operations.append(HistoryOperation(client: client, operation: operation, call: call, returned: returned, result: result))
        }
        return operations
    }
}
