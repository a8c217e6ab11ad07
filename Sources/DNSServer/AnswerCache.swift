import DNSZone

/// A per-worker cache of complete responses (PowerDNS's packet cache), keyed by the
/// lowercased question and whether the query had EDNS. Each entry records the zones its
/// response read (a CNAME chain may cross zones). A new View drops the entries of the zones it
/// replaced and keeps the others, so a registry change is visible on the next query without
/// emptying the cache of zone-file answers; a View with other origins empties it.
///
/// A hit is one hash, one comparison and one copy; the query's ID, RD/CD bits, question
/// (the client's case; pointers into it keep that case for owners) and DO bit are patched in.
/// Only responses that are complete whatever the client's size (no TC, nothing left out of
/// AUTHORITY or ADDITIONAL) and small are stored, so a hit is byte-for-byte what the full
/// pipeline would write.
///
/// A service answer (an RRset with a `RecordSelection`) is stored when it holds every
/// candidate record, with its records in the set's order and a reference to the selection: a hit
/// is the response template, whose answer records the Answerer then puts in this query's order
/// (DESIGN.md: selection happens per query, after the cache). Those records are relocatable:
/// their owner is a pointer, their RDATA holds no pointer (A, AAAA, SRV).
///
/// Two tiers of slots: `entriesMax` of `entryBytesMax` for most answers, and `largeEntriesMax`
/// of `largeEntryBytesMax` for the answers above that (the big registry names: an SRV answer of
/// many instances with their addresses). A question lives in one set of each tier; a lookup
/// tries the small tier, then the large one.
///
/// Memory: `entriesMax × entryBytesMax + largeEntriesMax × largeEntryBytesMax` (13.2 MiB),
/// allocated once; no allocation per query.
final class AnswerCache {
    /// Small slots, in 2-way sets (a question lives in slot 2k or 2k+1); a power of two. 16384
    /// keeps a service-shaped working set of ~10,000 distinct questions resident.
    static let entriesMax = 16384
    /// The small slots' size. 768 holds an SRV answer of a dozen instances with their addresses;
    /// making every slot 1232 bytes would make the cache 60% bigger for the few responses above.
    static let entryBytesMax = 768
    /// Large slots (2-way sets too; a power of two), for responses above `entryBytesMax`.
    static let largeEntriesMax = 1024
    /// The large slots' size: the largest UDP response we send (`Answerer.udpPayloadBytesMax`).
    static let largeEntryBytesMax = 1232
    /// Every slot: the small ones are 0..<entriesMax, the large ones follow.
    static let slotsMax = entriesMax + largeEntriesMax

    private let storage: UnsafeMutableRawPointer
    private let largeStorage: UnsafeMutableRawPointer
    /// Length of each slot's response; 0 = empty.
    private let lengths: UnsafeMutablePointer<UInt16>
    /// Bit 0: the query had EDNS. Bit 1: the response carries OPT last (DO patched there).
    /// Bit 2 (first slot of a set only): which way to replace next.
    private let keys: UnsafeMutablePointer<UInt8>
    /// The zones each slot's response read, as `View.zoneBit`s of the View it came from.
    private let zones: UnsafeMutablePointer<UInt64>
    /// The View the entries were computed from; held strongly so its identity cannot be reused.
    private var view: View?
    /// For a service answer: its `RecordSelection`, unretained: an entry lives only while the
    /// zone it read is in `view`, which holds the zone, its RRsets and their selections.
    private let selections: UnsafeMutablePointer<UnsafeRawPointer?>
    /// For a service answer: where its picked records start, and how many there are.
    private let pickedStarts: UnsafeMutablePointer<UInt16>
    private let pickedCounts: UnsafeMutablePointer<UInt16>
    /// The slot of the last hit.
    private var hitIndex = 0
    /// `permuteRecords`' working space: a copy of the records, and where each starts.
    private let permuteScratch: UnsafeMutableRawPointer
    private let permuteOffsets: UnsafeMutablePointer<UInt16>

    init() {
        storage = .allocate(byteCount: Self.entriesMax * Self.entryBytesMax, alignment: 64)
        largeStorage = .allocate(byteCount: Self.largeEntriesMax * Self.largeEntryBytesMax, alignment: 64)
        permuteScratch = .allocate(byteCount: Answerer.responseBytesMax, alignment: 8)
        permuteOffsets = .allocate(capacity: Self.pickedRecordsMax + 1)
        lengths = .allocate(capacity: Self.slotsMax)
        lengths.initialize(repeating: 0, count: Self.slotsMax)
        keys = .allocate(capacity: Self.slotsMax)
        keys.initialize(repeating: 0, count: Self.slotsMax)
        zones = .allocate(capacity: Self.slotsMax)
        zones.initialize(repeating: 0, count: Self.slotsMax)
        selections = .allocate(capacity: Self.slotsMax)
        selections.initialize(repeating: nil, count: Self.slotsMax)
        pickedStarts = .allocate(capacity: Self.slotsMax)
        pickedStarts.initialize(repeating: 0, count: Self.slotsMax)
        pickedCounts = .allocate(capacity: Self.slotsMax)
        pickedCounts.initialize(repeating: 0, count: Self.slotsMax)
    }

