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
    /// Ciphertexts whose wrapped DEKs are gone (committed); deleted in the next record-store txn.
    var pendingCiphertextDeletes: [[UInt8]] = []

    init(configuration: VaultConfiguration, masterKeyFile: MasterKeyFile, masterKey: Key,
         masterGeneration: UInt64, auditHead: AuditHead) {
        self.configuration = configuration
        self.masterKeyFile = masterKeyFile
        self.masterKey = masterKey
        self.masterGeneration = masterGeneration
        self.auditHead = auditHead
    }

    var now: Int64 { configuration.clock.now() }

    /// Adopts what a committed batch or exclusive operation changed in memory.
    /// In-memory state changes only after commit (STYLE.md, Transactions).
    func commit(_ context: OperationContext) {
        auditHead = context.auditHead
        pendingCiphertextDeletes += context.ciphertextDeletes
    }

    /// Forgets what a failed batch changed in memory (its transactions were aborted).
    func abandon(_ context: OperationContext) {}
}

/// What one batch (or exclusive operation) accumulates before commit.
final class OperationContext {
    unowned let state: WriterState
    var auditHead: AuditHead
    var ciphertextDeletes: [[UInt8]] = []

    init(state: WriterState) {
        self.state = state
        self.auditHead = state.auditHead
    }

    var configuration: VaultConfiguration { state.configuration }
    var now: Int64 { state.now }
    var masterKey: Key { state.masterKey }
    var masterGeneration: UInt64 { state.masterGeneration }

    struct Mark {
        let auditHead: AuditHead
        let deletes: Int
    }

    func mark() -> Mark { Mark(auditHead: auditHead, deletes: ciphertextDeletes.count) }

    /// Undoes the in-memory effects of an operation whose child transactions were aborted.
    func rollback(to mark: Mark) {
        auditHead = mark.auditHead
        ciphertextDeletes.removeLast(ciphertextDeletes.count - mark.deletes)
    }
}
