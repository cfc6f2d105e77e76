import Foundation
import LMDB
import Locking
import Sodium

/// A standby vault (`serve --journal postgres://... --standby`): its own data directory, kept
/// level with a PostgreSQL journal another vault writes, by applying each change set as the
/// writer committed it (docs/operations.md, "A standby"). It writes nothing to the journal and
/// answers nothing but its health and its state until it is promoted; then it takes the lease
/// under the next term — the old writer's appends fail from that moment — catches up to the
/// head, and hands over to an ordinary `Vault.open` on the same data directory.
///
/// The standby learns a new master key generation through the single-use exchange
/// (`KeyExchange`): it publishes a fresh exchange key per generation, the rotation's change set
/// carries the next key sealed to it, and the key file moves to that generation when the change
/// set is applied (the old generation and the used private key are shredded).
public final class Standby: @unchecked Sendable {
    // unchecked: `stores` is touched by the follower thread and, after it stopped, by `promote`;
    // everything else mutable is behind `state`'s lock.
    public struct Status: Sendable {
        public var location: String
        /// The last change set applied here.
        public var applied: UInt64
        /// The journal's head when last looked at.
        public var head: UInt64
        /// The master key generation the standby's keys are at.
        public var epoch: UInt64
        /// How long the oldest change set not yet applied has been waiting, counted from when
        /// the standby first saw it (so at most one poll interval less than its real age); 0
        /// when level with the head.
        public var lagMilliseconds: Int
        /// The last error following the journal (PostgreSQL unreachable, a damaged change set),
        /// nil while it follows.
        public var error: String?
        public var promoted: Bool
    }

    public let dataDirectory: String
    /// The name it reports its position under (the writer keeps what it has not applied).
    public let name: String
    private var lastReport: (applied: UInt64, at: ContinuousClock.Instant)?
    let settings: JournalSettings
    let file: MasterKeyFile
    private let lock: DirectoryLock
    private let stores: Stores
    private let backend: PostgresJournal
    private let vaultID: [UInt8]
    private let pollInterval: Double
    private let tokens = TokenTable()

    private struct State {
        var applied: UInt64
        var head: UInt64
        var epoch: UInt64
        var behindSince: ContinuousClock.Instant?
        var error: String?
        var stopping = false
        var stopped = false
        var promoted = false
    }
    private let state: Locked<State>
    private let condition = NSCondition()
    private var thread: Thread?

    /// Opens (or first makes, from the journal's latest snapshot) the standby's data directory.
    /// `masterKeyFile` holds the generation of the data directory, or of the latest snapshot when
    /// the directory is made: the one copy of the primary's `keys/` an operator gives a new standby.
    public static func open(dataDirectory: String, masterKeyFile: String, configuration: VaultConfiguration,
                            name: String? = nil, pollInterval: Duration = .milliseconds(100)) throws -> Standby {
        try Sodium.initialize()
        guard let settings = configuration.journal, case .postgres = settings.location else {
            throw VaultError.invalidArgument("a standby follows a PostgreSQL journal (--journal postgres://...)")
        }
        guard let backend = try settings.backend() as? PostgresJournal else {
            throw VaultError.invalidArgument("a standby follows a PostgreSQL journal")
        }
        do {
            guard let vaultID = try backend.identity() else {
                throw VaultError.journal("\(settings.location) holds no journal yet: start the primary first")
            }
            let file = MasterKeyFile(path: masterKeyFile)
            let name = name ?? Standby.defaultName(dataDirectory)
            if !Posix.exists(dataDirectory + "/keystore/data.mdb") {
                try initialise(dataDirectory, from: backend, vaultID: vaultID, file: file, name: name, progress: settings.progress)
            }
            guard let mode = Posix.mode(dataDirectory), mode & 0o002 == 0 else {
                throw VaultError.dataDirectory("\(dataDirectory) is world-writable; run chmod o-w \(dataDirectory)")
            }
            let lock = try DirectoryLock(directory: dataDirectory)
            var stores = try openStores(dataDirectory, configuration)
            do {
                var local = try localPosition(stores)
                guard local.vaultID == vaultID else {
                    throw VaultError.journal("\(dataDirectory) is not a copy of the vault whose journal \(settings.location) is")
                }
                var (master, generation) = try Vault.matchingMasterKey(stores, file: file)
                try AuditKeys.checkForStandby(stores, file: configuration.auditKeyFile.map(AuditKeyFile.init(path:))
                                                  ?? AuditKeyFile(besideMasterKey: masterKeyFile), newKey: configuration.newAuditKey)
                // Away long enough for a snapshot to truncate what it lacks (the writer keeps change
                // sets for standbys seen within the hour): start again from the latest snapshot when
                // it is of this standby's generation.
                let status = try backend.status()
                if status.head > local.applied, status.first > local.applied + 1 {
                    guard let snapshot = try backend.snapshots().last, snapshot.epoch == generation else {
                        throw VaultError.journal("the journal no longer holds change sets \(local.applied + 1) to "
                                                 + "\(status.first - 1) this standby lacks, and its latest snapshot is of "
                                                 + "another master key generation: start the standby on an empty data "
                                                 + "directory with a copy of the writer's current key file")
                    }
                    settings.progress?("the journal no longer holds what this standby lacks: starting again from "
                                       + "snapshot \(hex16(snapshot.epoch))-\(hex16(snapshot.sequence))")
                    try backend.reportStandby(name: name, applied: snapshot.sequence, epoch: snapshot.epoch, lagMilliseconds: 0)
                    stores.keystore.close()
                    stores.records.close()
                    try Posix.shredTree(dataDirectory + "/keystore")
                    try Posix.shredTree(dataDirectory + "/records")
                    try Snapshot.restore(snapshot, from: backend, vaultID: vaultID, master: master, into: dataDirectory)
                    stores = try openStores(dataDirectory, configuration)
                    local = try localPosition(stores)
                    (master, generation) = try Vault.matchingMasterKey(stores, file: file)
                }
                // Registered before it follows: from now on the writer keeps every change set after
                // this position (a first catch-up of a busy journal takes a while, and a rotation's
                // snapshot meanwhile must not truncate what it has not applied yet).
                try backend.reportStandby(name: name, applied: local.applied, epoch: generation, lagMilliseconds: 0)
                try publishExchangeKey(backend, name: name, file: file, generation: generation, master: master)
                let standby = Standby(dataDirectory: dataDirectory, name: name,
                                      settings: settings, file: file, lock: lock, stores: stores,
                                      backend: backend, vaultID: vaultID, applied: local.applied, epoch: generation,
                                      pollInterval: Double(pollInterval.components.seconds)
                                          + Double(pollInterval.components.attoseconds) / 1e18)
                try standby.reloadTokens()
                return standby
            } catch {
                stores.keystore.close()
                stores.records.close()
                lock.release()
                throw error
            }
        } catch {
            backend.close(releasingLease: false)
            throw error
        }
    }

