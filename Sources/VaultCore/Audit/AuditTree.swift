import LMDB
import Sodium

/// The audit's transparency logs (docs/architecture.md, Audit): one RFC 9162 Merkle tree per
/// tenant, over the tenant's own view of its entries, and one for the operator, over the
/// operator's view of every entry. Written in the transaction of the operation each entry
/// records, so a leaf commits (or vanishes) with its operation.
///
/// Stored as aligned complete subtrees of at least `storedLevel`'s size: `audit_tree` maps
/// `log(u32)|level(u8)|index(u64)` to the hash of leaves `index·2^level ..< (index+1)·2^level`
/// of that log, written once the subtree is complete, in the keystore's tail and then the
/// archive (`AuditArchive`). Smaller subtrees, leaves included, are computed from the entries
/// themselves (`StoredLeaves`: a leaf is the entry as its reader is shown it), so an append
/// writes a row only when it completes a block of 2^storedLevel leaves: a sixteenth of a row
/// per log, amortised, where storing every level cost two. Every hash a head or a proof needs
/// is a stored row or is computed from O(log n) of them and at most 2^storedLevel − 1 leaves
/// of one block. Nothing is ever rewritten. Log 0 is the operator's; a tenant's log is its
/// internal number (tenants are numbered from 1). Vaults written before kept every level:
/// their extra rows are read like any other (a leaf's row first, when the entry was pruned).
enum AuditTree {
    typealias Hash = MerkleTree.Hash
    static let operatorLog: UInt32 = 0
    /// The smallest stored subtree: 2^4 = 16 leaves.
    static let storedLevel: UInt8 = 4

    static func key(_ log: UInt32, _ level: UInt8, _ index: UInt64) -> [UInt8] { .be(log) + [level] + .be(index) }

    /// Appends leaf `index` of `log` (its size before the append), whose bytes are `bytes`: when
    /// it completes a block of 2^`storedLevel` leaves, the block's hash, computed from its
    /// leaves, and every larger subtree it completes are written to the keystore's tail.
    /// Answers the leaf's hash.
    @discardableResult
    static func append(leaf bytes: [UInt8], index: UInt64, log: UInt32, in ks: borrowing Transaction,
                       _ rec: borrowing Transaction, audit: AuditDatabases,
                       leaves: any LeafSource = StoredLeaves()) throws -> Hash {
        let leafHash = MerkleTree.leafHash(bytes)
        let block = UInt64(1) << storedLevel
        guard index % block == block - 1 else { return leafHash }
        var i = index >> storedLevel, level = storedLevel
        var hash: Hash
        do {
            hash = try computed(log, level, i, in: ks, rec, audit: audit, leaves: leaves, newest: (index, leafHash))
        } catch VaultError.corrupt {
            // An earlier entry of the block is missing or damaged (the keystore was tampered
            // with): the operation goes on with its entry (an erasure must not wait for the
            // audit's repair), and the block, and every subtree above it, stays without a row,
            // so no head covers the damage and every head or proof that needs it answers the
            // corruption (verification names the entry). Counted: `audit_tree_gaps`.
            leaves.gap()
            return leafHash
        }
        try ks.put(hash, forKey: key(log, level, i), in: audit.tree)
        while i & 1 == 1 {
            let left: Hash
            do { left = try subtree(log, level, i - 1, in: ks, rec, audit: audit, leaves: leaves) } catch VaultError.corrupt {
                leaves.gap()
                return leafHash
            }
            hash = MerkleTree.nodeHash(left, hash)
            i >>= 1
            level += 1
            try ks.put(hash, forKey: key(log, level, i), in: audit.tree)
        }
        return leafHash
    }

    /// The hash of a complete subtree: a stored row from `storedLevel` up (tail, then archive),
    /// computed from the leaves below it; a missing or malformed row is corruption.
    static func subtree(_ log: UInt32, _ level: UInt8, _ index: UInt64, in ks: borrowing Transaction,
                        _ rec: borrowing Transaction, audit: AuditDatabases,
                        leaves: any LeafSource = StoredLeaves()) throws -> Hash {
        if level < storedLevel {
            return try computed(log, level, index, in: ks, rec, audit: audit, leaves: leaves, newest: nil)
        }
        if let h = try stored(log, level, index, in: ks, rec, audit: audit) { return h }
        throw VaultError.corrupt("audit tree \(describe(log)): subtree \(level)/\(index) is missing")
    }

