import DNSWire
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The repository root, from this file's path.
let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent()

/// The directory of the running test binary: the products of the same build (any
/// `--scratch-path`) are next to it.
let testProductsDirectory: URL? = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
    .map { URL(fileURLWithPath: $0).deletingLastPathComponent() }

/// A product of the build (discod, discoctl): next to the test binary, else under .build.
func builtProduct(_ name: String) throws -> URL {
    if let directory = testProductsDirectory {
        let url = directory.appendingPathComponent(name)
        if FileManager.default.isExecutableFile(atPath: url.path) { return url }
    }
    for configuration in ["debug", "release"] {
        let url = repositoryRoot.appendingPathComponent(".build/\(configuration)/\(name)")
        if FileManager.default.isExecutableFile(atPath: url.path) { return url }
    }
    throw TestFailure("\(name) is not built: run `swift build` first")
}

/// The discod binary built alongside the tests.
func discodBinary() throws -> URL {
    if let url = try? builtProduct("discod") { return url }
    for configuration in ["debug", "release"] {
        let url = repositoryRoot.appendingPathComponent(".build/\(configuration)/discod")
        if FileManager.default.isExecutableFile(atPath: url.path) { return url }
    }
    throw TestFailure("discod is not built: run `swift build` first")
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// A temporary directory removed when the test ends.
final class TemporaryDirectory {
    let url: URL
    init() throws {
        url = FileManager.default.temporaryDirectory.appendingPathComponent("disco-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }
    func write(_ name: String, _ text: String) throws {
        try text.write(to: url.appendingPathComponent(name), atomically: true, encoding: .utf8)
    }
    deinit { try? FileManager.default.removeItem(at: url) }
}

/// A real discod process on loopback port 0; killed and reaped on `stop()` or deinit.
/// @unchecked Sendable: `stderrText` is guarded by `lock`; the rest is set before the reader starts.
final class DiscodProcess: @unchecked Sendable {
    let process = Process()
    private let stderrPipe = Pipe()
    private let lock = NSLock()
    private var stderrText = ""
    private(set) var port: UInt16 = 0

    /// `launcher`: a program that execs discod with the arguments after its own (setpriv …).
    init(arguments: [String], environment: [String: String] = [:], launcher: [String] = []) throws {
        if let program = launcher.first {
            process.executableURL = URL(fileURLWithPath: program)
            process.arguments = launcher.dropFirst() + [try discodBinary().path] + arguments
        } else {
            process.executableURL = try discodBinary()
            process.arguments = arguments
        }
        var env = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("DISCO_") && $0.key != "NOTIFY_SOCKET" }
        env.merge(environment) { $1 }
        process.environment = env
        process.standardError = stderrPipe
        process.standardOutput = FileHandle.nullDevice
        stderrPipe.fileHandleForReading.readabilityHandler = { [weak self] handle in
            let data = handle.availableData
            guard let self, !data.isEmpty else { return }
            self.lock.withLock { self.stderrText += String(decoding: data, as: UTF8.self) }
        }
        try process.run()
    }

    /// Starts discod serving `zones` on 127.0.0.1:0 and waits for its start-up line.
    static func serving(zones: URL, extra: [String] = [], environment: [String: String] = [:],
                        launcher: [String] = []) throws -> DiscodProcess {
        let daemon = try DiscodProcess(arguments: ["--zones", zones.path, "--dns", "127.0.0.1:0", "--workers", "2"] + extra,
                                       environment: environment, launcher: launcher)
        try daemon.waitForStart()
        return daemon
    }

    var stderr: String { lock.withLock { stderrText } }

    func waitForStart(timeoutSeconds: Double = 20) throws {
        let deadline = Date().addingTimeInterval(timeoutSeconds)
        while Date() < deadline {
            let text = stderr
            if let range = text.range(of: "on udp+tcp 127.0.0.1:") {
                let digits = text[range.upperBound...].prefix { $0.isNumber }
                if let port = UInt16(digits), port != 0 {
                    self.port = port
                    return
                }
            }
            if !process.isRunning { throw TestFailure("discod exited (\(process.terminationStatus)): \(text)") }
            usleep(20_000)
        }
        throw TestFailure("discod did not start: \(stderr)")
    }

    /// Waits until stderr contains `text`.
    func waitForLog(_ text: String, timeoutSeconds: Double = 10) -> Bool {
        let deadline = Date().addingTimeInterval(timeoutSeconds)
        while Date() < deadline {
            if stderr.contains(text) { return true }
            usleep(20_000)
        }
        return false
    }

    func signal(_ number: Int32) { kill(process.processIdentifier, number) }

    func waitForExit(timeoutSeconds: Double = 10) -> Int32? {
        let deadline = Date().addingTimeInterval(timeoutSeconds)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        return process.isRunning ? nil : process.terminationStatus
    }

    func stop() {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        stderrPipe.fileHandleForReading.readabilityHandler = nil
    }

    deinit { stop() }
}

/// A TCP socket listening on 127.0.0.1 at an ephemeral port: its descriptor and port.
func listenOnLoopback(backlog: Int32 = 128) throws -> (fd: Int32, port: Int) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var on: Int32 = 1
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, socklen_t(MemoryLayout<Int32>.size))
    var address = DNSClient.loopback(0)
    let bound = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard bound == 0, listen(fd, backlog) == 0 else {
        close(fd)
        throw TestFailure("cannot listen on 127.0.0.1: errno \(errno)")
    }
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
    }
    return (fd, Int(UInt16(bigEndian: address.sin_port)))
}