    private static func openStores(_ dataDirectory: String, _ configuration: VaultConfiguration) throws -> Stores {
        let keystore = try Environment(path: dataDirectory + "/keystore",
                                       options: Vault.environmentOptions(mapSize: configuration.keystoreMapSize),
                                       databases: Layout.keystoreDatabases)
        do {
            let records = try Environment(path: dataDirectory + "/records",
                                          options: Vault.environmentOptions(mapSize: configuration.recordsMapSize),
                                          databases: Layout.recordsDatabases)
            return Stores(keystore: keystore, records: records)
        } catch {
            keystore.close()
            throw VaultError.mapping(error)
        }
    }

    /// The vault id and the last change set applied, as the keystore records them.
    private static func localPosition(_ stores: Stores) throws -> (vaultID: [UInt8]?, applied: UInt64) {
        try stores.keystore.read { txn in
            (try txn.value(forKey: Vault.metaVaultID, in: stores.ks.meta),
             try Vault.journalRow(in: txn, meta: stores.ks.meta)?.sequence ?? 0)
        }
    }

    /// Makes sure the journal has this standby's exchange key for `generation`, whose private half
    /// is in `<key file>.exchange`: kept when the file holds that generation, else a new pair (an
    /// older generation's private half is shredded first).
    private static func publishExchangeKey(_ backend: PostgresJournal, name: String, file: MasterKeyFile, generation: UInt64,
                                           master: Key) throws {
        let exchange = ExchangeKeyFile(besideMasterKey: file.path)
        let publicKey: [UInt8]
        if let held = try exchange.load(), held.generation == generation {
            publicKey = held.pair.publicKey
        } else {
            publicKey = try exchange.create(generation: generation).publicKey
        }
        try backend.publishExchangeKey(name: name, generation: generation, publicKey: publicKey,
                                       tag: try KeyExchange.tag(publicKey: publicKey, name: name, generation: generation, master: master))
    }

    /// `host:data-directory`: unique among the standbys of one journal.
    static func defaultName(_ dataDirectory: String) -> String {
        var host = [CChar](repeating: 0, count: 256)
        gethostname(&host, 255)
        return String(decoding: host.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) + ":" + dataDirectory
    }

