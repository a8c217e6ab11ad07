import CSQLite
import Foundation

/// Checkpoints a WAL database from a thread and a connection of its own, so the connection
/// that writes (the Raft thread applying entries) never runs a checkpoint inside a commit.
///
/// SQLite's automatic checkpoint runs in whichever commit pushes the WAL past 1,000 pages, and
/// with `synchronous=NORMAL` a checkpoint is where the fsyncs happen: under a registration storm
/// one apply of one entry took 1.35 s on the Raft thread, and the cluster had an election. Here
/// a PASSIVE checkpoint (which never waits for, nor blocks, the writer) runs every
/// `intervalMilliseconds`; the writer keeps an automatic checkpoint only as a backstop, at
/// `writerCheckpointPages`, for a checkpointer that fell that far behind.
public final class BackgroundCheckpointer: @unchecked Sendable {
    // @unchecked: `stopped` is guarded by `condition`; `connection` is used by the thread only.

    /// How often the WAL is copied back into the database file. Often, so that each checkpoint
    /// is small: its two fsyncs share the disk with the Raft log's, and a large one holds up
    /// every log fsync queued behind it. At one client, 50 ms against 200 ms took the p99 of
    /// a replicated write from 2.25–3.05 ms to 1.45–1.63 ms (every 1 s made it 5–11 ms), with
    /// the same throughput at 1 and 64 clients (issue 16).
    public static let intervalMilliseconds = 50
    /// The writer's own automatic checkpoint threshold, in pages (64 MiB at 4 KiB pages).
    public static let writerCheckpointPages = 16_384

    private let connection: Database
    private let condition = NSCondition()
    private var stopped = false
    private var finished = false
    private let counters = NSLock()
    private var checkpointsValue = 0
    private var lastValue: (result: Int32, walFrames: Int32, copiedFrames: Int32) = (0, 0, 0)

    /// Starts checkpointing the database at `path` (already in WAL mode), and moves `writer`'s
    /// automatic checkpoint to `writerCheckpointPages`.
    public init(path: String, writer: Database) throws(StoreError) {
        connection = try Database(path: path, durability: .rebuildable)
        try connection.execute("PRAGMA wal_autocheckpoint = 0")
        try writer.execute("PRAGMA wal_autocheckpoint = \(Self.writerCheckpointPages)")
        let thread = Thread { [self] in run() }
        thread.name = "disco-checkpoint"
        thread.start()
    }

    /// Checkpoints run so far (for tests).
    public var checkpoints: Int { counters.withLock { checkpointsValue } }
    /// The last checkpoint's SQLite result, the frames in the WAL and those copied back.
    public var last: (result: Int32, walFrames: Int32, copiedFrames: Int32) { counters.withLock { lastValue } }

    private func run() {
        condition.lock()
        while !stopped {
            _ = condition.wait(until: Date().addingTimeInterval(Double(Self.intervalMilliseconds) / 1000))
            guard !stopped else { break }
            condition.unlock()
            // Busy (a restore holds the database) or failed: the next round tries again; the
            // writer's backstop checkpoint bounds the WAL meanwhile.
            var walFrames: Int32 = 0, copiedFrames: Int32 = 0
            let result = sqlite3_wal_checkpoint_v2(connection.handle, nil, SQLITE_CHECKPOINT_PASSIVE, &walFrames, &copiedFrames)
            counters.withLock {
                checkpointsValue += 1
                lastValue = (result, walFrames, copiedFrames)
            }
            condition.lock()
        }
        finished = true
        condition.broadcast()
        condition.unlock()
    }

    /// Stops the thread and waits for it (a last checkpoint is the writer's business).
    public func stop() {
        condition.lock()
        stopped = true
        condition.broadcast()
        while !finished { condition.wait() }
        condition.unlock()
    }
}