    deinit {
        storage.deallocate()
        largeStorage.deallocate()
        permuteScratch.deallocate()
        permuteOffsets.deallocate()
        lengths.deallocate()
        keys.deallocate()
        zones.deallocate()
        selections.deallocate()
        pickedStarts.deallocate()
        pickedCounts.deallocate()
    }

    /// Drops the entries that `view` may answer differently from the View they came from.
    @inline(__always)
    func use(_ view: View) {
        if self.view !== view { move(to: view) }
    }

    private func move(to view: View) {
        let kept = self.view?.unchangedZones(in: view) ?? 0
        if kept == 0 {
            lengths.update(repeating: 0, count: Self.slotsMax)
        } else {
            for index in 0..<Self.slotsMax where zones[index] & ~kept != 0 { lengths[index] = 0 }
        }
        self.view = view
    }

    @inline(__always)
    private func hash(name: UnsafeRawBufferPointer, typeAndClass: UInt32) -> Int {
        var h: UInt32 = 2_166_136_261 ^ typeAndClass
        for byte in name { h = (h ^ UInt32(byte)) &* 16_777_619 }
        return Int(h)
    }

    /// The first slot of the question's set in the small tier, and in the large one.
    @inline(__always)
    private static func smallSet(_ hash: Int) -> Int { hash & (entriesMax - 1) & ~1 }
    @inline(__always)
    private static func largeSet(_ hash: Int) -> Int { entriesMax + (hash & (largeEntriesMax - 1) & ~1) }

    /// Where slot `index`'s response is stored.
    @inline(__always)
    private func entry(_ index: Int) -> UnsafeMutableRawPointer {
        index < Self.entriesMax ? storage + index * Self.entryBytesMax
                                : largeStorage + (index - Self.entriesMax) * Self.largeEntryBytesMax
    }

    /// Writes the cached response for this question into `output`, patched for `query`, and
    /// returns its length; 0 on a miss or when it would not fit in `limit`.
    @inline(__always)
    func answer(name: UnsafeRawBufferPointer, query: UnsafeRawBufferPointer, questionEnd: Int, hasEDNS: Bool,
                dnssecOK: Bool, limit: Int, into output: UnsafeMutableRawBufferPointer) -> Int {
        let typeAndClass = query.loadUnaligned(fromByteOffset: questionEnd - 4, as: UInt32.self)
        let hash = hash(name: name, typeAndClass: typeAndClass)
        let small = Self.smallSet(hash), large = Self.largeSet(hash)
        for way in 0..<4 {
            let index = way < 2 ? small + way : large + way - 2
            guard matches(index, name: name, questionEnd: questionEnd, typeAndClass: typeAndClass, hasEDNS: hasEDNS) else { continue }
            let length = Int(lengths[index])
            guard length <= limit else { return 0 }
            copy(index, length: length, query: query, questionEnd: questionEnd, dnssecOK: dnssecOK, into: output)
            hitIndex = index
            return length
        }
        return 0
    }

    /// Whether slot `index` holds the response to this question.
    @inline(__always)
    private func matches(_ index: Int, name: UnsafeRawBufferPointer, questionEnd: Int, typeAndClass: UInt32,
                         hasEDNS: Bool) -> Bool {
        let length = Int(lengths[index])
        guard length >= questionEnd, (keys[index] & 1 != 0) == hasEDNS else { return false }
        let entry = entry(index)
        // Same question: the name compared case-insensitively, then type and class exactly.
        guard entry.load(fromByteOffset: 12 + name.count - 1, as: UInt8.self) == 0,
              entry.loadUnaligned(fromByteOffset: questionEnd - 4, as: UInt32.self) == typeAndClass else { return false }
        for i in 0..<name.count where asciiLowerByte(entry.load(fromByteOffset: 12 + i, as: UInt8.self)) != name[i] {
            return false
        }
        return true
    }

    @inline(__always)
    private func copy(_ index: Int, length: Int, query: UnsafeRawBufferPointer, questionEnd: Int, dnssecOK: Bool,
                      into output: UnsafeMutableRawBufferPointer) {
        let entry = entry(index)
        let out = output.baseAddress!
        out.copyMemory(from: entry, byteCount: length)
        // ID, then the query's RD and CD bits over the cached flags (stored with both clear).
        out.copyMemory(from: query.baseAddress!, byteCount: 2)
        let queryFlags = UInt16(query[2]) << 8 | UInt16(query[3])
        let flags = (UInt16(out.load(fromByteOffset: 2, as: UInt8.self)) << 8 | UInt16(out.load(fromByteOffset: 3, as: UInt8.self)))
            | (queryFlags & Self.copiedFlagBits)
        out.storeBytes(of: flags.bigEndian, toByteOffset: 2, as: UInt16.self)
        (out + 12).copyMemory(from: query.baseAddress! + 12, byteCount: questionEnd - 12)
        if keys[index] & 2 != 0 {
            // OPT is last, without options: its DO byte is 4 bytes from the end (RFC 6891 §6.1.3).
            out.storeBytes(of: dnssecOK ? 0x80 : 0, toByteOffset: length - 4, as: UInt8.self)
        }
    }

