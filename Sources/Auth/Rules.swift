import Foundation

/// What a rule grants on a resource (Consul's policy dispositions). `list` is Consul's key
/// listing level: it implies `read` and is only valid on keys.
public enum ACLAccess: String, Sendable, Codable, CaseIterable {
    case deny, read, list, write

    /// Whether this level lets an operation that needs `needed` through.
    func grants(_ needed: ACLAccess) -> Bool {
        switch (self, needed) {
        case (.deny, _): false
        case (_, .deny): false
        case (.write, _): true
        case (.list, .read), (.list, .list): true
        case (.list, .write): false
        case (.read, .read): true
        case (.read, .list), (.read, .write): false
        }
    }

    /// Consul's policy merger: when two policies of one token rule on the same name, `deny` wins,
    /// then `write`, then `list`, then `read`.
    func takesPrecedence(over other: ACLAccess) -> Bool { precedence > other.precedence }

    private var precedence: Int {
        switch self {
        case .read: 0
        case .list: 1
        case .write: 2
        case .deny: 3
        }
    }
}

/// The resources a rule names: Consul's, as far as Disco has them.
public enum ACLResource: String, Sendable, CaseIterable {
    case service, node, key, `operator`, acl

    /// Whether rules name individual objects of this resource (`service "web"`), with a
    /// `_prefix` form; `operator` and `acl` are single levels.
    var isSegmented: Bool {
        switch self {
        case .service, .node, .key: true
        case .operator, .acl: false
        }
    }
}

/// A policy's rules, parsed: per segmented resource the exact and prefix rules, and the levels of
/// `operator` and `acl`. Built from Consul's JSON rule form or its HCL form.
public struct ACLRules: Sendable, Equatable {
    public struct Segment: Sendable, Equatable {
        public var exact: [String: ACLAccess] = [:]
        public var prefix: [String: ACLAccess] = [:]
    }

    public var segments: [String: Segment] = [:]  // by ACLResource.rawValue
    public var levels: [String: ACLAccess] = [:]  // operator, acl

    public init() {}

    /// Rules text larger than this is refused (Consul's own limit is the request size; a policy
    /// of this size holds thousands of rules).
    public static let textBytesMax = 64 * 1024

