import Dispatch
import LMDB

/// What a sweep did.
public struct SweepSummary: Sendable, Equatable {
    /// Bucket keys destroyed: every record under them was shredded by that one deletion.
    public var bucketsDestroyed = 0
    /// Held records re-wrapped into their tenant's holding bucket before their bucket died.
    public var heldRecordsRewrapped = 0
    /// Records in holding buckets whose hold was lifted and whose time was past.
    public var heldRecordsExpired = 0
    /// Dead metadata entries removed (expired records, offboarded tenants).
    public var entriesRemoved = 0
    /// Ciphertexts deleted (dead records and orphans).
    public var ciphertextsRemoved = 0
    /// Orphan ciphertexts among them (a crash between the two commits of a write).
    public var orphansRemoved = 0
    /// Audit entries pruned past the audit retention (their content; their hashes stay).
    public var auditEntriesPruned: UInt64 = 0
    /// The audit retention applied: the configured one, or the longest record retention in
    /// force when that is longer.
    public var auditRetentionSeconds: Int64 = 0
    /// Milliseconds until every expired key was destroyed (one commit).
    public var keyDestructionMilliseconds: Int64 = 0
    public var totalMilliseconds: Int64 = 0
}

/// Expiry (docs/architecture.md, Lifecycles, Expire), run on the writer thread alone:
/// 1. one transaction destroys the key of every bucket whose window is past, after
///    re-wrapping held records into the tenant's holding bucket; lifted holds let their
///    past-due records in the holding bucket die one by one;
/// 2. dead entries (and offboarded tenants' entries) are removed in batches, each batch's
///    ciphertexts deleted after its keystore commit;
/// 3. orphan ciphertexts (no wrapped DEK for that version) are removed in batches;
/// 4. audit entries past the audit retention are pruned (`AuditRetention`), in batches.
struct Sweeper {
    let stores: Stores
    let context: OperationContext
    let actor: Actor
    var summary = SweepSummary()

    init(stores: Stores, context: OperationContext, actor: Actor) {
        self.stores = stores
        self.context = context
        self.actor = actor
    }

    private var dbs: KeystoreDatabases { stores.ks }
    private var batchSize: Int { context.configuration.sweepBatchSize }

    mutating func run() throws -> SweepSummary {
        // Durations on the monotonic clock: the vault clock may be a test's manual clock.
        let started = DispatchTime.now().uptimeNanoseconds
        func elapsed() -> Int64 { Int64((DispatchTime.now().uptimeNanoseconds - started) / 1_000_000) }
        try destroyExpiredKeys()
        summary.keyDestructionMilliseconds = elapsed()
        try removeDeadEntries()
        try removeOrphans()
        let pruned = try AuditRetention.prune(stores, now: context.now, configured: context.configuration.auditRetentionSeconds,
                                              chunk: batchSize)
        summary.auditEntriesPruned = pruned.pruned
        summary.auditRetentionSeconds = pruned.retentionSeconds
        summary.totalMilliseconds = elapsed()
        try stores.write { txn, rec in
            if pruned.pruned > 0 {
                try AuditLog.append(.init(tenant: nil, actor: actor, action: "audit.prune", target: nil, count: pruned.pruned),
                                    in: txn, rec, dbs: dbs, context: context)
            }
            try AuditLog.append(.init(tenant: nil, actor: actor, action: "sweep", target: nil,
                                      count: UInt64(summary.entriesRemoved + summary.heldRecordsExpired)),
                                in: txn, rec, dbs: dbs, context: context)
        }
        context.adoptCommitted()
        return summary
    }

    private func tenants(in txn: borrowing Transaction) throws -> [(String, TenantRow)] {
        var out: [(String, TenantRow)] = []
        try txn.forEach(in: dbs.tenants) { k, v in
            out.append((String(decoding: k, as: UTF8.self), try TenantRow.decode(v)))
            return .continue
        }
        return out
    }

