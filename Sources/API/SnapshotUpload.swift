#if canImport(Glibc)
import Glibc
#endif
import NIOCore

/// Why an upload could not be stored (the environment failing: disk full, directory gone).
struct SnapshotUploadError: Error, CustomStringConvertible {
    var path: String
    var operation: String
    var errno: Int32

    var description: String { "\(operation) \(path): \(String(cString: strerror(errno)))" }
    /// ENOSPC and EDQUOT are the client's to hear about as 507; the rest is the server's (500).
    var isOutOfSpace: Bool { errno == ENOSPC || errno == EDQUOT }
}

/// A snapshot restore's body on its way to disk (issue 13.3): each part of the body is written
/// to a file of its own in the data directory as it arrives, so a 64 MiB upload costs a
/// server no memory while it trickles in; the restore reads the file once it is complete.
///
/// Lifecycle, one owner at a time: the connection's handler creates it at the request head and
/// appends on its event loop; at the end of the body it is handed to the restore (a thread
/// pool: `syncAndRead`), and back; the handler removes it after the answer, or when the client
/// goes away mid-body. `@unchecked Sendable` for that hand-off: the restore runs between the
/// handler's last append and its `remove`, ordered by the futures in between.
final class SnapshotUploadFile: @unchecked Sendable {
    /// Name: `snapshot-upload-<pid>-<random>.tmp`. A crash leaves one behind; start-up removes them.
    static let namePrefix = "snapshot-upload-"
    static let nameSuffix = ".tmp"
    /// Unique names tried before giving up (a clash of 64 random bits is an attack or a bug).
    static let createAttemptsMax = 4

    let path: String
    private var fd: Int32
    private(set) var bytesWritten = 0

    /// Creates the file with `O_EXCL`: never opens one that exists (a symlink planted there,
    /// another upload's file).
    init(directory: String) throws(SnapshotUploadError) {
        var attempt = 0
        while true {
            let name = "\(Self.namePrefix)\(getpid())-\(String(UInt64.random(in: .min ... .max), radix: 16))\(Self.nameSuffix)"
            let path = directory + "/" + name
            let fd = open(path, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0o600)
            if fd >= 0 {
                self.path = path
                self.fd = fd
                return
            }
            let error = errno
            attempt += 1
            guard error == EEXIST, attempt < Self.createAttemptsMax else {
                throw SnapshotUploadError(path: path, operation: "create", errno: error)
            }
        }
    }

    deinit {
        if fd >= 0 { close(fd) }
    }

    /// Appends the readable bytes of `buffer` (a page-cache write: microseconds per part, on
    /// the event loop).
    func append(_ buffer: ByteBuffer) throws(SnapshotUploadError) {
        precondition(fd >= 0, "append to a closed upload file")
        let failure: Int32? = buffer.withUnsafeReadableBytes { bytes in
            var offset = 0
            while offset < bytes.count {
                let written = write(fd, bytes.baseAddress! + offset, bytes.count - offset)
                if written < 0 {
                    if errno == EINTR { continue }
                    return errno
                }
                offset += written
            }
            return nil
        }
        if let failure { throw SnapshotUploadError(path: path, operation: "write", errno: failure) }
        bytesWritten += buffer.readableBytes
    }

    /// Makes the file durable (fsync) and reads it back whole: what the restore proposes. Off
    /// the event loop (fsync of 64 MiB can take a second).
    func syncAndRead() throws(SnapshotUploadError) -> [UInt8] {
        precondition(fd >= 0, "read of a closed upload file")
        guard fsync(fd) == 0 else { throw SnapshotUploadError(path: path, operation: "fsync", errno: errno) }
        let count = bytesWritten
        var failure: Int32?
        let bytes = [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
            var offset = 0
            while offset < count {
                let got = pread(fd, buffer.baseAddress! + offset, count - offset, off_t(offset))
                if got < 0 && errno == EINTR { continue }
                guard got > 0 else {
                    failure = got < 0 ? errno : EIO
                    break
                }
                offset += got
            }
            initialized = offset
        }
        if let failure { throw SnapshotUploadError(path: path, operation: "read", errno: failure) }
        return bytes
    }

    /// Closes and unlinks the file (whatever happened to the upload).
    func remove() {
        if fd >= 0 {
            close(fd)
            fd = -1
        }
        unlink(path)
    }

    /// Upload files left in `directory` by a server that crashed mid-upload; returns how many
    /// were removed.
    static func removeLeftovers(in directory: String) -> Int {
        guard let dir = opendir(directory) else { return 0 }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name.hasPrefix(namePrefix) && name.hasSuffix(nameSuffix) { names.append(name) }
        }
        return names.filter { unlink(directory + "/" + $0) == 0 }.count
    }
}
