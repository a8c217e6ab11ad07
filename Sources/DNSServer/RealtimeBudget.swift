import Atomics
import CShims
import Foundation
import Logging

/// Whether the UDP workers answer at real-time priority (`dns.realtime_priority`,
/// `dns.realtime_budget_percent`).
///
/// A DNS worker sleeps in recvmmsg almost all the time and needs a few microseconds per query.
/// At normal priority a query that arrives while the write path, Raft or (on a shared host)
/// other processes keep every CPU busy waits for their time slices: on 2 CPUs during a
/// registration storm that wait was the whole DNS tail (p50 0.3 ms, p99 over 100 ms). In
/// SCHED_FIFO the worker runs the moment its datagram arrives. A flood must not turn that into
/// starvation of Raft's heartbeats and the API, so each worker has a CPU budget per window:
/// beyond it the worker drops to normal scheduling until the window ends (a worker under flood
/// is then exactly as before, competing as an equal).
public struct RealtimeSettings: Sendable, Equatable {
    /// SCHED_FIFO priority of the UDP workers; 0: normal scheduling.
    public var priority: Int
    /// Share of one CPU a worker may use at real-time priority per window, in percent.
    public var budgetPercent: Int

    public static let priorityMax = 99
    /// The budget's window. Short, so that a worker over its budget holds a CPU for at most
    /// `budgetPercent` of this (5 ms at 25 %) before normal threads get it back.
    public static let windowMilliseconds: UInt64 = 20

    public init(priority: Int = 1, budgetPercent: Int = 25) {
        self.priority = priority
        self.budgetPercent = budgetPercent
    }

    public static let disabled = RealtimeSettings(priority: 0)

    /// Whether this process may run a thread in SCHED_FIFO at `priority` (CAP_SYS_NICE or
    /// RLIMIT_RTPRIO), tried on a thread of its own that ends at once.
    public static func permitted(priority: Int) -> Bool {
        let result = ManagedAtomic<Int32>(-1)
        let done = DispatchSemaphore(value: 0)
        let thread = Thread {
            result.store(disco_thread_set_realtime(Int32(priority)), ordering: .relaxed)
            done.signal()
        }
        thread.start()
        done.wait()
        return result.load(ordering: .relaxed) == 0
    }
}

/// One worker's real-time budget: promotes the calling thread, and after each batch checks the
/// CPU it used in the current window (at most once per coarse clock tick, so an idle or lightly
/// loaded worker pays one system call per few milliseconds, not per query).
struct RealtimeBudget {
    private let priority: Int32
    private let budgetNanoseconds: UInt64
    private var isRealtime = false
    private var windowStartMilliseconds: UInt64 = 0
    private var windowStartCPU: UInt64 = 0
    private var lastCheckMilliseconds: UInt64 = 0

    /// Set once a worker could not be promoted: the others do not try (or log) again.
    private static let refused = ManagedAtomic<Bool>(false)

    /// Promotes the calling thread; nil if real-time answering is off or not permitted (logged
    /// once per process, with what to configure).
    init?(_ settings: RealtimeSettings, logger: Logger) {
        guard settings.priority > 0, !Self.refused.load(ordering: .relaxed) else { return nil }
        priority = Int32(settings.priority)
        budgetNanoseconds = UInt64(settings.budgetPercent) * RealtimeSettings.windowMilliseconds * 10_000
        let result = disco_thread_set_realtime(priority)
        guard result == 0 else {
            if Self.refused.exchange(true, ordering: .relaxed) == false {
                logger.warning("""
                    DNS workers run at normal priority: SCHED_FIFO \(settings.priority) was refused; \
                    give discod CAP_SYS_NICE or LimitRTPRIO=\(settings.priority) (systemd), or set dns.realtime_priority = 0
                    """, metadata: ["errno": "\(-result)"])
            }
            return nil
        }
        isRealtime = true
        windowStartMilliseconds = disco_monotonic_milliseconds()
        windowStartCPU = disco_thread_cpu_nanoseconds()
    }

    /// After a batch: drop to normal priority once the window's budget is spent, come back at
    /// the next window. True when this call dropped it.
    mutating func account() -> Bool {
        let now = disco_monotonic_milliseconds()
        guard now != lastCheckMilliseconds else { return false }
        lastCheckMilliseconds = now
        let cpu = disco_thread_cpu_nanoseconds()
        if now &- windowStartMilliseconds >= RealtimeSettings.windowMilliseconds {
            windowStartMilliseconds = now
            windowStartCPU = cpu
            if !isRealtime, disco_thread_set_realtime(priority) == 0 { isRealtime = true }
        } else if isRealtime, cpu &- windowStartCPU > budgetNanoseconds {
            if disco_thread_set_realtime(0) == 0 { isRealtime = false }
            return true
        }
        return false
    }
}
