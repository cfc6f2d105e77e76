import Foundation
import LMDB
import Sodium

/// The vault's side of the journal: numbers, seals and appends the change set of every write
/// of the two environments (`Stores.write`), so that no caller is answered — and no keystore
/// transaction commits — before its change set is durable in the journal.
///
/// The append runs on a thread of its own while the record store commits (a batch costs the
/// slower of the two, then the keystore's commit). A change set appended for a write that then
/// failed locally is taken back (`retract`); when even that fails the journal is *broken*:
/// every later write fails with 503 until the daemon is restarted, whose replay makes the
/// vault catch up with what the journal holds.
///
/// Owned by the writer thread (or the opening thread before it starts).
final class JournalWriter: @unchecked Sendable {
    // unchecked: confined to the writer thread; the append thread only sees `Appender`.
    let backend: any JournalBackend
    let vaultID: [UInt8]
    /// The last change set appended and committed.
    private(set) var sequence: UInt64
    /// The master key generation whose journal key seals new change sets.
    private(set) var epoch: UInt64
    private var key: Key
    private var broken: VaultError?
    private(set) var keystoreLog: ChangeLog
    let recordsLog: ChangeLog
    private let appender: Appender
    /// Bytes appended since start (for GET /v1/admin/journal).
    private(set) var appendedBytes = 0
    private(set) var appendedEntries = 0

    init(backend: any JournalBackend, vaultID: [UInt8], sequence: UInt64, epoch: UInt64, master: Key, stores: Stores) throws {
        self.backend = backend
        self.vaultID = vaultID
        self.sequence = sequence
        self.epoch = epoch
        self.key = try JournalKeys.changeSetKey(master: master)
        keystoreLog = ChangeLog(codes: Layout.keystoreCodes.map { (stores.keystore.database($0.0), $0.1) })
        recordsLog = ChangeLog(codes: Layout.recordsCodes.map { (stores.records.database($0.0), $0.1) })
        appender = Appender(backend: backend)
    }

    /// A compaction reopened the keystore: its databases are new handles.
    func keystoreReplaced(_ env: Environment) {
        keystoreLog = ChangeLog(codes: Layout.keystoreCodes.map { (env.database($0.0), $0.1) })
    }

    var brokenReason: VaultError? { broken }

    func checkWritable() throws {
        if let broken { throw broken }
    }

    /// The next master key generation a rotation's switch hands the journal: the key (for this
    /// writer's journal key after the switch) and the boxes that carry it to the standbys.
    struct NextMaster {
        let key: Key
        let generation: UInt64
        let sealed: [KeyExchange.Sealed]
    }

    /// `next` sealed to each exchange key the standbys published for the current generation: the
    /// rotation calls it before its switch (a PostgreSQL query, outside any transaction).
    func nextMaster(_ next: Key, generation: UInt64, current: Key) throws -> NextMaster {
        let published = try backend.exchangeKeys(generation: generation - 1)
        return NextMaster(key: next, generation: generation,
                          sealed: try KeyExchange.seal(next, to: published, generation: generation - 1, master: current))
    }

    /// The change set being appended for the current write.
    final class Pending {
        let entry: JournalEntry
        /// The next generation and its journal key, when this change set switches to it.
        let next: (generation: UInt64, journalKey: Key)?
        var outcome: Result<Void, VaultError>?
        init(entry: JournalEntry, next: (generation: UInt64, journalKey: Key)?) {
            self.entry = entry
            self.next = next
        }
    }

    /// Seals the two logs as the next change set and starts appending it.
    func startAppend(carrying next: NextMaster?) throws -> Pending {
        let entry = try ChangeSet.seal(sequence: sequence + 1, epoch: epoch, vaultID: vaultID, keystore: keystoreLog,
                                       records: recordsLog,
                                       next: next.map { .init(generation: $0.generation, sealed: $0.sealed, legacyKey: nil) },
                                       journalKey: key.bytes)
        let pending = Pending(entry: entry, next: try next.map { ($0.generation, try JournalKeys.changeSetKey(master: $0.key)) })
        appender.start(entry)
        return pending
    }

    /// Waits for the append; throws `.journal` when it failed (the write must fail).
    func finish(_ pending: Pending) throws {
        if pending.outcome == nil { pending.outcome = appender.wait() }
        if case .failure(let e) = pending.outcome! { throw e }
    }

