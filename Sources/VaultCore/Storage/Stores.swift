import LMDB

/// The two environments. Only the writer thread touches them after start-up; a
/// compaction swaps `keystore` for its compacted copy.
final class Stores: @unchecked Sendable {
    // unchecked: confined to the writer thread once the vault is open (see GroupCommitWriter).
    private(set) var keystore: Environment
    let records: Environment
    private(set) var ks: KeystoreDatabases
    let rec: Database
    /// The journal every write goes through (`write(carrying:_:)`); nil: none.
    var journal: JournalWriter?

    init(keystore: Environment, records: Environment) {
        self.keystore = keystore
        self.records = records
        self.ks = KeystoreDatabases(keystore)
        self.rec = records.database(Layout.ciphertexts)
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
