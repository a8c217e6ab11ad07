import DNSWire

/// The kinds of response RRL counts separately (BIND's and NSD's classes), each with its own key,
/// so that a flood of one kind does not limit another and random names cannot dodge the limit
/// where the response does not depend on them.
public enum ResponseClass: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    /// Data in ANSWER: keyed by qname and qtype.
    case answer = 1
    /// NOERROR with an empty ANSWER and an SOA: keyed by qname.
    case nodata = 2
    /// NXDOMAIN: keyed by the zone (the SOA owner), so random names in one zone share a bucket.
    case nxdomain = 3
    /// A referral (empty ANSWER, NS in AUTHORITY, AA clear): keyed by the delegation point.
    case referral = 4
    /// Any other rcode (REFUSED, FORMERR, SERVFAIL, NOTIMP…): keyed by the client prefix alone.
    case error = 5
    /// Data synthesized from a wildcard (RFC 4592): keyed by the wildcard's owner (`*.zone`) and
    /// qtype, so a flood of random names under one wildcard shares one bucket (BIND and NSD
    /// class them so too). The answer path says so; the response bytes cannot.
    case wildcard = 6

    public var description: String {
        switch self {
        case .answer: "answer"
        case .nodata: "nodata"
        case .nxdomain: "nxdomain"
        case .referral: "referral"
        case .error: "error"
        case .wildcard: "wildcard"
        }
    }
}

/// Reads a response as written by the answer path and finds its RRL class and key name.
///
/// Classifying the response bytes, rather than asking the answer path, keeps RRL out of the
/// pipeline and covers cache hits alike. It relies on what our encoder writes: the question
/// echoed uncompressed at offset 12, and for negative answers and referrals the SOA or NS
/// RRset first in AUTHORITY.
package struct ResponseClassifier {
    /// Where a name starts in the response, or none (the error class).
    package enum KeyName {
        case none
        case question
        case authorityOwner(offset: Int)
    }

    package struct Classification {
        package var responseClass: ResponseClass
        package var keyName: KeyName
        /// The qtype, part of the key of the answer class.
        package var qtype: UInt16
        /// Where the question ends (the length of a truncated response).
        package var questionEnd: Int
    }

    /// The class and key name of `response`, or nil if it is not a response we understand
    /// (then it is counted as an error).
    package static func classify(_ response: UnsafeRawBufferPointer) -> Classification {
        var reader = WireReader(response)
        var result = Classification(responseClass: .error, keyName: .none, qtype: 0, questionEnd: Message.headerBytes)
        do throws(WireError) {
            try reader.skip(2)
            let flags = HeaderFlags(rawValue: try reader.u16())
            let qdcount = try reader.u16()
            let ancount = try reader.u16()
            let nscount = try reader.u16()
            try reader.skip(2)
            guard qdcount == 1 else { return result }
            try reader.skipName()
            result.qtype = try reader.u16()
            try reader.skip(2)
            result.questionEnd = reader.offset
            switch RCode(rawValue: UInt16(flags.rcodeBits)) {
            case .noError:
                if ancount > 0 || flags.tc {
                    result.responseClass = .answer
                    result.keyName = .question
                    return result
                }
                guard nscount > 0 else {
                    result.responseClass = .nodata
                    result.keyName = .question
                    return result
                }
                let owner = reader.offset
                try reader.skipName()
                let type = try reader.u16()
                if type == RRType.ns.rawValue && !flags.aa {
                    result.responseClass = .referral
                    result.keyName = .authorityOwner(offset: owner)
                } else {
                    result.responseClass = .nodata
                    result.keyName = .question
                }
            case .nxDomain:
                result.responseClass = .nxdomain
                result.keyName = .question
                // After a CNAME chain, ANSWER holds the chain; the zone is the SOA owner after it.
                for _ in 0..<ancount {
                    try reader.skipName()
                    try reader.skip(8)
                    try reader.skip(Int(try reader.u16()))
                }
                if nscount > 0 { result.keyName = .authorityOwner(offset: reader.offset) }
            default:
                return result
            }
        } catch {
            // A response we wrote cannot be malformed; if it were, the error class limits it.
            result.responseClass = .error
            result.keyName = .none
        }
        return result
    }
}

/// The 64-bit hash of an RRL bucket: (client prefix, class, qtype, lowercased name), seeded
/// per process so that nobody can aim colliding keys at another client's bucket.
///
/// FNV-1a over the bytes, then SplitMix64's finaliser to spread FNV's weak low bits (the
/// table index is taken from them).
struct BucketKey {
    private var state: UInt64

    init(seed: UInt64) { state = 0xcbf2_9ce4_8422_2325 ^ seed }

    @inline(__always) mutating func add(_ byte: UInt8) {
        state = (state ^ UInt64(byte)) &* 0x0000_0100_0000_01B3
    }

    @inline(__always) mutating func add(_ value: UInt64) {
        for shift in stride(from: 0, to: 64, by: 8) { add(UInt8(truncatingIfNeeded: value >> UInt64(shift))) }
    }

    @inline(__always) mutating func add(_ prefix: ClientAddress) {
        add(prefix.high)
        add(prefix.low)
    }

    /// Adds an expanded name read at `offset` of `message`, lowercased.
    mutating func addName(in message: UnsafeRawBufferPointer, at offset: Int, scratch: UnsafeMutableRawPointer) {
        var reader = WireReader(message, offset: offset)
        guard let length = try? reader.name(into: scratch, lowercase: true) else { return }
        for i in 0..<length { add(scratch.load(fromByteOffset: i, as: UInt8.self)) }
    }

    /// Adds an uncompressed wire-form name, lowercased (ASCII; a label length is never a letter).
    mutating func addName(_ wire: UnsafeRawBufferPointer) {
        for byte in wire { add(byte &- 0x41 < 26 ? byte | 0x20 : byte) }
    }

    var value: UInt64 {
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
