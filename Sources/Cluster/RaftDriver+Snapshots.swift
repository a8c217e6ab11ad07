#if canImport(Glibc)
import Glibc
#endif
import Logging
import NIOCore
import Raft
import Store

/// The first byte of a normal log entry says which state machine it is for. The driver keeps
/// a range for its own commands; the rest goes to the application's dispatch.
///
/// - `0x01...0x2F`: the KV store (`KVCommand`)
/// - `0x30...0x3F`: the driver itself (operator snapshot restore, server addresses)
/// - `0x40...`: the registry
public enum ClusterCommandTag {
    /// An operator's `discoctl snapshot restore`: the tag, then a `SnapshotContainer`.
    public static let snapshotRestore: UInt8 = 0x30
    /// The Raft and HTTP addresses of the servers (membership, see `ServerAddressBook`).
    public static let servers: UInt8 = 0x31
    /// Every tag the driver applies itself.
    public static let driverRange: ClosedRange<UInt8> = 0x30...0x3F
}

/// Snapshots and log compaction (paper §7).
///
/// **Trigger.** Every `snapshotIntervalEntries` applied entries the driver *captures* the
/// state machines (one `SnapshotContainer` with a section per participant, taken on the loop
/// between applies, so all of them are at the same index). The log is *compacted* through that
/// capture only once `snapshotTrailingEntries` more entries have applied: a follower up to that
/// many entries behind still catches up from the log instead of receiving the whole snapshot.
/// The stored log therefore holds between `trailing` and `interval + trailing` entries.
///
/// **Install.** A snapshot from the leader is first persisted in raft.db (contract step 1),
/// then every participant replaces its database atomically; applying continues after the
/// snapshot's index. A crash between the two is repaired at start: a participant whose applied
/// index is below raft.db's snapshot is restored from it again.
extension RaftDriver {
    /// Default `Options.snapshotIntervalEntries`: 8192 entries of a few hundred bytes is a few MB of
    /// log to replay at start, and a snapshot (a copy of every state machine, fsynced) every 8192
    /// writes costs well under 1% of write throughput.
    public static let snapshotIntervalEntriesDefault: UInt64 = 8192
    /// Default `Options.snapshotTrailingEntries`: 1024 entries, about 1 s of writes at full load,
    /// covers a follower that missed a few heartbeats' worth of appends.
    public static let snapshotTrailingEntriesDefault: UInt64 = 1024

    /// The state machines now, as a snapshot container (GET /v1/snapshot): pinned on the loop,
    /// encoded on `snapshotWriter`.
    public func takeSnapshot() -> EventLoopFuture<[UInt8]> {
        loop.flatSubmit {
            let promise = self.loop.makePromise(of: [UInt8].self)
            do {
                let pinned = try self.pinCapture()
                self.snapshotWriter.async { promise.completeWith(Result { try pinned.encoded() }) }
            } catch {
                promise.fail(error)
            }
            return promise.futureResult
        }
    }

    /// Checks an operator's snapshot completely, without changing anything: the container, and
    /// a restorable section for every state machine. Runs on the caller's thread.
    public func validateRestore(_ bytes: [UInt8]) throws -> SnapshotContainer {
        guard bytes.count <= SnapshotContainer.bytesMax else {
            throw SnapshotError(offset: 0, message: "\(bytes.count) bytes is over the \(SnapshotContainer.bytesMax)-byte limit")
        }
        let container = try SnapshotContainer(decoding: bytes)
        try check(container, restorable: true)
        return container
    }

    /// Replaces every state machine on every server with `snapshot` (an operator's restore), as
    /// one log entry: it takes effect at one index, in order with the writes around it, and on
    /// servers that are down when it commits as soon as they catch up. Validate it first with
    /// `validateRestore`; the future fails with `SnapshotError` if it was refused when applied.
    public func proposeRestore(_ snapshot: [UInt8]) -> EventLoopFuture<LogIndex> {
        propose([ClusterCommandTag.snapshotRestore] + snapshot).flatMapThrowing { index in
            // On `loop`: the promise was made there.
            if let failure = self.restoreFailures.removeValue(forKey: index) { throw failure }
            return index
        }
    }

    // MARK: - On `loop`

    /// The state machines as of the applied index, pinned (cheap: a read transaction each) and
    /// read later, off the loop, by `PinnedCapture.encoded` (issue 16: serialising a 20 MB state
    /// here held the Raft thread, and with it the heartbeats, for 110-500 ms).
    func pinCapture() throws -> PinnedCapture {
        let index = node.appliedIndex
        var sections: [(name: String, image: PinnedImage)] = []
        for participant in participants { sections.append((participant.snapshotName, try participant.pinSnapshotData())) }
        sections.append((Self.serversSection, PinnedImage(taken: ServerList.encode(replicatedServers))))
        return PinnedCapture(index: index, term: node.term(at: index) ?? .zero, sections: sections)
    }

