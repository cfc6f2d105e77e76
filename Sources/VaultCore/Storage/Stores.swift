import LMDB

/// The two environments. Only the writer thread touches them after start-up; a
/// compaction swaps `keystore` for its compacted copy.
final class Stores: @unchecked Sendable {
    // unchecked: confined to the writer thread once the vault is open (see GroupCommitWriter).
    private(set) var keystore: Environment
    let records: Environment
    private(set) var ks: KeystoreDatabases
    let rec: Database
    /// The audit's archive: its databases in the record store.
    private let archive: (entries: Database, byTenant: Database, tree: Database)
    /// The audit's databases: its tail in the keystore, its archive in the record store.
    var audit: AuditDatabases {
        AuditDatabases(entries: ks.audit, byTenant: ks.auditByTenant, tree: ks.auditTree,
                       archivedEntries: archive.entries, archivedByTenant: archive.byTenant, archivedTree: archive.tree)
    }
    /// The journal every write goes through (`write(carrying:_:)`); nil: none.
    var journal: JournalWriter?

    init(keystore: Environment, records: Environment) {
        self.keystore = keystore
        self.records = records
        self.ks = KeystoreDatabases(keystore)
        self.rec = records.database(Layout.ciphertexts)
        self.archive = (records.database(Layout.audit), records.database(Layout.auditByTenant),
                        records.database(Layout.auditTree))
    }

    /// Adopts a reopened keystore (after a compaction swap).
    func replaceKeystore(_ env: Environment) {
        keystore = env
        ks = KeystoreDatabases(env)
        journal?.keystoreReplaced(env)
    }
}

/// Handles of the keystore's named databases (their dbi numbers survive a compaction copy,
/// which preserves the main database's layout, but they are re-read on swap regardless).
struct KeystoreDatabases {
    let meta, tenants, policies, extensions, holds, heldTargets, buckets, deadBuckets: Database
    let records, subjects, byBucket, audit, auditByTenant, tokens, auditTree: Database

    init(_ env: Environment) {
        meta = env.database(Layout.meta); tenants = env.database(Layout.tenants)
        policies = env.database(Layout.policies); extensions = env.database(Layout.extensions)
        holds = env.database(Layout.holds); heldTargets = env.database(Layout.heldTargets)
        buckets = env.database(Layout.buckets); deadBuckets = env.database(Layout.deadBuckets)
        records = env.database(Layout.records); subjects = env.database(Layout.subjects)
        byBucket = env.database(Layout.byBucket); audit = env.database(Layout.audit)
        auditByTenant = env.database(Layout.auditByTenant); tokens = env.database(Layout.tokens)
        auditTree = env.database(Layout.auditTree)
    }
}

/// Handles of the audit's databases (Layout). In the keystore, written in the transaction of
/// each operation: the tail of the entries, of their numbering by tenant and of the logs'
/// subtrees, and each tenant's count. In the record store, under the same names: the archive,
/// everything older than the tail (`AuditArchive`).
struct AuditDatabases: Sendable {
    let entries, byTenant, tree: Database
    let archivedEntries, archivedByTenant, archivedTree: Database
}

extension AuditDatabases {
    /// The handles in two open environments (tools and tests reading the files).
    init(keystore: Environment, records: Environment) {
        self.init(entries: keystore.database(Layout.audit), byTenant: keystore.database(Layout.auditByTenant),
                  tree: keystore.database(Layout.auditTree), archivedEntries: records.database(Layout.audit),
                  archivedByTenant: records.database(Layout.auditByTenant), archivedTree: records.database(Layout.auditTree))
    }
}