/// A minimal DNS client over real sockets, for process tests.
enum DNSClient {
    static let timeoutMilliseconds = 3000

    static func loopback(_ port: UInt16) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        return address
    }

    static func setTimeout(_ fd: Int32) {
        var tv = timeval(tv_sec: timeoutMilliseconds / 1000, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    static func udp(_ query: Message, port: UInt16) throws -> Message {
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        defer { close(fd) }
        setTimeout(fd)
        var address = loopback(port)
        let bytes = try query.serialized()
        let sent = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                sendto(fd, bytes, bytes.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard sent == bytes.count else { throw TestFailure("sendto failed: \(errno)") }
        var buffer = [UInt8](repeating: 0, count: 65535)
        let received = recv(fd, &buffer, buffer.count, 0)
        guard received > 0 else { throw TestFailure("no UDP answer (errno \(errno))") }
        return try Message(parsing: Array(buffer[0..<received]))
    }

    /// A connected TCP socket; the caller closes it.
    static func connectTCP(port: UInt16) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        setTimeout(fd)
        var address = loopback(port)
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard result == 0 else {
            close(fd)
            throw TestFailure("connect failed: \(errno)")
        }
        return fd
    }

    static func frame(_ message: Message) throws -> [UInt8] {
        let bytes = try message.serialized()
        return [UInt8(bytes.count >> 8), UInt8(bytes.count & 0xFF)] + bytes
    }

    static func readExactly(_ fd: Int32, _ count: Int) -> [UInt8]? {
        var buffer = [UInt8](repeating: 0, count: count)
        var have = 0
        while have < count {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + have, count - have, 0) }
            if n <= 0 { return nil }
            have += n
        }
        return buffer
    }

    static func readMessage(_ fd: Int32) throws -> Message? {
        guard let length = readExactly(fd, 2) else { return nil }
        guard let body = readExactly(fd, Int(length[0]) << 8 | Int(length[1])) else { return nil }
        return try Message(parsing: body)
    }

    static func tcp(_ queries: [Message], port: UInt16) throws -> [Message] {
        let fd = try connectTCP(port: port)
        defer { close(fd) }
        // All queries in one write: pipelined (RFC 7766 §6.2.1.1).
        let bytes = try queries.flatMap { try frame($0) }
        guard send(fd, bytes, bytes.count, 0) == bytes.count else { throw TestFailure("send failed") }
        var answers: [Message] = []
        for _ in queries {
            guard let answer = try readMessage(fd) else { throw TestFailure("TCP connection closed early") }
            answers.append(answer)
        }
        return answers
    }

    /// True when the peer closes the connection within the timeout.
    static func isClosedByPeer(_ fd: Int32) -> Bool {
        var byte: UInt8 = 0
        return recv(fd, &byte, 1, 0) == 0
    }
}

let testZone = """
    $TTL 300
    @    SOA ns1 hostmaster 1 7200 900 1209600 60
         NS  ns1
    ns1  A   192.0.2.53
    www  A   192.0.2.10
    """

