import LMDB
#if canImport(Glibc)
import Glibc
#endif

/// What a rotation did.
public struct RotationSummary: Sendable, Equatable {
    public var bucketsRekeyed = 0
    public var recordsRewrapped = 0
    public var tenantsRenewed = 0
    public var masterGeneration: UInt64 = 0
    public var keystoreBytesBefore = 0
    public var keystoreBytesAfter = 0
}

/// Rotation (DESIGN.md, Lifecycles, Rotate), on the writer thread alone:
/// 1. each dirty bucket gets version v+1 and its live DEKs are re-wrapped; v is gone;
/// 2. each tenant gets a new TRK; its SBK and bucket keys are re-wrapped under it;
/// 3. a new master key generation is written to `<key file>.next`, the TRKs are wrapped
///    under it, and the keystore commits steps 1–3 in one transaction; the `.next` file
///    then replaces the key file (atomic rename, old blocks overwritten);
/// 4. the keystore is compacted and swapped in.
///
/// A crash anywhere leaves a vault that opens: before the commit the old key file and the
/// old keystore still match (the stale `.next` is destroyed at start-up); after it, the
/// `.next` file matches and start-up finishes the rename.
struct Rotator {
    let stores: Stores
    let context: OperationContext
    let actor: Actor

    private var dbs: KeystoreDatabases { stores.ks }

    func fault(_ point: FaultPoint) throws {
        try context.configuration.faultInjector?(point)
    }

    func run() throws -> RotationSummary {
        var summary = RotationSummary()
        summary.keystoreBytesBefore = Compaction.fileSize(stores.keystore.path + "/data.mdb")
        let state = context.state
        let generation = state.masterGeneration + 1
        let newMaster = try Key.random()
        try state.masterKeyFile.write(key: newMaster.bytes, generation: generation, to: state.masterKeyFile.nextPath)
        try fault(.rotationNextKeyWritten)

        try stores.keystore.write { txn in
            var tenants: [(String, TenantRow)] = []
            try txn.forEach(in: dbs.tenants) { k, v in
                tenants.append((String(decoding: k, as: UTF8.self), try TenantRow.decode(v)))
                return .continue
            }
            for (slug, row) in tenants where row.status == .active {
                let t = ResolvedTenant(slug: slug, row: row)
                let root = try t.rootKey(context)
                let newRoot = try Key.random()
                let newGeneration = row.trkGeneration + 1
                let sbk = try t.blindingKey(root: root)

                var buckets: [(UInt64, BucketRow)] = []
                let prefix = Layout.tenantKey(t.number)
                try txn.forEach(in: dbs.buckets, from: prefix, prefix: prefix) { k, v in
                    buckets.append((readBE(k, at: 4), try BucketRow.decode(v)))
                    return .continue
                }
                for (e, bucket) in buckets {
                    guard let (_, key) = try t.bucket(e, root: root, in: txn, dbs: dbs) else { continue }
                    var newRow = bucket
                    var newKey = key
                    if bucket.dirty {
                        newKey = try Key.random()
                        newRow.version = bucket.version + 1
                        summary.recordsRewrapped += try rewrap(bucket: e, of: t, from: key, version: bucket.version,
                                                               to: newKey, version: newRow.version, in: txn)
                        summary.bucketsRekeyed += 1
                    }
                    newRow.dirty = false
                    newRow.wrappedBK = try KeyHierarchy.wrap(
                        newKey.bytes, under: newRoot.bytes,
                        ad: KeyHierarchy.bkAD(tenant: t.number, bucket: e, version: newRow.version, trkGeneration: newGeneration))
                    try txn.put(newRow.encode(), forKey: Layout.bucketKey(t.number, e), in: dbs.buckets)
                }
                var renewed = row
                renewed.trkGeneration = newGeneration
                renewed.wrappedSBK = try KeyHierarchy.wrap(sbk.bytes, under: newRoot.bytes,
                                                           ad: KeyHierarchy.sbkAD(tenant: t.number, trkGeneration: newGeneration))
                renewed.wrappedTRK = try KeyHierarchy.wrap(
                    newRoot.bytes, under: newMaster.bytes,
                    ad: KeyHierarchy.trkAD(slug: slug, tenant: t.number, mkGeneration: generation, trkGeneration: newGeneration))
                try txn.put(renewed.encode(), forKey: Array(slug.utf8), in: dbs.tenants)
                summary.tenantsRenewed += 1
            }
            try txn.put(try Vault.masterCheck(key: newMaster, generation: generation), forKey: Vault.metaMasterKey, in: dbs.meta)
            if let blob = try txn.value(forKey: Vault.metaTokenKey, in: dbs.meta) {
                let tokenKey = try Vault.unwrapTokenKey(blob, master: state.masterKey, generation: state.masterGeneration)
                try txn.put(try Vault.wrapTokenKey(tokenKey, master: newMaster, generation: generation),
                            forKey: Vault.metaTokenKey, in: dbs.meta)
            }
            try AuditLog.append(.init(tenant: nil, actor: actor, action: "rotate", target: nil,
                                      count: UInt64(summary.recordsRewrapped)), in: txn, dbs: dbs, context: context)
        }
        // Committed: from here the keystore is wrapped under the new generation.
        context.adoptCommitted()
        context.keyCache.removeAll()
        state.masterKey = newMaster
        state.masterGeneration = generation
        summary.masterGeneration = generation
        try fault(.rotationKeystoreCommitted)
        try state.masterKeyFile.promoteNext()
        try fault(.rotationKeyPromoted)

        try Compaction(stores: stores, configuration: context.configuration).run()
        summary.keystoreBytesAfter = Compaction.fileSize(stores.keystore.path + "/data.mdb")
        // The rotation's one write transaction held every dirtied page in malloc'd memory
        // (hundreds of MiB at a million records); give it back to the system now.
        Self.returnFreedMemory()
        return summary
    }