    /// Parses Consul's JSON rule form (`{"key_prefix": {"app/": {"policy": "write"}}}`) or its
    /// HCL form (`key_prefix "app/" { policy = "write" }`). An empty text is no rule.
    public init(parsing text: String) throws(ACLRuleError) {
        guard text.utf8.count <= Self.textBytesMax else {
            throw ACLRuleError(rule: "", message: "the rules are longer than \(Self.textBytesMax) bytes")
        }
        var trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
        // Rules sent JSON-encoded once more (py-consul's `rules="..."` is sent as a JSON string).
        if trimmed.hasPrefix("\""),
           let inner = try? JSONSerialization.jsonObject(with: Data(trimmed.utf8), options: [.fragmentsAllowed]) as? String {
            trimmed = inner.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        if trimmed.isEmpty { return }
        let blocks: [RuleBlock]
        if trimmed.hasPrefix("{") {
            blocks = try Self.jsonBlocks(trimmed)
        } else {
            var parser = HCLRuleParser(text: trimmed)
            blocks = try parser.parse()
        }
        for block in blocks { try add(block) }
    }

    /// One rule as written: `service "web" { policy = "read" }` is (service, "web", read);
    /// `operator = "write"` is (operator, nil, write).
    struct RuleBlock {
        var keyword: String
        var name: String?
        var policy: String?
        /// Where the rule starts, in HCL rules.
        var line: Int? = nil
        var where_: String { name.map { "\(keyword) \"\($0)\"" } ?? keyword }
    }

    private mutating func add(_ block: RuleBlock) throws(ACLRuleError) {
        do {
            try addChecked(block)
        } catch {
            var error = error
            error.line = error.line ?? block.line
            throw error
        }
    }

    private mutating func addChecked(_ block: RuleBlock) throws(ACLRuleError) {
        let keyword = block.keyword
        let isPrefix = keyword.hasSuffix("_prefix")
        let base = isPrefix ? String(keyword.dropLast("_prefix".count)) : keyword
        guard let resource = ACLResource(rawValue: base) else {
            let known = ACLResource.allCases.flatMap { $0.isSegmented ? [$0.rawValue, $0.rawValue + "_prefix"] : [$0.rawValue] }
            throw ACLRuleError(rule: keyword, message: "unknown resource; expected one of \(known.joined(separator: ", "))")
        }
        guard let policyText = block.policy else {
            throw ACLRuleError(rule: block.where_, message: "policy: missing (expected read, write or deny)")
        }
        guard let access = ACLAccess(rawValue: policyText) else {
            throw ACLRuleError(rule: block.where_, message: "policy: expected read, write\(resource == .key ? ", list" : "") or deny, got \"\(policyText)\"")
        }
        if access == .list && resource != .key {
            throw ACLRuleError(rule: block.where_, message: "policy: list is only valid for key and key_prefix rules")
        }
        if resource.isSegmented {
            guard let name = block.name else {
                throw ACLRuleError(rule: keyword, message: "expected a name: \(keyword) \"NAME\" { policy = \"read\" }")
            }
            var segment = segments[resource.rawValue] ?? Segment()
            if isPrefix { segment.prefix[name] = access } else { segment.exact[name] = access }
            segments[resource.rawValue] = segment
        } else {
            guard !isPrefix else { throw ACLRuleError(rule: keyword, message: "\(base) has no prefix form") }
            guard block.name == nil else { throw ACLRuleError(rule: block.where_, message: "\(base) takes no name: \(base) = \"read\"") }
            levels[resource.rawValue] = access
        }
    }

    private static func jsonBlocks(_ text: String) throws(ACLRuleError) -> [RuleBlock] {
        let parsed: Any
        do {
            parsed = try JSONSerialization.jsonObject(with: Data(text.utf8))
        } catch {
            throw ACLRuleError(rule: "", message: "the rules are not valid JSON")
        }
        guard let object = parsed as? [String: Any] else { throw ACLRuleError(rule: "", message: "expected a JSON object") }
        var blocks: [RuleBlock] = []
        for (keyword, value) in object.sorted(by: { $0.key < $1.key }) {
            if let level = value as? String {
                blocks.append(RuleBlock(keyword: keyword, name: nil, policy: level))
                continue
            }
            guard let names = value as? [String: Any] else {
                throw ACLRuleError(rule: keyword, message: "expected an object of names, or a level string")
            }
            for (name, rule) in names.sorted(by: { $0.key < $1.key }) {
                guard let fields = rule as? [String: Any] else {
                    throw ACLRuleError(rule: "\(keyword) \"\(name)\"", message: "expected an object such as {\"policy\": \"read\"}")
                }
                try checkFields(fields.keys, rule: "\(keyword) \"\(name)\"")
                guard fields["policy"] == nil || fields["policy"] is String else {
                    throw ACLRuleError(rule: "\(keyword) \"\(name)\"", message: "policy: expected a string")
                }
                blocks.append(RuleBlock(keyword: keyword, name: name, policy: fields["policy"] as? String))
            }
        }
        return blocks
    }

    /// Fields a rule may hold: `policy`, and Consul's `intentions` (accepted, not used: Disco has
    /// no service mesh).
    static func checkFields(_ names: some Sequence<String>, rule: String) throws(ACLRuleError) {
        for name in names where name != "policy" && name != "intentions" {
            throw ACLRuleError(rule: rule, message: "unknown field \"\(name)\"; expected policy")
        }
    }
}

/// A policy's rules that cannot be used: names the rule (`service "web"`) and what is wrong.
public struct ACLRuleError: Error, Sendable, Equatable, CustomStringConvertible {
    public var rule: String
    public var message: String
    /// 1-based line in HCL rules, when known.
    public var line: Int?

    public init(rule: String, message: String, line: Int? = nil) {
        self.rule = rule
        self.message = message
        self.line = line
    }

    /// `line 3: service "web": policy: expected ...` (the line in HCL rules, when known).
    public var description: String {
        var text = ""
        if let line { text += "line \(line): " }
        if !rule.isEmpty { text += rule + ": " }
        return text + message
    }
}

/// The subset of HCL that Consul's rules use: `resource "name" { policy = "level" }` blocks and
/// `resource = "level"` assignments, with `#`, `//` and `/* */` comments.
struct HCLRuleParser {
    private enum Token: Equatable {
        case word(String), string(String), open, close, equals, end
    }

    private let bytes: [UInt8]
    private var offset = 0
    private var line = 1

