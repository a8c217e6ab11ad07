import Health
import Registry
import Testing

/// A machine fed a script of results; collects what it publishes.
private struct Script {
    var machine: CheckMachine
    var now = 0.0
    var published: [HealthStatus] = []

    init(_ kind: CheckMachine.Kind, status: HealthStatus = .critical, damping: Damping = .default, deregisterAfter: Double? = nil) {
        machine = CheckMachine(kind: kind, status: status, damping: damping, deregisterAfterSeconds: deregisterAfter, now: 0)
    }

    mutating func record(_ action: CheckMachine.Action) {
        if case .publish(let status, _) = action { published.append(status) }
    }

    mutating func probe(_ status: HealthStatus, after seconds: Double = 1) {
        now += seconds
        record(machine.probed(status, output: "\(status)", now: now))
    }

    mutating func tick(after seconds: Double) -> CheckMachine.Action {
        now += seconds
        let action = machine.tick(now: now)
        record(action)
        return action
    }
}

@Suite("health check state machine")
struct CheckMachineTests {
    @Test func withoutThresholdsEveryChangeIsATransitionAndRepeatsAreNot() {
        var script = Script(.probe(.none))
        for status: HealthStatus in [.passing, .passing, .warning, .warning, .critical, .critical, .passing] { script.probe(status) }
        #expect(script.published == [.passing, .warning, .critical, .passing])
    }

    @Test(arguments: [1, 2, 3, 5])
    func successBeforePassingNeedsThatManyInARow(successes: Int) {
        var script = Script(.probe(Thresholds(successBeforePassing: successes, failuresBeforeWarning: 0, failuresBeforeCritical: 0)))
        for _ in 0..<(successes - 1) { script.probe(.passing) }
        #expect(script.published.isEmpty)
        // A failure in between resets the count.
        script.probe(.critical)
        for _ in 0..<(successes - 1) { script.probe(.passing) }
        #expect(script.published.isEmpty)
        script.probe(.passing)
        #expect(script.published == [.passing])
    }

    @Test func failuresGoWarningThenCriticalAtTheirThresholds() {
        var script = Script(.probe(Thresholds(successBeforePassing: 0, failuresBeforeWarning: 2, failuresBeforeCritical: 4)),
                            status: .passing)
        script.probe(.critical)
        #expect(script.published.isEmpty)
        script.probe(.critical)
        #expect(script.published == [.warning])
        script.probe(.critical)
        #expect(script.published == [.warning])
        script.probe(.critical)
        #expect(script.published == [.warning, .critical])
        // A success resets the failures: three more are not enough again.
        script.probe(.passing)
        for _ in 0..<3 { script.probe(.critical) }
        #expect(script.published == [.warning, .critical, .passing, .warning])
    }

    /// Consul: FailuresBeforeWarning defaults to FailuresBeforeCritical.
    @Test func failuresBeforeWarningDefaultsToFailuresBeforeCritical() {
        let thresholds = Thresholds(CheckDefinition(failuresBeforeCritical: 3))
        #expect(thresholds == Thresholds(successBeforePassing: 0, failuresBeforeWarning: 3, failuresBeforeCritical: 3))
        var script = Script(.probe(thresholds), status: .passing)
        script.probe(.critical)
        script.probe(.critical)
        #expect(script.published.isEmpty)
        script.probe(.critical)
        #expect(script.published == [.critical])
    }

    @Test func aTTLCheckExpiresUnlessRenewedAndRenewalsThatChangeNothingAreNotTransitions() {
        var script = Script(.ttl(seconds: 5))
        script.record(script.machine.renewed(.passing, output: "up", now: 1))
        #expect(script.published == [.passing])
        script.now = 1
        for _ in 0..<10 {
            #expect(script.tick(after: 1) == .none)
            script.record(script.machine.renewed(.passing, output: "still up", now: script.now))
        }
        #expect(script.published == [.passing])
        // Not renewed: critical once the TTL has passed since the last renewal, not before.
        #expect(script.tick(after: 4.9) == .none)
        #expect(script.tick(after: 0.2) == .publish(.critical, output: CheckMachine.ttlExpiredOutput))
        #expect(script.tick(after: 10) == .none)
        script.record(script.machine.renewed(.warning, output: "slow", now: script.now))
        #expect(script.published == [.passing, .critical, .warning])
    }

    @Test func aFlappingCheckIsHeldAtItsWorstUntilStable() {
        let damping = Damping(transitionsMax: 3, windowSeconds: 60, stableSeconds: 10)
        var script = Script(.probe(.none), status: .passing, damping: damping)
        // passing → critical → passing → critical: three changes, within the limit.
        script.probe(.critical)
        script.probe(.passing)
        script.probe(.critical)
        #expect(script.published == [.critical, .passing, .critical])
        #expect(!script.machine.isDamped)
        // The fourth change in the window: damped, held critical.
        script.probe(.passing)
        #expect(script.machine.isDamped)
        #expect(script.machine.dampedCount == 1)
        #expect(script.published == [.critical, .passing, .critical])
        for status: HealthStatus in [.critical, .passing, .warning, .passing] { script.probe(status) }
        #expect(script.published == [.critical, .passing, .critical], "held: no transitions while flapping")
        // Stable (passing) for less than stableSeconds: still held.
        #expect(script.tick(after: 9) == .none)
        // Then released to what it is now.
        #expect(script.tick(after: 1.5) == .publish(.passing, output: "passing"))
        #expect(!script.machine.isDamped)
    }

    @Test func changesOutsideTheWindowDoNotCountAsFlapping() {
        let damping = Damping(transitionsMax: 2, windowSeconds: 10, stableSeconds: 5)
        var script = Script(.probe(.none), status: .passing, damping: damping)
        for status: HealthStatus in [.critical, .passing, .critical, .passing, .critical] {
            script.probe(status, after: 6)
        }
        #expect(!script.machine.isDamped)
        #expect(script.published == [.critical, .passing, .critical, .passing, .critical])
    }

    @Test func deregisterCriticalServiceAfterFiresOnceAfterBeingCriticalThatLong() {
        var script = Script(.probe(.none), status: .passing, deregisterAfter: 30)
        script.probe(.critical)
        #expect(script.tick(after: 20) == .none)
        // Recovering resets the clock.
        script.probe(.passing)
        script.probe(.critical)
        #expect(script.tick(after: 29) == .none)
        #expect(script.tick(after: 1.5) == .deregisterService)
        #expect(script.tick(after: 100) == .none)
    }

    @Test func adoptingAStatusWrittenElsewhereResetsTheCounters() {
        var script = Script(.probe(Thresholds(successBeforePassing: 2, failuresBeforeWarning: 2, failuresBeforeCritical: 2)),
                            status: .critical)
        script.probe(.passing)
        script.machine.adopt(.passing, output: "set by a registration", now: script.now)
        #expect(script.machine.published == .passing)
        script.probe(.critical)
        #expect(script.published.isEmpty)
        script.probe(.critical)
        #expect(script.published == [.critical])
    }
}
