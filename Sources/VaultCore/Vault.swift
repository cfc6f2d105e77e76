import LMDB
public import Sodium
#if canImport(Glibc)
import Glibc
#endif

/// Where the vault reads the time, in milliseconds since the Unix epoch. Tests inject a
/// manual clock to cross expiry boundaries without sleeping.
public struct VaultClock: Sendable {
    public let now: @Sendable () -> Int64
    public init(now: @escaping @Sendable () -> Int64) { self.now = now }
    public static let system = VaultClock {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
    }
}

public struct VaultConfiguration: Sendable {
    public static let defaultBucketWidthSeconds: Int64 = 86_400

    /// The expiry-bucket width asked for, in seconds: records whose `expires_at` falls in the
    /// same window share one bucket key, destroyed when the window is past (docs/architecture.md, Key
    /// hierarchy). The width is recorded in the vault when it is created and never changes:
    /// `Vault.create` records this width (nil: P1D); `Vault.open` uses the recorded width when
    /// this is nil and refuses any other width (it would move every expiry).
    public var requestedBucketWidthSeconds: Int64?
    /// The width in force: in an opened vault's `configuration`, the width recorded in the
    /// vault; before that, the requested width or P1D.
    public var bucketWidthSeconds: Int64 { requestedBucketWidthSeconds ?? Self.defaultBucketWidthSeconds }
    /// Most operations group-committed in one LMDB write transaction.
    public var maxBatch: Int = 256
    /// The audit entries the keystore keeps before a move to the archive (AuditArchive): the
    /// keystore holds at most this many plus one batch's.
    public var auditTail: UInt64 = AuditArchive.defaultTail
    /// How long audit entries keep their content (`serve --audit-retention`): the sweep prunes
    /// older ones, never those younger than the longest record retention in force (`AuditRetention`).
    public var auditRetentionSeconds: Int64 = AuditRetention.defaultSeconds
    public var keystoreMapSize: Int = 8 << 30
    public var recordsMapSize: Int = 64 << 30
    /// Dead entries removed per sweep transaction.
    public var sweepBatchSize: Int = 5_000
    /// Records a rotation re-wraps per write transaction: bounds the memory a rotation holds
    /// in dirty pages (about 1 KiB per record), whatever the size of the vault.
    public var rotationChunkSize: Int = 10_000
    public var clock: VaultClock = .system
    /// The journal every write is appended to (docs/operations.md, Journal); nil: none (one copy of the
    /// data, on this disk).
    public var journal: JournalSettings? = nil
    /// Open a vault that wrote a journal without one: its journal falls behind from here on.
    public var detachJournal = false
    /// The audit signing key file (nil: `audit.key` beside the master key file).
    public var auditKeyFile: String? = nil
    /// Sign heads with a new audit key when the file is missing or holds another key (a restore
    /// on a new machine, a lost file): listed after the earlier keys, from now on.
    public var newAuditKey = false
    /// Told what a start does that takes time or changes a key (for the log).
    public var progress: (@Sendable (String) -> Void)? = nil
    /// Called after each group commit with the operations it carried and the seconds its two
    /// commits (and their fsyncs) took: for metrics.
    public var commitObserver: (@Sendable (_ operations: Int, _ seconds: Double) -> Void)? = nil
    /// Test-only: called at named points of rotation and compaction; throwing there
    /// simulates a crash at that point.
    var faultInjector: (@Sendable (FaultPoint) throws -> Void)? = nil

    /// `bucketWidthSeconds`: see ``requestedBucketWidthSeconds`` (nil: the vault's own).
    public init(bucketWidthSeconds: Int64? = nil, maxBatch: Int = 256, keystoreMapSize: Int = 8 << 30,
                recordsMapSize: Int = 64 << 30, sweepBatchSize: Int = 5_000, clock: VaultClock = .system) {
        self.requestedBucketWidthSeconds = bucketWidthSeconds
        self.maxBatch = maxBatch
        self.keystoreMapSize = keystoreMapSize
        self.recordsMapSize = recordsMapSize
        self.sweepBatchSize = sweepBatchSize
        self.clock = clock
    }

