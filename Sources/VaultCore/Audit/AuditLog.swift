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
    public static func leaf(seq: UInt64, at: Int64, tenant: String?, actor: String, action: String, target: String?,
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

    /// What pruning leaves of an entry past the audit retention (`AuditRetention`): its place in
    /// the chain and nothing of what it recorded. `u8 3 | u64 seq | i64 at | 32-byte prev |
    /// 32-byte hash`. The tree's hashes of the entry stay, so proofs of later entries verify.
    static let prunedFormat: UInt8 = 3

    static func pruned(seq: UInt64, at: Int64, prev: [UInt8], hash: [UInt8]) -> [UInt8] {
        var w = ByteWriter(capacity: 81)
        w.u8(prunedFormat)
        w.u64(seq)
        w.i64(at)
        w.raw(prev)
        w.raw(hash)
        return w.bytes
    }

    /// A stored row: an entry, or what pruning left of one.
    enum Stored {
        case entry(AuditEntry, canonical: [UInt8])
        case pruned(seq: UInt64, at: Int64, prev: [UInt8], hash: [UInt8])
    }

    static func decodeStored(_ b: UnsafeRawBufferPointer) throws -> Stored {
        guard b.first == prunedFormat else {
            let (entry, canonical) = try decode(b)
            return .entry(entry, canonical: canonical)
        }
        var r = ByteReader(b, what: "pruned audit entry")
        try r.format(prunedFormat)
        let seq = try r.u64(), at = try r.i64(), prev = try r.raw(32), hash = try r.raw(32)
        try r.end()
        return .pruned(seq: seq, at: at, prev: prev, hash: hash)
    }

    /// An entry (format 1 or 2); a pruned one is refused, named: its reader should have
    /// started past the prune mark.
    static func decode(_ b: UnsafeRawBufferPointer) throws -> (entry: AuditEntry, canonical: [UInt8]) {
        var r = ByteReader(b, what: "audit entry")
        let version = try r.u8()
        if version == prunedFormat, b.count >= 9 {
            throw VaultError.corrupt("audit entry \(readBE(b, at: 1, as: UInt64.self)) was pruned (past the audit retention)")
        }
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
    /// The first entries, pruned past the audit retention: their links are checked, not their content.
    public let pruned: UInt64
    /// The first entry that does not verify, or nil when the whole chain does.
    public let firstBroken: UInt64?
    public let reason: String?
    public var isIntact: Bool { firstBroken == nil }
}

/// Appends and verifies the hash chain. Appends happen inside the write transaction of
/// the operation they record, in the keystore, so an operation and its entry commit (or
/// vanish) together. The keystore keeps a bounded tail: later batches move committed entries,
/// their numbering and their subtrees to the record store (`AuditArchive`), so it holds a few
/// hundred entries and each tenant's count however long the history. Reads see one log: the
/// archive through `audit_archived`, then the tail.
///
/// Each tenant's entries are also numbered in the tenant's own sequence: `audit_by_tenant` maps
/// `t|tenant seq` to the chain's seq (u64), and `t` alone to the tenant's count. Vaults written
/// before that keyed the index by the chain's seq with an empty value; they are renumbered at
/// open (`AuditArchive.prepare`).
enum AuditLog {
    static let headKey = Array("audit_head".utf8)
    /// `meta` row: the chain seq (u64) through which entries are in the archive.
    static let archivedKey = Array("audit_archived".utf8)

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

    /// Appends `event` in the operation's transactions (`ks` the keystore's, `rec` the record
    /// store's, read for the archived subtrees the new leaves complete).
    @discardableResult
    static func append(_ event: Event, in ks: borrowing Transaction, _ rec: borrowing Transaction, dbs: KeystoreDatabases,
                       context: OperationContext) throws -> Appended {
        let audit = context.audit
        let seq = context.auditHead.seq + 1
        // Read once: the clock moves, and the entry and its leaves must carry the same time.
        let at = context.now
        let canonical = AuditEntry.canonical(
            seq: seq, at: at, tenant: event.tenant?.slug, actor: event.actor.id, action: event.action,
            target: event.target, outcome: event.outcome, count: event.count, reference: event.reference,
            nonce: Random.bytes(count: AuditEntry.nonceCount))
        let prev = context.auditHead.hash
        let hash = KeyedHash.hash(prev + canonical, outputCount: 32)
        try ks.put(canonical + prev + hash, forKey: Layout.auditKey(seq), in: audit.entries, flags: .append)
        var tenantSeq: UInt64?
        if let t = event.tenant {
            let local = try tenantCount(t.number, in: ks, dbs: dbs) + 1
            try ks.put(.be(seq), forKey: Layout.auditByTenantKey(t.number, local), in: audit.byTenant)
            try ks.put(.be(local), forKey: Layout.auditCountKey(t.number), in: audit.byTenant)
            tenantSeq = local
        }
        // The transparency logs: the operator's view of the entry, and the tenant's.
        let leaves = WriterLeaves(context: context)
        let operatorLeaf = try AuditTree.append(
            leaf: AuditEntry.leaf(seq: seq, at: at, tenant: event.tenant?.slug, actor: event.actor.id, action: event.action,
                                  target: nil, outcome: event.outcome, count: event.count, reference: nil, hash: hash),
            index: seq - 1, log: AuditTree.operatorLog, in: ks, rec, audit: audit, leaves: leaves)
        context.appended(leaf: operatorLeaf, log: AuditTree.operatorLog, index: seq - 1)
        if let t = event.tenant, let tenantSeq {
            let tenantLeaf = try AuditTree.append(
                leaf: AuditEntry.leaf(seq: tenantSeq, at: at, tenant: t.slug, actor: event.actor.id, action: event.action,
                                      target: event.target, outcome: event.outcome, count: event.count,
                                      reference: event.reference, hash: hash),
                index: tenantSeq - 1, log: t.number, in: ks, rec, audit: audit, leaves: leaves)
            context.appended(leaf: tenantLeaf, log: t.number, index: tenantSeq - 1)
        }
        let head = AuditHead(seq: seq, hash: hash)
        // The head anchors the tail: deleting the newest entries is detected too.
        try ks.put(head.encode(), forKey: headKey, in: dbs.meta)
        context.auditHead = head
        return Appended(head: head, tenantSeq: tenantSeq)
    }

    /// The number of the tenant's own entries (0 before its first).
    static func tenantCount(_ t: UInt32, in ks: borrowing Transaction, dbs: KeystoreDatabases) throws -> UInt64 {
        try ks.withValue(forKey: Layout.auditCountKey(t), in: dbs.auditByTenant) { b in
            guard let b else { return 0 }
            guard b.count == 8 else { throw VaultError.corrupt("audit count of tenant \(t): \(b.count) bytes") }
            return readBE(b, at: 0)
        }
    }

    /// The chain seq through which entries are in the archive (0: none).
    static func archived(in ks: borrowing Transaction, dbs: KeystoreDatabases) throws -> UInt64 {
        try ks.withValue(forKey: archivedKey, in: dbs.meta) { b in
            guard let b else { return 0 }
            guard b.count == 8 else { throw VaultError.corrupt("audit archive mark: \(b.count) bytes") }
            return readBE(b, at: 0)
        }
    }

    /// How many of `log`'s first entries are pruned (log 0, the operator's: the chain's prune
    /// mark, as its leaf i is the chain's entry i + 1). Kept in the archive beside the rows it
    /// counts, so a prune commits them together.
    static func prunedCount(_ log: UInt32, in rec: borrowing Transaction, audit: AuditDatabases) throws -> UInt64 {
        try rec.withValue(forKey: Layout.auditCountKey(log), in: audit.archivedByTenant) { b in
            guard let b else { return 0 }
            guard b.count == 8 else { throw VaultError.corrupt("audit prune count of log \(log): \(b.count) bytes") }
            return readBE(b, at: 0)
        }
    }

    /// Visits the stored entries in chain order from seq `from`: the archive's through the mark,
    /// then the tail's (each row as stored, so verification sees a damaged key too). The
    /// archive's rows past the mark, and the tail's before it, are the two copies a move
    /// interrupted between its two commits leaves: the other copy is visited.
    static func forEachEntry(from: UInt64, in ks: borrowing Transaction, _ rec: borrowing Transaction, dbs: KeystoreDatabases,
                             audit: AuditDatabases,
                             _ body: (_ key: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer) throws -> IterationControl) throws {
        let archived = try archived(in: ks, dbs: dbs)
        var stopped = false
        if from <= archived {
            try rec.forEach(in: audit.archivedEntries, from: Layout.auditKey(from)) { k, v in
                if k.count == 8, readBE(k, at: 0, as: UInt64.self) > archived { return .stop }
                if try body(k, v) == .stop { stopped = true }
                return stopped ? .stop : .continue
            }
        }
        guard !stopped else { return }
        try ks.forEach(in: audit.entries, from: Layout.auditKey(max(from, archived + 1))) { k, v in try body(k, v) }
    }

    /// A tenant's own entries after its own sequence number `after`, at most `limit`,
    /// numbered in its own sequence, without `prev`.
    static func tenantEntries(_ t: UInt32, after: UInt64, limit: Int, in ks: borrowing Transaction,
                              _ rec: borrowing Transaction, dbs: KeystoreDatabases,
                              audit: AuditDatabases) throws -> [AuditEntry] {
        let count = try tenantCount(t, in: ks, dbs: dbs)
        // The pruned entries are gone: the listing starts after them.
        let after = max(after, try prunedCount(t, in: rec, audit: audit))
        guard limit > 0, after < count else { return [] }
        let archived = try archived(in: ks, dbs: dbs)
        var positions: [(local: UInt64, seq: UInt64)] = []
        func visit(_ k: UnsafeRawBufferPointer, _ v: UnsafeRawBufferPointer) throws -> IterationControl {
            guard k.count == 12, v.count == 8 else { throw VaultError.corrupt("audit tenant index: entry of \(k.count) + \(v.count) bytes") }
            let local: UInt64 = readBE(k, at: 4)
            guard local <= count else { return .stop }
            if let last = positions.last, local <= last.local { return .continue }  // the copy of an interrupted move
            positions.append((local, readBE(v, at: 0)))
            return positions.count < limit ? .continue : .stop
        }
        try rec.forEach(in: audit.archivedByTenant, from: Layout.auditByTenantKey(t, after + 1), prefix: Layout.tenantKey(t), visit)
        if positions.count < limit {
            let from = max(after, positions.last?.local ?? 0) + 1
            try ks.forEach(in: audit.byTenant, from: Layout.auditByTenantKey(t, from), prefix: Layout.tenantKey(t), visit)
        }
        // An entry missing from the log (verification names it) leaves a gap in the numbering.
        return try positions.compactMap { p in
            try entry(seq: p.seq, archived: archived, in: ks, rec, audit: audit).map { e in
                AuditEntry(seq: p.local, at: e.at, tenant: e.tenant, actor: e.actor, action: e.action,
                           target: e.target, outcome: e.outcome, count: e.count, reference: e.reference,
                           prev: [], hash: e.hash)
            }
        }
    }

    /// Every entry after the chain's `after`, at most `limit`, without targets or references.
    static func chainEntries(after: UInt64, limit: Int, in ks: borrowing Transaction, _ rec: borrowing Transaction,
                             dbs: KeystoreDatabases, audit: AuditDatabases) throws -> [AuditEntry] {
        var out: [AuditEntry] = []
        let after = max(after, try prunedCount(AuditTree.operatorLog, in: rec, audit: audit))
        guard limit > 0, after < UInt64.max else { return out }
        try forEachEntry(from: after + 1, in: ks, rec, dbs: dbs, audit: audit) { _, v in
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

    /// Recomputes every hash from the first entry, archive and tail; names the first entry that
    /// breaks. A pruned entry's hash cannot be recomputed: its place and its link to the entry
    /// before it are checked, and its hash is what the next entry links to. Pruned entries are
    /// exactly the first ones, through the prune mark: a pruned entry after it, or an entry
    /// with its body before it, is a break (a stub put in place of an entry to hide it).
    static func verify(in ks: borrowing Transaction, _ rec: borrowing Transaction, dbs: KeystoreDatabases,
                       audit: AuditDatabases) throws -> AuditVerification {
        var expected = AuditHead.genesis
        var broken: (UInt64, String)?
        var count: UInt64 = 0
        let pruned = try prunedCount(AuditTree.operatorLog, in: rec, audit: audit)
        try forEachEntry(from: 1, in: ks, rec, dbs: dbs, audit: audit) { key, value in
            let keySeq: UInt64 = key.count == 8 ? readBE(key, at: 0) : 0
            let claimed = expected.seq + 1
            do {
                let seq: UInt64, prev: [UInt8], hash: [UInt8]
                switch try AuditEntry.decodeStored(value) {
                case let .entry(entry, canonical):
                    (seq, prev, hash) = (entry.seq, entry.prev, entry.hash)
                    if claimed <= pruned {
                        broken = (claimed, "entry is within the pruned range (through \(pruned)) but has its content")
                    } else if KeyedHash.hash(entry.prev + canonical, outputCount: 32) != entry.hash {
                        broken = (claimed, "hash does not match the entry's content")
                    }
                case let .pruned(s, _, p, h):
                    (seq, prev, hash) = (s, p, h)
                    if claimed > pruned { broken = (claimed, "entry is pruned but the log is pruned through \(pruned) only") }
                }
                if keySeq != claimed || seq != claimed {
                    broken = (claimed, "sequence gap or reordering (found \(keySeq))")
                } else if prev != expected.hash {
                    broken = (claimed, "prev does not match the hash of entry \(expected.seq)")
                }
                expected = AuditHead(seq: claimed, hash: hash)
            } catch {
                broken = (claimed, "entry cannot be decoded")
            }
            count += 1
            return broken == nil ? .continue : .stop
        }
        if broken == nil, count < pruned {
            broken = (count + 1, "the log is pruned through \(pruned) but ends at \(count)")
        }
        if broken == nil {
            let head = try self.head(in: ks, dbs: dbs)
            if head != expected {
                broken = (min(head.seq, expected.seq) + 1, "log ends at \(expected.seq) but the recorded head is \(head.seq)")
            }
        }
        return AuditVerification(entries: count, pruned: pruned, firstBroken: broken?.0, reason: broken?.1)
    }

    /// Entry `seq`, from the archive when it is archived (`archived` is the mark), else the tail.
    static func entry(seq: UInt64, archived: UInt64, in ks: borrowing Transaction, _ rec: borrowing Transaction,
                      audit: AuditDatabases) throws -> Optional<AuditEntry> {
        func decode(_ b: UnsafeRawBufferPointer?) throws -> AuditEntry? {
            guard let b else { return nil }
            guard case let .entry(e, _) = try AuditEntry.decodeStored(b) else { return nil }  // pruned
            return e
        }
        return seq <= archived
            ? try rec.withValue(forKey: Layout.auditKey(seq), in: audit.archivedEntries, decode)
            : try ks.withValue(forKey: Layout.auditKey(seq), in: audit.entries, decode)
    }
}
