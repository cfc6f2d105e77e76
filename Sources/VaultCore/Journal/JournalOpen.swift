import LMDB
import Sodium

/// How a vault opens with its journal: the journal's identity is checked, what the journal holds
/// beyond the vault's last change set is replayed, and a journal that cannot be trusted to hold
/// everything the vault acknowledged is refused (docs/operations.md, Journal).
public struct JournalSettings: Sendable {
    public var location: JournalLocation
    /// Start a new journal at this (empty) location from a snapshot of the vault, although the
    /// vault wrote to another journal before.
    public var startNew = false
    /// A file (mode 0600) holding the PostgreSQL password, for a `postgres://` journal that
    /// authenticates by password (none for peer or certificate authentication).
    public var passwordFile: String?
    /// How long a PostgreSQL journal's writer lease lasts without renewal: a writer that stops
    /// renewing (dead, paused, cut off) can be replaced this long after its last renewal.
    public var leaseSeconds: Int = JournalSettings.defaultLeaseSeconds
    public static let defaultLeaseSeconds = 10
    /// The lease holder a promoted standby hands over (the vault keeps its term).
    var leaseHolder: String?
    /// Called with progress lines (snapshot bytes, change sets replayed): for the CLI.
    public var progress: (@Sendable (String) -> Void)?

    public init(location: JournalLocation, startNew: Bool = false, progress: (@Sendable (String) -> Void)? = nil) {
        self.location = location
        self.startNew = startNew
        self.progress = progress
    }
}

extension JournalSettings {
    func backend() throws -> any JournalBackend {
        try location.backend(passwordFile: passwordFile, leaseSeconds: leaseSeconds, leaseHolder: leaseHolder)
    }
}

extension Vault {
    static let metaJournal = Array("journal".utf8)
    static let metaVaultID = Array("vault_id".utf8)
    static let journalRowFormat: UInt8 = 1

    /// The keystore's `journal` row: the last change set committed (format, sequence, epoch).
    static func encodeJournalRow(sequence: UInt64, epoch: UInt64) -> [UInt8] {
        [journalRowFormat] + .be(sequence) + .be(epoch)
    }

    static func journalRow(in txn: borrowing Transaction, meta: Database) throws -> (sequence: UInt64, epoch: UInt64)? {
        guard let b = try txn.value(forKey: metaJournal, in: meta) else { return nil }
        guard b.count == 17, b[0] == journalRowFormat else { throw VaultError.corrupt("the keystore's journal row") }
        return b.withUnsafeBytes { (readBE($0, at: 1), readBE($0, at: 9)) }
    }

    /// The vault's id (16 random bytes, made the first time it is asked for).
    static func vaultID(_ stores: Stores) throws -> [UInt8] {
        if let id = try stores.keystore.read({ try $0.value(forKey: metaVaultID, in: stores.ks.meta) }) {
            guard id.count == 16 else { throw VaultError.corrupt("the keystore's vault id") }
            return id
        }
        let id = Random.bytes(count: 16)
        try stores.keystore.write { try $0.put(id, forKey: metaVaultID, in: stores.ks.meta) }
        return id
    }

    /// The master key that matches the keystore (the key file, or a `.next` file a rotation left
    /// before renaming it), without changing any file: replay runs before `loadMasterKey`.
    static func matchingMasterKey(_ stores: Stores, file: MasterKeyFile) throws -> (Key, UInt64) {
        let check = try stores.keystore.read { try $0.value(forKey: metaMasterKey, in: stores.ks.meta) }
        guard let check, check.count > 9 else { throw VaultError.dataDirectory("the keystore is not initialised") }
        let generation = check[1..<9].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        for path in [file.path, file.nextPath] where Posix.exists(path) {
            let loaded = try MasterKeyFile.load(path)
            if loaded.generation == generation, checkMatches(check, key: loaded.key, generation: generation) {
                return (Key(try loaded.key.copy()), generation)
            }
        }
        if !Posix.exists(file.path) { throw VaultError.masterKey("cannot open \(file.path): no such file") }
        throw VaultError.masterKey("\(file.path) does not match this keystore (it expects generation \(generation))")
    }

    /// What opening with a journal found: the backend (locked), the vault id, and whether a
    /// snapshot must be taken before the vault answers (a new journal, or a rotation that
    /// stopped before its snapshot).
    struct AttachedJournal {
        let backend: any JournalBackend
        let vaultID: [UInt8]
        let needsSnapshot: Bool
    }

