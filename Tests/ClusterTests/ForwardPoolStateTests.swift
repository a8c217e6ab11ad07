import API
import Testing

/// The forwarder's pool bookkeeping (issue 13.3), as a value driven event by event.
@Suite("Forward pool state")
struct ForwardPoolStateTests {
    typealias State = ForwardPoolState
    typealias C = State.ConnectionID
    typealias R = State.RequestID

    /// Applies `event` and checks the invariants after it.
    @discardableResult
    func step(_ state: inout State, _ event: (inout State) -> [State.Action]) -> [State.Action] {
        let actions = event(&state)
        state.checkInvariants()
        return actions
    }

    @Test func aRequestOpensAConnectionAndTheNextReusesIt() {
        var pool = State(connectionsMax: 2, queuedRequestsMax: 4)
        #expect(step(&pool) { $0.submit(R(1), retriable: false) } == [.connect(C(0))])
        #expect(step(&pool) { $0.connected(C(0)) } == [.send(R(1), on: C(0))])
        #expect(step(&pool) { $0.responded(on: C(0), keepAlive: true) } == [.deliver(R(1), from: C(0)), .armIdleTimer(C(0), epoch: 1)])
        // Kept alive: the next request goes on it, no new connection.
        #expect(step(&pool) { $0.submit(R(2), retriable: false) } == [.send(R(2), on: C(0))])
        #expect(pool.connectionCount == 1)
    }

    @Test func connectionsStayWithinTheCapAndTheQueueIsBoundedWith429Beyond() {
        var pool = State(connectionsMax: 3, queuedRequestsMax: 5)
        var connects = 0
        var refused: [R] = []
        for n in 0..<20 {
            for action in step(&pool, { $0.submit(R(UInt64(n)), retriable: false) }) {
                switch action {
                case .connect: connects += 1
                case .fail(let r, .queueFull): refused.append(r)
                default: Issue.record("unexpected \(action)")
                }
            }
        }
        #expect(connects == 3)
        // Three wait for the connections opened for them, five more for those to be free.
        #expect(pool.queuedCount == 8)
        #expect(refused == (8..<20).map { R(UInt64($0)) })
        // The connections open: the oldest three go first, in order.
        var sent: [R] = []
        for c in 0..<3 {
            for case .send(let r, _) in step(&pool, { $0.connected(C(c)) }) { sent.append(r) }
        }
        #expect(sent == [R(0), R(1), R(2)])
        #expect(pool.queuedCount == 5)
        // A response frees its connection for the next waiting request, with no new connection.
        #expect(step(&pool) { $0.responded(on: C(1), keepAlive: true) } == [.deliver(R(1), from: C(1)), .send(R(3), on: C(1))])
        #expect(pool.connectionCount == 3)
    }

    @Test func noMoreConnectionsOpenThanRequestsWait() {
        var pool = State(connectionsMax: 32, queuedRequestsMax: 100)
        #expect(step(&pool) { $0.submit(R(1), retriable: false) } == [.connect(C(0))])
        #expect(step(&pool) { $0.submit(R(2), retriable: false) } == [.connect(C(1))])
        // R1 is answered on the first connection to open; the second then idles.
        #expect(step(&pool) { $0.connected(C(1)) } == [.send(R(1), on: C(1))])
        #expect(step(&pool) { $0.connected(C(0)) } == [.send(R(2), on: C(0))])
        #expect(pool.connectionCount == 2)
    }

    @Test func idleConnectionsCloseAfterTheirTimerAndStaleTimersAreIgnored() {
        var pool = State(connectionsMax: 2, queuedRequestsMax: 4)
        step(&pool) { $0.submit(R(1), retriable: false) }
        step(&pool) { $0.connected(C(0)) }
        #expect(step(&pool) { $0.responded(on: C(0), keepAlive: true) }.last == .armIdleTimer(C(0), epoch: 1))
        step(&pool) { $0.submit(R(2), retriable: false) }
        // The timer armed when it first idled fires while it is busy again: nothing happens.
        #expect(step(&pool) { $0.idleTimerFired(C(0), epoch: 1) } == [])
        #expect(step(&pool) { $0.responded(on: C(0), keepAlive: true) }.last == .armIdleTimer(C(0), epoch: 2))
        #expect(step(&pool) { $0.idleTimerFired(C(0), epoch: 1) } == [])
        #expect(step(&pool) { $0.idleTimerFired(C(0), epoch: 2) } == [.close(C(0))])
        #expect(pool.isEmpty)
        // A late event for the closed connection changes nothing.
        #expect(step(&pool) { $0.connectionLost(C(0), responseStarted: false) } == [])
    }

