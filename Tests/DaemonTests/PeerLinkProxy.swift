import Cluster
import Foundation
import Raft

#if canImport(Glibc)
import Glibc
#endif

/// A TCP proxy on one directed Raft link (server X's connections to server Y), which parses the
/// peer frames passing through and forwards or drops each one by a policy the test sets: a
/// network fault that is precise to the message, between real discod processes.
///
/// PeerTransport sends X's messages to Y only over connections X dials, so pointing X's address
/// for Y at this proxy puts every X→Y message through it, and nothing of Y→X. Frames are dropped
/// whole, so the stream stays well framed (a lossy link that loses messages, not bytes).
final class PeerLinkProxy: @unchecked Sendable {
    // @unchecked: `policy`, `connections` and `stopped` are guarded by `lock`.

    /// What the policy decides for one frame.
    enum Verdict { case forward, drop }
    typealias Policy = @Sendable (Message) -> Verdict

    static let forwardAll: Policy = { _ in .forward }
    static let dropAll: Policy = { _ in .drop }

    /// The largest frame this proxy buffers (the transport's own limit).
    static let frameBytesMax = PeerCodec.frameBytesMax

    let port: Int
    private let upstreamPort: Int
    private let cluster: UInt64
    private let listener: Int32
    private let lock = NSLock()
    private var policy: Policy = PeerLinkProxy.forwardAll
    private var connections: [Int32] = []
    private var stopped = false

    /// Listens on 127.0.0.1 (an ephemeral port) and forwards to 127.0.0.1:`upstreamPort`.
    init(upstreamPort: Int, clusterToken: String = "disco-cluster") throws {
        self.upstreamPort = upstreamPort
        self.cluster = PeerCodec.clusterID(token: clusterToken)
        (listener, port) = try listenOnLoopback(backlog: 16)
        let thread = Thread { [self] in acceptLoop() }
        thread.start()
    }

    /// Applies from the next frame on (frames already forwarded are gone).
    func setPolicy(_ policy: @escaping Policy) { lock.withLock { self.policy = policy } }

    /// Idempotent: the fixture stops its links and deinit stops them again, and closing a
    /// descriptor twice can close whatever reused its number (another test's SQLite file or
    /// event loop).
    func stop() {
        let open: [Int32]? = lock.withLock {
            guard !stopped else { return nil }
            stopped = true
            defer { connections = [] }
            return connections
        }
        guard let open else { return }
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
        for fd in open { shutdown(fd, Int32(SHUT_RDWR)) }
    }

    deinit { stop() }

    private func acceptLoop() {
        while true {
            let client = accept(listener, nil, nil)
            guard client >= 0 else { return }
            guard let upstream = try? DNSClient.connectTCP(port: UInt16(upstreamPort)) else {
                close(client)
                continue
            }
            // The client socket must block on reads for as long as the link is idle.
            var forever = timeval(tv_sec: 0, tv_usec: 0)
            setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &forever, socklen_t(MemoryLayout<timeval>.size))
            setsockopt(upstream, SOL_SOCKET, SO_RCVTIMEO, &forever, socklen_t(MemoryLayout<timeval>.size))
            let registered = lock.withLock { () -> Bool in
                guard !stopped else { return false }
                connections += [client, upstream]
                return true
            }
            guard registered else {
                close(client)
                close(upstream)
                return
            }
            Thread { [self] in relayFrames(from: client, to: upstream) }.start()
        }
    }

    /// Reads frames from the dialling server and forwards those the policy lets through; when
    /// either side closes, closes both (the transport redials).
    private func relayFrames(from client: Int32, to upstream: Int32) {
        defer {
            shutdown(client, Int32(SHUT_RDWR))
            shutdown(upstream, Int32(SHUT_RDWR))
            lock.withLock { connections.removeAll { $0 == client || $0 == upstream } }
            close(client)
            close(upstream)
        }
        while true {
            guard let header = DNSClient.readExactly(client, PeerCodec.lengthFieldBytes),
                  let length = try? PeerCodec.bodyLength(header: header), length <= Self.frameBytesMax,
                  let body = DNSClient.readExactly(client, length) else { return }
            // A frame that does not decode goes through: the server decides what to do with it.
            let verdict = (try? PeerCodec.decode(body: body, cluster: cluster)).map { message in
                lock.withLock { policy }(message)
            } ?? .forward
            guard verdict == .forward else { continue }
            let frame = header + body
            var sent = 0
            while sent < frame.count {
                let n = frame.withUnsafeBytes { send(upstream, $0.baseAddress! + sent, frame.count - sent, Int32(MSG_NOSIGNAL)) }
                if n <= 0 { return }
                sent += n
            }
        }
    }
}

extension Message {
    /// An append with an entry whose bytes contain `needle` and not `excluded` (names of the
    /// write a schedule waits for, so that the entries a server proposes by itself, or another
    /// write's, do not count).
    func carriesEntry(containing needle: String, excluding excluded: String? = nil) -> Bool {
        guard case .append(let append) = kind else { return false }
        func find(_ text: String, in data: [UInt8]) -> Bool {
            let bytes = Array(text.utf8)
            guard data.count >= bytes.count else { return false }
            return (0...(data.count - bytes.count)).contains { data[$0..<($0 + bytes.count)].elementsEqual(bytes) }
        }
        return append.entries.contains { entry in
            find(needle, in: entry.data) && !(excluded.map { find($0, in: entry.data) } ?? false)
        }
    }

    /// Appends and snapshots: what moves a follower's log.
    var movesLog: Bool {
        switch kind {
        case .append, .snapshot: true
        case .voteRequest, .voteResponse, .appendResponse, .heartbeat, .heartbeatResponse, .timeoutNow, .readIndex,
             .readIndexResponse: false
        }
    }
}