    /// Both environments committed: the change set is the journal's and the vault's.
    func committed(_ pending: Pending) {
        sequence = pending.entry.sequence
        appendedBytes += pending.entry.bytes.count
        appendedEntries += 1
        if let next = pending.next {
            epoch = next.generation
            key = next.journalKey
        }
    }

    /// The write failed after its change set was handed to the journal: waits for the append
    /// and takes it back if it was made.
    func abandon(_ pending: Pending) {
        if pending.outcome == nil { pending.outcome = appender.wait() }
        guard case .success = pending.outcome! else { return }
        do {
            try backend.retract(pending.entry)
        } catch {
            broken = .journal("change set \(pending.entry.sequence) is in the journal but its write failed here, and "
                              + "taking it back failed (\(error)); restart the vault to replay it")
        }
    }

    func close() {
        appender.stop()
        backend.close()
    }

    /// The thread that appends (and fsyncs) while the writer commits the record store.
    final class Appender: @unchecked Sendable {
        // unchecked: every field is guarded by `condition`.
        private let backend: any JournalBackend
        private let condition = NSCondition()
        private var job: JournalEntry?
        private var result: Result<Void, VaultError>?
        private var stopping = false
        private var thread: Thread?

        init(backend: any JournalBackend) {
            self.backend = backend
            let t = Thread { [self] in run() }
            t.name = "shredvault-journal"
            thread = t
            t.start()
        }

        func start(_ entry: JournalEntry) {
            condition.lock()
            precondition(job == nil && result == nil, "one journal append at a time")
            job = entry
            condition.broadcast()
            condition.unlock()
        }

        func wait() -> Result<Void, VaultError> {
            condition.lock()
            defer { condition.unlock() }
            while result == nil { condition.wait() }
            let r = result!
            result = nil
            return r
        }

        func stop() {
            condition.lock()
            stopping = true
            condition.broadcast()
            condition.unlock()
        }

        private func run() {
            Thread.current.name = "sv-journal"
            while true {
                condition.lock()
                while job == nil && !stopping { condition.wait() }
                guard let entry = job else {
                    condition.unlock()
                    return
                }
                condition.unlock()
                let r: Result<Void, VaultError>
                do {
                    try backend.append(entry)
                    r = .success(())
                } catch let e as VaultError {
                    if case .journal = e { r = .failure(e) } else { r = .failure(.journal("\(e)")) }
                } catch {
                    r = .failure(.journal("\(error)"))
                }
                condition.lock()
                job = nil
                result = r
                condition.broadcast()
                condition.unlock()
            }
        }
    }
}

extension Stores {
    /// One write of both environments: the record store's transaction inside the keystore's,
    /// the record store committed first (a record exists iff its wrapped DEK does). With a
    /// journal, the write is also change set `sequence + 1`: the keystore's `journal` row
    /// records its number, the change set is appended while the record store commits, and the
    /// keystore commits only once it is durable in the journal. `carrying` hands the journal
    /// the next master key generation (the rotation's switch, `JournalWriter.nextMaster`).
    func write<R>(carrying next: JournalWriter.NextMaster? = nil,
                  _ body: (borrowing Transaction, borrowing Transaction) throws -> R) throws -> R {
        guard let journal else {
            return try keystore.write { ks in try records.write { rec in try body(ks, rec) } }
        }
        try journal.checkWritable()
        let ksLog = journal.keystoreLog
        ksLog.removeAll()
        journal.recordsLog.removeAll()
        var pending: JournalWriter.Pending?
        do {
            let result = try keystore.write(recordingInto: ksLog) { ks in
                try ks.put(Vault.encodeJournalRow(sequence: journal.sequence + 1, epoch: journal.epoch),
                           forKey: Vault.metaJournal, in: self.ks.meta)
                let result = try records.write(recordingInto: journal.recordsLog) { rec in
                    let result = try body(ks, rec)
                    pending = try journal.startAppend(carrying: next)
                    return result
                }
                // The record store is durable; the keystore waits for the journal.
                try journal.finish(pending!)
                return result
            }
            journal.committed(pending!)
            return result
        } catch {
            if let pending { journal.abandon(pending) }
            throw error
        }
    }
}
