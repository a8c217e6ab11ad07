import NIOCore

/// The bookkeeping of one forward target's keep-alive connections (issue 13.3): which
/// connection a request goes on, what waits for one, what is refused, when a connection is
/// opened or closed. No I/O and no clock: each event returns the actions for the caller (the
/// NIO part, `ForwardPool`) to perform, in order (STYLE.md: a state machine that returns actions).
///
/// Invariants (checked by `checkInvariants`, after every event in the tests):
/// - connections (connecting, idle or busy) ≤ `connectionsMax`;
/// - queued requests ≤ `queuedRequestsMax` + the connections not busy (requests a connection
///   is being opened for do not wait on others; a request sent again after a broken connection
///   was admitted already);
/// - a request is in exactly one place: queued, or in flight on one busy connection;
/// - a connection is idle only while the queue is empty (nothing waits while a connection could
///   take it);
/// - a connection is opened only for a request that waits, never more than wait (a request
///   that times out while waiting may leave one opening for nothing; it idles and times out).
package struct ForwardPoolState: Sendable {
    package struct ConnectionID: Hashable, Comparable, Sendable, CustomStringConvertible {
        package var rawValue: Int
        package init(_ rawValue: Int) { self.rawValue = rawValue }
        package static func < (a: ConnectionID, b: ConnectionID) -> Bool { a.rawValue < b.rawValue }
        package var description: String { "c\(rawValue)" }
    }

    package struct RequestID: Hashable, Sendable, CustomStringConvertible {
        package var rawValue: UInt64
        package init(_ rawValue: UInt64) { self.rawValue = rawValue }
        package var description: String { "r\(rawValue)" }
    }

    /// Why a request is given up without an answer from the target.
    package enum Failure: Equatable, Sendable {
        /// Every connection busy and `queuedRequestsMax` already waiting: answer 429.
        case queueFull
        /// The target could not be connected to, and no other connection is left to serve it.
        case connectFailed
        /// The connection broke while the request was on it, and it is not safe to send again
        /// (or it was sent twice already).
        case connectionLost
    }

    package enum Action: Equatable, Sendable {
        /// Open connection `ConnectionID` to the target; report `connected` or `connectFailed`.
        case connect(ConnectionID)
        /// Write request `RequestID` on that (open, otherwise unused) connection.
        case send(RequestID, on: ConnectionID)
        /// The response to `RequestID` is complete on `ConnectionID`: hand it to its client.
        case deliver(RequestID, from: ConnectionID)
        /// Close that connection (already forgotten here: later events for it are ignored).
        case close(ConnectionID)
        /// Give up the request: answer its client from `Failure`.
        case fail(RequestID, Failure)
        /// The connection became idle: after the idle timeout, report `idleTimerFired` with
        /// this epoch (a timer whose epoch is stale by then is ignored).
        case armIdleTimer(ConnectionID, epoch: UInt64)
        /// The pool was retired (the leader changed) with this request still waiting: send it
        /// to the new target instead.
        case handOver(RequestID)
    }

    private enum Connection: Equatable {
        case connecting
        case idle(epoch: UInt64)
        /// `request` is on it. Connections are closed after this response when retired.
        case busy(RequestID)
    }

    package let connectionsMax: Int
    /// Requests that may wait for a busy connection to be free (those a connection is being
    /// opened for are not counted).
    package let queuedRequestsMax: Int
    private var connections: [ConnectionID: Connection] = [:]
    /// Requests waiting for a connection, oldest first.
    private var queue = CircularBuffer<RequestID>()
    /// Requests that may be sent again once if their connection breaks before any answer.
    private var retriable: Set<RequestID> = []
    private var nextConnection = 0
    private var nextEpoch: UInt64 = 0
    /// Retired: no new requests; connections close once their response is in.
    package private(set) var retired = false

    package init(connectionsMax: Int, queuedRequestsMax: Int) {
        precondition(connectionsMax >= 1 && queuedRequestsMax >= 0, "forward pool limits")
        self.connectionsMax = connectionsMax
        self.queuedRequestsMax = queuedRequestsMax
    }

    // MARK: - Observations

    package var connectionCount: Int { connections.count }
    package var busyCount: Int { connections.values.filter { if case .busy = $0 { true } else { false } }.count }
    package var idleCount: Int { connections.values.filter { if case .idle = $0 { true } else { false } }.count }
    package var connectingCount: Int { connections.values.filter { $0 == .connecting }.count }
    package var queuedCount: Int { queue.count }
    /// Nothing open, nothing waiting: the pool can be forgotten.
    package var isEmpty: Bool { connections.isEmpty && queuedCount == 0 }

    // MARK: - Events

    /// A new request for the target. `retriable`: safe to send a second time if its
    /// connection breaks before any of the answer arrived (RFC 9110 §9.2.1 safe methods).
    package mutating func submit(_ request: RequestID, retriable: Bool) -> [Action] {
        precondition(!retired, "a request submitted to a retired forward pool")
        if let idle = firstIdle() {
            if retriable { self.retriable.insert(request) }
            connections[idle] = .busy(request)
            return [.send(request, on: idle)]
        }
        // Requests a connection is opening for, or can still be opened for, are not waiting on
        // others: only those beyond count against `queuedRequestsMax`.
        guard queuedCount < queuedRequestsMax + (connectionsMax - busyCount) else { return [.fail(request, .queueFull)] }
        if retriable { self.retriable.insert(request) }
        queue.append(request)
        return dispatch()
    }

    /// Connection `id` is open.
    package mutating func connected(_ id: ConnectionID) -> [Action] {
        guard connections[id] == .connecting else { return [] }
        return becomeFree(id)
    }

    /// Connection `id` could not be opened. If another connection is open the requests
    /// waiting are left to it (no new connection is tried for them now); if none is (the
    /// target is down or refuses), they all fail now, as each did with its own connection
    /// before the pool, instead of trying connection after connection until they time out.
    package mutating func connectFailed(_ id: ConnectionID) -> [Action] {
        guard connections[id] == .connecting else { return [] }
        connections[id] = nil
        guard !connections.values.contains(where: { $0 != .connecting }) else { return [] }
        var actions: [Action] = []
        while let request = dequeue() {
            retriable.remove(request)
            actions.append(.fail(request, .connectFailed))
        }
        // Connections still opening have nothing left to wait for them.
        for (other, _) in connections.sorted(by: { $0.key < $1.key }) {
            connections[other] = nil
            actions.append(.close(other))
        }
        return actions
    }

    /// The whole response to the request on `id` arrived; `keepAlive`: the target keeps the
    /// connection open (it did not answer `Connection: close`).
    package mutating func responded(on id: ConnectionID, keepAlive: Bool) -> [Action] {
        guard case .busy(let request) = connections[id] else { return [] }
        retriable.remove(request)
        var actions: [Action] = [.deliver(request, from: id)]
        if keepAlive && !retired {
            actions += becomeFree(id)
        } else {
            connections[id] = nil
            actions.append(.close(id))
            actions += dispatch()
        }
        return actions
    }

    /// Connection `id` closed or failed. `responseStarted`: some of the answer had arrived (a
    /// request whose answer was partly read is never sent again).
    package mutating func connectionLost(_ id: ConnectionID, responseStarted: Bool) -> [Action] {
        guard let connection = connections[id] else { return [] }
        switch connection {
        case .connecting:
            return connectFailed(id)
        case .idle:
            connections[id] = nil
            return dispatch()
        case .busy(let request):
            connections[id] = nil
            var actions: [Action]
            if !responseStarted && retriable.remove(request) != nil && !retired {
                // Sent again once, first in line: it waited longest. (It may make the queue one
                // longer than `queuedRequestsMax` for a moment: it was admitted already.)
                queue.prepend(request)
                actions = []
            } else {
                retriable.remove(request)
                actions = [.fail(request, .connectionLost)]
            }
            return actions + dispatch()
        }
    }

    /// The idle timer armed with `epoch` for `id` fired.
    package mutating func idleTimerFired(_ id: ConnectionID, epoch: UInt64) -> [Action] {
        guard connections[id] == .idle(epoch: epoch) else { return [] }
        connections[id] = nil
        return [.close(id)]
    }

    /// The request's response timeout passed. If it was in flight its connection is closed (a
    /// late answer would be read as the next request's); if it waited it leaves the queue. The
    /// caller answers it.
    package mutating func timedOut(_ request: RequestID) -> [Action] {
        retriable.remove(request)
        if let id = connections.first(where: { $0.value == .busy(request) })?.key {
            connections[id] = nil
            return [.close(id)] + dispatch()
        }
        if let index = queue.firstIndex(of: request) {
            queue.remove(at: index)
        }
        return []
    }

    /// The target is no longer where these requests should go (the leader changed): idle
    /// connections close now, busy ones after their answer, waiting requests are handed over.
    package mutating func retire() -> [Action] {
        guard !retired else { return [] }
        retired = true
        var actions: [Action] = []
        while let request = dequeue() {
            retriable.remove(request)
            actions.append(.handOver(request))
        }
        for (id, connection) in connections.sorted(by: { $0.key < $1.key }) {
            switch connection {
            case .connecting, .idle:
                connections[id] = nil
                actions.append(.close(id))
            case .busy:
                break
            }
        }
        return actions
    }

    // MARK: - Internals

    /// `id` can take a request: the oldest waiting one, else it idles.
    private mutating func becomeFree(_ id: ConnectionID) -> [Action] {
        if let request = dequeue() {
            connections[id] = .busy(request)
            return [.send(request, on: id)]
        }
        nextEpoch += 1
        connections[id] = .idle(epoch: nextEpoch)
        return [.armIdleTimer(id, epoch: nextEpoch)]
    }

    /// Opens connections for waiting requests, up to the cap and never more than wait.
    private mutating func dispatch() -> [Action] {
        var actions: [Action] = []
        while let idle = firstIdle(), let request = dequeue() {
            connections[idle] = .busy(request)
            actions.append(.send(request, on: idle))
        }
        guard !retired else { return actions }
        while connections.count < connectionsMax && connectingCount < queuedCount {
            let id = ConnectionID(nextConnection)
            nextConnection += 1
            connections[id] = .connecting
            actions.append(.connect(id))
        }
        return actions
    }

    private func firstIdle() -> ConnectionID? {
        // The most recently used would keep the others idle long enough to time out; any will do
        // for correctness, the lowest id keeps the choice deterministic for the tests.
        connections.filter { if case .idle = $0.value { true } else { false } }.keys.min()
    }

    private mutating func dequeue() -> RequestID? { queue.popFirst() }

    /// Preconditions on the invariants in the type's documentation (tests call it after every event).
    package func checkInvariants() {
        precondition(connections.count <= connectionsMax, "more connections than the cap")
        precondition(queuedCount <= queuedRequestsMax + connectionsMax, "more queued requests than the cap (and retries)")
        precondition(idleCount == 0 || queuedCount == 0, "a request waits while a connection idles")
        let inFlight = connections.values.compactMap { if case .busy(let r) = $0 { r } else { nil } }
        let waiting = Array(queue)
        precondition(Set(inFlight).count == inFlight.count && Set(waiting).count == waiting.count
                     && Set(inFlight).isDisjoint(with: waiting), "a request in two places")
    }
}