    /// Checks the journal against the vault and replays what the vault lacks. Refuses a journal
    /// of another vault, one that is behind the vault, or one that no longer holds the change sets
    /// the vault needs.
    static func attachJournal(_ settings: JournalSettings, stores: Stores, file: MasterKeyFile) throws -> AttachedJournal {
        let backend = try settings.backend()
        do {
            let attached = try attach(backend, settings: settings, stores: stores, file: file)
            return attached
        } catch {
            backend.close()
            throw error
        }
    }

    private static func attach(_ backend: any JournalBackend, settings: JournalSettings, stores: Stores,
                               file: MasterKeyFile) throws -> AttachedJournal {
        let where_ = settings.location.description
        let identity = try backend.identity()
        try backend.lockForWriting()
        let vaultID = try vaultID(stores)
        let local = try stores.keystore.read { try journalRow(in: $0, meta: stores.ks.meta) }
        guard let identity else {
            if let local, !settings.startNew {
                throw VaultError.journal("this vault wrote change sets up to \(local.sequence) to a journal, and \(where_) "
                                         + "is empty: is it the right journal? (to start a new journal there from a snapshot "
                                         + "of the vault, open with --new-journal)")
            }
            try backend.create(vaultID: vaultID)
            try backend.prepareForAppend()
            return AttachedJournal(backend: backend, vaultID: vaultID, needsSnapshot: true)
        }
        guard identity == vaultID else {
            throw VaultError.journal("\(where_) is the journal of another vault")
        }
        if settings.startNew {
            throw VaultError.journal("--new-journal needs an empty journal, and \(where_) holds this vault's journal")
        }
        try backend.prepareForAppend()
        let status = try backend.status()
        let sequence = local?.sequence ?? 0
        if sequence > status.head {
            throw VaultError.journal("\(where_) ends at change set \(status.head) but this vault committed up to \(sequence): "
                                     + "the journal is behind the vault (an older copy?); give the right journal, or start a "
                                     + "new one in an empty directory with --new-journal")
        }
        if sequence < status.head {
            guard status.first <= sequence + 1 else {
                throw VaultError.journal("\(where_) no longer holds change sets \(sequence + 1) to \(status.first - 1) "
                                         + "that this vault lacks: restore the vault from the journal instead")
            }
            try replay(backend, after: sequence, to: status.head, vaultID: vaultID, stores: stores, file: file,
                       progress: settings.progress)
        }
        let generation = try matchingMasterKey(stores, file: file).1
        let latest = try backend.snapshots().last
        return AttachedJournal(backend: backend, vaultID: vaultID, needsSnapshot: latest.map { $0.epoch < generation } ?? true)
    }

