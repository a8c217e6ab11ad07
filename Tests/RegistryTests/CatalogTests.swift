import Foundation
import Registry
import Testing

final class TemporaryDirectory {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("disco-registry-\(UUID().uuidString)")
    init() throws { try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true) }
    func path(_ name: String) -> String { url.appendingPathComponent(name).path }
    deinit { try? FileManager.default.removeItem(at: url) }
}

let node1 = NodeRecord(name: "node1", address: "10.0.0.1")
let node2 = NodeRecord(name: "node2", address: "10.0.0.2")

func web(_ id: String, on node: NodeRecord = node1, address: String = "", tags: [String] = []) -> CatalogCommand {
    .register(node: node, service: ServiceInstance(id: id, node: node.name, name: "web", tags: tags, address: address, port: 80),
              checks: [], replaceChecks: false)
}

func ttlCheck(_ id: String, service: String, on node: NodeRecord = node1, status: HealthStatus? = nil) -> CheckRegistration {
    CheckRegistration(CheckRecord(id: id, node: node.name, name: id, serviceID: service, status: status ?? .critical,
                                  definition: CheckDefinition(ttlSeconds: 10)), statusGiven: status != nil)
}

/// Applies commands at consecutive indices starting after the catalog's applied index, then
/// commits them as the Raft driver does at the end of a Ready.
@discardableResult
func apply(_ catalog: Catalog, _ commands: CatalogCommand...) throws -> [CatalogChange?] {
    var changes: [CatalogChange?] = []
    for command in commands { changes.append(try catalog.apply(index: catalog.appliedIndex + 1, data: command.encoded)) }
    try catalog.commitApplied()
    return changes
}

@Suite("catalog state machine")
struct CatalogTests {
    @Test func commandsRoundTripThroughTheirEntryEncoding() throws {
        let command = CatalogCommand.batch([web("a"), .updateCheck(node: "n", checkID: "c", status: .warning, output: "slow"),
                                            .deregister(node: "n", serviceID: nil, checkID: "c")])
        let bytes = command.encoded
        #expect(bytes.first == CatalogCommand.binaryEntryTag)
        #expect(try CatalogCommand(decoding: bytes) == command)
        #expect(throws: RegistryError.self) { try CatalogCommand(decoding: [CatalogCommand.entryTag, 0x7B]) }
        #expect(throws: RegistryError.self) { try CatalogCommand(decoding: [1, 2, 3]) }
    }

    @Test func reRegisteringTheSameInstanceCreatesNoNewIndex() throws {
        let directory = try TemporaryDirectory()
        let catalog = try Catalog(path: directory.path("registry.db"))
        let first = try apply(catalog, web("web-1"))[0]
        #expect(first?.services == ["web"])
        let index = catalog.state.modifyIndex(ofService: "web")
        #expect(index == 1)
        #expect(!catalog.state.wouldChange(web("web-1")))
        let again = try apply(catalog, web("web-1"))[0]
        #expect(again == nil)
        #expect(catalog.state.modifyIndex(ofService: "web") == index)
        #expect(catalog.state.instances(of: "web")[0].modifyIndex == index)
        #expect(catalog.appliedIndex == 2)
        // A real change does move it.
        try apply(catalog, web("web-1", tags: ["v2"]))
        #expect(catalog.state.modifyIndex(ofService: "web") == 3)
        #expect(catalog.state.instances(of: "web")[0].createIndex == 1)
    }

    @Test func aChangeToOneServiceLeavesTheOthersIndexAlone() throws {
        let directory = try TemporaryDirectory()
        let catalog = try Catalog(path: directory.path("registry.db"))
        let db = CatalogCommand.register(node: node1, service: ServiceInstance(id: "db", node: "node1", name: "db", port: 5432),
                                         checks: [], replaceChecks: false)
        try apply(catalog, web("web-1"), db)
        let dbIndex = catalog.state.modifyIndex(ofService: "db")
        let change = try apply(catalog, web("web-2"))[0]
        #expect(change?.services == ["web"])
        #expect(catalog.state.modifyIndex(ofService: "db") == dbIndex)
        #expect(catalog.state.modifyIndex(ofService: "web") == 3)
        // A node-level check touches every service on the node.
        let nodeCheck = CatalogCommand.register(node: node1, service: nil, checks: [ttlCheck("node-alive", service: "")],
                                                replaceChecks: false)
        #expect(try apply(catalog, nodeCheck)[0]?.services == ["web", "db"])
    }

