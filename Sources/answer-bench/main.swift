// The answer path alone, no sockets: nanoseconds per `Answerer.answer` for service answers,
// by selection policy and set size (README "Service answers").
// Usage: answer-bench [BATCHES [LABEL-SUBSTRING]]
import Atomics
import DNSServer
import DNSTesting
import DNSWire
import DNSZone
import Dispatch

/// Answers per timed batch; the figures are the mean per answer of each batch.
let batchAnswers = 2_000
let batches = Int(CommandLine.arguments.dropFirst().first ?? "") ?? 300
/// Only the cases whose label contains this (for profiling one).
let only = CommandLine.arguments.dropFirst(2).first

struct Case {
    let label: String
    let view: View
    let name: DomainName
    let type: RRType
    let edns: EDNS?
    let transport: Transport
    let options: SelectionOptions
    let cache: Bool
}

let ten = try ServiceFixture(count: 10).view()
let twenty = try ServiceFixture(count: 20).view()
let large = try ServiceFixture(count: 13_000).view()
var weighted = ServiceFixture(count: 13_000, weights: (0..<13_000).map { UInt32($0 % 3 + 1) })
weighted.panicThresholdPercent = 50
let largeWeighted = try weighted.view()
let shuffle = SelectionOptions(policy: .shuffle)
let fixed = SelectionOptions(policy: .fixed)
let name = ServiceFixture.name
let cases = [
    Case(label: "10 instances, fixed, cached", view: ten, name: name, type: .a, edns: EDNS(), transport: .udp, options: fixed, cache: true),
    Case(label: "10 instances, fixed, no cache", view: ten, name: name, type: .a, edns: EDNS(), transport: .udp, options: fixed, cache: false),
    Case(label: "10 instances, shuffle", view: ten, name: name, type: .a, edns: EDNS(), transport: .udp, options: shuffle, cache: true),
    Case(label: "10 instances, round_robin", view: ten, name: name, type: .a, edns: EDNS(),
         transport: .udp, options: SelectionOptions(policy: .roundRobin), cache: true),
    Case(label: "10 instances, shuffle, no EDNS", view: ten, name: name, type: .a, edns: nil, transport: .udp, options: shuffle, cache: true),
    Case(label: "13,000, shuffle, no EDNS (30 A)", view: large, name: name, type: .a, edns: nil, transport: .udp, options: shuffle, cache: true),
    Case(label: "13,000, shuffle, EDNS (74 A)", view: large, name: name, type: .a, edns: EDNS(), transport: .udp, options: shuffle, cache: true),
    Case(label: "13,000 weighted, EDNS (74 A)", view: largeWeighted, name: name, type: .a, edns: EDNS(), transport: .udp,
         options: shuffle, cache: true),
    Case(label: "10 instances, SRV, shuffle", view: ten, name: ServiceFixture.srvName, type: .srv, edns: EDNS(), transport: .udp,
         options: shuffle, cache: true),
    Case(label: "20 instances, SRV (>768 B), cached", view: twenty, name: ServiceFixture.srvName, type: .srv, edns: EDNS(),
         transport: .udp, options: shuffle, cache: true),
    Case(label: "20 instances, SRV (>768 B), no cache", view: twenty, name: ServiceFixture.srvName, type: .srv, edns: EDNS(),
         transport: .udp, options: shuffle, cache: false),
    Case(label: "13,000, SRV, EDNS", view: large, name: ServiceFixture.srvName, type: .srv, edns: EDNS(), transport: .udp,
         options: shuffle, cache: true),
    Case(label: "13,000, shuffle, TCP (4,000 A)", view: large, name: name, type: .a, edns: nil, transport: .tcp, options: shuffle, cache: false),
]

var output = [UInt8](repeating: 0, count: 65535)
print("answer path, \(batches) batches of \(batchAnswers) answers each (ns per answer: mean, p50 and p99 of the batch means)")
print("case".padding(toLength: 36, withPad: " ", startingAt: 0) + "      mean       p50       p99   records   bytes")
for item in cases where only.map({ item.label.contains($0) }) ?? true {
    let answerer = Answerer(cache: item.cache, selection: item.options, seed: 1)
    let query = try Message.query(item.name, item.type, id: 1, edns: item.edns).serialized()
    var means: [Double] = []
    var length = 0
    output.withUnsafeMutableBytes { out in
        query.withUnsafeBytes { q in
            for _ in 0..<50 { length = answerer.answer(query: q, into: out, view: item.view, transport: item.transport) }
            for _ in 0..<batches {
                let start = DispatchTime.now().uptimeNanoseconds
                for _ in 0..<batchAnswers { length = answerer.answer(query: q, into: out, view: item.view, transport: item.transport) }
                means.append(Double(DispatchTime.now().uptimeNanoseconds - start) / Double(batchAnswers))
            }
        }
    }
    let records = (try? Message(parsing: Array(output[0..<length])))?.answers.count ?? 0
    let sorted = means.sorted()
    let mean = means.reduce(0, +) / Double(means.count)
    func column(_ value: Double) -> String { String(Int(value.rounded())).leftPadded(10) }
    print(item.label.padding(toLength: 36, withPad: " ", startingAt: 0) + column(mean) + column(sorted[sorted.count / 2])
          + column(sorted[min(sorted.count - 1, sorted.count * 99 / 100)]) + String(records).leftPadded(10)
          + String(length).leftPadded(8))
}

extension String {
    func leftPadded(_ width: Int) -> String { String(repeating: " ", count: max(0, width - count)) + self }
}

// What a UDP worker pays per batch to read the current View (`ViewStore.load`, an atomic
// reference: a double-width compare-and-exchange), alone and while another thread reads it too
// (issue 15 item 7: kept unless it measures against the answers above).
let store = ViewStore(ten)
let loadsPerRound = 1_000_000
func nanosecondsPerLoad() -> Double {
    var identities = 0
    let start = DispatchTime.now().uptimeNanoseconds
    for _ in 0..<loadsPerRound { identities &+= ObjectIdentifier(store.load()).hashValue }
    let elapsed = Double(DispatchTime.now().uptimeNanoseconds - start)
    if identities == 42 { print("") }  // keeps the loads
    return elapsed / Double(loadsPerRound)
}
let alone = (0..<5).map { _ in nanosecondsPerLoad() }.min()!
let contender = DispatchSemaphore(value: 0)
let stop = ManagedAtomic(false)
DispatchQueue.global().async {
    while !stop.load(ordering: .relaxed) { _ = store.load() }
    contender.signal()
}
let contended = (0..<5).map { _ in nanosecondsPerLoad() }.min()!
stop.store(true, ordering: .relaxed)
contender.wait()
print("View load per batch: \(Int(alone.rounded())) ns alone, \(Int(contended.rounded())) ns with another thread loading it")
