/// Why a peer's message was refused. Peer input is never asserted on (STYLE.md): a message that
/// breaks what a correct peer guarantees is dropped whole, before it touches any state, and the
/// caller logs it with its sender.
public struct InvalidMessage: Error, Sendable, Equatable, CustomStringConvertible {
    public var from: NodeID
    public var reason: String

    public init(from: NodeID, reason: String) {
        self.from = from
        self.reason = reason
    }

    public var description: String { "message from \(from) refused: \(reason)" }
}

extension RaftNode {
    /// Checks what a correct peer guarantees about `m`, against this server's state. Only
    /// messages that would be acted on are checked against the log (a stale one is dropped
    /// anyway), so a refusal always means a broken peer, a corrupted message, or a server of
    /// ours that lost its disk.
    func validate(_ m: Message) throws(InvalidMessage) {
        func refuse(_ reason: String) -> InvalidMessage { InvalidMessage(from: m.from, reason: reason) }
        switch m.kind {
        case .append(let append):
            guard append.prevLogTerm <= m.term else {
                throw refuse("append's previous term \(append.prevLogTerm) is above the message's term \(m.term)")
            }
            var expected = append.prevLogIndex
            var lastTerm = append.prevLogTerm
            for entry in append.entries {
                expected = expected.next
                guard entry.index == expected else {
                    throw refuse("append entry at \(entry.index) where \(expected) was expected (a gap or an overlap)")
                }
                guard entry.term >= lastTerm, entry.term <= m.term else {
                    throw refuse("append entry \(entry.index) has term \(entry.term), outside [\(lastTerm), \(m.term)]")
                }
                guard entry.kind != .membership || Membership(decoding: entry.data) != nil else {
                    throw refuse("membership entry \(entry.index) does not decode")
                }
                lastTerm = entry.term
            }
            // (An append from before this server's commit index is answered with that index, and
            // later entries cannot conflict with a committed one: see `handleAppend`.)
        case .heartbeat(let heartbeat):
            // The leader sends at most what it knows this server holds: more means this server's
            // log was lost (a wiped data directory) behind the leader's back.
            guard m.term < term || heartbeat.commit <= log.lastIndex else {
                throw refuse("heartbeat commit \(heartbeat.commit) is beyond this server's last index \(log.lastIndex): "
                             + "was its data directory wiped? Remove it from the cluster and join it anew")
            }
        case .snapshot(let snapshot):
            guard snapshot.index > .zero, snapshot.term > .zero, snapshot.term <= m.term else {
                throw refuse("snapshot at \(snapshot.index) with term \(snapshot.term) in a message of term \(m.term)")
            }
        case .appendResponse(let response):
            // A follower acknowledges only what this leader sent it.
            guard m.term != term || !isLeader || response.reject != nil || response.index <= log.lastIndex else {
                throw refuse("acknowledges index \(response.index), beyond this leader's last index \(log.lastIndex)")
            }
        case .voteRequest, .voteResponse, .heartbeatResponse, .timeoutNow, .readIndex, .readIndexResponse:
            break
        }
    }
}
