import LMDB
public import Sodium

/// A record to write.
public struct NewRecord: Sendable {
    public var subject: Subject
    public var category: DataCategory
    public var channel: Channel
    /// The record's payload (JSON bytes as the client sent them); wiped when released.
    public var data: SensitiveBytes
    /// A retention shorter than the tenant's policy for this record (seconds), or nil.
    public var retentionSeconds: Int64?

    public init(subject: Subject, category: DataCategory, channel: Channel, data: SensitiveBytes,
                retentionSeconds: Int64? = nil) {
        self.subject = subject
        self.category = category
        self.channel = channel
        self.data = data
        self.retentionSeconds = retentionSeconds
    }
}

/// What a write or correction returns.
public struct RecordReceipt: Sendable, Equatable {
    public let id: RecordID
    public let createdAt: Int64
    public let expiresAt: Int64
    public let version: UInt32
}

/// A decrypted record. Its subject and data live in buffers wiped on release.
public struct OpenedRecord: Sendable {
    public let id: RecordID
    public let subject: SensitiveBytes
    public let category: DataCategory
    public let channel: Channel
    public let createdAt: Int64
    public let expiresAt: Int64
    public let version: UInt32
    public let data: SensitiveBytes
}

/// The sealed record format: format byte || XChaCha20-Poly1305 box of the plaintext
/// `[format][subject length u16][subject][data]`, AD binding tenant, id, version and the
/// metadata digest.
enum SealedRecord {
    static let format: UInt8 = 1
    static let plaintextFormat: UInt8 = 1

    static func seal(subject: SensitiveBytes, data: SensitiveBytes, dek: borrowing SecretBytes, ad: [UInt8]) throws -> [UInt8] {
        let plaintext = SensitiveBytes(count: 3 + subject.count + data.count) { out in
            out[0] = plaintextFormat
            out[1] = UInt8(subject.count >> 8)
            out[2] = UInt8(subject.count & 0xFF)
            subject.withUnsafeBytes { UnsafeMutableRawBufferPointer(rebasing: out[3..<3 + subject.count]).copyMemory(from: $0) }
            data.withUnsafeBytes { UnsafeMutableRawBufferPointer(rebasing: out[(3 + subject.count)...]).copyMemory(from: $0) }
        }
        var sealed = [UInt8](repeating: 0, count: 1 + AEAD.sealedCount(plaintextCount: plaintext.count))
        sealed[0] = format
        try sealed.withUnsafeMutableBytes { out in
            try plaintext.withUnsafeBytes { p in
                try ad.withUnsafeBytes { a in
                    try AEAD.seal(p, key: dek, associatedData: a, into: UnsafeMutableRawBufferPointer(rebasing: out[1...]))
                }
            }
        }
        return sealed
    }

    /// Opens a sealed record; returns (subject, data) in wiped buffers.
    static func open(_ sealed: UnsafeRawBufferPointer, dek: borrowing SecretBytes, ad: [UInt8], what: String) throws -> (SensitiveBytes, SensitiveBytes) {
        guard sealed.count >= 1 + AEAD.overhead + 3, sealed[0] == format else {
            throw VaultError.integrity("\(what): not a sealed record")
        }
        let box = UnsafeRawBufferPointer(rebasing: sealed[1...])
        do {
            let plaintext = try SensitiveBytes(count: box.count - AEAD.overhead) { out in
                try ad.withUnsafeBytes { a in try AEAD.open(box, key: dek, associatedData: a, into: out) }
            }
            return try plaintext.withUnsafeBytes { p in
                guard p[0] == plaintextFormat else { throw VaultError.corrupt("\(what): plaintext format \(p[0])") }
                let n = Int(p[1]) << 8 | Int(p[2])
                guard 3 + n <= p.count else { throw VaultError.corrupt("\(what): bad subject length") }
                return (SensitiveBytes(copying: UnsafeRawBufferPointer(rebasing: p[3..<3 + n])),
                        SensitiveBytes(copying: UnsafeRawBufferPointer(rebasing: p[(3 + n)...])))
            }
        } catch SodiumError.authenticationFailure {
            throw VaultError.integrity("\(what) failed authentication")
        }
    }
}

