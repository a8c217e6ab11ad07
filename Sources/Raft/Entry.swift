/// One entry of the replicated log (Raft paper §5.3).
public struct Entry: Hashable, Sendable, CustomStringConvertible {
    /// What an entry means to the core. The application sees every kind in `Ready.committedEntries`
    /// and applies only `.normal` ones to its state machine; it must still advance its applied index
    /// past the others.
    public enum Kind: UInt8, Sendable {
        /// Application data.
        case normal = 0
        /// A membership change; `data` is the encoded `Membership` that takes effect as soon as
        /// the entry is appended to a log (Ongaro's thesis §4.1), not when it commits.
        case membership = 1
        /// The empty entry a new leader appends (paper §8): committing it commits every entry
        /// before it, which is how a leader learns its commit index (§5.4.2).
        case noop = 2
    }

    /// Bytes counted for an entry's header (term, index, kind) besides its data, when a
    /// message's size is measured against `RaftConfig.appendMessageBytesMax`.
    public static let headerBytes = 17

    public var term: Term
    public var index: LogIndex
    public var kind: Kind
    public var data: [UInt8]

    public init(term: Term, index: LogIndex, kind: Kind = .normal, data: [UInt8] = []) {
        self.term = term
        self.index = index
        self.kind = kind
        self.data = data
    }

    /// The size counted against message limits.
    public var sizeBytes: Int { Entry.headerBytes + data.count }

    public var description: String {
        switch kind {
        case .normal: return "\(term)/\(index) \(Entry.printable(data))"
        case .noop: return "\(term)/\(index) noop"
        case .membership:
            let text = Membership(decoding: data).map { "\($0)" } ?? "<invalid>"
            return "\(term)/\(index) membership \(text)"
        }
    }

    /// Data as text when it is printable ASCII, else as hex (for traces and scripts).
    static func printable(_ data: [UInt8]) -> String {
        if data.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) {
            return "\"" + String(decoding: data, as: UTF8.self) + "\""
        }
        let digits = Array("0123456789abcdef")
        var text = "0x"
        for byte in data {
            text.append(digits[Int(byte >> 4)])
            text.append(digits[Int(byte & 0xF)])
        }
        return text
    }
}

/// A cluster configuration: who votes and who only replicates (learners, etcd-io/raft's term).
/// Invariant: both lists are sorted, without duplicates, and disjoint.
public struct Membership: Hashable, Sendable, CustomStringConvertible {
    public private(set) var voters: [NodeID]
    public private(set) var learners: [NodeID]

    public init(voters: [NodeID], learners: [NodeID] = []) {
        let voterSet = Set(voters)
        let learnerSet = Set(learners)
        precondition(voterSet.count == voters.count, "duplicate voter")
        precondition(learnerSet.count == learners.count, "duplicate learner")
        precondition(voterSet.isDisjoint(with: learnerSet), "a node is both voter and learner")
        self.voters = voters.sorted()
        self.learners = learners.sorted()
    }

    public static let empty = Membership(voters: [])

    /// Every member, voters first.
    public var members: [NodeID] { voters + learners }
    public func isVoter(_ id: NodeID) -> Bool { voters.contains(id) }
    public func isLearner(_ id: NodeID) -> Bool { learners.contains(id) }
    public func contains(_ id: NodeID) -> Bool { isVoter(id) || isLearner(id) }
    /// Votes needed for a majority of the voters.
    public var quorum: Int { voters.count / 2 + 1 }

    /// The membership after one single-server change (thesis §4.1), or why it is not allowed.
    public func applying(_ change: MembershipChange) -> Result<Membership, MembershipChangeError> {
        switch change {
        case .addVoter(let id):
            if isVoter(id) { return .failure(.alreadyVoter(id)) }
            return .success(Membership(voters: voters + [id], learners: learners.filter { $0 != id }))
        case .addLearner(let id):
            if isVoter(id) { return .failure(.alreadyVoter(id)) }
            if isLearner(id) { return .failure(.alreadyLearner(id)) }
            return .success(Membership(voters: voters, learners: learners + [id]))
        case .remove(let id):
            if !contains(id) { return .failure(.notMember(id)) }
            if voters == [id] { return .failure(.lastVoter(id)) }
            return .success(
                Membership(voters: voters.filter { $0 != id }, learners: learners.filter { $0 != id }))
        }
    }

