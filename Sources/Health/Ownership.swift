import Registry

/// Which server runs a check: rendezvous (highest random weight) hashing of the check over the
/// check runners (`CatalogState.checkRunners`, replicated). Every server computes the same owner
/// from the same log position; when a runner leaves, only its checks move (each to the runner
/// with the next highest weight), and when one joins, it takes about 1/n of the checks and
/// nothing else moves.
///
/// The hash is FNV-1a over the key then a SplitMix64 finaliser with the server ID: stable across
/// processes and releases (Swift's `Hasher` is seeded per process, so it cannot be used).
public enum Rendezvous {
    public static func weight(_ key: String, server: UInt64) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in key.utf8 { hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01b3 }
        var z = hash ^ (server &* 0x9E37_79B9_7F4A_7C15)
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// The owner of `key` among `servers`; nil if there are none. Ties go to the lower ID.
    public static func owner(of key: String, among servers: [UInt64]) -> UInt64? {
        var best: (server: UInt64, weight: UInt64)?
        for server in servers {
            let w = weight(key, server: server)
            if let current = best, w < current.weight || (w == current.weight && server > current.server) { continue }
            best = (server, w)
        }
        return best?.server
    }

    /// The key a check is hashed by: node and check ID (unique together).
    public static func key(node: String, checkID: String) -> String { "\(node)/\(checkID)" }
}

/// The leader's side of ownership: which servers are in contact and so run checks. The leader
/// polls this with what its driver knows (who answered lately); when the set differs from the
/// replicated one, it proposes a `checkRunners` entry. A value with one mutating func per event.
///
/// Followers do not see each other, so the set is decided by the leader and replicated (not
/// derived on each server): all servers agree on every check's owner at each log position, and
/// a check moves when the entry applies — at most the apply lag apart on two servers.
public struct CheckRunnerTracker: Sendable {
    /// A server not heard from for longer than this leaves the set: above the 0.5–1 s election
    /// timeout, so a follower that misses a few 50 ms heartbeats under load does not move its
    /// checks, and well under "a few seconds" for a dead one.
    public static let contactMillisecondsMax: Int64 = 1500
    /// A new leader waits this long before proposing: its view of who answers fills in with the
    /// first heartbeat rounds (followers never talk to each other, so it knew nothing before).
    public static let leaderGraceMilliseconds: Int64 = 1000
    /// At most one proposal per this interval: a server whose contact flaps costs at most one
    /// entry a second.
    public static let proposalIntervalMillisecondsMin: Int64 = 1000

    private enum State: Sendable {
        case follower
        case leading(since: Int64, lastProposal: Int64?)
    }

    private var state: State = .follower

    public init() {}

    /// One poll. `nowMilliseconds` is monotonic; `contactAges` the milliseconds since each
    /// member was last heard from. Returns the runners to propose, or nil.
    public mutating func poll(isLeader: Bool, selfID: UInt64, members: [UInt64], contactAges: [UInt64: Int64],
                              replicated: [UInt64], nowMilliseconds: Int64) -> [UInt64]? {
        guard isLeader else {
            state = .follower
            return nil
        }
        let since: Int64, lastProposal: Int64?
        switch state {
        case .follower:
            state = .leading(since: nowMilliseconds, lastProposal: nil)
            return nil
        case .leading(let s, let l):
            since = s
            lastProposal = l
        }
        guard nowMilliseconds - since >= Self.leaderGraceMilliseconds else { return nil }
        if let lastProposal, nowMilliseconds - lastProposal < Self.proposalIntervalMillisecondsMin { return nil }
        let live = members.filter { $0 == selfID || (contactAges[$0].map { $0 <= Self.contactMillisecondsMax } ?? false) }.sorted()
        guard live != replicated.sorted() else { return nil }
        state = .leading(since: since, lastProposal: nowMilliseconds)
        return live
    }
}