    @Test func deregisteringRemovesChecksAndKeepsTheServiceIndex() throws {
        let directory = try TemporaryDirectory()
        let catalog = try Catalog(path: directory.path("registry.db"))
        try apply(catalog, .register(node: node1, service: ServiceInstance(id: "web-1", node: "node1", name: "web"),
                                     checks: [ttlCheck("c1", service: "web-1")], replaceChecks: false))
        #expect(catalog.state.checks.count == 1)
        try apply(catalog, .deregister(node: "node1", serviceID: "web-1", checkID: nil))
        #expect(catalog.state.instances(of: "web").isEmpty)
        #expect(catalog.state.checks.isEmpty)
        #expect(catalog.state.serviceNames["web"] == nil)
        // The index of a service that is gone still says when it went: watchers see the removal.
        #expect(catalog.state.modifyIndex(ofService: "web") == 2)
        // Deregistering what is not there is a no-op on every server.
        #expect(try apply(catalog, .deregister(node: "node1", serviceID: "web-1", checkID: nil))[0] == nil)
        try apply(catalog, web("w", on: node2), .deregister(node: "node2", serviceID: nil, checkID: nil))
        #expect(catalog.state.nodes["node2"] == nil)
        #expect(catalog.state.instances(of: "web").isEmpty)
    }

    @Test func reRegistrationKeepsCheckStatusUnlessGiven() throws {
        let directory = try TemporaryDirectory()
        let catalog = try Catalog(path: directory.path("registry.db"))
        let service = ServiceInstance(id: "web-1", node: "node1", name: "web")
        let register = CatalogCommand.register(node: node1, service: service, checks: [ttlCheck("c1", service: "web-1")],
                                               replaceChecks: false)
        try apply(catalog, register)
        #expect(catalog.state.health(of: service) == .critical)
        try apply(catalog, .updateCheck(node: "node1", checkID: "c1", status: .passing, output: "ok"))
        #expect(catalog.state.health(of: service) == .passing)
        // The herd case: every agent re-registers what it had. No flap, no write.
        #expect(!catalog.state.wouldChange(register))
        #expect(try apply(catalog, register)[0] == nil)
        #expect(catalog.state.health(of: service) == .passing)
        // A status in the registration is applied.
        try apply(catalog, .register(node: node1, service: service, checks: [ttlCheck("c1", service: "web-1", status: .warning)],
                                     replaceChecks: false))
        #expect(catalog.state.health(of: service) == .warning)
        // replace-existing-checks drops the service's checks that are not listed.
        try apply(catalog, .register(node: node1, service: service, checks: [ttlCheck("c2", service: "web-1")], replaceChecks: true))
        #expect(catalog.state.checks(of: service).map(\.value.id) == ["c2"])
    }

    @Test func aRestartResumesAtTheAppliedIndex() throws {
        let directory = try TemporaryDirectory()
        let path = directory.path("registry.db")
        do {
            let catalog = try Catalog(path: path)
            try apply(catalog, web("web-1", tags: ["a"]), web("web-2", on: node2, address: "10.9.9.9"),
                      .register(node: node1, service: nil, checks: [ttlCheck("n", service: "", status: .warning)], replaceChecks: false))
        }
        let reopened = try Catalog(path: path)
        #expect(reopened.appliedIndex == 3)
        #expect(reopened.state.instances(of: "web").map(\.value.id) == ["web-1", "web-2"])
        #expect(reopened.state.instances(of: "web", tags: ["a"]).map(\.value.id) == ["web-1"])
        #expect(reopened.state.address(of: reopened.state.instances(of: "web")[0].value) == "10.0.0.1")
        #expect(reopened.state.health(of: reopened.state.instances(of: "web")[0].value) == .warning)
        #expect(reopened.state.index == 3)
        #expect(reopened.state.modifyIndex(ofService: "web") == 3)
        // The Raft core replays entries at or below the applied index after a restart: skipped.
        #expect(try reopened.apply(index: 2, data: CatalogCommand.deregister(node: "node1", serviceID: nil, checkID: nil).encoded) == nil)
        #expect(reopened.state.nodes["node1"] != nil)
    }

    @Test func aMalformedEntryIsANoOpThatStillAdvancesTheIndex() throws {
        let directory = try TemporaryDirectory()
        let catalog = try Catalog(path: directory.path("registry.db"))
        #expect(try catalog.apply(index: 1, data: [CatalogCommand.entryTag, 0xFF, 0x00]) == nil)
        #expect(catalog.appliedIndex == 1)
        #expect(catalog.state.nodes.isEmpty)
    }

