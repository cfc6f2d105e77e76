import LMDB
import Sodium

/// What a caller may see of a tenant.
public struct TenantInfo: Sendable, Equatable {
    public let id: String
    public let createdAt: Int64
    public let offboarded: Bool
}

/// A tenant resolved inside a transaction, with its keys unwrapped on demand.
struct ResolvedTenant {
    let slug: String
    let row: TenantRow
    /// The writer's key cache; nil where every unwrap should allocate (tests, tools).
    var cache: KeyCache? = nil
    var number: UInt32 { row.number }

    var auditTenant: (slug: String, number: UInt32) { (slug, row.number) }

    static func load(_ id: TenantID, in txn: borrowing Transaction, dbs: KeystoreDatabases,
                     cache: KeyCache? = nil) throws -> ResolvedTenant {
        let row: TenantRow? = try txn.withValue(forKey: Array(id.slug.utf8), in: dbs.tenants) { b in
            try b.map(TenantRow.decode)
        }
        guard let row, row.status == .active else { throw VaultError.tenantNotFound(id.slug) }
        return ResolvedTenant(slug: id.slug, row: row, cache: cache)
    }

    /// Unwraps a key of the hierarchy, through the cache when there is one.
    func unwrapKey(_ blob: [UInt8], under kek: borrowing SecretBytes, ad: [UInt8], what: @autoclosure () -> String) throws -> Key {
        if let cache { return try cache.unwrap(blob, under: kek, ad: ad, what: what()) }
        return try KeyHierarchy.unwrap(blob, under: kek, ad: ad, what: what())
    }

    /// TRK, unwrapped under the master key.
    func rootKey(_ context: OperationContext) throws -> Key {
        try unwrapKey(row.wrappedTRK, under: context.masterKey.bytes,
                                ad: KeyHierarchy.trkAD(slug: slug, tenant: number, mkGeneration: context.masterGeneration,
                                                       trkGeneration: row.trkGeneration),
                                what: "root key of tenant \(slug)")
    }

    /// SBK, unwrapped under the TRK.
    func blindingKey(root: Key) throws -> Key {
        try unwrapKey(row.wrappedSBK, under: root.bytes,
                                ad: KeyHierarchy.sbkAD(tenant: number, trkGeneration: row.trkGeneration),
                                what: "subject blinding key of tenant \(slug)")
    }

    /// The subject's tag: keyed BLAKE2b-128 under the SBK. The only form in which a
    /// subject is ever stored.
    func tag(of subject: Subject, root: Key) throws -> [UInt8] {
        let sbk = try blindingKey(root: root)
        return try subject.bytes.withUnsafeBytes { try KeyedHash.hash($0, key: sbk.bytes, outputCount: 16) }
    }

    /// The key ring of bucket `e`, or nil when the bucket does not exist (expired).
    func bucketRow(_ e: UInt64, in txn: borrowing Transaction, dbs: KeystoreDatabases) throws -> BucketRow? {
        try txn.withValue(forKey: Layout.bucketKey(number, e), in: dbs.buckets) { b in try b.map(BucketRow.decode) }
    }

    /// One version of bucket `e`'s key, unwrapped under the tenant root key.
    func bucketKey(_ e: UInt64, _ version: BucketRow.Version, root: Key) throws -> Key {
        try unwrapKey(version.wrappedBK, under: root.bytes,
                      ad: KeyHierarchy.bkAD(tenant: number, bucket: e, version: version.number,
                                            trkGeneration: row.trkGeneration),
                      what: "bucket key \(e) v\(version.number) of tenant \(slug)")
    }

    /// The key of bucket `e` that opens data keys wrapped under `version`; nil when the bucket
    /// does not exist (expired). A version the ring no longer holds (trimmed by a rotation) is
    /// an integrity error naming the record: only a live DEK that a rotation missed has it.
    func bucketKey(_ e: UInt64, version: UInt32, for id: RecordID, root: Key, in txn: borrowing Transaction,
                   dbs: KeystoreDatabases) throws -> Key? {
        guard let row = try bucketRow(e, in: txn, dbs: dbs) else { return nil }
        guard let v = row.version(version) else {
            throw VaultError.integrity("record \(id): bucket key \(e) v\(version) of tenant \(slug) is gone (its ring holds "
                                       + "v\(row.minimumDecryptionVersion)...v\(row.current.number))")
        }
        return try bucketKey(e, v, root: root)
    }

    /// The bucket's current version and key, created (version 1) when the bucket is new.
    func bucketCreatingIfNeeded(_ e: UInt64, root: Key, in txn: borrowing Transaction,
                                dbs: KeystoreDatabases) throws -> (version: UInt32, key: Key) {
        if let existing = try bucketRow(e, in: txn, dbs: dbs) {
            return (existing.current.number, try bucketKey(e, existing.current, root: root))
        }
        let key = try Key.random()
        let row = BucketRow(version: 1, dirty: false, wrappedBK: try KeyHierarchy.wrap(
            key.bytes, under: root.bytes,
            ad: KeyHierarchy.bkAD(tenant: number, bucket: e, version: 1, trkGeneration: self.row.trkGeneration)))
        try txn.put(row.encode(), forKey: Layout.bucketKey(number, e), in: dbs.buckets)
        return (1, key)
    }

