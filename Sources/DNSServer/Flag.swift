import Atomics

/// A boolean shared between the owner and worker threads.
final class ManagedAtomicFlag: Sendable {
    private let value = ManagedAtomic<Bool>(false)
    func get() -> Bool { value.load(ordering: .relaxed) }
    func set(_ on: Bool) { value.store(on, ordering: .relaxed) }
}
