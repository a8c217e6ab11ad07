import Foundation
import Store

/// The whole ACL state as of one applied index: immutable, replaced on every ACL entry, read by
/// every request without touching SQLite.
public struct ACLState: Sendable {
    /// The index of the bootstrap entry (0: never bootstrapped).
    public private(set) var bootstrapIndex: UInt64 = 0
    public private(set) var policies: [String: ACLPolicy] = [ACLPolicy.globalManagementID: .globalManagement]
    public private(set) var tokens: [String: ACLToken] = [:]
    /// The highest ModifyIndex of the ACL state (X-Consul-Index of ACL reads).
    public private(set) var index: UInt64 = 0
    private var accessorBySecretHash: [String: String] = [:]
    private var rulesByPolicy: [String: ACLRules] = [:]

    public init() {}

    public func policy(named name: String) -> ACLPolicy? { policies.values.first { $0.name == name } }

    /// The anonymous token as it is now (its stored form once updated, else Consul's default).
    public var anonymous: ACLToken {
        tokens[ACLToken.anonymousID]
            ?? ACLToken(accessorID: ACLToken.anonymousID, secretHash: ACLSecret.hash(ACLToken.anonymousSecret),
                        description: "Anonymous Token", createTime: 0)
    }

    /// The token whose SecretID is `secret`, if it exists and has not expired at `now`.
    public func token(secret: String, now: Double) -> ACLToken? {
        let hash = ACLSecret.hash(secret)
        let token = accessorBySecretHash[hash].flatMap { tokens[$0] } ?? (secret == ACLToken.anonymousSecret ? anonymous : nil)
        // The lookup is keyed by the hash, so its timing says nothing about the secret; the
        // final check compares in constant time.
        guard let token, ACLSecret.constantTimeEquals(token.secretHash, hash), !token.isExpired(at: now) else { return nil }
        return token
    }

    /// What `token` may do.
    public func authorizer(for token: ACLToken, defaultAllows: Bool) -> Authorizer {
        if token.policies.contains(ACLPolicy.globalManagementID) { return .management(accessorID: token.accessorID) }
        return Authorizer(accessorID: token.accessorID, defaultAllows: defaultAllows,
                          rules: token.policies.compactMap { rulesByPolicy[$0] })
    }

    /// Applies `command` at log index `index`, or says why it is refused. Deterministic: every
    /// server decides the same from the same state.
    mutating func apply(_ command: ACLCommand, at index: UInt64) -> String? {
        switch command {
        case .bootstrap(var token):
            guard bootstrapIndex == 0 else { return "ACL bootstrap no longer allowed (reset index: \(bootstrapIndex))" }
            token.policies = [ACLPolicy.globalManagementID]
            if let refusal = put(token, create: true, at: index) { return refusal }
            bootstrapIndex = index
        case .setPolicy(var policy, let create):
            let existing = policies[policy.id]
            if create && existing != nil { return "a policy with ID \(policy.id) exists" }
            if !create && existing == nil { return "no policy with ID \(policy.id)" }
            if policy.id == ACLPolicy.globalManagementID { return "the builtin global-management policy cannot be changed" }
            if let other = self.policy(named: policy.name), other.id != policy.id {
                return "a policy named \(policy.name) exists (ID \(other.id))"
            }
            let rules: ACLRules
            do { rules = try ACLRules(parsing: policy.rules) } catch { return "\(error)" }
            policy.createIndex = existing?.createIndex ?? index
            policy.modifyIndex = index
            policies[policy.id] = policy
            rulesByPolicy[policy.id] = rules
        case .deletePolicy(let id):
            guard id != ACLPolicy.globalManagementID else { return "the builtin global-management policy cannot be deleted" }
            guard policies.removeValue(forKey: id) != nil else { return "no policy with ID \(id)" }
            rulesByPolicy[id] = nil
        case .setToken(let token, let create):
            if let refusal = put(token, create: create, at: index) { return refusal }
        case .deleteToken(let accessorID):
            guard accessorID != ACLToken.anonymousID else { return "the anonymous token cannot be deleted" }
            guard let token = tokens.removeValue(forKey: accessorID) else { return "no token with AccessorID \(accessorID)" }
            accessorBySecretHash[token.secretHash] = nil
        }
        self.index = index
        return nil
    }

