extension Vault {
    /// Recomputes the audit chain; names the first broken entry.
    public func verifyAudit() async throws -> AuditVerification {
        try await perform { ks, rec, context in
            try AuditLog.verify(in: ks, rec, dbs: self.writer.stores.ks, audit: context.audit)
        }
    }
}
