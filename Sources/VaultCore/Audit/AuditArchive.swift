import LMDB

/// The audit's archive: committed entries move from the keystore's tail to the record store,
/// with their numbering and every subtree whose last leaf is theirs, so the keystore holds a
/// bounded tail however long the history (docs/architecture.md, Audit).
///
/// A move is part of a write of both environments (a batch's, or a step at open; one change
/// set when there is a journal): rows are put in the record store and deleted from the
/// keystore, and the keystore's mark (`audit_archived`) advances. The record store commits
/// first, so a move interrupted between the two commits leaves both copies, identical, and the
/// mark where it was: readers take the tail's copy, the next move puts the same rows again.
/// Only entries committed before the write moves are moved, so the archive never holds an
/// entry whose operation did not commit.
public enum AuditArchive {
    /// The tail the keystore keeps by default: a move runs once this many entries are past the
    /// mark (`VaultConfiguration.auditTail`).
    public static let defaultTail: UInt64 = 1024

    /// Whether the record store has room to take `count` entries and still keep its reserve:
    /// 1 % of its map, at least 64 pages, left for what frees space there (deletes, erasure,
    /// the sweep), which must rewrite pages before it frees any. Room is the map beyond the
    /// data file's last page plus LMDB's free list; a move is reckoned at 1 KiB an entry (an
    /// entry, its numbering and the two logs' subtrees take ~700 B in half-full pages). When
    /// there is not room, the move is put off and the keystore's tail grows instead: without
    /// this a move could take the last free pages and leave a full store unable to delete.
    static func recordStoreHasRoom(forMoving count: UInt64, in records: Environment) throws -> Bool {
        let info = try records.info()
        let mapPages = info.mapSize / info.pageSize
        let free = mapPages - (info.lastPageNumber + 1) + (try records.read { try $0.freeListPages() })
        let reserve = max(64, mapPages / 100)
        let needed = Int(clamping: count) * 1024 / info.pageSize + 8
        return free >= reserve + needed
    }

    /// Moves entries after the mark through `through` (committed entries only); answers the new
    /// mark. `audit.entries` must hold every entry of that range.
    @discardableResult
    static func move(through: UInt64, in ks: borrowing Transaction, _ rec: borrowing Transaction,
                     dbs: KeystoreDatabases, audit: AuditDatabases) throws -> UInt64 {
        let archived = try AuditLog.archived(in: ks, dbs: dbs)
        guard through > archived else { return archived }
        var rows: [([UInt8], [UInt8])] = []
        try ks.forEach(in: audit.entries, from: Layout.auditKey(archived + 1)) { k, v in
            guard k.count == 8, readBE(k, at: 0, as: UInt64.self) <= through else { return .stop }
            rows.append((Array(k), Array(v)))
            return .continue
        }
        guard rows.count == Int(through - archived) else {
            throw VaultError.corrupt("audit entries \(archived + 1)...\(through) are not all in the keystore; run shredvault audit verify")
        }
        try transfer(rows, from: audit.entries, to: audit.archivedEntries, in: ks, rec)
        // The operator's log: leaves archived ..< through.
        try moveSubtrees(AuditTree.operatorLog, leaves: archived, through, in: ks, rec, audit: audit)
        // Each tenant's numbering of the moved entries, and its log's leaves.
        var numbering: [([UInt8], [UInt8])] = []
        var tenants: [UInt32: (first: UInt64, last: UInt64)] = [:]
        try ks.forEach(in: audit.byTenant) { k, v in
            guard k.count == 12 else { return .continue }  // a tenant's count
            guard v.count == 8 else { throw VaultError.corrupt("audit tenant index: entry of \(k.count) + \(v.count) bytes") }
            guard readBE(v, at: 0, as: UInt64.self) <= through else { return .continue }
            let t: UInt32 = readBE(k, at: 0), local: UInt64 = readBE(k, at: 4)
            tenants[t] = (tenants[t]?.first ?? local, local)
            numbering.append((Array(k), Array(v)))
            return .continue
        }
        try transfer(numbering, from: audit.byTenant, to: audit.archivedByTenant, in: ks, rec)
        for (t, range) in tenants {
            try moveSubtrees(t, leaves: range.first - 1, range.last, in: ks, rec, audit: audit)
        }
        try ks.put(.be(through), forKey: AuditLog.archivedKey, in: dbs.meta)
        return through
    }

    /// Moves every subtree of `log` whose last leaf is in `lo ..< hi`: at level L, those of
    /// index `lo >> L ... (hi >> L) - 1`. Nothing later rewrites them.
    private static func moveSubtrees(_ log: UInt32, leaves lo: UInt64, _ hi: UInt64, in ks: borrowing Transaction,
                                     _ rec: borrowing Transaction, audit: AuditDatabases) throws {
        var rows: [([UInt8], [UInt8])] = []
        var level: UInt8 = 0
        while level < 64, hi >> level > 0 {
            let first = lo >> level, last = (hi >> level) &- 1
            if hi >> level > lo >> level {
                try ks.forEach(in: audit.tree, from: AuditTree.key(log, level, first), prefix: .be(log) + [level]) { k, v in
                    guard k.count == 13, readBE(k, at: 5, as: UInt64.self) <= last else { return .stop }
                    rows.append((Array(k), Array(v)))
                    return .continue
                }
            }
            level += 1
        }
        try transfer(rows, from: audit.tree, to: audit.archivedTree, in: ks, rec)
    }