    func validate() throws {
        if let width = requestedBucketWidthSeconds {
            guard width >= 1 else { throw VaultError.invalidArgument("bucket width must be at least 1 second") }
            guard width <= ISODuration.maximumSeconds else {
                throw VaultError.invalidArgument("bucket width must be at most \(ISODuration.maximumSeconds / 86_400) days")
            }
        }
        guard maxBatch >= 1 else { throw VaultError.invalidArgument("batch size must be at least 1") }
        guard sweepBatchSize >= 1 else { throw VaultError.invalidArgument("sweep batch size must be at least 1") }
        guard rotationChunkSize >= 1 else { throw VaultError.invalidArgument("rotation chunk size must be at least 1") }
    }
}

/// Named points where a crash is simulated in tests (rotation and compaction).
enum FaultPoint: Sendable, Equatable {
    case rotationRingsOpened
    case rotationChunkCommitted
    case rotationNextKeyWritten
    case rotationKeystoreCommitted
    case rotationKeyPromoted
    case compactionCopied
    case compactionBetweenRenames
}

/// The vault: a data directory (`keystore/` and `records/` LMDB environments) and a
/// master key file. Every operation goes through one group-commit writer thread; a call
/// returns only when its effect and its audit entry are durable.
public final class Vault: Sendable {
    let writer: GroupCommitWriter
    let tokens: TokenTable
    /// Runs multi-step maintenance (rotation) one at a time.
    let maintenance = SerialGate()
    private let lock: DirectoryLock
    public let dataDirectory: String
    /// The configuration in force: `bucketWidthSeconds` is the width recorded in the vault.
    public let configuration: VaultConfiguration
    /// Token rows refused at open (undecodable or failing their MAC), each an integrity error
    /// naming the token: those tokens answer 401 until revoked and reissued. For the log.
    public let tokenRowFailures: [VaultError]
    /// The audit signing key and the heads signed last.
    let auditHeads: AuditHeads

    /// How the keystore and the record store are opened. Read-ahead is off (`MDB_NORDAHEAD`):
    /// the vault reads at random (record ids, subject tags), so a window read around each page
    /// fault only evicts pages that are still needed once the files outgrow the memory the
    /// daemon is given. Measured (scripts/soak, 300,000 records, 200 MiB memory cgroup, mixed
    /// load): 45 requests/s with read-ahead, 1,248 without.
    static func environmentOptions(mapSize: Int) -> EnvironmentOptions {
        EnvironmentOptions(mapSize: mapSize, readAhead: false)
    }

    private init(writer: GroupCommitWriter, tokens: TokenTable, lock: DirectoryLock, dataDirectory: String,
                 configuration: VaultConfiguration, tokenRowFailures: [VaultError], auditHeads: AuditHeads) {
        self.writer = writer
        self.tokens = tokens
        self.lock = lock
        self.dataDirectory = dataDirectory
        self.configuration = configuration
        self.tokenRowFailures = tokenRowFailures
        self.auditHeads = auditHeads
    }

    static let metaFormatKey = Array("format".utf8)
    static let metaMasterKey = Array("master_key".utf8)
    static let metaNextTenant = Array("next_tenant".utf8)
    static let metaBucketWidth = Array("bucket_width".utf8)
    static let storeFormat: UInt8 = 1
    static let bucketWidthFormat: UInt8 = 1

    /// Initialises a new vault: creates the data directory (0700) and a new master key
    /// file (0600), then opens it. Refuses to touch an existing vault or key file.
    public static func create(dataDirectory: String, masterKeyFile: String,
                              configuration: VaultConfiguration = .init()) throws -> Vault {
        try Sodium.initialize()
        try configuration.validate()
        try Posix.makeDirectory(dataDirectory)
        if Posix.exists(dataDirectory + "/keystore/data.mdb") {
            throw VaultError.dataDirectory("\(dataDirectory) already holds a vault")
        }
        let file = MasterKeyFile(path: masterKeyFile)
        try file.create()
        do {
            return try open(dataDirectory: dataDirectory, masterKeyFile: masterKeyFile, configuration: configuration,
                            initialise: true)
        } catch {
            // Refused (a journal that cannot be used, a full disk): leave no half-made vault behind,
            // and no key of a vault that never was. What cannot be removed is named.
            var left: [String] = []
            for path in [dataDirectory + "/keystore", dataDirectory + "/records"] {
                do { try Posix.shredTree(path) } catch { left.append(path) }
            }
            do { try Posix.shred(masterKeyFile) } catch { left.append(masterKeyFile) }
            guard left.isEmpty else {
                throw VaultError.dataDirectory("\(error); and could not remove \(left.joined(separator: ", ")): "
                                               + "remove them before creating the vault again")
            }
            throw error
        }
    }

