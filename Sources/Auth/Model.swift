import Crypto
import Foundation

/// An ACL policy: a name and its rules (kept as written, parsed when tokens are resolved).
public struct ACLPolicy: Sendable, Codable, Equatable {
    public var id: String
    public var name: String
    public var description: String
    public var rules: String
    public var createIndex: UInt64 = 0
    public var modifyIndex: UInt64 = 0

    public init(id: String, name: String, description: String = "", rules: String = "") {
        self.id = id
        self.name = name
        self.description = description
        self.rules = rules
    }

    /// Consul's built-in management policy: every permission.
    public static let globalManagementID = "00000000-0000-0000-0000-000000000001"
    public static let globalManagement = ACLPolicy(
        id: globalManagementID, name: "global-management", description: "Builtin Policy that grants unlimited access",
        rules: "acl = \"write\"\noperator = \"write\"\nkey_prefix \"\" { policy = \"write\" }\n"
            + "node_prefix \"\" { policy = \"write\" }\nservice_prefix \"\" { policy = \"write\" }\n")

    /// Policy names: Consul's (letters, digits, '-' and '_', 1 to 128 bytes).
    public static let nameBytesMax = 128
    public static let descriptionBytesMax = 1024

    public static func isValidName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count <= nameBytesMax
            && name.utf8.allSatisfy { b in
                (b >= UInt8(ascii: "a") && b <= UInt8(ascii: "z")) || (b >= UInt8(ascii: "A") && b <= UInt8(ascii: "Z"))
                    || (b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9")) || b == UInt8(ascii: "-") || b == UInt8(ascii: "_")
            }
    }
}

/// An ACL token. Only the SHA-256 of its SecretID is kept: the secret is shown once, when the
/// token is created.
public struct ACLToken: Sendable, Codable, Equatable {
    public var accessorID: String
    /// Lowercase hex SHA-256 of the SecretID.
    public var secretHash: String
    public var description: String
    /// Policy IDs; a deleted policy's ID stays here and grants nothing (as in Consul).
    public var policies: [String]
    public var local: Bool
    /// Seconds since 1970; past it the token is unknown.
    public var expirationTime: Double?
    public var createTime: Double
    public var createIndex: UInt64 = 0
    public var modifyIndex: UInt64 = 0

    public init(accessorID: String, secretHash: String, description: String = "", policies: [String] = [], local: Bool = false,
                expirationTime: Double? = nil, createTime: Double) {
        self.accessorID = accessorID
        self.secretHash = secretHash
        self.description = description
        self.policies = policies
        self.local = local
        self.expirationTime = expirationTime
        self.createTime = createTime
    }

    public func isExpired(at now: Double) -> Bool { expirationTime.map { now >= $0 } ?? false }

    /// Consul's anonymous token: used by requests without a token; its policies can be set.
    public static let anonymousID = "00000000-0000-0000-0000-000000000002"
    public static let anonymousSecret = "anonymous"
}

/// Token secrets: generated, hashed, compared.
public enum ACLSecret {
    /// A new random ID in UUID form (AccessorID, SecretID, policy ID): 122 random bits.
    public static func newID() -> String { UUID().uuidString.lowercased() }

    public static func hash(_ secret: String) -> String {
        SHA256.hash(data: Array(secret.utf8)).map { byte in
            let digits = Array("0123456789abcdef")
            return String([digits[Int(byte >> 4)], digits[Int(byte & 0xF)]])
        }.joined()
    }

    /// Equal strings, in time that depends only on their lengths.
    public static func constantTimeEquals(_ a: String, _ b: String) -> Bool {
        let x = Array(a.utf8), y = Array(b.utf8)
        guard x.count == y.count else { return false }
        var difference: UInt8 = 0
        for i in x.indices { difference |= x[i] ^ y[i] }
        return difference == 0
    }

    /// SecretIDs a client chooses are at most this long (Consul takes a UUID).
    public static let bytesMax = 128
}

/// A change to the ACL state: a Raft log entry (tag `entryTag`, then JSON: these entries are
/// rare and small).
public enum ACLCommand: Sendable, Codable, Equatable {
    /// The first management token; refused once the cluster has been bootstrapped.
    case bootstrap(ACLToken)
    /// Creates (`create`) or replaces a policy. Names are unique.
    case setPolicy(ACLPolicy, create: Bool)
    case deletePolicy(id: String)
    /// Creates (`create`: the AccessorID and secret must be new) or replaces a token.
    case setToken(ACLToken, create: Bool)
    case deleteToken(accessorID: String)

    /// ACL entries start with this byte. The first byte of a log entry says whose it is: KV
    /// commands 0x01-0x1F, ACL 0x20, the Raft driver's own 0x30-0x3F (`ClusterCommandTag`),
    /// the registry 0x40 and up (checked by `LogEntryTagTests`).
    public static let entryTag: UInt8 = 0x20

    public var encoded: [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        let json = (try? encoder.encode(self)) ?? Data()
        precondition(!json.isEmpty, "an ACL command failed to encode")
        return [Self.entryTag] + Array(json)
    }

    public init(decoding bytes: [UInt8]) throws {
        guard bytes.first == Self.entryTag else { throw ACLError.malformedEntry("not an ACL entry") }
        do {
            self = try JSONDecoder().decode(ACLCommand.self, from: Data(bytes.dropFirst()))
        } catch {
            throw ACLError.malformedEntry("\(error)")
        }
    }
}

public enum ACLError: Error, Sendable, CustomStringConvertible {
    case malformedEntry(String)
    case storage(String)

    public var description: String {
        switch self {
        case .malformedEntry(let why): "malformed ACL log entry: \(why)"
        case .storage(let why): "ACL storage: \(why)"
        }
    }
}
