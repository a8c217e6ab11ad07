/// Operations of the key-value model that simulated (and real) clients run.
public enum KVOperation: Hashable, Sendable, CustomStringConvertible {
    case put(key: String, value: String)
    case get(key: String)
    /// Compare-and-swap: set `key` to `new` if it currently holds `expected` (nil: absent).
    case cas(key: String, expected: String?, new: String)

    public var key: String {
        switch self {
        case .put(let key, _), .get(let key), .cas(let key, _, _): key
        }
    }

    public var isWrite: Bool { if case .get = self { false } else { true } }

    public var description: String {
        switch self {
        case .put(let k, let v): "put(\(k), \(v))"
        case .get(let k): "get(\(k))"
        case .cas(let k, let e, let n): "cas(\(k), \(e ?? "nil"), \(n))"
        }
    }
}

/// What a client saw as the outcome of an operation.
public enum KVResult: Hashable, Sendable, CustomStringConvertible {
    /// A put was acknowledged.
    case ok
    /// A get returned this value (nil: absent).
    case value(String?)
    /// A compare-and-swap reported whether it swapped.
    case swapped(Bool)
    /// The client never learned the outcome (timeout, crash): the operation may or may not have
    /// taken effect, at any time after its call.
    case unknown

    public var description: String {
        switch self {
        case .ok: "ok"
        case .value(let v): v ?? "nil"
        case .swapped(let s): s ? "swapped" : "not-swapped"
        case .unknown: "unknown"
        }
    }
}

/// One client operation in a history: called at `call`, answered at `returned` (nil if never).
/// Times are in any monotonic unit (the simulator uses virtual milliseconds).
public struct HistoryOperation: Hashable, Sendable, CustomStringConvertible {
    public var client: Int
    public var operation: KVOperation
    public var call: Int64
    public var returned: Int64?
    public var result: KVResult

    public init(client: Int, operation: KVOperation, call: Int64, returned: Int64?, result: KVResult) {
        self.client = client
        self.operation = operation
        self.call = call
        self.returned = returned
        self.result = returned == nil ? .unknown : result
    }

    public var description: String {
        "client \(client) \(operation) -> \(result) [\(call), \(returned.map(String.init) ?? "∞")]"
    }
}

/// The verdict of a linearizability check.
public enum LinearizabilityResult: Hashable, Sendable {
    case linearizable
    /// No order of the operations on `key` respects real time and the register semantics.
    case violation(key: String, operations: [HistoryOperation])
    /// The search gave up after its step budget (the history is too concurrent to decide cheaply).
    case inconclusive(key: String)
}

/// Checks that a history of key-value operations is linearizable (Herlihy & Wing 1990), with the
/// Wing & Gong search (1993) and Lowe's memoisation of (linearized set, state) pairs, as in
/// Porcupine (Athalye): operations on different keys are independent, so each key is checked on
/// its own (P-compositionality, Horn & Kroening 2015), which keeps the search small.
///
/// An operation with an unknown outcome is treated as possibly taking effect at any point after
/// its call, or never (its return is at infinity); a get with an unknown outcome constrains
/// nothing and is dropped.
public enum LinearizabilityChecker {
    /// Search steps per key before giving up.
    public static let searchStepsMax = 2_000_000

    public static func check(_ history: [HistoryOperation]) -> LinearizabilityResult {
        var byKey: [String: [HistoryOperation]] = [:]
        for op in history {
            if case .get = op.operation, op.result == .unknown { continue }
            byKey[op.operation.key, default: []].append(op)
        }
        for key in byKey.keys.sorted() {
            switch checkRegister(byKey[key]!) {
            case .linearizable: continue
            case .violation(_, let ops): return .violation(key: key, operations: ops)
            case .inconclusive: return .inconclusive(key: key)
            }
        }
        return .linearizable
    }

    /// The register model: returns whether `op` with its observed result is possible in `state`,
    /// and the state after it.
    static func step(_ state: String?, _ op: HistoryOperation) -> (Bool, String?) {
        switch (op.operation, op.result) {
        case (.put(_, let value), _):
            return (true, value)
        case (.get, .value(let observed)):
            return (observed == state, state)
        case (.get, _):
            return (false, state)
        case (.cas(_, let expected, let new), .swapped(true)):
            return (state == expected, new)
        case (.cas(_, let expected, _), .swapped(false)):
            return (state != expected, state)
        case (.cas(_, let expected, let new), _):
            return (true, state == expected ? new : state)
        }
    }

