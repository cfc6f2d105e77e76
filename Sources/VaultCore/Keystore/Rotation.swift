import CVaultSystem
import LMDB
#if canImport(Glibc)
import Glibc
#endif

/// What a rotation did.
public struct RotationSummary: Sendable, Equatable {
    public var bucketsRekeyed = 0
    public var recordsRewrapped = 0
    /// Write transactions the re-wrapping took: each holds at most
    /// `VaultConfiguration.rotationChunkSize` records, so the memory a rotation needs does
    /// not grow with the vault.
    public var rewrapTransactions = 0
    public var tenantsRenewed = 0
    public var masterGeneration: UInt64 = 0
    public var keystoreBytesBefore = 0
    public var keystoreBytesAfter = 0
    /// Keys that failed to open and were left as they are (their data was unreadable
    /// already), one line each naming the key: a damaged key no longer stops the rotation
    /// of every other bucket and tenant.
    public var skipped: [String] = []
}

/// Rotation (docs/architecture.md, Lifecycles, Rotate) as a sequence of bounded steps, each one
/// exclusive operation of the writer, so group-committed batches run between them:
///
/// 1. *open rings*: every dirty bucket gets a new key version beside its current one
///    (`BucketRow` is a key ring); new data keys are wrapped under the new version from
///    then on, and reads open either;
/// 2. *re-wrap*: the live DEKs under a previous version are re-wrapped to the current one,
///    at most `rotationChunkSize` per transaction; when a bucket's last DEK is done, the
///    previous version is trimmed (deleted) in the same transaction;
/// 3. *renew roots*: a new master key generation is written to `<key file>.next`; one
///    transaction gives every tenant a new TRK, re-wraps its SBK and bucket keys under it
///    and wraps the TRKs under the new master key; the `.next` file then replaces the key
///    file (atomic rename, old blocks overwritten);
/// 4. the keystore is compacted and swapped in.
///
/// A crash anywhere leaves a vault that opens and reads: before step 3 commits, the old key
/// file matches and rings hold both versions of a bucket being re-keyed (the next rotation
/// carries on with them); after it, the `.next` file matches and start-up finishes the
/// rename.
final class Rotation: @unchecked Sendable {
    // unchecked: the steps run one at a time on the writer thread (each is one exclusive
    // operation, awaited before the next is submitted); nothing else touches this object.
    let actor: Actor
    var summary = RotationSummary()
    /// Where the re-wrap scan resumes: a bucket key (t|e) and the last record id done in it.
    private var cursor: (bucket: [UInt8], after: [UInt8]?)?
    /// Buckets that were already being re-keyed when this rotation began (an earlier one was
    /// interrupted): an erasure may have dirtied them since, so once trimmed they are re-keyed
    /// again by this rotation (a second pass).
    private var resumed: Set<[UInt8]> = []
    private var pass = 0

    init(actor: Actor) { self.actor = actor }

    private func fault(_ point: FaultPoint, _ context: OperationContext) throws {
        try context.configuration.faultInjector?(point)
    }

    private func tenants(in txn: borrowing Transaction, dbs: KeystoreDatabases) throws -> [ResolvedTenant] {
        var out: [ResolvedTenant] = []
        try txn.forEach(in: dbs.tenants) { k, v in
            let row = try TenantRow.decode(v)
            if row.status == .active { out.append(ResolvedTenant(slug: String(decoding: k, as: UTF8.self), row: row)) }
            return .continue
        }
        return out
    }

    private func note(_ line: String) {
        if !summary.skipped.contains(line) { summary.skipped.append(line) }
    }

    // MARK: Step 1