    private mutating func destroyExpiredKeys() throws {
        let now = context.now
        let width = context.configuration.bucketWidthSeconds * 1000
        var destroyed = 0, rewrapped = 0, heldExpired = 0
        var deletes: [[UInt8]] = []
        try stores.write { txn, rec in
            for (slug, row) in try tenants(in: txn) where row.status == .active {
                let t = ResolvedTenant(slug: slug, row: row)
                let prefix = Layout.tenantKey(t.number)
                var expired: [UInt64] = []
                var hasHoldingBucket = false
                try txn.forEach(in: dbs.buckets, from: prefix, prefix: prefix) { k, _ in
                    let e: UInt64 = readBE(k, at: 4)
                    if e == Layout.holdingBucket {
                        hasHoldingBucket = true
                    } else if Int64(clamping: e + 1) * width <= now {
                        expired.append(e)
                    }
                    return .continue
                }
                if expired.isEmpty && !hasHoldingBucket { continue }
                let root = try t.rootKey(context)
                let anyHolds = try t.hasHolds(in: txn, dbs: dbs)
                for e in expired {
                    if anyHolds {
                        for id in try ids(inBucket: e, of: t, in: txn, limit: .max) {
                            guard var m = try t.meta(id, in: txn, dbs: dbs),
                                  try t.isHeld(id, tag: m.tag, expiresAt: m.expiresAt, in: txn, dbs: dbs) else { continue }
                            guard let from = try t.bucketKey(e, version: m.bucketVersion, for: id, root: root, in: txn, dbs: dbs)
                            else { continue }
                            let (version, holdKey) = try t.bucketCreatingIfNeeded(Layout.holdingBucket, root: root, in: txn, dbs: dbs)
                            try t.rewrapDataKey(id, &m, from: from, toBucket: Layout.holdingBucket, version: version, key: holdKey)
                            try txn.put(m.encode(), forKey: Layout.recordKey(t.number, id), in: dbs.records)
                            try txn.delete(key: Layout.byBucketKey(t.number, e, id), in: dbs.byBucket)
                            try txn.put([], forKey: Layout.byBucketKey(t.number, m.bucket, id), in: dbs.byBucket)
                            rewrapped += 1
                        }
                    }
                    try txn.delete(key: Layout.bucketKey(t.number, e), in: dbs.buckets)
                    try txn.put([], forKey: Layout.bucketKey(t.number, e), in: dbs.deadBuckets)
                    destroyed += 1
                }
                if hasHoldingBucket {
                    for id in try ids(inBucket: Layout.holdingBucket, of: t, in: txn, limit: .max) {
                        guard let m = try t.meta(id, in: txn, dbs: dbs), now >= m.expiresAt,
                              try !t.isHeld(id, tag: m.tag, expiresAt: m.expiresAt, in: txn, dbs: dbs) else { continue }
                        try t.destroy(id, m, in: txn, dbs: dbs, context: context)
                        heldExpired += 1
                    }
                }
            }
            if destroyed > 0 || heldExpired > 0 {
                try AuditLog.append(.init(tenant: nil, actor: actor, action: "sweep.destroy_keys", target: nil,
                                          count: UInt64(destroyed)), in: txn, rec, dbs: dbs, context: context)
            }
        }
        context.adoptCommitted()
        context.keyCache.removeAll()
        deletes = context.takeCiphertextDeletes()
        try deleteCiphertexts(deletes)
        summary.ciphertextsRemoved += deletes.count
        summary.bucketsDestroyed = destroyed
        summary.heldRecordsRewrapped = rewrapped
        summary.heldRecordsExpired = heldExpired
    }

    private func ids(inBucket e: UInt64, of t: ResolvedTenant, in txn: borrowing Transaction, limit: Int) throws -> [RecordID] {
        var ids: [RecordID] = []
        let prefix = Layout.bucketKey(t.number, e)
        guard limit > 0 else { return ids }
        try txn.forEach(in: dbs.byBucket, from: prefix, prefix: prefix) { k, _ in
            ids.append(RecordID(bytes: Array(k[12...])))
            return ids.count < limit ? .continue : .stop
        }
        return ids
    }

    private func deleteCiphertexts(_ keys: [[UInt8]]) throws {
        guard !keys.isEmpty else { return }
        try stores.write { _, txn in
            for k in keys { try txn.delete(key: k, in: stores.rec) }
        }
    }

