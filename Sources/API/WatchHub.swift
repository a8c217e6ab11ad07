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

    /// Blocking queries parked on one server at once; beyond it a blocking query is answered
    /// 429 (its client retries later). Each costs about 10 KiB (its connection, a promise and a
    /// timer; see RegistryProcessTests), so 32,768 bound them to some 330 MiB.
    public static let parkedQueriesMax = 32_768

    /// Why a query could not be parked.
    public struct Full: Error, CustomStringConvertible {
        public var description: String { "\(WatchHub.parkedQueriesMax) blocking queries are parked on this server" }
    }

    /// What a query reads: one service, anything in the catalog, one KV key, or the KV keys
    /// under a prefix (`?recurse`, `?keys`).
    public enum Topic: Hashable, Sendable {
        case service(String)
        case catalog
        case kvKey(String)
        case kvPrefix(String)
    }

    /// A blocking query refused because too many are parked, as its 429 (nil for other errors).
    static func refusal(_ error: Error) -> APIResponse? {
        guard let full = error as? Full else { return nil }
        return .text("\(full); retry later", status: .tooManyRequests,
                     headers: [("Retry-After", "\(Int.random(in: 1...Self.refusedRetryAfterSecondsMax))")])
    }

    /// A refused blocking query comes back after 1 to this many seconds (spread so that the
    /// refused do not all return together).
    static let refusedRetryAfterSecondsMax = 10

    /// What one applied KV write touched.
    public enum KVTouch: Sendable {
        case key(String)
        case prefix(String)

        /// Whether a query of `topic` may read what this write changed.
        func concerns(_ topic: Topic) -> Bool {
            switch (self, topic) {
            case (.key(let key), .kvKey(let watched)): key == watched
            case (.key(let key), .kvPrefix(let watched)): key.hasPrefix(watched)
            case (.prefix(let prefix), .kvKey(let watched)): watched.hasPrefix(prefix)
            case (.prefix(let prefix), .kvPrefix(let watched)): watched.hasPrefix(prefix) || prefix.hasPrefix(watched)
            case (_, .service), (_, .catalog): false
            }
        }
    }

    private struct Waiter {
        var index: UInt64
        var promise: EventLoopPromise<Void>
        var currentIndex: @Sendable () -> UInt64
    }

    private let lock = NSLock()
    private var waiters: [Topic: [UInt64: Waiter]] = [:]
    private var parked = 0
    private var sequence: UInt64 = 0

    public init() {}

    /// The number of parked queries (for metrics and tests).
    public var parkedCount: Int { lock.withLock { parked } }

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
                    self.parked -= 1
                }
                waiters[topic] = parked.isEmpty ? nil : parked
            }
        }
        for promise in woken { promise.succeed(()) }
    }

    /// Called after every applied KV write (on the Raft driver's loop): only the queries that
    /// read what it touched are looked at, and each re-checks its own index on its own loop
    /// (it reads the KV store), not on the driver's.
    public func notifyKV(_ touch: KVTouch) {
        let candidates: [(Topic, UInt64, Waiter)] = lock.withLock {
            var found: [(Topic, UInt64, Waiter)] = []
            if case .key(let key) = touch, let exact = waiters[.kvKey(key)] {
                found += exact.map { (.kvKey(key), $0.key, $0.value) }
            }
            for (topic, parked) in waiters {
                switch topic {
                case .kvPrefix: break
                case .kvKey: if case .key = touch { continue }
                case .service, .catalog: continue
                }
                guard touch.concerns(topic) else { continue }
                found += parked.map { (topic, $0.key, $0.value) }
            }
            return found
        }
        for (topic, id, waiter) in candidates {
            waiter.promise.futureResult.eventLoop.execute {
                if waiter.currentIndex() > waiter.index { self.release(topic, id) }
            }
        }
    }

    /// Succeeds when `currentIndex()` exceeds `index`, or after `waitSeconds` (plus jitter).
    /// Returns at once when `index` is 0 or already exceeded; fails with `Full` when
    /// `parkedQueriesMax` queries are parked already.
    public func wait(topic: Topic, index: UInt64, waitSeconds: Double, on loop: EventLoop,
                     currentIndex: @escaping @Sendable () -> UInt64) -> EventLoopFuture<Void> {
        guard index > 0, currentIndex() <= index else { return loop.makeSucceededVoidFuture() }
        let promise = loop.makePromise(of: Void.self)
        let id = lock.withLock { () -> UInt64? in
            guard parked < Self.parkedQueriesMax else { return nil }
            sequence &+= 1
            parked += 1
            waiters[topic, default: [:]][sequence] = Waiter(index: index, promise: promise, currentIndex: currentIndex)
            return sequence
        }
        guard let id else {
            promise.fail(Full())
            return promise.futureResult
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
            if waiter != nil { parked -= 1 }
            if waiters[topic]?.isEmpty == true { waiters[topic] = nil }
            return waiter
        }
        waiter?.promise.succeed(())
    }
}
