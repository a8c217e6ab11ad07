/// A small deterministic pseudo-random generator (Steele, Lea, Flood: "Fast splittable
/// pseudorandom number generators", 2014). The core draws its randomised election timeouts
/// (paper §5.2) from one of these, seeded from `RaftConfig.randomSeed`, so that a run is a
/// function of its inputs: the simulator replays any schedule from a seed.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    private var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// A value in `0..<bound`, by Lemire's multiply-high reduction (the tiny bias of skipping the
    /// rejection step does not matter for timeouts and fault schedules). Precondition: bound > 0.
    public mutating func next(below bound: UInt64) -> UInt64 {
        precondition(bound > 0, "empty range")
        return next().multipliedFullWidth(by: bound).high
    }

    /// A value in `range`. Precondition: the range is not empty.
    public mutating func next(in range: ClosedRange<Int>) -> Int {
        range.lowerBound + Int(next(below: UInt64(range.upperBound - range.lowerBound) + 1))
    }

    /// True with probability `numerator / denominator`.
    public mutating func chance(_ numerator: UInt64, in denominator: UInt64) -> Bool {
        next(below: denominator) < numerator
    }
}
