import LMDB

/// A tenant's data map (docs/architecture.md, Principles 6): what is held, how much, and what expires when.
public struct TenantReport: Sendable, Equatable {
    public var records = 0
    public var bytes = 0
    public var byCategory: [DataCategory: Int] = [:]
    public var byChannel: [Channel: Int] = [:]
    public var oldestCreatedAt: Int64?
    /// Live records expiring on each of the next 92 days (index 0 = the next 24 hours).
    public var expiriesPerDay: [Int] = Array(repeating: 0, count: 92)
    /// Records kept past their expiry by a legal hold.
    public var heldPastExpiry = 0
    /// The tenant's legal holds in place (rows of `holds`, each on a subject or a record).
    public var holds = 0
    public var retention: RetentionState
}

/// Operator's view: counts and sizes, never content.
public struct VaultStatistics: Sendable, Equatable {
    public let tenants: Int
    public let records: Int
    public let auditEntries: UInt64
    /// Entries moved to the archive in the record store; the rest are the keystore's tail.
    public let auditArchived: UInt64
    /// Moves of the audit's tail that failed or were put off since the daemon started
    /// (`records/` full, or down to the reserve it keeps for deletes).
    public let auditMovesFailed: Int
    /// Appends since the daemon started that could not extend a transparency log because an
    /// earlier entry of its block is missing or damaged (`AuditTree.append`): not 0 means the
    /// audit was tampered with; run `shredvault audit verify`.
    public let auditTreeGaps: Int
    /// The first entries, whose content the sweep pruned past the audit retention.
    public let auditPruned: UInt64
    public let masterKeyGeneration: UInt64
    public let keystoreBytes: Int
    public let recordStoreBytes: Int
    public let batches: Int
    public let batchedOperations: Int
}

extension Vault {
    public func report(tenant: TenantID, actor: Actor) async throws -> TenantReport {
        try await perform { ks, rec, context in
            let dbs = self.writer.stores.ks
            let t = try ResolvedTenant.load(tenant, in: ks, dbs: dbs, cache: context.keyCache)
            let now = context.now
            var report = TenantReport(retention: RetentionState(policy: try Retention.policy(t, in: ks, dbs: dbs),
                                                                extensions: try Retention.extensions(t, in: ks, dbs: dbs)))
            let prefix = Layout.tenantKey(t.number)
            var held: [(RecordID, [UInt8], Int64)] = []
            try ks.forEach(in: dbs.records, from: prefix, prefix: prefix) { k, v in
                let m = try RecordMeta.decode(v)
                if now >= m.expiresAt {
                    held.append((RecordID(bytes: Array(k[4...])), m.tag, m.expiresAt))
                    return .continue
                }
                report.records += 1
                report.bytes += Int(m.ciphertextCount)
                report.byCategory[m.category, default: 0] += 1
                report.byChannel[m.channel, default: 0] += 1
                report.oldestCreatedAt = min(report.oldestCreatedAt ?? m.createdAt, m.createdAt)
                let day = Int((m.expiresAt - now) / 86_400_000)
                if day < report.expiriesPerDay.count { report.expiriesPerDay[day] += 1 }
                return .continue
            }
            for (id, tag, expiresAt) in held where try t.isHeld(id, tag: tag, expiresAt: expiresAt, in: ks, dbs: dbs) {
                report.heldPastExpiry += 1
            }
            try ks.forEach(in: dbs.holds, from: prefix, prefix: prefix) { _, _ in
                report.holds += 1
                return .continue
            }
            try AuditLog.append(.init(tenant: t.auditTenant, actor: actor, action: "report", target: nil,
                                      count: UInt64(report.records)), in: ks, rec, dbs: dbs, context: context)
            return report
        }
    }

    public func statistics() async throws -> VaultStatistics {
        try await perform { ks, rec, context in
            let dbs = self.writer.stores.ks
            let stats = self.groupCommitStatistics
            return VaultStatistics(
                tenants: try ks.count(in: dbs.tenants), records: try ks.count(in: dbs.records),
                auditEntries: context.auditHead.seq, auditArchived: try AuditLog.archived(in: ks, dbs: dbs),
                auditMovesFailed: self.writer.auditMovesFailed.load(ordering: .relaxed),
                auditTreeGaps: context.state.auditTreeGaps,
                auditPruned: try AuditLog.prunedCount(AuditTree.operatorLog, in: rec, audit: context.audit),
                masterKeyGeneration: context.masterGeneration,
                keystoreBytes: Compaction.fileSize(self.writer.stores.keystore.path + "/data.mdb"),
                recordStoreBytes: Compaction.fileSize(self.writer.stores.records.path + "/data.mdb"),
                batches: stats.batches, batchedOperations: stats.operations)
        }
    }
}
