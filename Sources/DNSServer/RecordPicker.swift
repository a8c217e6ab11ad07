import DNSZone
import Foundation

/// How a service RRset's records are ordered per query (`dns.selection`).
public enum SelectionPolicy: String, Sendable, CaseIterable {
    /// A weighted random order per query (weights, slow start): the default.
    case shuffle
    /// Each query starts one record further than the last on this worker, ignoring weights
    /// (BIND's `rrset-order cyclic`).
    case roundRobin = "round_robin"
    /// Always the View's order: the same records for every query (cacheable; for tests and
    /// for comparison, not for load spreading).
    case fixed
}

/// What the answer path does with service RRsets, beyond the View.
public struct SelectionOptions: Sendable, Equatable {
    public var policy: SelectionPolicy
    /// Each service answer's TTL is lowered by a random 0...this percent of it, so that the
    /// caches of a fleet of clients do not all expire in the same second; 0: off.
    public var ttlJitterPercent: Int

    public static let ttlJitterPercentMax = 100

    public init(policy: SelectionPolicy = .shuffle, ttlJitterPercent: Int = 0) {
        precondition((0...Self.ttlJitterPercentMax).contains(ttlJitterPercent))
        self.policy = policy
        self.ttlJitterPercent = ttlJitterPercent
    }
}

/// Picks, per query, the order of a service RRset's records, one record at a time, so the
/// encoder writes them until the client's buffer is full (a random weighted subset that fits)
/// without knowing beforehand how many will fit.
///
/// - A set of at most `shuffledRecordsMax` candidates is shuffled whole: Fisher–Yates when the
///   weights are equal, else Efraimidis–Spirakis keys (-ln u / w, ascending).
/// - A larger set is drawn from with replacement in O(1) per draw (uniform index, or Vose's
///   alias table), already-picked records rejected by a stamp per record: the first draws of
///   distinct records are a weighted sample without replacement, in O(records answered)
///   rather than O(set). After `drawsPerRecordMax` × set draws (weights so skewed, or nearly
///   every record fitting) the rest follow in set order from a random start.
/// - Slow start thins: a record drawn while ramping is kept with its ramp's probability, which
///   is drawing it with its weight times the ramp.
///
/// One per worker (its PRNG is not shared: no locks). Scratch is allocated once, the stamps
/// grown the first time a larger set is seen: no allocation in the steady state.
final class RecordPicker {
    /// Sets up to this size are shuffled whole (64 A records fill 1,040 bytes: about a full
    /// EDNS response, so a whole shuffle is rarely wasted).
    static let shuffledRecordsMax = 64
    /// Draw budget per candidate before the rest is swept in order (a complete draw of n
    /// equal weights takes about n·ln n; 4n covers the part of it up to 98% of the set).
    static let drawsPerRecordMax = 4

    private enum Mode {
        /// `order[position..<count]`.
        case shuffled
        /// `(start + position) % count`.
        case rotated
        /// Weighted draws with rejection.
        case drawing
        /// `(start + position) % count`, skipping stamped records.
        case sweeping
    }

    private var random: WyRand
    private let order: UnsafeMutablePointer<Int32>
    private let keys: UnsafeMutablePointer<Double>
    private var stamps: UnsafeMutablePointer<UInt32>
    private var stampsCapacity = 0
    private var stamp: UInt32 = 0
    private var rotation: UInt64 = 0

    private var mode = Mode.shuffled
    private var count = 0
    private var position = 0
    private var remaining = 0
    private var start = 0
    private var draws = 0
    private var drawsMax = 0
    private var drawn = 0
    private var positive = 0
    private var panics = false
    private var warming = false
    private var now: UInt64 = 0

    init(seed: UInt64) {
        random = WyRand(seed: seed)
        order = .allocate(capacity: Self.shuffledRecordsMax)
        keys = .allocate(capacity: Self.shuffledRecordsMax)
        stamps = .allocate(capacity: 1)
    }

    deinit {
        order.deallocate()
        keys.deallocate()
        stamps.deallocate()
    }

    /// A random number for callers that share the worker's generator (TTL jitter).
    @inline(__always)
    func next(below bound: Int) -> Int { random.below(bound) }

