import LMDB
import Sodium

/// The audit's transparency logs (docs/architecture.md, Audit): one RFC 9162 Merkle tree per
/// tenant, over the tenant's own view of its entries, and one for the operator, over the
/// operator's view of every entry. Written in the transaction of the operation each entry
/// records, so a leaf commits (or vanishes) with its operation.
///
/// Stored as aligned complete subtrees: `audit_tree` maps `log(u32)|level(u8)|index(u64)` to
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
    /// every subtree it completes.
    static func append(leaf bytes: [UInt8], index: UInt64, log: UInt32, in txn: borrowing Transaction, db: Database) throws {
        var hash = MerkleTree.leafHash(bytes)
        try txn.put(hash, forKey: key(log, 0, index), in: db)
        var i = index, level: UInt8 = 0
        while i & 1 == 1 {
            let left = try subtree(log, level, i - 1, in: txn, db: db)
            hash = MerkleTree.nodeHash(left, hash)
            i >>= 1
            level += 1
            try txn.put(hash, forKey: key(log, level, i), in: db)
        }
    }

    /// The stored hash of a complete subtree; a missing or malformed one is corruption.
    static func subtree(_ log: UInt32, _ level: UInt8, _ index: UInt64, in txn: borrowing Transaction, db: Database) throws -> Hash {
        try txn.withValue(forKey: key(log, level, index), in: db) { b in
            guard let b, b.count == SHA256.digestCount else {
                throw VaultError.corrupt("audit tree \(log == operatorLog ? "of the operator" : "of tenant \(log)"): "
                                         + "subtree \(level)/\(index) is \(b == nil ? "missing" : "malformed")")
            }
            return Array(b)
        }
    }

    /// The number of leaves of `log` (one past its last leaf).
    static func size(_ log: UInt32, in txn: borrowing Transaction, db: Database) throws -> UInt64 {
        var size: UInt64 = 0
        try txn.forEachReversed(in: db, prefix: .be(log) + [0]) { k, _ in
            guard k.count == 13 else { throw VaultError.corrupt("audit tree: key of \(k.count) bytes") }
            size = readBE(k, at: 5, as: UInt64.self) + 1
            return .stop
        }
        return size
    }

    /// The root of the first `size` leaves of `log`.
    static func root(_ log: UInt32, size: UInt64, in txn: borrowing Transaction, db: Database) throws -> Hash {
        try MerkleTree.root(size: size) { lo, count in try aligned(log, lo, count, in: txn, db: db) }
    }

    /// The inclusion proof of leaf `index` in the tree of the first `size` leaves (`index < size`).
    static func inclusionProof(_ log: UInt32, index: UInt64, size: UInt64, in txn: borrowing Transaction,
                               db: Database) throws -> [Hash] {
        try MerkleTree.inclusionProof(index: index, size: size) { lo, count in try aligned(log, lo, count, in: txn, db: db) }
    }

    /// The consistency proof from the first `old` leaves to the first `new` (`old <= new`).
    static func consistencyProof(_ log: UInt32, from old: UInt64, to new: UInt64, in txn: borrowing Transaction,
                                 db: Database) throws -> [Hash] {
        try MerkleTree.consistencyProof(from: old, to: new) { lo, count in try aligned(log, lo, count, in: txn, db: db) }
    }

    /// The complete subtree of `count` (a power of two) leaves from `lo` (a multiple of `count`),
    /// as RFC 9162's recursion asks for them.
    private static func aligned(_ log: UInt32, _ lo: UInt64, _ count: UInt64, in txn: borrowing Transaction,
                                db: Database) throws -> Hash {
        precondition(count > 0 && count & (count - 1) == 0 && lo % count == 0, "an aligned complete subtree")
        return try subtree(log, UInt8(count.trailingZeroBitCount), lo / count, in: txn, db: db)
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
        let dbs = stores.ks
        guard var through = try stores.keystore.read({ try missingFrom(in: $0, dbs: dbs) }) else { return }
        let head = try stores.keystore.read { try AuditLog.head(in: $0, dbs: dbs) }
        if through < head.seq {
            progress?("giving audit entries \(through + 1)...\(head.seq) their transparency-log leaves")
        }
        var tenants: [String: (log: UInt32, size: UInt64)] = [:]
        repeat {
            try stores.write { ks, _ in
                var n = 0
                var last = through
                if last < head.seq {
                    var pending: [AuditEntry] = []
                    try ks.forEach(in: dbs.audit, from: Layout.auditKey(last + 1)) { _, v in
                        pending.append(try AuditEntry.decode(v).entry)
                        n += 1
                        return n < chunk ? .continue : .stop
                    }
                    for e in pending {
                        guard e.seq == last + 1 else {
                            throw VaultError.corrupt("audit entry \(last + 1) is missing (found \(e.seq)); run shredvault audit verify")
                        }
                        try append(leaf: e.leaf(tenantSeq: nil), index: e.seq - 1, log: operatorLog,
                                   in: ks, db: dbs.auditTree)
                        if let slug = e.tenant {
                            if tenants[slug] == nil {
                                let row = try ks.withValue(forKey: Array(slug.utf8), in: dbs.tenants) { b in try b.map(TenantRow.decode) }
                                guard let row else { throw VaultError.corrupt("audit entry \(e.seq) names tenant \(slug), which does not exist") }
                                tenants[slug] = (row.number, try size(row.number, in: ks, db: dbs.auditTree))
                            }
                            let t = tenants[slug]!
                            try append(leaf: e.leaf(tenantSeq: t.size + 1), index: t.size, log: t.log, in: ks, db: dbs.auditTree)
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
