import Sodium

/// Vault-wide state owned by the writer thread: the master key, the committed audit
/// head, and ciphertext deletions waiting for the next record-store transaction.
final class WriterState: @unchecked Sendable {
    // unchecked: every mutable field is touched only on the writer thread (GroupCommitWriter.run),
    // or before the writer starts.
    let configuration: VaultConfiguration
    let masterKeyFile: MasterKeyFile
    var masterKey: Key
    var masterGeneration: UInt64
    var auditHead: AuditHead
    /// The chain seq through which audit entries are in the archive (AuditArchive).
    var auditArchived: UInt64
    /// Ciphertexts whose wrapped DEKs are gone (committed); deleted in the next record-store txn.
    var pendingCiphertextDeletes: [[UInt8]] = []
    /// The leaf hashes of each audit log's current block, as committed (`AuditLeafCache`).
    var auditLeaves = AuditLeafCache()
    /// Appends that found an earlier entry of their block missing or damaged (`AuditTree.append`).
    var auditTreeGaps = 0
    /// Unwrapped TRK/SBK/BK keys and the DEK scratch buffer.
    let keyCache: KeyCache
    let auditFeed = AuditFeed()

    init(configuration: VaultConfiguration, masterKeyFile: MasterKeyFile, masterKey: Key,
         masterGeneration: UInt64, auditHead: AuditHead, auditArchived: UInt64) throws {
        self.keyCache = try KeyCache()
        self.configuration = configuration
        self.masterKeyFile = masterKeyFile
        self.masterKey = masterKey
        self.masterGeneration = masterGeneration
        self.auditHead = auditHead
        self.auditArchived = auditArchived
    }

    var now: Int64 { configuration.clock.now() }

    /// Adopts what a committed batch or exclusive operation changed in memory.
    /// In-memory state changes only after commit (STYLE.md, Transactions).
    func commit(_ context: OperationContext) {
        if context.auditHead.seq != auditHead.seq { auditFeed.advanced() }
        auditHead = context.auditHead
        for l in context.auditLeaves { auditLeaves.committed(l.log, l.index, l.hash) }
        pendingCiphertextDeletes += context.ciphertextDeletes
        if context.keysDestroyed { keyCache.removeAll() }
    }

    /// Forgets what a failed batch changed in memory (its transactions were aborted).
    func abandon(_ context: OperationContext) {
        // Keys created in aborted transactions may sit in the cache: harmless (never looked
        // up again), but wipe them rather than keep key material nothing refers to.
        keyCache.removeAll()
    }
}

/// What one batch (or exclusive operation) accumulates before commit.
final class OperationContext {
    unowned let state: WriterState
    /// The audit's databases, in the record store.
    let audit: AuditDatabases
    var auditHead: AuditHead
    /// The leaves this batch's appends added to the audit logs, in order (`WriterLeaves`).
    private(set) var auditLeaves: [(log: UInt32, index: UInt64, hash: MerkleTree.Hash)] = []
    private var auditLeafPositions: [AuditLeafKey: Int] = [:]
    var ciphertextDeletes: [[UInt8]] = []
    /// Set by an operation that destroys keys (offboarding): the cache is wiped at commit.
    var keysDestroyed = false
    /// True when the writer runs each operation in nested transactions of its own (after a
    /// failed fast attempt): an operation may then nest further to fail parts of itself alone.
    var isolated = false

    init(state: WriterState, audit: AuditDatabases) {
        self.state = state
        self.audit = audit
        self.auditHead = state.auditHead
    }

    var configuration: VaultConfiguration { state.configuration }
    var now: Int64 { state.now }
    var masterKey: Key { state.masterKey }
    var masterGeneration: UInt64 { state.masterGeneration }
    var keyCache: KeyCache { state.keyCache }

    private struct AuditLeafKey: Hashable {
        let log: UInt32
        let index: UInt64
    }

    func appended(leaf hash: MerkleTree.Hash, log: UInt32, index: UInt64) {
        auditLeafPositions[AuditLeafKey(log: log, index: index)] = auditLeaves.count
        auditLeaves.append((log, index, hash))
    }

    func appendedLeaf(_ log: UInt32, _ index: UInt64) -> MerkleTree.Hash? {
        auditLeafPositions[AuditLeafKey(log: log, index: index)].map { auditLeaves[$0].hash }
    }

    struct Mark {
        let auditHead: AuditHead
        let deletes: Int
        let leaves: Int
    }

    func mark() -> Mark { Mark(auditHead: auditHead, deletes: ciphertextDeletes.count, leaves: auditLeaves.count) }

    /// Undoes the in-memory effects of an operation whose child transactions were aborted.
    func rollback(to mark: Mark) {
        auditHead = mark.auditHead
        ciphertextDeletes.removeLast(ciphertextDeletes.count - mark.deletes)
        for l in auditLeaves[mark.leaves...] { auditLeafPositions[AuditLeafKey(log: l.log, index: l.index)] = nil }
        auditLeaves.removeLast(auditLeaves.count - mark.leaves)
    }
}