    /// Starts a pick over `selection` (its healthy records, or every record in panic).
    func start(_ selection: RecordSelection, policy: SelectionPolicy, nowMilliseconds: UInt64) {
        count = selection.candidateCount
        remaining = selection.recordsMax > 0 ? min(count, selection.recordsMax) : count
        panics = selection.panics
        position = 0
        guard count > 0 else { return }
        switch policy {
        case .fixed:
            mode = .rotated
            start = 0
            return
        case .roundRobin:
            mode = .rotated
            rotation &+= 1
            start = Int(rotation % UInt64(count))
            return
        case .shuffle:
            break
        }
        now = nowMilliseconds
        warming = selection.warmAtMilliseconds > nowMilliseconds
        let sampler = panics ? selection.allSampler : selection.healthySampler
        if count <= Self.shuffledRecordsMax {
            mode = .shuffled
            if sampler.uniform && !warming {
                for i in 0..<count { order[i] = Int32(i) }
                var i = count - 1
                while i > 0 {
                    let j = random.below(i + 1)
                    let t = order[i]
                    order[i] = order[j]
                    order[j] = t
                    i -= 1
                }
            } else {
                shuffleByKeys(selection)
            }
            return
        }
        mode = .drawing
        if stampsCapacity < count { growStamps(count) }
        stamp &+= 1
        if stamp == 0 {
            stamps.update(repeating: 0, count: stampsCapacity)
            stamp = 1
        }
        draws = 0
        drawn = 0
        drawsMax = Self.drawsPerRecordMax * count
        positive = sampler.uniform ? count : sampler.positiveCount
    }

    /// The next record's index in the RRset, or -1 when the pick is over.
    @inline(__always)
    func next(_ selection: RecordSelection) -> Int {
        guard remaining > 0 else { return -1 }
        remaining -= 1
        switch mode {
        case .shuffled:
            position += 1
            return Int(order[position - 1])
        case .rotated:
            position += 1
            let index = start + position - 1
            return index < count ? index : index - count
        case .drawing:
            if let index = draw(selection) { return index }
            mode = .sweeping
            start = random.below(count)
            position = 0
            return sweep()
        case .sweeping:
            return sweep()
        }
    }

    private func draw(_ selection: RecordSelection) -> Int? {
        let sampler = panics ? selection.allSampler : selection.healthySampler
        while drawn < positive && draws < drawsMax {
            draws += 1
            let r = random.next()
            let slot = Int(((r >> 32) &* UInt64(count)) >> 32)
            var index = slot
            if !sampler.uniform && UInt32(truncatingIfNeeded: r) >= sampler.threshold[slot] { index = Int(sampler.alias[slot]) }
            if stamps[index] == stamp { continue }
            if warming {
                let ramp = selection.rampPerMille(record: index, nowMilliseconds: now)
                if ramp < 1024 && UInt64(random.below(1024)) >= ramp { continue }
            }
            stamps[index] = stamp
            drawn += 1
            return index
        }
        return nil
    }

    private func sweep() -> Int {
        while position < count {
            var index = start + position
            if index >= count { index -= count }
            position += 1
            if stamps[index] != stamp {
                stamps[index] = stamp
                return index
            }
        }
        return -1
    }

    /// Efraimidis–Spirakis: key = -ln(u) / weight, ascending, is a weighted random order;
    /// weight 0 sorts after every other record, in random order among themselves.
    private func shuffleByKeys(_ selection: RecordSelection) {
        for i in 0..<count {
            let u = random.unitInterval()
            var weight = Double(selection.weights[i])
            if warming { weight *= Double(selection.rampPerMille(record: i, nowMilliseconds: now)) / 1024 }
            keys[i] = weight > 0 ? -log(u) / weight : Self.zeroWeightKey + u
            order[i] = Int32(i)
            // Insertion sort: at most 64 keys.
            var j = i
            while j > 0 && keys[j - 1] > keys[j] {
                keys.swapAt(j - 1, j)
                order.swapAt(j - 1, j)
                j -= 1
            }
        }
    }

    /// Above any key of a positive weight: -ln(2^-64) / (1 × 10%) < 450.
    private static let zeroWeightKey = 1.0e6

    private func growStamps(_ capacity: Int) {
        stamps.deallocate()
        stamps = .allocate(capacity: capacity)
        stamps.initialize(repeating: 0, count: capacity)
        stampsCapacity = capacity
        stamp = 0
    }
}

private extension UnsafeMutablePointer {
    @inline(__always)
    func swapAt(_ i: Int, _ j: Int) {
        let t = self[i]
        self[i] = self[j]
        self[j] = t
    }
}

/// wyrand (Wang Yi): a 64-bit generator with one multiply per number, good enough for load
/// spreading (it passes BigCrush and PractRand), not for anything secret.
struct WyRand {
    private var state: UInt64

    init(seed: UInt64) {
        state = seed
    }

    @inline(__always)
    mutating func next() -> UInt64 {
        state &+= 0xa076_1d64_78bd_642f
        let product = state.multipliedFullWidth(by: state ^ 0xe703_7ed1_a0b4_28db)
        return product.high ^ product.low
    }

    /// Uniform in 0..<bound (Lemire's multiply-shift; the bias is below 2^-32 for our bounds).
    @inline(__always)
    mutating func below(_ bound: Int) -> Int {
        Int(((next() >> 32) &* UInt64(bound)) >> 32)
    }

    /// Uniform in (0, 1]: never 0, so its logarithm is finite.
    @inline(__always)
    mutating func unitInterval() -> Double {
        Double((next() >> 11) + 1) * 0x1p-53
    }
}
