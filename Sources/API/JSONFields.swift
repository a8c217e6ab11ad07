import Foundation

/// A 400 for a request body: names the JSON field (with its path) and what was expected.
struct BadRequest: Error, CustomStringConvertible {
    var field: String
    var message: String
    var description: String { field.isEmpty ? message : "\(field): \(message)" }
}

/// A JSON object from a request body, read the way Consul's decoder reads it: keys match
/// case-insensitively and with or without underscores (`ServiceID`, `service_id`, `serviceid`),
/// unknown keys are ignored, and a value of the wrong type is a `BadRequest` naming the field.
struct JSONFields {
    /// Where this object sits in the body, for messages: "" at the top, "Check", "Checks[1]".
    let path: String
    private let values: [String: Any]

    init(path: String = "", _ object: [String: Any]) {
        self.path = path
        var values: [String: Any] = [:]
        for (key, value) in object { values[Self.normalize(key)] = value }
        self.values = values
    }

    /// Parses a request body that must be one JSON object.
    init(body: [UInt8]) throws(BadRequest) {
        guard !body.isEmpty else { throw BadRequest(field: "", message: "expected a JSON object in the request body") }
        let parsed: Any
        do {
            parsed = try JSONSerialization.jsonObject(with: Data(body), options: [.fragmentsAllowed])
        } catch {
            throw BadRequest(field: "", message: "the request body is not valid JSON")
        }
        guard let object = parsed as? [String: Any] else { throw BadRequest(field: "", message: "expected a JSON object") }
        self.init(object)
    }

    static func normalize(_ key: String) -> String {
        key.lowercased().replacingOccurrences(of: "_", with: "")
    }

    private func name(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    /// The raw value; JSON null counts as absent.
    private func value(_ key: String) -> Any? {
        guard let value = values[Self.normalize(key)], !(value is NSNull) else { return nil }
        return value
    }

    func has(_ key: String) -> Bool { value(key) != nil }

    func string(_ key: String) throws(BadRequest) -> String? {
        guard let value = value(key) else { return nil }
        guard let text = value as? String else { throw BadRequest(field: name(key), message: "expected a string") }
        return text
    }

    func integer(_ key: String, in range: ClosedRange<Int>) throws(BadRequest) -> Int? {
        guard let value = value(key) else { return nil }
        guard !(value is String), let number = value as? NSNumber, !Self.isBoolean(number),
              number.doubleValue == number.doubleValue.rounded(), let int = Int(exactly: number.doubleValue) else {
            throw BadRequest(field: name(key), message: "expected an integer")
        }
        guard range.contains(int) else { throw BadRequest(field: name(key), message: "expected \(range.lowerBound) to \(range.upperBound)") }
        return int
    }

    func boolean(_ key: String) throws(BadRequest) -> Bool? {
        guard let value = value(key) else { return nil }
        guard let number = value as? NSNumber, Self.isBoolean(number) else {
            throw BadRequest(field: name(key), message: "expected true or false")
        }
        return number.boolValue
    }

    func strings(_ key: String) throws(BadRequest) -> [String]? {
        guard let value = value(key) else { return nil }
        guard let array = value as? [Any] else { throw BadRequest(field: name(key), message: "expected an array of strings") }
        var out: [String] = []
        for (i, item) in array.enumerated() {
            guard let text = item as? String else { throw BadRequest(field: "\(name(key))[\(i)]", message: "expected a string") }
            out.append(text)
        }
        return out
    }

    func stringMap(_ key: String) throws(BadRequest) -> [String: String]? {
        guard let value = value(key) else { return nil }
        guard let object = value as? [String: Any] else {
            throw BadRequest(field: name(key), message: "expected an object of string values")
        }
        var out: [String: String] = [:]
        for (k, v) in object {
            guard let text = v as? String else { throw BadRequest(field: "\(name(key)).\(k)", message: "expected a string") }
            out[k] = text
        }
        return out
    }

    func object(_ key: String) throws(BadRequest) -> JSONFields? {
        guard let value = value(key) else { return nil }
        guard let object = value as? [String: Any] else { throw BadRequest(field: name(key), message: "expected an object") }
        return JSONFields(path: name(key), object)
    }

    func objects(_ key: String) throws(BadRequest) -> [JSONFields]? {
        guard let value = value(key) else { return nil }
        guard let array = value as? [Any] else { throw BadRequest(field: name(key), message: "expected an array of objects") }
        var out: [JSONFields] = []
        for (i, item) in array.enumerated() {
            guard let object = item as? [String: Any] else { throw BadRequest(field: "\(name(key))[\(i)]", message: "expected an object") }
            out.append(JSONFields(path: "\(name(key))[\(i)]", object))
        }
        return out
    }

    /// A Go duration string as Consul takes them ("10s", "1m30s", "500ms"), or a number of
    /// nanoseconds; in seconds.
    func duration(_ key: String) throws(BadRequest) -> Double? {
        guard let value = value(key) else { return nil }
        if let number = value as? NSNumber, !Self.isBoolean(number) { return number.doubleValue / 1e9 }
        guard let text = value as? String, let seconds = Self.parseDuration(text) else {
            throw BadRequest(field: name(key), message: "expected a duration such as \"10s\" or \"1m\"")
        }
        return seconds
    }

    /// "1h2m3.5s", "250ms", "0" → seconds; nil if malformed or negative.
    static func parseDuration(_ text: String) -> Double? {
        if text == "0" { return 0 }
        let units: [(String, Double)] = [("ns", 1e-9), ("us", 1e-6), ("µs", 1e-6), ("ms", 1e-3), ("s", 1), ("m", 60), ("h", 3600)]
        var rest = Substring(text)
        var total = 0.0
        guard !rest.isEmpty else { return nil }
        while !rest.isEmpty {
            let digits = rest.prefix { $0.isNumber || $0 == "." }
            guard let number = Double(digits) else { return nil }
            rest = rest.dropFirst(digits.count)
            guard let unit = units.first(where: { rest.hasPrefix($0.0) && !(($0.0 == "m") && rest.hasPrefix("ms")) }) else { return nil }
            rest = rest.dropFirst(unit.0.count)
            total += number * unit.1
        }
        return total
    }

    /// Go's strconv.ParseBool, which Consul uses for query flags such as `?enable=`.
    static func parseBool(_ text: String) -> Bool? {
        switch text {
        case "1", "t", "T", "TRUE", "true", "True": true
        case "0", "f", "F", "FALSE", "false", "False": false
        default: nil
        }
    }

    /// An object whose values are arrays of strings (Consul's check `Header`).
    func stringLists(_ key: String) throws(BadRequest) -> [String: [String]]? {
        guard let value = value(key) else { return nil }
        guard let object = value as? [String: Any] else {
            throw BadRequest(field: name(key), message: "expected an object of string arrays")
        }
        var out: [String: [String]] = [:]
        for (k, v) in object {
            guard let array = v as? [Any] else { throw BadRequest(field: "\(name(key)).\(k)", message: "expected an array of strings") }
            var values: [String] = []
            for (i, item) in array.enumerated() {
                guard let text = item as? String else { throw BadRequest(field: "\(name(key)).\(k)[\(i)]", message: "expected a string") }
                values.append(text)
            }
            out[k] = values
        }
        return out
    }

    /// JSONSerialization gives booleans as NSNumber too: they are the ones of type `char`
    /// (`__NSCFBoolean`, objCType "c"); JSON numbers come out as "i", "q" or "d".
    static func isBoolean(_ number: NSNumber) -> Bool {
        String(cString: number.objCType) == "c"
    }
}
