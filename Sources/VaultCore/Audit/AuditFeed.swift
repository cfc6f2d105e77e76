import Locking

/// A signal that the audit has grown, for readers that follow it (the SOC feed,
/// `GET /v1/audit/stream`): the writer fires it after each durable commit that advanced the
/// chain's head, and a follower waits on it between reads instead of polling.
///
/// It carries no entries and no tenant: a follower remembers the `generation` it saw *before*
/// it read, reads what is new for it through `Vault.auditEntries`, and waits past that
/// generation. A commit between its look and its read either shows up in the read or makes
/// the wait return at once, so no entry is missed. Another tenant's commits wake a tenant's
/// follower too (one read that finds nothing): the signal reveals nothing, the read is
/// answered as any other of the tenant's.
public final class AuditFeed: Sendable {
    private struct State {
        var generation: UInt64 = 0
        var nextWaiter: UInt64 = 0
        var waiters: [UInt64: CheckedContinuation<Void, Never>] = [:]
    }

    private let state = Locked(State())

    init() {}

    /// Counts the commits that advanced the audit (and the nudges) since the vault opened.
    public var generation: UInt64 { state.withLock { $0.generation } }

    /// Called on the writer thread after a commit advanced the chain's head: wakes every
    /// waiter (resuming a continuation only schedules it; the writer does not wait).
    func advanced() { wakeAll() }

    /// Wakes every waiter without a commit, so each looks again at its own reasons to stop
    /// (a daemon shutting down its streams).
    public func nudge() { wakeAll() }

    private func wakeAll() {
        let woken = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            s.generation &+= 1
            defer { s.waiters.removeAll(keepingCapacity: true) }
            return Array(s.waiters.values)
        }
        for c in woken { c.resume() }
    }

    /// Returns once `generation` is past `seen`, or at once when it already is, or when the
    /// task is cancelled.
    public func wait(past seen: UInt64) async {
        let id = state.withLock { s -> UInt64 in
            s.nextWaiter &+= 1
            return s.nextWaiter
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                let now = state.withLock { s -> Bool in
                    guard s.generation == seen, !Task.isCancelled else { return true }
                    s.waiters[id] = c
                    return false
                }
                if now { c.resume() }
            }
        } onCancel: {
            let c = state.withLock { $0.waiters.removeValue(forKey: id) }
            c?.resume()
        }
    }
}

extension Vault {
    /// Fired after every commit that added audit entries (see `AuditFeed`).
    public var auditFeed: AuditFeed { writer.state.auditFeed }
}