    /// Removes entries of destroyed buckets and offboarded tenants, a batch per transaction.
    private mutating func removeDeadEntries() throws {
        while true {
            var removed = 0
            var ciphertexts: [[UInt8]] = []
            try stores.write { txn, _ in
                var budget = batchSize
                var dead: [(UInt32, UInt64)] = []
                try txn.forEach(in: dbs.deadBuckets) { k, _ in
                    dead.append((readBE(k, at: 0), readBE(k, at: 4)))
                    return .continue
                }
                for (number, e) in dead where budget > 0 {
                    var ids: [RecordID] = []
                    let prefix = Layout.bucketKey(number, e)
                    try txn.forEach(in: dbs.byBucket, from: prefix, prefix: prefix) { k, _ in
                        ids.append(RecordID(bytes: Array(k[12...])))
                        return ids.count < budget ? .continue : .stop
                    }
                    for id in ids {
                        try txn.delete(key: Layout.byBucketKey(number, e, id), in: dbs.byBucket)
                        if let m = try txn.withValue(forKey: Layout.recordKey(number, id), in: dbs.records, { b in try b.map(RecordMeta.decode) }) {
                            try txn.delete(key: Layout.recordKey(number, id), in: dbs.records)
                            try txn.delete(key: Layout.subjectKey(number, m.tag, id), in: dbs.subjects)
                            ciphertexts.append(Layout.ciphertextKey(number, id, m.version))
                        }
                    }
                    removed += ids.count
                    budget -= ids.count
                    if budget > 0 { try txn.delete(key: prefix, in: dbs.deadBuckets) }
                }
                for (_, row) in try tenants(in: txn) where row.status == .offboarded && budget > 0 {
                    let n = try purge(tenant: row.number, budget: budget, in: txn, ciphertexts: &ciphertexts)
                    removed += n
                    budget -= n
                }
            }
            try deleteCiphertexts(ciphertexts)
            summary.entriesRemoved += removed
            summary.ciphertextsRemoved += ciphertexts.count
            if removed == 0 { break }
        }
    }

    /// Removes up to `budget` records of an offboarded tenant, and its small tables once
    /// no record is left. Its keys were destroyed at offboarding.
    private func purge(tenant number: UInt32, budget: Int, in txn: borrowing Transaction,
                       ciphertexts: inout [[UInt8]]) throws -> Int {
        let prefix = Layout.tenantKey(number)
        var entries: [([UInt8], RecordMeta)] = []
        try txn.forEach(in: dbs.records, from: prefix, prefix: prefix) { k, v in
            entries.append((Array(k), try RecordMeta.decode(v)))
            return entries.count < budget ? .continue : .stop
        }
        for (key, m) in entries {
            let id = RecordID(bytes: Array(key[4...]))
            try txn.delete(key: key, in: dbs.records)
            try txn.delete(key: Layout.subjectKey(number, m.tag, id), in: dbs.subjects)
            try txn.delete(key: Layout.byBucketKey(number, m.bucket, id), in: dbs.byBucket)
            ciphertexts.append(Layout.ciphertextKey(number, id, m.version))
        }
        if entries.count < budget {
            for db in [dbs.policies, dbs.extensions, dbs.holds, dbs.heldTargets, dbs.deadBuckets, dbs.byBucket, dbs.subjects] {
                var keys: [[UInt8]] = []
                try txn.forEach(in: db, from: prefix, prefix: prefix) { k, _ in
                    keys.append(Array(k))
                    return .continue
                }
                for k in keys { try txn.delete(key: k, in: db) }
            }
        }
        return entries.count
    }

    /// Deletes ciphertexts with no wrapped DEK of their version in the keystore.
    private mutating func removeOrphans() throws {
        var start: [UInt8]? = nil
        while true {
            var keys: [[UInt8]] = []
            try stores.records.read { txn in
                try txn.forEach(in: stores.rec, from: start) { k, _ in
                    if let s = start, Array(k) == s { return .continue }
                    keys.append(Array(k))
                    return keys.count < batchSize ? .continue : .stop
                }
            }
            guard let last = keys.last else { break }
            start = last
            let orphans: [[UInt8]] = try stores.keystore.read { txn in
                try keys.filter { k in
                    guard k.count == 4 + 16 + 4 else { return true }
                    let version: UInt32 = k.withUnsafeBytes { readBE($0, at: 20) }
                    return try txn.withValue(forKey: Array(k[0..<20]), in: dbs.records) { b in
                        guard let b else { return true }
                        return try RecordMeta.decode(b).version != version
                    }
                }
            }
            try deleteCiphertexts(orphans)
            summary.orphansRemoved += orphans.count
            summary.ciphertextsRemoved += orphans.count
            if keys.count < batchSize { break }
        }
    }
}

extension OperationContext {
    /// Publishes what an exclusive operation has committed so far (audit head), so a
    /// later failure of the same operation does not roll memory back past a commit.
    func adoptCommitted() {
        state.auditHead = auditHead
    }

    func takeCiphertextDeletes() -> [[UInt8]] {
        defer { ciphertextDeletes = [] }
        return ciphertextDeletes
    }
}

extension Vault {
    /// Destroys expired bucket keys, then removes dead entries and orphan ciphertexts.
    public func sweep(actor: Actor = Actor("system:sweeper")) async throws -> SweepSummary {
        try await performExclusive { stores, context in
            var sweeper = Sweeper(stores: stores, context: context, actor: actor)
            return try sweeper.run()
        }
    }
}
