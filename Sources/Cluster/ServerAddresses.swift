import Raft

/// Where one server is reached: its Raft transport and its HTTP API.
public struct ServerAddresses: Hashable, Sendable, CustomStringConvertible {
    public var raft: PeerAddress
    public var http: PeerAddress

    public init(raft: PeerAddress, http: PeerAddress) {
        self.raft = raft
        self.http = http
    }

    public var description: String { "raft \(raft), http \(http)" }
}

extension PeerAddress {
    /// `HOST:PORT` or `[IPv6]:PORT`; nil if it is not one.
    public init?(parsing text: some StringProtocol) {
        let text = String(text)
        let host: Substring, port: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else { return nil }
            host = text[text.index(after: text.startIndex)..<close]
            port = text[text.index(close, offsetBy: 2)...]
        } else {
            guard let colon = text.lastIndex(of: ":"), !text[..<colon].contains(":") else { return nil }
            host = text[..<colon]
            port = text[text.index(after: colon)...]
        }
        guard !host.isEmpty, let number = Int(port), (1...65535).contains(number) else { return nil }
        self.init(host: String(host), port: number)
    }
}

/// The replicated list of servers' addresses: the payload of a `ClusterCommandTag.servers`
/// entry (after the tag) and the "servers" section of a Raft snapshot. It always carries the
/// whole list, so applying one replaces what was known.
///
/// Layout: `count: u32`, then per server `id: u64`, `raft`, `http` (u32 length + UTF-8 `HOST:PORT`).
enum ServerList {
    /// More servers than this in one list is not a cluster Disco is built for (Raft wants 3–7 voters).
    static let serversMax = 64

    static func encode(_ servers: [NodeID: ServerAddresses]) -> [UInt8] {
        var out = ByteWriter()
        out.u32(UInt32(servers.count))
        for (id, addresses) in servers.sorted(by: { $0.key < $1.key }) {
            out.u64(id.rawValue)
            out.bytes(Array(addresses.raft.description.utf8))
            out.bytes(Array(addresses.http.description.utf8))
        }
        return out.bytes
    }

    static func decode(_ bytes: [UInt8]) throws(PeerFrameError) -> [NodeID: ServerAddresses] {
        var r = ByteReader(bytes)
        let count = Int(try r.u32())
        guard count <= serversMax else { throw PeerFrameError(offset: 0, message: "\(count) servers is over the limit of \(serversMax)") }
        var servers: [NodeID: ServerAddresses] = [:]
        for _ in 0..<count {
            let at = r.offset
            let id = try r.u64()
            guard id != 0,
                  let raft = PeerAddress(parsing: String(decoding: try r.bytes(), as: UTF8.self)),
                  let http = PeerAddress(parsing: String(decoding: try r.bytes(), as: UTF8.self)) else {
                throw PeerFrameError(offset: at, message: "bad server entry")
            }
            servers[NodeID(rawValue: id)] = ServerAddresses(raft: raft, http: http)
        }
        guard r.remaining == 0 else { throw PeerFrameError(offset: r.offset, message: "trailing bytes in a server list") }
        return servers
    }
}
