import Raft

/// Why a peer frame was refused. The transport closes that connection and logs this.
public struct PeerFrameError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Offset in the frame body where decoding stopped.
    public var offset: Int
    public var message: String

    public init(offset: Int, message: String) {
        self.offset = offset
        self.message = message
    }

    public var description: String { "peer frame, offset \(offset): \(message)" }
}

/// The binary framing of Raft messages between peers (no JSON on this path).
///
/// A frame is `length: u32` (bytes after the length field) then the body:
/// `version: u8 = 4`, `cluster: u64`, `kind: u8`, `from: u64`, `to: u64`, `term: u64`, then the
/// kind's fields, then `checksum: u32`, the CRC-32 of every body byte before it (a frame
/// damaged between two servers' memories is refused, not stepped). `cluster` identifies the
/// cluster (a hash of its token, as etcd's
/// initial-cluster-token): a frame from another cluster is refused, so two clusters on one
/// network never mix their logs. Version 1 had no cluster field. Version 3 has the same frames
/// as 2 but marks servers that write registry entries in the binary form (tag 0x41), which a
/// version 2 server would skip as malformed and so hold a different catalog: the two refuse
/// each other instead. Version 4 adds the checksum, and, likewise, marks servers that write
/// registry entries with tag 0x42 (health check thresholds, batched check statuses, the check
/// runners).
/// Integers are big-endian; byte strings are `u32` length + bytes; entries are
/// `term u64, index u64, kind u8, data`. A frame above `frameBytesMax`, an unknown version or
/// kind, or trailing bytes is an error.
public enum PeerCodec {
    /// The cluster identity of a token: FNV-1a 64 of its UTF-8 bytes.
    public static func clusterID(token: String) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in token.utf8 { hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01b3 }
        return hash
    }

    public static let version: UInt8 = 4
    public static let checksumBytes = 4
    /// The largest frame accepted: a whole snapshot travels in one frame (the core does not
    /// chunk them), so this bounds the state machine a cluster can hold. 64 MiB.
    public static let frameBytesMax = 64 << 20
    public static let lengthFieldBytes = 4
    /// The largest term or log index a frame may carry: SQLite stores them as signed 64-bit
    /// integers, and arithmetic on them (`next`, distances) stays in range below it.
    public static let termOrIndexMax = UInt64(Int64.max) - 1

    enum KindCode: UInt8 {
        case voteRequest = 1, voteResponse, append, appendResponse, heartbeat, heartbeatResponse, snapshot,
             timeoutNow, readIndex, readIndexResponse
    }

    /// The whole frame, length prefix included.
    public static func encode(_ message: Message, cluster: UInt64 = 0) -> [UInt8] {
        var out = ByteWriter()
        out.u32(0)
        out.u8(version)
        out.u64(cluster)
        let code: KindCode
        switch message.kind {
        case .voteRequest: code = .voteRequest
        case .voteResponse: code = .voteResponse
        case .append: code = .append
        case .appendResponse: code = .appendResponse
        case .heartbeat: code = .heartbeat
        case .heartbeatResponse: code = .heartbeatResponse
        case .snapshot: code = .snapshot
        case .timeoutNow: code = .timeoutNow
        case .readIndex: code = .readIndex
        case .readIndexResponse: code = .readIndexResponse
        }
        out.u8(code.rawValue)
        out.u64(message.from.rawValue)
        out.u64(message.to.rawValue)
        out.u64(message.term.rawValue)
        switch message.kind {
        case .voteRequest(let r):
            out.u64(r.lastLogIndex.rawValue)
            out.u64(r.lastLogTerm.rawValue)
            out.u8((r.preVote ? 1 : 0) | (r.transfer ? 2 : 0))
        case .voteResponse(let r):
            out.u8((r.preVote ? 1 : 0) | (r.granted ? 2 : 0))
        case .append(let a):
            out.u64(a.prevLogIndex.rawValue)
            out.u64(a.prevLogTerm.rawValue)
            out.u64(a.commit.rawValue)
            out.u32(UInt32(a.entries.count))
            for entry in a.entries {
                out.u64(entry.term.rawValue)
                out.u64(entry.index.rawValue)
                out.u8(entry.kind.rawValue)
                out.bytes(entry.data)
            }
        case .appendResponse(let r):
            out.u64(r.index.rawValue)
            if let hint = r.reject {
                out.u8(hint.conflictTerm == nil ? 1 : 2)
                out.u64(hint.conflictTerm?.rawValue ?? 0)
                out.u64(hint.conflictIndex.rawValue)
            } else {
                out.u8(0)
            }
        case .heartbeat(let h):
            out.u64(h.commit.rawValue)
            out.u64(h.readSequence)
        case .heartbeatResponse(let h):
            out.u64(h.readSequence)
        case .snapshot(let s):
            out.u64(s.index.rawValue)
            out.u64(s.term.rawValue)
            out.bytes(s.membership.encoded)
            out.bytes(s.data)
        case .timeoutNow:
            break
        case .readIndex(let context):
            out.bytes(context)
        case .readIndexResponse(let context, let index):
            out.bytes(context)
            out.u64(index.rawValue)
        }
        out.u32(CRC32.checksum(out.bytes[lengthFieldBytes...]))
        out.patchU32(UInt32(out.bytes.count - lengthFieldBytes), at: 0)
        return out.bytes
    }

    /// `payload` (a body without its checksum) with its checksum appended: for tests that damage
    /// a body on purpose and want the damage to reach the parser.
    public static func seal(_ payload: [UInt8]) -> [UInt8] {
        var out = ByteWriter()
        out.bytes = payload
        out.u32(CRC32.checksum(payload[...]))
        return out.bytes
    }

    /// The length of the body announced by a frame header, or nil if 4 bytes are not there yet.
    /// Throws for a frame larger than `frameBytesMax` (before any of it is buffered).
    public static func bodyLength(header: some Collection<UInt8>) throws(PeerFrameError) -> Int? {
        guard header.count >= lengthFieldBytes else { return nil }
        var length = 0
        for byte in header.prefix(lengthFieldBytes) { length = length << 8 | Int(byte) }
        guard length <= frameBytesMax else {
            throw PeerFrameError(offset: 0, message: "frame of \(length) bytes is over the \(frameBytesMax)-byte limit")
        }
        return length
    }

    /// Decodes a frame body (without its length field).
    public static func decode(body frame: [UInt8], cluster: UInt64 = 0) throws(PeerFrameError) -> Message {
        guard let version = frame.first else { throw PeerFrameError(offset: 0, message: "empty frame") }
        guard version == Self.version else {
            let older = version < Self.version ? " (the peer runs an older discod)" : " (the peer runs a newer discod)"
            throw PeerFrameError(offset: 0, message: "protocol version \(version) is not \(Self.version)\(older)")
        }
        guard frame.count > checksumBytes else { throw PeerFrameError(offset: frame.count, message: "truncated before its checksum") }
        let end = frame.count - checksumBytes
        let stated = frame[end...].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
        guard CRC32.checksum(frame[..<end]) == stated else {
            throw PeerFrameError(offset: end, message: "checksum mismatch: the frame was damaged in transit")
        }
        let body = Array(frame[..<end])
        var r = ByteReader(body)
        _ = try r.u8()
        let peerCluster = try r.u64()
        guard peerCluster == cluster else {
            throw PeerFrameError(offset: 1, message: "the peer is in cluster \(String(peerCluster, radix: 16)), this server in "
                                 + "\(String(cluster, radix: 16)) (their raft.cluster_token differs)")
        }
        let rawKind = try r.u8()
        guard let code = KindCode(rawValue: rawKind) else { throw PeerFrameError(offset: 9, message: "unknown kind \(rawKind)") }
        let fromRaw = try r.u64(), toRaw = try r.u64()
        guard fromRaw != 0, toRaw != 0 else { throw PeerFrameError(offset: 10, message: "node id 0") }
        let from = NodeID(rawValue: fromRaw), to = NodeID(rawValue: toRaw)
        let term = try r.term()
        let kind: Message.Kind
        switch code {
        case .voteRequest:
            let index = try r.index(), lastTerm = try r.term(), flags = try r.u8()
            kind = .voteRequest(Message.VoteRequest(lastLogIndex: index, lastLogTerm: lastTerm, preVote: flags & 1 != 0,
                                                    transfer: flags & 2 != 0))
        case .voteResponse:
            let flags = try r.u8()
            kind = .voteResponse(Message.VoteResponse(preVote: flags & 1 != 0, granted: flags & 2 != 0))
        case .append:
            let prevIndex = try r.index(), prevTerm = try r.term(), commit = try r.index()
            let count = Int(try r.u32())
            // Each entry is at least 21 bytes: a count beyond what remains is a lie, not a reason to allocate.
            guard count <= r.remaining / 21 else { throw PeerFrameError(offset: r.offset, message: "\(count) entries do not fit") }
            var entries: [Entry] = []
            entries.reserveCapacity(count)
            for _ in 0..<count {
                let entryTerm = try r.term(), index = try r.index()
                let at = r.offset
                guard let entryKind = Entry.Kind(rawValue: try r.u8()) else {
                    throw PeerFrameError(offset: at, message: "unknown entry kind")
                }
                entries.append(Entry(term: entryTerm, index: index, kind: entryKind, data: try r.bytes()))
            }
            kind = .append(Message.Append(prevLogIndex: prevIndex, prevLogTerm: prevTerm, entries: entries, commit: commit))
        case .appendResponse:
            let index = try r.index()
            let at = r.offset
            switch try r.u8() {
            case 0: kind = .appendResponse(Message.AppendResponse(index: index))
            case let tag where tag == 1 || tag == 2:
                let conflictTerm = try r.term(), conflictIndex = try r.index()
                let hint = Message.RejectHint(conflictTerm: tag == 2 ? conflictTerm : nil, conflictIndex: conflictIndex)
                kind = .appendResponse(Message.AppendResponse(index: index, reject: hint))
            default: throw PeerFrameError(offset: at, message: "bad reject tag")
            }
        case .heartbeat:
            kind = .heartbeat(Message.Heartbeat(commit: try r.index(), readSequence: try r.u64()))
        case .heartbeatResponse:
            kind = .heartbeatResponse(Message.HeartbeatResponse(readSequence: try r.u64()))
        case .snapshot:
            let index = try r.index(), snapshotTerm = try r.term()
            let at = r.offset
            guard let membership = Membership(decoding: try r.bytes()) else {
                throw PeerFrameError(offset: at, message: "bad membership")
            }
            kind = .snapshot(Snapshot(index: index, term: snapshotTerm, membership: membership, data: try r.bytes()))
        case .timeoutNow:
            kind = .timeoutNow
        case .readIndex:
            kind = .readIndex(context: try r.bytes())
        case .readIndexResponse:
            kind = .readIndexResponse(context: try r.bytes(), index: try r.index())
        }
        guard r.remaining == 0 else { throw PeerFrameError(offset: r.offset, message: "\(r.remaining) trailing bytes") }
        return Message(from: from, to: to, term: term, kind: kind)
    }
}

