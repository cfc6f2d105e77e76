import Foundation
import LMDB

/// What `GET /v1/admin/journal` reports.
public struct JournalReport: Sendable {
    public var location: String
    /// The last change set committed.
    public var sequence: UInt64
    public var epoch: UInt64
    public var appendedSinceStart: Int
    public var bytesSinceStart: Int
    public var snapshots: [SnapshotInfo]
    /// Set when the journal refuses writes until the daemon restarts.
    public var broken: String?
    /// The lease term this vault writes under (a PostgreSQL journal).
    public var term: UInt64?
    /// Set once another node took the lease: this vault no longer writes.
    public var deposed: String?
    /// The standbys following a PostgreSQL journal (those seen within the hour).
    public var standbys: [StandbyReport] = []
}

/// A standby as it last reported itself to the journal.
public struct StandbyReport: Sendable {
    public var name: String
    public var applied: UInt64
    public var lagMilliseconds: Int
    public var secondsSinceSeen: Double
}

extension Vault {
    /// Takes a snapshot into the journal (between two writes; the writes go on while it is
    /// sealed and stored), then removes the change sets it covers and older snapshots.
    /// Serialized with rotations and compactions. `progress` gets the bytes stored so far.
    public func snapshot(progress: (@Sendable (Int) -> Void)? = nil) async throws -> SnapshotInfo {
        try await maintenance.run { try await self.takeSnapshot(progress: progress) }
    }

    func takeSnapshot(progress: (@Sendable (Int) -> Void)? = nil) async throws -> SnapshotInfo {
        let taking: Snapshot.Taking = try await performExclusive { stores, context in
            guard let journal = stores.journal else {
                throw VaultError.invalidArgument("this vault runs without a journal: there is nowhere to take a snapshot to")
            }
            try journal.checkWritable()
            return try Snapshot.begin(stores, journal: journal, master: context.masterKey)
        }
        guard let backend = writer.stores.journal?.backend else { throw VaultError.shuttingDown }
        let info = try await onThread { try taking.stream(to: backend, progress: progress) }
        try await performExclusive { _, _ in try Vault.pruneJournal(backend, keeping: info) }
        return info
    }

    /// After `info` is durable: the change sets it covers and the snapshots before it go.
    static func pruneJournal(_ backend: any JournalBackend, keeping info: SnapshotInfo) throws {
        try backend.removeEntries(through: info.sequence)
        for old in try backend.snapshots() where old < info {
            try backend.removeSnapshot(old)
        }
    }

    /// The journal's state, or nil without one.
    public func journalReport() async throws -> JournalReport? {
        let report: [JournalReport] = try await performExclusive { stores, _ in
            guard let j = stores.journal else { return [] }
            return [JournalReport(location: j.backend.description, sequence: j.sequence, epoch: j.epoch,
                                  appendedSinceStart: j.appendedEntries, bytesSinceStart: j.appendedBytes,
                                  snapshots: try j.backend.snapshots(), broken: j.brokenReason.map { "\($0)" },
                                  term: (j.backend as? PostgresJournal)?.term,
                                  deposed: (j.backend as? PostgresJournal)?.deposed,
                                  standbys: (try? (j.backend as? PostgresJournal)?.standbys()) ?? [])]
        }
        return report.first
    }

    public var hasJournal: Bool { writer.stores.journal != nil }
}

/// Runs blocking work (file and pipe I/O) on a thread of its own, off the cooperative pool.
func onThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
        let t = Thread {
            do { continuation.resume(returning: try body()) } catch { continuation.resume(throwing: error) }
        }
        t.name = "shredvault-io"
        t.start()
    }
}