    /// Opens a ring on every dirty bucket (first pass), or on the resumed buckets an
    /// erasure dirtied (second pass). Returns whether any bucket is being re-keyed.
    func openRings(_ stores: Stores, _ context: OperationContext) throws -> Bool {
        pass += 1
        if pass == 1 { summary.keystoreBytesBefore = Compaction.fileSize(stores.keystore.path + "/data.mdb") }
        let dbs = stores.ks
        var rekeying = false
        try stores.write { txn, _ in
            for t in try tenants(in: txn, dbs: dbs) {
                let prefix = Layout.tenantKey(t.number)
                var rows: [([UInt8], UInt64, BucketRow)] = []
                try txn.forEach(in: dbs.buckets, from: prefix, prefix: prefix) { k, v in
                    rows.append((Array(k), readBE(k, at: 4), try BucketRow.decode(v)))
                    return .continue
                }
                guard rows.contains(where: { $0.2.dirty || $0.2.isRekeying }) else { continue }
                let root: Key
                do {
                    root = try t.rootKey(context)
                } catch VaultError.integrity(let what) {
                    note("\(what): tenant \(t.slug) not re-keyed")
                    continue
                }
                for (key, e, row) in rows {
                    if row.isRekeying {
                        if pass == 1 { resumed.insert(key) }
                        rekeying = true
                        continue
                    }
                    guard row.dirty, pass == 1 || resumed.contains(key) else { continue }
                    var ring = row
                    let next = try Key.random()
                    let number = row.current.number + 1
                    try ring.add(.init(number: number, wrappedBK: try KeyHierarchy.wrap(
                        next.bytes, under: root.bytes,
                        ad: KeyHierarchy.bkAD(tenant: t.number, bucket: e, version: number, trkGeneration: t.row.trkGeneration))))
                    ring.dirty = false
                    try txn.put(ring.encode(), forKey: key, in: dbs.buckets)
                    summary.bucketsRekeyed += 1
                    rekeying = true
                }
            }
        }
        context.adoptCommitted()
        cursor = nil
        try fault(.rotationRingsOpened, context)
        return rekeying
    }

    // MARK: Step 2

    /// Re-wraps up to `rotationChunkSize` DEKs still under a previous version, trimming each
    /// bucket whose scan completes. Returns whether there is more to do.
    func rewrapChunk(_ stores: Stores, _ context: OperationContext) throws -> Bool {
        let dbs = stores.ks
        var budget = max(1, context.configuration.rotationChunkSize)
        var more = false
        try stores.write { txn, _ in
            var tenants: [UInt32: ResolvedTenant] = [:]
            for t in try self.tenants(in: txn, dbs: dbs) { tenants[t.number] = t }
            // Rings still holding a previous version, from the cursor on.
            var rings: [([UInt8], BucketRow)] = []
            try txn.forEach(in: dbs.buckets, from: cursor?.bucket) { k, v in
                if v.first == BucketRow.ringFormat { rings.append((Array(k), try BucketRow.decode(v))) }
                return .continue
            }
            for (key, ring) in rings {
                if budget == 0 {
                    more = true
                    cursor = (key, nil)
                    break
                }
                let number: UInt32 = key.withUnsafeBytes { readBE($0, at: 0) }
                let e: UInt64 = key.withUnsafeBytes { readBE($0, at: 4) }
                guard let t = tenants[number] else { continue }  // offboarded meanwhile: its keys are gone
                let after = cursor?.bucket == key ? cursor?.after : nil
                let done = try rewrap(ring, bucket: e, key: key, of: t, after: after, budget: &budget, in: txn, dbs: dbs,
                                      context: context)
                if !done {
                    more = true
                    break
                }
            }
            if !more { cursor = nil }
        }
        context.adoptCommitted()
        summary.rewrapTransactions += 1
        try fault(.rotationChunkCommitted, context)
        return more
    }