    @Test func aConnectionTheTargetClosesIsNotReused() {
        var pool = State(connectionsMax: 1, queuedRequestsMax: 4)
        step(&pool) { $0.submit(R(1), retriable: false) }
        step(&pool) { $0.connected(C(0)) }
        step(&pool) { $0.submit(R(2), retriable: false) }
        // `Connection: close` from the target: closed, and a new one opened for R2.
        #expect(step(&pool) { $0.responded(on: C(0), keepAlive: false) } == [.deliver(R(1), from: C(0)), .close(C(0)), .connect(C(1))])
    }

    @Test func aSafeRequestIsRetriedOnceAndAWriteIsNot() {
        var pool = State(connectionsMax: 2, queuedRequestsMax: 4)
        step(&pool) { $0.submit(R(1), retriable: true) }
        step(&pool) { $0.connected(C(0)) }
        // Broken before any answer: sent again, on a new connection.
        #expect(step(&pool) { $0.connectionLost(C(0), responseStarted: false) } == [.connect(C(1))])
        #expect(step(&pool) { $0.connected(C(1)) } == [.send(R(1), on: C(1))])
        // Broken again: at most one retry.
        #expect(step(&pool) { $0.connectionLost(C(1), responseStarted: false) } == [.fail(R(1), .connectionLost)])

        // A write (not safe) is never sent twice.
        step(&pool) { $0.submit(R(2), retriable: false) }
        step(&pool) { $0.connected(C(2)) }
        #expect(step(&pool) { $0.connectionLost(C(2), responseStarted: false) } == [.fail(R(2), .connectionLost)])

        // Nor a safe request whose answer had begun.
        step(&pool) { $0.submit(R(3), retriable: true) }
        step(&pool) { $0.connected(C(3)) }
        #expect(step(&pool) { $0.connectionLost(C(3), responseStarted: true) } == [.fail(R(3), .connectionLost)])
        #expect(pool.isEmpty)
    }

