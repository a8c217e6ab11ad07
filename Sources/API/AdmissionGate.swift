import Cluster
import Dispatch
import Logging
import NIOConcurrencyHelpers
import NIOHTTP1
import RateLimit

/// The door every write passes before it becomes a proposal (issue 13.4): the write admission
/// buckets, then the number of proposals already waiting on this leader. A write refused here
/// costs the cluster nothing; one admitted is never slowed down, so heartbeats and elections
/// never queue behind a herd.
///
/// Only writes that would change something come here: a re-registration that changes nothing
/// is answered after a read barrier, without a proposal and without a token (a herd of agents
/// re-registering what is already there costs no writes).
final class AdmissionGate: Sendable {
    /// Proposals waiting to commit on this leader beyond which writes are shed (429). At a
    /// commit rate of 1,300/s, 4,096 is 3 s of backlog: a write later than that would time out
    /// in many clients anyway.
    static let proposalsInFlightMaxDefault = 4096

    let admission: WriteAdmission
    let driver: RaftDriver
    let proposalsInFlightMax: Int
    let logger: Logger?
    /// Shedding is logged when it starts and when it has stopped (no refusal for this long),
    /// never per refused write.
    static let quietSecondsBeforeStopLog: UInt64 = 10
    private let shedding = NIOLockedValueBox<(since: UInt64?, last: UInt64, refused: Int)>((nil, 0, 0))

    init(admission: WriteAdmission, driver: RaftDriver, proposalsInFlightMax: Int = AdmissionGate.proposalsInFlightMaxDefault,
         logger: Logger? = nil) {
        self.admission = admission
        self.driver = driver
        self.proposalsInFlightMax = proposalsInFlightMax
        self.logger = logger
    }

    /// nil: go ahead and propose. Otherwise the 429 to answer.
    func refusal(for request: APIRequest) -> APIResponse? {
        let refusal = decide(request)
        noteShedding(refused: refusal != nil, reason: refusal.map { String(decoding: $0.body, as: UTF8.self) } ?? "")
        return refusal
    }

    /// Logs the start of shedding (with its first reason) and, at the next write after a quiet
    /// period, its end with how many writes it refused.
    private func noteShedding(refused: Bool, reason: String) {
        guard let logger else { return }
        let now = DispatchTime.now().uptimeNanoseconds
        let (started, stopped) = shedding.withLockedValue { state -> (Bool, Int?) in
            var stopped: Int?
            if state.since != nil, now - state.last > Self.quietSecondsBeforeStopLog * 1_000_000_000 {
                stopped = state.refused
                state = (nil, state.last, 0)
            }
            guard refused else { return (false, stopped) }
            let started = state.since == nil
            if started { state.since = now }
            state.last = now
            state.refused += 1
            return (started, stopped)
        }
        if let stopped {
            logger.notice("write admission stopped refusing writes", metadata: ["http.writes_refused": "\(stopped)"])
        }
        if started {
            logger.warning("write admission is refusing writes (429)",
                           metadata: ["http.reason": "\(reason.trimmingCharacters(in: .whitespacesAndNewlines))"])
        }
    }

    private func decide(_ request: APIRequest) -> APIResponse? {
        let queued = driver.pendingProposals
        if queued >= proposalsInFlightMax && admission.configuration.mode == .enforcing {
            let seconds = 1 + Int.random(in: 0...1)
            return .text("\(queued) writes are waiting to commit on this server; retry after \(seconds) s",
                         status: .tooManyRequests, headers: [("Retry-After", "\(seconds)")])
        }
        switch admission.admit(client: request.clientAddress) {
        case .admit:
            return nil
        case .refuse(let seconds, let reason):
            return .text("write rate over \(reason); retry after \(seconds) s", status: .tooManyRequests,
                         headers: [("Retry-After", "\(seconds)")])
        }
    }

    /// Prometheus lines for /metrics.
    var metricLines: [String] {
        let c = admission.counters
        return [
            Metric(name: "disco_http_writes_admitted_total", help: "Writes admitted to the Raft log by write admission control.",
                   kind: .counter, value: "\(c.admitted)"),
            Metric(name: "disco_http_writes_would_refuse_total",
                   help: "Writes permissive mode admitted that enforcing would refuse.", kind: .counter, value: "\(c.wouldRefuse)"),
            Metric(name: "disco_raft_proposals_pending", help: "Proposals waiting to commit on this server.", kind: .gauge,
                   value: "\(driver.pendingProposals)"),
        ].flatMap(\.lines) + [
            // One metric, two labelled samples.
            "# HELP disco_http_writes_refused_total Writes answered 429 by write admission control, by the limit that refused them.",
            "# TYPE disco_http_writes_refused_total counter",
            "disco_http_writes_refused_total{limit=\"global\"} \(c.refusedGlobal)",
            "disco_http_writes_refused_total{limit=\"client\"} \(c.refusedClient)",
        ]
    }
}
