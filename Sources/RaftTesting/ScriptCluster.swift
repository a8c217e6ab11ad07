import Raft

/// A hand-driven cluster for scripts and unit tests (etcd-io/raft's rafttest.InteractionEnv):
/// nothing happens unless asked, every Ready is persisted and synced at once, and sent messages
/// wait in one queue until delivered, dropped or cut off by a partition. Every action returns
/// the text a script shows, so a scenario reads line by line.
public struct ScriptCluster: Sendable {
    public struct Node: Sendable {
        public var raft: RaftNode
        public var disk = MemoryDisk()
        /// Normal entries applied, in order (the state machine of scripts).
        public var applied: [Entry] = []
        public var readStates: [ReadState] = []
        public var crashed = false
        public var config: RaftConfig
    }

    public private(set) var nodes: [NodeID: Node] = [:]
    /// Messages sent and not yet delivered, in send order.
    public private(set) var queue: [Message] = []
    /// Directed links that drop everything (`from → to`).
    public private(set) var cut: Set<Link> = []

    public struct Link: Hashable, Sendable {
        public var from: NodeID
        public var to: NodeID
        public init(from: NodeID, to: NodeID) {
            self.from = from
            self.to = to
        }
    }

    public init() {}

    public var ids: [NodeID] { nodes.keys.sorted() }

    public subscript(id: NodeID) -> RaftNode { nodes[id]!.raft }

    public func node(_ id: NodeID) -> Node? { nodes[id] }

    // MARK: - Setup

    /// Add a server with this configuration (and, optionally, a disk to start from).
    public mutating func add(config: RaftConfig) {
        precondition(nodes[config.id] == nil, "node \(config.id) exists")
        nodes[config.id] = Node(raft: RaftNode(config: config), config: config)
    }

    // MARK: - Driving

    public mutating func tick(_ id: NodeID, times: Int = 1) {
        guard let node = nodes[id], !node.crashed else { return }
        for _ in 0..<times { nodes[id]!.raft.tick() }
    }

    public mutating func campaign(_ id: NodeID) { nodes[id]!.raft.campaign() }

    public mutating func withNode<R>(_ id: NodeID, _ body: (inout RaftNode) throws(ProposalError) -> R)
        -> Result<R, ProposalError>
    {
        do throws(ProposalError) {
            return .success(try body(&nodes[id]!.raft))
        } catch {
            return .failure(error)
        }
    }

    /// Handle one Ready of `id` following the `Ready` contract; returns its description.
    public mutating func processReady(_ id: NodeID) -> [String] {
        guard var node = nodes[id], !node.crashed, node.raft.hasReady else { return [] }
        let ready = node.raft.ready()
        var lines = ["> \(id) handling Ready (\(ready.role.rawValue), leader \(ready.leader.map(\.description) ?? "-"))"]
        if let hard = ready.hardState { lines.append("  hard state: \(hard)") }
        if let snapshot = ready.snapshot { lines.append("  snapshot: \(snapshot)") }
        for entry in ready.entries { lines.append("  persist: \(entry)") }
        node.disk.write(ready)
        node.disk.sync()
        for message in ready.messages {
            // A partition loses what is sent into it, not only what is delivered across it.
            if cut.contains(Link(from: message.from, to: message.to)) || nodes[message.to]?.crashed != false {
                lines.append("  cut: \(message)")
            } else {
                lines.append("  send: \(message)")
                queue.append(message)
            }
        }
        if let snapshot = ready.snapshot {
            node.applied = ScriptCluster.decodeAppliedSnapshot(snapshot.data)
            lines.append("  install: \(snapshot)")
        }
        for entry in ready.committedEntries {
            lines.append("  apply: \(entry)")
            if entry.kind == .normal { node.applied.append(entry) }
        }
        for read in ready.readStates {
            lines.append("  read state: index=\(read.index) context=\(String(decoding: read.context, as: UTF8.self))")
            node.readStates.append(read)
        }
        node.raft.advance(ready)
        nodes[id] = node
        return lines
    }

