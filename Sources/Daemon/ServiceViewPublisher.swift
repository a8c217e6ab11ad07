import CShims
import DNSServer
import DNSWire
import DNSZone
import Dispatch
import Foundation
import Logging
import Registry

/// Publishes the DNS View: the zone files' zones plus the registry's zone, swapped in whole
/// whenever either changes.
final class ViewComposer: @unchecked Sendable {
    // @unchecked: `fileZones` and `serviceZone` are guarded by `lock`.
    private let store: ViewStore
    private let identity: ServerIdentity
    private let lock = NSLock()
    private var fileZones: [Zone] = []
    private var serviceZone: Zone?
    private var publishedAtNanoseconds: UInt64 = 0
    private var publishedCount = 0

    /// Seconds since the current View was published, Views published so far, zones it holds.
    var viewStatus: (ageSeconds: Double, publications: Int, zones: Int) {
        lock.withLock {
            let age = publishedCount == 0 ? 0 : Double(DispatchTime.now().uptimeNanoseconds - publishedAtNanoseconds) / 1e9
            return (age, publishedCount, fileZones.count + (serviceZone == nil ? 0 : 1))
        }
    }

    init(store: ViewStore, identity: ServerIdentity) {
        self.store = store
        self.identity = identity
    }

    func publish(fileZones zones: [Zone]) {
        lock.withLock {
            fileZones = zones
            publishLocked()
        }
    }

    func publish(serviceZone zone: Zone) {
        lock.withLock {
            serviceZone = zone
            publishLocked()
        }
    }

    /// The registry's zone comes last, so it wins over a zone file with the same origin.
    private func publishLocked() {
        store.publish(View(zones: fileZones + (serviceZone.map { [$0] } ?? []), identity: identity))
        publishedAtNanoseconds = DispatchTime.now().uptimeNanoseconds
        publishedCount += 1
    }
}

/// Rebuilds the registry's zone after catalog changes, coalesced (DESIGN.md: rebuilt, not
/// patched; never per query): changes that arrive while a rebuild runs are folded into one
/// more rebuild, which reads the catalog as it is then. The first rebuild starts at once, so
/// an idle cluster shows a registration in DNS within a rebuild's time of applying it. Under a
/// stream of changes, rebuilds are spaced so they take at most 1/(1 + `restFactor`) of a core:
/// a registration storm must not starve the DNS workers of CPU (herd safety).
final class ServiceViewPublisher: @unchecked Sendable {
    /// After a rebuild that took d, the next one waits at least d × this (3: at most 25% of a core).
    static let restFactor: UInt64 = 3

    // @unchecked: `running` and `dirty` are guarded by `lock`; `builder` is used only on `queue`.
    private let catalog: Catalog
    private let builder: ServiceViewBuilder
    private let composer: ViewComposer
    private let logger: Logger
    private let queue = DispatchQueue(label: "disco.service-view")
    private let lock = NSLock()
    private var running = false
    private var dirty = false
    /// The instances changed since the last rebuild began; nil: compare them all.
    private var pending: Set<NodeScopedID>? = nil
    private var panicking = 0

    /// Services below their panic threshold in the last View built (any thread).
    var servicesInPanic: Int { lock.withLock { panicking } }

    /// How far below the DNS workers the rebuilding thread runs (`Configuration.dnsBackgroundNice`).
    private let nice: BackgroundPriority

    init(catalog: Catalog, config: ServiceViewConfig, composer: ViewComposer, nice: BackgroundPriority, logger: Logger) {
        self.catalog = catalog
        self.nice = nice
        self.builder = ServiceViewBuilder(config: config)
        self.composer = composer
        self.logger = logger
    }

    /// Marks the view out of date (any thread; returns at once). `change`: what an applied
    /// entry changed; nil: anything may have.
    func changed(_ change: CatalogChange? = nil) {
        let start = lock.withLock { () -> Bool in
            dirty = true
            if let instances = change?.instances { pending?.formUnion(instances) } else { pending = nil }
            if running { return false }
            running = true
            return true
        }
        if start { queue.async { self.run() } }
    }

    /// The catalog's applied index as of the newest rebuild attempted (guarded by `lock`).
    private var attemptedApplied: UInt64?

    /// Waits until a rebuild that read the catalog at `appliedIndex` or later has been attempted
    /// (true: published, or failed and logged, the previous view kept), or `timeoutSeconds`
    /// passed. Call `changed()` first if nothing else will start one.
    func waitForView(coveringApplied appliedIndex: UInt64, timeoutSeconds: Double) -> Bool {
        pollUntil(seconds: timeoutSeconds) { lock.withLock { attemptedApplied.map { $0 >= appliedIndex } ?? false } }
    }

    private func run() {
        // Dispatch pools its threads: lower whichever one this is, each time.
        lowerCurrentThreadPriority(to: nice, logger: logger)
        var restNanoseconds: UInt64 = 0
        while lock.withLock({ () -> Bool in
            if !dirty { running = false }
            return dirty
        }) {
            if restNanoseconds > 0 { usleep(UInt32(min(restNanoseconds / 1000, 1_000_000))) }
            // What changed is taken before the state is read: a change whose entry the state
            // already holds but that is not taken yet comes again with the next rebuild.
            let changed = lock.withLock { () -> Set<NodeScopedID>? in
                dirty = false
                defer { pending = [] }
                return pending
            }
            // The applied index before the state: the state is at least as new.
            let applied = catalog.appliedIndex
            let state = catalog.state
            defer { lock.withLock { attemptedApplied = max(attemptedApplied ?? 0, applied) } }
            let started = DispatchTime.now().uptimeNanoseconds
            defer { restNanoseconds = (DispatchTime.now().uptimeNanoseconds - started) * Self.restFactor }
            do throws(ZoneLoadError) {
                composer.publish(serviceZone: try builder.zone(from: state, changed: changed,
                                                               nowMilliseconds: disco_monotonic_milliseconds()))
                let panicking = builder.servicesInPanic
                lock.withLock { self.panicking = panicking }
                logger.debug("registry view rebuilt", metadata: [
                    "catalog.index": "\(state.index)",
                    "dns.rebuild_microseconds": "\((DispatchTime.now().uptimeNanoseconds - started) / 1000)"])
            } catch {
                logger.error("the registry's DNS view could not be built; answering from the previous one",
                             metadata: ["dns.error": "\(error)", "catalog.index": "\(state.index)"])
                // Start-up waits for an attempt, not for a success (`waitForView`).
            }
        }
    }
}

/// How often start-up looks whether what it waits for is there.
let startupPollMicroseconds: UInt32 = 2_000

/// Polls `condition` (start-up only) until it holds (true) or `seconds` passed (false).
func pollUntil(seconds: Double, _ condition: () -> Bool) -> Bool {
    let deadline = DispatchTime.now() + seconds
    while !condition() {
        guard DispatchTime.now() < deadline else { return false }
        usleep(startupPollMicroseconds)
    }
    return true
}