    /// A subtree below `storedLevel`, from its leaves (`newest`: a leaf not yet readable).
    private static func computed(_ log: UInt32, _ level: UInt8, _ index: UInt64, in ks: borrowing Transaction,
                                 _ rec: borrowing Transaction, audit: AuditDatabases, leaves: any LeafSource,
                                 newest: (index: UInt64, hash: Hash)?) throws -> Hash {
        guard level > 0 else {
            if let newest, newest.index == index { return newest.hash }
            if let h = try leaves.leafHash(log, index, in: ks, rec, audit: audit) { return h }
            // A pruned entry: pruning stored its leaf's hash (`AuditRetention`).
            if let h = try stored(log, 0, index, in: ks, rec, audit: audit) { return h }
            throw VaultError.corrupt("audit tree \(describe(log)): leaf \(index) is pruned and its hash is missing")
        }
        let left = try computed(log, level - 1, index << 1, in: ks, rec, audit: audit, leaves: leaves, newest: newest)
        let right = try computed(log, level - 1, index << 1 | 1, in: ks, rec, audit: audit, leaves: leaves, newest: newest)
        return MerkleTree.nodeHash(left, right)
    }

    private static func stored(_ log: UInt32, _ level: UInt8, _ index: UInt64, in ks: borrowing Transaction,
                               _ rec: borrowing Transaction, audit: AuditDatabases) throws -> Hash? {
        let k = key(log, level, index)
        func check(_ b: UnsafeRawBufferPointer?) throws -> Hash? {
            guard let b else { return nil }
            guard b.count == SHA256.digestCount else {
                throw VaultError.corrupt("audit tree \(describe(log)): subtree \(level)/\(index) is malformed")
            }
            return Array(b)
        }
        if let h = try ks.withValue(forKey: k, in: audit.tree, check) { return h }
        return try rec.withValue(forKey: k, in: audit.archivedTree, check)
    }

    static func describe(_ log: UInt32) -> String { log == operatorLog ? "of the operator" : "of tenant \(log)" }

    /// The root of the first `size` leaves of `log`.
    static func root(_ log: UInt32, size: UInt64, in ks: borrowing Transaction, _ rec: borrowing Transaction,
                     audit: AuditDatabases, leaves: any LeafSource = StoredLeaves()) throws -> Hash {
        try MerkleTree.root(size: size) { lo, count in try aligned(log, lo, count, in: ks, rec, audit: audit, leaves: leaves) }
    }

    /// The inclusion proof of leaf `index` in the tree of the first `size` leaves (`index < size`).
    static func inclusionProof(_ log: UInt32, index: UInt64, size: UInt64, in ks: borrowing Transaction,
                               _ rec: borrowing Transaction, audit: AuditDatabases,
                               leaves: any LeafSource = StoredLeaves()) throws -> [Hash] {
        try MerkleTree.inclusionProof(index: index, size: size) { lo, count in
            try aligned(log, lo, count, in: ks, rec, audit: audit, leaves: leaves)
        }
    }

    /// The consistency proof from the first `old` leaves to the first `new` (`old <= new`).
    static func consistencyProof(_ log: UInt32, from old: UInt64, to new: UInt64, in ks: borrowing Transaction,
                                 _ rec: borrowing Transaction, audit: AuditDatabases,
                                 leaves: any LeafSource = StoredLeaves()) throws -> [Hash] {
        try MerkleTree.consistencyProof(from: old, to: new) { lo, count in
            try aligned(log, lo, count, in: ks, rec, audit: audit, leaves: leaves)
        }
    }

    /// The complete subtree of `count` (a power of two) leaves from `lo` (a multiple of `count`),
    /// as RFC 9162's recursion asks for them.
    private static func aligned(_ log: UInt32, _ lo: UInt64, _ count: UInt64, in ks: borrowing Transaction,
                                _ rec: borrowing Transaction, audit: AuditDatabases, leaves: any LeafSource) throws -> Hash {
        precondition(count > 0 && count & (count - 1) == 0 && lo % count == 0, "an aligned complete subtree")
        return try subtree(log, UInt8(count.trailingZeroBitCount), lo / count, in: ks, rec, audit: audit, leaves: leaves)
    }
}

/// Where a log's leaf hashes come from when no row holds them.
protocol LeafSource {
    /// The hash of leaf `index` of `log`; nil when the entry was pruned (its hash is a row).
    func leafHash(_ log: UInt32, _ index: UInt64, in ks: borrowing Transaction, _ rec: borrowing Transaction,
                  audit: AuditDatabases) throws -> MerkleTree.Hash?
    /// An append could not extend its log past damage (counted by the writer's source).
    func gap()
}