/// Record operations inside a transaction, shared by every lifecycle.
extension ResolvedTenant {
    func meta(_ id: RecordID, in txn: borrowing Transaction, dbs: KeystoreDatabases) throws -> RecordMeta? {
        do {
            return try txn.withValue(forKey: Layout.recordKey(number, id), in: dbs.records) { b in try b.map(RecordMeta.decode) }
        } catch VaultError.corrupt(let reason) {
            throw VaultError.corrupt("record \(id): \(reason)")
        }
    }

    /// Whether a legal hold keeps this record: a hold on the record or on its subject that
    /// was placed before the record expired. A hold placed later cannot bring an expired
    /// record back (reads refuse at `expires_at`, held or not).
    func isHeld(_ id: RecordID, tag: [UInt8], expiresAt: Int64, in txn: borrowing Transaction, dbs: KeystoreDatabases) throws -> Bool {
        for key in [heldKey(.record, id.bytes), heldKey(.subject, tag)] {
            if let held = try HeldTarget.load(key, in: txn, dbs: dbs), held.since < expiresAt { return true }
        }
        return false
    }

    func hasHolds(in txn: borrowing Transaction, dbs: KeystoreDatabases) throws -> Bool {
        var any = false
        try txn.forEach(in: dbs.heldTargets, from: Layout.tenantKey(number), prefix: Layout.tenantKey(number)) { _, _ in
            any = true
            return .stop
        }
        return any
    }

    /// The record's metadata if it is readable now: present, and not past `expires_at`
    /// unless a legal hold keeps it.
    func live(_ id: RecordID, now: Int64, in txn: borrowing Transaction, dbs: KeystoreDatabases) throws -> RecordMeta? {
        guard let m = try meta(id, in: txn, dbs: dbs) else { return nil }
        if now >= m.expiresAt, try !isHeld(id, tag: m.tag, expiresAt: m.expiresAt, in: txn, dbs: dbs) { return nil }
        return m
    }

    /// The associated data of a record's wrapped DEK under bucket `e` version `v`.
    func dekAD(_ id: RecordID, _ m: RecordMeta, bucket e: UInt64, bucketVersion v: UInt32) -> [UInt8] {
        KeyHierarchy.dekAD(tenant: number, id: id, version: m.version, bucket: e, bucketVersion: v)
    }

    /// Lends the record's DEK (unwrapped into the cache's scratch buffer when there is a
    /// cache), opened under `bucketKey`, the key of the bucket version it is wrapped under.
    func withDataKey<R>(_ id: RecordID, _ m: RecordMeta, bucketKey: Key, _ body: (borrowing SecretBytes) throws -> R) throws -> R {
        let ad = dekAD(id, m, bucket: m.bucket, bucketVersion: m.bucketVersion)
        if let cache {
            return try cache.withUnwrapped(m.wrappedDEK, under: bucketKey.bytes, ad: ad, what: "data key of record \(id)", body)
        }
        let dek = try KeyHierarchy.unwrap(m.wrappedDEK, under: bucketKey.bytes, ad: ad, what: "data key of record \(id)")
        return try body(dek.bytes)
    }

    /// Lends the record's DEK, through the version of its bucket's key ring it is wrapped
    /// under; nil when its bucket key is gone (expired).
    func withDataKey<R>(_ id: RecordID, _ m: RecordMeta, root: Key, in txn: borrowing Transaction, dbs: KeystoreDatabases,
                        _ body: (borrowing SecretBytes) throws -> R) throws -> R? {
        guard let bk = try bucketKey(m.bucket, version: m.bucketVersion, for: id, root: root, in: txn, dbs: dbs) else {
            return nil
        }
        return try withDataKey(id, m, bucketKey: bk, body)
    }