    @Test func whenTheTargetCannotBeReachedWhatWaitsFailsAtOnce() {
        var pool = State(connectionsMax: 2, queuedRequestsMax: 8)
        for n in 1...4 { step(&pool) { $0.submit(R(UInt64(n)), retriable: false) } }
        #expect(pool.connectingCount == 2)
        // The first failure: nothing is open, so every waiting request fails and the other
        // connection attempt is dropped (no attempt after attempt until they time out).
        #expect(step(&pool) { $0.connectFailed(C(0)) }
                == [.fail(R(1), .connectFailed), .fail(R(2), .connectFailed), .fail(R(3), .connectFailed),
                    .fail(R(4), .connectFailed), .close(C(1))])
        #expect(step(&pool) { $0.connected(C(1)) } == [])
        #expect(pool.isEmpty)
    }

    @Test func aFailedConnectLeavesWaitingRequestsToAnOpenConnection() {
        var pool = State(connectionsMax: 2, queuedRequestsMax: 8)
        step(&pool) { $0.submit(R(1), retriable: false) }
        step(&pool) { $0.connected(C(0)) }
        step(&pool) { $0.submit(R(2), retriable: false) }
        #expect(pool.connectingCount == 1)
        #expect(step(&pool) { $0.connectFailed(C(1)) } == [])
        #expect(step(&pool) { $0.responded(on: C(0), keepAlive: true) } == [.deliver(R(1), from: C(0)), .send(R(2), on: C(0))])
    }

    @Test func aTimedOutRequestLeavesTheQueueOrClosesItsConnection() {
        var pool = State(connectionsMax: 1, queuedRequestsMax: 8)
        step(&pool) { $0.submit(R(1), retriable: false) }
        step(&pool) { $0.connected(C(0)) }
        step(&pool) { $0.submit(R(2), retriable: false) }
        step(&pool) { $0.submit(R(3), retriable: false) }
        #expect(step(&pool) { $0.timedOut(R(2)) } == [])
        #expect(pool.queuedCount == 1)
        // In flight: its connection cannot carry another request (the late answer would be
        // taken for the next one's), so it closes and R3 gets a new one.
        #expect(step(&pool) { $0.timedOut(R(1)) } == [.close(C(0)), .connect(C(1))])
        #expect(step(&pool) { $0.responded(on: C(0), keepAlive: true) } == [])
        #expect(step(&pool) { $0.connected(C(1)) } == [.send(R(3), on: C(1))])
    }

    @Test func retiringHandsWaitingRequestsOverAndClosesConnectionsWhenFree() {
        var pool = State(connectionsMax: 2, queuedRequestsMax: 8)
        for n in 1...3 { step(&pool) { $0.submit(R(UInt64(n)), retriable: true) } }
        step(&pool) { $0.connected(C(0)) }
        step(&pool) { $0.connected(C(1)) }
        step(&pool) { $0.responded(on: C(1), keepAlive: true) }  // R2 done; C1 takes R3
        step(&pool) { $0.submit(R(4), retriable: false) }
        #expect(step(&pool) { $0.retire() } == [.handOver(R(4))])
        // Busy connections finish their request, then close; a retired pool retries nothing.
        #expect(step(&pool) { $0.responded(on: C(0), keepAlive: true) } == [.deliver(R(1), from: C(0)), .close(C(0))])
        #expect(step(&pool) { $0.connectionLost(C(1), responseStarted: false) } == [.fail(R(3), .connectionLost)])
        #expect(pool.isEmpty)
    }

    @Test func aZeroQueueRefusesWhenEveryConnectionIsBusy() {
        var pool = State(connectionsMax: 1, queuedRequestsMax: 0)
        #expect(step(&pool) { $0.submit(R(1), retriable: false) } == [.connect(C(0))])
        #expect(step(&pool) { $0.submit(R(2), retriable: false) } == [.fail(R(2), .queueFull)])
        #expect(step(&pool) { $0.connected(C(0)) } == [.send(R(1), on: C(0))])
        #expect(step(&pool) { $0.submit(R(3), retriable: false) } == [.fail(R(3), .queueFull)])
        step(&pool) { $0.responded(on: C(0), keepAlive: true) }
        #expect(step(&pool) { $0.submit(R(4), retriable: false) } == [.send(R(4), on: C(0))])
    }

    /// Seeded random events: the invariants hold throughout, every request ends exactly once
    /// (delivered, failed or handed over), and nothing is left open at the end.
    @Test(arguments: 1...20) func randomEventsKeepTheInvariants(seed: UInt64) {
        var random = PoolSplitMix(seed: seed)
        var pool = State(connectionsMax: 4, queuedRequestsMax: 6)
        var opening: Set<C> = []
        var open: [C: R?] = [:]
        var live: Set<R> = []
        var ended: [R: Int] = [:]
        var next: UInt64 = 0
        func apply(_ actions: [State.Action]) {
            for action in actions {
                switch action {
                case .connect(let c): opening.insert(c)
                case .send(let r, let c):
                    #expect(open[c] != nil && open[c]! == nil, "seed \(seed): send on \(c) which is not open and free")
                    open[c] = r
                case .deliver(let r, let c):
                    #expect(open[c]! == r)
                    open[c] = .some(nil)
                    ended[r, default: 0] += 1
                case .close(let c):
                    opening.remove(c)
                    open[c] = nil
                case .fail(let r, _), .handOver(let r):
                    ended[r, default: 0] += 1
                case .armIdleTimer: break
                }
            }
        }
        for _ in 0..<2000 {
            switch random.next() % 7 {
            case 0, 1:
                let r = R(next)
                next += 1
                live.insert(r)
                apply(step(&pool) { $0.submit(r, retriable: random.next() % 2 == 0) })
            case 2:
                if let c = opening.randomElement(using: &random) {
                    opening.remove(c)
                    if random.next() % 4 == 0 {
                        apply(step(&pool) { $0.connectFailed(c) })
                    } else {
                        open[c] = .some(nil)
                        apply(step(&pool) { $0.connected(c) })
                    }
                }
            case 3, 4:
                if let (c, _) = open.filter({ $0.value != nil }).randomElement(using: &random) {
                    apply(step(&pool) { $0.responded(on: c, keepAlive: random.next() % 5 != 0) })
                }
            case 5:
                if let c = open.keys.randomElement(using: &random) {
                    open[c] = nil
                    apply(step(&pool) { $0.connectionLost(c, responseStarted: random.next() % 2 == 0) })
                }
            default:
                if let r = live.filter({ ended[$0] == nil }).randomElement(using: &random) {
                    ended[r, default: 0] += 1  // the caller answers it
                    apply(step(&pool) { $0.timedOut(r) })
                }
            }
        }
        apply(step(&pool) { $0.retire() })
        // Drain: everything still open answers.
        while let (c, _) = open.filter({ $0.value != nil }).first { apply(step(&pool) { $0.responded(on: c, keepAlive: true) }) }
        for c in opening { apply(step(&pool) { $0.connectFailed(c) }) }
        for (c, _) in open { apply(step(&pool) { $0.connectionLost(c, responseStarted: false) }) }
        #expect(pool.isEmpty, "seed \(seed)")
        #expect(ended.values.allSatisfy { $0 == 1 }, "seed \(seed): a request ended twice")
        #expect(Set(ended.keys) == live, "seed \(seed): \(live.subtracting(ended.keys).count) requests never ended")
    }
}

/// A small seeded generator (PoolSplitMix64) for the random-event test.
struct PoolSplitMix: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE5_E4B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
