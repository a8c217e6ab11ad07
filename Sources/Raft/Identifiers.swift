/// A Raft server's identity. Stable for the server's lifetime and never reused for another server
/// (a reused identity could hold a vote cast by its predecessor, Raft paper §5.2).
/// The raw value 0 is reserved: etcd-io/raft uses it for "none", here `Optional<NodeID>` says that.
public struct NodeID: RawRepresentable, Hashable, Comparable, Sendable, ExpressibleByIntegerLiteral,
    CustomStringConvertible
{
    public let rawValue: UInt64

    public init(rawValue: UInt64) {
        precondition(rawValue != 0, "NodeID 0 is reserved")
        self.rawValue = rawValue
    }

    public init(_ rawValue: UInt64) { self.init(rawValue: rawValue) }
    public init(integerLiteral value: UInt64) { self.init(rawValue: value) }
    public static func < (a: NodeID, b: NodeID) -> Bool { a.rawValue < b.rawValue }
    public var description: String { String(rawValue) }
}

/// A Raft term (paper §5.1): a logical clock that increases with every election.
/// Invariant: a server's current term never decreases, and it is durable before any vote or
/// response in that term is sent.
public struct Term: RawRepresentable, Hashable, Comparable, Sendable, ExpressibleByIntegerLiteral,
    CustomStringConvertible
{
    public var rawValue: UInt64

    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public init(_ rawValue: UInt64) { self.rawValue = rawValue }
    public init(integerLiteral value: UInt64) { self.rawValue = value }
    public static let zero = Term(0)
    public static func < (a: Term, b: Term) -> Bool { a.rawValue < b.rawValue }
    public var next: Term { Term(rawValue + 1) }
    public var description: String { String(rawValue) }
}

/// A position in the replicated log (paper §5.3). Index 0 is the empty prefix: the first entry has
/// index 1, and the entry "at" index 0 has term 0 and always matches.
public struct LogIndex: RawRepresentable, Hashable, Comparable, Strideable, Sendable,
    ExpressibleByIntegerLiteral, CustomStringConvertible
{
    public var rawValue: UInt64

    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public init(_ rawValue: UInt64) { self.rawValue = rawValue }
    public init(integerLiteral value: UInt64) { self.rawValue = value }
    public static let zero = LogIndex(0)
    public static func < (a: LogIndex, b: LogIndex) -> Bool { a.rawValue < b.rawValue }
    /// Stated, not inherited: Strideable's default `==` goes through `distance(to:)`.
    public static func == (a: LogIndex, b: LogIndex) -> Bool { a.rawValue == b.rawValue }
    public func distance(to other: LogIndex) -> Int { Int(truncatingIfNeeded: other.rawValue &- rawValue) }
    public func advanced(by n: Int) -> LogIndex { LogIndex(UInt64(Int(rawValue) + n)) }
    public var next: LogIndex { LogIndex(rawValue + 1) }
    /// The index before this one. Precondition: not zero.
    public var previous: LogIndex {
        precondition(rawValue > 0, "no index before 0")
        return LogIndex(rawValue - 1)
    }
    public var description: String { String(rawValue) }
}
