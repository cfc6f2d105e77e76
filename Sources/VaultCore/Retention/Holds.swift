import LMDB
import Sodium

/// A legal hold: held records neither expire nor erase until it is removed.
public struct LegalHold: Sendable, Equatable {
    public enum Target: Sendable, Equatable {
        /// A subject, named only by its tag (hex): the subject string is never stored.
        case subjectTag(String)
        case record(RecordID)
    }
    public let id: String
    public let target: Target
    public let reason: String
    public let reference: String
    public let createdAt: Int64
}

/// What a new hold covers.
public enum HoldTarget: Sendable {
    case subject(Subject)
    case record(RecordID)
}

/// The index entry of a held target: how many holds cover it and since when (the earliest
/// of them), so a hold protects only records that had not expired when it was placed.
struct HeldTarget: Equatable {
    var count: UInt32
    var since: Int64

    func encode() -> [UInt8] { [1] + .be(count) + .be(UInt64(bitPattern: since)) }

    static func load(_ key: [UInt8], in txn: borrowing Transaction, dbs: KeystoreDatabases) throws -> HeldTarget? {
        try txn.withValue(forKey: key, in: dbs.heldTargets) { b in
            guard let b else { return nil }
            var r = ByteReader(b, what: "held target")
            try r.format(1)
            let held = HeldTarget(count: try r.u32(), since: try r.i64())
            try r.end()
            return held
        }
    }
}

extension ResolvedTenant {
    /// Hold texts (reason, reference) may name people: they are sealed under a key derived
    /// from the tenant's blinding key, which is stable across rotations.
    func holdTextKey(root: Key) throws -> Key {
        let sbk = try blindingKey(root: root)
        return Key(try KeyedHash.deriveKey(from: sbk.bytes, subkeyID: 1, context: "svholdtx"))
    }

    func heldKey(_ kind: LegalHoldRow.Kind, _ target: [UInt8]) -> [UInt8] {
        Layout.tenantKey(number) + [kind.rawValue] + target
    }
}

extension Vault {
    /// Places a legal hold on a subject (all its records, present and future) or a record.
    public func addHold(_ target: HoldTarget, reason: String, reference: String, tenant: TenantID,
                        actor: Actor) async throws -> LegalHold {
        guard reason.utf8.count <= 1000, reference.utf8.count <= 200 else {
            throw VaultError.invalidArgument("reason must be at most 1000 bytes and reference at most 200")
        }
        return try await perform { ks, rec, context in
            let dbs = self.writer.stores.ks
            let t = try ResolvedTenant.load(tenant, in: ks, dbs: dbs, cache: context.keyCache)
            let root = try t.rootKey(context)
            let now = context.now
            let kind: LegalHoldRow.Kind
            let targetBytes: [UInt8]
            let publicTarget: LegalHold.Target
            switch target {
            case .subject(let s):
                kind = .subject
                targetBytes = try t.tag(of: s, root: root)
                publicTarget = .subjectTag(targetBytes.hex)
            case .record(let id):
                guard try t.live(id, now: now, in: ks, dbs: dbs) != nil else { throw VaultError.notFound }
                kind = .record
                targetBytes = id.bytes
                publicTarget = .record(id)
            }
            let id = RecordID.generate(milliseconds: now)
            var text = ByteWriter()
            text.string(reason)
            text.string(reference)
            let key = try t.holdTextKey(root: root)
            let ad = KeyHierarchy.holdTextAD(tenant: t.number, hold: id)
            let box = try text.bytes.withUnsafeBytes { p in
                try ad.withUnsafeBytes { a in try AEAD.seal(p, key: key.bytes, associatedData: a) }
            }
            let row = LegalHoldRow(kind: kind, target: targetBytes, createdAt: now, sealedText: [1] + box)
            try ks.put(row.encode(), forKey: Layout.tenantKey(t.number) + id.bytes, in: dbs.holds)
            let heldKey = t.heldKey(kind, targetBytes)
            let previous = try HeldTarget.load(heldKey, in: ks, dbs: dbs)
            try ks.put(HeldTarget(count: (previous?.count ?? 0) + 1, since: min(previous?.since ?? now, now)).encode(),
                       forKey: heldKey, in: dbs.heldTargets)
            // The reference stays sealed with the hold: the audit entry names the hold only.
            try AuditLog.append(.init(tenant: t.auditTenant, actor: actor, action: "hold.add", target: "hold:\(id)"),
                                in: ks, rec, dbs: dbs, context: context)
            return LegalHold(id: id.description, target: publicTarget, reason: reason, reference: reference, createdAt: now)
        }
    }