    /// The one re-wrap step (rotation re-keying a bucket, the sweep moving a held record into
    /// the holding bucket): opens the DEK under `from`, the key of the version it is wrapped
    /// under now, and wraps it under `key`, version `version` of bucket `bucket`. Updates `m`;
    /// the caller stores it (and moves the bucket index entry when the bucket changes).
    func rewrapDataKey(_ id: RecordID, _ m: inout RecordMeta, from: Key, toBucket bucket: UInt64, version: UInt32,
                       key: Key) throws {
        let newAD = dekAD(id, m, bucket: bucket, bucketVersion: version)
        let wrapped = try withDataKey(id, m, bucketKey: from) { dek in try KeyHierarchy.wrap(dek, under: key.bytes, ad: newAD) }
        m.bucket = bucket
        m.bucketVersion = version
        m.wrappedDEK = wrapped
    }

    /// Decrypts a live record.
    func open(_ id: RecordID, _ m: RecordMeta, root: Key, keystore: borrowing Transaction, records: borrowing Transaction,
              dbs: KeystoreDatabases, ciphertexts: Database) throws -> OpenedRecord? {
        let ad = KeyHierarchy.recordAD(tenant: number, id: id, version: m.version, digest: m.digest(tenant: number, id: id))
        let key = Layout.ciphertextKey(number, id, m.version)
        let opened = try withDataKey(id, m, root: root, in: keystore, dbs: dbs) { dek in
            try records.withValue(forKey: key, in: ciphertexts) { b in
                guard let b else { throw VaultError.integrity("record \(id): ciphertext v\(m.version) is missing") }
                return try SealedRecord.open(b, dek: dek, ad: ad, what: "record \(id)")
            }
        }
        guard let (subject, data) = opened else { return nil }
        return OpenedRecord(id: id, subject: subject, category: m.category, channel: m.channel, createdAt: m.createdAt,
                            expiresAt: m.expiresAt, version: m.version, data: data)
    }

    /// Removes every entry of a record and queues its ciphertext for deletion after the
    /// keystore commit; marks its bucket dirty so the next rotation re-keys it.
    func destroy(_ id: RecordID, _ m: RecordMeta, in txn: borrowing Transaction, dbs: KeystoreDatabases,
                 context: OperationContext) throws {
        try txn.delete(key: Layout.recordKey(number, id), in: dbs.records)
        try txn.delete(key: Layout.subjectKey(number, m.tag, id), in: dbs.subjects)
        try txn.delete(key: Layout.byBucketKey(number, m.bucket, id), in: dbs.byBucket)
        try markDirty(m.bucket, in: txn, dbs: dbs)
        context.ciphertextDeletes.append(Layout.ciphertextKey(number, id, m.version))
    }

    /// Seals and stores a record version: ciphertext into the record store, wrapped DEK
    /// into the keystore (put last: the record exists once its wrapped DEK does).
    func store(_ id: RecordID, meta m: inout RecordMeta, subject: SensitiveBytes, data: SensitiveBytes, root: Key,
               keystore: borrowing Transaction, records: borrowing Transaction, dbs: KeystoreDatabases,
               ciphertexts: Database) throws {
        let (bucketVersion, bk) = try bucketCreatingIfNeeded(m.bucket, root: root, in: keystore, dbs: dbs)
        m.bucketVersion = bucketVersion
        let ad = KeyHierarchy.recordAD(tenant: number, id: id, version: m.version, digest: m.digest(tenant: number, id: id))
        let dekAD = KeyHierarchy.dekAD(tenant: number, id: id, version: m.version, bucket: m.bucket, bucketVersion: m.bucketVersion)
        let seal = { (dek: borrowing SecretBytes) throws -> ([UInt8], [UInt8]) in
            (try SealedRecord.seal(subject: subject, data: data, dek: dek, ad: ad),
             try KeyHierarchy.wrap(dek, under: bk.bytes, ad: dekAD))
        }
        let (sealed, wrapped): ([UInt8], [UInt8])
        if let cache {
            (sealed, wrapped) = try cache.withFreshKey(seal)
        } else {
            let dek = try Key.random()
            (sealed, wrapped) = try seal(dek.bytes)
        }
        m.ciphertextCount = UInt32(sealed.count)
        try records.put(sealed, forKey: Layout.ciphertextKey(number, id, m.version), in: ciphertexts)
        m.wrappedDEK = wrapped
        try keystore.put(m.encode(), forKey: Layout.recordKey(number, id), in: dbs.records)
    }
}

