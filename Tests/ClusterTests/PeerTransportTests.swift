import Cluster
import Foundation
import Logging
import NIOCore
import NIOPosix
import Raft
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// What a test transport received.
final class Inbox: @unchecked Sendable {
    private let lock = NSLock()
    private var messages: [Message] = []
    func add(_ message: Message) { lock.withLock { messages.append(message) } }
    var all: [Message] { lock.withLock { messages } }
}

/// A sender (id 1) connected to a receiver (id 2) on loopback, stopped when released.
final class TransportPair {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let inbox = Inbox()
    let receiver: PeerTransport
    let sender: PeerTransport
    /// The receiver's port.
    let port: Int

    init() throws {
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let inbox = self.inbox
        receiver = PeerTransport(id: 2, listen: PeerAddress(host: "127.0.0.1", port: 0), peers: [:], group: group,
                                 logger: logger) { inbox.add($0) }
        port = try receiver.start()
        sender = PeerTransport(id: 1, listen: PeerAddress(host: "127.0.0.1", port: 0),
                               peers: [2: PeerAddress(host: "127.0.0.1", port: port)], group: group, logger: logger) { _ in }
        _ = try sender.start()
    }

    deinit {
        sender.stop()
        receiver.stop()
        try? group.syncShutdownGracefully()
    }
}

@Suite("peer transport")
struct PeerTransportTests {
    /// A raw client socket to the transport's port.
    func connect(_ port: Int) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var tv = timeval(tv_sec: 3, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        #expect(result == 0)
        return fd
    }

    func closedByPeer(_ fd: Int32) -> Bool {
        var byte: UInt8 = 0
        return recv(fd, &byte, 1, 0) == 0
    }

    @Test func messagesArriveInOrderAndBadFramesCloseTheirConnection() throws {
        let pair = try TransportPair()
        let (sender, inbox, port) = (pair.sender, pair.inbox, pair.port)
        defer { withExtendedLifetime(pair) {} }  // the transports live until the test ends

        let messages = (1...200).map { i in
            Message(from: 1, to: 2, term: Term(UInt64(i)), kind: .heartbeat(.init(commit: LogIndex(UInt64(i)), readSequence: 0)))
        }
        sender.send(messages)
        let deadline = Date().addingTimeInterval(5)
        while inbox.all.count < 200 && Date() < deadline { usleep(10_000) }
        #expect(inbox.all == messages)

        // An oversized length closes the connection before any body is read.
        let oversized = try connect(port)
        defer { close(oversized) }
        let header: [UInt8] = [0x7F, 0xFF, 0xFF, 0xFF]
        _ = send(oversized, header, header.count, 0)
        #expect(closedByPeer(oversized))

        // A well-sized frame with an unknown version closes too.
        let garbage = try connect(port)
        defer { close(garbage) }
        let frame: [UInt8] = [0, 0, 0, 3, 9, 9, 9]
        _ = send(garbage, frame, frame.count, 0)
        #expect(closedByPeer(garbage))

        // The good connection still works afterwards.
        let later = Message(from: 1, to: 2, term: 999, kind: .timeoutNow)
        sender.send([later])
        while inbox.all.last != later && Date() < deadline.addingTimeInterval(5) { usleep(10_000) }
        #expect(inbox.all.last == later)
    }

    @Test func aPeerThatComesUpLaterIsReachedAfterBackoff() throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        // Reserve a port, then free it so nothing listens there yet.
        let probe = PeerTransport(id: 9, listen: PeerAddress(host: "127.0.0.1", port: 0), peers: [:], group: group,
                                  logger: logger) { _ in }
        let port = try probe.start()
        probe.stop()
        let sender = PeerTransport(id: 1, listen: PeerAddress(host: "127.0.0.1", port: 0),
                                   peers: [2: PeerAddress(host: "127.0.0.1", port: port)], group: group,
                                   logger: logger) { _ in }
        _ = try sender.start()
        defer { sender.stop() }
        let message = Message(from: 1, to: 2, term: 1, kind: .timeoutNow)
        sender.send([message])  // refused: queued, retried with backoff
        usleep(100_000)
        let inbox = Inbox()
        let receiver = PeerTransport(id: 2, listen: PeerAddress(host: "127.0.0.1", port: port), peers: [:], group: group,
                                     logger: logger) { inbox.add($0) }
        _ = try receiver.start()
        defer { receiver.stop() }
        let deadline = Date().addingTimeInterval(5)
        while inbox.all.isEmpty && Date() < deadline { usleep(10_000) }
        #expect(inbox.all == [message])
    }
}
