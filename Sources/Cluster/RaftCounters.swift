/// What the driver counts for /metrics (issue 17): updated on the driver's loop, read by scrapes.
public struct RaftCounters: Sendable {
    /// Durations by bucket (`boundsSeconds`, then +Inf; the counts sum to the count) and their
    /// total.
    public struct Latency: Sendable {
        /// Upper bounds (seconds) of the buckets; +Inf above.
        public static let boundsSeconds: [Double] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1]
        public var counts = [UInt64](repeating: 0, count: Latency.boundsSeconds.count + 1)
        public var sumSeconds: Double = 0

        mutating func record(seconds: Double) {
            counts[Self.boundsSeconds.firstIndex { seconds <= $0 } ?? Self.boundsSeconds.count] += 1
            sumSeconds += seconds
        }
    }

    public var leaderChanges: UInt64 = 0
    /// Readies that had to be made durable, by how long each save took (log append and fsync).
    public var persist = Latency()
    /// The stages of a proposal made here (issue 16: where a write's time goes): waiting for the
    /// Raft loop to take it (queue); from then until the Ready that delivers it committed starts
    /// (persist here, replication, a quorum's acknowledgements: commit); and from that Ready's
    /// start until it is applied here and its proposer answered (apply).
    public var proposalQueue = Latency()
    public var proposalCommit = Latency()
    public var proposalApply = Latency()
    public var proposalsRefused: UInt64 = 0
    public var snapshotsTaken: UInt64 = 0
    public var snapshotsInstalled: UInt64 = 0
    public var lastSnapshotBytes: Int = 0
}
