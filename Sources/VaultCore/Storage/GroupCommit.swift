import Foundation
import LMDB
import Synchronization

/// One operation in a group-committed batch: it runs inside child transactions of the
/// batch's keystore and record-store write transactions.
protocol BatchOperation: AnyObject {
    /// Runs the operation. Throwing rolls back its child transactions (it fails alone);
    /// `AuditedRefusal` keeps its writes (the audit entry of the refusal) and fails it.
    func execute(keystore: borrowing Transaction, records: borrowing Transaction, context: OperationContext) throws
    /// Delivers the outcome, after the batch is durable (or failed).
    func finish(_ error: (any Error)?)
}

/// An operation that needs the environments to itself (sweep, rotation, compaction):
/// it runs between batches and manages its own transactions.
protocol ExclusiveOperation: AnyObject {
    func execute(_ stores: Stores, context: OperationContext) throws
    func finish(_ error: (any Error)?)
}

/// Thrown by an operation that must fail *after* committing what it wrote: a refusal
/// (legal hold, read of an unknown id) is itself audited (docs/architecture.md, Lifecycles).
struct AuditedRefusal: Error {
    let error: VaultError
}

/// Thrown by an operation that was refused before its first write (a validation, an
/// unknown tenant): it fails alone even on the writer's fast path, with nothing to roll back.
struct NothingWritten: Error {
    let error: VaultError
}

/// The single writer of docs/architecture.md's group commit: its own thread (never the cooperative
/// pool, whose two threads must not block on fsync) takes up to `maxBatch` queued
/// operations, runs each in child transactions of one keystore and one record-store write
/// transaction, commits the record store first and the keystore second (a record exists
/// iff its wrapped DEK exists, so a crash in between leaves only orphan ciphertext), and
/// completes each caller only after both commits are durable.
final class GroupCommitWriter: @unchecked Sendable {
    // unchecked: `queue`, `closing` and `closed` are guarded by `condition`; `stores` and
    // `state` are touched only on the writer thread after `start()`.
    private enum Job {
        case batch(any BatchOperation)
        case exclusive(any ExclusiveOperation)
    }

    private let condition = NSCondition()
    private var queue: [Job] = []
    private var closing = false
    private var finished = false
    /// Set when the writer can no longer trust its in-memory state (a simulated crash, or
    /// a failure it could not recover from): every later operation fails with this error.
    private var failure: VaultError?
    private var thread: Thread?

    let stores: Stores
    let state: WriterState
    let maxBatch: Int

    /// Moves of the audit's tail that failed and were left to a later batch.
    let auditMovesFailed = Atomic<Int>(0)
    /// The audit head before which no move is tried again after one failed (writer thread only).
    private var nextAuditMove: UInt64 = 0
    /// Batches committed and operations they carried (for metrics and tests).
    let batchesCommitted = Atomic<Int>(0)
    let operationsCommitted = Atomic<Int>(0)

    init(stores: Stores, state: WriterState, maxBatch: Int) {
        self.stores = stores
        self.state = state
        self.maxBatch = max(1, maxBatch)
    }

    func start() {
        let t = Thread { [self] in run() }
        t.name = "shredvault-writer"
        thread = t
        t.start()
    }

    /// Queues an operation; fails at once with `.shuttingDown` once closing has begun.
    func submit(_ op: any BatchOperation) {
        enqueue(.batch(op)) { op.finish(VaultError.shuttingDown) }
    }

    func submit(_ op: any ExclusiveOperation) {
        enqueue(.exclusive(op)) { op.finish(VaultError.shuttingDown) }
    }

    private func enqueue(_ job: Job, refuse: () -> Void) {
        condition.lock()
        if closing || failure != nil {
            condition.unlock()
            refuse()
            return
        }
        queue.append(job)
        condition.signal()
        condition.unlock()
    }

    /// Stops taking operations, finishes everything already queued, and returns when the
    /// writer thread has exited.
    func close() {
        condition.lock()
        closing = true
        condition.broadcast()
        while !finished { condition.wait() }
        condition.unlock()
    }