    /// Deliver queued messages addressed to `ids` (all, if empty). Messages over a cut link or to
    /// a crashed node are dropped; with `drop` set, matching messages are dropped instead.
    public mutating func deliver(to ids: Set<NodeID> = [], drop: Bool = false) -> [String] {
        var lines: [String] = []
        var remaining: [Message] = []
        for message in queue {
            guard ids.isEmpty || ids.contains(message.to) else {
                remaining.append(message)
                continue
            }
            if drop || cut.contains(Link(from: message.from, to: message.to)) || nodes[message.to]?.crashed != false {
                lines.append("  dropped: \(message)")
                continue
            }
            lines.append("> \(message.to) receiving: \(message)")
            do throws(InvalidMessage) {
                try nodes[message.to]!.raft.step(message)
            } catch {
                lines.append("  refused: \(error.reason)")
            }
        }
        queue = remaining
        return lines
    }

    /// Process Readies and deliver messages until nothing moves (etcd's `stabilize`).
    public mutating func stabilize(_ ids: [NodeID] = []) -> [String] {
        let scope = ids.isEmpty ? self.ids : ids
        var lines: [String] = []
        while true {
            var progressed = false
            for id in scope {
                let out = processReady(id)
                if !out.isEmpty { progressed = true }
                lines += out
            }
            let targets = Set(scope)
            let pending = queue.contains { targets.contains($0.to) }
            if pending {
                lines += deliver(to: targets)
                progressed = true
            }
            if !progressed { return lines }
        }
    }

    // MARK: - Faults

    /// Symmetric partition: every link between different groups is cut.
    public mutating func partition(_ groups: [[NodeID]]) {
        cut = []
        for (a, groupA) in groups.enumerated() {
            for (b, groupB) in groups.enumerated() where a != b {
                for x in groupA { for y in groupB { cut.insert(Link(from: x, to: y)) } }
            }
        }
    }

    /// Asymmetric fault: `from` can no longer reach `to` (the other direction still works).
    public mutating func cutLink(from: NodeID, to: NodeID) { cut.insert(Link(from: from, to: to)) }

    public mutating func heal() { cut = [] }

    /// Power off `id`: unsynced writes are lost (none here: scripts sync every Ready).
    public mutating func crash(_ id: NodeID) {
        nodes[id]!.disk.crash()
        nodes[id]!.crashed = true
        queue.removeAll { $0.to == id }  // what was on its way to it is lost with it
    }

    /// Start `id` again from its disk, with a fresh state machine rebuilt from snapshot + log.
    public mutating func restart(_ id: NodeID) {
        var node = nodes[id]!
        node.raft = RaftNode(config: node.config, persistent: node.disk.durable)
        node.applied = node.disk.durable.snapshot.map { ScriptCluster.decodeAppliedSnapshot($0.data) } ?? []
        node.readStates = []
        node.crashed = false
        nodes[id] = node
    }

    /// The application of `id` snapshots its state at the applied index `index` and compacts.
    public mutating func compact(_ id: NodeID, through index: LogIndex) {
        var node = nodes[id]!
        let data = ScriptCluster.encodeAppliedSnapshot(node.applied.filter { $0.index <= index })
        node.raft.compact(through: index, data: data)
        if let snapshot = node.raft.snapshot { node.disk.saveSnapshot(snapshot) }
        nodes[id] = node
    }

    // The scripts' state machine is the list of applied entries; its snapshot is that list.
    static func encodeAppliedSnapshot(_ entries: [Entry]) -> [UInt8] {
        var bytes: [UInt8] = []
        for entry in entries {
            for value in [entry.term.rawValue, entry.index.rawValue, UInt64(entry.data.count)] {
                for k in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: value >> (8 * UInt64(k)))) }
            }
            bytes += entry.data
        }
        return bytes
    }

    static func decodeAppliedSnapshot(_ bytes: [UInt8]) -> [Entry] {
        var entries: [Entry] = []
        var offset = 0
        func read() -> UInt64 {
            var value: UInt64 = 0
            for k in 0..<8 { value |= UInt64(bytes[offset + k]) << (8 * UInt64(k)) }
            offset += 8
            return value
        }
        while offset < bytes.count {
            let term = read(), index = read(), count = Int(read())
            entries.append(Entry(term: Term(term), index: LogIndex(index), data: Array(bytes[offset..<offset + count])))
            offset += count
        }
        return entries
    }
}
