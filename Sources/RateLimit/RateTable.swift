import Atomics
#if canImport(Glibc)
import Glibc
#endif

/// How fast a bucket earns credit and how far it may fall into debt.
///
/// A bucket's balance, in responses, earns `ratePerSecond` per second up to `ratePerSecond`
/// (one second of credit: a burst that size passes at once) and pays 1 per event, limited or
/// not, down to `-ratePerSecond × windowSeconds` (BIND's RRL window). A client over the rate
/// therefore stays limited until it has kept under the rate long enough to pay its debt: after
/// a flood stops, at most `windowSeconds`. With `windowSeconds` 0 there is no debt: a limited
/// event costs nothing, and a client over the rate still gets `ratePerSecond` through (a plain
/// token bucket).
public struct BucketPolicy: Sendable, Equatable {
    public var ratePerSecond: Int
    public var windowSeconds: Int

    /// The largest rate: the balance is kept in thousandths of a response in 32 bits.
    public static let ratePerSecondMax = 1_000_000
    /// `ratePerSecond × windowSeconds` at most this, for the same reason (2³¹ / 1000).
    public static let debtResponsesMax = 2_000_000

    public init(ratePerSecond: Int, windowSeconds: Int) {
        precondition(ratePerSecond >= 1 && ratePerSecond <= Self.ratePerSecondMax, "rate 1...\(Self.ratePerSecondMax)")
        precondition(windowSeconds >= 0 && ratePerSecond * windowSeconds <= Self.debtResponsesMax,
                     "rate × window ≤ \(Self.debtResponsesMax)")
        self.ratePerSecond = ratePerSecond
        self.windowSeconds = windowSeconds
    }

    /// Credit of one second, in thousandths of a response.
    var creditMax: Int64 { Int64(ratePerSecond) * 1000 }
    /// The deepest debt, in thousandths of a response (negative).
    var debtMin: Int64 { -Int64(ratePerSecond) * Int64(windowSeconds) * 1000 }
    /// Untouched this long, a bucket has earned back any debt and a full second of credit: it
    /// is as good as new and its slot is free.
    var idleMillisecondsFresh: UInt32 { UInt32(windowSeconds + 1) * 1000 }
}

/// What one event did to its bucket.
public struct BucketOutcome: Sendable, Equatable {
    /// The event is over the rate.
    public var limited: Bool
    /// The bucket was not limited before this event (the first limited event of a run).
    public var startedLimiting: Bool
    /// Another bucket, not yet idle, was pushed out of the table to make room for this one.
    public var evicted: Bool
}

/// A fixed-size table of rate buckets keyed by a 64-bit hash, shared by every UDP worker
/// without locks, like NSD's and Knot's RRL tables.
///
/// Each slot is two 64-bit atomic words: the key, and the state (the last event's time in
/// milliseconds, wrapping every 49 days, and the balance). A key is looked up in
/// `probeSlotsMax` consecutive slots; a new key takes an empty or idle slot there, else the
/// least recently used one (an eviction). Memory is `entries × 16` bytes, whatever the traffic.
///
/// Races are benign by design: two workers updating one bucket retry a compare-and-exchange a
/// few times and then give up (the event is then counted as allowed, failing open); a worker
/// may read a slot between another's key and state stores and misjudge that one event. Nothing
/// is corrupted: every state word is a valid balance.
public final class RateTable: @unchecked Sendable {
    // @unchecked: the slots are only reached through atomic operations; the pointer is
    // allocated in init and freed in deinit.

    /// Slots searched for a key: more keeps colliding keys apart longer, at a cache miss per slot.
    public static let probeSlotsMax = 8
    /// Attempts at one compare-and-exchange before the event is let through.
    static let updateAttemptsMax = 4
    /// The default number of slots: 2²⁰ × 16 bytes = 16 MiB, room for a million active
    /// (prefix, class, name) buckets; a spoofed flood over more prefixes evicts idle ones first.
    public static let entriesDefault = 1 << 20
    /// Table sizes accepted (a power of two in this range).
    public static let entriesMin = 1 << 6
    public static let entriesMax = 1 << 26

    public let policy: BucketPolicy
    public let entries: Int
    private let mask: Int
    private let words: UnsafeMutablePointer<UInt64.AtomicRepresentation>

    /// - Parameter entries: rounded up to a power of two in `entriesMin...entriesMax`.
    public init(entries requested: Int, policy: BucketPolicy) {
        var entries = Self.entriesMin
        while entries < min(max(requested, Self.entriesMin), Self.entriesMax) { entries <<= 1 }
        self.entries = entries
        self.mask = entries - 1
        self.policy = policy
        // Zeroed pages from calloc: an empty slot is all zeros, so a slot's page becomes
        // resident only when a bucket first lands on it (16 MiB that an idle server would
        // otherwise hold from the start, as NSD's calloc'd table does not either).
        guard let memory = calloc(2 * entries, MemoryLayout<UInt64.AtomicRepresentation>.stride) else {
            fatalError("RateTable: cannot allocate \(entries) slots")
        }
        words = memory.bindMemory(to: UInt64.AtomicRepresentation.self, capacity: 2 * entries)
    }

