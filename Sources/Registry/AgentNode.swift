import DNSWire

/// The node an agent-endpoint request acts on.
///
/// Disco has no agent per host, so the "agent" of a request is the client's host: its node is
/// named after the client's IP address (`ip-10-0-0-5`, `ip6-2001-db8--1`) and has that address.
/// The same instance registered from the same host through any server is then the same
/// (node, ID), so a re-registration through another server is the no-op it would be on a local
/// Consul agent. A client may name its node instead (the API's `X-Disco-Agent-Node` header).
public enum AgentNode {
    /// Prefix of a node named after an IPv4 address: `ip-` + the dotted quad with `-` for `.`.
    public static let ipv4NamePrefix = "ip-"
    /// Prefix of a node named after an IPv6 address: `ip6-` + RFC 5952 text with `-` for `:`.
    public static let ipv6NamePrefix = "ip6-"

    /// The node of the host at `address` (an IP literal, as a socket or a forwarding server
    /// reports it), or nil if `address` is not one. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`,
    /// what a dual-stack socket reports for an IPv4 client) is that IPv4 host; an IPv6 zone
    /// (`%eth0`) is dropped. The name is always one DNS label (at most 4 + 39 bytes), so
    /// `NODE.node.DOMAIN` answers it.
    public static func record(forClientAddress address: String) -> NodeRecord? {
        guard let canonical = canonicalAddress(address) else { return nil }
        if canonical.contains(":") {
            return NodeRecord(name: ipv6NamePrefix + String(canonical.map { $0 == ":" ? "-" : $0 }), address: canonical)
        }
        return NodeRecord(name: ipv4NamePrefix + String(canonical.map { $0 == "." ? "-" : $0 }), address: canonical)
    }

    /// `address` in one spelling per host: dotted quad for IPv4 (also when IPv4-mapped), RFC 5952
    /// for IPv6, without a zone; nil if it is not an IP literal.
    public static func canonicalAddress(_ address: String) -> String? {
        let bare = address.split(separator: "%", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? address
        if let v4 = IPv4Address(bare) { return v4.description }
        guard let v6 = IPv6Address(bare) else { return nil }
        if v6.bytes.prefix(12).elementsEqual([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF]) {
            return IPv4Address(v6.bytes[12], v6.bytes[13], v6.bytes[14], v6.bytes[15]).description
        }
        return v6.description
    }

    /// Whether `name` may name an agent node: one DNS label of letters, digits, `-` and `_`, at
    /// most 63 bytes (what the service view puts under `node.DOMAIN`).
    public static func isValidName(_ name: String) -> Bool { ServiceView.isLabel(name) }
}
