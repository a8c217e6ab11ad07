import Atomics
import Foundation

extension View: AtomicReference {}

/// The current View, published by one writer (reload, registry rebuild) and read by every
/// worker once per batch: an atomic reference, no lock on the answer path.
public final class ViewStore: @unchecked Sendable {
    // @unchecked: `retired` is guarded by `retiredLock`, which only publishers take.
    private let current: ManagedAtomic<View>
    /// Views replaced lately, kept so that the last reference to one is almost never a
    /// worker's: freeing a View of a 41,000-instance registry (its records, names and caches)
    /// costs milliseconds, and in glibc's allocator may wait for the arena of the thread that
    /// built it (a publisher below the workers' priority). The publisher frees it instead, when
    /// it is `retiredViewsMax` publications old; a worker holds a View for one batch only.
    private var retired: [View] = []
    private let retiredLock = NSLock()
    public static let retiredViewsMax = 2

    public init(_ view: View) {
        current = ManagedAtomic(view)
    }

    @inline(__always)
    public func load() -> View {
        current.load(ordering: .acquiring)
    }

    public func publish(_ view: View) {
        let previous = current.exchange(view, ordering: .acquiringAndReleasing)
        let freed: [View] = retiredLock.withLock {
            retired.append(previous)
            let excess = retired.count - Self.retiredViewsMax
            guard excess > 0 else { return [] }
            defer { retired.removeFirst(excess) }
            return Array(retired.prefix(excess))
        }
        _ = freed  // released here, on the publisher's thread
    }

    /// Frees every retired View now. For a publisher that knows no worker still holds one (a
    /// worker holds a View for one batch, far less than the caller's wait): after a zone reload
    /// the previous zones would otherwise stay resident until two more publications.
    public func freeRetired() {
        let freed: [View] = retiredLock.withLock {
            defer { retired.removeAll() }
            return retired
        }
        _ = freed
    }
}