    public func holds(tenant: TenantID) async throws -> [LegalHold] {
        try await perform { ks, _, context in
            let dbs = self.writer.stores.ks
            let t = try ResolvedTenant.load(tenant, in: ks, dbs: dbs, cache: context.keyCache)
            let key = try t.holdTextKey(root: try t.rootKey(context))
            var out: [LegalHold] = []
            let prefix = Layout.tenantKey(t.number)
            try ks.forEach(in: dbs.holds, from: prefix, prefix: prefix) { k, v in
                let id = RecordID(bytes: Array(k[4...]))
                out.append(try Vault.decodeHold(try LegalHoldRow.decode(v), id: id, tenant: t.number, key: key))
                return .continue
            }
            return out
        }
    }

    static func decodeHold(_ row: LegalHoldRow, id: RecordID, tenant: UInt32, key: Key) throws -> LegalHold {
        guard row.sealedText.first == 1 else { throw VaultError.corrupt("hold \(id): sealed text format") }
        let ad = KeyHierarchy.holdTextAD(tenant: tenant, hold: id)
        let box = Array(row.sealedText.dropFirst())
        guard box.count >= AEAD.overhead else { throw VaultError.integrity("hold \(id) text failed authentication") }
        var plain = [UInt8](repeating: 0, count: box.count - AEAD.overhead)
        do {
            try box.withUnsafeBytes { b in
                try ad.withUnsafeBytes { a in
                    try plain.withUnsafeMutableBytes { try AEAD.open(b, key: key.bytes, associatedData: a, into: $0) }
                }
            }
        } catch {
            throw VaultError.integrity("hold \(id) text failed authentication")
        }
        return try plain.withUnsafeBytes { p in
            var r = ByteReader(p, what: "hold \(id) text")
            let reason = try r.string(), reference = try r.string()
            let target: LegalHold.Target = row.kind == .subject ? .subjectTag(row.target.hex) : .record(RecordID(bytes: row.target))
            return LegalHold(id: id.description, target: target, reason: reason, reference: reference, createdAt: row.createdAt)
        }
    }

    /// Removes a hold. Records it kept past their expiry expire at the next sweep.
    public func removeHold(_ id: String, tenant: TenantID, actor: Actor) async throws {
        guard let rid = RecordID(id) else { throw VaultError.notFound }
        try await perform { ks, rec, context in
            let dbs = self.writer.stores.ks
            let t = try ResolvedTenant.load(tenant, in: ks, dbs: dbs, cache: context.keyCache)
            let key = Layout.tenantKey(t.number) + rid.bytes
            guard let row = try ks.withValue(forKey: key, in: dbs.holds, { b in try b.map(LegalHoldRow.decode) }) else {
                throw VaultError.notFound
            }
            try ks.delete(key: key, in: dbs.holds)
            // Recount the holds left on the same target, and when the earliest of them began.
            var remaining = HeldTarget(count: 0, since: .max)
            let prefix = Layout.tenantKey(t.number)
            try ks.forEach(in: dbs.holds, from: prefix, prefix: prefix) { _, v in
                let other = try LegalHoldRow.decode(v)
                if other.kind == row.kind && other.target == row.target {
                    remaining.count += 1
                    remaining.since = min(remaining.since, other.createdAt)
                }
                return .continue
            }
            let heldKey = t.heldKey(row.kind, row.target)
            if remaining.count > 0 {
                try ks.put(remaining.encode(), forKey: heldKey, in: dbs.heldTargets)
            } else {
                try ks.delete(key: heldKey, in: dbs.heldTargets)
            }
            try AuditLog.append(.init(tenant: t.auditTenant, actor: actor, action: "hold.remove", target: "hold:\(rid)"),
                                in: ks, rec, dbs: dbs, context: context)
        }
    }
}
