import CShims
import DNSWire
import DNSZone

/// How a query arrived; decides the size limit (512/EDNS for UDP, 64 KiB for TCP).
public enum Transport: Sendable {
    case udp
    case tcp
}

/// The query pipeline: parse the question and EDNS, pick the zone, look up, encode.
///
/// Synchronous and allocation-free in the steady state (DESIGN.md contract): it reads the
/// query from the caller's buffer, writes the response into the caller's buffer, and uses only
/// scratch memory allocated once per instance. One instance per worker thread; not shared.
///
/// The order of the pipeline lives here: header checks → question → EDNS → class/type
/// checks → zone → lookup (CNAME/DNAME chase) → sections → OPT.
public final class Answerer {
    /// Our advertised and maximum UDP payload (DNS Flag Day 2020: 1232 avoids fragmentation).
    public static let udpPayloadBytesMax = 1232
    /// RFC 8914: the EDNS option code of Extended DNS Errors.
    static let extendedErrorOptionCode: UInt16 = 15
    /// CNAME/DNAME links followed inside served zones before answering with what we have.
    public static let cnameChainLengthMax = 8
    /// Responses are never larger than this (TCP's 16-bit length).
    public static let responseBytesMax = Message.messageBytesMax

    private let lowercasedName: UnsafeMutableRawPointer
    /// The name a CNAME or DNAME chain has reached. Kept apart from `lowercasedName`, which
    /// stays the question's name: the cache stores the response under it. Writing the chain
    /// over it once made every chained answer unreachable in the cache.
    private let chainName: UnsafeMutableRawPointer
    private let scratch: UnsafeMutableRawPointer
    /// The owner of the wildcard the last answer was synthesized from (`wildcardLength` bytes).
    private let wildcardName: UnsafeMutableRawPointer
    private var wildcardLength = 0
    private let compressionTable: UnsafeMutablePointer<UInt16>
    private let chainNodes: UnsafeMutablePointer<Int32>
    /// Distinct names whose addresses one response carries in ADDITIONAL, at most.
    public static let additionalNodesMax = 32
    private let additionalNodes: UnsafeMutablePointer<Int32>
    private var additionalCount = 0
    /// Something best-effort (AUTHORITY NS, ADDITIONAL) was left out for lack of room: the
    /// response depends on the client's size and is not cached.
    private var trimmed = false
    /// The zones the response being written read, as `View.zoneBit`s (for the cache).
    private var zonesRead: UInt64 = 0
    /// Complete responses by question, for UDP workers (nil: no cache, as on TCP connections).
    private let cache: AnswerCache?
    /// Queries answered from / missed in the response cache (for metrics and tests).
    public private(set) var cacheHits = 0
    public private(set) var cacheMisses = 0
    /// The query type of the last query answered (0 when it had no well-formed question), for
    /// the per-type query counters.
    public private(set) var lastQType = RRType(0)
    /// The address RRset in ANSWER, which ADDITIONAL leaves out.
    private var answeredAddress: (node: Int32, type: RRType) = (-1, RRType(0))
    /// Positive answers without the apex NS RRset in AUTHORITY (`dns.minimal_responses`).
    public let minimalResponses: Bool
    private let chainZones: UnsafeMutablePointer<ObjectIdentifier?>
    /// The UDP payload size we advertise in OPT; ≤ `udpPayloadBytesMax`.
    public let udpPayloadBytes: Int
    /// How service RRsets (those with a `RecordSelection`) are picked per query.
    public let selection: SelectionOptions
    private let picker: RecordPicker
    /// The records of the selected RRset written last, by index, for its ADDITIONAL section.
    private let pickedRecords: UnsafeMutablePointer<Int32>
    private var pickedCount = 0
    /// Records in one response, at most: 64 KiB of the smallest record we pick (an A record
    /// whose owner is a pointer, 16 bytes).
    public static let pickedRecordsMax = Answerer.responseBytesMax / 16 + 1
    /// The response holds a per-query pick (shuffled or rotated): cached only as a template
    /// (`pickedTemplate`), whose records each hit puts in its own order.
    private var picked = false
    /// The picked RRset's selection and where its records start, when the response holds all
    /// of its candidates (a template the cache can re-order); nil otherwise.
    private var pickedTemplate: (selection: Unmanaged<RecordSelection>, start: Int)?
    /// Service answers given from every instance because too few were healthy (panic).
    public private(set) var panicAnswers = 0
    /// Milliseconds on the slow-start clock (tests set it; nil: CLOCK_MONOTONIC_COARSE).
    public var clock: (() -> UInt64)?

