import LMDB

/// A tenant's retention rules in force.
public struct RetentionState: Sendable, Equatable {
    public let policy: RetentionPolicy
    /// Every extension contract, ended ones included (`endedAt`), newest last.
    public let extensions: [RetentionExtension]

    /// How long a record of `category` written at `now` is kept unless it asks for less: the
    /// policy within what the active contracts allow, at least their retention.
    public func effectiveSeconds(for category: DataCategory, at now: Int64) -> Int64 {
        Retention.effectiveSeconds(for: category, policy: policy, extensions: extensions, now: now)
    }
}

/// Retention rules (docs/architecture.md, Principles 2):
/// - a record is kept for its category's policy value (default P92D);
/// - no policy value may exceed P92D unless an active extension contract covering that
///   category allows it (`allowedMaximum`);
/// - while an extension is active, records of its categories written then are kept at
///   least the extension's retention;
/// - when an extension ends, policy values above P92D it allowed fall back to P92D for
///   new records (the stored policy is kept, and applies again under a new contract).
enum Retention {
    static func bucket(of expiresAt: Int64, width: Int64) -> UInt64 {
        UInt64(max(0, expiresAt) / (width * 1000))
    }

    static func policy(_ t: ResolvedTenant, in txn: borrowing Transaction, dbs: KeystoreDatabases) throws -> RetentionPolicy {
        try txn.withValue(forKey: Layout.tenantKey(t.number), in: dbs.policies) { b in
            try b.map(RetentionPolicy.decode) ?? .standard
        }
    }

    static func extensions(_ t: ResolvedTenant, in txn: borrowing Transaction, dbs: KeystoreDatabases) throws -> [RetentionExtension] {
        var out: [RetentionExtension] = []
        let prefix = Layout.tenantKey(t.number)
        try txn.forEach(in: dbs.extensions, from: prefix, prefix: prefix) { k, v in
            out.append(try RetentionExtension.decode(v, id: RecordID(bytes: Array(k[4...]))))
            return .continue
        }
        return out
    }

    static func allowedMaximum(for c: DataCategory, extensions: [RetentionExtension], now: Int64) -> Int64 {
        extensions.filter { $0.isActive(at: now) && $0.categories.contains(c) }
            .map(\.retentionSeconds).reduce(RetentionPolicy.standardMaximum, max)
    }

    static func effectiveSeconds(for c: DataCategory, policy: RetentionPolicy, extensions: [RetentionExtension],
                                 now: Int64) -> Int64 {
        let cap = allowedMaximum(for: c, extensions: extensions, now: now)
        let fromExtensions = extensions.filter { $0.isActive(at: now) && $0.categories.contains(c) }
            .map(\.retentionSeconds).reduce(0, max)
        return max(min(policy.seconds(for: c), cap), fromExtensions)
    }

    static func effectiveSeconds(for c: DataCategory, tenant t: ResolvedTenant, now: Int64,
                                 in txn: borrowing Transaction, dbs: KeystoreDatabases) throws -> Int64 {
        effectiveSeconds(for: c, policy: try policy(t, in: txn, dbs: dbs), extensions: try extensions(t, in: txn, dbs: dbs), now: now)
    }
}

extension Vault {
    public func retention(tenant: TenantID) async throws -> RetentionState {
        try await perform { ks, _, context in
            let dbs = self.writer.stores.ks
            let t = try ResolvedTenant.load(tenant, in: ks, dbs: dbs, cache: context.keyCache)
            return RetentionState(policy: try Retention.policy(t, in: ks, dbs: dbs),
                                  extensions: try Retention.extensions(t, in: ks, dbs: dbs))
        }
    }