    /// Every section is accepted by its participant. An operator's restore (`restorable`) must
    /// have a section for every participant and none that nobody here knows (it would be silently
    /// lost). A Raft snapshot may lack a participant's section: it was taken by a server that did
    /// not have that state machine yet (a rolling upgrade), and that participant is left as it is.
    func check(_ container: SnapshotContainer, restorable: Bool) throws {
        for participant in participants {
            guard let data = container.section(participant.snapshotName) else {
                if !restorable || participant.isOptionalInRestore { continue }
                throw SnapshotError(offset: 0, message: "no section '\(participant.snapshotName)' (sections: \(container.sections.map(\.name)))")
            }
            do {
                try participant.validateSnapshot(data)
            } catch {
                throw SnapshotError(offset: 0, message: "section '\(participant.snapshotName)' cannot be restored: \(error)")
            }
        }
        if restorable {
            let known = Set(participants.map(\.snapshotName)).union(Self.driverSections)
            if let unknown = container.sections.first(where: { !known.contains($0.name) }) {
                throw SnapshotError(offset: 0, message: "unknown section '\(unknown.name)'")
            }
        }
    }

    /// Sections the driver writes for itself (not restored by an operator's restore).
    static var driverSections: Set<String> { [serversSection] }
    /// The section with the replicated server addresses.
    static var serversSection: String { "servers" }

    /// After `advance`: capture every interval, compact once the trailing entries applied.
    /// Returns false if the driver had to stop.
    func maybeSnapshot() -> Bool {
        let applied = node.appliedIndex
        if let pending = pendingCapture, pending.index <= node.snapshotIndex { pendingCapture = nil }
        if pendingCapture == nil, !captureInFlight, !snapshotWriteInFlight,
           applied.rawValue >= max(node.snapshotIndex.rawValue, lastCaptureIndex.rawValue) + options.snapshotIntervalEntries {
            lastCaptureIndex = applied
            let started = NIODeadline.now()
            defer { lastCaptureNanoseconds = (NIODeadline.now() - started).nanoseconds }
            do {
                let pinned = try pinCapture()
                captureInFlight = true
                snapshotWriter.async {
                    let encoded = Result { try pinned.encoded() }
                    self.loop.execute { self.captured(pinned.index, encoded) }
                }
            } catch {
                logger.error("cannot take a snapshot; the log is not compacted", metadata: ["raft.error": "\(error)"])
            }
        }
        guard let pending = pendingCapture, applied.rawValue >= pending.index.rawValue + options.snapshotTrailingEntries else {
            return true
        }
        pendingCapture = nil
        node.compact(through: pending.index, data: pending.data)
        guard let snapshot = node.snapshot else { preconditionFailure("compacted without a snapshot") }
        writeSnapshotFile(snapshot)
        return true
    }

    /// A capture pinned by `maybeSnapshot` was encoded: it compacts the log once the trailing
    /// entries have applied after it (checked after every Ready).
    private func captured(_ index: LogIndex, _ encoded: Result<[UInt8], any Error>) {
        captureInFlight = false
        guard stoppedReason == nil else { return }
        switch encoded {
        case .success(let bytes) where bytes.count > SnapshotContainer.bytesMax:
            logger.error("snapshot too large to send to followers; the log is not compacted",
                         metadata: ["raft.snapshot.bytes": "\(bytes.count)", "raft.snapshot.bytes_max": "\(SnapshotContainer.bytesMax)"])
        case .success(let bytes):
            // A snapshot from the leader installed meanwhile is newer: this one is dropped.
            if index > node.snapshotIndex { pendingCapture = (index, bytes) }
        case .failure(let error):
            logger.error("cannot take a snapshot; the log is not compacted", metadata: ["raft.error": "\(error)"])
        }
    }

    /// The compaction above was in memory only. raft.db still holds the previous snapshot and
    /// every entry after it, which is all a restart needs, so the new snapshot's bytes are
    /// written by `snapshotWriter`, off this thread, and raft.db names them once they are
    /// durable (issue 16: up to `SnapshotContainer.bytesMax` written and fsynced here held the
    /// heartbeats up). No capture starts while one is being written.
    private func writeSnapshotFile(_ snapshot: Snapshot) {
        snapshotWriteInFlight = true
        let file = storage.snapshotFilePath(for: snapshot.index)
        snapshotWriter.async {
            let written: Result<UInt32, RaftStorageError>
            do throws(RaftStorageError) {
                written = .success(try RaftStorage.writeSnapshotFile(snapshot.data, to: file))
            } catch {
                written = .failure(error)
            }
            self.loop.execute { self.snapshotFileWritten(snapshot, file: file, written) }
        }
    }

