import ArgumentParser
import Crypto
import Foundation
import SwiftASN1
import X509

/// `discoctl tls ...`: a CA and certificates for a test or small cluster, as `consul tls` makes
/// them (P-256 keys, ECDSA-SHA256). A larger deployment uses its own PKI: discod reads any PEM
/// certificate and key.
struct TLSCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tls", abstract: "Make a CA and server or client certificates for a cluster.",
        subcommands: [CA.self, Cert.self])

    /// What a file written here is: certificates readable by all, keys by their owner only.
    static func write(_ text: String, to path: String, secret: Bool) throws {
        guard !FileManager.default.fileExists(atPath: path) else { throw ClientError("\(path) exists; not overwritten") }
        guard FileManager.default.createFile(atPath: path, contents: Data(text.utf8),
                                             attributes: [.posixPermissions: secret ? 0o600 : 0o644]) else {
            throw ClientError("cannot write \(path)")
        }
    }

    static func pem(_ certificate: Certificate) throws -> String { try certificate.serializeAsPEM().pemString + "\n" }

    struct CA: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Manage the certificate authority.", subcommands: [Create.self])

        struct Create: ParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Create a CA: NAME.pem (the certificate every server and client trusts) and NAME-key.pem.")
            @Option(help: "The files' directory.") var dir = "."
            @Option(help: "File name stem and the CA's common name.") var name = "disco-agent-ca"
            @Option(help: "Days the CA is valid.") var days = 1825
            @Flag(help: "Print JSON instead of text.") var json = false

            func run() throws {
                try reporting {
                    let key = P256.Signing.PrivateKey()
                    let subject = try DistinguishedName { CommonName(name) }
                    let now = Date()
                    let certificate = try Certificate(
                        version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: .init(key.publicKey),
                        notValidBefore: now.addingTimeInterval(-60), notValidAfter: now.addingTimeInterval(Double(days) * 86_400),
                        issuer: subject, subject: subject, signatureAlgorithm: .ecdsaWithSHA256,
                        extensions: try Certificate.Extensions {
                            Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                            Critical(KeyUsage(digitalSignature: true, keyCertSign: true, cRLSign: true))
                            SubjectKeyIdentifier(hash: .init(key.publicKey))
                        },
                        issuerPrivateKey: .init(key))
                    let certPath = "\(dir)/\(name).pem", keyPath = "\(dir)/\(name)-key.pem"
                    try TLSCommand.write(key.pemRepresentation + "\n", to: keyPath, secret: true)
                    try TLSCommand.write(try TLSCommand.pem(certificate), to: certPath, secret: false)
                    if json { GlobalOptions().printJSON(["Certificate": certPath, "Key": keyPath]) } else {
                        print("==> saved \(certPath)\n==> saved \(keyPath)")
                    }
                }
            }
        }
    }

    struct Cert: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Manage certificates.", subcommands: [Create.self])

        struct Create: ParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Create a server or client certificate signed by the CA: disco-server-N.pem / disco-client-N.pem and their -key.pem.")
            @Flag(help: "A server's certificate (discod's tls.cert_file): server and client use, 127.0.0.1 and localhost.")
            var server = false
            @Flag(help: "A client's certificate (discoctl --client-cert, tls.verify_incoming_https).") var client = false
            @Option(help: "The CA certificate.") var ca = "disco-agent-ca.pem"
            @Option(help: "The CA's key.") var key = "disco-agent-ca-key.pem"
            @Option(name: .customLong("ip"), help: "An IP address the server is reached at (repeatable).") var ips: [String] = []
            @Option(name: .customLong("dns"), help: "A DNS name the server is reached at (repeatable).") var names: [String] = []
            @Option(help: "Days the certificate is valid.") var days = 365
            @Option(help: "The files' directory.") var dir = "."
            @Flag(help: "Print JSON instead of text.") var json = false

            func validate() throws {
                guard server != client else { throw ValidationError("give exactly one of --server or --client") }
                for ip in ips where Self.addressBytes(ip) == nil { throw ValidationError("--ip \(ip): expected an IPv4 or IPv6 address") }
            }

            static func addressBytes(_ text: String) -> [UInt8]? {
                var v4 = in_addr(), v6 = in6_addr()
                if inet_pton(AF_INET, text, &v4) == 1 { return withUnsafeBytes(of: &v4) { Array($0) } }
                if inet_pton(AF_INET6, text, &v6) == 1 { return withUnsafeBytes(of: &v6) { Array($0) } }
                return nil
            }

            func run() throws {
                try reporting {
                    guard let caText = try? String(contentsOfFile: ca, encoding: .utf8),
                          let caCertificate = try? Certificate(pemEncoded: caText) else {
                        throw ClientError("cannot read the CA certificate \(ca) (PEM); make one with `discoctl tls ca create`")
                    }
                    guard let keyText = try? String(contentsOfFile: key, encoding: .utf8),
                          let caKey = try? P256.Signing.PrivateKey(pemRepresentation: keyText) else {
                        throw ClientError("cannot read the CA key \(key) (a P-256 key in PEM)")
                    }
                    guard caCertificate.publicKey == Certificate.PublicKey(caKey.publicKey) else {
                        throw ClientError("\(key) is not the key of \(ca)")
                    }
                    let kind = server ? "server" : "client"
                    var index = 0
                    while FileManager.default.fileExists(atPath: "\(dir)/disco-\(kind)-\(index).pem") { index += 1 }
                    let stem = "\(dir)/disco-\(kind)-\(index)"
                    let leafKey = P256.Signing.PrivateKey()
                    var alternatives: [GeneralName] = []
                    if server {
                        alternatives = [.dnsName("localhost"), .dnsName("server.disco")] + names.map { .dnsName($0) }
                        for ip in ["127.0.0.1", "::1"] + ips {
                            if let bytes = Self.addressBytes(ip) { alternatives.append(.ipAddress(ASN1OctetString(contentBytes: ArraySlice(bytes)))) }
                        }
                    }
                    let now = Date()
                    let usage = try ExtendedKeyUsage(server ? [.serverAuth, .clientAuth] : [.clientAuth])
                    let leaf = try Certificate(
                        version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: .init(leafKey.publicKey),
                        notValidBefore: now.addingTimeInterval(-60), notValidAfter: now.addingTimeInterval(Double(days) * 86_400),
                        issuer: caCertificate.subject, subject: try DistinguishedName { CommonName("\(kind).disco") },
                        signatureAlgorithm: .ecdsaWithSHA256,
                        extensions: try Certificate.Extensions {
                            Critical(BasicConstraints.notCertificateAuthority)
                            Critical(KeyUsage(digitalSignature: true, keyEncipherment: true))
                            usage
                            if !alternatives.isEmpty { SubjectAlternativeNames(alternatives) }
                        },
                        issuerPrivateKey: .init(caKey))
                    try TLSCommand.write(leafKey.pemRepresentation + "\n", to: "\(stem)-key.pem", secret: true)
                    try TLSCommand.write(try TLSCommand.pem(leaf), to: "\(stem).pem", secret: false)
                    if json { GlobalOptions().printJSON(["Certificate": "\(stem).pem", "Key": "\(stem)-key.pem"]) } else {
                        print("==> saved \(stem).pem\n==> saved \(stem)-key.pem")
                    }
                }
            }
        }
    }
}
