import LMDB
import Sodium

/// The audit's transparency logs (docs/architecture.md, Audit): one RFC 9162 Merkle tree per
/// tenant, over the tenant's own view of its entries, and one for the operator, over the
/// operator's view of every entry. Written in the transaction of the operation each entry
/// records, so a leaf commits (or vanishes) with its operation.
///
/// Stored as aligned complete subtrees in the record store: `audit_tree` maps `log(u32)|level(u8)|index(u64)` to
/// the hash of leaves `index·2^level ..< (index+1)·2^level` of that log, written once the
/// subtree is complete (level 0: the leaf hashes). Every hash a head or a proof needs is one of
/// them or is computed from O(log n) of them; nothing is ever rewritten, so an appended leaf
/// costs its own row and, amortised, one more. Log 0 is the operator's; a tenant's log is its
/// internal number (tenants are numbered from 1).
enum AuditTree {
    typealias Hash = MerkleTree.Hash
    static let operatorLog: UInt32 = 0

    static func key(_ log: UInt32, _ level: UInt8, _ index: UInt64) -> [UInt8] { .be(log) + [level] + .be(index) }

    /// Appends the leaf of `bytes` as leaf `index` of `log` (its size before the append), with
    /// every subtree it completes, in the keystore's tail.
    static func append(leaf bytes: [UInt8], index: UInt64, log: UInt32, in ks: borrowing Transaction,
                       _ rec: borrowing Transaction, audit: AuditDatabases) throws {
        var hash = MerkleTree.leafHash(bytes)
        try ks.put(hash, forKey: key(log, 0, index), in: audit.tree)
        var i = index, level: UInt8 = 0
        while i & 1 == 1 {
            let left = try subtree(log, level, i - 1, in: ks, rec, audit: audit)
            hash = MerkleTree.nodeHash(left, hash)
            i >>= 1
            level += 1
            try ks.put(hash, forKey: key(log, level, i), in: audit.tree)
        }
    }

    /// The stored hash of a complete subtree, from the tail or the archive; a missing or
    /// malformed one is corruption.
    static func subtree(_ log: UInt32, _ level: UInt8, _ index: UInt64, in ks: borrowing Transaction,
                        _ rec: borrowing Transaction, audit: AuditDatabases) throws -> Hash {
        let k = key(log, level, index)
        func check(_ b: UnsafeRawBufferPointer?) throws -> Hash? {
            guard let b else { return nil }
            guard b.count == SHA256.digestCount else {
                throw VaultError.corrupt("audit tree \(log == operatorLog ? "of the operator" : "of tenant \(log)"): "
                                         + "subtree \(level)/\(index) is malformed")
            }
            return Array(b)
        }
        if let h = try ks.withValue(forKey: k, in: audit.tree, check) { return h }
        if let h = try rec.withValue(forKey: k, in: audit.archivedTree, check) { return h }
        throw VaultError.corrupt("audit tree \(log == operatorLog ? "of the operator" : "of tenant \(log)"): "
                                 + "subtree \(level)/\(index) is missing")
    }

    /// The root of the first `size` leaves of `log`.
    static func root(_ log: UInt32, size: UInt64, in ks: borrowing Transaction, _ rec: borrowing Transaction,
                     audit: AuditDatabases) throws -> Hash {
        try MerkleTree.root(size: size) { lo, count in try aligned(log, lo, count, in: ks, rec, audit: audit) }
    }

    /// The inclusion proof of leaf `index` in the tree of the first `size` leaves (`index < size`).
    static func inclusionProof(_ log: UInt32, index: UInt64, size: UInt64, in ks: borrowing Transaction,
                               _ rec: borrowing Transaction, audit: AuditDatabases) throws -> [Hash] {
        try MerkleTree.inclusionProof(index: index, size: size) { lo, count in try aligned(log, lo, count, in: ks, rec, audit: audit) }
    }

    /// The consistency proof from the first `old` leaves to the first `new` (`old <= new`).
    static func consistencyProof(_ log: UInt32, from old: UInt64, to new: UInt64, in ks: borrowing Transaction,
                                 _ rec: borrowing Transaction, audit: AuditDatabases) throws -> [Hash] {
        try MerkleTree.consistencyProof(from: old, to: new) { lo, count in try aligned(log, lo, count, in: ks, rec, audit: audit) }
    }

    /// The complete subtree of `count` (a power of two) leaves from `lo` (a multiple of `count`),
    /// as RFC 9162's recursion asks for them.
    private static func aligned(_ log: UInt32, _ lo: UInt64, _ count: UInt64, in ks: borrowing Transaction,
                                _ rec: borrowing Transaction, audit: AuditDatabases) throws -> Hash {
        precondition(count > 0 && count & (count - 1) == 0 && lo % count == 0, "an aligned complete subtree")
        return try subtree(log, UInt8(count.trailingZeroBitCount), lo / count, in: ks, rec, audit: audit)
    }
}

extension AuditTree {
    /// `meta` row: format 1, then 1 when every entry has its leaves (appends keep it so), or 2
    /// and the chain seq through which they have while entries written before the logs existed
    /// are being given theirs.
    static let stateKey = Array("audit_tree".utf8)
    static let complete: [UInt8] = [1, 1]
    static func building(through seq: UInt64) -> [UInt8] { [1, 2] + .be(seq) }

