import LMDB
import Sodium

/// The last entry of the chain: its sequence number and hash.
struct AuditHead: Equatable {
    var seq: UInt64
    var hash: [UInt8]
    static let genesis = AuditHead(seq: 0, hash: [UInt8](repeating: 0, count: 32))

    func encode() -> [UInt8] { [1] + .be(seq) + hash }
    static func decode(_ b: UnsafeRawBufferPointer) throws -> AuditHead {
        var r = ByteReader(b, what: "audit head")
        try r.format(1)
        let h = AuditHead(seq: try r.u64(), hash: try r.raw(32))
        try r.end()
        return h
    }
}

/// One audit entry (docs/architecture.md, Audit). Never holds a subject, payload, token or key
/// byte: targets are record ids, subject *tags*, hold or extension ids.
///
/// Two views read entries. The chain view (the operator's, and verification) numbers them
/// by their place in the vault-wide chain and carries `prev`. A tenant's view numbers its
/// own entries 1, 2, 3... in the tenant's own sequence and carries no `prev`: the chain's
/// numbering and links count and order every other tenant's operations (docs/architecture.md, Roles
/// and isolation).
public struct AuditEntry: Sendable, Equatable {
    /// The chain's sequence number in the chain view; the tenant's own sequence number in a
    /// tenant's view.
    public let seq: UInt64
    public let at: Int64
    public let tenant: String?
    public let actor: String
    public let action: String
    public let target: String?
    public let outcome: String
    public let count: UInt64
    public let reference: String?
    /// The previous entry's hash in the chain view; empty in a tenant's view.
    public let prev: [UInt8]
    /// The entry's chain hash, in both views: it commits to the entry and, through `prev`, to
    /// the chain before it, and reveals neither (format 2 entries hash a random nonce, so a
    /// tenant that knows every field of its entry cannot recompute the hash either).
    public let hash: [UInt8]

    public var hashHex: String { hash.hex }

    /// Format 1: the fields. Format 2 (written since tenant-local numbering): the fields and a
    /// 16-byte random nonce, the last thing the hash covers. Both verify the same way.
    static let formatV1: UInt8 = 1
    static let format: UInt8 = 2
    static let nonceCount = 16

    /// The canonical bytes the hash covers (with `prev` in front): format 2 with a `nonce`,
    /// format 1 (as written before nonces) without.
    ///
    /// The nonce keeps the hash opaque to a tenant. Without it a tenant knows every field of
    /// its own entry but the chain's `seq` and `prev`; when its two entries are adjacent in the
    /// chain, `prev` is the hash it was shown for the first, and trying candidate sequence
    /// numbers until the hash matches would tell it that nothing happened in between and how
    /// many operations the whole vault had audited.
    static func canonical(seq: UInt64, at: Int64, tenant: String?, actor: String, action: String,
                          target: String?, outcome: String, count: UInt64, reference: String?,
                          nonce: [UInt8]? = nil) -> [UInt8] {
        precondition(nonce == nil || nonce!.count == nonceCount)
        var w = ByteWriter(capacity: 128)
        w.u8(nonce == nil ? formatV1 : format)
        w.u64(seq)
        w.i64(at)
        w.string(tenant ?? "")
        w.string(actor)
        w.string(action)
        w.string(target ?? "")
        w.string(outcome)
        w.u64(count)
        w.string(reference ?? "")
        if let nonce { w.raw(nonce) }
        return w.bytes
    }

