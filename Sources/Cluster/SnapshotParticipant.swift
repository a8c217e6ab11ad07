import Store

/// A replicated state machine whose state goes into Raft snapshots (KVStore; the registry's
/// catalog). The driver calls every method on its own loop, between applies, so the state seen
/// by `snapshotData` is exactly that of `appliedIndex`.
public protocol SnapshotParticipant: AnyObject, Sendable {
    /// The section of the snapshot that holds this state machine ("kv", "registry"): unique per
    /// server, stable across versions, at most `SnapshotContainer.sectionNameBytesMax` bytes.
    var snapshotName: String { get }
    /// The last log index whose effect is durable in this state machine (0 if none). At start the
    /// driver restores a state machine found behind the Raft snapshot (its file lost writes, or a
    /// crash interrupted an install).
    var appliedIndex: UInt64 { get }
    /// The whole state, as of `appliedIndex`.
    func snapshotData() throws -> [UInt8]
    /// The whole state as of `appliedIndex`, pinned now and serialised later, on another thread,
    /// while applies go on: the driver takes its snapshots this way, off the Raft thread.
    /// Default: `snapshotData()`, taken now.
    func pinSnapshotData() throws -> PinnedImage
    /// Checks that `data` could be restored, without changing anything (an operator's restore
    /// is validated on every section before any is applied).
    func validateSnapshot(_ data: [UInt8]) throws
    /// Replaces the whole state with `data`, atomically (a crash leaves the old state or the new),
    /// and records `appliedIndex` as the last applied index in the same step.
    func restoreSnapshot(_ data: [UInt8], appliedIndex: UInt64) throws
    /// An operator's restore may lack this section (a snapshot taken before this state machine
    /// existed): it is then left as it is. Default false: the section is required.
    var isOptionalInRestore: Bool { get }
    /// Makes the entries applied since the last call one committed transaction (the driver calls
    /// it once per Ready, after the Ready's entries are applied, and before a snapshot is taken).
    /// A state machine that commits each entry by itself has nothing to do.
    func commitApplied() throws
}

extension SnapshotParticipant {
    public var isOptionalInRestore: Bool { false }

    public func pinSnapshotData() throws -> PinnedImage { PinnedImage(taken: try snapshotData()) }

    public func commitApplied() throws {}

    /// The default check for state machines kept in SQLite (`Database.serialize`): the bytes must
    /// be a sound SQLite database.
    public func validateSnapshot(_ data: [UInt8]) throws {
        _ = try Database(deserializing: data, name: "snapshot section '\(snapshotName)'")
    }
}
