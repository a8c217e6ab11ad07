import Cluster

extension ClusterRuntime {
    /// Hidden knobs for tests and experiments, deliberately not configuration keys:
    /// `DISCO_SNAPSHOT_ENTRIES` (snapshot interval in entries; the trailing window is an eighth of
    /// it) and `DISCO_FAILPOINT_SNAPSHOT_INSTALL_PAUSE_MS` (pause inside a snapshot install, so a
    /// test can kill the server there).
    static func driverOptions(_ environment: [String: String]) throws(StartError) -> RaftDriver.Options {
        var options = RaftDriver.Options()
        if let text = environment["DISCO_SNAPSHOT_ENTRIES"] {
            guard let entries = UInt64(text), entries >= snapshotIntervalEntriesMin else {
                throw StartError(code: .config, message: "DISCO_SNAPSHOT_ENTRIES: expected an integer of at least \(snapshotIntervalEntriesMin), got '\(text)'")
            }
            options.snapshotIntervalEntries = entries
            options.snapshotTrailingEntries = entries / 8
        }
        if let text = environment["DISCO_FAILPOINT_SNAPSHOT_INSTALL_PAUSE_MS"] {
            guard let milliseconds = Int64(text), milliseconds >= 0 else {
                throw StartError(code: .config, message: "DISCO_FAILPOINT_SNAPSHOT_INSTALL_PAUSE_MS: expected a non-negative integer, got '\(text)'")
            }
            options.snapshotInstallPauseMilliseconds = milliseconds
        }
        return options
    }

    /// The smallest snapshot interval accepted: below it snapshots would be taken almost per write.
    static let snapshotIntervalEntriesMin: UInt64 = 8
}