extension LeafSource {
    func gap() {}
}

/// The vault's leaves: the entries (tail, then archive), through each tenant's numbering.
struct StoredLeaves: LeafSource {
    func leafHash(_ log: UInt32, _ index: UInt64, in ks: borrowing Transaction, _ rec: borrowing Transaction,
                  audit: AuditDatabases) throws -> MerkleTree.Hash? {
        let seq: UInt64
        if log == AuditTree.operatorLog {
            seq = index + 1
        } else {
            let k = Layout.auditByTenantKey(log, index + 1)
            func decode(_ b: UnsafeRawBufferPointer?) throws -> UInt64? {
                guard let b else { return nil }
                guard b.count == 8 else { throw VaultError.corrupt("audit tenant index: entry \(index + 1) of tenant \(log) is malformed") }
                return readBE(b, at: 0)
            }
            guard let s = try ks.withValue(forKey: k, in: audit.byTenant, decode)
                    ?? rec.withValue(forKey: k, in: audit.archivedByTenant, decode) else {
                throw VaultError.corrupt("audit tenant index: entry \(index + 1) of tenant \(log) is missing")
            }
            seq = s
        }
        let k = Layout.auditKey(seq)
        func decode(_ b: UnsafeRawBufferPointer?) throws -> AuditEntry.Stored? { try b.map(AuditEntry.decodeStored) }
        guard let stored = try ks.withValue(forKey: k, in: audit.entries, decode)
                ?? rec.withValue(forKey: k, in: audit.archivedEntries, decode) else {
            throw VaultError.corrupt("audit entry \(seq) (leaf \(index) of the log \(AuditTree.describe(log))) is missing")
        }
        guard case .entry(let e, _) = stored else { return nil }
        return MerkleTree.leafHash(e.leaf(tenantSeq: log == AuditTree.operatorLog ? nil : index + 1))
    }
}

/// The writer's leaves: those of the operation's own appends and, for each log, those of its
/// current block as committed (`WriterState.auditLeaves`), else the entries. A leaf hash kept in
/// memory is one a committed append computed from that very entry, so it is the stored one.
struct WriterLeaves: LeafSource {
    let context: OperationContext

    func gap() { context.state.auditTreeGaps += 1 }

    func leafHash(_ log: UInt32, _ index: UInt64, in ks: borrowing Transaction, _ rec: borrowing Transaction,
                  audit: AuditDatabases) throws -> MerkleTree.Hash? {
        if let h = context.appendedLeaf(log, index) ?? context.state.auditLeaves.hash(log, index) {
            // Debug builds (every test, the crash and tamper suites) check the memory against the entry.
            assert(Self.matchesEntry(h, log, index, in: ks, rec, audit: audit), "audit leaf \(log)/\(index) in memory is not the entry's")
            return h
        }
        return try StoredLeaves().leafHash(log, index, in: ks, rec, audit: audit)
    }

    private static func matchesEntry(_ h: MerkleTree.Hash, _ log: UInt32, _ index: UInt64, in ks: borrowing Transaction,
                                     _ rec: borrowing Transaction, audit: AuditDatabases) -> Bool {
        do {
            return try StoredLeaves().leafHash(log, index, in: ks, rec, audit: audit).map { $0 == h } ?? true
        } catch {
            return true  // a damaged entry is verification's to name
        }
    }
}

/// The leaf hashes of each log's current block of 2^`storedLevel`, as committed: what the
/// append that completes a block needs, without reading and decoding its entries again.
/// A block whose leaves did not all pass through here (a restart, a failed maintenance
/// operation) is not kept; its leaves are read from the entries.
struct AuditLeafCache {
    private var blocks: [UInt32: (first: UInt64, hashes: [MerkleTree.Hash])] = [:]

    func hash(_ log: UInt32, _ index: UInt64) -> MerkleTree.Hash? {
        guard let b = blocks[log], index >= b.first, index - b.first < UInt64(b.hashes.count) else { return nil }
        return b.hashes[Int(index - b.first)]
    }

    /// A committed append's leaf.
    mutating func committed(_ log: UInt32, _ index: UInt64, _ hash: MerkleTree.Hash) {
        let size = UInt64(1) << AuditTree.storedLevel
        if index % size == 0 {
            blocks[log] = (index, [hash])
        } else if var b = blocks[log], b.first + UInt64(b.hashes.count) == index {
            b.hashes.append(hash)
            blocks[log] = b.hashes.count == Int(size) ? nil : b
        } else {
            blocks[log] = nil
        }
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