extension Vault {
    /// Writes a record: a fresh DEK seals it, the DEK is wrapped under the bucket key of
    /// its expiry time, and the write is audited in the same transaction.
    public func write(_ record: NewRecord, tenant: TenantID, actor: Actor) async throws -> RecordReceipt {
        try await perform { ks, rec, context in
            try self.writeRecord(record, tenant: tenant, actor: actor, keystore: ks, records: rec, context: context)
        }
    }

    /// Writes many records as one request: each succeeds or fails alone (in order). The
    /// whole request is one operation of the writer (one hop, one batch).
    ///
    /// On the writer's fast path the records are written straight into the batch's
    /// transactions: a record refused before it wrote anything (retention, arguments) fails
    /// alone, and any failure after its first write fails the attempt, which the writer then
    /// runs again isolated. Isolated, each record runs in its own nested transactions, so a
    /// failing record rolls back alone. (A nested transaction copies every page it touches
    /// that its parent has already dirtied: one per record cost ~20 pages of copying, the
    /// largest part of a batch's writer time.)
    public func writeBatch(_ records: [NewRecord], tenant: TenantID, actor: Actor) async -> [Result<RecordReceipt, VaultError>] {
        guard !records.isEmpty else { return [] }
        do {
            return try await perform { ks, rec, context in
                guard context.isolated else {
                    var results: [Result<RecordReceipt, VaultError>] = []
                    results.reserveCapacity(records.count)
                    for record in records {
                        do {
                            results.append(.success(try self.writeRecord(record, tenant: tenant, actor: actor, keystore: ks,
                                                                         records: rec, context: context)))
                        } catch let refused as NothingWritten {
                            results.append(.failure(refused.error))
                        }
                    }
                    return results
                }
                return records.map { record in
                    let mark = context.mark()
                    do {
                        return .success(try ks.withChild { ksChild in
                            try rec.withChild { recChild in
                                try self.writeRecord(record, tenant: tenant, actor: actor, keystore: ksChild,
                                                     records: recChild, context: context)
                            }
                        })
                    } catch {
                        context.rollback(to: mark)
                        return .failure(VaultError.mapping(error))
                    }
                }
            }
        } catch {
            let failure = VaultError.mapping(error)
            return records.map { _ in .failure(failure) }
        }
    }

    /// Writes one record into the given transactions. Everything that can refuse it is
    /// checked before its first write and thrown as `NothingWritten`.
    func writeRecord(_ record: NewRecord, tenant: TenantID, actor: Actor, keystore ks: borrowing Transaction,
                     records rec: borrowing Transaction, context: OperationContext) throws -> RecordReceipt {
        let dbs = writer.stores.ks
        let now = context.now
        let t: ResolvedTenant
        let root: Key
        let expiresAt: Int64
        let tag: [UInt8]
        do {
            t = try ResolvedTenant.load(tenant, in: ks, dbs: dbs, cache: context.keyCache)
            let allowed = try Retention.effectiveSeconds(for: record.category, tenant: t, now: now, in: ks, dbs: dbs)
            var retention = allowed
            if let asked = record.retentionSeconds {
                guard asked > 0 else { throw VaultError.invalidArgument("retention must be positive") }
                guard asked <= allowed else {
                    throw VaultError.refused("retention \(ISODuration.format(seconds: asked)) is longer than the policy allows (\(ISODuration.format(seconds: allowed)))")
                }
                retention = asked
            }
            let (at, overflow) = now.addingReportingOverflow(retention.multipliedReportingOverflow(by: 1000).partialValue)
            guard !overflow, retention <= ISODuration.maximumSeconds else {
                throw VaultError.invalidArgument("retention is longer than \(ISODuration.format(seconds: ISODuration.maximumSeconds))")
            }
            expiresAt = at
            root = try t.rootKey(context)
            tag = try t.tag(of: record.subject, root: root)
        } catch {
            throw NothingWritten(error: VaultError.mapping(error))
        }
        let id = RecordID.generate(milliseconds: now)
        var m = RecordMeta(category: record.category, channel: record.channel, createdAt: now, expiresAt: expiresAt,
                           version: 1, tag: tag,
                           bucket: Retention.bucket(of: expiresAt, width: context.configuration.bucketWidthSeconds),
                           bucketVersion: 0, ciphertextCount: 0, wrappedDEK: [])
        try t.store(id, meta: &m, subject: record.subject.bytes, data: record.data, root: root,
                    keystore: ks, records: rec, dbs: dbs, ciphertexts: writer.stores.rec)
        try ks.put([], forKey: Layout.subjectKey(t.number, m.tag, id), in: dbs.subjects)
        try ks.put([], forKey: Layout.byBucketKey(t.number, m.bucket, id), in: dbs.byBucket)
        try AuditLog.append(.init(tenant: t.auditTenant, actor: actor, action: "record.write", target: "record:\(id)"),
                            in: ks, rec, dbs: dbs, context: context)
        return RecordReceipt(id: id, createdAt: now, expiresAt: expiresAt, version: 1)
    }