    /// Encoding carried by `.membership` entries and snapshots: voter count (UInt32 LE), voters
    /// (UInt64 LE each), learner count, learners.
    public var encoded: [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(8 + 8 * (voters.count + learners.count))
        for list in [voters, learners] {
            Membership.append(UInt64(list.count), bytes: 4, to: &bytes)
            for id in list { Membership.append(id.rawValue, bytes: 8, to: &bytes) }
        }
        return bytes
    }

    /// Decodes `encoded`; nil if the bytes are not a valid membership.
    public init?(decoding bytes: [UInt8]) {
        var offset = 0
        func read(_ count: Int) -> UInt64? {
            guard offset + count <= bytes.count else { return nil }
            var value: UInt64 = 0
            for k in 0..<count { value |= UInt64(bytes[offset + k]) << (8 * UInt64(k)) }
            offset += count
            return value
        }
        var lists: [[NodeID]] = []
        for _ in 0..<2 {
            guard let count = read(4), count <= UInt64(bytes.count) else { return nil }
            var list: [NodeID] = []
            for _ in 0..<count {
                guard let raw = read(8), raw != 0 else { return nil }
                list.append(NodeID(raw))
            }
            lists.append(list)
        }
        guard offset == bytes.count, Set(lists[0]).count == lists[0].count,
            Set(lists[1]).count == lists[1].count, Set(lists[0]).isDisjoint(with: lists[1])
        else { return nil }
        self.init(voters: lists[0], learners: lists[1])
    }

    private static func append(_ value: UInt64, bytes count: Int, to bytes: inout [UInt8]) {
        for k in 0..<count { bytes.append(UInt8(truncatingIfNeeded: value >> (8 * UInt64(k)))) }
    }

    public var description: String {
        let v = voters.map(\.description).joined(separator: ",")
        if learners.isEmpty { return "voters=(\(v))" }
        return "voters=(\(v)) learners=(\(learners.map(\.description).joined(separator: ",")))"
    }
}

/// A single-server membership change (Ongaro's thesis §4.1). Only one may be uncommitted at a
/// time; that is what keeps any two majorities of consecutive configurations overlapping.
public enum MembershipChange: Hashable, Sendable, CustomStringConvertible {
    case addVoter(NodeID)
    case addLearner(NodeID)
    case remove(NodeID)

    public var description: String {
        switch self {
        case .addVoter(let id): "add-voter \(id)"
        case .addLearner(let id): "add-learner \(id)"
        case .remove(let id): "remove \(id)"
        }
    }
}

/// Why a membership change was refused.
public enum MembershipChangeError: Error, Hashable, Sendable {
    case alreadyVoter(NodeID)
    case alreadyLearner(NodeID)
    case notMember(NodeID)
    case lastVoter(NodeID)
    /// The leader cannot remove itself here; transfer leadership first (etcd-io/raft and
    /// the thesis §4.2.2 allow it, at the price of a leader that manages a cluster it is not in).
    case removingLeader(NodeID)
}

/// A snapshot of the application's state machine at `index` (paper §7), with the membership in
/// force at that index. `data` is opaque to the core.
public struct Snapshot: Hashable, Sendable, CustomStringConvertible {
    public var index: LogIndex
    public var term: Term
    public var membership: Membership
    public var data: [UInt8]

    public init(index: LogIndex, term: Term, membership: Membership, data: [UInt8]) {
        self.index = index
        self.term = term
        self.membership = membership
        self.data = data
    }

    public var description: String { "snapshot \(term)/\(index) \(membership) \(data.count) bytes" }
}
