import Foundation
import NIOCore
import Registry

/// Blocking queries (Consul's `?index=N&wait=T`): requests parked until what they read changes
/// past N, or their wait runs out. A watcher of one service is woken only by changes to that
/// service (its per-service modify index), so a registration storm on one service does not
/// wake the watchers of all the others.
///
/// A parked request is a promise and a timer: thousands cost little memory and no thread.
public final class WatchHub: @unchecked Sendable {
    // @unchecked: every field is guarded by `lock`.

    /// Consul's default wait when `?wait` is absent.
    public static let waitSecondsDefault: Double = 300
    /// Longer waits are cut to this (Consul's maximum).
    public static let waitSecondsMax: Double = 600
    /// Up to wait/16 is added at random so that watchers started together do not all come back
    /// together (Consul does the same).
    public static let jitterFraction: Double = 1.0 / 16

    /// What a query reads: one service, or anything in the catalog.
    public enum Topic: Hashable, Sendable {
        case service(String)
        case catalog
        /// The KV store: woken by any write, then each query re-checks its own index (a key's
        /// ModifyIndex), so a watcher of one key sleeps on through writes to others.
        case kv
    }

    private struct Waiter {
        var index: UInt64
        var promise: EventLoopPromise<Void>
        var currentIndex: @Sendable () -> UInt64
    }

    private let lock = NSLock()
    private var waiters: [Topic: [UInt64: Waiter]] = [:]
    private var sequence: UInt64 = 0

    public init() {}

    /// The number of parked queries (for metrics and tests).
    public var parkedCount: Int { lock.withLock { waiters.values.reduce(0) { $0 + $1.count } } }

    /// Called for every applied change (a `Catalog` observer).
    public func notify(_ change: CatalogChange) {
        var woken: [EventLoopPromise<Void>] = []
        lock.withLock {
            var topics: [Topic] = [.catalog]
            topics += change.services.map { .service($0) }
            for topic in topics {
                guard var parked = waiters[topic] else { continue }
                for (id, waiter) in parked where change.index > waiter.index {
                    woken.append(waiter.promise)
                    parked[id] = nil
                }
                waiters[topic] = parked.isEmpty ? nil : parked
            }
        }
        for promise in woken { promise.succeed(()) }
    }

    /// Called after every applied KV write.
    public func notifyKV() {
        let parked = lock.withLock { waiters[.kv] ?? [:] }
        // Each waiter's index is read outside the hub's lock (it reads the KV store).
        let due = parked.filter { $0.value.currentIndex() > $0.value.index }.map(\.key)
        for id in due { release(.kv, id) }
    }

    /// Succeeds when `currentIndex()` exceeds `index`, or after `waitSeconds` (plus jitter).
    /// Returns at once when `index` is 0 or already exceeded.
    public func wait(topic: Topic, index: UInt64, waitSeconds: Double, on loop: EventLoop,
                     currentIndex: @escaping @Sendable () -> UInt64) -> EventLoopFuture<Void> {
        guard index > 0, currentIndex() <= index else { return loop.makeSucceededVoidFuture() }
        let promise = loop.makePromise(of: Void.self)
        let id = lock.withLock { () -> UInt64 in
            sequence &+= 1
            waiters[topic, default: [:]][sequence] = Waiter(index: index, promise: promise, currentIndex: currentIndex)
            return sequence
        }
        // A change applied between the check above and parking would have been missed: check again.
        if currentIndex() > index { release(topic, id) }
        let wait = min(max(waitSeconds, 0), Self.waitSecondsMax)
        let jittered = wait + Double.random(in: 0...(wait * Self.jitterFraction))
        let timer = loop.scheduleTask(in: .milliseconds(Int64(jittered * 1000))) { self.release(topic, id) }
        promise.futureResult.whenComplete { _ in timer.cancel() }
        return promise.futureResult
    }

    private func release(_ topic: Topic, _ id: UInt64) {
        let waiter = lock.withLock { () -> Waiter? in
            let waiter = waiters[topic]?.removeValue(forKey: id)
            if waiters[topic]?.isEmpty == true { waiters[topic] = nil }
            return waiter
        }
        waiter?.promise.succeed(())
    }
}