    /// Re-wraps the DEKs of one ring's bucket after `after`, within `budget` records; trims the
    /// ring when the bucket is done (returns true). Sets the cursor when the budget runs out.
    private func rewrap(_ ring: BucketRow, bucket e: UInt64, key: [UInt8], of t: ResolvedTenant, after: [UInt8]?,
                        budget: inout Int, in txn: borrowing Transaction, dbs: KeystoreDatabases,
                        context: OperationContext) throws -> Bool {
        let what = "bucket \(e) of tenant \(t.slug)"
        let tenant = ResolvedTenant(slug: t.slug, row: t.row, cache: context.keyCache)
        let root: Key, current: Key
        var previous: [UInt32: Key] = [:]
        do {
            root = try tenant.rootKey(context)
            current = try tenant.bucketKey(e, ring.current, root: root)
            for v in ring.versions.dropLast() { previous[v.number] = try tenant.bucketKey(e, v, root: root) }
        } catch VaultError.integrity(let failure) {
            // Nothing under this ring can be re-wrapped: leave it whole (trimming would lose
            // the DEKs still under the previous version for good).
            note("\(failure): \(what) not re-keyed")
            return true
        }
        var ids: [RecordID] = []
        var last: [UInt8]?
        try txn.forEach(in: dbs.byBucket, from: after.map { key + $0 } ?? key, prefix: key) { k, _ in
            if let after, k.count == 12 + 16, k[12...].elementsEqual(after) { return .continue }
            ids.append(RecordID(bytes: Array(k[12...])))
            return ids.count < budget ? .continue : .stop
        }
        for id in ids {
            last = id.bytes
            budget -= 1
            guard var m = try tenant.meta(id, in: txn, dbs: dbs), m.bucket == e else { continue }
            if m.bucketVersion == ring.current.number { continue }
            guard let from = previous[m.bucketVersion] else {
                note("record \(id): wrapped under bucket key version \(m.bucketVersion), which \(what) no longer holds")
                continue
            }
            do {
                try tenant.rewrapDataKey(id, &m, from: from, toBucket: e, version: ring.current.number, key: current)
            } catch VaultError.integrity(let failure) {
                note("\(failure): record left unreadable")
                continue
            }
            try txn.put(m.encode(), forKey: Layout.recordKey(t.number, id), in: dbs.records)
            summary.recordsRewrapped += 1
        }
        if budget == 0, let last {
            // The budget ran out on this bucket: it may hold more; come back after `last`.
            cursor = (key, last)
            return false
        }
        guard var trimmed = try tenant.bucketRow(e, in: txn, dbs: dbs) else { throw VaultError.corrupt("\(what): its key ring vanished") }
        trimmed.trim()
        try txn.put(trimmed.encode(), forKey: key, in: dbs.buckets)
        return true
    }

    // MARK: Step 3

    /// A new master key generation; every tenant root key renewed under it; the key file
    /// replaced. One small transaction: tenant rows and bucket rings, no record.
    func renewRoots(_ stores: Stores, _ context: OperationContext) throws {
        let dbs = stores.ks
        let state = context.state
        let generation = state.masterGeneration + 1
        let newMaster = try Key.random()
        // The standbys' boxes of the new key, before anything is written (an unreachable journal
        // fails the rotation here, with nothing to undo).
        let carried = try stores.journal.map { try $0.nextMaster(newMaster, generation: generation, current: state.masterKey) }
        try state.masterKeyFile.write(key: newMaster.bytes, generation: generation, to: state.masterKeyFile.nextPath)
        try fault(.rotationNextKeyWritten, context)

        try stores.write(carrying: carried) { txn, rec in
            for t in try tenants(in: txn, dbs: dbs) {
                let root: Key
                do {
                    root = try t.rootKey(context)
                } catch VaultError.integrity(let failure) {
                    note("\(failure): tenant \(t.slug) not renewed; its data cannot be read")
                    continue
                }
                let newRoot = try Key.random()
                let newGeneration = t.row.trkGeneration + 1
                var renewed = t.row
                renewed.trkGeneration = newGeneration
                do {
                    let sbk = try t.blindingKey(root: root)
                    renewed.wrappedSBK = try KeyHierarchy.wrap(sbk.bytes, under: newRoot.bytes,
                                                               ad: KeyHierarchy.sbkAD(tenant: t.number, trkGeneration: newGeneration))
                } catch VaultError.integrity(let failure) {
                    note("\(failure): left as it is")
                }
                let prefix = Layout.tenantKey(t.number)
                var rows: [([UInt8], UInt64, BucketRow)] = []
                try txn.forEach(in: dbs.buckets, from: prefix, prefix: prefix) { k, v in
                    rows.append((Array(k), readBE(k, at: 4), try BucketRow.decode(v)))
                    return .continue
                }
                for (key, e, row) in rows {
                    var ring = row
                    try ring.rewrapVersions { v in
                        do {
                            let bk = try t.bucketKey(e, v, root: root)
                            return try KeyHierarchy.wrap(
                                bk.bytes, under: newRoot.bytes,
                                ad: KeyHierarchy.bkAD(tenant: t.number, bucket: e, version: v.number, trkGeneration: newGeneration))
                        } catch VaultError.integrity(let failure) {
                            note("\(failure): left as it is")
                            return v.wrappedBK
                        }
                    }
                    try txn.put(ring.encode(), forKey: key, in: dbs.buckets)
                }
                renewed.wrappedTRK = try KeyHierarchy.wrap(
                    newRoot.bytes, under: newMaster.bytes,
                    ad: KeyHierarchy.trkAD(slug: t.slug, tenant: t.number, mkGeneration: generation, trkGeneration: newGeneration))
                try txn.put(renewed.encode(), forKey: Array(t.slug.utf8), in: dbs.tenants)
                summary.tenantsRenewed += 1
            }
            try txn.put(try Vault.masterCheck(key: newMaster, generation: generation), forKey: Vault.metaMasterKey, in: dbs.meta)
            if let blob = try txn.value(forKey: Vault.metaTokenKey, in: dbs.meta) {
                let tokenKey = try Vault.unwrapTokenKey(blob, master: state.masterKey, generation: state.masterGeneration)
                try txn.put(try Vault.wrapTokenKey(tokenKey, master: newMaster, generation: generation),
                            forKey: Vault.metaTokenKey, in: dbs.meta)
            }
            try AuditLog.append(.init(tenant: nil, actor: actor, action: "rotate", target: nil,
                                      count: UInt64(summary.recordsRewrapped)), in: txn, rec, dbs: dbs, context: context)
        }
        // Committed: from here the keystore is wrapped under the new generation.
        context.adoptCommitted()
        context.keyCache.removeAll()
        state.masterKey = newMaster
        state.masterGeneration = generation
        summary.masterGeneration = generation
        try fault(.rotationKeystoreCommitted, context)
        try state.masterKeyFile.promoteNext()
        try fault(.rotationKeyPromoted, context)
    }

