import Atomics

extension View: AtomicReference {}

/// The current View, published by one writer (reload, registry rebuild) and read by every
/// worker once per batch: an atomic reference, no lock on the answer path.
public final class ViewStore: Sendable {
    private let current: ManagedAtomic<View>

    public init(_ view: View) {
        current = ManagedAtomic(view)
    }

    @inline(__always)
    public func load() -> View {
        current.load(ordering: .acquiring)
    }

    public func publish(_ view: View) {
        current.store(view, ordering: .releasing)
    }
}
