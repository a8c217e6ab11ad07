// A master file's load, stage by stage: parse, then validate and build the zone; with the
// process's resident memory after each (README "Large zones"). No sockets.
// Usage: zone-bench FILE ORIGIN [ROUNDS]
import CShims
import DNSWire
import DNSZone
import Dispatch

#if canImport(Glibc)
import Glibc
#endif

/// Resident and peak resident memory, in MiB, from /proc/self/status.
func memoryMiB() -> (rss: Double, peak: Double) {
    guard let file = fopen("/proc/self/status", "r") else { return (0, 0) }
    defer { fclose(file) }
    var rss = 0.0, peak = 0.0
    var line = [CChar](repeating: 0, count: 256)
    while fgets(&line, Int32(line.count), file) != nil {
        let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let kib = Double(text.split(separator: " ").dropFirst().first.flatMap { Double($0) } ?? 0)
        if text.hasPrefix("VmRSS:") { rss = kib / 1024 }
        if text.hasPrefix("VmHWM:") { peak = kib / 1024 }
    }
    return (rss, peak)
}

/// `value` with `digits` decimals, without Foundation.
func fixed(_ value: Double, _ digits: Int) -> String {
    var scale = 1.0
    for _ in 0..<digits { scale *= 10 }
    let scaled = Int((value * scale).rounded())
    let whole = scaled / Int(scale), fraction = scaled % Int(scale)
    guard digits > 0 else { return "\(whole)" }
    let tail = String(fraction)
    return "\(whole)." + String(repeating: "0", count: digits - tail.count) + tail
}

func seconds(since start: UInt64) -> Double { Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9 }

let arguments = CommandLine.arguments
guard arguments.count >= 3 else {
    print("usage: zone-bench FILE ORIGIN [ROUNDS]")
    exit(2)
}
let path = arguments[1]
let origin = try DomainName(arguments[2])
let rounds = arguments.count > 3 ? Int(arguments[3]) ?? 1 : 1
// As discod does (DiscodCommand.mappedAllocationBytesMin).
disco_map_large_allocations(512 << 10)
var kept: Zone?
for round in 1...rounds {
    kept = nil
    let start = DispatchTime.now().uptimeNanoseconds
    let (parts, files) = try MasterFileParser.parseFileCompiled(path: path, origin: origin)
    let parsed = seconds(since: start)
    let afterParse = memoryMiB()
    print("  after the parse: RSS \(fixed(afterParse.rss, 0)) MiB, peak \(fixed(afterParse.peak, 0)) MiB")
    let zone = try Zone(origin: origin, compiled: parts, source: path, files: files)
    let total = seconds(since: start)
    print("  parse \(fixed(parsed, 3)) s, build \(fixed(total - parsed, 3)) s")
    let beforeTrim = memoryMiB()
    disco_release_free_memory()
    let memory = memoryMiB()
    print("  RSS before malloc_trim \(fixed(beforeTrim.rss, 0)) MiB")
    print("round \(round): \(zone.nodes.count) names, loaded in \(fixed(total, 3)) s; "
        + "RSS \(fixed(memory.rss, 0)) MiB, peak \(fixed(memory.peak, 0)) MiB")
    kept = zone
}
// ZONE_BENCH_MALLOC_STATS=1: glibc's per-arena figures after the last round (where memory that
// was freed but not returned sits).
if getenv("ZONE_BENCH_MALLOC_STATS") != nil, let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "malloc_stats") {
    unsafeBitCast(symbol, to: (@convention(c) () -> Void).self)()
}