    // MARK: Step 4

    func compact(_ stores: Stores, _ context: OperationContext) throws {
        try Compaction(stores: stores, configuration: context.configuration).run()
        summary.keystoreBytesAfter = Compaction.fileSize(stores.keystore.path + "/data.mdb")
        Self.returnFreedMemory()
    }

    /// glibc's `malloc_trim(0)` (through CVaultSystem: malloc.h does not import into Swift); a no-op
    /// off Linux.
    static func returnFreedMemory() {
        _ = shredvault_malloc_trim()
    }
}

extension Vault {
    /// Rotates the key hierarchy and compacts the keystore (docs/architecture.md, Rotate). After it,
    /// no key reachable from the current master key opens anything erased or expired before.
    ///
    /// The steps run as separate exclusive operations of the writer, so writes and reads go on
    /// between them; rotations run one at a time.
    public func rotate(actor: Actor = Actor("system:rotation")) async throws -> RotationSummary {
        try await maintenance.run {
            let rotation = Rotation(actor: actor)
            for _ in 0..<2 {
                guard try await performExclusive({ stores, context in try rotation.openRings(stores, context) }) else { break }
                while try await performExclusive({ stores, context in try rotation.rewrapChunk(stores, context) }) {}
            }
            try await performExclusive { stores, context in try rotation.renewRoots(stores, context) }
            try await performExclusive { stores, context in try rotation.compact(stores, context) }
            if hasJournal {
                // The new epoch starts with a snapshot under the new generation; the journal
                // before it (sealed under the old one) goes.
                _ = try await takeSnapshot()
            }
            return rotation.summary
        }
    }

    /// Compacts the keystore alone (`mdb_env_copy2` with compaction, then a swap).
    public func compact() async throws -> (before: Int, after: Int) {
        let sizes: [Int] = try await maintenance.run {
            try await self.performExclusive { stores, context in
                let before = Compaction.fileSize(stores.keystore.path + "/data.mdb")
                try Compaction(stores: stores, configuration: context.configuration).run()
                return [before, Compaction.fileSize(stores.keystore.path + "/data.mdb")]
            }
        }
        return (sizes[0], sizes[1])
    }
}