    private mutating func put(_ token: ACLToken, create: Bool, at index: UInt64) -> String? {
        var token = token
        let existing = token.accessorID == ACLToken.anonymousID ? anonymous : tokens[token.accessorID]
        if create && existing != nil { return "a token with AccessorID \(token.accessorID) exists" }
        if !create && existing == nil { return "no token with AccessorID \(token.accessorID)" }
        if let holder = accessorBySecretHash[token.secretHash], holder != token.accessorID {
            return "a token with this SecretID exists"
        }
        for id in token.policies where policies[id] == nil { return "no policy with ID \(id)" }
        if let existing { accessorBySecretHash[existing.secretHash] = nil }
        token.createIndex = existing?.createIndex ?? index
        token.modifyIndex = index
        tokens[token.accessorID] = token
        accessorBySecretHash[token.secretHash] = token.accessorID
        return nil
    }

    /// The state as loaded from storage (rules that no longer parse grant nothing, and say so).
    init(bootstrapIndex: UInt64, policies: [ACLPolicy], tokens: [ACLToken]) {
        self.bootstrapIndex = bootstrapIndex
        for policy in policies {
            self.policies[policy.id] = policy
            rulesByPolicy[policy.id] = (try? ACLRules(parsing: policy.rules)) ?? ACLRules()
            index = max(index, policy.modifyIndex)
        }
        rulesByPolicy[ACLPolicy.globalManagementID] = nil
        for token in tokens {
            self.tokens[token.accessorID] = token
            accessorBySecretHash[token.secretHash] = token.accessorID
            index = max(index, token.modifyIndex)
        }
        index = max(index, bootstrapIndex)
    }
}

/// What an applied ACL entry did, for the request that proposed it.
public enum ACLOutcome: Sendable, Equatable {
    case applied
    case refused(String)
}

/// The replicated ACL state machine, applied from the Raft log into `acl.db`, with the state
/// kept in memory (`state`) for request authorisation. As the KV store: one transaction per
/// entry with the applied index, so a restart resumes exactly.
public final class ACLStore: @unchecked Sendable {
    // @unchecked: written only on the Raft driver's loop (apply, restore); reads take `lock`.

    /// Outcomes of recent entries by log index; older ones are forgotten.
    public static let outcomesMax = 1024

    private let database: Database
    private let lock = NSLock()
    private var current = ACLState()
    private var applied: UInt64 = 0
    private var outcomes: [UInt64: ACLOutcome] = [:]
    private var outcomeOrder: [UInt64] = []

    public var state: ACLState { lock.withLock { current } }
    public var appliedIndex: UInt64 { lock.withLock { applied } }

    public init(path: String) throws(StoreError) {
        database = try Database(path: path, durability: .rebuildable)
        try Self.createTables(database)
        try reload()
    }

    private static func createTables(_ database: Database) throws(StoreError) {
        try database.execute("""
            CREATE TABLE IF NOT EXISTS acl_policies (id TEXT PRIMARY KEY, body BLOB NOT NULL);
            CREATE TABLE IF NOT EXISTS acl_tokens (accessor TEXT PRIMARY KEY, body BLOB NOT NULL);
            CREATE TABLE IF NOT EXISTS acl_meta (id INTEGER PRIMARY KEY CHECK (id = 1), bootstrap_index INTEGER NOT NULL);
            CREATE TABLE IF NOT EXISTS applied (id INTEGER PRIMARY KEY CHECK (id = 1), idx INTEGER NOT NULL);
            """)
    }

    /// Reads the whole state from `database` (at start and after a restore).
    private func reload() throws(StoreError) {
        let (state, index) = try Self.load(database)
        lock.withLock {
            current = state
            applied = index
        }
    }

    private static func load(_ database: Database) throws(StoreError) -> (ACLState, UInt64) {
        let decoder = JSONDecoder()
        func rows<T: Decodable>(_ sql: String, _ type: T.Type) throws(StoreError) -> [T] {
            let statement = try database.prepare(sql)
            var out: [T] = []
            for row in try statement.query() {
                guard case .blob(let body) = row[0] else { continue }
                do {
                    out.append(try decoder.decode(T.self, from: Data(body)))
                } catch {
                    throw StoreError(code: StoreError.corrupt, extendedCode: StoreError.corrupt,
                                     message: "an ACL row cannot be read: \(error)", path: database.path, sql: sql)
                }
            }
            return out
        }
        let policies = try rows("SELECT body FROM acl_policies", ACLPolicy.self)
        let tokens = try rows("SELECT body FROM acl_tokens", ACLToken.self)
        var bootstrap: UInt64 = 0
        if case .integer(let index)? = try database.scalar("SELECT bootstrap_index FROM acl_meta WHERE id = 1") {
            bootstrap = UInt64(index)
        }
        var applied: UInt64 = 0
        if case .integer(let index)? = try database.scalar("SELECT idx FROM applied WHERE id = 1") { applied = UInt64(index) }
        return (ACLState(bootstrapIndex: bootstrap, policies: policies, tokens: tokens), applied)
    }

