import DNSWire

import Dispatch

#if canImport(Glibc)
import Glibc
#endif

/// A directory of master files, one zone per `<origin>.zone` file (DESIGN.md, "Zone
/// directory"): the file name gives the origin, as an implicit `$ORIGIN`.
public enum ZoneDirectory {
    public static let fileSuffix = ".zone"

    /// The outcome of loading a directory: the zones to serve and the files that failed.
    public struct LoadResult: Sendable {
        public var zones: [Zone]
        /// Files that failed, with their errors.
        public var failures: [Failure]
        /// Zones kept from `previous` without reading them again: none of their files changed.
        public var unchanged: Int = 0
    }

    public struct Failure: Sendable {
        public var file: String
        public var error: ZoneLoadError
        /// The zone kept serving its previous version (it was loaded before).
        public var keptPrevious: Bool
    }

    /// The zone files in `path`, sorted.
    public static func files(in path: String) throws(ZoneError) -> [String] {
        guard let directory = opendir(path) else {
            throw ZoneError(SourcePosition(file: path, line: 0, column: 0),
                            "cannot open zone directory: \(String(cString: strerror(errno)))")
        }
        defer { closedir(directory) }
        var names: [String] = []
        while let entry = readdir(directory) {
            let name = withUnsafePointer(to: entry.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            if name.hasSuffix(fileSuffix) && !name.hasPrefix(".") { names.append(name) }
        }
        return names.sorted()
    }

    /// The origin a file name implies: `example.com.zone` → `example.com.`.
    public static func origin(ofFile name: String) throws(NameError) -> DomainName {
        var base = String(name.dropLast(fileSuffix.count))
        if !base.hasSuffix(".") { base += "." }
        return try DomainName(base)
    }

    /// Loads every zone file, several at once (one per core). A zone in `previous` whose files
    /// (with its `$INCLUDE`s) are unchanged is kept as it is, unread. A file that fails keeps its
    /// previous version from `previous` (by origin) if there is one; a broken zone is never
    /// served half-loaded. The result lists zones and failures in file-name order.
    public static func load(path: String, previous: [Zone] = []) throws(ZoneError) -> LoadResult {
        let previousByOrigin = Dictionary(previous.map { ($0.origin, $0) }, uniquingKeysWith: { a, _ in a })
        let names = try files(in: path)
        let outcomes = ParallelResults<Outcome>(count: names.count)
        DispatchQueue.concurrentPerform(iterations: names.count) { index in
            outcomes.set(index, loadFile(path + "/" + names[index], name: names[index], previous: previousByOrigin))
        }
        var result = LoadResult(zones: [], failures: [])
        for (index, name) in names.enumerated() {
            switch outcomes.take(index) {
            case .loaded(let zone):
                result.zones.append(zone)
            case .unchanged(let zone):
                result.zones.append(zone)
                result.unchanged += 1
            case .badName(let error):
                result.failures.append(Failure(file: path + "/" + name, error: error, keptPrevious: false))
            case .failed(let origin, let error):
                let old = previousByOrigin[origin]
                if let old { result.zones.append(old) }
                result.failures.append(Failure(file: path + "/" + name, error: error, keptPrevious: old != nil))
            }
        }
        return result
    }

    private enum Outcome: Sendable {
        case loaded(Zone)
        case unchanged(Zone)
        case badName(ZoneLoadError)
        case failed(DomainName, ZoneLoadError)
    }

    private static func loadFile(_ file: String, name: String, previous: [DomainName: Zone]) -> Outcome {
        let origin: DomainName
        do throws(NameError) {
            origin = try Self.origin(ofFile: name)
        } catch {
            let position = SourcePosition(file: file, line: 0, column: 0)
            return .badName(ZoneLoadError([ZoneError(position, "file name is not a zone origin: \(error)")]))
        }
        if let old = previous[origin], old.source == file, old.filesUnchanged { return .unchanged(old) }
        do throws(ZoneLoadError) {
            return .loaded(try Zone.load(path: file, origin: origin))
        } catch {
            return .failed(origin, error)
        }
    }

    /// One slot per file, each written once by the thread that loaded it.
}

/// Results of work done on several threads at once (`DispatchQueue.concurrentPerform`), one
/// slot per iteration, each set once.
final class ParallelResults<Value>: @unchecked Sendable {
    // @unchecked: the slots are only touched under `lock`.
    private var slots: [Value?]
    private let lock = Lock()

    init(count: Int) { slots = Array(repeating: nil, count: count) }

    func set(_ index: Int, _ value: Value) { lock.withLock { slots[index] = value } }
    /// The value of slot `index`, which is left empty (the caller owns it now).
    func take(_ index: Int) -> Value { lock.withLock { slots[index].take()! } }
    /// Every slot's value, in order (the caller owns them now).
    func takeAll() -> [Value] { lock.withLock { slots.indices.map { slots[$0].take()! } } }
    func allSatisfy(_ predicate: (Value) -> Bool) -> Bool { lock.withLock { slots.allSatisfy { predicate($0!) } } }
}

/// A pthread mutex (DNSZone does not import Foundation).
private final class Lock: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)

    init() { pthread_mutex_init(mutex, nil) }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    func withLock<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }
}
