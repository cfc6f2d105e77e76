import LMDB
import Locking

/// The heads this vault signed last, one per log: a head is signed again when its log has
/// grown or the last one is a minute old, so a tenant polling sees a head at most a minute
/// old while entries arrive, and signing costs nothing while they do not.
final class AuditHeads: Sendable {
    /// The key file the signer came from (rotated by `Vault.rotateAuditKey`).
    let file: AuditKeyFile
    private let state: Locked<(signer: AuditSigner, latest: [UInt32: SignedTreeHead])>
    static let freshness: Int64 = 60_000

    init(signer: AuditSigner, file: AuditKeyFile) {
        self.file = file
        state = Locked((signer, [:]))
    }

    var signer: AuditSigner { state.withLock { $0.signer } }

    /// Signs with `signer` from now on; the heads kept were signed by the old key.
    func replace(_ signer: AuditSigner) {
        state.withLock { $0 = (signer, [:]) }
    }

    func head(log: UInt32, tenant: String?, size: UInt64, root: [UInt8], now: Int64) -> SignedTreeHead {
        let (signer, last) = state.withLock { ($0.signer, $0.latest[log]) }
        if let last, last.keyID == signer.keyID, last.size == size, last.root == root, now - last.at < Self.freshness {
            return last
        }
        let message = SignedTreeHead.signedBytes(size: size, root: root, at: RFC3339.format(milliseconds: now), tenant: tenant)
        let head = SignedTreeHead(size: size, root: root, at: now, tenant: tenant, signature: signer.key.sign(message),
                                  keyID: signer.keyID)
        state.withLock { if $0.signer.keyID == head.keyID { $0.latest[log] = head } }
        return head
    }
}

/// An RFC 9162 inclusion proof: the leaf's hash and its audit path.
public struct AuditInclusionProof: Sendable, Equatable {
    public let leafHash: [UInt8]
    public let path: [[UInt8]]
}

/// A log's pruned entries as a verifier needs them: how many there are, and the hashes of the
/// complete subtrees that cover them, largest first (one per bit of `size`, as RFC 9162 splits
/// a tree). With these and the entries after them, the root of every later head is recomputed.
public struct AuditPrunedPrefix: Sendable, Equatable {
    public let size: UInt64
    public let subtrees: [[UInt8]]
}

extension Vault {
    /// The log of `tenant` (its own entries), or the operator's (every entry, without targets).
    private func log(_ tenant: TenantID?, in ks: borrowing Transaction, dbs: KeystoreDatabases,
                     context: OperationContext) throws -> (log: UInt32, size: UInt64) {
        guard let tenant else { return (AuditTree.operatorLog, context.auditHead.seq) }
        let t = try ResolvedTenant.load(tenant, in: ks, dbs: dbs)
        return (t.number, try AuditLog.tenantCount(t.number, in: ks, dbs: dbs))
    }

    /// A signed head of `tenant`'s log (nil: the operator's) at its current size.
    public func auditTreeHead(tenant: TenantID?) async throws -> SignedTreeHead {
        let (log, size, root) = try await perform { ks, rec, context in
            let dbs = self.writer.stores.ks
            let (log, size) = try self.log(tenant, in: ks, dbs: dbs, context: context)
            let leaves = WriterLeaves(context: context)
            return (log, size, try AuditTree.root(log, size: size, in: ks, rec, audit: context.audit, leaves: leaves))
        }
        return auditHeads.head(log: log, tenant: tenant?.slug, size: size, root: root, now: configuration.clock.now())
    }

    /// The inclusion proof of entry `seq` (the log's own numbering, from 1) in the tree of the
    /// log's first `size` entries.
    public func auditInclusionProof(tenant: TenantID?, seq: UInt64, size: UInt64) async throws -> AuditInclusionProof {
        try await perform { ks, rec, context in
            let dbs = self.writer.stores.ks
            let (log, current) = try self.log(tenant, in: ks, dbs: dbs, context: context)
            try Self.checkSize(size, current)
            guard seq >= 1, seq <= size else {
                throw VaultError.refused("entry \(seq) is not in a tree of \(size) entries")
            }
            // The newest block's leaves from the writer's memory, the others from their entries.
            let leaves = WriterLeaves(context: context)
            let leaf = try AuditTree.subtree(log, 0, seq - 1, in: ks, rec, audit: context.audit, leaves: leaves)
            let path = try AuditTree.inclusionProof(log, index: seq - 1, size: size, in: ks, rec, audit: context.audit, leaves: leaves)
            return AuditInclusionProof(leafHash: leaf, path: path)
        }
    }

    /// The consistency proof from the log's first `from` entries to its first `to`.
    public func auditConsistencyProof(tenant: TenantID?, from: UInt64, to: UInt64) async throws -> [[UInt8]] {
        try await perform { ks, rec, context in
            let dbs = self.writer.stores.ks
            let (log, current) = try self.log(tenant, in: ks, dbs: dbs, context: context)
            try Self.checkSize(to, current)
            guard from <= to else { throw VaultError.refused("\"from\" (\(from)) is beyond \"to\" (\(to))") }
            return try AuditTree.consistencyProof(log, from: from, to: to, in: ks, rec, audit: context.audit,
                                                  leaves: WriterLeaves(context: context))
        }
    }

    /// What pruning left of the log's first entries (`AuditRetention`), for a verifier whose
    /// saved entries start after them.
    public func auditPrunedPrefix(tenant: TenantID?) async throws -> AuditPrunedPrefix {
        try await perform { ks, rec, context in
            let dbs = self.writer.stores.ks
            let (log, _) = try self.log(tenant, in: ks, dbs: dbs, context: context)
            let size = try AuditLog.prunedCount(log, in: rec, audit: context.audit)
            var subtrees: [[UInt8]] = [], offset: UInt64 = 0
            for level in stride(from: 63, through: 0, by: -1) where size >> UInt64(level) & 1 == 1 {
                subtrees.append(try AuditTree.subtree(log, UInt8(level), offset >> UInt64(level), in: ks, rec,
                                                      audit: context.audit, leaves: WriterLeaves(context: context)))
                offset += 1 << UInt64(level)
            }
            return AuditPrunedPrefix(size: size, subtrees: subtrees)
        }
    }

    private static func checkSize(_ size: UInt64, _ current: UInt64) throws {
        guard size <= current else {
            throw VaultError.refused("the log has \(current) entries; a tree of \(size) does not exist yet")
        }
    }

    /// Makes a new audit signing key and signs with it from now on (`POST /v1/admin/audit/keys`,
    /// `shredvault audit rotate-key`); the old public keys stay listed, so heads signed before
    /// still verify. Answers the new key.
    public func rotateAuditKey(actor: Actor) async throws -> AuditPublicKey {
        try await performExclusive { stores, context in
            let signer = try AuditKeys.rotate(stores, file: self.auditHeads.file, context: context, actor: actor)
            self.auditHeads.replace(signer)
            return try stores.keystore.read { try AuditKeys.list(in: $0, dbs: stores.ks) }.last!
        }
    }

    /// Every key that signs or signed this vault's heads, oldest first.
    public func auditPublicKeys() async throws -> [AuditPublicKey] {
        try await perform { ks, _, _ in try AuditKeys.list(in: ks, dbs: self.writer.stores.ks) }
    }
}
