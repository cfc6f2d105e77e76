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

/// One audit entry (DESIGN.md, Audit). Never holds a subject, payload, token or key
/// byte: targets are record ids, subject *tags*, hold or extension ids.
public struct AuditEntry: Sendable, Equatable {
    public let seq: UInt64
    public let at: Int64
    public let tenant: String?
    public let actor: String
    public let action: String
    public let target: String?
    public let outcome: String
    public let count: UInt64
    public let reference: String?
    public let prev: [UInt8]
    public let hash: [UInt8]

    public var hashHex: String { hash.hex }

    static let format: UInt8 = 1

    /// The canonical bytes the hash covers (with `prev` in front).
    static func canonical(seq: UInt64, at: Int64, tenant: String?, actor: String, action: String,
                          target: String?, outcome: String, count: UInt64, reference: String?) -> [UInt8] {
        var w = ByteWriter(capacity: 128)
        w.u8(format)
        w.u64(seq)
        w.i64(at)
        w.string(tenant ?? "")
        w.string(actor)
        w.string(action)
        w.string(target ?? "")
        w.string(outcome)
        w.u64(count)
        w.string(reference ?? "")
        return w.bytes
    }

    static func decode(_ b: UnsafeRawBufferPointer) throws -> (entry: AuditEntry, canonical: [UInt8]) {
        var r = ByteReader(b, what: "audit entry")
        try r.format(format)
        let seq = try r.u64(), at = try r.i64()
        let tenant = try r.string(), actor = try r.string(), action = try r.string()
        let target = try r.string(), outcome = try r.string(), count = try r.u64(), reference = try r.string()
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
enum AuditLog {
    static let headKey = Array("audit_head".utf8)

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
                       context: OperationContext) throws -> AuditHead {
        let seq = context.auditHead.seq + 1
        let canonical = AuditEntry.canonical(
            seq: seq, at: context.now, tenant: event.tenant?.slug, actor: event.actor.id, action: event.action,
            target: event.target, outcome: event.outcome, count: event.count, reference: event.reference)
        let prev = context.auditHead.hash
        let hash = KeyedHash.hash(prev + canonical, outputCount: 32)
        try txn.put(canonical + prev + hash, forKey: Layout.auditKey(seq), in: dbs.audit, flags: .append)
        if let t = event.tenant {
            try txn.put([], forKey: Layout.auditByTenantKey(t.number, seq), in: dbs.auditByTenant)
        }
        let head = AuditHead(seq: seq, hash: hash)
        // The head anchors the tail: deleting the newest entries is detected too.
        try txn.put(head.encode(), forKey: headKey, in: dbs.meta)
        context.auditHead = head
        return head
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