    deinit {
        free(words)
    }

    @inline(__always) private func key(at slot: Int) -> UnsafeAtomic<UInt64> { UnsafeAtomic(at: words + 2 * slot) }
    @inline(__always) private func state(at slot: Int) -> UnsafeAtomic<UInt64> { UnsafeAtomic(at: words + 2 * slot + 1) }

    @inline(__always) private static func pack(time: UInt32, balance: Int64) -> UInt64 {
        UInt64(time) << 32 | UInt64(UInt32(bitPattern: Int32(truncatingIfNeeded: balance)))
    }

    @inline(__always) private static func unpack(_ word: UInt64) -> (time: UInt32, balance: Int64) {
        (UInt32(truncatingIfNeeded: word >> 32), Int64(Int32(bitPattern: UInt32(truncatingIfNeeded: word))))
    }

    /// Milliseconds from `then` to `now`, 0 if `now` is (slightly, across workers) earlier.
    @inline(__always) private static func elapsed(from then: UInt32, to now: UInt32) -> UInt32 {
        let difference = now &- then
        return Int32(bitPattern: difference) < 0 ? 0 : difference
    }

    /// Counts one event for `key` at `now` (monotonic milliseconds; any origin, wrapping).
    /// `key` 0 is reserved for empty slots and is remapped.
    public func record(key rawKey: UInt64, nowMilliseconds now: UInt32) -> BucketOutcome {
        let key = rawKey == 0 ? 1 : rawKey
        let start = Int(truncatingIfNeeded: key) & mask
        var victim = -1
        var victimIdle: UInt32 = 0
        var victimIsFree = false
        for probe in 0..<Self.probeSlotsMax {
            let slot = (start + probe) & mask
            let found = self.key(at: slot).load(ordering: .relaxed)
            if found == key { return update(slot: slot, now: now) }
            if victimIsFree { continue }  // keep looking for the key; the free slot is chosen
            if found == 0 {
                victim = slot
                victimIsFree = true
                continue
            }
            let idle = Self.elapsed(from: Self.unpack(state(at: slot).load(ordering: .relaxed)).time, to: now)
            if idle >= policy.idleMillisecondsFresh {
                victim = slot
                victimIsFree = true
            } else if victim < 0 || idle > victimIdle {
                victim = slot
                victimIdle = idle
            }
        }
        // A new bucket, with a full second of credit, less this event.
        let old = self.key(at: victim).load(ordering: .relaxed)
        guard self.key(at: victim).compareExchange(expected: old, desired: key, ordering: .relaxed).exchanged else {
            // Another worker took the slot first: let this one event through.
            return BucketOutcome(limited: false, startedLimiting: false, evicted: false)
        }
        state(at: victim).store(Self.pack(time: now, balance: policy.creditMax - 1000), ordering: .relaxed)
        return BucketOutcome(limited: false, startedLimiting: false, evicted: !victimIsFree)
    }

    private func update(slot: Int, now: UInt32) -> BucketOutcome {
        let state = self.state(at: slot)
        var word = state.load(ordering: .relaxed)
        for _ in 0..<Self.updateAttemptsMax {
            let (time, balance) = Self.unpack(word)
            let idle = Self.elapsed(from: time, to: now)
            let wasLimited = balance < 0
            // Credit: rate × elapsed seconds, in thousandths (rate/s × ms = thousandths).
            let earned = min(Int64(idle), Int64(policy.idleMillisecondsFresh)) * Int64(policy.ratePerSecond)
            let credit = min(balance + earned, policy.creditMax)
            var next = credit - 1000
            let limited = next < 0
            next = policy.windowSeconds == 0 && limited ? credit : max(next, policy.debtMin)
            let (exchanged, current) = state.compareExchange(expected: word, desired: Self.pack(time: now, balance: next),
                                                             ordering: .relaxed)
            if exchanged {
                return BucketOutcome(limited: limited, startedLimiting: limited && !wasLimited, evicted: false)
            }
            word = current
        }
        return BucketOutcome(limited: false, startedLimiting: false, evicted: false)
    }

    /// The balance of `key`'s bucket in responses (for tests and diagnostics), nil if absent.
    public func balance(key rawKey: UInt64) -> Double? {
        let key = rawKey == 0 ? 1 : rawKey
        let start = Int(truncatingIfNeeded: key) & mask
        for probe in 0..<Self.probeSlotsMax {
            let slot = (start + probe) & mask
            if self.key(at: slot).load(ordering: .relaxed) == key {
                return Double(Self.unpack(state(at: slot).load(ordering: .relaxed)).balance) / 1000
            }
        }
        return nil
    }
}