    /// The bytes of the entry's leaf in a transparency log: the entry as its reader is shown
    /// it (`GET /v1/audit`), so a reader recomputes the leaf from what it was given. Format 1:
    /// `u8 1 | u64 seq | i64 at (ms) | str tenant | str actor | str action | str target |
    /// str outcome | u64 count | str reference | 32-byte hash`, `str` being a u16 big-endian
    /// length and UTF-8, empty when absent; `seq` is the tenant's own number in a tenant's log
    /// and the chain's in the operator's, which shows neither targets nor references.
    /// docs/api.md spells it out for verifiers; `scripts/verify-audit` implements it. Written
    /// out apart from `canonical` on purpose: the stored entry's format may change, the leaf's
    /// is a contract with every verifier a client company wrote.
    static func leaf(seq: UInt64, at: Int64, tenant: String?, actor: String, action: String, target: String?,
                     outcome: String, count: UInt64, reference: String?, hash: [UInt8]) -> [UInt8] {
        var w = ByteWriter(capacity: 160)
        w.u8(1)
        w.u64(seq)
        w.i64(at)
        w.string(tenant ?? "")
        w.string(actor)
        w.string(action)
        w.string(target ?? "")
        w.string(outcome)
        w.u64(count)
        w.string(reference ?? "")
        w.raw(hash)
        return w.bytes
    }

    static func decode(_ b: UnsafeRawBufferPointer) throws -> (entry: AuditEntry, canonical: [UInt8]) {
        var r = ByteReader(b, what: "audit entry")
        let version = try r.u8()
        guard version == formatV1 || version == format else {
            throw VaultError.corrupt("audit entry: format version \(version) is not supported")
        }
        let seq = try r.u64(), at = try r.i64()
        let tenant = try r.string(), actor = try r.string(), action = try r.string()
        let target = try r.string(), outcome = try r.string(), count = try r.u64(), reference = try r.string()
        if version == format { _ = try r.raw(nonceCount) }
        let canonicalCount = r.offset
        let prev = try r.raw(32), hash = try r.raw(32)
        try r.end()
        let entry = AuditEntry(seq: seq, at: at, tenant: tenant.isEmpty ? nil : tenant, actor: actor, action: action,
                               target: target.isEmpty ? nil : target, outcome: outcome, count: count,
                               reference: reference.isEmpty ? nil : reference, prev: prev, hash: hash)
        return (entry, Array(b[0..<canonicalCount]))
    }
}

/// The result of recomputing the chain.
public struct AuditVerification: Sendable, Equatable {
    public let entries: UInt64
    /// The first entry that does not verify, or nil when the whole chain does.
    public let firstBroken: UInt64?
    public let reason: String?
    public var isIntact: Bool { firstBroken == nil }
}

/// Appends and verifies the hash chain. Appends happen inside the write transaction of
/// the operation they record, so an operation and its entry commit (or vanish) together.
///
/// Each tenant's entries are also numbered in the tenant's own sequence: the tenant index
/// (`audit_by_tenant`) maps `t|tenant seq` to the chain's seq (u64). Vaults written before
/// that keyed the index by the chain's seq with an empty value; a tenant's index is
/// rewritten in place the first time the tenant's log is appended to or read.
enum AuditLog {
    static let headKey = Array("audit_head".utf8)

    /// Where an appended entry sits: the new head of the chain and, for a tenant's entry, its
    /// number in the tenant's own sequence (what the tenant is shown).
    struct Appended {
        let head: AuditHead
        let tenantSeq: UInt64?
    }

    struct Event {
        var tenant: (slug: String, number: UInt32)?
        var actor: Actor
        var action: String
        var target: String?
        var outcome: String = "ok"
        var count: UInt64 = 0
        var reference: String? = nil
    }

