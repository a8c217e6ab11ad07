import Cluster
import NIOConcurrencyHelpers
import NIOCore
import Raft
import Registry

/// Registry writes that arrive together go into one log entry (group commit), so a herd of
/// agents registering at once costs the cluster one append, one apply transaction and one view
/// rebuild per batch instead of per agent.
///
/// No write waits for a batch to fill: a write joins the batch that is open on the batcher's
/// loop, and the batch is proposed as soon as that loop has run what was queued before it. An
/// idle server proposes a lone write as itself, exactly as without batching; under load, the
/// writes that arrived while the loop was busy share an entry. A batch entry applies its
/// commands in order in one transaction (`CatalogCommand.batch`), each as it would alone: a
/// command never fails because another in its batch did, and every one is answered with the
/// batch's index.
package final class ProposalBatcher: @unchecked Sendable {
    // @unchecked: `open` and `flushScheduled` are touched only on `loop`.

    /// Commands in one batch entry (the decoder's and the health checker's limit).
    package static let commandsMax = CatalogCommand.batchCommandsMax
    /// Encoded bytes of the commands in one batch entry: well under the append message limit
    /// (`RaftConfig.appendMessageBytesMaxDefault`, 1 MiB), so a batch never travels alone.
    package static let bytesMax = 256 << 10

    private struct Waiting {
        var command: CatalogCommand
        var encoded: [UInt8]
        var promise: EventLoopPromise<LogIndex>
    }

    private let loop: EventLoop
    private let propose: @Sendable ([UInt8]) -> EventLoopFuture<LogIndex>
    private var open: [Waiting] = []
    private var openBytes = 0
    private var flushScheduled = false
    private let counters = NIOLockedValueBox(BatchCounters())

    package struct BatchCounters: Sendable, Equatable {
        /// Log entries proposed, and the writes they carried.
        package var entries = 0
        package var commands = 0

        package init(entries: Int = 0, commands: Int = 0) {
            self.entries = entries
            self.commands = commands
        }
    }

    /// - Parameter propose: the driver's `propose` (one entry).
    package init(loop: EventLoop, propose: @escaping @Sendable ([UInt8]) -> EventLoopFuture<LogIndex>) {
        self.loop = loop
        self.propose = propose
    }

    package var batchCounters: BatchCounters { counters.withLockedValue { $0 } }

    /// Proposes `command` in the next batch entry; the future gives that entry's index once it
    /// applied, or the entry's failure.
    package func submit(_ command: CatalogCommand) -> EventLoopFuture<LogIndex> {
        let encoded = command.encoded
        return loop.flatSubmit {
            let promise = self.loop.makePromise(of: LogIndex.self)
            if !self.open.isEmpty && (self.open.count >= Self.commandsMax || self.openBytes + encoded.count > Self.bytesMax) {
                self.flush()
            }
            self.open.append(Waiting(command: command, encoded: encoded, promise: promise))
            self.openBytes += encoded.count
            if !self.flushScheduled {
                self.flushScheduled = true
                // After what is queued on the loop now: the writes that arrived meanwhile join.
                self.loop.execute { self.flush() }
            }
            return promise.futureResult
        }
    }

    private func flush() {
        flushScheduled = false
        guard !open.isEmpty else { return }
        let batch = open
        open = []
        openBytes = 0
        counters.withLockedValue {
            $0.entries += 1
            $0.commands += batch.count
        }
        let data = batch.count == 1 ? batch[0].encoded : CatalogCommand.batch(batch.map(\.command)).encoded
        propose(data).whenComplete { result in
            for waiting in batch { waiting.promise.completeWith(result) }
        }
    }
}
