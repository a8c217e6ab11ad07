import DNSWire

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

    /// Loads every zone file. A file that fails keeps its previous version from `previous`
    /// (by origin) if there is one; a broken zone is never served half-loaded.
    public static func load(path: String, previous: [Zone] = []) throws(ZoneError) -> LoadResult {
        let previousByOrigin = Dictionary(previous.map { ($0.origin, $0) }, uniquingKeysWith: { a, _ in a })
        var result = LoadResult(zones: [], failures: [])
        for name in try files(in: path) {
            let file = path + "/" + name
            let origin: DomainName
            do throws(NameError) {
                origin = try Self.origin(ofFile: name)
            } catch {
                let position = SourcePosition(file: file, line: 0, column: 0)
                result.failures.append(Failure(file: file, error: ZoneLoadError([ZoneError(position,
                    "file name is not a zone origin: \(error)")]), keptPrevious: false))
                continue
            }
            do throws(ZoneLoadError) {
                result.zones.append(try Zone.load(path: file, origin: origin))
            } catch {
                let old = previousByOrigin[origin]
                if let old { result.zones.append(old) }
                result.failures.append(Failure(file: file, error: error, keptPrevious: old != nil))
            }
        }
        return result
    }
}