    private static func transfer(_ rows: [([UInt8], [UInt8])], from source: Database, to target: Database,
                                 in ks: borrowing Transaction, _ rec: borrowing Transaction) throws {
        for (k, v) in rows {
            // Not MDB_APPEND: an interrupted move may have put the row already.
            try rec.put(v, forKey: k, in: target)
            _ = try ks.delete(key: k, in: source)
        }
    }

    /// At open: moves every committed entry but the last `tail`, `chunk` entries per write.
    static func moveAll(_ stores: Stores, keeping tail: UInt64, chunk: UInt64 = 20_000,
                        progress: ((String) -> Void)? = nil) throws {
        let dbs = stores.ks, audit = stores.audit
        let (head, archived) = try stores.keystore.read { ks in
            (try AuditLog.head(in: ks, dbs: dbs).seq, try AuditLog.archived(in: ks, dbs: dbs))
        }
        guard head > archived + tail else { return }
        progress?("moving audit entries \(archived + 1)...\(head - tail) from the keystore to the record store")
        var mark = archived
        while mark < head - tail {
            let through = min(mark + chunk, head - tail)
            guard try recordStoreHasRoom(forMoving: through - mark, in: stores.records) else {
                progress?("the record store is nearly full: audit entries \(mark + 1)...\(head) stay in the keystore for now")
                return
            }
            do {
                mark = try stores.write { ks, rec in try move(through: through, in: ks, rec, dbs: dbs, audit: audit) }
            } catch where VaultError.mapping(error) == .storageFull {
                // A full record store must not keep the vault closed: the tail stays longer.
                progress?("the record store is full: audit entries \(mark + 1)...\(head) stay in the keystore for now")
                return
            }
        }
    }

    /// At open, for vaults written before tenant counts: each tenant's count, its numbering
    /// rewritten first when it is older still (keyed by the chain's seq). A vault that has its
    /// counts costs one read.
    static func prepare(_ stores: Stores) throws {
        let dbs = stores.ks
        guard try stores.keystore.read({ ks in try nextUncounted(from: [], in: ks, dbs: dbs) }) != nil else { return }
        try stores.write { ks, _ in
            var from: [UInt8] = []
            while let t = try nextUncounted(from: from, in: ks, dbs: dbs) {
                let count = try legacyCount(t, in: ks, dbs: dbs)
                try ks.put(.be(count), forKey: Layout.auditCountKey(t), in: dbs.auditByTenant)
                guard t < UInt32.max else { break }
                from = Layout.tenantKey(t + 1)
            }
        }
    }

    /// The first tenant at or after `from` with numbering rows but no count.
    private static func nextUncounted(from: [UInt8], in ks: borrowing Transaction, dbs: KeystoreDatabases) throws -> UInt32? {
        var tenant: UInt32?
        var counted: UInt32?
        try ks.forEach(in: dbs.auditByTenant, from: from) { k, _ in
            let t: UInt32 = readBE(k, at: 0)
            if k.count == 4 {
                counted = t
            } else if counted != t {
                tenant = t
                return .stop
            }
            return .continue
        }
        return tenant
    }

    /// The number of tenant `t`'s entries in a keystore's numbering rows, which are rewritten
    /// first when they are of the oldest kind (`t|chain seq → ""`, before tenant-local numbering).
    static func legacyCount(_ t: UInt32, in ks: borrowing Transaction, dbs: KeystoreDatabases) throws -> UInt64 {
        var last: (local: UInt64, oldest: Bool)?
        try ks.forEachReversed(in: dbs.auditByTenant, prefix: Layout.tenantKey(t)) { k, v in
            guard k.count == 12 else { return .continue }
            guard v.count == 8 || v.isEmpty else {
                throw VaultError.corrupt("audit tenant index: entry of \(k.count) + \(v.count) bytes")
            }
            last = (readBE(k, at: 4), v.isEmpty)
            return .stop
        }
        guard let last else { return 0 }
        return last.oldest ? try renumber(t, in: ks, dbs: dbs) : last.local
    }

    /// Rewrites a tenant's index from `t|chain seq → ""` to `t|tenant seq → chain seq`, in
    /// chain order, and answers the number of entries. In place and in chunks: the i-th entry's
    /// chain seq is at least i, so a new key never lands on an old key still to be moved.
    private static func renumber(_ t: UInt32, in ks: borrowing Transaction, dbs: KeystoreDatabases) throws -> UInt64 {
        var local: UInt64 = 0
        var from = Layout.auditByTenantKey(t, 0)
        while true {
            var chunk: [UInt64] = []
            try ks.forEach(in: dbs.auditByTenant, from: from, prefix: Layout.tenantKey(t)) { k, v in
                guard k.count == 12 else { return .continue }
                guard v.isEmpty else {
                    throw VaultError.corrupt("audit tenant index of tenant \(t) mixes old and new entries")
                }
                chunk.append(readBE(k, at: 4))
                return chunk.count < 4096 ? .continue : .stop
            }
            guard let lastSeq = chunk.last else { return local }
            for seq in chunk {
                local += 1
                _ = try ks.delete(key: Layout.auditByTenantKey(t, seq), in: dbs.auditByTenant)
                try ks.put(.be(seq), forKey: Layout.auditByTenantKey(t, local), in: dbs.auditByTenant)
            }
            guard lastSeq < UInt64.max else { return local }
            from = Layout.auditByTenantKey(t, lastSeq + 1)
        }
    }
}