    /// Marks a bucket dirty: a DEK under it was destroyed, so the next rotation re-keys it.
    func markDirty(_ e: UInt64, in txn: borrowing Transaction, dbs: KeystoreDatabases) throws {
        let key = Layout.bucketKey(number, e)
        let row: BucketRow? = try txn.withValue(forKey: key, in: dbs.buckets) { b in try b.map(BucketRow.decode) }
        guard var row, !row.dirty else { return }
        row.dirty = true
        try txn.put(row.encode(), forKey: key, in: dbs.buckets)
    }
}

extension Vault {
    /// Creates a tenant: a new root key wrapped under the master key, and a subject
    /// blinding key wrapped under the root key. 409-style `tenantExists` if the slug was
    /// ever used (an offboarded tenant's slug stays reserved).
    public func createTenant(_ id: TenantID, actor: Actor) async throws -> TenantInfo {
        try await perform { txn, rec, context in
            let dbs = self.writer.stores.ks
            let slugKey = Array(id.slug.utf8)
            guard try !txn.contains(key: slugKey, in: dbs.tenants) else { throw VaultError.tenantExists(id.slug) }
            let number: UInt32 = try txn.withValue(forKey: Vault.metaNextTenant, in: dbs.meta) { b in
                guard let b, b.count == 4 else { throw VaultError.corrupt("tenant counter") }
                return readBE(b, at: 0)
            }
            try txn.put(.be(number + 1), forKey: Vault.metaNextTenant, in: dbs.meta)
            let trk = try Key.random()
            let sbk = try Key.random()
            let row = TenantRow(
                number: number, status: .active, createdAt: context.now, trkGeneration: 1,
                wrappedTRK: try KeyHierarchy.wrap(trk.bytes, under: context.masterKey.bytes,
                                                  ad: KeyHierarchy.trkAD(slug: id.slug, tenant: number,
                                                                         mkGeneration: context.masterGeneration, trkGeneration: 1)),
                wrappedSBK: try KeyHierarchy.wrap(sbk.bytes, under: trk.bytes,
                                                  ad: KeyHierarchy.sbkAD(tenant: number, trkGeneration: 1)))
            try txn.put(row.encode(), forKey: slugKey, in: dbs.tenants)
            try txn.put(RetentionPolicy.standard.encode(), forKey: Layout.tenantKey(number), in: dbs.policies)
            try AuditLog.append(.init(tenant: (id.slug, number), actor: actor, action: "tenant.create",
                                      target: "tenant:\(id.slug)"), in: txn, rec, dbs: dbs, context: context)
            return TenantInfo(id: id.slug, createdAt: row.createdAt, offboarded: false)
        }
    }

    public func listTenants() async throws -> [TenantInfo] {
        try await perform { txn, _, _ in
            var out: [TenantInfo] = []
            try txn.forEach(in: self.writer.stores.ks.tenants) { key, value in
                let row = try TenantRow.decode(value)
                out.append(TenantInfo(id: String(decoding: key, as: UTF8.self), createdAt: row.createdAt,
                                      offboarded: row.status == .offboarded))
                return .continue
            }
            return out
        }
    }

    /// Offboards a tenant: destroys its root key, blinding key and bucket keys in one
    /// transaction, so every record of the tenant is unreadable at once. The sweeper then
    /// removes its entries and ciphertexts in batches.
    public func offboardTenant(_ id: TenantID, actor: Actor) async throws {
        let revoked: [String] = try await perform { txn, rec, context in
            let dbs = self.writer.stores.ks
            let tenant = try ResolvedTenant.load(id, in: txn, dbs: dbs, cache: context.keyCache)
            var row = tenant.row
            row.status = .offboarded
            row.wrappedTRK = []
            row.wrappedSBK = []
            try txn.put(row.encode(), forKey: Array(id.slug.utf8), in: dbs.tenants)
            var buckets: [[UInt8]] = []
            try txn.forEach(in: dbs.buckets, from: Layout.tenantKey(tenant.number), prefix: Layout.tenantKey(tenant.number)) { k, _ in
                buckets.append(Array(k))
                return .continue
            }
            for k in buckets { try txn.delete(key: k, in: dbs.buckets) }
            context.keysDestroyed = true
            // The tenant's tokens die with it. A damaged token row (refused at open, so
            // unusable already) is left for `revokeToken` to remove.
            var tokens: [([UInt8], TokenInfo)] = []
            try txn.forEach(in: dbs.tokens, from: [UInt8(ascii: "h")], prefix: [UInt8(ascii: "h")]) { k, v in
                guard let info = try? self.tokens.openRow(v, hash: Array(k[1...]), indexedID: nil) else { return .continue }
                if info.tenant == id.slug && info.revokedAt == nil { tokens.append((Array(k), info)) }
                return .continue
            }
            for (k, info) in tokens {
                let revoked = TokenInfo(id: info.id, tenant: info.tenant, role: info.role, name: info.name,
                                        createdAt: info.createdAt, revokedAt: context.now)
                try txn.put(try self.tokens.sealRow(revoked, hash: Array(k[1...])), forKey: k, in: dbs.tokens)
            }
            try AuditLog.append(.init(tenant: tenant.auditTenant, actor: actor, action: "tenant.offboard",
                                      target: "tenant:\(id.slug)", count: UInt64(buckets.count)),
                                in: txn, rec, dbs: dbs, context: context)
            return tokens.map(\.1.id)
        }
        for token in revoked { tokens.remove(id: token) }
    }
}