    /// Reads a record. Unknown, other tenant's, expired and erased ids all throw
    /// `.notFound` alike; the attempt is audited either way.
    public func read(_ id: RecordID, tenant: TenantID, actor: Actor) async throws -> OpenedRecord {
        try await perform { ks, rec, context in
            let dbs = self.writer.stores.ks
            let t = try ResolvedTenant.load(tenant, in: ks, dbs: dbs, cache: context.keyCache)
            var event = AuditLog.Event(tenant: t.auditTenant, actor: actor, action: "record.read", target: "record:\(id)")
            guard let m = try t.live(id, now: context.now, in: ks, dbs: dbs) else {
                event.outcome = "not_found"
                try AuditLog.append(event, in: ks, rec, dbs: dbs, context: context)
                throw AuditedRefusal(error: .notFound)
            }
            // Only the sweep destroys a bucket key, once every record under it has expired:
            // a live record without one is damage, not an expiry (TamperTests).
            guard let opened = try t.open(id, m, root: try t.rootKey(context), keystore: ks, records: rec, dbs: dbs,
                                          ciphertexts: self.writer.stores.rec)
            else { throw VaultError.integrity("record \(id): its bucket key is gone while the record is live") }
            try AuditLog.append(event, in: ks, rec, dbs: dbs, context: context)
            return opened
        }
    }

    /// Corrects a record: a new version under a new DEK replaces it; the old DEK is
    /// destroyed and the old ciphertext deleted. Refused while a legal hold covers it.
    public func correct(_ id: RecordID, data: SensitiveBytes, tenant: TenantID, actor: Actor) async throws -> RecordReceipt {
        try await perform { ks, rec, context in
            let dbs = self.writer.stores.ks
            let t = try ResolvedTenant.load(tenant, in: ks, dbs: dbs, cache: context.keyCache)
            let event = AuditLog.Event(tenant: t.auditTenant, actor: actor, action: "record.correct", target: "record:\(id)")
            let old = try t.changeable(id, event: event, in: ks, rec, dbs: dbs, context: context)
            let root = try t.rootKey(context)
            guard let opened = try t.open(id, old, root: root, keystore: ks, records: rec, dbs: dbs,
                                          ciphertexts: self.writer.stores.rec)
            else { throw VaultError.integrity("record \(id): its bucket key is gone while the record is live") }
            var m = old
            m.version = old.version + 1
            try t.store(id, meta: &m, subject: opened.subject, data: data, root: root, keystore: ks, records: rec,
                        dbs: dbs, ciphertexts: self.writer.stores.rec)
            try t.markDirty(old.bucket, in: ks, dbs: dbs)
            context.ciphertextDeletes.append(Layout.ciphertextKey(t.number, id, old.version))
            try AuditLog.append(event, in: ks, rec, dbs: dbs, context: context)
            return RecordReceipt(id: id, createdAt: m.createdAt, expiresAt: m.expiresAt, version: m.version)
        }
    }