    /// How far the logs reach: nil when complete, else the chain seq through which they do.
    static func missingFrom(in txn: borrowing Transaction, dbs: KeystoreDatabases) throws -> UInt64? {
        try txn.withValue(forKey: stateKey, in: dbs.meta) { b -> UInt64? in
            guard let b else { return 0 }
            var r = ByteReader(b, what: "audit tree state")
            try r.format(1)
            switch try r.u8() {
            case 1:
                try r.end()
                return nil
            case 2:
                let through = try r.u64()
                try r.end()
                return through
            case let s: throw VaultError.corrupt("audit tree state \(s) is not known")
            }
        }
    }

    /// Gives every entry written before the transparency logs existed its leaves, in chain
    /// order, `chunk` entries per write (each one a change set when there is a journal), and
    /// resumes where an interrupted run stopped. A vault that has them already costs one read.
    static func buildMissing(_ stores: Stores, chunk: Int = 20_000, progress: ((String) -> Void)? = nil) throws {
        let dbs = stores.ks, audit = stores.audit
        guard var through = try stores.keystore.read({ try missingFrom(in: $0, dbs: dbs) }) else { return }
        let head = try stores.keystore.read { try AuditLog.head(in: $0, dbs: dbs) }
        if through < head.seq {
            progress?("giving audit entries \(through + 1)...\(head.seq) their transparency-log leaves")
        }
        var tenants: [String: (log: UInt32, size: UInt64)] = [:]
        repeat {
            try stores.write { ks, rec in
                var n = 0
                var last = through
                if last < head.seq {
                    var pending: [AuditEntry] = []
                    try AuditLog.forEachEntry(from: last + 1, in: ks, rec, dbs: dbs, audit: audit) { _, v in
                        pending.append(try AuditEntry.decode(v).entry)
                        n += 1
                        return n < chunk && pending.last!.seq < head.seq ? .continue : .stop
                    }
                    for e in pending {
                        guard e.seq == last + 1 else {
                            throw VaultError.corrupt("audit entry \(last + 1) is missing (found \(e.seq)); run shredvault audit verify")
                        }
                        try append(leaf: e.leaf(tenantSeq: nil), index: e.seq - 1, log: operatorLog, in: ks, rec, audit: audit)
                        if let slug = e.tenant {
                            if tenants[slug] == nil {
                                let row = try ks.withValue(forKey: Array(slug.utf8), in: dbs.tenants) { b in try b.map(TenantRow.decode) }
                                guard let row else { throw VaultError.corrupt("audit entry \(e.seq) names tenant \(slug), which does not exist") }
                                tenants[slug] = (row.number, try entries(of: row.number, through: last, in: ks, rec, audit: audit))
                            }
                            let t = tenants[slug]!
                            try append(leaf: e.leaf(tenantSeq: t.size + 1), index: t.size, log: t.log, in: ks, rec, audit: audit)
                            tenants[slug]!.size += 1
                        }
                        last = e.seq
                    }
                    guard !pending.isEmpty else {
                        throw VaultError.corrupt("the audit ends at \(last) but its head is \(head.seq); run shredvault audit verify")
                    }
                }
                try ks.put(last >= head.seq ? complete : building(through: last), forKey: stateKey, in: dbs.meta)
                through = last
            }
        } while through < head.seq
    }

    /// How many of tenant `t`'s entries are at or before the chain's `seq`: where its log stood
    /// when the chain did (its numbering follows the chain's order). Archive, then tail.
    private static func entries(of t: UInt32, through seq: UInt64, in ks: borrowing Transaction, _ rec: borrowing Transaction,
                                audit: AuditDatabases) throws -> UInt64 {
        var n: UInt64 = 0
        var done = false
        func visit(_ k: UnsafeRawBufferPointer, _ v: UnsafeRawBufferPointer) throws -> IterationControl {
            guard k.count == 12 else { return .continue }  // the tenant's count
            guard v.count == 8 else { throw VaultError.corrupt("audit tenant index: entry of \(k.count) + \(v.count) bytes") }
            guard readBE(v, at: 0, as: UInt64.self) <= seq else { done = true; return .stop }
            if readBE(k, at: 4, as: UInt64.self) > n { n = readBE(k, at: 4) }
            return .continue
        }
        try rec.forEach(in: audit.archivedByTenant, prefix: Layout.tenantKey(t), visit)
        if !done { try ks.forEach(in: audit.byTenant, from: Layout.auditByTenantKey(t, n + 1), prefix: Layout.tenantKey(t), visit) }
        return n
    }
}

extension AuditEntry {
    /// This stored entry's leaf in the operator's log (chain numbering, no target or reference),
    /// or in its tenant's as entry `tenantSeq` of that log.
    func leaf(tenantSeq: UInt64?) -> [UInt8] {
        Self.leaf(seq: tenantSeq ?? seq, at: at, tenant: tenant, actor: actor, action: action,
                  target: tenantSeq == nil ? nil : target, outcome: outcome, count: count,
                  reference: tenantSeq == nil ? nil : reference, hash: hash)
    }
}
