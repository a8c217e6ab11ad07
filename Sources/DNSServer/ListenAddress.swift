import CShims
#if canImport(Glibc)
import Glibc
#endif

/// An address to serve DNS on: `HOST:PORT` or `[IPV6]:PORT`.
public struct ListenAddress: Hashable, Sendable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses `127.0.0.1:8600`, `[::1]:53`, `0.0.0.0:53`. Hosts must be IP literals.
    public init?(_ text: String) {
        var host: Substring
        var portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { return nil }
            host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else { return nil }
            portText = rest.dropFirst()
        } else {
            guard let colon = text.lastIndex(of: ":") else { return nil }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
            if host.contains(":") { return nil }  // IPv6 needs brackets
        }
        guard let port = Int(portText), (0...65535).contains(port) else { return nil }
        var storage = sockaddr_storage()
        guard disco_parse_address(String(host), UInt16(port), &storage) > 0 else { return nil }
        self.host = String(host)
        self.port = port
    }

    public var isIPv6: Bool { host.contains(":") }

    /// 0.0.0.0 or ::, where replies must name their source address explicitly.
    public var isWildcard: Bool { host == "0.0.0.0" || host == "::" || host.allSatisfy { $0 == ":" || $0 == "0" } }

    public var description: String { isIPv6 ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// The socket address, for bind(2).
    func sockaddr() -> (sockaddr_storage, socklen_t) {
        var storage = sockaddr_storage()
        let length = disco_parse_address(host, UInt16(port), &storage)
        precondition(length > 0, "ListenAddress holds an unparseable host \(host)")
        return (storage, length)
    }
}