    private init(dataDirectory: String, name: String, settings: JournalSettings, file: MasterKeyFile, lock: DirectoryLock, stores: Stores,
                 backend: PostgresJournal, vaultID: [UInt8], applied: UInt64, epoch: UInt64, pollInterval: Double) {
        self.dataDirectory = dataDirectory
        self.name = name
        self.settings = settings
        self.file = file
        self.lock = lock
        self.stores = stores
        self.backend = backend
        self.vaultID = vaultID
        self.pollInterval = max(0.01, pollInterval)
        self.state = Locked(State(applied: applied, head: applied, epoch: epoch))
    }

    /// A new standby's data directory: the journal's latest snapshot, written by `Snapshot.restore`.
    private static func initialise(_ dataDirectory: String, from backend: PostgresJournal, vaultID: [UInt8],
                                   file: MasterKeyFile, name: String, progress: (@Sendable (String) -> Void)?) throws {
        guard let snapshot = try backend.snapshots().last else {
            throw VaultError.journal("the journal holds no snapshot to start a standby from")
        }
        let loaded = try file.load()
        guard loaded.generation == snapshot.epoch else {
            throw VaultError.masterKey("the journal's latest snapshot is of master key generation \(snapshot.epoch) and "
                                       + "\(file.path) holds generation \(loaded.generation): give the standby a copy of "
                                       + "the primary's current key file")
        }
        if Posix.exists(dataDirectory) {
            guard Posix.isDirectory(dataDirectory), try Files.names(in: dataDirectory).isEmpty else {
                throw VaultError.dataDirectory("\(dataDirectory) holds no vault and is not empty: a new standby needs an empty directory")
            }
        } else {
            try Posix.makeDirectory(dataDirectory)
        }
        progress?("starting the standby from snapshot \(hex16(snapshot.epoch))-\(hex16(snapshot.sequence))")
        // Registered at the snapshot's position first: the writer keeps what follows it.
        try backend.reportStandby(name: name, applied: snapshot.sequence, epoch: snapshot.epoch, lagMilliseconds: 0)
        do {
            try Snapshot.restore(snapshot, from: backend, vaultID: vaultID, master: Key(try loaded.key.copy()), into: dataDirectory)
        } catch {
            // What the snapshot wrote so far holds wrapped keys: shredded, or named when it cannot be.
            do {
                for name in try Files.names(in: dataDirectory) { try Posix.shredTree(dataDirectory + "/" + name) }
            } catch let cleanup {
                throw VaultError.journal("\(error); and what it wrote in \(dataDirectory) could not be removed "
                                         + "(\(cleanup)): shred it before starting the standby again")
            }
            throw error
        }
    }

    /// Starts following the journal on a thread of its own.
    public func start() {
        let t = Thread { [self] in follow() }
        t.name = "shredvault-standby"
        thread = t
        t.start()
    }

    private func follow() {
        Thread.current.name = "sv-standby"
        while !state.withLock({ $0.stopping }) {
            catchUp()
            report()
            condition.lock()
            if !state.withLock({ $0.stopping }) { _ = condition.wait(until: Date(timeIntervalSinceNow: pollInterval)) }
            condition.unlock()
        }
        state.withLock { $0.stopped = true }
        condition.lock()
        condition.broadcast()
        condition.unlock()
    }

    /// Applies every change set after the last applied one, to the head; records what stopped it.
    @discardableResult
    private func catchUp() -> Bool {
        do {
            let status = try backend.status()
            let applied = state.withLock { s in
                s.head = status.head
                if status.head > s.applied, s.behindSince == nil { s.behindSince = .now }
                return s.applied
            }
            guard status.head >= applied else {
                throw VaultError.journal("the journal ends at change set \(status.head) and this standby has applied "
                                         + "\(applied): change sets were removed from its end (an older copy of the "
                                         + "database?); this standby does not follow it")
            }
            guard status.head > applied else {
                state.withLock { $0.behindSince = nil; $0.error = nil }
                return true
            }
            guard status.first <= applied + 1 else {
                throw VaultError.journal("the journal no longer holds change sets \(applied + 1) to \(status.first - 1) "
                                         + "(a snapshot covered them while this standby was behind): restart the standby, "
                                         + "which starts again from the latest snapshot")
            }
            try Vault.replay(backend, after: applied, to: status.head, vaultID: vaultID, stores: stores, file: file,
                             progress: nil) { [self] generation, master in
                // Published before the next rotation can want it.
                try backend.reportStandby(name: name, applied: try Self.localPosition(stores).applied, epoch: generation,
                                          lagMilliseconds: 0)
                try Self.publishExchangeKey(backend, name: name, file: file, generation: generation, master: master)
            }
            let generation = try Vault.matchingMasterKey(stores, file: file).1
            try reloadTokens()
            state.withLock { s in
                s.applied = status.head
                s.epoch = generation
                s.behindSince = nil
                s.error = nil
            }
            return true
        } catch {
            // What replay applied before the failure is committed: start again from there. If even
            // that cannot be read, the standby stops following rather than guess its position.
            do {
                let applied = try stores.keystore.read { try Vault.journalRow(in: $0, meta: stores.ks.meta) }?.sequence
                state.withLock { s in
                    if let applied { s.applied = applied }
                    s.error = "\(error)"
                }
            } catch let position {
                state.withLock { s in
                    s.error = "\(error); and the position applied cannot be read (\(position)): restart the standby"
                    s.stopping = true
                }
            }
            return false
        }
    }

