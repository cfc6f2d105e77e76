import LMDB

extension Vault {
    /// Audit entries after `after`, at most `limit` (0 to 1000).
    ///
    /// With a `tenant`: that tenant's own entries, numbered in the tenant's own sequence
    /// (1, 2, 3...; `after` counts in it too), with targets and references, without `prev`.
    /// Nothing in this view depends on another tenant's activity: the chain's numbering and
    /// links would count and order every other tenant's operations.
    ///
    /// Without: the operator's view, every entry in chain order and numbering, with `prev`,
    /// targets and references removed.
    ///
    /// Both views give each entry's chain `hash`, so a tenant's entry (an erasure receipt's)
    /// can be found in the chain and checked by whoever verifies it.
    public func auditEntries(tenant: TenantID?, after: UInt64, limit: Int) async throws -> [AuditEntry] {
        let limit = max(0, min(limit, 1000))
        return try await perform { ks, rec, context in
            let dbs = self.writer.stores.ks
            guard let tenant else {
                return try AuditLog.chainEntries(after: after, limit: limit, in: ks, rec, dbs: dbs, audit: context.audit)
            }
            let t = try ResolvedTenant.load(tenant, in: ks, dbs: dbs, cache: context.keyCache)
            return try AuditLog.tenantEntries(t.row.number, after: after, limit: limit, in: ks, rec, dbs: dbs,
                                              audit: context.audit)
        }
    }
}
