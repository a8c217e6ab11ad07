import Registry
import Testing

/// The agent node of a client is named after its address, in one spelling per host.
@Suite struct AgentNodeTests {
    @Test(arguments: [
        ("10.0.0.5", "ip-10-0-0-5", "10.0.0.5"),
        ("127.0.0.1", "ip-127-0-0-1", "127.0.0.1"),
        ("::ffff:10.0.0.5", "ip-10-0-0-5", "10.0.0.5"),
        ("::FFFF:0a00:0005", "ip-10-0-0-5", "10.0.0.5"),
        ("2001:db8::1", "ip6-2001-db8--1", "2001:db8::1"),
        ("2001:0DB8:0000:0000:0000:0000:0000:0001", "ip6-2001-db8--1", "2001:db8::1"),
        ("::1", "ip6---1", "::1"),
        ("fe80::1%eth0", "ip6-fe80--1", "fe80::1"),
        ("2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff", "ip6-2001-db8-aaaa-bbbb-cccc-dddd-eeee-ffff", "2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff"),
    ])
    func namedAfterTheAddress(address: String, name: String, canonical: String) {
        let node = AgentNode.record(forClientAddress: address)
        #expect(node?.name == name)
        #expect(node?.address == canonical)
        #expect(node.map { AgentNode.isValidName($0.name) } == true)
    }

    @Test(arguments: ["", "host.example", "10.0.0", "unix:/run/x", "::g"])
    func notAnAddressHasNoNode(address: String) {
        #expect(AgentNode.record(forClientAddress: address) == nil)
    }

    @Test func namesAreOneLabel() {
        #expect(AgentNode.isValidName("build-7"))
        #expect(AgentNode.isValidName("web_1"))
        #expect(!AgentNode.isValidName(""))
        #expect(!AgentNode.isValidName("a.b"))
        #expect(!AgentNode.isValidName("a b"))
        #expect(!AgentNode.isValidName(String(repeating: "a", count: 64)))
        #expect(AgentNode.isValidName(String(repeating: "a", count: 63)))
    }
}