    /// - Parameters:
    ///   - cache: keep a response cache (12 MiB; for long-lived UDP workers, not per connection).
    ///   - seed: of the worker's selection PRNG (nil: from the system's random source).
    public init(udpPayloadBytes: Int = Answerer.udpPayloadBytesMax, minimalResponses: Bool = false, cache: Bool = false,
                selection: SelectionOptions = SelectionOptions(), seed: UInt64? = nil) {
        self.minimalResponses = minimalResponses
        self.selection = selection
        picker = RecordPicker(seed: seed ?? UInt64.random(in: 0...UInt64.max))
        pickedRecords = .allocate(capacity: Self.pickedRecordsMax)
        self.cache = cache ? AnswerCache() : nil
        additionalNodes = .allocate(capacity: Self.additionalNodesMax)
        precondition(udpPayloadBytes >= EDNS.udpPayloadBytesMin && udpPayloadBytes <= Answerer.responseBytesMax)
        lowercasedName = .allocate(byteCount: DomainName.nameBytesMax + 2, alignment: 8)
        chainName = .allocate(byteCount: DomainName.nameBytesMax + 2, alignment: 8)
        scratch = .allocate(byteCount: DomainName.nameBytesMax + 2, alignment: 8)
        wildcardName = .allocate(byteCount: DomainName.nameBytesMax + 2, alignment: 8)
        compressionTable = .allocate(capacity: WireWriter.compressionEntriesMax)
        chainNodes = .allocate(capacity: Self.cnameChainLengthMax)
        chainZones = .allocate(capacity: Self.cnameChainLengthMax)
        chainZones.initialize(repeating: nil, count: Self.cnameChainLengthMax)
        self.udpPayloadBytes = udpPayloadBytes
    }

    deinit {
        lowercasedName.deallocate()
        chainName.deallocate()
        scratch.deallocate()
        wildcardName.deallocate()
        compressionTable.deallocate()
        chainNodes.deallocate()
        additionalNodes.deallocate()
        chainZones.deallocate()
        pickedRecords.deallocate()
    }

    /// The owner (uncompressed wire form) of the wildcard the last answer's data was
    /// synthesized from, for RRL's wildcard class; nil when it was not. Valid until the next
    /// answer.
    public var lastWildcard: UnsafeRawBufferPointer? {
        wildcardLength == 0 ? nil : UnsafeRawBufferPointer(start: wildcardName, count: wildcardLength)
    }