    /// Applies change sets `after + 1 ... head` to the two environments, each in one write of
    /// both (record store first), with the key of its epoch. A change set that switches to the
    /// next master key generation moves the key file to it, as the rotation that wrote it did,
    /// with the key from `nextMasterKey`; `switched` is told each generation reached.
    static func replay(_ backend: any JournalBackend, after: UInt64, to head: UInt64, vaultID: [UInt8], stores: Stores,
                       file: MasterKeyFile, progress: (@Sendable (String) -> Void)?,
                       switched: ((UInt64, Key) throws -> Void)? = nil) throws {
        var (master, generation) = try matchingMasterKey(stores, file: file)
        var journalKey = try JournalKeys.changeSetKey(master: master)
        var ksCodes: [UInt8: Database] = [:]
        for (name, code) in Layout.keystoreCodes { ksCodes[code] = stores.keystore.database(name) }
        var recCodes: [UInt8: Database] = [:]
        for (name, code) in Layout.recordsCodes { recCodes[code] = stores.records.database(name) }
        var applied: UInt64 = 0
        try backend.entries(after: after) { entry in
            guard entry.epoch == generation else {
                throw VaultError.integrity("journal change set \(entry.sequence) is of epoch \(entry.epoch) where "
                                           + "generation \(generation) was expected")
            }
            let opened = try ChangeSet.open(entry, vaultID: vaultID, journalKey: journalKey.bytes)
            var next: (generation: UInt64, key: Key, source: NextKeySource)?
            if let n = opened.next {
                guard n.generation == generation + 1 else {
                    throw VaultError.integrity("journal change set \(entry.sequence) switches from generation \(generation) "
                                               + "to \(n.generation)")
                }
                let (key, source) = try nextMasterKey(n, sequence: entry.sequence, file: file)
                // Written before the keystore commits to it, as a rotation does, so a kill between
                // the two leaves the key the keystore needs.
                if source != .nextFile { try file.write(key: key.bytes, generation: n.generation, to: file.nextPath) }
                next = (n.generation, key, source)
            }
            do {
                try stores.keystore.write { ks in
                    try stores.records.write { rec in
                        try opened.withRecordChanges { try rec.apply(changes: $0, databases: recCodes) }
                    }
                    try opened.withKeystoreChanges { try ks.apply(changes: $0, databases: ksCodes) }
                    if let next {
                        // The key found must be the one the switch wrapped the keystore under.
                        let check = try ks.value(forKey: metaMasterKey, in: stores.ks.meta)
                        guard let check, checkMatches(check, key: next.key.bytes, generation: next.generation) else {
                            throw VaultError.masterKey("journal change set \(entry.sequence) switches to master key generation "
                                                       + "\(next.generation), and the key \(next.source) does not match it")
                        }
                    }
                }
            } catch let e as ChangeLog.FormatError {
                throw VaultError.integrity("journal change set \(entry.sequence): \(e)")
            }
            if let next {
                try file.promoteNext()
                master = next.key
                generation = next.generation
                journalKey = try JournalKeys.changeSetKey(master: master)
                // The private half that opened the box is used: destroyed.
                if next.source == .exchange { try ExchangeKeyFile(besideMasterKey: file.path).destroy() }
                try switched?(generation, master)
            }
            applied += 1
            if applied % 10_000 == 0 { progress?("replayed \(applied) of \(head - after) change sets") }
            return entry.sequence < head
        }
        progress?("replayed \(applied) change sets (to \(after + applied))")
        guard after + applied >= head else {
            throw VaultError.integrity("the journal ended at change set \(after + applied) while its head is \(head)")
        }
    }

    /// Where the key of a switch's next generation came from.
    enum NextKeySource: Equatable, CustomStringConvertible {
        /// The `.next` file: this node's own rotation (killed before its keystore committed), or
        /// the kept key file a restore was given with `--next-key-file`.
        case nextFile
        /// A box sealed to this standby's exchange key.
        case exchange
        /// A change set written before the exchange, which carried the key itself.
        case legacy

        var description: String {
            switch self {
            case .nextFile: "in the .next key file"
            case .exchange: "from this standby's exchange box"
            case .legacy: "the change set carried"
            }
        }
    }

    /// The next generation's key for a switch: the `.next` file when it holds that generation,
    /// else the key an old change set carried, else the box sealed to this node's exchange key.
    static func nextMasterKey(_ next: ChangeSet.NextGeneration, sequence: UInt64,
                              file: MasterKeyFile) throws -> (key: Key, source: NextKeySource) {
        if Posix.exists(file.nextPath) {
            let loaded = try MasterKeyFile.load(file.nextPath)
            if loaded.generation == next.generation { return (Key(try loaded.key.copy()), .nextFile) }
        }
        if let key = next.legacyKey { return (key, .legacy) }
        if let held = try ExchangeKeyFile(besideMasterKey: file.path).load(), held.generation == next.generation - 1,
           let sealed = next.sealed.first(where: { $0.publicKey == held.pair.publicKey }) {
            do {
                return (Key(try held.pair.open(sealed.box)), .exchange)
            } catch SodiumError.authenticationFailure {
                throw VaultError.integrity("journal change set \(sequence): the box of generation \(next.generation) "
                                           + "sealed to this node's exchange key fails to open")
            }
        }
        throw VaultError.masterKey(
            "journal change set \(sequence) switches to master key generation \(next.generation), whose key travels only "
            + "sealed to the exchange keys standbys published for generation \(next.generation - 1) (\(next.sealed.count) "
            + "of them), and this node holds none of them nor the key in \(file.nextPath): a restore across it needs the "
            + "kept key file of generation \(next.generation) too (--next-key-file); a standby that missed it starts "
            + "again on an empty data directory with a copy of the writer's current key file")
    }
}