    @discardableResult
    static func append(_ event: Event, in txn: borrowing Transaction, dbs: KeystoreDatabases,
                       context: OperationContext) throws -> Appended {
        let seq = context.auditHead.seq + 1
        // Read once: the clock moves, and the entry and its leaves must carry the same time.
        let at = context.now
        let canonical = AuditEntry.canonical(
            seq: seq, at: at, tenant: event.tenant?.slug, actor: event.actor.id, action: event.action,
            target: event.target, outcome: event.outcome, count: event.count, reference: event.reference,
            nonce: Random.bytes(count: AuditEntry.nonceCount))
        let prev = context.auditHead.hash
        let hash = KeyedHash.hash(prev + canonical, outputCount: 32)
        try txn.put(canonical + prev + hash, forKey: Layout.auditKey(seq), in: dbs.audit, flags: .append)
        var tenantSeq: UInt64?
        if let t = event.tenant {
            let local = try lastTenantSeq(t.number, in: txn, dbs: dbs) + 1
            try txn.put(.be(seq), forKey: Layout.auditByTenantKey(t.number, local), in: dbs.auditByTenant)
            tenantSeq = local
        }
        // The transparency logs: the operator's view of the entry, and the tenant's.
        try AuditTree.append(leaf: AuditEntry.leaf(seq: seq, at: at, tenant: event.tenant?.slug, actor: event.actor.id,
                                                   action: event.action, target: nil, outcome: event.outcome,
                                                   count: event.count, reference: nil, hash: hash),
                             index: seq - 1, log: AuditTree.operatorLog, in: txn, db: dbs.auditTree)
        if let t = event.tenant, let tenantSeq {
            try AuditTree.append(leaf: AuditEntry.leaf(seq: tenantSeq, at: at, tenant: t.slug, actor: event.actor.id,
                                                       action: event.action, target: event.target, outcome: event.outcome,
                                                       count: event.count, reference: event.reference, hash: hash),
                                 index: tenantSeq - 1, log: t.number, in: txn, db: dbs.auditTree)
        }
        let head = AuditHead(seq: seq, hash: hash)
        // The head anchors the tail: deleting the newest entries is detected too.
        try txn.put(head.encode(), forKey: headKey, in: dbs.meta)
        context.auditHead = head
        return Appended(head: head, tenantSeq: tenantSeq)
    }

    /// The tenant's last own sequence number (0 before its first entry). Rewrites an index
    /// written before tenant-local numbering first (`txn` must be a write transaction then).
    static func lastTenantSeq(_ t: UInt32, in txn: borrowing Transaction, dbs: KeystoreDatabases) throws -> UInt64 {
        var last: (local: UInt64, legacy: Bool)?
        try txn.forEachReversed(in: dbs.auditByTenant, prefix: Layout.tenantKey(t)) { k, v in
            guard k.count == 12, v.count == 8 || v.isEmpty else {
                throw VaultError.corrupt("audit tenant index: entry of \(k.count) + \(v.count) bytes")
            }
            last = (readBE(k, at: 4), v.isEmpty)
            return .stop
        }
        guard let last else { return 0 }
        return last.legacy ? try renumberLegacyIndex(t, in: txn, dbs: dbs) : last.local
    }

    /// Rewrites a tenant's index from `t|chain seq → ""` to `t|tenant seq → chain seq`, in
    /// chain order, and answers the number of entries. In place and in chunks: the i-th entry's
    /// chain seq is at least i, so a new key never lands on an old key still to be moved.
    private static func renumberLegacyIndex(_ t: UInt32, in txn: borrowing Transaction,
                                            dbs: KeystoreDatabases) throws -> UInt64 {
        var local: UInt64 = 0
        var from = Layout.tenantKey(t)
        while true {
            var chunk: [UInt64] = []
            try txn.forEach(in: dbs.auditByTenant, from: from, prefix: Layout.tenantKey(t)) { k, v in
                guard k.count == 12, v.isEmpty else {
                    throw VaultError.corrupt("audit tenant index of tenant \(t) mixes old and new entries")
                }
                chunk.append(readBE(k, at: 4))
                return chunk.count < 4096 ? .continue : .stop
            }
            guard let lastSeq = chunk.last else { return local }
            for seq in chunk {
                local += 1
                _ = try txn.delete(key: Layout.auditByTenantKey(t, seq), in: dbs.auditByTenant)
                try txn.put(.be(seq), forKey: Layout.auditByTenantKey(t, local), in: dbs.auditByTenant)
            }
            guard lastSeq < UInt64.max else { return local }
            from = Layout.auditByTenantKey(t, lastSeq + 1)
        }
    }

