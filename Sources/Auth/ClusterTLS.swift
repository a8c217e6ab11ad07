import Foundation
import NIOSSL

/// Where a server's TLS material is: the cluster's CA (PEM, one or more certificates), this
/// server's certificate (PEM chain, leaf first) and its private key (PEM).
public struct TLSFiles: Sendable, Equatable {
    public var caFile: String
    public var certFile: String
    public var keyFile: String

    public init(caFile: String, certFile: String, keyFile: String) {
        self.caFile = caFile
        self.certFile = certFile
        self.keyFile = keyFile
    }
}

/// TLS material that cannot be used: names the file and what is wrong with it.
public struct TLSLoadError: Error, Sendable, CustomStringConvertible {
    public var file: String
    public var message: String
    public init(file: String, message: String) {
        self.file = file
        self.message = message
    }
    public var description: String { file.isEmpty ? message : "\(file): \(message)" }
}

/// The TLS contexts of one server, made once from `TLSFiles` (and again on SIGHUP):
/// - the Raft transport is mutual TLS both ways: each side presents its certificate and accepts
///   only a peer whose certificate chains to the cluster CA (no host name check: servers are
///   addressed by IP, and the CA is the cluster's own);
/// - the HTTPS API presents the certificate and, with `verifyIncomingHTTPS`, requires a client
///   certificate from the CA (else accepts one if given);
/// - requests a server makes to another (forwards, proposals, `--join`) present the
///   certificate and verify the other server's against the CA.
public struct ClusterTLS: Sendable {
    public let peerServer: NIOSSLContext
    public let peerClient: NIOSSLContext
    public let httpsServer: NIOSSLContext
    public let httpsClient: NIOSSLContext
    /// The client side as a configuration, for AsyncHTTPClient (`--join`).
    public let clientConfiguration: TLSConfiguration
    /// The server certificate's end of validity (seconds since 1970), for logs and metrics.
    public let certificateNotAfter: Double
    public let files: TLSFiles

    public init(files: TLSFiles, verifyIncomingHTTPS: Bool, now: Date = Date()) throws(TLSLoadError) {
        self.files = files
        let ca: [NIOSSLCertificate], chain: [NIOSSLCertificate], key: NIOSSLPrivateKey
        do { ca = try NIOSSLCertificate.fromPEMFile(files.caFile) } catch {
            throw TLSLoadError(file: files.caFile, message: "cannot read the CA certificate (PEM): \(error)")
        }
        do { chain = try NIOSSLCertificate.fromPEMFile(files.certFile) } catch {
            throw TLSLoadError(file: files.certFile, message: "cannot read the certificate (PEM): \(error)")
        }
        do { key = try NIOSSLPrivateKey(file: files.keyFile, format: .pem) } catch {
            throw TLSLoadError(file: files.keyFile, message: "cannot read the private key (PEM): \(error)")
        }
        guard !ca.isEmpty else { throw TLSLoadError(file: files.caFile, message: "no certificate in the file") }
        guard let leaf = chain.first else { throw TLSLoadError(file: files.certFile, message: "no certificate in the file") }
        let seconds = now.timeIntervalSince1970
        if Double(leaf.notValidAfter) <= seconds {
            throw TLSLoadError(file: files.certFile, message: "the certificate expired at \(Self.format(leaf.notValidAfter))")
        }
        if Double(leaf.notValidBefore) > seconds {
            throw TLSLoadError(file: files.certFile, message: "the certificate is not valid before \(Self.format(leaf.notValidBefore))")
        }
        let sources = chain.map(NIOSSLCertificateSource.certificate)
        let trust = NIOSSLTrustRoots.certificates(ca)
        func context(_ configuration: TLSConfiguration, _ what: String) throws(TLSLoadError) -> NIOSSLContext {
            do { return try NIOSSLContext(configuration: configuration) } catch {
                let text = "\(error)"
                // The key parsed above, so a key the context refuses is one that does not match.
                if case NIOSSLError.failedToLoadPrivateKey = error {
                    throw TLSLoadError(file: files.keyFile, message: "the private key does not match the certificate \(files.certFile)")
                }
                throw TLSLoadError(file: files.certFile, message: "cannot make the \(what) TLS context: \(text)")
            }
        }
        var peerServer = TLSConfiguration.makeServerConfigurationWithMTLS(certificateChain: sources, privateKey: .privateKey(key),
                                                                          trustRoots: trust)
        peerServer.certificateVerification = .noHostnameVerification
        peerServer.minimumTLSVersion = .tlsv12
        var client = TLSConfiguration.makeClientConfiguration()
        client.certificateChain = sources
        client.privateKey = .privateKey(key)
        client.trustRoots = trust
        client.certificateVerification = .noHostnameVerification
        client.minimumTLSVersion = .tlsv12
        var https = TLSConfiguration.makeServerConfiguration(certificateChain: sources, privateKey: .privateKey(key))
        https.trustRoots = trust
        https.certificateVerification = verifyIncomingHTTPS ? .noHostnameVerification : .optionalVerification
        https.minimumTLSVersion = .tlsv12
        // BoringSSL refuses a key that does not match the certificate when the context is made.
        self.peerServer = try context(peerServer, "Raft server")
        self.peerClient = try context(client, "Raft client")
        self.httpsServer = try context(https, "HTTPS server")
        self.httpsClient = self.peerClient
        self.clientConfiguration = client
        certificateNotAfter = Double(leaf.notValidAfter)
    }

    /// The material in force, replaced on SIGHUP: new connections take the new contexts,
    /// established ones keep theirs.
    public final class Current: @unchecked Sendable {
        // @unchecked: `value` is read and replaced under `lock`.
        private let lock = NSLock()
        private var value: ClusterTLS
        public init(_ value: ClusterTLS) { self.value = value }
        public var tls: ClusterTLS { lock.withLock { value } }
        public func replace(with value: ClusterTLS) { lock.withLock { self.value = value } }
    }

    static func format(_ time: time_t) -> String {
        let formatter = ISO8601DateFormatter()
        return formatter.string(from: Date(timeIntervalSince1970: Double(time)))
    }
}