/// Restores a vault from its journal: the latest snapshot and every change set after it to the
/// head, into a new data directory; then expired buckets are destroyed by the clock and the
/// key hierarchy rotated (a new generation, whose snapshot starts a new epoch of the journal).
public enum Restore {
    public struct Summary: Sendable {
        public var snapshot: SnapshotInfo
        public var head: UInt64
        public var changeSetsReplayed: UInt64
        public var generation: UInt64
    }

    /// `keyFile` holds the master key of the latest snapshot's generation; on success it holds the
    /// restored vault's new generation (the old one destroyed). On failure nothing is left: no data
    /// directory, the key file as it was.
    ///
    /// `nextKeyFile`, the kept key file of the generation after the snapshot's, is needed only when
    /// the journal switched to it after its latest snapshot (a machine lost between a rotation and
    /// its snapshot): the switch carries that key sealed to standbys alone (`KeyExchange`). A switch
    /// that is the journal's last change set, whose key reached nobody (no standby, no `.next`
    /// kept), is taken back instead: its rotation never finished, so it answered nobody.
    public static func run(journal settings: JournalSettings, dataDirectory: String, keyFile: String,
                           nextKeyFile: String? = nil, configuration: VaultConfiguration = .init()) async throws -> Summary {
        try Sodium.initialize()
        let progress = settings.progress
        if Posix.exists(dataDirectory) {
            guard Posix.isDirectory(dataDirectory), try Files.names(in: dataDirectory).isEmpty else {
                throw VaultError.dataDirectory("\(dataDirectory) exists and is not empty: restore writes a new data directory")
            }
        }
        let backend = try settings.backend()
        // The restored vault signs its audit heads with the key beside the key file when there is
        // one, else with a new one (listed after the lost machine's): a restore runs on a new
        // machine, and the audit key does not travel in the journal.
        let auditKey = configuration.auditKeyFile ?? AuditKeyFile(besideMasterKey: keyFile).path
        let auditKeyExisted = Posix.exists(auditKey)
        let work = dataDirectory + ".restoring"
        let workKey = keyFile + ".restoring"
        var succeeded = false
        defer {
            if !succeeded {
                // A defer cannot throw: what is left of the unfinished restore (a key file among
                // them) is named instead of passed over.
                do { try Posix.shredTree(work) } catch { progress?("could not remove \(work): \(error); remove it") }
                for f in [workKey, workKey + ".next", workKey + ".tmp", workKey + ".next.tmp"]
                    + (auditKeyExisted ? [] : [auditKey, auditKey + ".tmp"]) {
                    do { try Posix.shred(f) } catch { progress?("could not shred \(f): \(error); shred it") }
                }
            }
        }
        // Everything that can refuse, before anything is decrypted or written.
        guard let vaultID = try backend.identity() else {
            throw VaultError.journal("\(settings.location) holds no journal")
        }
        try backend.lockForWriting()
        let status = try backend.status()
        guard let snapshot = try backend.snapshots().last else {
            throw VaultError.journal("\(settings.location) holds no snapshot to restore from")
        }
        if let recorded = status.recordedHead, recorded > status.head {
            throw VaultError.journal("\(settings.location) ends at change set \(status.head) but recorded \(recorded) as "
                                     + "appended: its end was cut (acknowledged change sets are missing); not restoring")
        }
        guard status.head >= snapshot.sequence else {
            throw VaultError.journal("\(settings.location) ends at change set \(status.head), below the high-water mark "
                                     + "\(snapshot.sequence) of its latest snapshot: it was truncated; not restoring")
        }
        if status.head > snapshot.sequence, status.first > snapshot.sequence + 1 {
            throw VaultError.journal("\(settings.location) lacks change sets \(snapshot.sequence + 1) to \(status.first - 1) "
                                     + "after its latest snapshot; not restoring")
        }
        let input = MasterKeyFile(path: keyFile)
        let loaded = try input.load()
        guard loaded.generation == snapshot.epoch else {
            throw VaultError.masterKey("the latest snapshot is of master key generation \(snapshot.epoch) and \(keyFile) "
                                       + "holds generation \(loaded.generation): give the key file of generation \(snapshot.epoch)")
        }
        let next = try nextKeyFile.map { path in
            let n = try MasterKeyFile(path: path).load()
            guard n.generation == snapshot.epoch + 1 else {
                throw VaultError.masterKey("--next-key-file \(path) holds generation \(n.generation), and the generation after "
                                           + "the latest snapshot's is \(snapshot.epoch + 1)")
            }
            return n
        }
        var head = status.head
        if next == nil, head > snapshot.sequence {
            head = try takeBackAnUnfinishedSwitch(backend, head: status.head, vaultID: vaultID, master: Key(try loaded.key.copy()),
                                           generation: loaded.generation, location: settings.location, progress: progress)
        }
        backend.close()

        // The snapshot into a new directory, then an ordinary open that replays the journal.
        try Posix.shredTree(work)  // left by an earlier restore that was killed
        try Posix.makeDirectory(work)
        progress?("restoring snapshot \(hex16(snapshot.epoch))-\(hex16(snapshot.sequence)) (\(snapshot.bytes) bytes)")
        try MasterKeyFile(path: workKey).write(key: loaded.key, generation: loaded.generation, to: workKey)
        if let next { try MasterKeyFile(path: workKey).write(key: next.key, generation: next.generation, to: workKey + ".next") }
        let locked = try settings.backend()
        try locked.lockForWriting()
        do {
            try Snapshot.restore(snapshot, from: locked, vaultID: vaultID, master: Key(try loaded.key.copy()), into: work) { n in
                if n % (64 << 20) < (1 << 20) { progress?("snapshot: \(n >> 20) MiB read") }
            }
        } catch {
            locked.close()
            throw error
        }
        locked.close()
        var config = configuration
        config.journal = settings
        config.auditKeyFile = auditKey
        config.newAuditKey = true
        let vault = try Vault.open(dataDirectory: work, masterKeyFile: workKey, configuration: config)
        let summary: Summary
        do {
            let swept = try await vault.sweep()
            progress?("expired buckets destroyed: \(swept.bucketsDestroyed)")
            let rotated = try await vault.rotate()
            progress?("rotated to master key generation \(rotated.masterGeneration)")
            summary = Summary(snapshot: snapshot, head: head, changeSetsReplayed: head - snapshot.sequence,
                              generation: rotated.masterGeneration)
        } catch {
            vault.close()
            throw error
        }
        vault.close()
        try Posix.shred(work + "/LOCK")
        try Posix.rename(work, dataDirectory)
        try Posix.fsyncDirectory(MasterKeyFile.directory(of: dataDirectory))
        // The restored vault's key replaces the old generation's, which is destroyed.
        try Posix.shred(keyFile)
        try Posix.rename(workKey, keyFile)
        try Posix.fsyncDirectory(MasterKeyFile.directory(of: keyFile))
        succeeded = true
        return summary
    }