    private func run() {
        Thread.current.name = "sv-writer"  // visible to top/perf as the thread's comm
        while true {
            condition.lock()
            while queue.isEmpty && !closing && state.pendingCiphertextDeletes.isEmpty {
                condition.wait()
            }
            if queue.isEmpty && closing {
                condition.unlock()
                break
            }
            var batch: [any BatchOperation] = []
            var exclusive: (any ExclusiveOperation)?
            if case .exclusive(let op) = queue.first {
                exclusive = op
                queue.removeFirst()
            } else {
                var taken = 0
                while taken < queue.count && batch.count < maxBatch, case .batch(let op) = queue[taken] {
                    batch.append(op)
                    taken += 1
                }
                queue.removeFirst(taken)
            }
            condition.unlock()

            if let failure = currentFailure() {
                exclusive?.finish(failure)
                for op in batch { op.finish(failure) }
            } else if let exclusive {
                runExclusive(exclusive)
            } else {
                runBatch(batch)
            }
        }
        // Drain deletions of ciphertext whose keys are already gone, then stop.
        if !state.pendingCiphertextDeletes.isEmpty && currentFailure() == nil { runBatch([]) }
        condition.lock()
        finished = true
        condition.broadcast()
        condition.unlock()
    }

    private func currentFailure() -> VaultError? {
        condition.lock()
        defer { condition.unlock() }
        return failure
    }

    private func fail(_ error: VaultError) {
        condition.lock()
        failure = error
        condition.unlock()
    }

    private func runExclusive(_ op: any ExclusiveOperation) {
        let context = OperationContext(state: state, audit: stores.audit)
        do {
            try op.execute(stores, context: context)
            state.commit(context)
            op.finish(nil)
        } catch is SimulatedCrash {
            fail(.io("the writer stopped at a simulated crash; reopen the vault"))
            op.finish(VaultError.io("simulated crash"))
        } catch {
            // An exclusive operation commits in several transactions: re-read the audit
            // head from what is durable rather than trust memory.
            do {
                state.auditHead = try stores.keystore.read { try AuditLog.head(in: $0, dbs: stores.ks) }
            } catch {
                fail(.io("the audit head cannot be re-read after a failed maintenance operation; reopen the vault"))
            }
            op.finish(VaultError.mapping(error))
        }
    }

    /// Batches left to run with isolated operations after a fast attempt failed: under a
    /// stream of failing operations the writer stops paying for attempts that fall back.
    private var isolatedBatchesLeft = 0

    private func runBatch(_ ops: [any BatchOperation]) {
        let started = DispatchTime.now().uptimeNanoseconds
        var outcome: (context: OperationContext, outcomes: [(any Error)?])?
        if isolatedBatchesLeft > 0 {
            isolatedBatchesLeft -= 1
        } else {
            outcome = attemptBatch(ops, isolated: false)
            if outcome == nil { isolatedBatchesLeft = 8 }
        }
        if outcome == nil { outcome = attemptBatch(ops, isolated: true) }
        guard let (context, outcomes) = outcome else { return }
        state.commit(context)
        if let observer = state.configuration.commitObserver, !ops.isEmpty {
            observer(ops.count, Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9)
        }
        batchesCommitted.add(1, ordering: .relaxed)
        operationsCommitted.add(ops.count, ordering: .relaxed)
        for (i, op) in ops.enumerated() { op.finish(outcomes[i]) }
        moveAuditTail()
    }

    /// Moves the audit's committed entries to the record store once the keystore's tail is
    /// `auditTail` long: a write of its own, after the batch's callers are answered, so
    /// that a move can never fail an operation. One that fails, or is put off because the
    /// record store is down to its reserve (`AuditArchive.recordStoreHasRoom`), is counted and
    /// tried again a tail later; the tail grows meanwhile.
    private func moveAuditTail() {
        let committed = state.auditHead.seq
        let tail = state.configuration.auditTail
        guard committed >= state.auditArchived + tail, committed >= nextAuditMove else { return }
        let dbs = stores.ks, audit = stores.audit
        do {
            guard try AuditArchive.recordStoreHasRoom(forMoving: committed - state.auditArchived, in: stores.records) else {
                throw VaultError.storageFull
            }
            state.auditArchived = try stores.write { ks, rec in
                try AuditArchive.move(through: committed, in: ks, rec, dbs: dbs, audit: audit)
            }
        } catch {
            auditMovesFailed.add(1, ordering: .relaxed)
            nextAuditMove = committed + tail
        }
    }