    /// Deletes a record (the client's instruction). Refused while a legal hold covers it.
    public func delete(_ id: RecordID, tenant: TenantID, actor: Actor) async throws {
        try await perform { ks, rec, context in
            let dbs = self.writer.stores.ks
            let t = try ResolvedTenant.load(tenant, in: ks, dbs: dbs, cache: context.keyCache)
            let event = AuditLog.Event(tenant: t.auditTenant, actor: actor, action: "record.delete", target: "record:\(id)")
            let m = try t.changeable(id, event: event, in: ks, rec, dbs: dbs, context: context)
            try t.destroy(id, m, in: ks, dbs: dbs, context: context)
            try AuditLog.append(event, in: ks, rec, dbs: dbs, context: context)
        }
    }

    /// A subject's live records, decrypted. With `export`, audited as a disclosure.
    public func records(of subject: Subject, tenant: TenantID, actor: Actor, export: Bool = false) async throws -> [OpenedRecord] {
        try await perform { ks, rec, context in
            let dbs = self.writer.stores.ks
            let t = try ResolvedTenant.load(tenant, in: ks, dbs: dbs, cache: context.keyCache)
            let root = try t.rootKey(context)
            let tag = try t.tag(of: subject, root: root)
            var out: [OpenedRecord] = []
            for id in try t.recordIDs(tag: tag, in: ks, dbs: dbs) {
                guard let m = try t.live(id, now: context.now, in: ks, dbs: dbs) else { continue }
                // The index is not authenticated; the tag in the metadata is (it is bound into
                // the ciphertext's AD): never list another subject's record under this one.
                guard m.tag == tag else {
                    throw VaultError.integrity("record \(id): the subject index lists it under another subject")
                }
                guard let r = try t.open(id, m, root: root, keystore: ks, records: rec, dbs: dbs,
                                         ciphertexts: self.writer.stores.rec) else { continue }
                out.append(r)
            }
            try AuditLog.append(.init(tenant: t.auditTenant, actor: actor, action: export ? "subject.export" : "subject.list",
                                      target: "subject:\(tag.hex)", count: UInt64(out.count)),
                                in: ks, rec, dbs: dbs, context: context)
            return out
        }
    }
}

extension ResolvedTenant {
    /// The metadata of a record about to be changed (corrected, deleted). An unknown or
    /// expired record, or one a legal hold covers, is refused, and the refusal is audited
    /// under `event`.
    func changeable(_ id: RecordID, event: AuditLog.Event, in ks: borrowing Transaction, _ rec: borrowing Transaction,
                    dbs: KeystoreDatabases, context: OperationContext) throws -> RecordMeta {
        var refusal = event
        guard let m = try live(id, now: context.now, in: ks, dbs: dbs) else {
            refusal.outcome = "not_found"
            try AuditLog.append(refusal, in: ks, rec, dbs: dbs, context: context)
            throw AuditedRefusal(error: .notFound)
        }
        if try isHeld(id, tag: m.tag, expiresAt: m.expiresAt, in: ks, dbs: dbs) {
            refusal.outcome = "refused:legal_hold"
            try AuditLog.append(refusal, in: ks, rec, dbs: dbs, context: context)
            throw AuditedRefusal(error: .legalHold("record \(id) is under a legal hold"))
        }
        return m
    }

    func recordIDs(tag: [UInt8], in txn: borrowing Transaction, dbs: KeystoreDatabases) throws -> [RecordID] {
        var ids: [RecordID] = []
        let prefix = Layout.subjectPrefix(number, tag)
        try txn.forEach(in: dbs.subjects, from: prefix, prefix: prefix) { k, _ in
            ids.append(RecordID(bytes: Array(k[(4 + 16)...])))
            return .continue
        }
        return ids
    }
}
