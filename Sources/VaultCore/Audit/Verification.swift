extension Vault {
    /// Recomputes the audit chain; names the first broken entry.
    public func verifyAudit() async throws -> AuditVerification {
        try await perform { ks, _, _ in try AuditLog.verify(in: ks, dbs: self.writer.stores.ks) }
    }
}