    private func snapshotFileWritten(_ snapshot: Snapshot, file: String, _ written: Result<UInt32, RaftStorageError>) {
        snapshotWriteInFlight = false
        // Stopped meanwhile: the file is not recorded, and the next start removes it.
        guard stoppedReason == nil else { return }
        do throws(RaftStorageError) {
            guard try storage.recordSnapshot(snapshot, file: file, crc: written.get()) else {
                logger.info("snapshot superseded by one installed from the leader", metadata: ["raft.snapshot.index": "\(snapshot.index)"])
                return
            }
        } catch {
            logger.critical("Raft storage failed; this server stops taking part", metadata: ["raft.error": "\(error)"])
            halt("storage failed: \(error)")
            return
        }
        countersBox.withLockedValue {
            $0.snapshotsTaken += 1
            $0.lastSnapshotBytes = snapshot.data.count
        }
        logger.info("snapshot taken, log compacted", metadata: [
            "raft.snapshot.index": "\(snapshot.index)", "raft.snapshot.bytes": "\(snapshot.data.count)",
            "raft.first_index": "\(node.firstIndex)",
        ])
    }

    /// Installs a snapshot from the leader, already persisted in raft.db.
    func install(snapshot: Snapshot) throws {
        logger.info("installing snapshot", metadata: [
            "raft.snapshot.index": "\(snapshot.index)", "raft.snapshot.bytes": "\(snapshot.data.count)",
        ])
        countersBox.withLockedValue {
            $0.snapshotsInstalled += 1
            $0.lastSnapshotBytes = snapshot.data.count
        }
        let container = try SnapshotContainer(decoding: snapshot.data)
        try check(container, restorable: false)
        if options.snapshotInstallPauseMilliseconds > 0 {
            usleep(UInt32(options.snapshotInstallPauseMilliseconds * 1000))
        }
        for participant in participants {
            guard let data = container.section(participant.snapshotName) else {
                logger.warning("the snapshot has no section for this state machine; left as it is",
                               metadata: ["raft.state_machine": "\(participant.snapshotName)"])
                continue
            }
            try participant.restoreSnapshot(data, appliedIndex: snapshot.index.rawValue)
        }
        if let data = container.section(Self.serversSection) { replicatedServers = try ServerList.decode(data) }
        if let pending = pendingCapture, pending.index <= snapshot.index { pendingCapture = nil }
        lastCaptureIndex = snapshot.index
        logger.info("snapshot installed", metadata: ["raft.snapshot.index": "\(snapshot.index)"])
    }

    /// At start: a participant behind raft.db's snapshot (a crash during an install, or writes
    /// its file lost) is restored from it; the log replays the rest.
    func restoreParticipantsBehind(_ snapshot: Snapshot) throws(RaftStorageError) {
        let behind = participants.filter { $0.appliedIndex < snapshot.index.rawValue }
        guard !behind.isEmpty else { return }
        do {
            let container = try SnapshotContainer(decoding: snapshot.data)
            try check(container, restorable: false)
            for participant in behind where container.section(participant.snapshotName) != nil {
                logger.info("state machine behind the snapshot: restoring it", metadata: [
                    "raft.state_machine": "\(participant.snapshotName)", "raft.applied": "\(participant.appliedIndex)",
                    "raft.snapshot.index": "\(snapshot.index)",
                ])
                try participant.restoreSnapshot(container.section(participant.snapshotName)!, appliedIndex: snapshot.index.rawValue)
            }
        } catch {
            throw RaftStorageError(path: storage.path, message: "cannot restore the state machines from the snapshot at \(snapshot.index): \(error)")
        }
    }

    /// An operator's restore entry: validated again (every server decides the same), then every
    /// participant is replaced. Returns false if the driver had to stop.
    func applyRestore(_ entry: Entry) -> Bool {
        let container: SnapshotContainer
        do {
            container = try SnapshotContainer(decoding: Array(entry.data.dropFirst()))
            try check(container, restorable: true)
        } catch {
            // Refused at the API already, so this is unexpected; deterministic on every server.
            logger.error("operator snapshot restore refused", metadata: ["raft.index": "\(entry.index)", "raft.error": "\(error)"])
            if pending[entry.index] != nil {
                restoreFailures[entry.index] = error as? SnapshotError ?? SnapshotError(offset: 0, message: "\(error)")
            }
            return true
        }
        do {
            for participant in participants {
                // `check` let a section be absent only where the participant allows it.
                guard let data = container.section(participant.snapshotName) else { continue }
                try participant.restoreSnapshot(data, appliedIndex: entry.index.rawValue)
            }
        } catch {
            logger.critical("cannot apply an operator snapshot restore; this server stops taking part",
                            metadata: ["raft.index": "\(entry.index)", "raft.error": "\(error)"])
            halt("restore failed: \(error)")
            return false
        }
        logger.info("state machines restored from an operator's snapshot", metadata: [
            "raft.index": "\(entry.index)", "raft.snapshot.index": "\(container.index)",
        ])
        return true
    }
}

/// A capture of the state machines at one index: pinned on the driver's loop, encoded as a
/// `SnapshotContainer` on any thread.
struct PinnedCapture: Sendable {
    let index: LogIndex
    let term: Term
    let sections: [(name: String, image: PinnedImage)]

    func encoded() throws -> [UInt8] {
        SnapshotContainer(index: index.rawValue, term: term.rawValue, sections: try sections.map { ($0.name, try $0.image.serialize()) }).encoded
    }
}
