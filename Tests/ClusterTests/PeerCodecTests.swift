import Cluster
import Raft
import Testing

@Suite("peer framing")
struct PeerCodecTests {
    static let messages: [Message] = [
        Message(from: 1, to: 2, term: 7, kind: .voteRequest(.init(lastLogIndex: 10, lastLogTerm: 6, preVote: true, transfer: false))),
        Message(from: 2, to: 1, term: 7, kind: .voteResponse(.init(preVote: true, granted: true))),
        Message(from: 1, to: 3, term: 7, kind: .append(.init(prevLogIndex: 9, prevLogTerm: 6, entries: [
            Entry(term: 7, index: 10, kind: .noop), Entry(term: 7, index: 11, data: Array("put k v".utf8)),
            Entry(term: 7, index: 12, kind: .membership, data: Membership(voters: [1, 2, 3], learners: [4]).encoded),
        ], commit: 9))),
        Message(from: 3, to: 1, term: 7, kind: .appendResponse(.init(index: 12))),
        Message(from: 3, to: 1, term: 7, kind: .appendResponse(.init(index: 8, reject: .init(conflictTerm: 5, conflictIndex: 4)))),
        Message(from: 3, to: 1, term: 7, kind: .appendResponse(.init(index: 8, reject: .init(conflictTerm: nil, conflictIndex: 2)))),
        Message(from: 1, to: 2, term: 7, kind: .heartbeat(.init(commit: 12, readSequence: 99))),
        Message(from: 2, to: 1, term: 7, kind: .heartbeatResponse(.init(readSequence: 99))),
        Message(from: 1, to: 4, term: 7, kind: .snapshot(Snapshot(index: 100, term: 6, membership: Membership(voters: [1, 2, 3]),
                                                                  data: [1, 2, 3, 4]))),
        Message(from: 1, to: 2, term: 7, kind: .timeoutNow),
        Message(from: 2, to: 1, term: 7, kind: .readIndex(context: [0xAB])),
        Message(from: 1, to: 2, term: 7, kind: .readIndexResponse(context: [0xAB], index: 12)),
    ]

    @Test("every message kind round-trips", arguments: PeerCodecTests.messages)
    func roundTrip(_ message: Message) throws {
        let frame = PeerCodec.encode(message)
        let length = try #require(try PeerCodec.bodyLength(header: frame))
        #expect(length == frame.count - PeerCodec.lengthFieldBytes)
        #expect(try PeerCodec.decode(body: Array(frame.dropFirst(PeerCodec.lengthFieldBytes))) == message)
    }

    @Test func everyTruncationIsAnErrorNotATrap() {
        for message in Self.messages {
            let body = Array(PeerCodec.encode(message).dropFirst(PeerCodec.lengthFieldBytes))
            for cut in 0..<body.count {
                #expect(throws: PeerFrameError.self) { _ = try PeerCodec.decode(body: Array(body[0..<cut])) }
            }
            #expect(throws: PeerFrameError.self) { _ = try PeerCodec.decode(body: body + [0]) }
        }
    }

    @Test func oversizedFramesAndUnknownVersionsAreRefused() throws {
        #expect(throws: PeerFrameError.self) { _ = try PeerCodec.bodyLength(header: [0x7F, 0xFF, 0xFF, 0xFF]) }
        #expect(try PeerCodec.bodyLength(header: [0, 0]) == nil)
        var body = Array(PeerCodec.encode(Self.messages[0]).dropFirst(4))
        body[0] = 3
        #expect(throws: PeerFrameError(offset: 0, message: "protocol version 3 is not 4 (the peer runs an older discod)")) { _ = try PeerCodec.decode(body: body) }
        body[0] = 5
        #expect(throws: PeerFrameError(offset: 0, message: "protocol version 5 is not 4 (the peer runs a newer discod)")) { _ = try PeerCodec.decode(body: body) }
        // An entry count far beyond the frame is refused before allocating for it.
        var append = Array(PeerCodec.encode(Self.messages[2]).dropFirst(4))
        append.replaceSubrange(58..<62, with: [0xFF, 0xFF, 0xFF, 0xFF])
        #expect(throws: PeerFrameError.self) { _ = try PeerCodec.decode(body: append) }
    }

    @Test func framesFromAnotherClusterAreRefused() throws {
        let ours = PeerCodec.clusterID(token: "disco-cluster"), theirs = PeerCodec.clusterID(token: "staging")
        #expect(ours != theirs)
        let body = Array(PeerCodec.encode(Self.messages[0], cluster: theirs).dropFirst(PeerCodec.lengthFieldBytes))
        #expect(try PeerCodec.decode(body: body, cluster: theirs) == Self.messages[0])
        #expect {
            _ = try PeerCodec.decode(body: body, cluster: ours)
        } throws: { error in
            (error as? PeerFrameError)?.message.contains("raft.cluster_token differs") == true
        }
    }
}
