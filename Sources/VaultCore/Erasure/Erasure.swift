import LMDB

/// Proof of an erasure for the client: what was erased, when, and which audit entry
/// records it (its number in the tenant's own audit log, and its chain hash).
public struct ErasureReceipt: Sendable, Equatable {
    public let tenant: String
    public let subjectTag: String
    public let erased: Int
    public let at: Int64
    /// The entry's sequence number in the tenant's own log (`auditEntries(tenant:)`), not
    /// the chain's: the chain's would count other tenants' operations.
    public let auditSeq: UInt64
    public let auditHash: String
}

extension Vault {
    /// Erases every record of a subject ("right to be forgotten"): their wrapped DEKs,
    /// index entries and metadata go in one transaction, so all of them are unreadable
    /// at once; their buckets are marked dirty, so the next rotation makes the old key
    /// material unrecoverable. Refused (nothing erased, refusal audited) when a legal hold
    /// covers the subject or any of its records.
    public func erase(subject: Subject, reference: String?, tenant: TenantID, actor: Actor) async throws -> ErasureReceipt {
        if let reference, reference.utf8.count > 200 {
            throw VaultError.invalidArgument("reference must be at most 200 bytes")
        }
        return try await perform { ks, rec, context in
            let dbs = self.writer.stores.ks
            let t = try ResolvedTenant.load(tenant, in: ks, dbs: dbs, cache: context.keyCache)
            let tag = try t.tag(of: subject, root: try t.rootKey(context))
            var event = AuditLog.Event(tenant: t.auditTenant, actor: actor, action: "subject.erase",
                                       target: "subject:\(tag.hex)", reference: reference)
            let ids = try t.recordIDs(tag: tag, in: ks, dbs: dbs)
            var metas: [(RecordID, RecordMeta)] = []
            var held = try ks.contains(key: t.heldKey(.subject, tag), in: dbs.heldTargets)
            for id in ids where !held {
                guard let m = try t.meta(id, in: ks, dbs: dbs) else {
                    throw VaultError.corrupt("subject index names record \(id), which has no metadata")
                }
                // The index is not authenticated: never erase another subject's record.
                guard m.tag == tag else {
                    throw VaultError.integrity("record \(id): the subject index lists it under another subject")
                }
                held = try t.isHeld(id, tag: tag, expiresAt: m.expiresAt, in: ks, dbs: dbs)
                metas.append((id, m))
            }
            if held {
                event.outcome = "refused:legal_hold"
                try AuditLog.append(event, in: ks, rec, dbs: dbs, context: context)
                throw AuditedRefusal(error: .legalHold("a legal hold covers this subject; nothing was erased"))
            }
            for (id, m) in metas { try t.destroy(id, m, in: ks, dbs: dbs, context: context) }
            event.count = UInt64(metas.count)
            let appended = try AuditLog.append(event, in: ks, rec, dbs: dbs, context: context)
            return ErasureReceipt(tenant: t.slug, subjectTag: tag.hex, erased: metas.count, at: context.now,
                                  auditSeq: appended.tenantSeq ?? 0, auditHash: appended.head.hash.hex)
        }
    }
}