    /// Applies a committed ACL entry (on the driver's loop). Entries already applied are skipped;
    /// an entry that cannot be decoded is refused (every server refuses it alike).
    public func apply(index: UInt64, data: [UInt8]) throws(StoreError) {
        guard index > appliedIndex else { return }
        var next = state
        let outcome: ACLOutcome
        let before = next
        switch Result(catching: { try ACLCommand(decoding: data) }) {
        case .success(let command):
            outcome = next.apply(command, at: index).map(ACLOutcome.refused) ?? .applied
        case .failure(let error):
            outcome = .refused("\(error)")
        }
        do {
            try database.transaction { () throws(StoreError) in
                if outcome == .applied { try write(from: before, to: next) }
                try database.prepare("INSERT OR REPLACE INTO applied (id, idx) VALUES (1, ?)").run(.integer(Int64(index)))
            }
        } catch let error as StoreError {
            throw error
        } catch {
            preconditionFailure("unexpected error \(error)")
        }
        lock.withLock {
            if outcome == .applied { current = next }
            applied = index
            outcomes[index] = outcome
            outcomeOrder.append(index)
            if outcomeOrder.count > Self.outcomesMax { outcomes[outcomeOrder.removeFirst()] = nil }
        }
    }

    /// Writes the rows that differ between two states (an entry changes one or two).
    private func write(from old: ACLState, to new: ACLState) throws(StoreError) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        func body<T: Encodable>(_ value: T) -> SQLValue { .blob(Array((try? encoder.encode(value)) ?? Data())) }
        for (id, policy) in new.policies where old.policies[id] != policy && id != ACLPolicy.globalManagementID {
            try database.prepare("INSERT OR REPLACE INTO acl_policies (id, body) VALUES (?, ?)").run(.text(id), body(policy))
        }
        for id in old.policies.keys where new.policies[id] == nil {
            try database.prepare("DELETE FROM acl_policies WHERE id = ?").run(.text(id))
        }
        for (id, token) in new.tokens where old.tokens[id] != token {
            try database.prepare("INSERT OR REPLACE INTO acl_tokens (accessor, body) VALUES (?, ?)").run(.text(id), body(token))
        }
        for id in old.tokens.keys where new.tokens[id] == nil {
            try database.prepare("DELETE FROM acl_tokens WHERE accessor = ?").run(.text(id))
        }
        if new.bootstrapIndex != old.bootstrapIndex {
            try database.prepare("INSERT OR REPLACE INTO acl_meta (id, bootstrap_index) VALUES (1, ?)")
                .run(.integer(Int64(new.bootstrapIndex)))
        }
    }

    /// What the entry at `index` did; nil if unknown or forgotten.
    public func outcome(at index: UInt64) -> ACLOutcome? { lock.withLock { outcomes[index] } }

    // MARK: - Snapshots

    /// The whole state as an SQLite image (the snapshot section "acl").
    public func snapshotImage() throws -> [UInt8] { try lock.withLock { () throws(StoreError) in try database.serialize() } }

    /// `snapshotImage` as of now, to serialise later on another thread (`Store.PinnedImage`).
    public func pinSnapshotImage() throws -> PinnedImage { try lock.withLock { () throws(StoreError) in try database.pinImage() } }

    public func validate(image: [UInt8]) throws {
        let database = try Database(deserializing: image, name: "snapshot section 'acl'")
        _ = try Self.load(database)
    }

    /// Replaces the whole state with `image`, atomically, recording `appliedIndex`.
    public func restore(image: [UInt8], appliedIndex: UInt64) throws {
        let source = try Database(deserializing: image, name: "snapshot section 'acl'")
        try Self.createTables(source)
        _ = try Self.load(source)
        try source.execute("INSERT OR REPLACE INTO applied (id, idx) VALUES (1, \(Int64(bitPattern: appliedIndex)))")
        try database.replaceContents(with: source)
        try reload()
        lock.withLock {
            outcomes = [:]
            outcomeOrder = []
        }
    }
}