    /// Opens an existing vault. Refuses (with a clear error) a world-writable data
    /// directory, a key file readable by others, a key that does not match the keystore,
    /// a directory another process holds, or a bucket width other than the vault's own
    /// (leave `bucketWidthSeconds` nil to use it; the opened vault's `configuration` has it).
    public static func open(dataDirectory: String, masterKeyFile: String,
                            configuration: VaultConfiguration = .init()) throws -> Vault {
        try open(dataDirectory: dataDirectory, masterKeyFile: masterKeyFile, configuration: configuration,
                 initialise: false)
    }

    private static func open(dataDirectory: String, masterKeyFile: String, configuration: VaultConfiguration,
                             initialise: Bool) throws -> Vault {
        try Sodium.initialize()
        try configuration.validate()
        guard Posix.isDirectory(dataDirectory) else {
            throw VaultError.dataDirectory("\(dataDirectory) does not exist (initialise it first)")
        }
        if let mode = Posix.mode(dataDirectory), mode & 0o002 != 0 {
            throw VaultError.dataDirectory("\(dataDirectory) is world-writable; run chmod o-w \(dataDirectory)")
        }
        let lock = try DirectoryLock(directory: dataDirectory)
        let keystorePath = dataDirectory + "/keystore"
        try Compaction.recoverInterruptedSwap(keystorePath: keystorePath)
        if !initialise && !Posix.exists(keystorePath + "/data.mdb") {
            throw VaultError.dataDirectory("\(dataDirectory) holds no vault (initialise it first)")
        }
        let keystore = try Environment(path: keystorePath,
                                       options: Vault.environmentOptions(mapSize: configuration.keystoreMapSize),
                                       databases: Layout.keystoreDatabases)
        let records: Environment
        do {
            records = try Environment(path: dataDirectory + "/records",
                                      options: Vault.environmentOptions(mapSize: configuration.recordsMapSize),
                                      databases: Layout.recordsDatabases)
        } catch {
            keystore.close()
            throw VaultError.mapping(error)
        }
        let stores = Stores(keystore: keystore, records: records)
        do {
            // Before anything is written (a refusal leaves the vault untouched).
            let storedWidth = initialise ? nil : try keystore.read { try storedBucketWidth(in: $0, meta: stores.ks.meta) }
            if let storedWidth, let requested = configuration.requestedBucketWidthSeconds, requested != storedWidth {
                throw VaultError.invalidArgument(
                    "this vault's expiry buckets are \(ISODuration.format(seconds: storedWidth)) wide; a bucket width of "
                    + "\(ISODuration.format(seconds: requested)) was asked for: changing it would move every expiry "
                    + "(leave the width unset, e.g. serve without --bucket-width, to use the vault's own)")
            }
            var configuration = configuration
            let width = storedWidth ?? configuration.bucketWidthSeconds
            configuration.requestedBucketWidthSeconds = width
            let file = MasterKeyFile(path: masterKeyFile)
            // The journal first: what it holds beyond this vault is replayed before the key
            // file is settled (a replayed rotation moves it).
            var attached: AttachedJournal?
            if let settings = configuration.journal {
                if initialise { _ = try initialiseKeystore(stores, file: file, bucketWidthSeconds: width) }
                attached = try attachJournal(settings, stores: stores, file: file)
            } else if !initialise, let row = try keystore.read({ try journalRow(in: $0, meta: stores.ks.meta) }) {
                guard configuration.detachJournal else {
                    throw VaultError.journal("this vault writes a journal (last change set \(row.sequence)); open it with "
                                             + "its journal (--journal), or with --detach-journal to go on without one")
                }
                try keystore.write { try $0.delete(key: metaJournal, in: stores.ks.meta) }
            }
            let (key, generation) = try initialise && attached == nil
                ? initialiseKeystore(stores, file: file, bucketWidthSeconds: width)
                : loadMasterKey(stores, file: file)
            if let attached {
                let row = try keystore.read { try journalRow(in: $0, meta: stores.ks.meta) }
                stores.journal = try JournalWriter(backend: attached.backend, vaultID: attached.vaultID,
                                                   sequence: row?.sequence ?? 0, epoch: generation, master: key, stores: stores)
            }
            if !initialise && storedWidth == nil {
                // A vault created before the width was recorded: it has been running with the
                // width it is opened with now (P1D unless one is asked for), so that is its width.
                try stores.write { txn, _ in
                    try txn.put(encodeBucketWidth(width), forKey: metaBucketWidth, in: stores.ks.meta)
                }
            }
            if let attached, attached.needsSnapshot, let journal = stores.journal {
                // A new journal, or a rotation that stopped before its snapshot: restore needs one.
                configuration.journal?.progress?("taking a snapshot of the vault into the journal")
                let info = try Snapshot.begin(stores, journal: journal, master: key).stream(to: journal.backend)
                try pruneJournal(journal.backend, keeping: info)
            }
            // Tenants get their audit counts, entries written before the transparency logs get
            // their leaves (each once), the keystore's audit is moved to the record store but
            // its tail, then the key that signs the logs' heads is checked.
            try AuditArchive.prepare(stores)
            try AuditTree.buildMissing(stores, progress: configuration.progress)
            try AuditArchive.moveAll(stores, keeping: configuration.auditTail, progress: configuration.progress)
            let auditKey = AuditKeyFile(path: configuration.auditKeyFile ?? AuditKeyFile(besideMasterKey: masterKeyFile).path)
            let signer = try AuditKeys.settle(stores, file: auditKey, newKey: configuration.newAuditKey || initialise,
                                              now: configuration.clock.now(), progress: configuration.progress)
            let tokens = TokenTable()
            let tokenFailures = try loadTokens(stores, master: key, generation: generation, into: tokens)
            let (head, archived) = try keystore.read { ks in
                (try AuditLog.head(in: ks, dbs: stores.ks), try AuditLog.archived(in: ks, dbs: stores.ks))
            }
            let state = try WriterState(configuration: configuration, masterKeyFile: file, masterKey: key,
                                        masterGeneration: generation, auditHead: head, auditArchived: archived)
            let writer = GroupCommitWriter(stores: stores, state: state, maxBatch: configuration.maxBatch)
            writer.start()
            return Vault(writer: writer, tokens: tokens, lock: lock, dataDirectory: dataDirectory, configuration: configuration,
                         tokenRowFailures: tokenFailures, auditHeads: AuditHeads(signer: signer, file: auditKey))
        } catch {
            stores.journal?.close()
            keystore.close()
            records.close()
            throw VaultError.mapping(error)
        }
    }

