#if canImport(Glibc)
import Glibc
#endif
import Raft

/// The bytes of a snapshot this server took itself, in a file of their own beside raft.db
/// (`raft.db-snapshot-<index>`), named by raft.db's snapshot row with their CRC-32.
///
/// Why not a blob in raft.db (issue 16): the state machines' copy, up to
/// `SnapshotContainer.bytesMax`, went through raft.db's WAL, its fsync and later a checkpoint,
/// all on the Raft thread, which also sends the heartbeats. A file is written once, by a thread
/// of its own (`RaftDriver.snapshotWriter`), and raft.db records it only once it is durable:
/// until then raft.db keeps the previous snapshot and every entry after it, which is enough
/// for a restart. etcd keeps its snapshots in files too.
///
/// A crash leaves at most a file that raft.db does not name (half written, or written and not
/// yet recorded, or replaced and not yet removed): `RaftStorage` removes those when it opens.
enum SnapshotFile {
    /// The file names of a snapshot beside `databasePath` start with this.
    static func prefix(of databasePath: String) -> String { basename(databasePath) + "-snapshot-" }

    static func path(beside databasePath: String, index: LogIndex) -> String {
        path(beside: databasePath, named: prefix(of: databasePath) + "\(index.rawValue)")
    }

    /// The file called `name` in the directory of `databasePath` (raft.db names its file so).
    static func path(beside databasePath: String, named name: String) -> String {
        directory(of: databasePath) + "/" + name
    }

    static func directory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }

    static func basename(_ path: String) -> String {
        path.lastIndex(of: "/").map { String(path[path.index(after: $0)...]) } ?? path
    }

    /// Writes `data` durably at `path` (a temporary file, fsynced, renamed, and the directory
    /// fsynced); returns its CRC-32. Any thread.
    static func write(_ data: [UInt8], to path: String) throws(RaftStorageError) -> UInt32 {
        let temporary = path + ".tmp"
        func failure(_ what: String) -> RaftStorageError {
            RaftStorageError(path: path, message: "cannot \(what) the snapshot file: \(String(cString: strerror(errno)))")
        }
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw failure("create") }
        let written = data.withUnsafeBytes { bytes in
            var done = 0
            while done < bytes.count {
                let n = Glibc.write(fd, bytes.baseAddress! + done, bytes.count - done)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return false }
                done += n
            }
            return true
        }
        guard written, fsync(fd) == 0 else {
            let error = failure("write")
            close(fd)
            unlink(temporary)
            throw error
        }
        close(fd)
        guard rename(temporary, path) == 0 else {
            let error = failure("rename")
            unlink(temporary)
            throw error
        }
        // The new name must survive a crash as well as the bytes.
        let directoryFD = open(directory(of: path), O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard directoryFD >= 0 else { throw failure("sync the directory of") }
        defer { close(directoryFD) }
        guard fsync(directoryFD) == 0 else { throw failure("sync the directory of") }
        return CRC32.checksum(data[...])
    }

    /// Reads the file at `path` and checks it against `crc`: a missing, oversized, short or
    /// damaged file is an error naming it.
    static func read(_ path: String, crc: UInt32, bytesMax: Int) throws(RaftStorageError) -> [UInt8] {
        func corrupt(_ message: String) -> RaftStorageError {
            RaftStorageError(path: path, message: "corrupt Raft snapshot: \(message)")
        }
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw corrupt("cannot open it: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw corrupt("cannot stat it: \(String(cString: strerror(errno)))") }
        let size = Int(info.st_size)
        guard size <= bytesMax else { throw corrupt("\(size) bytes is over the \(bytesMax)-byte limit") }
        var data = [UInt8](repeating: 0, count: size)
        let read = data.withUnsafeMutableBytes { bytes in
            var done = 0
            while done < bytes.count {
                let n = Glibc.read(fd, bytes.baseAddress! + done, bytes.count - done)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { break }
                done += n
            }
            return done
        }
        guard read == size else { throw corrupt("read \(read) of its \(size) bytes") }
        guard CRC32.checksum(data[...]) == crc else { throw corrupt("it fails its checksum (damaged on disk)") }
        return data
    }

    /// The snapshot files (and temporary files) beside `databasePath`, by full path.
    static func all(beside databasePath: String) -> [String] {
        let directory = directory(of: databasePath)
        let prefix = prefix(of: databasePath)
        guard let handle = opendir(directory) else { return [] }
        defer { closedir(handle) }
        var found: [String] = []
        while let entry = readdir(handle) {
            let name = withUnsafePointer(to: entry.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            if name.hasPrefix(prefix) { found.append(directory + "/" + name) }
        }
        return found
    }

    static func remove(_ path: String) { unlink(path) }
}
