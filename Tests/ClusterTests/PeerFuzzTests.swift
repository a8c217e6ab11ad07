import Cluster
import Foundation
import Raft
import RaftTesting
import Testing

/// Damaged peer frames, decoded and (when they still decode) stepped into a follower and a
/// leader: typed errors only, never a trap (issue 11.4). CI runs a short sweep; set
/// `DISCO_FUZZ_ITERATIONS=1000000` for the full one.
@Suite("peer input fuzzing")
struct PeerFuzzTests {
    static var iterations: Int {
        ProcessInfo.processInfo.environment["DISCO_FUZZ_ITERATIONS"].flatMap { Int($0) } ?? 20_000
    }

    /// A settled 3-node cluster (node 1 leads, 4 entries committed) and frames a peer of it
    /// could send: the material the mutations start from.
    static func seeds() -> (leader: RaftNode, follower: RaftNode, frames: [[UInt8]]) {
        var cluster = ScriptCluster()
        let voters: [NodeID] = [1, 2, 3]
        for id in voters {
            var config = RaftConfig(id: id, initialMembership: Membership(voters: voters))
            config.randomSeed = 7
            cluster.add(config: config)
        }
        cluster.campaign(1)
        _ = cluster.stabilize()
        for k in 0..<3 {
            _ = cluster.withNode(1) { (node: inout RaftNode) throws(ProposalError) in try node.propose(Array("put \(k)".utf8)) }
        }
        _ = cluster.stabilize()
        let leader = cluster.node(1)!.raft, follower = cluster.node(2)!.raft
        let s = follower.status
        let messages: [Message] = [
            Message(from: 1, to: 2, term: s.term, kind: .append(.init(prevLogIndex: s.lastIndex, prevLogTerm: s.term, entries: [
                Entry(term: s.term, index: s.lastIndex.next, data: Array("put x".utf8)),
                Entry(term: s.term, index: s.lastIndex.next.next, kind: .membership, data: Membership(voters: [1, 2, 3, 4]).encoded),
            ], commit: s.commit))),
            Message(from: 1, to: 2, term: s.term, kind: .heartbeat(.init(commit: s.commit, readSequence: 3))),
            Message(from: 1, to: 2, term: s.term, kind: .snapshot(Snapshot(index: LogIndex(s.lastIndex.rawValue + 4), term: s.term,
                                                                          membership: Membership(voters: [1, 2, 3]), data: [1, 2]))),
            Message(from: 3, to: 2, term: Term(s.term.rawValue + 1),
                    kind: .voteRequest(.init(lastLogIndex: s.lastIndex, lastLogTerm: s.term, preVote: true, transfer: false))),
            Message(from: 1, to: 2, term: s.term, kind: .readIndexResponse(context: [1, 2, 3], index: s.commit)),
            Message(from: 1, to: 2, term: s.term, kind: .timeoutNow),
            Message(from: 2, to: 1, term: s.term, kind: .appendResponse(.init(index: s.lastIndex))),
            Message(from: 2, to: 1, term: s.term, kind: .appendResponse(.init(index: 2, reject: .init(conflictTerm: s.term, conflictIndex: 1)))),
            Message(from: 2, to: 1, term: s.term, kind: .heartbeatResponse(.init(readSequence: 9))),
            Message(from: 2, to: 1, term: s.term, kind: .readIndex(context: [4])),
        ]
        // Payloads without their checksum: the sweep re-seals what it damaged, so the damage
        // reaches the parser and the core (the checksum alone is tested in PeerCodecTests).
        return (leader, follower, messages.map {
            Array(PeerCodec.encode($0).dropFirst(PeerCodec.lengthFieldBytes).dropLast(PeerCodec.checksumBytes))
        })
    }

    @Test func damagedFramesAreTypedErrorsNeverTraps() {
        let (leader, follower, frames) = Self.seeds()
        var random = SystemRandomNumberGenerator()
        let seed = UInt64.random(in: 1...UInt64.max, using: &random)
        var generator = SplitMix64(seed: seed)
        var decoded = 0, refused = 0
        for _ in 0..<Self.iterations {
            var body = frames[Int(generator.next(below: UInt64(frames.count)))]
            // 1-4 mutations: overwrite a byte (often in the fixed header's integers), cut, or grow.
            for _ in 0...Int(generator.next(below: 4)) {
                switch generator.next(below: 4) {
                case 0, 1:
                    body[Int(generator.next(below: UInt64(body.count)))] = UInt8(truncatingIfNeeded: generator.next())
                case 2:
                    body.removeLast(Int(generator.next(below: UInt64(min(body.count, 16)))))
                default:
                    body.append(UInt8(truncatingIfNeeded: generator.next()))
                }
                if body.isEmpty { body = [0] }
            }
            guard let message = try? PeerCodec.decode(body: PeerCodec.seal(body)) else { continue }
            decoded += 1
            var receiver = message.to == 1 ? leader : follower
            do throws(InvalidMessage) {
                try receiver.step(message)
                if receiver.hasReady { receiver.advance(receiver.ready()) }
            } catch {
                refused += 1
            }
        }
        // The sweep must reach the core, not only the codec (seed \(seed) replays it).
        #expect(decoded > Self.iterations / 20, "only \(decoded) of \(Self.iterations) decoded (seed \(seed))")
        #expect(refused > 0, "no damaged message was refused (seed \(seed))")
    }
}