    @Test func observersSeeEveryChangeAndOnlyChanges() throws {
        let directory = try TemporaryDirectory()
        let catalog = try Catalog(path: directory.path("registry.db"))
        final class Seen: @unchecked Sendable {
            let lock = NSLock()
            var changes: [CatalogChange] = []
        }
        let seen = Seen()
        catalog.observe { change, state in
            #expect(state.index == change.index)
            seen.lock.withLock { seen.changes.append(change) }
        }
        try apply(catalog, web("a"), web("a"), web("b"))
        #expect(seen.lock.withLock { seen.changes.map(\.index) } == [1, 3])
    }

    /// `wouldChange` decides whether the API proposes at all, so it must agree with `apply`
    /// on every command: checked over a seeded random walk of registrations and updates.
    @Test(arguments: 1...20)
    func wouldChangeAgreesWithApply(seed: UInt64) throws {
        let directory = try TemporaryDirectory()
        let catalog = try Catalog(path: directory.path("registry.db"))
        var random = SplitMix(seed: seed)
        let nodes = [node1, node2, NodeRecord(name: "node1", address: "10.0.0.9")]
        for _ in 0..<300 {
            let node = nodes[random.below(nodes.count)]
            let id = "s\(random.below(4))"
            let command: CatalogCommand
            switch random.below(6) {
            case 0, 1:
                let service = ServiceInstance(id: id, node: node.name, name: random.below(2) == 0 ? "web" : "db",
                                              tags: random.below(2) == 0 ? [] : ["t"], port: 80)
                let checks = random.below(2) == 0 ? [] : [ttlCheck("c\(id)", service: id, on: node,
                                                                  status: random.below(2) == 0 ? nil : .passing)]
                command = .register(node: node, service: service, checks: checks, replaceChecks: random.below(3) == 0)
            case 2:
                command = .updateCheck(node: node.name, checkID: "c\(id)", status: HealthStatus.allCases[random.below(3)], output: "")
            case 3:
                command = .deregister(node: node.name, serviceID: id, checkID: nil)
            case 4:
                command = .deregister(node: node.name, serviceID: nil, checkID: random.below(4) == 0 ? nil : "c\(id)")
            default:
                command = .register(node: node, service: nil, checks: [], replaceChecks: false)
            }
            let predicted = catalog.state.wouldChange(command)
            let change = try catalog.apply(index: catalog.appliedIndex + 1, data: command.encoded)
            #expect(predicted == (change != nil), "seed \(seed): \(command)")
        }
    }
}

/// A tiny seeded generator for the tests (the Raft core's SplitMix64 is internal to it).
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
}

@Suite("catalog health commands")
struct CatalogHealthCommandTests {
    /// A batched status change marks exactly the instances whose checks changed, so the DNS view
    /// re-derives them; the check runners are no catalog data and move no index.
    @Test func checkStatusesMarkTheirInstancesAndCheckRunnersMoveNoIndex() throws {
        let directory = try TemporaryDirectory()
        let catalog = try Catalog(path: directory.path("registry.db"))
        try apply(catalog, web("web-1"), web("web-2"),
                  .register(node: node1, service: nil, checks: [ttlCheck("t1", service: "web-1", status: .passing),
                                                                ttlCheck("t2", service: "web-2", status: .passing)],
                            replaceChecks: false))
        let index = catalog.state.index
        let change = try apply(catalog, .checkStatuses([CheckStatusUpdate(node: "node1", checkID: "t1", status: .critical,
                                                                          output: "TTL expired"),
                                                        CheckStatusUpdate(node: "node1", checkID: "gone", status: .critical,
                                                                          output: "")]))[0]
        #expect(change?.instances == [NodeScopedID(node: "node1", id: "web-1")])
        #expect(catalog.state.health(of: catalog.state.services[NodeScopedID(node: "node1", id: "web-1")]!.value) == .critical)
        #expect(catalog.state.index == index + 1)
        // The same status again changes nothing.
        #expect(!catalog.state.wouldChange(.checkStatuses([CheckStatusUpdate(node: "node1", checkID: "t1", status: .critical,
                                                                             output: "TTL expired")])))
        let runners = try apply(catalog, .checkRunners([3, 1, 2]))[0]
        #expect(runners?.checkRunnersChanged == true)
        #expect(runners?.instances == [])
        #expect(catalog.state.checkRunners == [1, 2, 3])
        #expect(catalog.state.index == index + 1)
        // Kept across a restart.
        #expect(try Catalog(path: directory.path("registry.db")).state.checkRunners == [1, 2, 3])
    }
}