    /// Tells the journal how far this standby is, when that moved or a second passed.
    private func report() {
        let s = status
        if let last = lastReport, last.applied == s.applied, last.at.duration(to: .now) < .seconds(1) { return }
        do {
            try backend.reportStandby(name: name, applied: s.applied, epoch: s.epoch, lagMilliseconds: s.lagMilliseconds)
            lastReport = (s.applied, .now)
        } catch {
            state.withLock { $0.error = $0.error ?? "\(error)" }
        }
    }

    private func reloadTokens() throws {
        let (master, generation) = try Vault.matchingMasterKey(stores, file: file)
        try stores.keystore.read { txn in
            guard let blob = try txn.value(forKey: Vault.metaTokenKey, in: stores.ks.meta) else { return }
            let key = try Vault.unwrapTokenKey(blob, master: master, generation: generation)
            _ = try Vault.readTokens(txn, key: key, dbs: stores.ks, into: tokens)
        }
    }

    public var status: Status {
        state.withLock { s in
            Status(location: settings.location.description, applied: s.applied, head: s.head, epoch: s.epoch,
                   lagMilliseconds: s.behindSince.map { since in
                       let d = since.duration(to: .now).components
                       return Int(d.seconds) * 1000 + Int(d.attoseconds / 1_000_000_000_000_000)
                   } ?? 0,
                   error: s.error, promoted: s.promoted)
        }
    }

    /// Who a bearer token is, as the tokens stood at the last change set applied.
    public func authenticate(token: UnsafeRawBufferPointer) -> TokenInfo? {
        tokens.authenticate(token)
    }

    /// Thrown by `promote` while the writer's lease still runs.
    public struct LeaseHeld: Error, CustomStringConvertible {
        public let holder: String
        public let seconds: Int
        public var description: String {
            "the journal's writer (\(holder)) holds its lease for \(seconds) s more: it may still be alive; promote once it expires"
        }
    }

    /// Takes the journal's lease under the next term (refused while the writer's runs), applies
    /// the change sets up to the head, and closes the standby: open the vault on `dataDirectory`
    /// with the returned journal settings, which keep this node's lease and term.
    public func promote() throws -> (settings: JournalSettings, term: UInt64) {
        stopFollowing()
        do {
            try backend.takeLease(wait: false)
        } catch {
            start()
            throw error
        }
        // No other node appends now: what the journal holds is all there is.
        guard catchUp() else {
            // Not promoted after all: the lease goes back and the standby follows again.
            let why = state.withLock { $0.error } ?? "unknown"
            var handedBack = "the lease is handed back"
            do { try backend.releaseLease() } catch {
                handedBack = "handing the lease back failed (\(error)): it lapses in \(backend.leaseSeconds) s"
            }
            start()
            throw VaultError.journal("could not catch up with the journal after taking its lease (\(why)); "
                                     + "\(handedBack), and this vault is still a standby")
        }
        let term = backend.term ?? 0
        do { try backend.forgetStandby(name: name) } catch {
            // Harmless but said: the writer keeps change sets for this name until it ages out (an hour).
            settings.progress?("promoted, but its standby position could not be removed from the journal (\(error))")
        }
        let exchange = ExchangeKeyFile(besideMasterKey: file.path)
        do { try exchange.destroy() } catch {
            settings.progress?("promoted, but its exchange key could not be removed (\(error)): shred \(exchange.path)")
        }
        var settings = self.settings
        settings.leaseHolder = backend.holder
        state.withLock { $0.promoted = true }
        closeStores()
        backend.close(releasingLease: false)
        return (settings, term)
    }

    private func stopFollowing() {
        guard thread != nil else { return }
        state.withLock { $0.stopping = true }
        condition.lock()
        condition.broadcast()
        while !state.withLock({ $0.stopped }) { condition.wait() }
        condition.unlock()
        thread = nil
        state.withLock { $0.stopping = false; $0.stopped = false }
    }

    private var storesClosed = false
    private func closeStores() {
        guard !storesClosed else { return }
        storesClosed = true
        stores.keystore.close()
        stores.records.close()
        lock.release()
    }

    /// Stops following and closes (a standby stopped without promotion).
    public func close() {
        stopFollowing()
        closeStores()
        backend.close(releasingLease: false)
    }
}