    /// Runs the batch in one keystore and one record-store write transaction.
    ///
    /// Not isolated (the fast path): every operation runs directly in the batch's
    /// transactions, so an operation that throws may leave partial writes behind; the
    /// whole attempt is then rolled back and nil is returned, and the caller runs the batch
    /// again isolated. Isolated: each operation runs in child transactions (`mdb_txn_begin`
    /// with a parent), so a failure — including LMDB's map-full, which poisons the
    /// transaction it happens in — rolls back that operation alone; a failure of the
    /// commits themselves fails every operation, and nil is returned.
    private func attemptBatch(_ ops: [any BatchOperation], isolated: Bool) -> (OperationContext, [(any Error)?])? {
        let context = OperationContext(state: state, audit: stores.audit)
        context.isolated = isolated
        var outcomes = [(any Error)?](repeating: nil, count: ops.count)
        let deletes = state.pendingCiphertextDeletes
        do {
            try stores.write { ks, rec in
                for key in deletes { try rec.delete(key: key, in: stores.rec) }
                for (i, op) in ops.enumerated() {
                    if !isolated {
                        do {
                            try op.execute(keystore: ks, records: rec, context: context)
                        } catch let r as AuditedRefusal {
                            outcomes[i] = r.error
                        } catch let r as NothingWritten {
                            outcomes[i] = r.error
                        }
                        continue
                    }
                    let mark = context.mark()
                    do {
                        let refusal: VaultError? = try ks.withChild { ksChild in
                            try rec.withChild { recChild in
                                do {
                                    try op.execute(keystore: ksChild, records: recChild, context: context)
                                    return nil
                                } catch let r as AuditedRefusal {
                                    return r.error
                                }
                            }
                        }
                        outcomes[i] = refusal
                    } catch {
                        context.rollback(to: mark)
                        outcomes[i] = VaultError.mapping(error)
                    }
                }
            }
            // Both environments (and the journal) are durable: deletions of earlier batches are done.
            state.pendingCiphertextDeletes.removeFirst(deletes.count)
        } catch {
            state.abandon(context)
            if !isolated { return nil }
            let failure = VaultError.mapping(error, writingTo: [stores.records.path, stores.keystore.path])
            for op in ops { op.finish(failure) }
            return nil
        }
        return (context, outcomes)
    }
}

/// Bridges an async caller to the writer: a batch operation whose body returns a value.
final class PendingOperation<T: Sendable>: BatchOperation, @unchecked Sendable {
    // unchecked: `result` is written on the writer thread before `finish` and read only by it.
    typealias Body = (borrowing Transaction, borrowing Transaction, OperationContext) throws -> T
    private let body: Body
    private var result: T?
    private let continuation: CheckedContinuation<T, any Error>

    init(body: @escaping Body, continuation: CheckedContinuation<T, any Error>) {
        self.body = body
        self.continuation = continuation
    }

    func execute(keystore: borrowing Transaction, records: borrowing Transaction, context: OperationContext) throws {
        result = try body(keystore, records, context)
    }

    func finish(_ error: (any Error)?) { resume(continuation, result, error) }
}

final class PendingExclusive<T: Sendable>: ExclusiveOperation, @unchecked Sendable {
    // unchecked: as PendingOperation.
    typealias Body = (Stores, OperationContext) throws -> T
    private let body: Body
    private var result: T?
    private let continuation: CheckedContinuation<T, any Error>

    init(body: @escaping Body, continuation: CheckedContinuation<T, any Error>) {
        self.body = body
        self.continuation = continuation
    }

    func execute(_ stores: Stores, context: OperationContext) throws {
        result = try body(stores, context)
    }

    func finish(_ error: (any Error)?) { resume(continuation, result, error) }
}

/// Completes a caller: with the error, or with the result the operation stored.
private func resume<T: Sendable>(_ continuation: CheckedContinuation<T, any Error>, _ result: T?, _ error: (any Error)?) {
    if let error {
        continuation.resume(throwing: error)
    } else if let result {
        continuation.resume(returning: result)
    } else {
        continuation.resume(throwing: VaultError.io("operation produced no result"))
    }
}