    /// Answers one query. Returns the response length, or 0 when the packet is to be dropped
    /// (too short to answer, or itself a response).
    public func answer(query: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer,
                       view: View, transport: Transport) -> Int {
        wildcardLength = 0
        guard query.count >= Message.headerBytes, output.count >= Message.udpMessageBytesClassic else { return 0 }
        var reader = WireReader(query)
        let id = (try? reader.u16()) ?? 0
        let queryFlags = HeaderFlags(rawValue: (try? reader.u16()) ?? 0)
        guard !queryFlags.qr else { return 0 }  // never answer a response: no loops
        let qdcount = (try? reader.u16()) ?? 0
        let ancount = (try? reader.u16()) ?? 0
        let nscount = (try? reader.u16()) ?? 0
        let arcount = (try? reader.u16()) ?? 0

        var writer = WireWriter(buffer: UnsafeMutableRawBufferPointer(rebasing: output[0..<min(output.count, Self.responseBytesMax)]),
                                compressionTable: compressionTable)
        var flags = HeaderFlags(rawValue: 0)
        flags.qr = true
        flags.opcode = queryFlags.opcode
        flags.rd = queryFlags.rd
        flags.cd = queryFlags.cd

        // The question: only a well-formed, single one is answered.
        var questionEnd = 0
        var nameLength = 0
        var qtype = RRType(0)
        var qclass = RRClass(rawValue: 0)
        var questionOK = false
        if qdcount == 1 {
            let nameStart = reader.offset
            if let length = try? reader.name(into: lowercasedName, lowercase: true),
               let type = try? reader.u16(), let rrClass = try? reader.u16() {
                nameLength = length
                qtype = RRType(type)
                qclass = RRClass(rawValue: rrClass)
                questionEnd = reader.offset
                // A compressed question name cannot be echoed verbatim.
                questionOK = questionEnd - nameStart == nameLength + 4
            }
        }
        lastQType = qtype
        // RFC 1035 §4.1.1: an opcode we do not implement is NOTIMP whatever the rest holds (a
        // header-only NOTIFY or UPDATE probe is no malformed query). Its RD and CD mean nothing
        // to us, so they are not echoed (as NSD and BIND).
        var notImplemented = flags
        notImplemented.rd = false
        notImplemented.cd = false
        guard questionOK else {
            if queryFlags.opcode != .query {
                return error(.notImp, id: id, flags: notImplemented, query: query, questionEnd: 0, edns: nil, writer: &writer)
            }
            return error(.formErr, id: id, flags: flags, query: query, questionEnd: 0, edns: nil, writer: &writer)
        }

        // EDNS: skip answer and authority, find the OPT in the additional section.
        var edns: ClientEDNS?
        var formErr = false
        do throws(WireError) {
            for _ in 0..<(Int(ancount) + Int(nscount)) where !formErr {
                // RFC 6891 §6.1.1: an OPT anywhere but the additional section is malformed.
                if try skipRecord(&reader) == RRType.opt.rawValue { formErr = true }
            }
            for _ in 0..<arcount where !formErr {
                let ownerAt = reader.offset
                try reader.skipName()
                let ownerIsRoot = reader.offset - ownerAt == 1
                let type = try reader.u16()
                let rrClass = try reader.u16()
                let ttl = try reader.u32()
                let length = Int(try reader.u16())
                guard type == RRType.opt.rawValue else {
                    try reader.skip(length)
                    continue
                }
                guard edns == nil, ownerIsRoot, try Self.skipOptions(&reader, rdataLength: length) else {
                    formErr = true
                    break
                }
                edns = ClientEDNS(payload: rrClass, version: UInt8((ttl >> 16) & 0xFF), dnssecOK: ttl & 0x8000 != 0)
            }
        } catch {
            formErr = true
        }
        if formErr {
            return error(.formErr, id: id, flags: flags, query: query, questionEnd: questionEnd, edns: edns,
                         writer: &writer)
        }
        guard queryFlags.opcode == .query else {
            return error(.notImp, id: id, flags: notImplemented, query: query, questionEnd: questionEnd, edns: edns,
                         writer: &writer)
        }
        if let edns, edns.version != 0 {
            // RFC 6891 §6.1.3: an unsupported version gets BADVERS, with our version (0).
            return error(.badVers, id: id, flags: flags, query: query, questionEnd: questionEnd, edns: edns,
                         writer: &writer)
        }
        if qclass == .chaos && (qtype == .txt || qtype == .any),
           let record = view.identity.record(for: UnsafeRawBufferPointer(start: lowercasedName, count: nameLength)) {
            return chaosAnswer(record, id: id, flags: flags, query: query, questionEnd: questionEnd, edns: edns,
                               writer: &writer)
        }
        if qclass != .in && qclass != .any {
            return error(.refused, id: id, flags: flags, query: query, questionEnd: questionEnd, edns: edns,
                         extendedError: .notSupported, writer: &writer)
        }
        if qtype == .axfr || qtype == .ixfr {
            // Zone transfers are not offered.
            return error(.refused, id: id, flags: flags, query: query, questionEnd: questionEnd, edns: edns,
                         writer: &writer)
        }
        if qtype.isMetaType && qtype != .any {
            return error(.formErr, id: id, flags: flags, query: query, questionEnd: questionEnd, edns: edns,
                         writer: &writer)
        }
        let name = UnsafeRawBufferPointer(start: lowercasedName, count: nameLength)
        let sizeLimit = limit(transport: transport, edns: edns, output: output.count)
        // The cache first: an entry exists only for a name of a zone in this View (the cache
        // drops the entries of every zone a new View replaces), so a hit needs no zone lookup.
        if let cache {
            cache.use(view)
            let hit = cache.answer(name: name, query: query, questionEnd: questionEnd, hasEDNS: edns != nil,
                                   dnssecOK: edns?.dnssecOK ?? false, limit: sizeLimit, into: output)
            if hit > 0 {
                cacheHits &+= 1
                if let template = cache.pickedAnswerOfLastHit() { reorder(template, in: output) }
                return hit
            }
            cacheMisses &+= 1
        }
        let zoneIndex = view.zoneIndex(containing: name)
        guard zoneIndex >= 0 else {
            return error(.refused, id: id, flags: flags, query: query, questionEnd: questionEnd, edns: edns,
                         extendedError: .notAuthoritative, writer: &writer)
        }
        let zone = view.zones[zoneIndex]
        zonesRead = View.zoneBit(zoneIndex)

        writer.reset(capacity: sizeLimit)
        // Room for our OPT is kept back while the sections are written.
        let optBytes = edns == nil ? 0 : EDNS.optRecordBytesMin
        writer.capacity -= optBytes
        writeHeaderAndQuestion(id: id, query: query, questionEnd: questionEnd, writer: &writer)
        let afterQuestion = writer.mark

        var counts = SectionCounts()
        additionalCount = 0
        trimmed = false
        picked = false
        pickedTemplate = nil
        answeredAddress = (-1, RRType(0))
        var rcode = RCode.noError
        // Set before anything is written, so a truncated response keeps it (as NSD does).
        var aa = true
        do throws(WireOverflow) {
            rcode = try resolve(zone: zone, qtype: qtype, view: view, authoritative: &aa,
                                counts: &counts, writer: &writer)
        } catch {
            // RFC 2181 §9: a required section that does not fit sets TC; nothing partial is sent.
            writer.rollback(to: afterQuestion)
            counts = SectionCounts()
            flags.tc = true
            rcode = .noError
        }
        flags.aa = aa
        writer.capacity += optBytes
        let length = finish(flags: flags, rcode: rcode, counts: counts, edns: edns, writer: &writer)
        // Not wildcard answers either: each random name under a wildcard (the flood RRL's
        // wildcard class is for) would take a slot from a name asked again.
        if let cache, !flags.tc, !trimmed, wildcardLength == 0, !picked || pickedTemplate != nil,
           rcode == .noError || rcode == .nxDomain {
            let response = UnsafeRawBufferPointer(start: output.baseAddress, count: length)
            if let template = pickedTemplate {
                cache.store(name: name, response: response, questionEnd: questionEnd, hasEDNS: edns != nil, zones: zonesRead,
                            picked: (template.selection.takeUnretainedValue(), template.start,
                                     UnsafeBufferPointer(start: pickedRecords, count: pickedCount)))
            } else {
                cache.store(name: name, response: response, questionEnd: questionEnd, hasEDNS: edns != nil, zones: zonesRead)
            }
        }
        return length
    }

    // MARK: - Resolution