    /// RD (bit 8) and CD (bit 4) come from each query.
    static let copiedFlagBits: UInt16 = 0x0100 | 0x0010

    /// The service answer of the last hit, whose records are to be put in this query's order:
    /// its selection, where its records start and how many there are; nil for other answers.
    @inline(__always)
    func pickedAnswerOfLastHit() -> (selection: RecordSelection, start: Int, count: Int)? {
        guard let selection = selections[hitIndex] else { return nil }
        return (Unmanaged<RecordSelection>.fromOpaque(selection).takeUnretainedValue(), Int(pickedStarts[hitIndex]),
                Int(pickedCounts[hitIndex]))
    }

    /// Stores a complete response written for `name`. `picked`: a service answer's selection,
    /// where its records start and, for each record there, its index in the RRset; they are
    /// stored in index order.
    @inline(__always)
    func store(name: UnsafeRawBufferPointer, response: UnsafeRawBufferPointer, questionEnd: Int, hasEDNS: Bool,
               zones read: UInt64, picked: (selection: RecordSelection, start: Int, order: UnsafeBufferPointer<Int32>)? = nil) {
        guard response.count <= Self.largeEntryBytesMax, response.count >= questionEnd else { return }
        let typeAndClass = response.loadUnaligned(fromByteOffset: questionEnd - 4, as: UInt32.self)
        let hash = hash(name: name, typeAndClass: typeAndClass)
        let set = response.count <= Self.entryBytesMax ? Self.smallSet(hash) : Self.largeSet(hash)
        // An empty way first; else the way not written last (bit 2 of the set's first key).
        let index: Int
        if lengths[set] == 0 {
            index = set
        } else if lengths[set + 1] == 0 {
            index = set + 1
        } else {
            index = keys[set] & 4 != 0 ? set : set + 1
        }
        keys[set] ^= 4
        let entry = entry(index)
        entry.copyMemory(from: response.baseAddress!, byteCount: response.count)
        let flags = (UInt16(response[2]) << 8 | UInt16(response[3])) & ~Self.copiedFlagBits
        entry.storeBytes(of: flags.bigEndian, toByteOffset: 2, as: UInt16.self)
        lengths[index] = UInt16(response.count)
        keys[index] = (keys[index] & 4) | (hasEDNS ? 1 | 2 : 0)
        zones[index] = read
        selections[index] = nil
        if let picked {
            selections[index] = UnsafeRawPointer(Unmanaged.passUnretained(picked.selection).toOpaque())
            pickedStarts[index] = UInt16(picked.start)
            pickedCounts[index] = UInt16(picked.order.count)
            // Record i of the set goes to place i: the place of the record that is there now.
            permuteRecords(in: UnsafeMutableRawPointer(entry), from: picked.start, count: picked.order.count) { place in
                var position = 0
                while Int(picked.order[position]) != place { position += 1 }
                return position
            }
        }
    }

    /// Picked answers of at most this many records are cached (`RecordPicker` shuffles sets
    /// of up to 64 whole).
    static let pickedRecordsMax = 64

    /// Rewrites the `count` records starting at `start` of `message` (each a 2-byte owner
    /// pointer, TYPE, CLASS, TTL, RDLENGTH, RDATA) so that place i holds the record that was at
    /// place `source(i)`; `source` is a permutation of 0..<count. Works in buffers allocated
    /// with the cache (a temporary allocation of a large slot's size would be on the heap).
    @inline(__always)
    func permuteRecords(in message: UnsafeMutableRawPointer, from start: Int, count: Int, source: (Int) -> Int) {
        var at = start
        for i in 0..<count {
            permuteOffsets[i] = UInt16(at - start)
            at += 12 + (Int(message.load(fromByteOffset: at + 10, as: UInt8.self)) << 8
                | Int(message.load(fromByteOffset: at + 11, as: UInt8.self)))
        }
        permuteOffsets[count] = UInt16(at - start)
        permuteScratch.copyMemory(from: message + start, byteCount: at - start)
        var out = start
        for i in 0..<count {
            let from = source(i)
            let length = Int(permuteOffsets[from + 1] - permuteOffsets[from])
            (message + out).copyMemory(from: permuteScratch + Int(permuteOffsets[from]), byteCount: length)
            out += length
        }
    }
}

@inline(__always)
private func asciiLowerByte(_ byte: UInt8) -> UInt8 { (byte >= 65 && byte <= 90) ? byte | 0x20 : byte }
