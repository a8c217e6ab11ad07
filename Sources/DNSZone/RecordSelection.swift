import DNSWire

/// What the answer path needs to pick, per query, the records of a service RRset (DESIGN.md:
/// "Selection happens per query, after the cache"): each record's weight, since when it is
/// answerable (slow start), and the records of failing instances kept aside for the panic
/// threshold. Built once per View by the registry; immutable and shared by every worker.
///
/// The RRset's `records`/`compiled` hold the healthy records first (`0..<healthyCount`),
/// then the critical ones, which are answered only while the set `panics`.
public final class RecordSelection: Sendable {
    /// Each record as written after its owner: TYPE, CLASS, TTL, RDLENGTH, RDATA (RFC 1035
    /// §4.1.3), back to back, so the answer path copies a record instead of encoding it. Empty
    /// when a record has a compressible name (A, AAAA and SRV have none: RFC 2782 forbids
    /// compressing the SRV target).
    public let wire: [UInt8]
    /// Where each record starts in `wire` (one more entry: the end).
    public let wireOffsets: [UInt32]
    /// The RRset's TTL.
    public let ttl: UInt32

    /// Slow start begins at this share of an instance's weight (Envoy's slow start starts
    /// low and ramps linearly): 10% keeps a recovered instance in rotation from the first
    /// second without handing it its full share before it is warm.
    public static let slowStartFloorPercent: UInt64 = 10

    /// Records `0..<healthyCount` are passing (or warning) instances'.
    public let healthyCount: Int
    /// Each record's weight (Consul's `Weights.Passing` / `Weights.Warning`, summed over the
    /// instances that share the record); 0 is answered last.
    public let weights: [UInt32]
    /// For each healthy record, the monotonic time (milliseconds, the server's clock) it
    /// became answerable; 0: warm. Empty when no record is still in its slow start.
    public let answerableSinceMilliseconds: [UInt64]
    /// Slow start window: the weight ramps from the floor to full over this; 0 = off.
    public let slowStartMilliseconds: UInt64
    /// The time the last slow start ends; 0 when none runs.
    public let warmAtMilliseconds: UInt64
    /// Fewer healthy instances than the panic threshold: every record is answered (fail open).
    public let panics: Bool
    /// At most this many records per answer; 0: as many as fit.
    public let recordsMax: Int
    /// Weighted draws over the healthy records, and over all of them (panic).
    package let healthySampler: AliasSampler
    package let allSampler: AliasSampler

    /// - Parameters:
    ///   - healthyInstances/instances: the instances behind the set, for the panic threshold
    ///     (records may be shared by instances, so they are counted apart).
    ///   - panicThresholdPercent: panic when healthy/instances is below this (0: never).
    ///   - records/type/ttl: the RRset's records, for `wire`.
    public init(records: [RData], type: RRType, ttl: UInt32, healthyCount: Int, weights: [UInt32],
                answerableSinceMilliseconds: [UInt64], slowStartMilliseconds: UInt64, healthyInstances: Int, instances: Int,
                panicThresholdPercent: Int, recordsMax: Int) {
        precondition(healthyCount >= 0 && healthyCount <= weights.count, "healthy records are a prefix of the set")
        precondition(records.count == weights.count, "one weight per record")
        var wire: [UInt8] = []
        var offsets: [UInt32] = [0]
        for record in records {
            let (rdata, names) = record.encoded()
            guard names.isEmpty, rdata.count <= Int(UInt16.max) else {
                wire = []
                offsets = []
                break
            }
            func u16(_ value: UInt16) { wire += [UInt8(value >> 8), UInt8(value & 0xFF)] }
            u16(type.rawValue)
            u16(RRClass.in.rawValue)
            u16(UInt16(ttl >> 16))
            u16(UInt16(ttl & 0xFFFF))
            u16(UInt16(rdata.count))
            wire += rdata
            offsets.append(UInt32(wire.count))
        }
        self.wire = wire
        self.wireOffsets = offsets
        self.ttl = ttl
        precondition(answerableSinceMilliseconds.isEmpty || answerableSinceMilliseconds.count >= healthyCount)
        self.healthyCount = healthyCount
        self.weights = weights
        self.slowStartMilliseconds = slowStartMilliseconds
        var warmAt: UInt64 = 0
        if slowStartMilliseconds > 0 {
            for since in answerableSinceMilliseconds.prefix(healthyCount) where since > 0 {
                warmAt = max(warmAt, since + slowStartMilliseconds)
            }
        }
        self.warmAtMilliseconds = warmAt
        self.answerableSinceMilliseconds = warmAt > 0 ? answerableSinceMilliseconds : []
        self.panics = healthyInstances * 100 < panicThresholdPercent * instances
        self.recordsMax = recordsMax
        healthySampler = AliasSampler(weights[0..<healthyCount])
        allSampler = AliasSampler(weights[...])
    }

    /// The records a query picks from now.
    @inline(__always)
    public var candidateCount: Int { panics ? weights.count : healthyCount }

    /// An instance's share of its weight `nowMilliseconds` into its slow start, in 1/1024.
    @inline(__always)
    public func rampPerMille(record: Int, nowMilliseconds: UInt64) -> UInt64 {
        guard record < answerableSinceMilliseconds.count else { return 1024 }
        let since = answerableSinceMilliseconds[record]
        guard since > 0, nowMilliseconds < since + slowStartMilliseconds else { return 1024 }
        let elapsed = nowMilliseconds > since ? nowMilliseconds - since : 0
        let floor = 1024 * Self.slowStartFloorPercent / 100
        return floor + (1024 - floor) * elapsed / slowStartMilliseconds
    }
}

/// Vose's alias method over integer weights: one draw with replacement, proportional to
/// weight, in O(1) (two table reads), for sets too large to shuffle whole per query.
package struct AliasSampler: Sendable {
    /// Whether every weight is the same (then a draw is a uniform index, no table).
    package let uniform: Bool
    /// Records with a weight above 0 (the only ones a draw can return, unless all are 0).
    package let positiveCount: Int
    /// Per slot: keep the slot when the low 32 random bits are below this, else take `alias`.
    package let threshold: [UInt32]
    package let alias: [Int32]

    init(_ weights: ArraySlice<UInt32>) {
        let n = weights.count
        let first = weights.first ?? 0
        let same = weights.allSatisfy { $0 == first }
        positiveCount = weights.reduce(0) { $0 + ($1 > 0 ? 1 : 0) }
        uniform = same || positiveCount == 0
        guard !uniform else {
            threshold = []
            alias = []
            return
        }
        let total = weights.reduce(0.0) { $0 + Double($1) }
        var scaled = weights.map { Double($0) * Double(n) / total }
        var threshold = [UInt32](repeating: UInt32.max, count: n)
        var alias = [Int32](repeating: 0, count: n)
        for i in 0..<n { alias[i] = Int32(i) }
        var small: [Int] = []
        var large: [Int] = []
        for i in 0..<n { if scaled[i] < 1 { small.append(i) } else { large.append(i) } }
        while let s = small.popLast(), let l = large.last {
            threshold[s] = UInt32(min(scaled[s] * 4_294_967_296.0, 4_294_967_295.0))
            alias[s] = Int32(l)
            scaled[l] -= 1 - scaled[s]
            if scaled[l] < 1 {
                large.removeLast()
                small.append(l)
            }
        }
        // What is left is 1 up to rounding: kept whole (threshold UInt32.max, alias itself).
        self.threshold = threshold
        self.alias = alias
    }
}