struct ByteWriter {
    var bytes: [UInt8] = []
    mutating func u8(_ v: UInt8) { bytes.append(v) }
    mutating func u16(_ v: UInt16) { bytes.append(UInt8(v >> 8)); bytes.append(UInt8(truncatingIfNeeded: v)) }
    mutating func u32(_ v: UInt32) { for shift in stride(from: 24, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: v >> UInt32(shift))) } }
    mutating func u64(_ v: UInt64) { for shift in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: v >> UInt64(shift))) } }
    mutating func bytes(_ data: [UInt8]) {
        u32(UInt32(data.count))
        bytes.append(contentsOf: data)
    }
    mutating func patchU32(_ v: UInt32, at offset: Int) {
        for i in 0..<4 { bytes[offset + i] = UInt8(truncatingIfNeeded: v >> UInt32(24 - 8 * i)) }
    }
}

struct ByteReader {
    let data: [UInt8]
    var offset = 0
    init(_ data: [UInt8]) { self.data = data }
    var remaining: Int { data.count - offset }

    mutating func take(_ count: Int) throws(PeerFrameError) -> ArraySlice<UInt8> {
        guard count >= 0, count <= remaining else {
            throw PeerFrameError(offset: offset, message: "truncated (wanted \(count) bytes, \(remaining) left)")
        }
        defer { offset += count }
        return data[offset..<(offset + count)]
    }
    mutating func u8() throws(PeerFrameError) -> UInt8 { try take(1).first! }
    mutating func u32() throws(PeerFrameError) -> UInt32 { try take(4).reduce(0) { $0 << 8 | UInt32($1) } }
    mutating func u64() throws(PeerFrameError) -> UInt64 { try take(8).reduce(0) { $0 << 8 | UInt64($1) } }
    mutating func bytes() throws(PeerFrameError) -> [UInt8] { Array(try take(Int(try u32()))) }
    mutating func index() throws(PeerFrameError) -> LogIndex { LogIndex(try bounded("log index")) }
    mutating func term() throws(PeerFrameError) -> Term { Term(try bounded("term")) }

    private mutating func bounded(_ what: String) throws(PeerFrameError) -> UInt64 {
        let at = offset
        let value = try u64()
        guard value <= PeerCodec.termOrIndexMax else {
            throw PeerFrameError(offset: at, message: "\(what) \(value) is beyond \(PeerCodec.termOrIndexMax)")
        }
        return value
    }
}
