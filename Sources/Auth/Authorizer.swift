/// What one request may do: the merged rules of its token's policies over the default policy, or
/// everything (a management token, or ACLs off). A pure value: deciding is a lookup, no I/O.
///
/// Decisions follow Consul's: an exact rule beats a prefix rule, the longest prefix wins, and a
/// name no rule covers gets the default policy. The default never grants `acl` (Consul's
/// allow-all authorizer does not manage ACLs either); snapshots need `acl` write.
public struct Authorizer: Sendable {
    /// Who is asking, for error messages and /v1/acl/token/self ("" with ACLs off).
    public let accessorID: String
    public let isManagement: Bool
    /// ACLs are off: everything is allowed and nothing is filtered.
    public let isDisabled: Bool
    private let defaultAllows: Bool
    private let segments: [String: Compiled]
    private let levels: [String: ACLAccess]

    /// A compiled segment: exact names, and prefixes longest first.
    struct Compiled: Sendable {
        var exact: [String: ACLAccess]
        var prefixes: [(String, ACLAccess)]

        func access(_ name: String) -> ACLAccess? {
            if let access = exact[name] { return access }
            for (prefix, access) in prefixes where name.hasPrefix(prefix) { return access }
            return nil
        }
    }

    /// Everything allowed: ACLs are off.
    public static let disabled = Authorizer(accessorID: "", management: true, disabled: true, defaultAllows: true, rules: [])

    public static func management(accessorID: String) -> Authorizer {
        Authorizer(accessorID: accessorID, management: true, disabled: false, defaultAllows: true, rules: [])
    }

    /// The rules of several policies merged as Consul merges them (`ACLAccess.takesPrecedence`).
    public init(accessorID: String, defaultAllows: Bool, rules: [ACLRules]) {
        self.init(accessorID: accessorID, management: false, disabled: false, defaultAllows: defaultAllows, rules: rules)
    }

    private init(accessorID: String, management: Bool, disabled: Bool, defaultAllows: Bool, rules: [ACLRules]) {
        self.accessorID = accessorID
        self.isManagement = management
        self.isDisabled = disabled
        self.defaultAllows = defaultAllows
        func merge(_ into: inout [String: ACLAccess], _ from: [String: ACLAccess]) {
            for (name, access) in from {
                if let held = into[name], !access.takesPrecedence(over: held) { continue }
                into[name] = access
            }
        }
        var exact: [String: [String: ACLAccess]] = [:]
        var prefix: [String: [String: ACLAccess]] = [:]
        var levels: [String: ACLAccess] = [:]
        for policy in rules {
            for (resource, segment) in policy.segments {
                merge(&exact[resource, default: [:]], segment.exact)
                merge(&prefix[resource, default: [:]], segment.prefix)
            }
            merge(&levels, policy.levels)
        }
        var segments: [String: Compiled] = [:]
        for resource in Set(exact.keys).union(prefix.keys) {
            let prefixes = (prefix[resource] ?? [:]).sorted { $0.key.utf8.count > $1.key.utf8.count }.map { ($0.key, $0.value) }
            segments[resource] = Compiled(exact: exact[resource] ?? [:], prefixes: prefixes)
        }
        self.segments = segments
        self.levels = levels
    }

    /// Whether `access` to the object `name` of `resource` is allowed (`name` is ignored for
    /// `operator` and `acl`).
    public func allows(_ resource: ACLResource, _ name: String = "", _ access: ACLAccess) -> Bool {
        if isManagement { return true }
        let granted: ACLAccess? = resource.isSegmented ? segments[resource.rawValue]?.access(name) : levels[resource.rawValue]
        if let granted { return granted.grants(access) }
        return defaultAllows && resource != .acl
    }

    /// Consul's KeyWritePrefix (a recursive delete): write on `prefix` itself, and no rule under
    /// it that grants less than write.
    public func allowsKeyWrite(underPrefix prefix: String) -> Bool {
        if isManagement { return true }
        guard allows(.key, prefix, .write) else { return false }
        guard let segment = segments[ACLResource.key.rawValue] else { return true }
        for (name, access) in segment.exact where name.hasPrefix(prefix) && access != .write { return false }
        for (name, access) in segment.prefixes where name.hasPrefix(prefix) && access != .write { return false }
        return true
    }

    /// Consul's 403 text: `Permission denied: token with AccessorID 'A' lacks permission 'service:write' on "web"`.
    public func denial(_ resource: ACLResource, _ name: String = "", _ access: ACLAccess) -> String {
        var text = "Permission denied: token with AccessorID '\(accessorID)' lacks permission '\(resource.rawValue):\(access.rawValue)'"
        if resource.isSegmented { text += " on \"\(name)\"" }
        return text
    }
}
