/// What the driver counts for /metrics (issue 17): updated on the driver's loop, read by scrapes.
public struct RaftCounters: Sendable {
    /// Upper bounds (seconds) of the persist (append + fsync) latency buckets; +Inf above.
    public static let persistBucketsSeconds: [Double] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1]

    public var leaderChanges: UInt64 = 0
    /// Readies that had to be made durable, by how long each save took (bucket counts, then
    /// +Inf; their sum is the count), and the total time.
    public var persistBuckets = [UInt64](repeating: 0, count: RaftCounters.persistBucketsSeconds.count + 1)
    public var persistSumSeconds: Double = 0
    public var proposalsRefused: UInt64 = 0
    public var snapshotsTaken: UInt64 = 0
    public var snapshotsInstalled: UInt64 = 0
    public var lastSnapshotBytes: Int = 0

    mutating func recordPersist(seconds: Double) {
        persistBuckets[Self.persistBucketsSeconds.firstIndex { seconds <= $0 } ?? Self.persistBucketsSeconds.count] += 1
        persistSumSeconds += seconds
    }
}