    init(text: String) { bytes = Array(text.utf8) }

    mutating func parse() throws(ACLRuleError) -> [ACLRules.RuleBlock] {
        var blocks: [ACLRules.RuleBlock] = []
        while true {
            let token = try next()
            let startLine = line
            guard case .word(let keyword) = token else {
                if token == .end { return blocks }
                throw fail("", "expected a resource such as service, key_prefix or operator")
            }
            switch try next() {
            case .equals:
                guard case .string(let level) = try next() else { throw fail(keyword, "expected a quoted level after =") }
                blocks.append(.init(keyword: keyword, name: nil, policy: level, line: startLine))
            case .string(let name):
                guard try next() == .open else { throw fail("\(keyword) \"\(name)\"", "expected {") }
                var block = ACLRules.RuleBlock(keyword: keyword, name: name, policy: nil, line: startLine)
                while true {
                    let field = try next()
                    if field == .close { break }
                    guard case .word(let fieldName) = field, try next() == .equals, case .string(let value) = try next() else {
                        throw fail(block.where_, "expected policy = \"read\" or }")
                    }
                    try ACLRules.checkFields([fieldName], rule: block.where_)
                    if fieldName == "policy" { block.policy = value }
                }
                blocks.append(block)
            default:
                throw fail(keyword, "expected = or a quoted name")
            }
        }
    }

    private func fail(_ rule: String, _ message: String) -> ACLRuleError {
        ACLRuleError(rule: rule, message: message, line: line)
    }

    private mutating func next() throws(ACLRuleError) -> Token {
        skipSpaceAndComments()
        guard offset < bytes.count else { return .end }
        let byte = bytes[offset]
        switch byte {
        case UInt8(ascii: "{"): offset += 1; return .open
        case UInt8(ascii: "}"): offset += 1; return .close
        case UInt8(ascii: "="): offset += 1; return .equals
        case UInt8(ascii: "\""):
            offset += 1
            var value: [UInt8] = []
            while offset < bytes.count, bytes[offset] != UInt8(ascii: "\"") {
                if bytes[offset] == UInt8(ascii: "\n") { throw fail("", "a quoted string does not end on its line") }
                if bytes[offset] == UInt8(ascii: "\\"), offset + 1 < bytes.count { offset += 1 }
                value.append(bytes[offset])
                offset += 1
            }
            guard offset < bytes.count else { throw fail("", "a quoted string does not end") }
            offset += 1
            return .string(String(decoding: value, as: UTF8.self))
        default:
            let start = offset
            while offset < bytes.count, Self.isWordByte(bytes[offset]) { offset += 1 }
            guard offset > start else { throw fail("", "unexpected character '\(String(decoding: [byte], as: UTF8.self))'") }
            return .word(String(decoding: bytes[start..<offset], as: UTF8.self))
        }
    }

    private static func isWordByte(_ b: UInt8) -> Bool {
        (b >= UInt8(ascii: "a") && b <= UInt8(ascii: "z")) || (b >= UInt8(ascii: "A") && b <= UInt8(ascii: "Z"))
            || (b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9")) || b == UInt8(ascii: "_") || b == UInt8(ascii: "-")
    }

    private mutating func skipSpaceAndComments() {
        while offset < bytes.count {
            let b = bytes[offset]
            if b == UInt8(ascii: "\n") { line += 1; offset += 1; continue }
            if b == UInt8(ascii: " ") || b == UInt8(ascii: "\t") || b == UInt8(ascii: "\r") || b == UInt8(ascii: ",") { offset += 1; continue }
            let slash = UInt8(ascii: "/")
            if b == UInt8(ascii: "#") || (b == slash && offset + 1 < bytes.count && bytes[offset + 1] == slash) {
                while offset < bytes.count, bytes[offset] != UInt8(ascii: "\n") { offset += 1 }
                continue
            }
            if b == slash && offset + 1 < bytes.count && bytes[offset + 1] == UInt8(ascii: "*") {
                offset += 2
                while offset + 1 < bytes.count, !(bytes[offset] == UInt8(ascii: "*") && bytes[offset + 1] == slash) {
                    if bytes[offset] == UInt8(ascii: "\n") { line += 1 }
                    offset += 1
                }
                offset = min(offset + 2, bytes.count)
                continue
            }
            return
        }
    }
}
