import DNSServer
import DNSWire
import DNSZone

/// The properties the fuzzers check, shared by the libFuzzer targets (FuzzWire, FuzzZone)
/// and by the tests that replay Tests/Fixtures/fuzz (seeds and every crasher ever found).
/// A violated property traps (`precondition`), which is what libFuzzer reports.
public enum FuzzChecks {
    /// A zone exercising every lookup path, for the answer pipeline.
    public static let zoneText = """
        $TTL 300
        @ SOA ns1 hostmaster 1 7200 900 1209600 60
          NS ns1
        ns1 A 192.0.2.53
        www A 192.0.2.10
        www AAAA 2001:db8::10
        alias CNAME www
        loop CNAME loop
        mx MX 10 www
        _s._tcp SRV 1 1 80 www
        *.wild TXT "w"
        sub NS ns.sub
        ns.sub A 192.0.2.99
        old DNAME new
        x.new A 192.0.2.1
        """

    public static let origin = try! DomainName("example.com.")

    /// State reused across inputs (one per fuzzing thread).
    public final class Wire {
        let view = View(zones: [try! Zone.parse(text: FuzzChecks.zoneText, origin: FuzzChecks.origin)])
        let answerer = Answerer(cache: true)
        let output = UnsafeMutableRawBufferPointer.allocate(byteCount: Message.messageBytesMax, alignment: 8)

        public init() {}
        deinit { output.deallocate() }

        /// 1. The parser never traps and what it accepts survives a round trip.
        /// 2. The answer pipeline never traps, respects the transport's size limit, and writes
        ///    a response that parses.
        public func check(_ bytes: UnsafeRawBufferPointer) {
            if let message = try? Message.parse(bytes), let again = try? message.serialized() {
                precondition((try? Message(parsing: again)) == message, "round trip changed the message")
            }
            for transport in [Transport.udp, .tcp] {
                let length = answerer.answer(query: bytes, into: output, view: view, transport: transport)
                let limit = transport == .udp ? Answerer.udpPayloadBytesMax : Message.messageBytesMax
                precondition(length <= limit, "response of \(length) bytes over \(transport)")
                if length > 0 {
                    let response = UnsafeRawBufferPointer(start: output.baseAddress, count: length)
                    precondition((try? Message.parse(response)) != nil, "unparseable response")
                }
            }
        }
    }

    /// State reused across inputs for the zone fuzzer.
    public final class ZoneText {
        let scratch = UnsafeMutableRawPointer.allocate(byteCount: 512, alignment: 8)

        public init() {}
        deinit { scratch.deallocate() }

        /// Errors are bounded and positioned; the text cut into parts parsed on their own gives
        /// what one parse gives; accepted RDATA survives a wire round trip; a zone that validates
        /// answers lookups of its own names without trapping.
        public func check(_ text: [UInt8]) {
            let records: [ParsedRecord]
            let inParts = try? MasterFileParser.parse(text: text, file: "fuzz.zone", origin: FuzzChecks.origin, parts: 3,
                                                      partBytesMin: 16, reparseOnError: false)
            do {
                records = try MasterFileParser.parse(text: text, file: "fuzz.zone", origin: FuzzChecks.origin)
            } catch {
                precondition(!error.errors.isEmpty && error.errors.count <= ZoneLoadError.errorsMax,
                             "error list out of bounds")
                precondition(inParts == nil, "a text that does not parse parsed in parts")
                return
            }
            precondition(inParts == records, "the text parsed in parts gave other records (or errors)")
            for parsed in records {
                let (bytes, _) = parsed.record.rdata.encoded()
                guard bytes.count <= RData.rdataBytesMax else { continue }
                let decoded: RData? = bytes.withUnsafeBytes { buffer in
                    var reader = WireReader(buffer)
                    return try? RData.parse(type: parsed.record.type, from: &reader)
                }
                precondition(decoded == parsed.record.rdata, "RDATA did not survive a wire round trip: \(parsed.record)")
            }
            guard let zone = try? Zone(origin: FuzzChecks.origin, records: records, source: "fuzz.zone") else { return }
            for node in zone.nodes {
                let key = node.name.lowercased().wire
                for type in [RRType.a, .ns, .cname, .any, .txt] {
                    _ = key.withUnsafeBytes { zone.lookup($0, type: type, scratch: scratch) }
                }
            }
        }
    }
}