    /// Sets the tenant's policy. A value above P92D is refused unless an active extension
    /// contract covers it (for the default: every category without its own override).
    public func setRetentionPolicy(_ policy: RetentionPolicy, tenant: TenantID, actor: Actor) async throws -> RetentionPolicy {
        try await perform { ks, rec, context in
            let dbs = self.writer.stores.ks
            let t = try ResolvedTenant.load(tenant, in: ks, dbs: dbs, cache: context.keyCache)
            let exts = try Retention.extensions(t, in: ks, dbs: dbs)
            let now = context.now
            let periods = [policy.defaultSeconds] + Array(policy.categories.values)
            guard periods.allSatisfy({ $0 > 0 && $0 <= ISODuration.maximumSeconds }) else {
                throw VaultError.invalidArgument("retention periods must be positive and at most \(ISODuration.maximumSeconds / 86_400) days")
            }
            for c in DataCategory.allCases {
                let asked = policy.seconds(for: c)
                let cap = Retention.allowedMaximum(for: c, extensions: exts, now: now)
                if asked > cap {
                    throw VaultError.refused("retention \(ISODuration.format(seconds: asked)) for \(c.rawValue) is above \(ISODuration.format(seconds: cap)) and no active extension contract covers it")
                }
            }
            try ks.put(policy.encode(), forKey: Layout.tenantKey(t.number), in: dbs.policies)
            try AuditLog.append(.init(tenant: t.auditTenant, actor: actor, action: "retention.set", target: nil),
                                in: ks, rec, dbs: dbs, context: context)
            return policy
        }
    }

    /// Records an extension contract; it applies to records written while it is active.
    public func addRetentionExtension(purpose: RetentionExtension.Purpose, reference: String, retentionSeconds: Int64,
                                      categories: [DataCategory], until: Int64, tenant: TenantID,
                                      actor: Actor) async throws -> RetentionExtension {
        guard retentionSeconds > 0, retentionSeconds <= ISODuration.maximumSeconds else {
            throw VaultError.invalidArgument("retention must be positive and at most \(ISODuration.maximumSeconds / 86_400) days")
        }
        guard !categories.isEmpty else { throw VaultError.invalidArgument("categories must not be empty") }
        guard (1...200).contains(reference.utf8.count) else { throw VaultError.invalidArgument("reference must be 1 to 200 bytes") }
        return try await perform { ks, rec, context in
            let dbs = self.writer.stores.ks
            let t = try ResolvedTenant.load(tenant, in: ks, dbs: dbs, cache: context.keyCache)
            let now = context.now
            // A well-formed time that is already past: refused by policy (422), not malformed (400).
            guard until > now else { throw VaultError.refused("until must be in the future") }
            let id = RecordID.generate(milliseconds: now)
            var unique: [DataCategory] = []
            for c in categories where !unique.contains(c) { unique.append(c) }
            let ext = RetentionExtension(id: id.description, purpose: purpose, reference: reference,
                                         retentionSeconds: retentionSeconds, categories: unique, until: until,
                                         createdAt: now, endedAt: nil)
            try ks.put(ext.encode(), forKey: Layout.tenantKey(t.number) + id.bytes, in: dbs.extensions)
            try AuditLog.append(.init(tenant: t.auditTenant, actor: actor, action: "extension.add",
                                      target: "extension:\(id)", reference: reference), in: ks, rec, dbs: dbs, context: context)
            return ext
        }
    }

    /// Ends an extension contract now. Records already written keep their expiry.
    public func endRetentionExtension(_ id: String, tenant: TenantID, actor: Actor) async throws {
        guard let rid = RecordID(id) else { throw VaultError.notFound }
        try await perform { ks, rec, context in
            let dbs = self.writer.stores.ks
            let t = try ResolvedTenant.load(tenant, in: ks, dbs: dbs, cache: context.keyCache)
            let key = Layout.tenantKey(t.number) + rid.bytes
            guard var ext = try ks.withValue(forKey: key, in: dbs.extensions, { b in
                try b.map { try RetentionExtension.decode($0, id: rid) }
            }), ext.endedAt == nil else { throw VaultError.notFound }
            ext.endedAt = context.now
            try ks.put(ext.encode(), forKey: key, in: dbs.extensions)
            try AuditLog.append(.init(tenant: t.auditTenant, actor: actor, action: "extension.end",
                                      target: "extension:\(rid)", reference: ext.reference), in: ks, rec, dbs: dbs, context: context)
        }
    }
}
