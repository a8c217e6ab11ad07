import Atomics
import CShims
import Logging

/// DNS overload mode (`dns.overload_queue_milliseconds`): when queries arrive faster than the
/// UDP workers answer them, the kernel queues them, up to the socket's receive buffer (4 MiB,
/// thousands of queries): every answer then comes late, often after the client has given up and
/// asked again, which adds to the load. In overload mode a worker's socket gets a small receive
/// buffer instead, so the kernel drops new queries at the door while the queued ones are
/// answered in time: the newest work is shed first, and what is answered is still wanted.
///
/// A worker enters the mode when a query it reads has waited longer than the threshold in the
/// queue (kernel receive timestamps, SO_TIMESTAMPNS), and leaves it once, for
/// `releaseAfterMilliseconds`, queries waited less than a quarter of that and the kernel dropped
/// nothing at its socket. The mode is the server's: one log line when the first worker enters
/// it and one when the last leaves, never per query.
public struct OverloadSettings: Sendable, Equatable {
    /// A query that waited longer than this before a worker read it starts overload mode; 0: off.
    public var queueMilliseconds: Int

    public static let queueMillisecondsMax = 10_000

    public init(queueMilliseconds: Int = 20) {
        self.queueMilliseconds = queueMilliseconds
    }

    public static let disabled = OverloadSettings(queueMilliseconds: 0)
}

/// The server's overload state, shared by its UDP workers.
final class OverloadState: Sendable {
    /// A shedding socket's receive buffer (the kernel doubles it): room for about a hundred
    /// small queries, a few milliseconds of work.
    static let sheddingReceiveBufferBytes: Int32 = 256 << 10
    /// How long a shedding worker must see short waits and no drops before it takes its full
    /// receive buffer back.
    static let releaseAfterMilliseconds: UInt64 = 1_000

    let settings: OverloadSettings
    let normalReceiveBufferBytes: Int32
    private let logger: Logger
    /// Workers shedding now, and the episodes (the server entering overload mode) so far.
    let sheddingWorkers = ManagedAtomic<Int>(0)
    let episodes = ManagedAtomic<UInt64>(0)

    init(settings: OverloadSettings, normalReceiveBufferBytes: Int32, logger: Logger) {
        self.settings = settings
        self.normalReceiveBufferBytes = normalReceiveBufferBytes
        self.logger = logger
    }

    func entered(waitedMilliseconds: Int64) {
        guard sheddingWorkers.loadThenWrappingIncrement(ordering: .relaxed) == 0 else { return }
        episodes.wrappingIncrement(ordering: .relaxed)
        logger.warning("""
            DNS overload: a query waited \(waitedMilliseconds) ms in the receive queue (over \(settings.queueMilliseconds) ms); \
            new queries are dropped at the door until the queue is short again
            """)
    }

    func left() {
        guard sheddingWorkers.wrappingDecrementThenLoad(ordering: .relaxed) == 0 else { return }
        logger.notice("DNS overload over: queries wait less than \(settings.queueMilliseconds / 4) ms and none is dropped at the door")
    }
}

/// One UDP worker's part of overload mode: fed the wait of the oldest query of each batch.
struct OverloadDetector {
    private let fd: Int32
    private let state: OverloadState
    private let thresholdNanoseconds: Int64
    private var isShedding = false
    /// Since when (coarse monotonic milliseconds) waits have been short; 0: not calm.
    private var calmSinceMilliseconds: UInt64 = 0
    private var dropsWhenCalm: Int64 = 0

    init?(fd: Int32, state: OverloadState?) {
        guard let state, state.settings.queueMilliseconds > 0 else { return nil }
        self.fd = fd
        self.state = state
        thresholdNanoseconds = Int64(state.settings.queueMilliseconds) * 1_000_000
    }

    /// After a batch whose oldest query waited `waited` nanoseconds (-1: unknown), or after a
    /// receive timeout with nothing queued (0).
    mutating func observe(waitedNanoseconds waited: Int64) {
        if !isShedding {
            guard waited > thresholdNanoseconds else { return }
            _ = disco_udp_set_receive_buffer(fd, OverloadState.sheddingReceiveBufferBytes)
            isShedding = true
            calmSinceMilliseconds = 0
            state.entered(waitedMilliseconds: waited / 1_000_000)
            return
        }
        guard waited < thresholdNanoseconds / 4 else {
            calmSinceMilliseconds = 0
            return
        }
        let now = disco_monotonic_milliseconds()
        guard calmSinceMilliseconds != 0 else {
            calmSinceMilliseconds = now
            dropsWhenCalm = disco_udp_socket_drops(fd)
            return
        }
        guard now &- calmSinceMilliseconds >= OverloadState.releaseAfterMilliseconds else { return }
        let drops = disco_udp_socket_drops(fd)
        guard drops == dropsWhenCalm else {
            // Still dropping at the door: the load has not gone, only the queue is short.
            calmSinceMilliseconds = now
            dropsWhenCalm = drops
            return
        }
        _ = disco_udp_set_receive_buffer(fd, state.normalReceiveBufferBytes)
        isShedding = false
        state.left()
    }

    /// The worker stops: a shedding worker no longer counts.
    mutating func finish() {
        guard isShedding else { return }
        isShedding = false
        state.left()
    }
}