    /// Before a restore: when the journal's head is of a later generation than the snapshot's,
    /// refuses (the kept key of that generation is needed); when the head is a switch whose key
    /// was sealed to nobody, takes it back (its rotation was cut by the loss of the machine, so
    /// neither it nor anything after it answered anyone, and its key is gone with the machine).
    /// Returns the journal's head after it.
    private static func takeBackAnUnfinishedSwitch(_ backend: any JournalBackend, head: UInt64, vaultID: [UInt8],
                                                   master: Key, generation: UInt64, location: JournalLocation,
                                                   progress: (@Sendable (String) -> Void)?) throws -> UInt64 {
        var last: JournalEntry?
        try backend.entries(after: head - 1) { entry in
            last = entry
            return false
        }
        guard let last else { return head }
        guard last.epoch == generation else {
            throw VaultError.masterKey("\(location) switched to master key generation \(last.epoch) after its latest snapshot "
                                       + "(of generation \(generation)), and its key travels only sealed to the standbys: give "
                                       + "the kept key file of generation \(generation + 1) too (--next-key-file), or promote a standby")
        }
        let opened = try ChangeSet.open(last, vaultID: vaultID, journalKey: try JournalKeys.changeSetKey(master: master).bytes)
        guard let switchTo = opened.next, switchTo.legacyKey == nil else { return head }
        guard switchTo.sealed.isEmpty else {
            throw VaultError.masterKey("\(location)'s last change set (\(last.sequence)) switches to master key generation "
                                       + "\(switchTo.generation), whose key was sealed to \(switchTo.sealed.count) standby(s) only: "
                                       + "promote one, or give the kept key file of that generation (--next-key-file)")
        }
        try backend.prepareForAppend()
        try backend.retract(last)
        progress?("change set \(last.sequence), the switch of a rotation to generation \(switchTo.generation) that the loss of "
                  + "the machine cut short (its key reached nobody), was taken back")
        return head - 1
    }
}
