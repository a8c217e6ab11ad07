import CShims
import DNSServer
import Foundation

/// Sockets passed by systemd (socket activation, `sd_listen_fds`): `LISTEN_PID` names this
/// process, `LISTEN_FDS` counts descriptors from 3, `LISTEN_FDNAMES` names them. Datagram
/// sockets serve DNS over UDP; stream sockets DNS over TCP, except the one named `http` (a
/// socket unit's `FileDescriptorName=http`) or bound to `http.listen`'s port, which serves the
/// HTTP API. With them discod binds nothing of its own for DNS (port 53 needs no capability).
package struct SocketActivation {
    package struct Socket: Equatable {
        package enum Kind: Equatable { case dnsUDP, dnsTCP, http }
        package var fd: Int32
        package var kind: Kind
        package var address: ListenAddress
    }

    /// The first descriptor systemd passes (SD_LISTEN_FDS_START).
    static let firstDescriptor: Int32 = 3
    /// More passed descriptors than this is a misconfigured unit, not a reason to read them all.
    static let descriptorsMax = 64

    package var sockets: [Socket] = []

    package init() {}

    var udp: [(fd: Int32, address: ListenAddress)] { sockets.filter { $0.kind == .dnsUDP }.map { ($0.fd, $0.address) } }
    var tcp: [(fd: Int32, address: ListenAddress)] { sockets.filter { $0.kind == .dnsTCP }.map { ($0.fd, $0.address) } }
    var http: Socket? { sockets.first { $0.kind == .http } }

    /// Reads what systemd passed, if it names this process; `httpPort` tells the HTTP socket
    /// when none is named. The variables are removed so that no child process takes them.
    package static func inherited(environment: [String: String], httpPort: Int, pid: Int32 = getpid()) throws(StartError) -> SocketActivation {
        guard let pidText = environment["LISTEN_PID"], let fdsText = environment["LISTEN_FDS"] else { return SocketActivation() }
        defer {
            unsetenv("LISTEN_PID")
            unsetenv("LISTEN_FDS")
            unsetenv("LISTEN_FDNAMES")
        }
        guard Int32(pidText) == pid else { return SocketActivation() }
        guard let count = Int(fdsText), (0...descriptorsMax).contains(count) else {
            throw StartError(code: .config, message: "LISTEN_FDS: expected 0 to \(descriptorsMax) descriptors, got '\(fdsText)'")
        }
        // Names count only when there is one per descriptor (as sd_listen_fds_with_names).
        var names = environment["LISTEN_FDNAMES"].map { $0.split(separator: ":", omittingEmptySubsequences: false).map(String.init) } ?? []
        if names.count != count { names = [] }
        var activation = SocketActivation()
        for i in 0..<count {
            let fd = firstDescriptor + Int32(i)
            let type = disco_socket_type(fd)
            var host = [CChar](repeating: 0, count: 64)
            var port: Int32 = 0
            let found = disco_socket_address(fd, &host, Int32(host.count), &port)
            guard type >= 0, found == 0 else {
                throw StartError(code: .config, message: "passed descriptor \(fd) is not an IP socket (errno \(-min(type, found)))")
            }
            let address = ListenAddress(host: String(cString: host), port: Int(port))
            let name = i < names.count ? names[i] : ""
            let kind: Socket.Kind
            switch type {
            case Int32(SOCK_DGRAM.rawValue): kind = .dnsUDP
            case Int32(SOCK_STREAM.rawValue):
                kind = name == "http" || (name != "dns" && Int(port) == httpPort && activation.http == nil) ? .http : .dnsTCP
            default:
                throw StartError(code: .config, message: "passed descriptor \(fd) (\(address)) is neither a datagram nor a stream socket")
            }
            if kind == .http && activation.http != nil {
                throw StartError(code: .config, message: "two HTTP sockets passed (\(activation.http!.address) and \(address))")
            }
            activation.sockets.append(Socket(fd: fd, kind: kind, address: address))
        }
        return activation
    }
}
