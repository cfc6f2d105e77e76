import LMDB

/// Audit retention (docs/architecture.md, Audit): entries older than the retention lose their
/// content — who did what to which record — and keep their place in the chain and every hash
/// of the transparency logs, so heads, proofs and the chain's links still verify and the
/// entries after them are proven as before.
///
/// The sweep prunes, in chain order, archived entries older than `now − retention`, where the
/// retention is the configured one (`VaultConfiguration.auditRetentionSeconds`, default P400D)
/// but never shorter than the longest record retention in force (`floorSeconds`): the access
/// record of a record that may still be stored is never pruned before it. Pruning works in
/// chunks, each one write of both environments; an entry's stub (`AuditEntry.pruned`), each
/// log's prune count and the chain's prune mark (the operator log's count) are rows of the
/// record store's archive, so they commit together.
public enum AuditRetention {
    public static let defaultSeconds: Int64 = 400 * 86_400
    /// The shortest retention `serve --audit-retention` accepts: the standard record retention.
    public static let minimumSeconds: Int64 = RetentionPolicy.standardMaximum

    /// The longest any record may be kept as of `now` (ms): the standard maximum (92 days),
    /// every active tenant's policy values, and the retention of every extension contract
    /// whose records may still be stored (one written on its last day lives its retention).
    static func floorSeconds(now: Int64, in ks: borrowing Transaction, dbs: KeystoreDatabases) throws -> Int64 {
        var longest = RetentionPolicy.standardMaximum
        var active: [ResolvedTenant] = []
        try ks.forEach(in: dbs.tenants) { k, v in
            let row = try TenantRow.decode(v)
            if row.status == .active { active.append(ResolvedTenant(slug: String(decoding: k, as: UTF8.self), row: row)) }
            return .continue
        }
        for t in active {
            let policy = try Retention.policy(t, in: ks, dbs: dbs)
            longest = max(longest, policy.defaultSeconds, policy.categories.values.max() ?? 0)
            for e in try Retention.extensions(t, in: ks, dbs: dbs) {
                // Durations are at most ISODuration.maximumSeconds (100 years): no overflow in ms.
                let lastWrite = min(e.endedAt ?? e.until, e.until)
                if now < lastWrite + e.retentionSeconds * 1000 { longest = max(longest, e.retentionSeconds) }
            }
        }
        return longest
    }

    /// What a prune did.
    struct Outcome {
        var pruned: UInt64 = 0
        /// The retention applied: the configured one or the floor, whichever is longer.
        var retentionSeconds: Int64 = 0
    }

    /// Prunes archived entries older than the retention, `chunk` per write.
    static func prune(_ stores: Stores, now: Int64, configured: Int64, chunk: Int) throws -> Outcome {
        let dbs = stores.ks, audit = stores.audit
        var outcome = Outcome()
        outcome.retentionSeconds = max(configured, try stores.keystore.read { ks in try floorSeconds(now: now, in: ks, dbs: dbs) })
        let cutoff = now - outcome.retentionSeconds * 1000
        while true {
            let n = try stores.write { ks, rec in try pruneChunk(before: cutoff, limit: chunk, in: ks, rec, dbs: dbs, audit: audit) }
            outcome.pruned += n
            if n < chunk { return outcome }
        }
    }

    /// Prunes up to `limit` entries after the mark, through the archive mark, older than
    /// `cutoff` (ms), stopping at the first younger one; answers how many.
    private static func pruneChunk(before cutoff: Int64, limit: Int, in ks: borrowing Transaction, _ rec: borrowing Transaction,
                                   dbs: KeystoreDatabases, audit: AuditDatabases) throws -> UInt64 {
        let archived = try AuditLog.archived(in: ks, dbs: dbs)
        let mark = try AuditLog.prunedCount(AuditTree.operatorLog, in: rec, audit: audit)
        guard mark < archived else { return 0 }
        var stubs: [(key: [UInt8], stub: [UInt8], entry: AuditEntry)] = []
        try rec.forEach(in: audit.archivedEntries, from: Layout.auditKey(mark + 1)) { k, v in
            guard k.count == 8 else { throw VaultError.corrupt("audit archive: a key of \(k.count) bytes") }
            let seq: UInt64 = readBE(k, at: 0)
            guard seq <= archived, stubs.count < limit else { return .stop }
            let (e, _) = try AuditEntry.decode(v)
            guard e.seq == mark + UInt64(stubs.count) + 1 else {
                throw VaultError.corrupt("audit entry \(mark + UInt64(stubs.count) + 1) is missing from the archive; run shredvault audit verify")
            }
            guard e.at < cutoff else { return .stop }
            stubs.append((Array(k), AuditEntry.pruned(seq: e.seq, at: e.at, prev: e.prev, hash: e.hash), e))
            return .continue
        }
        guard !stubs.isEmpty else { return 0 }
        // Each log's count of pruned entries, which numbers its next pruned leaf.
        var numbers: [String: UInt32] = [:]
        var counts: [UInt32: UInt64] = [AuditTree.operatorLog: mark]
        for s in stubs {
            // The tree computes small subtrees from the entries: a pruned entry's leaf hashes are
            // kept as rows, in both its logs, before its body goes.
            try rec.put(MerkleTree.leafHash(s.entry.leaf(tenantSeq: nil)),
                        forKey: AuditTree.key(AuditTree.operatorLog, 0, s.entry.seq - 1), in: audit.archivedTree)
            try rec.put(s.stub, forKey: s.key, in: audit.archivedEntries)
            guard let slug = s.entry.tenant else { continue }
            if numbers[slug] == nil {
                let number = try ks.withValue(forKey: Array(slug.utf8), in: dbs.tenants) { b in
                    guard let b else { throw VaultError.corrupt("audit entry of tenant \(slug), which the keystore does not know") }
                    return try TenantRow.decode(b).number
                }
                numbers[slug] = number
                counts[number] = try AuditLog.prunedCount(number, in: rec, audit: audit)
            }
            let t = numbers[slug]!, index = counts[t]!
            try rec.put(MerkleTree.leafHash(s.entry.leaf(tenantSeq: index + 1)), forKey: AuditTree.key(t, 0, index),
                        in: audit.archivedTree)
            counts[t] = index + 1
        }
        counts[AuditTree.operatorLog] = mark + UInt64(stubs.count)
        for (log, n) in counts {
            try rec.put(.be(n), forKey: Layout.auditCountKey(log), in: audit.archivedByTenant)
        }
        return UInt64(stubs.count)
    }
}
