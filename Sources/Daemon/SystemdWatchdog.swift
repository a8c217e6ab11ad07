import CShims
import Dispatch
import Foundation
import Logging

/// Tells systemd how discod is doing while it runs (issue 17.3): `STATUS=` lines (zones, the
/// server's Raft role and term, registry instances) and, when the unit sets `WatchdogSec=`,
/// `WATCHDOG=1` pings, sent only while every DNS worker and the Raft loop make progress. A bare
/// timer would keep pinging for a process whose workers are stuck; this one stops, and systemd
/// restarts the server after `WatchdogSec`.
final class SystemdWatchdog: @unchecked Sendable {
    // @unchecked: the mutable state is touched only on `queue` (the daemon's signal queue, so
    // that `status` reads the zones between reloads, never during one).
    /// STATUS is refreshed this often without a watchdog.
    static let statusIntervalMilliseconds = 10_000

    private let queue: DispatchQueue
    private let timer: DispatchSourceTimer
    private let watchdog: Bool
    private let logger: Logger
    private let progress: () -> [UInt64]
    private let status: () -> String
    private var lastProgress: [UInt64] = []
    private var lastStatus = ""
    private var stalledLogged = false

    /// Nil when discod does not run under systemd's notification protocol (no NOTIFY_SOCKET).
    /// - Parameters:
    ///   - progress: counters that must all move between two pings (each worker's loop
    ///     iterations, the Raft loop's ticks).
    ///   - status: the STATUS line.
    init?(environment: [String: String], queue: DispatchQueue, logger: Logger, progress: @escaping () -> [UInt64],
          status: @escaping () -> String) {
        guard let socket = environment["NOTIFY_SOCKET"], !socket.isEmpty else { return nil }
        self.queue = queue
        // sd_watchdog_enabled(3): WATCHDOG_USEC, for this process if WATCHDOG_PID says so.
        let pidMatches = environment["WATCHDOG_PID"].map { $0 == "\(getpid())" } ?? true
        let watchdogMicroseconds = environment["WATCHDOG_USEC"].flatMap { UInt64($0) }.flatMap { $0 > 0 && pidMatches ? $0 : nil }
        watchdog = watchdogMicroseconds != nil
        self.logger = logger
        self.progress = progress
        self.status = status
        // Half the watchdog interval, as sd_watchdog_enabled(3) advises.
        let intervalMilliseconds = watchdogMicroseconds.map { max(1, Int($0 / 2000)) } ?? Self.statusIntervalMilliseconds
        timer = DispatchSource.makeTimerSource(queue: queue)
        timer.schedule(deadline: .now() + .milliseconds(intervalMilliseconds), repeating: .milliseconds(intervalMilliseconds))
        timer.setEventHandler { [weak self] in self?.fire() }
    }

    func start() {
        queue.async {
            self.lastProgress = self.progress()
            self.timer.resume()
        }
    }

    func stop() {
        timer.cancel()
    }

    private func fire() {
        var message: [String] = []
        let now = progress()
        let moved = now.count == lastProgress.count && zip(now, lastProgress).allSatisfy { $0 != $1 }
        lastProgress = now
        if watchdog {
            if moved {
                message.append("WATCHDOG=1")
                if stalledLogged {
                    logger.notice("every DNS worker and the Raft loop make progress again; watchdog pings resumed")
                    stalledLogged = false
                }
            } else if !stalledLogged {
                logger.error("a DNS worker or the Raft loop made no progress since the last watchdog ping; not pinging systemd",
                             metadata: ["systemd.progress": "\(now)"])
                stalledLogged = true
            }
        }
        let line = status()
        if line != lastStatus {
            message.append("STATUS=\(line)")
            lastStatus = line
        }
        if !message.isEmpty { _ = disco_sd_notify(message.joined(separator: "\n")) }
    }
}