/// A discoctl run: what it printed and its exit status.
struct DiscoctlRun {
    var status: Int32
    var stdout: String
    var stderr: String
}

/// Runs the built discoctl against the API on `http`.
func discoctl(_ arguments: [String], http: Int, environment: [String: String] = [:]) throws -> DiscoctlRun {
    let binary = try builtProduct("discoctl")
    let process = Process()
    process.executableURL = binary
    process.arguments = arguments
    process.environment = ["DISCO_HTTP_ADDR": "127.0.0.1:\(http)", "PATH": "/usr/bin:/bin"].merging(environment) { $1 }
    let out = Pipe(), err = Pipe()
    process.standardOutput = out
    process.standardError = err
    try process.run()
    let stdout = out.fileHandleForReading.readDataToEndOfFile()
    let stderr = err.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return DiscoctlRun(status: process.terminationStatus, stdout: String(decoding: stdout, as: UTF8.self),
               stderr: String(decoding: stderr, as: UTF8.self))
}


/// Runs a program that may leave a daemon behind (tmux starts its server on first use) and waits
/// at most `timeoutSeconds` for it, returning its exit status and what it wrote to stdout.
///
/// Not Foundation's `Process`: on Linux it learns that a child exited only when every holder of a
/// socket the child inherits has closed it, so a daemon forked by the child keeps `waitUntilExit`
/// (and the whole test run) waiting for as long as the daemon lives. Here the child gets
/// /dev/null for stdin and stderr, a file for stdout, and no other descriptor of this process.
func runLeavingNoDescriptors(_ path: String, _ arguments: [String], timeoutSeconds: Double = 10) throws
    -> (status: Int32, stdout: String)
{
    typealias CloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
    guard let symbol = dlsym(nil, "posix_spawn_file_actions_addclosefrom_np") else {
        throw TestFailure("this libc has no posix_spawn_file_actions_addclosefrom_np (glibc 2.34 or later)")
    }
    let closeFrom = unsafeBitCast(symbol, to: CloseFrom.self)
    let directory = try TemporaryDirectory()
    let output = directory.url.appendingPathComponent("stdout").path
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, output, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
    guard closeFrom(&actions, 3) == 0 else { throw TestFailure("posix_spawn_file_actions_addclosefrom_np failed") }
    // The child starts with no signal blocked or ignored, whatever this process's threads set.
    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    var noSignals = sigset_t(), allSignals = sigset_t()
    sigemptyset(&noSignals)
    sigfillset(&allSignals)
    posix_spawnattr_setsigmask(&attributes, &noSignals)
    posix_spawnattr_setsigdefault(&attributes, &allSignals)
    posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
    let argv: [UnsafeMutablePointer<CChar>?] = ([path] + arguments).map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    var pid: pid_t = 0
    let spawned = posix_spawn(&pid, path, &actions, &attributes, argv, environ)
    guard spawned == 0 else { throw TestFailure("posix_spawn \(path): \(String(cString: strerror(spawned)))") }
    var status: Int32 = 0
    let deadline = Date().addingTimeInterval(timeoutSeconds)
    while waitpid(pid, &status, WNOHANG) == 0 {
        guard Date() < deadline else {
            kill(pid, SIGKILL)
            waitpid(pid, &status, 0)
            throw TestFailure("\(path) \(arguments.joined(separator: " ")) did not exit within \(timeoutSeconds) s")
        }
        usleep(10_000)
    }
    let exit = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    let text = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
    return (exit, text)
}

/// One thread of a process, from /proc/PID/task/TID/stat ("tid (comm) state ..."): its name,
/// nice value (field 19) and scheduling policy (field 41: 0 normal, 1 FIFO, 5 idle).
struct ThreadStat: CustomStringConvertible {
    var name: String
    var nice: Int
    var policy: Int
    var description: String { "\(name) nice \(nice) policy \(policy)" }
}

func threadStats(_ pid: Int32) throws -> [ThreadStat] {
    try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task").compactMap { tid in
        let stat = try String(contentsOfFile: "/proc/\(pid)/task/\(tid)/stat", encoding: .utf8)
        guard let open = stat.firstIndex(of: "("), let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        return ThreadStat(name: String(stat[stat.index(after: open)..<close]), nice: Int(fields[16]) ?? -100,
                          policy: Int(fields[38]) ?? -1)
    }
}