    private struct CacheKey: Hashable {
        var linearized: [UInt64]
        var state: String?
    }

    static func checkRegister(_ ops: [HistoryOperation]) -> LinearizabilityResult {
        let key = ops.first?.operation.key ?? ""
        let count = ops.count
        guard count > 0 else { return .linearizable }
        // Events: call k = 2k, return k = 2k+1; sorted by time, calls before returns at equal
        // times (so touching operations count as concurrent: the lenient reading).
        var events: [(time: Int64, isReturn: Bool, op: Int)] = []
        events.reserveCapacity(2 * count)
        for (k, op) in ops.enumerated() {
            events.append((op.call, false, k))
            events.append((op.returned ?? Int64.max, true, k))
        }
        events.sort { a, b in
            if a.time != b.time { return a.time < b.time }
            if a.isReturn != b.isReturn { return !a.isReturn }
            return a.op < b.op
        }
        // A doubly linked list over the events; node `n` is the head sentinel.
        let n = events.count
        var next = [Int](repeating: -1, count: n + 1)
        var prev = [Int](repeating: -1, count: n + 1)
        var returnOf = [Int](repeating: -1, count: count)
        var position = 0
        var last = n
        for (k, event) in events.enumerated() {
            next[last] = k
            prev[k] = last
            last = k
            if event.isReturn { returnOf[event.op] = k }
            position += 1
        }
        func lift(_ call: Int) {
            next[prev[call]] = next[call]
            if next[call] >= 0 { prev[next[call]] = prev[call] }
            let ret = returnOf[events[call].op]
            next[prev[ret]] = next[ret]
            if next[ret] >= 0 { prev[next[ret]] = prev[ret] }
        }
        func unlift(_ call: Int) {
            let ret = returnOf[events[call].op]
            next[prev[ret]] = ret
            if next[ret] >= 0 { prev[next[ret]] = ret }
            next[prev[call]] = call
            if next[call] >= 0 { prev[next[call]] = call }
        }

        var linearized = [UInt64](repeating: 0, count: (count + 63) / 64)
        var state: String? = nil
        var stack: [(call: Int, state: String?)] = []
        var cache: Set<CacheKey> = []
        var entry = next[n]
        var steps = 0
        var deepest: [Int] = []
        while next[n] >= 0 {
            steps += 1
            if steps > searchStepsMax { return .inconclusive(key: key) }
            let event = events[entry]
            if !event.isReturn {
                let (ok, newState) = step(state, ops[event.op])
                if ok {
                    var candidate = linearized
                    candidate[event.op / 64] |= 1 << UInt64(event.op % 64)
                    if cache.insert(CacheKey(linearized: candidate, state: newState)).inserted {
                        stack.append((entry, state))
                        state = newState
                        linearized = candidate
                        lift(entry)
                        entry = next[n]
                        continue
                    }
                }
                entry = next[entry]
            } else {
                if stack.count >= deepest.count { deepest = stack.map { events[$0.call].op } + [event.op] }
                guard let top = stack.popLast() else {
                    return .violation(key: key, operations: violationWitness(ops, deepest))
                }
                state = top.state
                linearized[events[top.call].op / 64] &= ~(1 << UInt64(events[top.call].op % 64))
                unlift(top.call)
                entry = next[top.call]
            }
        }
        return .linearizable
    }

    /// The operations of the longest partial linearization found plus the one that could not be
    /// placed, in call order: a small window to show a reader.
    private static func violationWitness(_ ops: [HistoryOperation], _ indexes: [Int]) -> [HistoryOperation] {
        let chosen = Set(indexes)
        let stuck = indexes.last.map { ops[$0] }
        var window = ops.enumerated().filter { chosen.contains($0.offset) }.map(\.element)
        if let stuck {
            // Everything concurrent with the operation that could not be placed.
            let end = stuck.returned ?? Int64.max
            window += ops.filter { $0.call <= end && ($0.returned ?? Int64.max) >= stuck.call && !window.contains($0) }
        }
        return window.sorted { ($0.call, $0.client) < ($1.call, $1.client) }
    }
}