    private static func initialiseKeystore(_ stores: Stores, file: MasterKeyFile, bucketWidthSeconds: Int64) throws -> (Key, UInt64) {
        let loaded = try file.load()
        let key = Key(try loaded.key.copy())
        try stores.keystore.write { txn in
            guard try txn.value(forKey: metaFormatKey, in: stores.ks.meta) == nil else {
                throw VaultError.dataDirectory("the keystore is already initialised")
            }
            try txn.put([storeFormat], forKey: metaFormatKey, in: stores.ks.meta)
            try txn.put(masterCheck(key: key, generation: loaded.generation), forKey: metaMasterKey, in: stores.ks.meta)
            try txn.put(.be(UInt32(1)), forKey: metaNextTenant, in: stores.ks.meta)
            try txn.put(encodeBucketWidth(bucketWidthSeconds), forKey: metaBucketWidth, in: stores.ks.meta)
        }
        return (key, loaded.generation)
    }

    /// The expiry-bucket width recorded in the keystore: format byte, then seconds (u64 BE).
    static func encodeBucketWidth(_ seconds: Int64) -> [UInt8] {
        [bucketWidthFormat] + .be(UInt64(seconds))
    }

    /// The recorded width, nil for a vault created before widths were recorded.
    static func storedBucketWidth(in txn: borrowing Transaction, meta: Database) throws -> Int64? {
        guard let b = try txn.value(forKey: metaBucketWidth, in: meta) else { return nil }
        guard b.count == 9, b[0] == bucketWidthFormat else { throw VaultError.corrupt("the recorded bucket width") }
        let seconds = b[1...].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        guard seconds >= 1, seconds <= UInt64(ISODuration.maximumSeconds) else {
            throw VaultError.corrupt("the recorded bucket width (\(seconds) s)")
        }
        return Int64(seconds)
    }