    /// The answer holds data synthesized from the wildcard `owner` (the first one, if a chain
    /// meets several).
    private func rememberWildcard(_ owner: DomainName) {
        guard wildcardLength == 0 else { return }
        owner.wire.withUnsafeBytes { wildcardName.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        wildcardLength = owner.wire.count
    }

    private struct SectionCounts {
        var answer: UInt16 = 0
        var authority: UInt16 = 0
        var additional: UInt16 = 0
    }

    private struct ClientEDNS {
        var payload: UInt16
        var version: UInt8
        var dnssecOK: Bool
    }

    /// Runs the lookup, following CNAMEs and DNAMEs inside served zones, and writes the answer
    /// and authority sections (throwing on overflow) and the additional section (best effort).
    private func resolve(zone startZone: Zone, qtype: RRType, view: View,
                         authoritative: inout Bool, counts: inout SectionCounts,
                         writer: inout WireWriter) throws(WireOverflow) -> RCode {
        var zone = startZone
        var owner = Owner.offset(Message.headerBytes)
        var nameLength = 0
        while lowercasedName.load(fromByteOffset: nameLength, as: UInt8.self) != 0 {
            nameLength += 1 + Int(lowercasedName.load(fromByteOffset: nameLength, as: UInt8.self))
        }
        nameLength += 1
        var chain = 0
        // The question's name, then the chain's (in `chainName`).
        var current = lowercasedName
        while true {
            let name = UnsafeRawBufferPointer(start: current, count: nameLength)
            switch zone.lookup(name, type: qtype, scratch: scratch) {
            case .answer(let nodeIndex, let rrsetIndex, let wildcard):
                let node = zone.nodes[Int(nodeIndex)]
                if wildcard { rememberWildcard(node.name) }
                let rrset = node.rrsets[Int(rrsetIndex)]
                try writeAnswer(rrset, owner: owner, counts: &counts, writer: &writer)
                let apexNS = minimalResponses || (nodeIndex == 0 && rrset.type == .ns) ? nil : zone.apexNS
                // ADDITIONAL never repeats the answer (NSD): the answered name counts as added.
                if rrset.type == .a || rrset.type == .aaaa { answeredAddress = (nodeIndex, rrset.type) }
                if let apexNS { writeAuthority(apexNS, zone: zone, counts: &counts, writer: &writer) }
                writeAdditional(for: rrset, zone: zone, counts: &counts, writer: &writer)
                if let apexNS, counts.authority > 0 {
                    writeAdditional(for: apexNS, zone: zone, counts: &counts, writer: &writer)
                }
                return .noError

            case .any(let nodeIndex, let wildcard):
                // RFC 8482 §4.2: one RRset answers ANY (the name's first, as NSD picks it),
                // over UDP and TCP alike, so ANY cannot amplify.
                if wildcard { rememberWildcard(zone.nodes[Int(nodeIndex)].name) }
                let rrset = zone.nodes[Int(nodeIndex)].rrsets[0]
                try writeAnswer(rrset, owner: owner, counts: &counts, writer: &writer)
                writeAdditional(for: rrset, zone: zone, counts: &counts, writer: &writer)
                return .noError

            case .cname(let nodeIndex, let rrsetIndex, let wildcard):
                // A CNAME seen before in this chain is a loop: answer with the chain so far.
                if !wildcard && visited(zone: zone, node: nodeIndex, count: chain) { return .noError }
                if wildcard {
                    rememberWildcard(zone.nodes[Int(nodeIndex)].name)
                } else {
                    remember(zone: zone, node: nodeIndex, at: chain)
                }
                let rrset = zone.nodes[Int(nodeIndex)].rrsets[Int(rrsetIndex)]
                let targetAt = try writeRRSet(rrset, owner: owner, writer: &writer)
                counts.answer &+= 1
                chain += 1
                let target = rrset.compiled[0].lowercasedTarget
                guard chain <= Self.cnameChainLengthMax, targetAt < 0x4000 else { return .noError }
                nameLength = target.count
                target.withUnsafeBytes { chainName.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
                current = chainName
                let nextIndex = view.zoneIndex(containing: UnsafeRawBufferPointer(start: current, count: nameLength))
                guard nextIndex >= 0 else {
                    return .noError  // the target is not ours: the resolver follows it
                }
                zonesRead |= View.zoneBit(nextIndex)
                zone = view.zones[nextIndex]
                owner = .offset(targetAt)

            case .dname(let nodeIndex, let rrsetIndex):
                let node = zone.nodes[Int(nodeIndex)]
                let rrset = node.rrsets[Int(rrsetIndex)]
                try writeRRSet(rrset, owner: .name(node.name), writer: &writer)
                counts.answer &+= 1
                // RFC 6672 §2.2: qname = prefix + owner; the synthesized CNAME points to prefix + target.
                guard case .dname(let target) = rrset.records[0] else { preconditionFailure("DNAME RRset without DNAME") }
                let prefixLength = nameLength - node.name.wire.count
                guard prefixLength + target.wire.count <= DomainName.nameBytesMax else { return .yxDomain }
                let targetAt = try writeSynthesizedCNAME(owner: owner, name: current, prefixLength: prefixLength, target: target,
                                                         ttl: rrset.ttl, writer: &writer)
                counts.answer &+= 1
                chain += 1
                // The new name: prefix (already lowercased) + lowercased target, in `chainName`.
                let lowerTarget = rrset.compiled[0].lowercasedTarget
                if current != chainName { chainName.copyMemory(from: current, byteCount: prefixLength) }
                current = chainName
                nameLength = prefixLength + lowerTarget.count
                lowerTarget.withUnsafeBytes { (chainName + prefixLength).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
                guard chain <= Self.cnameChainLengthMax, targetAt < 0x4000 else { return .noError }
                let nextIndex = view.zoneIndex(containing: UnsafeRawBufferPointer(start: current, count: nameLength))
                guard nextIndex >= 0 else { return .noError }
                // A CNAME query is answered by the synthesized CNAME itself.
                if qtype == .cname { return .noError }
                zonesRead |= View.zoneBit(nextIndex)
                zone = view.zones[nextIndex]
                owner = .offset(targetAt)

            case .delegation(let nodeIndex):
                // RFC 1034 §4.3.2 step 3b: a referral, NS in authority, glue in additional, AA clear.
                let node = zone.nodes[Int(nodeIndex)]
                guard let nsIndex = node.rrsetIndex(of: .ns) else { preconditionFailure("delegation without NS") }
                let ns = node.rrsets[nsIndex]
                // A referral is not authoritative, unless it follows an in-zone CNAME.
                authoritative = chain > 0
                try writeRRSet(ns, owner: .name(node.name), writer: &writer)
                counts.authority &+= UInt16(ns.count)
                // RFC 9471: glue for in-domain name servers must fit, else TC.
                try writeGlue(for: ns, zone: zone, counts: &counts, writer: &writer)
                return .noError

            case .noData:
                try writeNegativeSOA(zone: zone, writer: &writer)
                counts.authority &+= 1
                return .noError

            case .nxDomain:
                // RFC 6604: the rcode describes the last name of the chain.
                try writeNegativeSOA(zone: zone, writer: &writer)
                counts.authority &+= 1
                return .nxDomain
            }
        }
    }

    /// CNAME owners of the current chain, to stop at a loop instead of repeating it.
    private func visited(zone: Zone, node: Int32, count: Int) -> Bool {
        for i in 0..<min(count, Self.cnameChainLengthMax) where chainNodes[i] == node && chainZones[i] == ObjectIdentifier(zone) {
            return true
        }
        return false
    }

    private func remember(zone: Zone, node: Int32, at index: Int) {
        guard index < Self.cnameChainLengthMax else { return }
        chainNodes[index] = node
        chainZones[index] = ObjectIdentifier(zone)
    }

    private enum Owner {
        /// A name already in the message (the question, or a CNAME target): a pointer to it.
        case offset(Int)
        case name(DomainName)
    }

    /// Writes every record of `rrset` under `owner`. Returns the offset of the last record's
    /// RDATA (a CNAME's target name), for the next link of a chain.
    @discardableResult
    private func writeRRSet(_ rrset: RRSet, owner: Owner, writer: inout WireWriter) throws(WireOverflow) -> Int {
        var rdataAt = 0
        for compiled in rrset.compiled {
            switch owner {
            case .offset(let offset): try writer.u16(0xC000 | UInt16(offset))
            case .name(let name): try writer.name(name)
            }
            try writer.u16(rrset.type.rawValue)
            try writer.u16(RRClass.in.rawValue)
            try writer.u32(rrset.ttl)
            let lengthAt = writer.count
            try writer.u16(0)
            rdataAt = writer.count
            try writeRData(compiled, writer: &writer)
            writer.patchU16(UInt16(writer.count - lengthAt - 2), at: lengthAt)
        }
        return rdataAt
    }

    /// The ANSWER RRset: whole, or, for a service RRset, the records this query picks.
    @inline(__always)
    private func writeAnswer(_ rrset: RRSet, owner: Owner, counts: inout SectionCounts,
                             writer: inout WireWriter) throws(WireOverflow) {
        if let selection = rrset.selection {
            counts.answer &+= try writePicked(rrset, selection, owner: owner, writer: &writer)
        } else {
            pickedCount = -1
            try writeRRSet(rrset, owner: owner, writer: &writer)
            counts.answer &+= UInt16(rrset.count)
        }
    }

    /// Writes the records of a service RRset in the order this query picks, until the
    /// client's buffer or the set's record limit is reached: a service answer never sets TC
    /// (unless not even one record fits). Returns how many were written.
    private func writePicked(_ rrset: RRSet, _ selection: RecordSelection, owner: Owner,
                             writer: inout WireWriter) throws(WireOverflow) -> UInt16 {
        let ttl = startPick(selection)
        picked = true
        let start = writer.count
        pickedCount = 0
        // Records are copied from the selection's wire form (no reference counting per record);
        // the generic encoder is the fallback for records with compressible names.
        let full = selection.wire.isEmpty
            ? pickRecords(selection, owner: owner, writer: &writer) { index, writer throws(WireOverflow) in
                try self.writeRecord(rrset.compiled[index], type: rrset.type, ttl: ttl, owner: owner, writer: &writer)
            }
            : selection.wire.withUnsafeBytes { wire in
                selection.wireOffsets.withUnsafeBufferPointer { offsets in
                    pickRecords(selection, owner: owner, writer: &writer) { index, writer throws(WireOverflow) in
                        switch owner {
                        case .offset(let offset): try writer.u16(0xC000 | UInt16(offset))
                        case .name(let name): try writer.name(name)
                        }
                        let ttlAt = writer.count + 4
                        try writer.bytes(UnsafeRawBufferPointer(rebasing: wire[Int(offsets[index])..<Int(offsets[index + 1])]))
                        if ttl != rrset.ttl {
                            writer.patchU16(UInt16(ttl >> 16), at: ttlAt)
                            writer.patchU16(UInt16(ttl & 0xFFFF), at: ttlAt + 2)
                        }
                    }
                }
            }
        // RFC 2181 §9: an answer without a single record is not an answer (TC).
        if pickedCount == 0 { throw WireOverflow() }
        if !full { trimmed = true }
        // Every candidate, owned by a pointer: the cache can keep it and re-order it per hit.
        if full, pickedCount == selection.candidateCount, pickedCount <= AnswerCache.pickedRecordsMax,
           case .offset = owner, !selection.wire.isEmpty {
            pickedTemplate = (Unmanaged.passUnretained(selection), start)
        }
        return UInt16(pickedCount)
    }

    /// Starts this query's pick over `selection` (counting a panic); returns the TTL to write.
    @inline(__always)
    private func startPick(_ selection: RecordSelection) -> UInt32 {
        let policy = self.selection.policy
        let warming = policy == .shuffle && selection.warmAtMilliseconds > 0
        picker.start(selection, policy: policy, nowMilliseconds: warming ? (clock?() ?? disco_monotonic_milliseconds()) : 0)
        if selection.panics { panicAnswers &+= 1 }
        let jitter = Int(selection.ttl) * self.selection.ttlJitterPercent / 100
        return jitter > 0 ? selection.ttl - UInt32(picker.next(below: jitter + 1)) : selection.ttl
    }

    /// A cached service answer holds its records in the set's order: this query's pick puts
    /// them in its own (and patches its TTL when jittered).
    private func reorder(_ template: (selection: RecordSelection, start: Int, count: Int),
                         in output: UnsafeMutableRawBufferPointer) {
        let ttl = startPick(template.selection)
        let message = output.baseAddress!
        // `fixed` picks the set's order: the template's.
        if selection.policy != .fixed, let cache {
            cache.permuteRecords(in: message, from: template.start, count: template.count) { _ in
                picker.next(template.selection)
            }
        }
        guard ttl != template.selection.ttl else { return }
        var at = template.start
        for _ in 0..<template.count {
            message.storeBytes(of: ttl.bigEndian, toByteOffset: at + 6, as: UInt32.self)
            at += 12 + (Int(message.load(fromByteOffset: at + 10, as: UInt8.self)) << 8
                | Int(message.load(fromByteOffset: at + 11, as: UInt8.self)))
        }
    }

    /// Writes picked records with `write` until the pick ends (true) or the next record does
    /// not fit or the response holds `pickedRecordsMax` (false); counts them in `pickedCount`.
    @inline(__always)
    private func pickRecords(_ selection: RecordSelection, owner: Owner, writer: inout WireWriter,
                             write: (Int, inout WireWriter) throws(WireOverflow) -> Void) -> Bool {
        while pickedCount < Self.pickedRecordsMax {
            let index = picker.next(selection)
            if index < 0 { return true }
            let mark = writer.mark
            do throws(WireOverflow) {
                try write(index, &writer)
            } catch {
                writer.rollback(to: mark)
                return false
            }
            pickedRecords[pickedCount] = Int32(index)
            pickedCount += 1
        }
        return false
    }

    @inline(__always)
    private func writeRecord(_ compiled: CompiledRData, type: RRType, ttl: UInt32, owner: Owner,
                             writer: inout WireWriter) throws(WireOverflow) {
        switch owner {
        case .offset(let offset): try writer.u16(0xC000 | UInt16(offset))
        case .name(let name): try writer.name(name)
        }
        try writer.u16(type.rawValue)
        try writer.u16(RRClass.in.rawValue)
        try writer.u32(ttl)
        let lengthAt = writer.count
        try writer.u16(0)
        try writeRData(compiled, writer: &writer)
        writer.patchU16(UInt16(writer.count - lengthAt - 2), at: lengthAt)
    }

    @inline(__always)
    private func writeRData(_ compiled: CompiledRData, writer: inout WireWriter) throws(WireOverflow) {
        let written = compiled.bytes.withUnsafeBytes { bytes in
            (try? Self.writeRData(bytes, firstNameAt: Int(compiled.firstNameAt),
                                  secondNameAt: Int(compiled.secondNameAt), writer: &writer)) != nil
        }
        if !written { throw WireOverflow() }
    }

    @inline(__always)
    private static func writeRData(_ bytes: UnsafeRawBufferPointer, firstNameAt: Int, secondNameAt: Int,
                                   writer: inout WireWriter) throws(WireOverflow) {
        guard firstNameAt >= 0 else {
            try writer.bytes(bytes)
            return
        }
        var position = try writeName(bytes, at: firstNameAt, from: 0, writer: &writer)
        if secondNameAt >= 0 {
            position = try writeName(bytes, at: secondNameAt, from: position, writer: &writer)
        }
        try writer.bytes(UnsafeRawBufferPointer(rebasing: bytes[position...]))
    }

    /// Copies `bytes[from..<nameAt]`, then the name at `nameAt` compressed; returns its end.
    @inline(__always)
    private static func writeName(_ bytes: UnsafeRawBufferPointer, at nameAt: Int, from position: Int,
                                  writer: inout WireWriter) throws(WireOverflow) -> Int {
        try writer.bytes(UnsafeRawBufferPointer(rebasing: bytes[position..<nameAt]))
        var end = nameAt
        while bytes[end] != 0 { end += 1 + Int(bytes[end]) }
        end += 1
        try writer.name(wire: UnsafeRawBufferPointer(rebasing: bytes[nameAt..<end]), compress: true)
        return end
    }

    /// - Parameter name: the name the chain has reached (its first `prefixLength` bytes are the prefix).
    private func writeSynthesizedCNAME(owner: Owner, name: UnsafeMutableRawPointer, prefixLength: Int, target: DomainName,
                                       ttl: UInt32, writer: inout WireWriter) throws(WireOverflow) -> Int {
        switch owner {
        case .offset(let offset): try writer.u16(0xC000 | UInt16(offset))
        case .name(let name): try writer.name(name)
        }
        try writer.u16(RRType.cname.rawValue)
        try writer.u16(RRClass.in.rawValue)
        try writer.u32(ttl)
        let lengthAt = writer.count
        try writer.u16(0)
        let rdataAt = writer.count
        try writer.bytes(UnsafeRawBufferPointer(start: name, count: prefixLength))
        try writer.name(target)
        writer.patchU16(UInt16(writer.count - lengthAt - 2), at: lengthAt)
        return rdataAt
    }

    private func writeNegativeSOA(zone: Zone, writer: inout WireWriter) throws(WireOverflow) {
        try writeRRSet(zone.negativeSOA, owner: .name(zone.origin), writer: &writer)
    }

    /// The apex NS RRset in AUTHORITY of a positive answer (NSD's default), best effort: left
    /// out whole if it does not fit.
    private func writeAuthority(_ ns: RRSet, zone: Zone, counts: inout SectionCounts, writer: inout WireWriter) {
        let mark = writer.mark
        do throws(WireOverflow) {
            try writeRRSet(ns, owner: .name(zone.origin), writer: &writer)
            counts.authority &+= UInt16(ns.count)
        } catch {
            writer.rollback(to: mark)
            trimmed = true
        }
    }

    /// Additional-section A/AAAA for NS, MX and SRV targets in the same zone (RFC 1034 §3.6.2,
    /// RFC 2782). Best effort: an RRset that does not fit is left out without setting TC.
    private func writeAdditional(for rrset: RRSet, zone: Zone, counts: inout SectionCounts, writer: inout WireWriter) {
        do throws(WireOverflow) {
            try writeAddresses(for: rrset, zone: zone, referral: false, picked: rrset.selection != nil,
                               counts: &counts, writer: &writer)
        } catch {
            preconditionFailure("only referral glue is required to fit")
        }
    }

    /// Glue for a referral: addresses of name servers at or below the cut must fit (RFC 9471),
    /// else this throws and the response gets TC; other in-zone addresses are best effort.
    private func writeGlue(for ns: RRSet, zone: Zone, counts: inout SectionCounts,
                           writer: inout WireWriter) throws(WireOverflow) {
        try writeAddresses(for: ns, zone: zone, referral: true, picked: false, counts: &counts, writer: &writer)
    }

    /// The A/AAAA RRsets of the in-zone targets of `rrset` (`picked`: of the records this
    /// query picked from it, in their order), each name once per response and never
    /// repeating the answer. Glue (below a cut) is used only in referrals, where it is
    /// required to fit.
    private func writeAddresses(for rrset: RRSet, zone: Zone, referral: Bool, picked: Bool, counts: inout SectionCounts,
                                writer: inout WireWriter) throws(WireOverflow) {
        let compiled = rrset.compiled
        let count = picked ? max(pickedCount, 0) : compiled.count
        for position in 0..<count {
            let i = picked ? Int(pickedRecords[position]) : position
            let target = compiled.additionalNode(at: i)
            guard target >= 0, !alreadyAdded(target) else { continue }
            let node = zone.nodes[Int(target)]
            let isGlue = node.kind == .glue || node.kind == .delegation
            if node.kind == .glue && !referral { continue }
            markAdded(target)
            for address in node.rrsets where address.type == .a || address.type == .aaaa {
                if answeredAddress.node == target && answeredAddress.type == address.type { continue }
                let mark = writer.mark
                do throws(WireOverflow) {
                    try writeRRSet(address, owner: .name(node.name), writer: &writer)
                    counts.additional &+= UInt16(address.count)
                } catch {
                    writer.rollback(to: mark)
                    if referral && isGlue { throw error }
                    trimmed = true
                    return
                }
            }
        }
    }

    /// Nodes whose addresses are already in ADDITIONAL (one zone per response: additional
    /// data comes from the zone of the final answer or referral).
    @inline(__always)
    private func alreadyAdded(_ node: Int32) -> Bool {
        for i in 0..<additionalCount where additionalNodes[i] == node { return true }
        return false
    }

    @inline(__always)
    private func markAdded(_ node: Int32) {
        guard additionalCount < Self.additionalNodesMax else { return }
        additionalNodes[additionalCount] = node
        additionalCount += 1
    }

    // MARK: - Framing

    private func limit(transport: Transport, edns: ClientEDNS?, output: Int) -> Int {
        switch transport {
        case .tcp:
            return min(output, Self.responseBytesMax)
        case .udp:
            guard let edns else { return min(output, Message.udpMessageBytesClassic) }
            // RFC 6891 §6.2.5: below 512 counts as 512; we never send more than we advertise.
            let requested = max(Int(edns.payload), EDNS.udpPayloadBytesMin)
            return min(requested, udpPayloadBytes, output)
        }
    }

    private func writeHeaderAndQuestion(id: UInt16, query: UnsafeRawBufferPointer, questionEnd: Int,
                                        writer: inout WireWriter) {
        // The header is patched in `finish`; the question is echoed as the client wrote it.
        do throws(WireOverflow) {
            try writer.u16(id)
            try writer.u16(0)
            try writer.u16(questionEnd > 0 ? 1 : 0)
            try writer.u16(0)
            try writer.u16(0)
            try writer.u16(0)
            if questionEnd > 0 {
                try writer.bytes(UnsafeRawBufferPointer(rebasing: query[Message.headerBytes..<questionEnd]))
                // Every suffix of the question name is a compression target (the zone apex is one).
                var offset = Message.headerBytes
                while query[offset] != 0 {
                    writer.registerName(at: offset)
                    offset += 1 + Int(query[offset])
                }
            }
        } catch {
            // The question came in a packet of at most this size; 512 bytes always hold it.
            preconditionFailure("header and question do not fit in \(writer.capacity) bytes")
        }
    }

    private func finish(flags: HeaderFlags, rcode: RCode, counts: SectionCounts, edns: ClientEDNS?,
                        extendedError: ExtendedError? = nil, writer: inout WireWriter) -> Int {
        var flags = flags
        flags.rcodeBits = rcode.headerBits
        writer.patchU16(flags.rawValue, at: 2)
        writer.patchU16(counts.answer, at: 6)
        writer.patchU16(counts.authority, at: 8)
        var additional = counts.additional
        if let edns {
            do throws(WireOverflow) {
                try writer.u8(0)
                try writer.u16(RRType.opt.rawValue)
                try writer.u16(UInt16(udpPayloadBytes))
                // RFC 3225: DO is copied from the query.
                try writer.u32(UInt32(rcode.extendedBits) << 24 | (edns.dnssecOK ? 0x8000 : 0))
                if let extendedError {
                    // RFC 8914 §2: option 15, INFO-CODE, no EXTRA-TEXT.
                    try writer.u16(6)
                    try writer.u16(Self.extendedErrorOptionCode)
                    try writer.u16(2)
                    try writer.u16(extendedError.rawValue)
                } else {
                    try writer.u16(0)
                }
                additional &+= 1
            } catch {
                preconditionFailure("room for OPT was reserved")
            }
        }
        writer.patchU16(additional, at: 10)
        return writer.count
    }

    private func error(_ rcode: RCode, id: UInt16, flags: HeaderFlags, query: UnsafeRawBufferPointer,
                       questionEnd: Int, edns: ClientEDNS?, extendedError: ExtendedError? = nil,
                       writer: inout WireWriter) -> Int {
        writer.reset(capacity: Message.udpMessageBytesClassic)
        writeHeaderAndQuestion(id: id, query: query, questionEnd: questionEnd, writer: &writer)
        return finish(flags: flags, rcode: rcode, counts: SectionCounts(), edns: edns, extendedError: extendedError,
                      writer: &writer)
    }

    /// `CH TXT id.server` and the like: one TXT record in class CH, TTL 0, without AA (as NSD
    /// 4.6 answers them: no zone holds these names).
    private func chaosAnswer(_ rdata: [UInt8], id: UInt16, flags: HeaderFlags, query: UnsafeRawBufferPointer,
                             questionEnd: Int, edns: ClientEDNS?, writer: inout WireWriter) -> Int {
        writer.reset(capacity: Message.udpMessageBytesClassic)
        writeHeaderAndQuestion(id: id, query: query, questionEnd: questionEnd, writer: &writer)
        do throws(WireOverflow) {
            try writer.u16(0xC000 | UInt16(Message.headerBytes))  // the question's name
            try writer.u16(RRType.txt.rawValue)
            try writer.u16(RRClass.chaos.rawValue)
            try writer.u32(0)
            try writer.u16(UInt16(rdata.count))
            try writer.bytes(rdata)
        } catch {
            preconditionFailure("a 256-byte TXT fits a 512-byte response")
        }
        var counts = SectionCounts()
        counts.answer = 1
        return finish(flags: flags, rcode: .noError, counts: counts, edns: edns, writer: &writer)
    }

    /// RFC 8914 Extended DNS Error codes we send (only when the query had EDNS).
    enum ExtendedError: UInt16 {
        case notAuthoritative = 20
        case notSupported = 21
    }

    /// Skips one resource record; returns its type.
    private func skipRecord(_ reader: inout WireReader) throws(WireError) -> UInt16 {
        try reader.skipName()
        let type = try reader.u16()
        try reader.skip(6)
        let length = Int(try reader.u16())
        try reader.skip(length)
        return type
    }

    /// Skips an OPT record's options (code, length, data each); false when one runs past the
    /// record's RDLENGTH (RFC 6891 §6.1.2: FORMERR).
    private static func skipOptions(_ reader: inout WireReader, rdataLength: Int) throws(WireError) -> Bool {
        var remaining = rdataLength
        while remaining > 0 {
            guard remaining >= 4 else { return false }
            _ = try reader.u16()
            let length = Int(try reader.u16())
            remaining -= 4
            guard length <= remaining else { return false }
            try reader.skip(length)
            remaining -= length
        }
        return true
    }
}
