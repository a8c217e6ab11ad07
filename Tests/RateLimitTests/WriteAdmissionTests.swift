import RateLimit
import Testing

@Suite("write admission")
struct WriteAdmissionTests {
    func config(_ mode: WriteAdmission.Mode = .enforcing, rate: Int = 10, burst: Int = 10, perClient: Int = 0,
                perClientBurst: Int = 5) -> WriteAdmission.Configuration {
        WriteAdmission.Configuration(mode: mode, writesPerSecond: rate, burst: burst, perClientWritesPerSecond: perClient,
                                     perClientBurst: perClientBurst)
    }

    @Test func theBurstIsTakenThenTheRate() {
        let admission = WriteAdmission(config(), now: 100)
        let first = (0..<15).map { _ in admission.admit(client: "a", now: 100, jitter: 0) }
        #expect(first.prefix(10).allSatisfy { $0 == .admit })
        #expect(first.suffix(5).allSatisfy { if case .refuse = $0 { true } else { false } })
        // Half a second later: 5 tokens at 10/s.
        let later = (0..<8).map { _ in admission.admit(client: "b", now: 100.5, jitter: 0) }
        #expect(later.filter { $0 == .admit }.count == 5)
        #expect(admission.counters.admitted == 15 && admission.counters.refusedGlobal == 8)
    }

    @Test func retryAfterGrowsWithTheHerdAndIsJittered() {
        let admission = WriteAdmission(config(rate: 10, burst: 1), now: 0)
        _ = admission.admit(client: "a", now: 0, jitter: 0)
        func retry(_ jitter: Double) -> Int? {
            if case .refuse(let seconds, _) = admission.admit(client: "a", now: 0.01, jitter: jitter) { return seconds }
            return nil
        }
        #expect(retry(0) == 1)
        // 200 refused in this second at 10/s: 20 s of backlog.
        for _ in 0..<198 { _ = retry(0) }
        #expect(retry(0) == 20)
        #expect(retry(0.5) == 31)
        // Never more than the maximum.
        for _ in 0..<2000 { _ = retry(0.99) }
        #expect(retry(0.99) == WriteAdmission.retryAfterSecondsMax)
    }

    @Test func oneClientIsLimitedAloneAndTheOthersGoOn() {
        let admission = WriteAdmission(config(rate: 0, perClient: 2, perClientBurst: 3), now: 0)
        let greedy = (0..<6).map { _ in admission.admit(client: "10.0.0.1", now: 0, jitter: 0) }
        #expect(greedy.filter { $0 == .admit }.count == 3)
        #expect(admission.admit(client: "10.0.0.2", now: 0, jitter: 0) == .admit)
        #expect(admission.admit(client: "10.0.0.1", now: 0.5, jitter: 0) == .admit)
        #expect(admission.counters.refusedClient == 3)
    }

    @Test func permissiveCountsAndAdmitsDisabledDoesNeither() {
        let permissive = WriteAdmission(config(.permissive, rate: 1, burst: 1), now: 0)
        #expect((0..<5).allSatisfy { _ in permissive.admit(client: "a", now: 0, jitter: 0) == .admit })
        #expect(permissive.counters.wouldRefuse == 4 && permissive.counters.admitted == 5)
        let disabled = WriteAdmission(config(.disabled, rate: 1, burst: 1), now: 0)
        #expect((0..<5).allSatisfy { _ in disabled.admit(client: "a", now: 0, jitter: 0) == .admit })
        #expect(disabled.counters == WriteAdmission.Counters())
    }

    @Test func aStormOfAddressesCostsBoundedMemory() {
        let admission = WriteAdmission(config(rate: 0, perClient: 1, perClientBurst: 1), now: 0)
        for k in 0..<(WriteAdmission.clientsTrackedMax + 10_000) {
            _ = admission.admit(client: "c\(k)", now: Double(k) / 1e6, jitter: 0)
        }
        #expect(admission.clientsTracked <= WriteAdmission.clientsTrackedMax)
    }
}
