import Cluster
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

    init(admission: WriteAdmission, driver: RaftDriver, proposalsInFlightMax: Int = AdmissionGate.proposalsInFlightMaxDefault) {
        self.admission = admission
        self.driver = driver
        self.proposalsInFlightMax = proposalsInFlightMax
    }

    /// nil: go ahead and propose. Otherwise the 429 to answer.
    func refusal(for request: APIRequest) -> APIResponse? {
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