    /// A tenant's own entries after its own sequence number `after`, at most `limit`,
    /// numbered in its own sequence, without `prev`.
    static func tenantEntries(_ t: UInt32, after: UInt64, limit: Int, in txn: borrowing Transaction,
                              dbs: KeystoreDatabases) throws -> [AuditEntry] {
        guard limit > 0, after < UInt64.max else { return [] }
        _ = try lastTenantSeq(t, in: txn, dbs: dbs)  // renumbers a legacy index first
        var positions: [(local: UInt64, seq: UInt64)] = []
        try txn.forEach(in: dbs.auditByTenant, from: Layout.auditByTenantKey(t, after + 1), prefix: Layout.tenantKey(t)) { k, v in
            guard k.count == 12, v.count == 8 else { throw VaultError.corrupt("audit tenant index: entry of \(k.count) + \(v.count) bytes") }
            positions.append((readBE(k, at: 4), readBE(v, at: 0)))
            return positions.count < limit ? .continue : .stop
        }
        // An entry missing from the log (verification names it) leaves a gap in the numbering.
        return try positions.compactMap { p in
            try entry(seq: p.seq, in: txn, dbs: dbs).map { e in
                AuditEntry(seq: p.local, at: e.at, tenant: e.tenant, actor: e.actor, action: e.action,
                           target: e.target, outcome: e.outcome, count: e.count, reference: e.reference,
                           prev: [], hash: e.hash)
            }
        }
    }

    /// Every entry after the chain's `after`, at most `limit`, without targets or references.
    static func chainEntries(after: UInt64, limit: Int, in txn: borrowing Transaction,
                             dbs: KeystoreDatabases) throws -> [AuditEntry] {
        var out: [AuditEntry] = []
        guard limit > 0, after < UInt64.max else { return out }
        try txn.forEach(in: dbs.audit, from: Layout.auditKey(after + 1)) { _, v in
            let e = try AuditEntry.decode(v).entry
            out.append(AuditEntry(seq: e.seq, at: e.at, tenant: e.tenant, actor: e.actor, action: e.action,
                                  target: nil, outcome: e.outcome, count: e.count, reference: nil,
                                  prev: e.prev, hash: e.hash))
            return out.count < limit ? .continue : .stop
        }
        return out
    }

    static func head(in txn: borrowing Transaction, dbs: KeystoreDatabases) throws -> AuditHead {
        try txn.withValue(forKey: headKey, in: dbs.meta) { b in
            guard let b else { return .genesis }
            return try AuditHead.decode(b)
        }
    }

    /// Recomputes every hash from the first entry; names the first entry that breaks.
    static func verify(in txn: borrowing Transaction, dbs: KeystoreDatabases) throws -> AuditVerification {
        var expected = AuditHead.genesis
        var broken: (UInt64, String)?
        var count: UInt64 = 0
        try txn.forEach(in: dbs.audit) { key, value in
            let keySeq: UInt64 = key.count == 8 ? readBE(key, at: 0) : 0
            let claimed = expected.seq + 1
            do {
                let (entry, canonical) = try AuditEntry.decode(value)
                if keySeq != claimed || entry.seq != claimed {
                    broken = (claimed, "sequence gap or reordering (found \(keySeq))")
                } else if entry.prev != expected.hash {
                    broken = (claimed, "prev does not match the hash of entry \(expected.seq)")
                } else if KeyedHash.hash(entry.prev + canonical, outputCount: 32) != entry.hash {
                    broken = (claimed, "hash does not match the entry's content")
                }
                expected = AuditHead(seq: claimed, hash: entry.hash)
            } catch {
                broken = (claimed, "entry cannot be decoded")
            }
            count += 1
            return broken == nil ? .continue : .stop
        }
        if broken == nil {
            let head = try self.head(in: txn, dbs: dbs)
            if head != expected {
                broken = (min(head.seq, expected.seq) + 1, "log ends at \(expected.seq) but the recorded head is \(head.seq)")
            }
        }
        return AuditVerification(entries: count, firstBroken: broken?.0, reason: broken?.1)
    }

    static func entry(seq: UInt64, in txn: borrowing Transaction, dbs: KeystoreDatabases) throws -> Optional<AuditEntry> {
        try txn.withValue(forKey: Layout.auditKey(seq), in: dbs.audit) { b in
            guard let b else { return nil }
            return try AuditEntry.decode(b).entry
        }
    }
}