    /// The keystore's record of which master key wraps it: the generation and a sealed
    /// empty message that only that key opens.
    static func masterCheck(key: Key, generation: UInt64) throws -> [UInt8] {
        let ad = KeyHierarchy.masterCheckAD(generation: generation)
        let box = try ad.withUnsafeBytes { a in
            try AEAD.seal(UnsafeRawBufferPointer(start: nil, count: 0), key: key.bytes, associatedData: a)
        }
        return [1] + .be(generation) + box
    }

    static func checkMatches(_ check: [UInt8], key: borrowing SecretBytes, generation: UInt64) -> Bool {
        guard check.count == 1 + 8 + AEAD.overhead, check[0] == 1 else { return false }
        let g = check[1..<9].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        guard g == generation else { return false }
        let ad = KeyHierarchy.masterCheckAD(generation: generation)
        var empty = [UInt8]()
        return check.withUnsafeBytes { c in
            ad.withUnsafeBytes { a in
                empty.withUnsafeMutableBytes { out in
                    (try? AEAD.open(UnsafeRawBufferPointer(rebasing: c[9...]), key: key, associatedData: a, into: out)) != nil
                }
            }
        }
    }

    /// Loads the master key that matches the keystore, finishing or undoing a rotation
    /// that was interrupted between writing the next key and renaming it into place.
    private static func loadMasterKey(_ stores: Stores, file: MasterKeyFile) throws -> (Key, UInt64) {
        let (format, check) = try stores.keystore.read { txn in
            (try txn.value(forKey: metaFormatKey, in: stores.ks.meta),
             try txn.value(forKey: metaMasterKey, in: stores.ks.meta))
        }
        guard let format, let check else { throw VaultError.dataDirectory("the keystore is not initialised") }
        guard format == [storeFormat] else { throw VaultError.corrupt("keystore format \(format) is not supported") }
        guard check.count > 9 else { throw VaultError.corrupt("master key check") }
        let storeGeneration = check[1..<9].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }

        // A `.tmp` file is a key file whose writing a crash cut short (the rename never
        // happened): its key never wrapped anything, but it is key material: destroy it.
        for leftover in [file.path + ".tmp", file.nextPath + ".tmp"] where Posix.exists(leftover) {
            try Posix.shred(leftover)
        }
        if Posix.exists(file.path) {
            let current = try file.load()
            if current.generation == storeGeneration, checkMatches(check, key: current.key, generation: storeGeneration) {
                // A `.next` file here is a rotation that never committed: destroy it.
                if Posix.exists(file.nextPath) { try Posix.shred(file.nextPath) }
                return (Key(try current.key.copy()), storeGeneration)
            }
        }
        if Posix.exists(file.nextPath) {
            let next = try MasterKeyFile.load(file.nextPath)
            if next.generation == storeGeneration, checkMatches(check, key: next.key, generation: storeGeneration) {
                // The keystore committed the new generation; finish the rename.
                try file.promoteNext()
                return (Key(try next.key.copy()), storeGeneration)
            }
        }
        if !Posix.exists(file.path) {
            throw VaultError.masterKey("cannot open \(file.path): no such file")
        }
        throw VaultError.masterKey("\(file.path) does not match this keystore (it expects generation \(storeGeneration))")
    }

    /// Finishes queued operations, commits, closes both environments. Idempotent.
    public func close() {
        writer.close()
        writer.stores.journal?.close()
        writer.stores.keystore.close()
        writer.stores.records.close()
        lock.release()
    }

    // MARK: Plumbing

    /// Runs `body` as one operation of the next group-committed batch.
    func perform<T: Sendable>(_ body: @escaping PendingOperation<T>.Body) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            writer.submit(PendingOperation(body: body, continuation: continuation))
        }
    }

    /// Runs `body` alone on the writer thread, between batches.
    func performExclusive<T: Sendable>(_ body: @escaping PendingExclusive<T>.Body) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            writer.submit(PendingExclusive(body: body, continuation: continuation))
        }
    }

    /// Batches committed so far and operations they carried: their ratio is the mean batch size.
    public var groupCommitStatistics: (batches: Int, operations: Int) {
        (writer.batchesCommitted.load(ordering: .relaxed), writer.operationsCommitted.load(ordering: .relaxed))
    }
}