    /// glibc's `malloc_trim(0)`, looked up at run time (malloc.h does not import into Swift);
    /// a no-op where it does not exist.
    static func returnFreedMemory() {
        #if canImport(Glibc)
        typealias Trim = @convention(c) (Int) -> Int32
        if let symbol = dlsym(nil, "malloc_trim") {
            _ = unsafeBitCast(symbol, to: Trim.self)(0)
        }
        #endif
    }

    /// Re-wraps the live DEKs of bucket `e` from (key, v) to (newKey, v').
    private func rewrap(bucket e: UInt64, of t: ResolvedTenant, from key: Key, version: UInt32, to newKey: Key,
                        version newVersion: UInt32, in txn: borrowing Transaction) throws -> Int {
        var ids: [RecordID] = []
        let prefix = Layout.bucketKey(t.number, e)
        try txn.forEach(in: dbs.byBucket, from: prefix, prefix: prefix) { k, _ in
            ids.append(RecordID(bytes: Array(k[12...])))
            return .continue
        }
        var count = 0
        for id in ids {
            guard var m = try t.meta(id, in: txn, dbs: dbs), m.bucket == e else { continue }
            guard m.bucketVersion == version else {
                throw VaultError.integrity("record \(id): wrapped under bucket version \(m.bucketVersion), expected \(version)")
            }
            let oldAD = KeyHierarchy.dekAD(tenant: t.number, id: id, version: m.version, bucket: e, bucketVersion: version)
            let newAD = KeyHierarchy.dekAD(tenant: t.number, id: id, version: m.version, bucket: e, bucketVersion: newVersion)
            m.bucketVersion = newVersion
            m.wrappedDEK = try context.keyCache.withUnwrapped(m.wrappedDEK, under: key.bytes, ad: oldAD,
                                                              what: "data key of record \(id)") { dek in
                try KeyHierarchy.wrap(dek, under: newKey.bytes, ad: newAD)
            }
            try txn.put(m.encode(), forKey: Layout.recordKey(t.number, id), in: dbs.records)
            count += 1
        }
        return count
    }
}

extension Vault {
    /// Rotates the key hierarchy and compacts the keystore (DESIGN.md, Rotate). After it,
    /// no key reachable from the current master key opens anything erased or expired before.
    public func rotate(actor: Actor = Actor("system:rotation")) async throws -> RotationSummary {
        try await performExclusive { stores, context in
            try Rotator(stores: stores, context: context, actor: actor).run()
        }
    }

    /// Compacts the keystore alone (`mdb_env_copy2` with compaction, then a swap).
    public func compact() async throws -> (before: Int, after: Int) {
        let sizes: [Int] = try await performExclusive { stores, context in
            let before = Compaction.fileSize(stores.keystore.path + "/data.mdb")
            try Compaction(stores: stores, configuration: context.configuration).run()
            return [before, Compaction.fileSize(stores.keystore.path + "/data.mdb")]
        }
        return (sizes[0], sizes[1])
    }
}
